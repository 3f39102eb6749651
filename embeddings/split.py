"""Click sequences and the two evaluation protocols.

A user's sequence is the listings they interacted with, in the order of their first
interaction; repeats (a favourite or contact after a view, a second visit) are folded into the
first, so the question is always "which new listing comes next". Item indices are positions in
the catalogue (0-based); models map them to whatever they need.

* :func:`leave_last_out` is the protocol of the SASRec literature: last item is the test
  target, second-last the validation target, the rest trains.
* :func:`temporal_split` is the production question: train on everything before a cut-off,
  test on each user's first new listing after it. Targets published after the cut-off are
  flagged ``cold`` so cold-start quality is reported on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from embeddings.errors import InputError
from embeddings.io import utc


@dataclass
class EvalCases:
    users: np.ndarray  # user index per case
    histories: list[np.ndarray]  # item indices the model may read, oldest first
    targets: np.ndarray  # the item to predict
    cold: np.ndarray  # target published after the training cut-off

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, mask: np.ndarray) -> EvalCases:
        idx = np.flatnonzero(mask)
        return EvalCases(self.users[idx], [self.histories[i] for i in idx], self.targets[idx], self.cold[idx])


@dataclass
class Split:
    protocol: str
    item_ids: np.ndarray  # catalogue: item index -> item_id
    user_ids: np.ndarray  # user index -> user_id
    train: list[np.ndarray]  # per user, the sequence a model may fit on
    valid: EvalCases
    test: EvalCases
    available: np.ndarray  # items that existed during training (the training softmax runs over these)
    cutoff: pd.Timestamp | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def seen_in_train(self) -> np.ndarray:
        """Items that occur in at least one training sequence (what an id model can score)."""
        seen = np.zeros(self.n_items, bool)
        for seq in self.train:
            seen[seq] = True
        return seen


def catalogue(events: pd.DataFrame, listings: pd.DataFrame | None) -> np.ndarray:
    """The item universe for ranking: every listing if a listings table is given, else every clicked item."""
    source = listings if listings is not None else events
    return np.sort(source["item_id"].unique()).astype(object)


def build_sequences(
    events: pd.DataFrame, item_ids: np.ndarray | pd.Index, skip_unknown: bool = False
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Per user: item indices in order of first interaction, and the time of each.

    A click on an item outside ``item_ids`` is an error, or with ``skip_unknown`` left out.
    """
    index = pd.Index(item_ids)
    ev = events[["user_id", "item_id", "event_timestamp"]].sort_values(["user_id", "event_timestamp"], kind="stable")
    ev = ev.drop_duplicates(["user_id", "item_id"], keep="first")
    codes = index.get_indexer(ev["item_id"])
    if (codes < 0).any():
        if not skip_unknown:
            raise InputError(f"{int((codes < 0).sum())} events point at items outside the catalogue")
        ev, codes = ev[codes >= 0], codes[codes >= 0]
    users, starts = np.unique(ev["user_id"].to_numpy(), return_index=True)
    order = np.argsort(starts)
    users, starts = users[order], starts[order]
    bounds = np.append(starts, len(ev))
    times = ev["event_timestamp"].to_numpy()
    seqs = [codes[a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    stamps = [times[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return users.astype(object), seqs, stamps


def _cases(users: list[int], histories: list[np.ndarray], targets: list[int], cold: list[bool]) -> EvalCases:
    return EvalCases(
        np.asarray(users, dtype=np.int64), histories, np.asarray(targets, dtype=np.int64), np.asarray(cold, dtype=bool)
    )


def leave_last_out(
    events: pd.DataFrame, listings: pd.DataFrame | None = None, min_len: int = 3, drop_last: int = 0
) -> Split:
    """Last item of each user is the test target, the second-last validates, the rest trains.

    ``drop_last`` first removes each user's final items, for files whose last item does not
    follow the one before it (an earlier copy of our ML-1M file lacked every user's second-last item of
    the published file, so its last item is two steps ahead of the history: ``bench/README.md``).
    """
    if drop_last < 0:
        raise InputError(f"drop_last must be >= 0, got {drop_last}")
    item_ids = catalogue(events, listings)
    user_ids, seqs, _ = build_sequences(events, item_ids)
    if drop_last:
        seqs = [s[:-drop_last] for s in seqs]
    keep = [i for i, s in enumerate(seqs) if len(s) >= min_len]
    user_ids = user_ids[keep]
    seqs = [seqs[i] for i in keep]
    n = len(seqs)
    valid = _cases(list(range(n)), [s[:-2] for s in seqs], [int(s[-2]) for s in seqs], [False] * n)
    test = _cases(list(range(n)), [s[:-1] for s in seqs], [int(s[-1]) for s in seqs], [False] * n)
    return Split(
        "leave-last-out",
        item_ids,
        user_ids,
        [s[:-2] for s in seqs],
        valid,
        test,
        available=np.ones(len(item_ids), bool),
        meta={"dropped_short_users": int(events["user_id"].nunique() - n), "drop_last": drop_last},
    )


def default_cutoff(events: pd.DataFrame) -> pd.Timestamp:
    """Midnight before the last event: train on all days but the last, test on the last."""
    return events["event_timestamp"].max().floor("D")


def temporal_split(
    events: pd.DataFrame, listings: pd.DataFrame | None = None, cutoff: pd.Timestamp | None = None
) -> Split:
    """Train on clicks before ``cutoff``; test on each user's first new listing at or after it.

    Validation (for early stopping) is the last pre-cut-off item of users with at least two,
    which is then held out of their training sequence. Users with no click before the cut-off
    cannot be scored by a sequence model; they are counted in ``meta`` and left out.
    """
    cutoff = default_cutoff(events) if cutoff is None else utc(cutoff)
    item_ids = catalogue(events, listings)
    before = events[events["event_timestamp"] < cutoff]
    after = events[events["event_timestamp"] >= cutoff]
    if before.empty:
        raise InputError(f"no events before the cut-off {cutoff}")
    user_ids, seqs, _ = build_sequences(before, item_ids)
    position = {u: i for i, u in enumerate(user_ids)}
    index = pd.Index(item_ids)

    created = np.full(len(item_ids), np.datetime64("NaT"), dtype="datetime64[us]")
    if listings is not None:
        first = listings.drop_duplicates("item_id", keep="first")
        created = (
            first.set_index("item_id")["created_at"].reindex(item_ids).dt.tz_convert(None).to_numpy("datetime64[us]")
        )
    cutoff_np = np.datetime64(cutoff.tz_convert(None).to_datetime64(), "us")
    is_cold = created >= cutoff_np  # NaT compares False: no listings table means nothing is cold

    t_users, t_hist, t_targets, t_cold = [], [], [], []
    first_after = after.drop_duplicates(["user_id", "item_id"], keep="first")
    unseen_users = 0
    for uid, group in first_after.groupby("user_id", sort=False):
        u = position.get(uid)
        if u is None:
            unseen_users += 1
            continue
        history = seqs[u]
        codes = index.get_indexer(group["item_id"])
        new = codes[~np.isin(codes, history)]
        if len(new) == 0:
            continue
        t_users.append(u)
        t_hist.append(history)
        t_targets.append(int(new[0]))
        t_cold.append(bool(is_cold[new[0]]))
    test = _cases(t_users, t_hist, t_targets, t_cold)

    v_users = [u for u, s in enumerate(seqs) if len(s) >= 2]
    valid = _cases(
        v_users, [seqs[u][:-1] for u in v_users], [int(seqs[u][-1]) for u in v_users], [False] * len(v_users)
    )
    train = [s[:-1] if len(s) >= 2 else s for s in seqs]
    return Split(
        "temporal",
        item_ids,
        user_ids,
        train,
        valid,
        test,
        available=~is_cold,
        cutoff=cutoff,
        meta={"test_users_without_history": unseen_users, "cold_test_cases": int(np.sum(t_cold))},
    )
