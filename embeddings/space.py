"""Maps between the vector spaces of two releases, so that models fitted on last week's vectors keep working.

A retrain (even with the same data and another seed) gives vectors in another space: a consumer's model fitted on
the previous release reads the new vectors as noise. A :class:`SpaceMap` takes vectors of the new release to the
space of an older one, ``x -> (x - mean_from) @ weight + mean_to``; it is fitted on the same inputs seen by both
releases (the users' click sequences embedded by both models, and the listings both know). Maps chain: release 3
-> 2 composed with 2 -> 1 is a map 3 -> 1 (:meth:`SpaceMap.then`), so a space stays serviceable across releases.

Two kinds, both measured in ``bench/compat.py``:

- ``orthogonal``: Procrustes (a rotation, or a semi-orthogonal matrix when the dimensions differ): distances and
  angles are kept, so the new model's own geometry passes through unchanged;
- ``linear``: ridge least squares: closer fits, may shrink or stretch directions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embeddings.errors import InputError

KINDS = ("orthogonal", "linear")


@dataclass(frozen=True)
class SpaceMap:
    weight: np.ndarray  # (dim of the new space, dim of the old one)
    mean_from: np.ndarray
    mean_to: np.ndarray
    source: str  # the space the map reads (a release's model version)
    target: str  # the space it writes

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.shape[-1] != self.weight.shape[0]:
            raise InputError(
                f"space map {self.source} -> {self.target} takes vectors of {self.weight.shape[0]} floats, "
                f"got {vectors.shape[-1]}"
            )
        return ((vectors - self.mean_from) @ self.weight + self.mean_to).astype(np.float32)

    def then(self, older: SpaceMap) -> SpaceMap:
        """This map followed by ``older`` (whose source must be this map's target): one map, source to older's
        target."""
        if older.source != self.target:
            raise InputError(f"cannot chain {self.source} -> {self.target} with {older.source} -> {older.target}")
        weight = self.weight @ older.weight
        mean_to = (self.mean_to - older.mean_from) @ older.weight + older.mean_to
        return SpaceMap(weight, self.mean_from, mean_to, self.source, older.target)

    def save(self, path: str | os.PathLike) -> Path:
        from embeddings.io import write_atomic

        arrays = {"weight": self.weight, "mean_from": self.mean_from, "mean_to": self.mean_to}
        names = {"source": np.array(self.source), "target": np.array(self.target)}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **names)

        return write_atomic(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpaceMap:
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(f["weight"], f["mean_from"], f["mean_to"], str(f["source"]), str(f["target"]))
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"{path}: not a space map ({exc})") from exc


def fit_space_map(
    new: np.ndarray, old: np.ndarray, source: str, target: str, kind: str = "orthogonal", ridge: float = 1e-2
) -> SpaceMap:
    """A map from ``new`` vectors to ``old`` ones, row i of both being the same user or listing."""
    if kind not in KINDS:
        raise InputError(f"unknown space map kind {kind!r}; choose from {KINDS}")
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    if len(new) != len(old) or len(new) < 2:
        raise InputError(f"a space map needs the same rows in both spaces, at least 2; got {len(new)} and {len(old)}")
    mean_from, mean_to = new.mean(0), old.mean(0)
    a, b = new - mean_from, old - mean_to
    if kind == "orthogonal":
        u, _, vt = np.linalg.svd(a.T @ b, full_matrices=False)
        weight = u @ vt
    else:
        weight = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ b)
    return SpaceMap(weight, mean_from, mean_to, source, target)
