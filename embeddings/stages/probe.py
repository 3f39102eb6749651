"""Probes: is a user vector a good feature for what the user does *after* the cut-off?

A consuming team takes our user vectors as features for its own models. The probes measure that
use, against the features such a team could build alone from the same clicks.

* **Future-window retrieval**: rank every listing by dot product with the user vector (listings in
  the user's history left out) and count how many of the listings the user clicks after the cut-off
  land in the top K: recall@K = hits / min(K, future listings), so 1.0 is perfect at any K. The
  baseline is the most clicked listings before the cut-off.
* **Linear probes**: logistic regression on the vector, labels from after the cut-off only,
  out-of-fold predictions of a stratified K-fold split by user (one row per user), scored by ROC-AUC
  (macro one-vs-rest for several classes, so chance is 0.5 everywhere). Each feature set gets the better
  of two regularisation strengths, on the same folds.
* **Baselines** a consuming team could build: the bag of listings clicked (sparse, L2-normalised) and
  history aggregates (shares, medians, last click).

Labels on a listings week (:func:`week_probe_data`): ``rent_sale`` (the preference label of
``embeddings.stages.classify``), ``price_band`` (tercile of the median price percentile, within deal
type, of the listings clicked after the cut-off), ``rooms`` (their median room count, 3+ pooled),
``city`` (the city clicked most; cities with few users pooled), ``returns`` (any click after the
cut-off). On ``user item`` text files (:func:`sequence_probe_data`) each user's last items are the
future: ``popularity_band`` (tercile of the mean log popularity of the future items); without
timestamps there is no "return" label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from embeddings.data.contract import latest_versions
from embeddings.data.split import build_sequences
from embeddings.errors import InputError
from embeddings.stages.classify import preference_labels

MIN_CLASS_USERS = 20  # a class with fewer users is pooled ("other") or, if binary, the probe is skipped


@dataclass
class ProbeConfig:
    folds: int = 5
    max_users: int = 20_000  # users sampled for the linear probes (retrieval uses every user with a future)
    ks: tuple[int, ...] = (10, 50)
    seed: int = 0


@dataclass
class ProbeData:
    """The probe population: users with history before the cut-off, their futures and labels."""

    user_ids: np.ndarray  # (n,) object
    item_ids: np.ndarray  # the catalogue histories and futures index into
    histories: list[np.ndarray]  # item indices before the cut-off
    futures: list[np.ndarray]  # item indices after the cut-off, not in the history
    labels: dict[str, np.ndarray]  # name -> (n,) object array, None where unlabelled
    baselines: dict[str, np.ndarray | sp.csr_matrix] = field(default_factory=dict)  # name -> (n, k) features
    popularity: np.ndarray | None = None  # clicks per catalogue item before the cut-off

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        if len(self.histories) != n or len(self.futures) != n or any(len(v) != n for v in self.labels.values()):
            raise InputError("probe data: histories, futures and labels must have one entry per user")
        self.baselines.setdefault("bag_of_listings", bag_of_items(self.histories, len(self.item_ids)))
        if self.popularity is None:
            clicked = np.concatenate([*self.histories, np.zeros(0, np.int64)])
            self.popularity = np.bincount(clicked, minlength=len(self.item_ids))

    def align(self, frame: pd.DataFrame, column: str = "embedding") -> np.ndarray:
        """(users, d) vectors of ``frame`` (user_id, column) in this population's order; NaN rows where missing."""
        return _aligned(self.user_ids, frame["user_id"], frame[column])

    def align_items(self, frame: pd.DataFrame, column: str = "embedding") -> np.ndarray:
        """(catalogue, d) vectors of ``frame`` (item_id, column) in catalogue order; NaN rows where missing."""
        return _aligned(self.item_ids, frame["item_id"], frame[column])


def _aligned(order: np.ndarray, keys: pd.Series, values: pd.Series) -> np.ndarray:
    index = pd.Index(keys.astype(str)).get_indexer(order.astype(str))
    x = np.stack(values.to_numpy()).astype(np.float64)
    out = np.full((len(order), x.shape[1]), np.nan)
    out[index >= 0] = x[index[index >= 0]]
    return out


# ------------------------------------------------------------------------------------------------ features
def bag_of_items(histories: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Users x items, 1 where clicked, rows L2-normalised."""
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    cols = np.concatenate([*histories, np.zeros(0, np.int64)])
    m = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(histories), n_items))
    m.data[:] = 1.0
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def mean_of_items(histories: Sequence[np.ndarray], item_vectors: np.ndarray) -> np.ndarray:
    """Each user's mean item vector over the history (NaN for an item without a vector)."""
    out = np.full((len(histories), item_vectors.shape[1]), np.nan)
    for i, h in enumerate(histories):
        if len(h):
            out[i] = item_vectors[h].mean(0)
    return out


def _bands(values: pd.Series) -> pd.Series:
    """Tercile bands ``low`` / ``mid`` / ``high`` of the non-missing values (None where missing)."""
    ok = values.dropna()
    if ok.nunique() < 3:
        return pd.Series(None, index=values.index, dtype=object)
    cut = pd.qcut(ok.rank(method="first"), 3, labels=["low", "mid", "high"])
    return cut.astype(object).reindex(values.index)


def _pool_small(labels: pd.Series, min_users: int = MIN_CLASS_USERS) -> pd.Series:
    counts = labels.value_counts()
    small = counts.index[counts < min_users]
    return labels.where(~labels.isin(small) | labels.isna(), "other")


# ---------------------------------------------------------------------------------------- probe datasets
def week_probe_data(
    events: pd.DataFrame, listings: pd.DataFrame, cutoff: pd.Timestamp, horizon: pd.Timedelta | None = None
) -> ProbeData:
    """Probe population of a listings week: every user with a click before ``cutoff``; labels from the
    clicks in ``[cutoff, cutoff + horizon)`` (default: every click after the cut-off)."""
    item_ids = np.sort(listings["item_id"].unique()).astype(object)
    before = events[events["event_timestamp"] < cutoff]
    after = events[events["event_timestamp"] >= cutoff]
    if horizon is not None:
        after = after[after["event_timestamp"] < cutoff + horizon]
    if before.empty:
        raise InputError(f"no click before the cut-off {cutoff}: nothing to probe")
    if after.empty:
        raise InputError(f"no click after the cut-off {cutoff}: probes need what users do after it")
    users, histories = build_sequences(before, item_ids, skip_unknown=True)
    future_users, future_seqs = build_sequences(after, item_ids, skip_unknown=True)
    future_of = dict(zip(future_users, future_seqs, strict=True))
    futures = [np.setdiff1d(future_of.get(u, np.zeros(0, np.int64)), h) for u, h in zip(users, histories, strict=True)]

    lst = latest_versions(listings, cutoff).set_index("item_id").reindex(item_ids)
    pct = lst.groupby("deal_type")["price"].rank(pct=True).to_numpy()  # price percentile within deal type
    rooms, city, rent = lst["rooms"].to_numpy(float), lst["city"].to_numpy(object), (lst["deal_type"] == "rent")
    rent = rent.to_numpy(float)

    index = pd.Index(users)
    labels: dict[str, pd.Series] = {}
    pref = preference_labels(after, listings, cutoff).set_index("user_id")["label"]
    labels["rent_sale"] = pref.map({1: "rent", 0: "sale"}).reindex(index)
    med_pct = pd.Series([np.median(pct[f]) if len(f) else np.nan for f in futures], index=index)
    labels["price_band"] = _bands(med_pct)
    med_rooms = pd.Series([np.median(rooms[f]) if len(f) else np.nan for f in futures], index=index)
    labels["rooms"] = med_rooms.map(lambda r: None if np.isnan(r) else ("3+" if r >= 3 else str(int(round(r)))))

    def top_city(f: np.ndarray):
        return pd.Series(city[f]).mode().iloc[0] if len(f) else None

    labels["city"] = _pool_small(pd.Series([top_city(f) for f in futures], index=index, dtype=object))
    came_back = set(after["user_id"])
    labels["returns"] = pd.Series(["yes" if u in came_back else "no" for u in users], index=index, dtype=object)

    # what a consuming team computes from the same clicks: aggregates of the history and its last click
    cities = sorted(pd.unique(city[~pd.isna(city)]))
    city_col = {c: i for i, c in enumerate(cities)}
    rows = []
    for h in histories:
        c = np.zeros(len(cities))
        for x in city[h]:
            c[city_col[x]] += 1
        last = h[-1]
        last_city = np.zeros(len(cities))
        last_city[city_col[city[last]]] = 1
        rows.append(
            [rent[h].mean(), np.median(pct[h]), np.median(rooms[h]), math.log1p(len(h)),
             rent[last], pct[last], rooms[last], *(c / len(h)), *last_city]
        )  # fmt: skip
    return ProbeData(
        users.astype(object),
        item_ids,
        histories,
        futures,
        {k: v.to_numpy(object) for k, v in labels.items()},
        {"history_aggregates": np.asarray(rows, dtype=np.float64)},
    )


def sequence_probe_data(
    events: pd.DataFrame, tail: float = 0.2, min_history: int = 3
) -> tuple[ProbeData, pd.DataFrame]:
    """Probe population of a ``user item`` file: each user's last ``tail`` share of items (at least one) is the
    future. Returns the probe data and the events of the histories only (what a model may be trained on)."""
    item_ids = np.sort(events["item_id"].unique()).astype(object)
    users, seqs = build_sequences(events, item_ids)
    keep, histories, futures = [], [], []
    for u, s in zip(users, seqs, strict=True):
        n_future = max(1, int(round(tail * len(s))))
        if len(s) - n_future >= min_history:
            keep.append(u)
            histories.append(s[:-n_future])
            futures.append(np.setdiff1d(s[-n_future:], s[:-n_future]))
    users = np.asarray(keep, dtype=object)
    popularity = np.bincount(np.concatenate(histories), minlength=len(item_ids))
    log_pop = np.log1p(popularity)
    mean_future_pop = pd.Series([log_pop[f].mean() if len(f) else np.nan for f in futures])
    labels = {"popularity_band": _bands(mean_future_pop).to_numpy(object)}
    aggregates = np.asarray(
        [[math.log1p(len(h)), log_pop[h].mean(), np.median(log_pop[h]), log_pop[h[-5:]].mean(), log_pop[h[-1]]]
         for h in histories]
    )  # fmt: skip
    data = ProbeData(users, item_ids, histories, futures, labels, {"history_aggregates": aggregates}, popularity)
    rows = np.repeat(np.arange(len(users)), [len(h) for h in histories])
    order = np.concatenate([np.arange(len(h)) for h in histories])
    history_events = pd.DataFrame(
        {
            "user_id": users[rows],
            "item_id": item_ids[np.concatenate(histories)],
            "event_timestamp": pd.Timestamp("2000-01-01", tz="UTC") + pd.to_timedelta(order, unit="s"),
            "event_type": "view",
        }
    )
    return data, history_events


# ----------------------------------------------------------------------------------------------- measures
def future_recall(
    scores_of: Callable[[np.ndarray], np.ndarray], data: ProbeData, ks: Sequence[int], batch: int = 2048
) -> dict[str, float]:
    """recall@K of the future listings among the top K by ``scores_of(user_rows) -> (rows, items)`` scores,
    history left out; over users with a future and a score."""
    users = np.flatnonzero([len(f) > 0 for f in data.futures])
    hits = {k: [] for k in ks}
    top = max(ks)
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        scores = np.array(scores_of(rows), dtype=np.float32)
        ok = np.isfinite(scores).any(1)
        for r, i in enumerate(rows):
            scores[r, data.histories[i]] = -np.inf
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        order = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, 1), axis=1), 1)
        for r, i in enumerate(rows):
            if not ok[r]:
                continue
            future = data.futures[i]
            for k in ks:
                hits[k].append(np.isin(order[r, :k], future).sum() / min(k, len(future)))
    return {f"recall@{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()}


def linear_probe(x: np.ndarray | sp.spmatrix, y: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold ROC-AUC (macro one-vs-rest for more than two classes) of logistic regression on ``x``."""
    classes, y_int = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        return float("nan")
    dense = not sp.issparse(x)
    best = -np.inf
    for c in (0.1, 1.0):
        proba = np.zeros((len(y), len(classes)))
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y_int):
            xt, xv = x[train], x[test]
            if dense:
                scaler = StandardScaler().fit(xt)
                xt, xv = scaler.transform(xt), scaler.transform(xv)
            model = LogisticRegression(C=c, max_iter=2000).fit(xt, y_int[train])
            proba[np.ix_(test, model.classes_)] = model.predict_proba(xv)
        if len(classes) == 2:
            auc = roc_auc_score(y_int, proba[:, 1])
        else:
            auc = roc_auc_score(y_int, proba, multi_class="ovr", average="macro", labels=np.arange(len(classes)))
        best = max(best, float(auc))
    return best


@dataclass
class ProbeReport:
    rows: list[dict]
    ours: list[str]
    baselines: list[str]

    def preferred(self, among: Sequence[str] = ("intent", "profile")) -> str:
        """The vector among ``among`` with the higher mean AUC over the label probes."""
        label_rows = [r for r in self.rows if r["metric"] == "roc_auc"]
        means = {
            name: np.nanmean([r[name] for r in label_rows]) for name in among if label_rows and name in label_rows[0]
        }
        return max(means, key=means.get) if means else among[0]

    def to_dict(self) -> dict:
        return {"ours": self.ours, "baselines": self.baselines, "rows": self.rows}

    def table(self) -> str:
        """The rows as a markdown table: every feature set, ours vs the best baseline."""
        cols = [*self.ours, *self.baselines]
        head = f"| probe | metric | n | {' | '.join(cols)} | best ours - best baseline |"
        lines = [head, "|" + "---|" * (len(cols) + 4)]
        for r in self.rows:
            cells = " | ".join("" if r.get(c) is None or np.isnan(r[c]) else f"{r[c]:.3f}" for c in cols)
            lines.append(f"| {r['probe']} | {r['metric']} | {r['n']} | {cells} | {r['margin']:+.3f} |")
        return "\n".join(lines)


def run_probes(
    data: ProbeData,
    vectors: dict[str, np.ndarray],
    item_vectors: np.ndarray | None = None,
    cfg: ProbeConfig | None = None,
) -> ProbeReport:
    """Every probe for each of our ``vectors`` ((n, d) in ``data``'s user order, NaN rows = no vector) and
    each baseline. ``item_vectors`` (catalogue x d, NaN rows = no vector) enable the retrieval probe."""
    cfg = cfg or ProbeConfig()
    if item_vectors is not None:
        vectors = {**vectors, "mean_of_items": mean_of_items(data.histories, np.nan_to_num(item_vectors))}
    ours = list(vectors)
    baselines = list(data.baselines)
    rows: list[dict] = []
    have = np.all([np.isfinite(v).all(1) for v in vectors.values()], axis=0)  # every vector of ours exists

    if item_vectors is not None:
        item_matrix = np.nan_to_num(item_vectors, nan=0.0).T  # once, not per batch of users
        no_vector = ~np.isfinite(item_vectors).all(1)
        retrieval = {}
        for name in ours:
            x = vectors[name]

            def scores_of(rows_, x=x):
                s = x[rows_] @ item_matrix
                s[:, no_vector] = -np.inf
                s[~have[rows_]] = -np.inf
                return s

            retrieval[name] = future_recall(scores_of, data, cfg.ks)
        popular = np.log1p(data.popularity.astype(np.float64))
        retrieval["popular"] = future_recall(
            lambda rows_: np.where(have[rows_, None], popular[None, :], -np.inf), data, cfg.ks
        )
        n_future = int(sum(1 for i, f in enumerate(data.futures) if len(f) and have[i]))
        for k in cfg.ks:
            key = f"recall@{k}"
            row = {"probe": "future listings", "metric": key, "n": n_future}
            row |= {name: retrieval[name][key] for name in [*ours, "popular"]}
            rows.append(_margin(row, ours, ["popular"]))
        baselines = [*baselines, "popular"]

    rng = np.random.default_rng(cfg.seed)
    for label, y in data.labels.items():
        idx = np.flatnonzero(~pd.isna(y) & have)
        if len(idx) > cfg.max_users:
            idx = np.sort(rng.choice(idx, cfg.max_users, replace=False))
        yy = y[idx].astype(str)
        counts = pd.Series(yy).value_counts()
        if len(counts) < 2 or counts.min() < max(cfg.folds, 2):
            continue
        row = {"probe": label, "metric": "roc_auc", "n": len(idx), "classes": len(counts)}
        for name in ours:
            row[name] = linear_probe(vectors[name][idx], yy, cfg.folds, cfg.seed)
        for name in data.baselines:
            row[name] = linear_probe(data.baselines[name][idx], yy, cfg.folds, cfg.seed)
        rows.append(_margin(row, ours, list(data.baselines)))
    return ProbeReport(rows, ours, baselines)


def _margin(row: dict, ours: list[str], baselines: list[str]) -> dict:
    best_ours = max(ours, key=lambda n: row[n] if np.isfinite(row[n]) else -np.inf)
    best_base = max((b for b in baselines if b in row), key=lambda n: row[n] if np.isfinite(row[n]) else -np.inf)
    return row | {
        "best_ours": best_ours,
        "best_baseline": best_base,
        "margin": float(row[best_ours] - row[best_base]),
    }
