"""Rent/sale preference from user embeddings, point-in-time correct: a score published at time T uses nothing
from after T.

Label: what a user does in a window. Each click on a listing in the window votes for its deal type (view 1,
favourite 3, contact 5); the user is ``rent`` (1) when rent gets more than half of the weight, ``sale`` (0) when
less, and unlabelled on a tie or with no click in the window.

Fitting (:func:`fit_preference`), for scores published at the cut-off T: the features of each user as of
``T - label_days`` (the user vector then, the rent share and count of their clicks before it), the label from
their clicks in ``[T - label_days, T)``. The fitted classifier then scores every user's features as of T. Nothing
after T is read, so the published ``p_rent`` is what a consumer could have had at T. (Fitting on labels from after
T, as this module did before, gave ROC-AUC 0.9998 on the classifier's own users against 0.95 on the others.)

CatBoost on the vector and two history features, its depth, learning rate and rounds chosen by cross-validated
ROC-AUC on the fitting users, Platt-calibrated on the chosen configuration's out-of-fold margins. Evaluation is
separate and honest: where the data go on after T, the published scores are set against labels from after T,
beside the baselines a consumer could build (the history rent share alone; logistic regression on the same
features, fitted the same way), for every user and apart for users whose past labels fitted the classifier and
users never seen.

The classifier (:class:`PreferenceModel`) is one CatBoost model file (``.cbm``, CatBoost's own format) with the
Platt parameters and the feature layout in its metadata; its version is a hash of that file, and
:func:`score_users` scores any user vectors with it (new users included) without refitting, after checking the
file fits them.
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
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from embeddings.data.contract import latest_versions
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


HISTORY_FEATURES = ("history_rent_share", "log1p_history_clicks")
# (depth, learning rate, rounds) tried by cross-validation; measured on the demo week (README, bench/NOTES.md)
GRID = ((3, 0.1, 200), (4, 0.05, 300), (4, 0.03, 800), (6, 0.03, 500))
LABEL_DAYS = 2.0
MAX_FIT_USERS = 50_000  # the classifier is fitted (and its settings cross-validated) on at most this many users


def _booster(seed: int, depth: int = 4, learning_rate: float = 0.05, iterations: int = 300) -> CatBoostClassifier:
    return CatBoostClassifier(
        iterations=iterations,
        depth=depth,
        learning_rate=learning_rate,
        random_seed=seed,
        verbose=0,
        thread_count=2,
        allow_writing_files=False,
    )


def preference_features(
    vectors: pd.DataFrame, events: pd.DataFrame, listings: pd.DataFrame, as_of: pd.Timestamp
) -> np.ndarray:
    """One row per row of ``vectors`` (``user_id``, ``embedding``): the vector, then the rent share of the user's
    clicks before ``as_of`` (0.5 without any) and log(1 + their count)."""
    before = events[events["event_timestamp"] < as_of]
    share = history_rent_share(events, listings, as_of)
    count = before.groupby("user_id").size()
    ids = vectors["user_id"].to_numpy(object)
    extra = np.column_stack(
        [share.reindex(ids).fillna(0.5).to_numpy(), np.log1p(count.reindex(ids).fillna(0).to_numpy())]
    )
    return np.hstack([np.stack(vectors["embedding"].to_numpy()), extra]).astype(np.float32)


class PreferenceModel:
    """CatBoost on :func:`preference_features`, Platt-calibrated: ``p_rent = sigmoid(a * margin + b)``."""

    def __init__(self, booster: CatBoostClassifier, a: float, b: float, version: str = "", search=()):
        self.booster, self.a, self.b, self.version = booster, a, b, version
        self.search = list(search)  # the cross-validated grid: depth, learning_rate, iterations, cv_roc_auc

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int = 0, folds: int = 3, grid=GRID) -> PreferenceModel:
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y))
        search, best = [], None
        for depth, lr, rounds in grid:
            margins = np.zeros(len(y))
            for train, held in splits:
                fold = _booster(seed, depth, lr, rounds).fit(x[train], y[train])
                margins[held] = fold.predict(x[held], prediction_type="RawFormulaVal")
            auc = float(roc_auc_score(y, margins))
            search.append({"depth": depth, "learning_rate": lr, "iterations": rounds, "cv_roc_auc": auc})
            if best is None or auc > best[0]:
                best = (auc, (depth, lr, rounds), margins)
        _, params, margins = best
        platt = LogisticRegression(C=1e6, max_iter=1000).fit(margins[:, None], y)
        booster = _booster(seed, *params).fit(x, y)
        model = cls(booster, float(platt.coef_[0, 0]), float(platt.intercept_[0]), search=search)
        model.version = model._digest(model._bytes())
        return model

    @property
    def n_features(self) -> int:
        return len(self.booster.feature_names_) if self.booster.is_fitted() else 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InputError(
                f"rent/sale classifier {self.version} takes {self.n_features} features "
                f"({self.n_features - len(HISTORY_FEATURES)}-dim vectors and {len(HISTORY_FEATURES)} history "
                f"features), got {x.shape[-1]}: it was fitted on vectors of another shape"
            )
        margin = self.booster.predict(x, prediction_type="RawFormulaVal")
        return 1.0 / (1.0 + np.exp(-(self.a * margin + self.b)))

    def _bytes(self) -> bytes:
        meta = self.booster.get_metadata()
        meta["platt_a"], meta["platt_b"] = repr(self.a), repr(self.b)
        meta["features"] = "embedding+" + "+".join(HISTORY_FEATURES)
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
            layout = meta["features"]
            classes = len(booster.classes_) if booster.classes_ is not None else 0
        except Exception as exc:  # CatBoostError, KeyError: not our classifier file
            raise InputError(f"{path}: not an lst-embeddings rent/sale classifier ({exc})") from exc
        expected = "embedding+" + "+".join(HISTORY_FEATURES)
        if not (np.isfinite(a) and np.isfinite(b)) or layout != expected or classes != 2:
            raise InputError(
                f"{path}: not an lst-embeddings rent/sale classifier (needs a two-class model on {expected} "
                f"with finite calibration; found {classes} classes, features {layout!r}, a={a}, b={b})"
            )
        return cls(booster, a, b, cls._digest(path.read_bytes()))


def score_users(
    model: PreferenceModel, user_embeddings: pd.DataFrame, events: pd.DataFrame, listings: pd.DataFrame
) -> pd.DataFrame:
    """``user_id``, ``p_rent``, ``predicted_deal_type``, ``classifier_version``, ``event_timestamp`` per user: the
    features as of the vectors' own ``event_timestamp`` (their cut-off), so nothing later is read."""
    as_of = pd.Timestamp(user_embeddings["event_timestamp"].iloc[0])
    p = model.predict(preference_features(user_embeddings, events, listings, as_of))
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
    table: list[dict]  # one row per (model, users) with the metrics against labels from after the cut-off
    scores: pd.DataFrame  # every embedded user: user_id, p_rent, predicted_deal_type, classifier_version, ...
    n_labelled: int  # users labelled in the fitting window [cutoff - label_days, cutoff)
    n_train: int  # of those, the users the classifier was fitted on (with a vector as of the window's start)
    model: PreferenceModel


def fit_preference(
    users: pd.DataFrame,
    past_users: pd.DataFrame,
    events: pd.DataFrame,
    listings: pd.DataFrame,
    cutoff: pd.Timestamp,
    label_days: float = LABEL_DAYS,
    latent: pd.DataFrame | None = None,
    min_history: int = 3,
    seed: int = 0,
    max_fit_users: int = MAX_FIT_USERS,
) -> PreferenceResult:
    """Fit on ``past_users`` (vectors as of ``cutoff - label_days``) labelled by their clicks in
    ``[cutoff - label_days, cutoff)``, score ``users`` (vectors as of ``cutoff``), and report the scores against
    labels from after ``cutoff`` (when the events go on) beside the baselines."""
    cutoff = pd.Timestamp(cutoff)
    start = cutoff - pd.Timedelta(days=label_days)
    window = events[events["event_timestamp"] < cutoff]
    labels = preference_labels(window, listings, start)
    fit = past_users.merge(labels, on="user_id")
    if fit["label"].nunique() < 2 or len(fit) < 20:
        raise InputError(
            f"too few users labelled between {start} and the cut-off {cutoff} ({len(fit)}); need at least 20 with "
            "both classes (a longer label window: label_days)"
        )
    if len(fit) > max_fit_users:  # a seeded sample: on a site-size week the grid would otherwise cost minutes
        fit = fit.sample(max_fit_users, random_state=seed).reset_index(drop=True)
    x_fit, y_fit = preference_features(fit, events, listings, start), fit["label"].to_numpy()
    catboost = PreferenceModel.fit(x_fit, y_fit, seed)
    scores = score_users(catboost, users, events, listings)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5)).fit(x_fit, y_fit)
    table = _evaluate(users, scores, logreg, set(fit["user_id"]), events, listings, cutoff, latent, min_history)
    table += [{"users": "cross-validation on the fitting users", "model": "catboost", **r} for r in catboost.search]
    return PreferenceResult(table, scores, len(labels), len(fit), catboost)


def _evaluate(users, scores, logreg, fitted: set, events, listings, cutoff, latent, min_history) -> list[dict]:
    """The published scores, logistic regression fitted the same way and the history rent share, against labels
    from after ``cutoff`` (none: no rows). Never used to fit anything."""
    after = preference_labels(events, listings, cutoff)
    test = users.merge(after, on="user_id")
    if test.empty:
        return []
    x = preference_features(test, events, listings, cutoff)
    y = test["label"].to_numpy()
    predictions = {
        "catboost (published)": scores.set_index("user_id").loc[test["user_id"], "p_rent"].to_numpy(np.float64),
        "logreg(vector + history)": logreg.predict_proba(x)[:, 1],
        "history rent share": x[:, -2].astype(np.float64),
    }
    seen = test["user_id"].isin(fitted).to_numpy()
    short = (test["n_events"] < min_history).to_numpy()
    groups = {
        "all users labelled after the cut-off": np.ones(len(test), bool),
        "users whose past labels fitted the classifier": seen,
        "users never seen by the classifier": ~seen,
        f"history >= {min_history}": ~short,
        f"history < {min_history}": short,
    }
    table = []
    for group, mask in groups.items():
        for name, p in predictions.items():
            if mask.any():
                table.append({"users": group, "model": name, **_metrics(y[mask], p[mask])})
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
        agreement = float(np.mean((truth[sure] == "rent").astype(int) == y[sure]))
        table.append(
            {"users": "label vs latent intent", "model": "agreement", "n": int(sure.sum()), "precision": agreement}
        )
    return table
