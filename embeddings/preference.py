"""Rent/sale preference from user embeddings, evaluated without leakage.

Label: what the user does *after* the cut-off. Each click on a listing at or after the cut-off
votes for its deal type (view 1, favourite 3, contact 5); the user is ``rent`` (1) when rent
gets more than half of the weight, ``sale`` (0) when less, and unlabelled on a tie or with no
click after the cut-off. Features come only from *before* the cut-off: the embedding as of the
cut-off, and for the baseline the share of rent listings in the pre-cut-off history.

Evaluation splits by user (stratified, seeded). CatBoost on the embedding, calibrated with
Platt scaling fitted on out-of-fold margins of the training users, is compared on the same test
users with two baselines: the history rent share used as a score, and logistic regression on the
embedding. Users with fewer than ``min_history`` clicks before the cut-off are reported apart.

The classifier (:class:`PreferenceModel`) is one CatBoost model file (``.cbm``, CatBoost's own format)
with the Platt parameters in its metadata; its version is a hash of that file, and
:func:`score_users` scores any embeddings with it, new users included, without refitting.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from embeddings.contract import latest_versions
from embeddings.errors import InputError
from embeddings.io import write_bytes

EVENT_WEIGHTS = {"view": 1.0, "favorite": 3.0, "contact": 5.0}


def _deal_of(events: pd.DataFrame, listings: pd.DataFrame) -> pd.Series:
    deal = latest_versions(listings).set_index("item_id")["deal_type"]
    return events["item_id"].map(deal)


def preference_labels(events: pd.DataFrame, listings: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """``user_id``, ``label`` (1 = rent), ``label_weight``: from clicks at or after ``cutoff`` only."""
    after = events[events["event_timestamp"] >= cutoff]
    w = after["event_type"].map(EVENT_WEIGHTS).to_numpy()
    rent = (_deal_of(after, listings) == "rent").to_numpy()
    votes = pd.DataFrame({"user_id": after["user_id"].to_numpy(), "rent": w * rent, "all": w})
    votes = votes.groupby("user_id").sum()
    share = votes["rent"] / votes["all"]
    labelled = share[share != 0.5]
    return pd.DataFrame(
        {
            "user_id": labelled.index,
            "label": (labelled > 0.5).astype(int).to_numpy(),
            "label_weight": votes.loc[labelled.index, "all"].to_numpy(),
        }
    )


def history_rent_share(events: pd.DataFrame, listings: pd.DataFrame, cutoff: pd.Timestamp) -> pd.Series:
    """Share of rent listings among each user's clicks before ``cutoff`` (the obvious baseline)."""
    before = events[events["event_timestamp"] < cutoff]
    rent = (_deal_of(before, listings) == "rent").astype(float)
    return rent.groupby(before["user_id"].to_numpy()).mean().rename("history_rent_share")


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    pred = (p >= 0.5).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "n": len(y),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
    }


def _booster(seed: int) -> CatBoostClassifier:
    return CatBoostClassifier(
        iterations=300,
        depth=4,
        learning_rate=0.05,
        random_seed=seed,
        verbose=0,
        thread_count=2,
        allow_writing_files=False,
    )


def _matrix(user_embeddings: pd.DataFrame) -> np.ndarray:
    return np.stack(user_embeddings["embedding"].to_numpy()).astype(np.float32)


class PreferenceModel:
    """CatBoost on the user embedding, Platt-calibrated: ``p_rent = sigmoid(a * margin + b)``."""

    def __init__(self, booster: CatBoostClassifier, a: float, b: float, version: str = ""):
        self.booster, self.a, self.b, self.version = booster, a, b, version

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int = 0, folds: int = 3) -> PreferenceModel:
        margins = np.zeros(len(y))
        for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
            fold = _booster(seed).fit(x[train], y[train])
            margins[held] = fold.predict(x[held], prediction_type="RawFormulaVal")
        platt = LogisticRegression(C=1e6, max_iter=1000).fit(margins[:, None], y)
        model = cls(_booster(seed).fit(x, y), float(platt.coef_[0, 0]), float(platt.intercept_[0]))
        model.version = model._digest(model._bytes())
        return model

    def predict(self, x: np.ndarray) -> np.ndarray:
        margin = self.booster.predict(x, prediction_type="RawFormulaVal")
        return 1.0 / (1.0 + np.exp(-(self.a * margin + self.b)))

    def _bytes(self) -> bytes:
        meta = self.booster.get_metadata()
        meta["platt_a"], meta["platt_b"] = repr(self.a), repr(self.b)
        meta["model_guid"] = meta["train_finish_time"] = ""  # the file is then a function of the model alone
        fd, tmp = tempfile.mkstemp(suffix=".cbm")
        os.close(fd)
        try:
            self.booster.save_model(tmp, format="cbm")
            return Path(tmp).read_bytes()
        finally:
            Path(tmp).unlink(missing_ok=True)

    @staticmethod
    def _digest(data: bytes) -> str:
        return "catboost-" + hashlib.sha256(data).hexdigest()[:12]

    def save(self, path: str | os.PathLike) -> Path:
        return write_bytes(path, self._bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreferenceModel:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: classifier not found")
        booster = CatBoostClassifier()
        try:
            booster.load_model(str(path), format="cbm")
            meta = booster.get_metadata()
            a, b = float(meta["platt_a"]), float(meta["platt_b"])
        except Exception as exc:  # CatBoostError, KeyError: not our classifier file
            raise InputError(f"{path}: not an lst-embeddings rent/sale classifier ({exc})") from exc
        return cls(booster, a, b, cls._digest(path.read_bytes()))


def score_users(model: PreferenceModel, user_embeddings: pd.DataFrame) -> pd.DataFrame:
    """``user_id``, ``p_rent``, ``predicted_deal_type``, ``classifier_version``, ``event_timestamp`` per user."""
    p = model.predict(_matrix(user_embeddings))
    return pd.DataFrame(
        {
            "user_id": user_embeddings["user_id"].to_numpy(object),
            "p_rent": p.astype(np.float32),
            "predicted_deal_type": np.where(p >= 0.5, "rent", "sale"),
            "classifier_version": model.version,
            "event_timestamp": user_embeddings["event_timestamp"].to_numpy(),
        }
    )


@dataclass
class PreferenceResult:
    table: list[dict]  # one row per (model, users) with the metrics
    scores: pd.DataFrame  # every embedded user: user_id, p_rent, predicted_deal_type, classifier_version, ...
    n_labelled: int
    n_train: int
    model: PreferenceModel


def fit_preference(
    user_embeddings: pd.DataFrame,
    events: pd.DataFrame,
    listings: pd.DataFrame,
    cutoff: pd.Timestamp,
    latent: pd.DataFrame | None = None,
    min_history: int = 3,
    test_size: float = 0.3,
    seed: int = 0,
) -> PreferenceResult:
    """Train on users labelled after ``cutoff``, report against the baselines, score every embedded user."""
    labels = preference_labels(events, listings, cutoff)
    share = history_rent_share(events, listings, cutoff)
    data = user_embeddings.merge(labels, on="user_id").join(share, on="user_id")
    data["history_rent_share"] = data["history_rent_share"].fillna(0.5)
    if data["label"].nunique() < 2 or len(data) < 20:
        raise InputError(f"too few labelled users after the cut-off ({len(data)}); need at least 20 with both classes")
    train, test = train_test_split(data, test_size=test_size, stratify=data["label"], random_state=seed)
    x_train, x_test = _matrix(train), _matrix(test)
    y_train, y_test = train["label"].to_numpy(), test["label"].to_numpy()

    catboost = PreferenceModel.fit(x_train, y_train, seed)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5)).fit(x_train, y_train)
    predictions = {
        "catboost(embedding)": catboost.predict(x_test),
        "logreg(embedding)": logreg.predict_proba(x_test)[:, 1],
        "history rent share": test["history_rent_share"].to_numpy(),
    }
    short = (test["n_events"] < min_history).to_numpy()
    groups = {
        "all test users": np.ones(len(test), bool),
        f"history >= {min_history}": ~short,
        f"history < {min_history}": short,
    }
    table = []
    for group, mask in groups.items():
        for name, p in predictions.items():
            if mask.any():
                table.append({"users": group, "model": name, **_metrics(y_test[mask], p[mask])})
    if latent is not None:
        truth = test[["user_id"]].merge(latent[["user_id", "intent"]], on="user_id", how="left")["intent"].to_numpy()
        sure = np.isin(truth, ["rent", "sale"])
        for name, p in predictions.items():
            table.append(
                {
                    "users": "vs latent intent (rent/sale users)",
                    "model": name,
                    **_metrics((truth[sure] == "rent").astype(int), p[sure]),
                }
            )
        label_agreement = float(np.mean((truth[sure] == "rent").astype(int) == y_test[sure]))
        table.append(
            {
                "users": "label vs latent intent",
                "model": "agreement",
                "n": int(sure.sum()),
                "precision": label_agreement,
            }
        )

    return PreferenceResult(table, score_users(catboost, user_embeddings), len(data), len(train), catboost)
