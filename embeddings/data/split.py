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

from collections import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from embeddings.errors import InputError
from embeddings.io import utc


class Sequences(abc.Sequence):
    """Item sequences, one per user, as integer arrays: every item in one flat array, and where each sequence
    starts and ends in it. ``seqs[i]`` is a numpy view, ``seqs[rows]`` (a slice or an index array) another
    ``Sequences`` over the same items, so a million users cost three arrays, not a million objects."""

    def __init__(self, items: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        self.items = np.asarray(items, dtype=np.int64)
        self.starts, self.ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)

    @classmethod
    def of(cls, seqs: Iterable[np.ndarray]) -> Sequences:
        """The sequences of a list of arrays (or a ``Sequences`` as it is)."""
        if isinstance(seqs, Sequences):
            return seqs
        seqs = [np.asarray(x, dtype=np.int64) for x in seqs]
        ends = np.cumsum([len(x) for x in seqs], dtype=np.int64)
        return cls(np.concatenate([*seqs, np.zeros(0, np.int64)]), ends - [len(x) for x in seqs], ends)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i):
        if isinstance(i, int | np.integer):
            return self.items[self.starts[i] : self.ends[i]]
        return Sequences(self.items, self.starts[i], self.ends[i])

    def __iter__(self):
        for a, b in zip(self.starts.tolist(), self.ends.tolist(), strict=True):
            yield self.items[a:b]

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def trim(self, head: int = 0, tail: int = 0) -> Sequences:
        """Each sequence without its first ``head`` and last ``tail`` items (empty when shorter)."""
        ends = np.maximum(self.ends - tail, self.starts)
        return Sequences(self.items, np.minimum(self.starts + head, ends), ends)

    def last(self, back: int = 1) -> np.ndarray:
        """The item ``back`` places from the end of each sequence (each must be long enough)."""
        return self.items[self.ends - back]

    def flat(self) -> np.ndarray:
        """Every item of every sequence, in order (``np.concatenate(list(seqs))``)."""
        lengths = self.lengths
        return self.items[np.repeat(self.starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())]


@dataclass
class EvalCases:
    users: np.ndarray  # user index per case
    histories: Sequence[np.ndarray]  # item indices the model may read, oldest first (a Sequences)
    targets: np.ndarray  # the item to predict
    cold: np.ndarray  # target published after the training cut-off

    def __post_init__(self) -> None:
        self.histories = Sequences.of(self.histories)

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, mask: np.ndarray) -> EvalCases:
        idx = np.flatnonzero(mask)
        return EvalCases(self.users[idx], self.histories[idx], self.targets[idx], self.cold[idx])


@dataclass
class Split:
    protocol: str
    item_ids: np.ndarray  # catalogue: item index -> item_id
    user_ids: np.ndarray  # user index -> user_id
    train: Sequences  # per user, the sequence a model may fit on
    valid: EvalCases
    test: EvalCases
    available: np.ndarray  # items that existed during training (the training softmax runs over these)
    cutoff: pd.Timestamp | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train = Sequences.of(self.train)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def seen_in_train(self) -> np.ndarray:
        """Items that occur in at least one training sequence (what an id model can score)."""
        seen = np.zeros(self.n_items, bool)
        seen[self.train.flat()] = True
        return seen


def catalogue(events: pd.DataFrame, listings: pd.DataFrame | None) -> np.ndarray:
    """The item universe for ranking: every listing if a listings table is given, else every clicked item."""
    source = listings if listings is not None else events
    return np.sort(source["item_id"].unique()).astype(object)


def build_sequences(
    events: pd.DataFrame, item_ids: np.ndarray | pd.Index, skip_unknown: bool = False
) -> tuple[np.ndarray, Sequences]:
    """Per user (sorted by id): item indices in order of first interaction (ties in time keep the file's order).

    Built in one pass of integer arrays (user and item codes, one sort), so memory grows with the events'
    integers, not with Python objects. A click on an item outside ``item_ids`` is an error, or with
    ``skip_unknown`` left out.
    """
    codes = pd.Index(item_ids).get_indexer(events["item_id"])
    known = codes >= 0
    if not known.all() and not skip_unknown:
        raise InputError(f"{int((~known).sum())} events point at items outside the catalogue")
    user_codes, users = pd.factorize(events["user_id"].to_numpy()[known] if not known.all() else events["user_id"])
    users = np.asarray(users, dtype=object)
    rank = np.empty(len(users), np.int64)
    rank[np.argsort(users, kind="stable")] = np.arange(len(users))
    user_codes, codes = rank[user_codes], codes[known].astype(np.int64)
    times = pd.to_datetime(events["event_timestamp"], utc=True).array.asi8[known]
    order = np.lexsort((times, user_codes))  # stable: equal times keep the file's order
    user_codes, codes = user_codes[order], codes[order]
    _, first = np.unique(user_codes * max(len(item_ids), 1) + codes, return_index=True)
    first.sort()  # the first touch of each (user, listing), in (user, time) order
    user_codes, codes = user_codes[first], codes[first]
    starts = np.searchsorted(user_codes, np.arange(len(users)))
    ends = np.append(starts[1:], len(codes))
    return np.sort(users), Sequences(codes, starts, ends)


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
    user_ids, seqs = build_sequences(events, item_ids)
    seqs = seqs.trim(tail=drop_last)
    keep = np.flatnonzero(seqs.lengths >= min_len)
    user_ids, seqs = user_ids[keep], seqs[keep]
    n = len(seqs)
    users, not_cold = np.arange(n), np.zeros(n, bool)
    return Split(
        "leave-last-out",
        item_ids,
        user_ids,
        seqs.trim(tail=2),
        EvalCases(users, seqs.trim(tail=2), seqs.last(2), not_cold),
        EvalCases(users, seqs.trim(tail=1), seqs.last(1), not_cold),
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
    user_ids, seqs = build_sequences(before, item_ids)

    created = np.full(len(item_ids), np.datetime64("NaT"), dtype="datetime64[us]")
    if listings is not None:
        first = listings.drop_duplicates("item_id", keep="first")
        created = (
            first.set_index("item_id")["created_at"].reindex(item_ids).dt.tz_convert(None).to_numpy("datetime64[us]")
        )
    cutoff_np = np.datetime64(cutoff.tz_convert(None).to_datetime64(), "us")
    is_cold = created >= cutoff_np  # NaT compares False: no listings table means nothing is cold

    # test: each user's first listing after the cut-off that is not in their history
    after_ids, after_seqs = build_sequences(after, item_ids)
    u = np.searchsorted(user_ids, after_ids).clip(max=max(len(user_ids) - 1, 0))
    known = user_ids[u] == after_ids if len(user_ids) else np.zeros(len(after_ids), bool)
    unseen_users = int((~known).sum())
    rows = np.repeat(u, after_seqs.lengths)
    items = after_seqs.flat()
    n = max(len(item_ids), 1)
    history_keys = np.repeat(np.arange(len(seqs)), seqs.lengths) * n + seqs.flat()
    new = np.repeat(known, after_seqs.lengths) & ~np.isin(rows * n + items, history_keys)
    t_users, first_new = np.unique(rows[new], return_index=True)
    t_targets = items[new][first_new]
    t_cold = is_cold[t_targets]
    test = EvalCases(t_users, seqs[t_users], t_targets, t_cold)

    v_users = np.flatnonzero(seqs.lengths >= 2)
    valid = EvalCases(v_users, seqs[v_users].trim(tail=1), seqs[v_users].last(1), np.zeros(len(v_users), bool))
    train = Sequences(seqs.items, seqs.starts, seqs.ends - (seqs.lengths >= 2))
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
