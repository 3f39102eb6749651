"""LightFM baseline (WARP), with or without lst item features: the production model to beat."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from embeddings.data.split import Split
from embeddings.progress import progress


@dataclass
class LightFMConfig:
    factors: int = 64
    epochs: int = 30
    loss: str = "warp"
    learning_rate: float = 0.05
    item_alpha: float = 0.0
    max_sampled: int = 10
    use_features: bool = False
    threads: int = 2
    seed: int = 0


class LightFMRecommender:
    def __init__(self, config: LightFMConfig | None = None, item_features: sp.csr_matrix | None = None):
        self.config = config or LightFMConfig()
        if self.config.use_features and item_features is None:
            raise ValueError("use_features=True needs an item feature matrix (lst features)")
        self.item_features = item_features
        self.name = "lightfm+lst" if self.config.use_features else "lightfm"
        self.fit_seconds = 0.0

    def _features(self, n_items: int) -> sp.csr_matrix | None:
        if not self.config.use_features:
            return None
        identity = sp.identity(n_items, format="csr", dtype=np.float32)
        return sp.hstack([identity, self.item_features]).tocsr()

    def fit(self, split: Split) -> LightFMRecommender:
        c = self.config
        rows = np.repeat(np.arange(split.n_users), [len(s) for s in split.train])
        cols = np.concatenate([s for s in split.train] or [np.zeros(0, int)])
        matrix = sp.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(split.n_users, split.n_items))
        self._item_features = self._features(split.n_items)
        self._model = LightFM(
            no_components=c.factors,
            loss=c.loss,
            learning_rate=c.learning_rate,
            item_alpha=c.item_alpha,
            max_sampled=c.max_sampled,
            random_state=c.seed,
        )
        start = time.perf_counter()
        for _ in progress(range(c.epochs), desc=f"{self.name} epochs", unit="epoch"):
            self._model.fit_partial(matrix, item_features=self._item_features, epochs=1, num_threads=c.threads)
        self.fit_seconds = time.perf_counter() - start
        self._scorable = np.ones(split.n_items, bool) if c.use_features else split.seen_in_train()
        self._item_bias, self._item_vecs = self._model.get_item_representations(self._item_features)
        self._user_bias, self._user_vecs = self._model.get_user_representations()
        return self

    def score(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = self._user_vecs[users] @ self._item_vecs.T + self._item_bias[None, :]
        scores = scores.astype(np.float32)
        scores[:, ~self._scorable] = -np.inf
        return scores
