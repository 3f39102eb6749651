"""Compatible releases: a retrain keeps the vector space that consumers fitted their models in.

Every publish of a new model is a **release**. Its vectors go out twice: in the model's own (native) space, and
mapped into the **pinned space**, the one consumers are pinned to (``space_version``: the model version whose space
it is). The map (:class:`~embeddings.space.SpaceMap`) is fitted at publish time on the vectors both the new model
and the previous release's model give the same inputs (this run's users as of its cut-off, and the listings both
know), then chained with the previous release's own map, so a space stays served across many retrains.

A new space is declared on purpose (``new_space``, a reason): for a **transition window** of ``window`` releases
(this one included) the pinned views keep the old space and the ``*_next_space`` views carry the new one; the
release after the window switches the pinned views to the new space and the old one stops.

:func:`align` builds the release of a run against the latest published one, with the figures the publish gate's
compatibility suite reads (:func:`compatibility`): a reference consumer fitted on the previous release's vectors,
scored on the new release's vectors of the same users, and the recall of the users' next listings among the
previous release's listing vectors.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from embeddings.errors import InputError
from embeddings.io import write_atomic, write_json
from embeddings.space import KINDS, SpaceMap, fit_space_map

WINDOW = 2  # releases during which a declared new space is published beside the old one
HEADS = ("intent", "profile")  # intent maps the user and listing vectors; profile the profile head's
MODEL = "model.pt"
CLASSIFIER = "classifier.cbm"
RELEASE = "release.json"
MIN_LABELLED = 20  # fewer labelled users: no consumer figure
MIN_SEEKERS = 20  # fewer users with a listing to find after the cut-off: no retrieval figure


@dataclass(frozen=True)
class Release:
    model_version: str
    space_version: str  # the pinned space: the model version whose space ``embedding`` columns are in
    chain: tuple[str, ...]  # model versions from this release back to the pinned space's own model
    maps: dict[str, SpaceMap] = field(default_factory=dict)  # head -> map to the pinned space (none: own space)
    next_space: str | None = None  # during a transition: the declared new space
    next_chain: tuple[str, ...] = ()
    next_maps: dict[str, SpaceMap] = field(default_factory=dict)
    transition_left: int = 0  # releases, this one included, that still publish the next space beside the old
    new_space_reason: str | None = None
    against: str | None = None  # the previous release's model version (None: the first release)
    map_kind: str = "orthogonal"
    fit: dict = field(default_factory=dict)  # what the maps were fitted on
    compat: dict = field(default_factory=dict)  # the compatibility figures the gate reads
    scorer: dict = field(default_factory=dict)  # the rent/sale classifier: classifier_version, head (its input)

    @classmethod
    def own(cls, model_version: str, **kwargs) -> Release:
        """A release in its model's own space (the first one, or a declared new space without transition)."""
        return cls(model_version, model_version, (model_version,), **kwargs)

    def space_of(self, head: str, next_space: bool = False) -> str | None:
        """The space the published ``head`` vectors are in (pinned, or the next space during a transition)."""
        maps, space = (self.next_maps, self.next_space) if next_space else (self.maps, self.space_version)
        if space is None:
            return None
        version = maps[head].target if head in maps else self.model_version
        if head == "intent" and version != space:
            raise InputError(f"release {self.model_version}: no map to space {space}")
        return version + ("-profile" if head == "profile" else "")

    def _read(self, head: str, vectors: np.ndarray, next_space: bool = False) -> np.ndarray:
        maps = self.next_maps if next_space else self.maps
        return maps[head](vectors) if head in maps else np.asarray(vectors, np.float32)

    def columns(self, table: pd.DataFrame, head: str) -> pd.DataFrame:
        """``table`` (native vectors in ``embedding``) as published: ``embedding`` in the pinned space with its
        ``space_version``, ``native_embedding`` (the model's own), and ``next_space_embedding`` /
        ``next_space_version`` (null outside a transition)."""
        native = np.stack(table["embedding"].to_numpy()).astype(np.float32)
        out = table.assign(
            embedding=list(self._read(head, native)),
            space_version=self.space_of(head),
            native_embedding=list(native),
        )
        if self.next_space is None:
            return out.assign(next_space_embedding=None, next_space_version=None)
        return out.assign(
            next_space_embedding=list(self._read(head, native, next_space=True)),
            next_space_version=self.space_of(head, next_space=True),
        )

    def summary(self) -> dict:
        """What the manifest and the feature views' tags record."""
        return {
            "model_version": self.model_version,
            "space_version": self.space_version,
            "chain": list(self.chain),
            "next_space": self.next_space,
            "next_chain": list(self.next_chain),
            "transition_left": self.transition_left,
            "new_space_reason": self.new_space_reason,
            "against": self.against,
            "map_kind": self.map_kind,
            "fit": self.fit,
            "compat": self.compat,
            "scorer": self.scorer,
        }

    def save(self, folder: Path, model: Path | None = None, classifier: Path | None = None) -> Path:
        """The release folder: ``release.json``, the maps (``map-<head>.npz``, ``next-map-<head>.npz``), the
        model checkpoint (so the next release can be aligned to this one, and new users embedded in its space) and
        the rent/sale classifier (``classifier.cbm``: the stream worker scores with it)."""
        folder = Path(folder)
        if classifier is not None and self.scorer:
            write_atomic(folder / CLASSIFIER, lambda tmp: shutil.copyfile(classifier, tmp))
        for name, maps in (("map", self.maps), ("next-map", self.next_maps)):
            for head, m in maps.items():
                m.save(folder / f"{name}-{head}.npz")
        if model is not None and not (folder / MODEL).exists():
            write_atomic(folder / MODEL, lambda tmp: shutil.copyfile(model, tmp))
        return write_json(folder / RELEASE, self.summary())

    @classmethod
    def load(cls, folder: Path) -> Release:
        folder = Path(folder)
        try:
            raw = json.loads((folder / RELEASE).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder}: not a release ({exc})") from exc

        def maps(name: str) -> dict[str, SpaceMap]:
            files = {h: folder / f"{name}-{h}.npz" for h in HEADS}
            return {h: SpaceMap.load(path) for h, path in files.items() if path.exists()}

        return cls(
            raw["model_version"],
            raw["space_version"],
            tuple(raw["chain"]),
            maps("map"),
            raw.get("next_space"),
            tuple(raw.get("next_chain") or ()),
            maps("next-map"),
            int(raw.get("transition_left") or 0),
            raw.get("new_space_reason"),
            raw.get("against"),
            raw.get("map_kind", "orthogonal"),
            raw.get("fit") or {},
            raw.get("compat") or {},
            raw.get("scorer") or {},
        )


def release_dir(data: Path, model_version: str) -> Path:
    """Where a feature repo keeps a release (``data/releases/<model_version>``)."""
    return Path(data) / "releases" / model_version


def published_release(data: Path, manifest: dict | None) -> Release | None:
    """The release of a published run's manifest (runs published before releases existed: their own space)."""
    if not manifest or not manifest.get("model_version"):
        return None
    folder = release_dir(data, manifest["model_version"])
    if (folder / RELEASE).exists():
        return Release.load(folder)
    return Release.own(manifest["model_version"])


@dataclass
class Vectors:
    """One model's vectors of the same inputs: users (intent, and profile when the model has that head) and
    listings, as native frames with ``embedding``."""

    users: pd.DataFrame
    profiles: pd.DataFrame | None
    items: pd.DataFrame


def align(
    previous: Release | None,
    model_version: str,
    new: Vectors,
    old: Vectors | None,
    labels: tuple[pd.DataFrame, pd.DataFrame] | None,
    new_space: str | None = None,
    window: int = WINDOW,
    kind: str = "orthogonal",
) -> Release:
    """The release of a model whose vectors are ``new``, against the ``previous`` release (None: the first).

    ``old``: the previous release's model's vectors of the same inputs (None when its checkpoint or this run's is
    not at hand: then no map can be made). ``labels``: (preference labels, clicks) after the cut-off, for the
    compatibility figures. ``new_space``: a reason to declare this model's space the new pinned one."""
    if kind not in KINDS:
        raise InputError(f"space map must be one of {KINDS}, got {kind!r}")
    if window < 0:
        raise InputError(f"the transition window must be 0 or more releases, got {window}")
    if previous is None:
        return Release.own(model_version, new_space_reason=new_space, map_kind=kind)
    if previous.model_version == model_version:
        if new_space:
            raise InputError(f"model {model_version} is already released; a new space needs a new model")
        return previous  # a later cut-off of the same model: the same release
    common = {"against": previous.model_version, "map_kind": kind}
    if old is None:
        why = f"no map from {model_version} to space {previous.space_version}: a model checkpoint is missing"
        compat = {"space_kept": False, "map": why}
        if new_space:
            return Release.own(model_version, new_space_reason=new_space, compat=compat, **common)
        return Release.own(model_version, compat=compat, **common)
    steps, fit = _fit_steps(new, old, model_version, previous.model_version, kind)
    to_old = _chain(steps, previous.maps)
    old_chain = (model_version, *previous.chain)
    if new_space:
        if window == 0:  # switch now: the old space stops with this release
            release = Release.own(model_version, new_space_reason=new_space, fit=fit, **common)
            reads = previous.maps, previous.space_version
        else:
            release = Release(
                model_version, previous.space_version, old_chain, to_old, model_version, (model_version,), {},
                window, new_space, fit=fit, **common,
            )  # fmt: skip
            reads = previous.maps, previous.space_version
    elif previous.next_space and previous.transition_left > 1:  # still in the window: both spaces
        release = Release(
            model_version, previous.space_version, old_chain, to_old, previous.next_space,
            (model_version, *previous.next_chain), _chain(steps, previous.next_maps), previous.transition_left - 1,
            fit=fit, **common,
        )  # fmt: skip
        reads = previous.maps, previous.space_version
    elif previous.next_space:  # the window is over: the next space becomes the pinned one, the old one stops
        release = Release(
            model_version, previous.next_space, (model_version, *previous.next_chain),
            _chain(steps, previous.next_maps), fit=fit, **common,
        )  # fmt: skip
        reads = previous.next_maps, previous.next_space
    else:
        release = Release(model_version, previous.space_version, old_chain, to_old, fit=fit, **common)
        reads = previous.maps, previous.space_version
    old_in_space = replace(previous, maps=reads[0], space_version=reads[1])  # as its consumers read it
    compat = compatibility(release, old_in_space, new, old, labels) | {"space_kept": True}
    return replace(release, compat=compat)


def _fit_steps(new: Vectors, old: Vectors, source: str, target: str, kind: str) -> tuple[dict[str, SpaceMap], dict]:
    """Maps from the new model's native space to the previous model's, per head: intent on the shared users and
    listings, profile on the shared users' profile vectors (when both models have the head)."""
    users = _shared(new.users, old.users, "user_id")
    items = _shared(new.items, old.items, "item_id")
    if len(users[0]) + len(items[0]) < 2:
        raise InputError(f"no user or listing shared by models {source} and {target}: cannot fit a space map")
    both = np.vstack([users[0], items[0]]), np.vstack([users[1], items[1]])
    steps = {"intent": fit_space_map(*both, source, target, kind)}
    fit = {"users": len(users[0]), "listings": len(items[0])}
    if new.profiles is not None and old.profiles is not None:
        profiles = _shared(new.profiles, old.profiles, "user_id")
        steps["profile"] = fit_space_map(profiles[0], profiles[1], source, target, kind)
    return steps, fit


def _shared(new: pd.DataFrame, old: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    both = new[[key, "embedding"]].merge(old[[key, "embedding"]], on=key, suffixes=("_new", "_old"))
    dim_new, dim_old = len(new["embedding"].iloc[0]), len(old["embedding"].iloc[0])
    if both.empty:
        return np.zeros((0, dim_new)), np.zeros((0, dim_old))
    return np.stack(both["embedding_new"].to_numpy()), np.stack(both["embedding_old"].to_numpy())


def _chain(steps: dict[str, SpaceMap], onward: dict[str, SpaceMap]) -> dict[str, SpaceMap]:
    """Each head's step followed by the previous release's map of that head (none: its own space)."""
    return {h: s.then(onward[h]) if h in onward else s for h, s in steps.items()}


def compatibility(
    release: Release,
    previous: Release,
    new: Vectors,
    old: Vectors,
    labels: tuple[pd.DataFrame, pd.DataFrame] | None,
    seed: int = 0,
) -> dict:
    """How a consumer fitted on the previous release's vectors does on this release's (same users, same clicks,
    both read into this release's pinned space):

    - ``consumer_auc_ratio``: a logistic regression on the previous release's user vectors predicting the user's
      rent/sale labels after the cut-off (two folds: fitted on one half, scored on the other), ROC-AUC on this
      release's vectors / on the previous release's;
    - ``retrieval_recall_ratio``: recall@10 of each user's listings after the cut-off among the previous release's
      listing vectors, ranked by this release's user vectors / by the previous release's.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    figures: dict = {"consumers_pinned_to": previous.space_of("intent"), "read_in": release.space_of("intent")}
    if labels is None:
        return figures | {"skipped": "no click after the cut-off: no labels to test a consumer with"}
    prefs, after = labels
    users = new.users[["user_id"]].merge(old.users[["user_id"]], on="user_id")["user_id"]
    mine = _by_id(new.users, users, "user_id", lambda x: release._read("intent", x))
    theirs = _by_id(old.users, users, "user_id", lambda x: previous._read("intent", x))
    y = prefs.set_index("user_id")["label"].reindex(users).to_numpy()
    known = ~np.isnan(y)
    figures["labelled_users"] = int(known.sum())
    if known.sum() >= MIN_LABELLED and len(np.unique(y[known])) == 2:
        idx = np.flatnonzero(known)
        idx = idx[np.random.default_rng(seed).permutation(len(idx))]
        halves = (idx[: len(idx) // 2], idx[len(idx) // 2 :])
        auc_old, auc_new = [], []
        for fit, test in (halves, halves[::-1]):
            if len(np.unique(y[fit])) < 2 or len(np.unique(y[test])) < 2:
                continue
            consumer = LogisticRegression(max_iter=2000).fit(theirs[fit], y[fit])
            auc_old.append(roc_auc_score(y[test], consumer.predict_proba(theirs[test])[:, 1]))
            auc_new.append(roc_auc_score(y[test], consumer.predict_proba(mine[test])[:, 1]))
        if auc_old:
            figures |= {"consumer_auc_previous": float(np.mean(auc_old)), "consumer_auc": float(np.mean(auc_new))}
            figures["consumer_auc_ratio"] = figures["consumer_auc"] / max(figures["consumer_auc_previous"], 1e-9)
    items = old.items[["item_id", "embedding"]]
    item_vectors = previous._read("intent", np.stack(items["embedding"].to_numpy()))
    wanted = after[after["item_id"].isin(set(items["item_id"]))].groupby("user_id")["item_id"].agg(set)
    seekers = users[users.isin(wanted.index)].index.to_numpy()
    figures["retrieval_users"] = len(seekers)
    if len(seekers) >= MIN_SEEKERS:
        targets = wanted.loc[users.iloc[seekers]].to_numpy()
        ids = items["item_id"].to_numpy()
        before = _recall(theirs[seekers], item_vectors, ids, targets)
        now = _recall(mine[seekers], item_vectors, ids, targets)
        figures |= {"retrieval_recall_previous": before, "retrieval_recall": now}
        figures["retrieval_recall_ratio"] = now / max(before, 1e-9)
    return figures


def _by_id(frame: pd.DataFrame, ids: pd.Series, key: str, read) -> np.ndarray:
    vectors = frame.set_index(key)["embedding"].loc[ids.to_numpy()]
    return np.asarray(read(np.stack(vectors.to_numpy())), np.float64)


def _recall(users: np.ndarray, items: np.ndarray, ids: np.ndarray, targets, k: int = 10) -> float:
    scores = users @ np.asarray(items, np.float64).T
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    hits = [len(set(ids[row]) & want) / min(k, len(want)) for row, want in zip(top, targets, strict=True)]
    return float(np.mean(hits))
