"""The shape every model shares, so one evaluation loop serves them all (RecTools-style).

``fit`` learns from ``split.train`` (and lst features when the model uses them);
``score`` returns a dense ``(len(users), n_items)`` float32 matrix for users given by their
index in the split and their history. Items a model cannot score get ``-inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from embeddings.data.split import Split


class Recommender(Protocol):
    name: str

    def fit(self, split: Split) -> Recommender: ...

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray: ...


def popularity_scores(split: Split) -> np.ndarray:
    """Training click counts per item (the naive baseline's scores)."""
    counts = np.bincount(
        np.concatenate([s for s in split.train if len(s)] or [np.zeros(0, int)]), minlength=split.n_items
    )
    return counts.astype(np.float32)


class Popularity:
    """Most-clicked listings first: the naive baseline every model must beat."""

    name = "popular"

    def fit(self, split: Split) -> Popularity:
        self._scores = popularity_scores(split)
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self._scores, (len(users), 1))
