"""Ranking metrics: HR@K and NDCG@K over the full catalogue, and the sampled variant.

``target_ranks`` gives the 0-based rank of each target among all items. Ties count against
the target (a model that scores everything equal ranks the target last, not first), and a
target the model cannot score (score ``-inf``, e.g. a listing an id model never saw) is a miss.
Items in the user's history are excluded from ranking by default, as in the literature.

The sampled variant (100 random negatives per case) exists only to compare with older papers
that used it; its numbers are much higher and are always labelled ``sampled``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def target_ranks(scores: np.ndarray, targets: np.ndarray, histories: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """0-based rank of each target in its row (pessimistic on ties); ``inf`` when unscorable.

    Pass ``histories`` to exclude seen items; they must not contain the target. The rank is the count of items
    scored at or above the target, less the seen ones among them (each counted once): one pass over the scores,
    in torch (all threads), without copying them.
    """
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    rows = torch.arange(len(targets), device="cpu")  # scores are host arrays
    t = s[rows, torch.as_tensor(np.asarray(targets, dtype=np.int64))]
    ranks = (s >= t[:, None]).sum(1) - 1
    if histories is not None and len(histories):
        row = np.repeat(np.arange(len(histories), dtype=np.int64), [len(h) for h in histories])
        seen = np.unique(row * s.shape[1] + np.concatenate(histories).astype(np.int64))  # (row, item), once each
        seen_row, seen_item = torch.from_numpy(seen // s.shape[1]), torch.from_numpy(seen % s.shape[1])
        above = s[seen_row, seen_item] >= t[seen_row]
        ranks -= torch.bincount(seen_row[above], minlength=len(targets))
    return torch.where(torch.isfinite(t), ranks.double(), torch.inf).numpy()


def sampled_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    histories: Sequence[np.ndarray],
    n_negatives: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """Rank of each target among ``n_negatives`` items drawn uniformly from those the user has not seen."""
    rng = np.random.default_rng(seed)
    n_items = scores.shape[1]
    ranks = np.empty(len(targets))
    for i, (target, history) in enumerate(zip(targets, histories, strict=True)):
        banned = np.zeros(n_items, bool)
        banned[history] = True
        banned[target] = True
        pool = np.flatnonzero(~banned)
        negatives = rng.choice(pool, size=min(n_negatives, len(pool)), replace=False)
        t = scores[i, target]
        neg = scores[i, negatives]
        ranks[i] = (neg >= t).sum() if np.isfinite(t) else np.inf
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k)) if len(ranks) else float("nan")


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: 1 / log2(rank + 2) when rank < K, else 0."""
    if not len(ranks):
        return float("nan")
    gains = np.zeros(len(ranks))
    hit = ranks < k
    gains[hit] = 1.0 / np.log2(ranks[hit] + 2.0)
    return float(gains.mean())


def summarize(ranks: np.ndarray, ks: Sequence[int] = (10,), prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"{prefix}hr@{k}"] = hit_rate(ranks, k)
        out[f"{prefix}ndcg@{k}"] = ndcg(ranks, k)
    return out


def vector_stats(vectors: np.ndarray) -> dict:
    """Median norm and median per-component spread of user vectors. Stored in the checkpoint for the
    validation users at the end of training, so a run can be checked against it with no earlier run."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x[np.isfinite(x).all(1)] if len(x) else x
    if len(x) < 2:
        return {}
    return {"norm_median": float(np.median(np.linalg.norm(x, axis=1))), "spread": float(np.median(x.std(0)))}
