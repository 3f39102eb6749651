"""Build any model by name for a split, so the pipeline, the CLI and the benchmarks share one recipe."""

from __future__ import annotations

import os

import pandas as pd

from embeddings.data.features import listing_features
from embeddings.data.split import Split
from embeddings.errors import InputError
from embeddings.feature_store import Repo, listings_from_store
from embeddings.io import load_checkpoint
from embeddings.models.base import Popularity, Recommender
from embeddings.models.lightfm_model import LightFMConfig, LightFMRecommender
from embeddings.models.sasrec import SASRecConfig, SASRecRecommender
from embeddings.training.config import TrainConfig

MODELS = ("popular", "lightfm", "lightfm+lst", "sasrec")


def make_model(
    name: str,
    split: Split,
    listings: pd.DataFrame | None,
    *,
    lightfm: LightFMConfig | None = None,
    sasrec: SASRecConfig | None = None,
    train: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    feature_store: Repo | None = None,
    init_from: str | os.PathLike | None = None,
) -> Recommender:
    """An unfitted model.

    With ``feature_store``, SASRec reads lst features from Feast's listing view as of the split's cut-off
    instead of the listings table. With ``init_from`` (a SASRec checkpoint) the model keeps that checkpoint's
    shape and lst normalisation and starts fitting from its weights (listings matched by id).
    """
    if name == "popular":
        return Popularity()
    if name in ("lightfm", "lightfm+lst"):
        cfg = lightfm or LightFMConfig()
        cfg.use_features = name == "lightfm+lst"
        features = None
        if cfg.use_features:
            features = _features(split, listings, "lightfm+lst", None).binned()[0]
        return LightFMRecommender(cfg, features)
    if name == "sasrec":
        init = load_checkpoint(init_from) if init_from else None
        cfg = _init_config(init, sasrec, init_from) if init else (sasrec or SASRecConfig())
        has_features = listings is not None or feature_store is not None
        cfg = cfg.resolve(has_features, train_clicks=int(split.train.lengths.sum()))
        features, stats = None, init.get("feature_stats") if init else None
        if cfg.encoder.uses_features:
            if feature_store is not None:
                listings = listings_from_store(
                    feature_store, split.item_ids, split.cutoff or pd.Timestamp.now(tz="UTC")
                )
            lst = _features(split, listings, f"sasrec[{cfg.item_encoder}]", stats or None)
            features, stats = lst.smooth()[0], lst.stats
        model = SASRecRecommender(cfg, train or TrainConfig(), features, checkpoint_dir, feature_stats=stats)
        if init:
            model.init_state = {"model": init["model"], "item_ids": init["item_ids"]}
        return model
    raise InputError(f"unknown model {name!r}; choose from {MODELS}")


def _init_config(init: dict, asked: SASRecConfig | None, path) -> SASRecConfig:
    """The checkpoint's model settings; settings asked for that differ from both the defaults and the checkpoint's
    are refused (fine-tuning keeps the checkpoint's shape: nothing is silently replaced)."""
    from dataclasses import fields

    cfg = SASRecConfig(**init["model_config"])
    if asked is not None:
        default = SASRecConfig()
        clash = [
            f"{f.name} {getattr(asked, f.name)!r} (the checkpoint has {getattr(cfg, f.name)!r})"
            for f in fields(SASRecConfig)
            if getattr(asked, f.name) not in (getattr(default, f.name), getattr(cfg, f.name))
        ]
        if clash:
            raise InputError(
                f"{path}: fine-tuning keeps the checkpoint's model settings, but these were asked for: "
                f"{', '.join(clash)}; drop them or train from scratch"
            )
    return cfg


def _features(split: Split, listings: pd.DataFrame | None, who: str, stats: dict | None):
    if listings is None:
        raise InputError(f"{who} needs lst features: give a data folder with listings.parquet")
    return listing_features(listings, split.item_ids, split.cutoff, stats=stats)
