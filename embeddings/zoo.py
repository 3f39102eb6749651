"""Build any model by name for a split, so the CLI, the demo and the benchmarks share one recipe."""

from __future__ import annotations

import os

import pandas as pd

from embeddings.features import listing_features
from embeddings.models.base import Popularity, Recommender
from embeddings.models.lightfm_model import LightFMConfig, LightFMRecommender
from embeddings.publish import Repo, listings_from_store
from embeddings.split import Split
from embeddings.train import SASRecRecommender, TrainConfig

MODELS = ("popular", "lightfm", "lightfm+lst", "sasrec")


def make_model(
    name: str,
    split: Split,
    listings: pd.DataFrame | None,
    *,
    lightfm: LightFMConfig | None = None,
    sasrec: dict | None = None,
    train: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    feature_store: Repo | None = None,
) -> Recommender:
    """An unfitted model. ``sasrec`` holds SASRecConfig fields (``item_encoder``, ``dim``, ...).

    With ``feature_store``, SASRec reads lst features from Feast's listing view as of the split's cut-off
    instead of the listings table.
    """
    if name == "popular":
        return Popularity()
    if name in ("lightfm", "lightfm+lst"):
        cfg = lightfm or LightFMConfig()
        cfg.use_features = name == "lightfm+lst"
        features = None
        if cfg.use_features:
            features = _features(split, listings, "lightfm+lst").binned()[0]
        return LightFMRecommender(cfg, features)
    if name == "sasrec":
        sasrec = dict(sasrec or {})
        features, stats = None, None
        if sasrec.get("item_encoder", "id") != "id":
            if feature_store is not None:
                listings = listings_from_store(
                    feature_store, split.item_ids, split.cutoff or pd.Timestamp.now(tz="UTC")
                )
            lst = _features(split, listings, f"sasrec[{sasrec['item_encoder']}]")
            features, stats = lst.smooth()[0], lst.stats
        return SASRecRecommender(sasrec, train or TrainConfig(), features, checkpoint_dir, feature_stats=stats)
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def _features(split: Split, listings: pd.DataFrame | None, who: str):
    if listings is None:
        raise ValueError(f"{who} needs lst features: give a data folder with listings.parquet")
    return listing_features(listings, split.item_ids, split.cutoff)
