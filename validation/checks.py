"""Checks before a publish: Great Expectations suites on the inputs, the vectors, the scores and the drift.

Data suites run on the raw Parquet tables (so a broken file is described expectation by
expectation, not only stopped by the contract loader). Vector and drift checks first turn the
run into small tables (one row per vector: dimension, finiteness, norm; one summary row: near
duplicates, mean pairwise cosine, coverage; one drift row against the last published run) and
validate those with suites, so every threshold lives in ``validation/thresholds.py``.

Drift against the last published run:

* scores: PSI of ``p_rent``, the change of the predicted rent share, and the share of users scored in
  both runs whose predicted deal type flipped (PSI alone misses a flip that keeps the distribution);
* same model version (new data, same weights): a classifier telling old from new embeddings
  (ROC-AUC), share of components whose KS test rejects, mean shift, and the median cosine of each
  shared user's old and new vector;
* new model version: the spaces are not comparable, so nothing fails; the alignment on shared users
  (orthogonal Procrustes residual, 10-nearest-neighbour overlap) is reported and the version change
  is flagged (consumers' downstream models need retraining).
"""

from __future__ import annotations

import html
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ks_2samp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from embeddings.data import contract
from embeddings.io import write_json, write_text
from embeddings.metrics import vector_stats
from embeddings.record import RunRecord
from embeddings.release import Release
from validation import suites
from validation import thresholds as t


@dataclass
class Check:
    suite: str
    expectation: str
    column: str | None
    success: bool
    observed: str
    kind: str  # "data", "vectors", "scores", "run", "drift", "compatibility", "warning"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    previous_run_id: str | None = None  # the published run drift was measured against

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success and c.kind != "warning"]

    @property
    def drift_only(self) -> bool:
        return bool(self.failures) and all(c.kind == "drift" for c in self.failures)

    def summary(self) -> str:
        lines = [f"{len(self.checks)} checks, {len(self.failures)} failed"]
        for c in self.failures:
            where = f"{c.column}: " if c.column else ""
            lines.append(f"  FAILED [{c.suite}] {c.expectation} {where}{c.observed}")
        for c in self.checks:
            if c.kind == "warning" and not c.success:
                lines.append(f"  warning [{c.suite}] {c.expectation} {c.column}: {c.observed}")
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        write_json(folder / "checks.json", {"checks": [asdict(c) for c in self.checks], "figures": self.figures})
        rows = "".join(
            f"<tr class={'ok' if c.success else ('warn' if c.kind == 'warning' else 'fail')}>"
            f"<td>{html.escape(c.suite)}</td><td>{html.escape(c.expectation)}</td>"
            f"<td>{html.escape(c.column or '')}</td>"
            f"<td>{'pass' if c.success else 'FAIL'}</td><td>{html.escape(c.observed)}</td></tr>"
            for c in self.checks
        )
        figures = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in self.figures.items()
        )
        page = f"""<!doctype html><meta charset=utf-8><title>lst-embeddings checks</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}
.fail{{background:#fdd}} .warn{{background:#ffd}} .ok td:nth-child(4){{color:#080}}</style>
<h1>Checks: {len(self.checks)} run, {len(self.failures)} failed</h1>
<h2>Figures</h2><table>{figures}</table>
<h2>Expectations</h2><table><tr><th>suite<th>expectation<th>column<th>result<th>observed</tr>{rows}</table>"""
        return write_text(folder / "report.html", page)


class Validator:
    """Runs suites on pandas frames through one ephemeral GX context."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("lst_embeddings")
        self.report = Report()

    def run(self, name: str, frame: pd.DataFrame, suite, kind: str) -> bool:
        asset = self.source.add_dataframe_asset(f"{name}_{len(self.report.checks)}")
        batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
        suite = (
            self.context.suites.add(suite)
            if suite.name not in [s.name for s in self.context.suites.all()]
            else self.context.suites.get(suite.name)
        )
        result = batch.validate(suite)
        for r in result.results:
            cfg = r.expectation_config
            res = r.result or {}
            if "observed_value" in res and res["observed_value"] is not None:
                observed = f"observed {res['observed_value']}"
            elif res.get("unexpected_count"):
                examples = ", ".join(repr(x) for x in (res.get("partial_unexpected_list") or [])[:3])
                observed = f"{res['unexpected_count']} rows ({res.get('unexpected_percent', 0):.2f} %), e.g. {examples}"
            elif not r.success and r.exception_info and r.exception_info.get("raised_exception"):
                observed = str(r.exception_info.get("exception_message", "error"))[:200]
            else:
                observed = "ok" if r.success else "failed"
            bounds = {k: cfg.kwargs.get(k) for k in ("min_value", "max_value") if cfg.kwargs.get(k) is not None}
            if bounds:
                observed += f" (allowed {bounds})"
            self.report.checks.append(
                Check(suite.name, cfg.type, cfg.kwargs.get("column"), bool(r.success), observed, kind)
            )
        return bool(result.success)


# ----------------------------------------------------------------------------------------- tables to check
def _contract_flags(out: pd.DataFrame, columns, rules, listings: pd.DataFrame | None = None) -> pd.DataFrame:
    """The data contract's own rules as flag columns (``valid_<column>``, one per cross-column rule), so the
    suites check exactly what the loaders enforce."""
    for col in columns:
        if col.name in out:
            out[f"valid_{col.name}"] = contract.valid_rows(out[col.name], col).to_numpy()
    for name, ok in contract.rule_flags(out, rules, listings).items():
        out[name] = ok.to_numpy()
    return out


def events_table(events: pd.DataFrame, listings: pd.DataFrame | None = None) -> pd.DataFrame:
    out = events.copy()
    if "event_timestamp" in out:
        ts = pd.to_datetime(out["event_timestamp"], utc=True, errors="coerce", format="ISO8601")
        out["event_age_days"] = ((ts.max() - ts).dt.total_seconds() / 86400).fillna(0.0)
    else:
        out["event_age_days"] = 0.0
    usable = listings if listings is not None and {"item_id", "created_at"} <= set(listings.columns) else None
    return _contract_flags(out, contract.EVENT_COLUMNS, contract.EVENT_RULES, usable)


def listings_table(listings: pd.DataFrame) -> pd.DataFrame:
    out = _contract_flags(listings.copy(), contract.LISTING_COLUMNS, contract.LISTING_RULES)
    if {"deal_type", "price"} <= set(out.columns):
        lo = out["deal_type"].map({k: v[0] for k, v in t.PRICE_RANGE.items()})
        hi = out["deal_type"].map({k: v[1] for k, v in t.PRICE_RANGE.items()})
        out["price_in_range"] = (out["price"] >= lo) & (out["price"] <= hi)
    else:
        out["price_in_range"] = False
    if {"city", "lat", "lon"} <= set(out.columns):
        box = out["city"].map(t.CITY_BOXES)
        inside = [
            isinstance(b, tuple) and b[0] <= la <= b[1] and b[2] <= lo_ <= b[3]
            for b, la, lo_ in zip(box, out["lat"], out["lon"], strict=True)
        ]
        out["inside_city_box"] = inside
    else:
        out["inside_city_box"] = False
    return out


def _matrix(frame: pd.DataFrame) -> np.ndarray:
    dims = frame["embedding"].map(len)
    width = int(dims.mode().iloc[0]) if len(dims) else 0
    rows = [np.asarray(v, dtype=np.float64) if len(v) == width else np.full(width, np.nan) for v in frame["embedding"]]
    return np.vstack(rows) if rows else np.zeros((0, width))


def vectors_table(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    vectors = [np.asarray(v, dtype=np.float64) for v in frame["embedding"]]
    return pd.DataFrame(
        {
            "key": frame[key].to_numpy(),
            "dim": [len(v) for v in vectors],
            "finite": [bool(np.isfinite(v).all()) for v in vectors],
            "norm": [float(np.linalg.norm(v)) if np.isfinite(v).all() else np.nan for v in vectors],
        }
    )


def collapse_table(frame: pd.DataFrame, expected: int | None = None, seed: int = 0) -> pd.DataFrame:
    x = _matrix(frame)
    x = x[np.isfinite(x).all(1)]
    total = len(x)
    # users with the same clicks share a vector exactly: that is not collapse, so compare distinct vectors
    x = np.unique(x, axis=0) if total else x
    distinct_share = len(x) / total if total else 1.0
    rng = np.random.default_rng(seed)
    if len(x) > t.DRIFT_SAMPLE:
        x = x[rng.choice(len(x), t.DRIFT_SAMPLE, replace=False)]
    unit = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -1.0)
    n = len(x)
    return pd.DataFrame(
        {
            "near_duplicate_share": [float((cos.max(1) > t.NEAR_DUPLICATE_COSINE).mean()) if n > 1 else 0.0],
            "mean_pairwise_cosine": [float((cos.sum() + n) / (n * (n - 1))) if n > 1 else 0.0],
            "coverage": [len(frame) / expected if expected else 1.0],
            "distinct_share": [distinct_share],
        }
    )


def _psi(old: np.ndarray, new: np.ndarray, bins: int = 10) -> float:
    edges = np.unique(np.quantile(old, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    a = np.histogram(old, edges)[0] / len(old) + 1e-4
    b = np.histogram(new, edges)[0] / len(new) + 1e-4
    return float(np.sum((b - a) * np.log(b / a)))


def _usable(dim: int):
    return lambda v: len(v) == dim and bool(np.isfinite(np.asarray(v, dtype=np.float64)).all())


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x).all(1)] if x.ndim == 2 else x


def drift_table(
    prev_users: pd.DataFrame,
    users: pd.DataFrame,
    prev_scores: pd.DataFrame | None,
    scores: pd.DataFrame | None,
    seed: int = 0,
    versions: tuple[str | None, str | None] = (None, None),
) -> tuple[pd.DataFrame, dict]:
    """One row of drift figures against the last published run: of the scores (when both are given) and of
    the user vectors. ``versions``: the spaces of the previous run's and this run's vectors (as published: the
    pinned space, so that a retrain mapped into it is compared like a run of the same model)."""
    rng = np.random.default_rng(seed)
    row: dict = {}
    if prev_scores is not None and scores is not None:
        row["psi_p_rent"] = _psi(prev_scores["p_rent"].to_numpy(float), scores["p_rent"].to_numpy(float))
        row["rent_share_delta"] = abs(
            float((scores["p_rent"] >= 0.5).mean()) - float((prev_scores["p_rent"] >= 0.5).mean())
        )
        both = prev_scores[["user_id", "predicted_deal_type"]].merge(
            scores[["user_id", "predicted_deal_type"]], on="user_id", suffixes=("_old", "_new")
        )
        row["flipped_share"] = (
            float((both["predicted_deal_type_old"] != both["predicted_deal_type_new"]).mean()) if len(both) else 0.0
        )
    previous_version, version = versions
    same = previous_version is not None and previous_version == version
    shared = prev_users[["user_id", "embedding"]].merge(
        users[["user_id", "embedding"]], on="user_id", suffixes=("_old", "_new")
    )
    # drift is measured on usable vectors only: non-finite or odd-sized ones fail the vector suites instead
    dim = len(prev_users["embedding"].iloc[0])
    usable = shared["embedding_old"].map(_usable(dim)) & shared["embedding_new"].map(_usable(dim))
    shared = shared[usable]
    old_all, new_all = _finite_rows(_matrix(prev_users)), _finite_rows(_matrix(users))
    figures = {
        "same_space": same,
        "shared_users": len(shared),
        "previous_space": str(previous_version),
    }
    if same:
        a = old_all[rng.choice(len(old_all), min(t.DRIFT_SAMPLE, len(old_all)), replace=False)]
        b = new_all[rng.choice(len(new_all), min(t.DRIFT_SAMPLE, len(new_all)), replace=False)]
        x, y = np.vstack([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))]
        ok = np.isfinite(x).all(1)
        auc = cross_val_score(LogisticRegression(max_iter=1000), x[ok], y[ok], cv=3, scoring="roc_auc").mean()
        row["domain_classifier_auc"] = float(auc)
        pvals = [ks_2samp(a[:, j], b[:, j]).pvalue for j in range(a.shape[1])]
        row["drifted_component_share"] = float(np.mean(np.array(pvals) < t.KS_P_VALUE))
        row["mean_shift"] = float(np.linalg.norm(a.mean(0) - b.mean(0)) / np.linalg.norm(a, axis=1).mean())
        if len(shared):
            o, n = np.vstack(shared["embedding_old"]), np.vstack(shared["embedding_new"])
            cos = (o * n).sum(1) / (np.linalg.norm(o, axis=1) * np.linalg.norm(n, axis=1) + 1e-12)
            row["shared_user_median_cosine"] = float(np.median(cos))
        else:
            row["shared_user_median_cosine"] = 1.0
    elif len(shared) >= t.MIN_SHARED_USERS_FOR_ALIGNMENT:
        o, n = np.vstack(shared["embedding_old"]), np.vstack(shared["embedding_new"])
        o, n = (o - o.mean(0)) / (o.std() + 1e-12), (n - n.mean(0)) / (n.std() + 1e-12)
        rot, _ = orthogonal_procrustes(n, o)
        figures["procrustes_residual"] = float(np.linalg.norm(n @ rot - o) / np.linalg.norm(o))
        k = min(10, len(o) - 1)
        idx = rng.choice(len(o), min(t.KNN_SAMPLE, len(o)), replace=False)

        def neighbours(m: np.ndarray) -> np.ndarray:
            d = ((m[idx, None, :] - m[None, :, :]) ** 2).sum(-1)
            d[np.arange(len(idx)), idx] = np.inf
            return np.argsort(d, axis=1)[:, :k]

        no, nn = neighbours(o), neighbours(n)
        figures["knn_overlap@10"] = float(np.mean([len(set(p) & set(q)) / k for p, q in zip(no, nn, strict=True)]))
        figures["space_change"] = "new embedding space: consumers must refit models that use the embedding"
    return pd.DataFrame([row]), figures


def run_table(
    events: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame | None,
    scores: pd.DataFrame | None,
    reference: dict | None,
    record: RunRecord,
    version: str,
    seed: int = 0,
) -> pd.DataFrame:
    """One row of run-level consistency: one model version, the run record's (``version``), scores for exactly
    the embedded users, user vectors that belong to their users' clicks (as of the record's cut-off), and norms
    like the model's own at training time."""
    versions = set(users["model_version"].astype(str)) if "model_version" in users else set()
    row: dict = {"model_versions": len(versions), "model_version_is_the_records": versions == {version}}
    if items is not None and "model_version" in items:
        row["listing_model_versions_match"] = set(items["model_version"].astype(str)) == versions
    if scores is not None:
        embedded, scored = set(users["user_id"]), set(scores["user_id"])
        row["classifier_versions"] = scores["classifier_version"].nunique() if "classifier_version" in scores else 0
        row["users_with_a_score"] = len(embedded & scored) / max(len(embedded), 1)
        row["scores_with_a_user"] = len(embedded & scored) / max(len(scored), 1)
    x = _matrix(users)
    finite = np.isfinite(x).all(1) if x.ndim == 2 and x.shape[1] else np.zeros(len(users), bool)
    if reference and finite.sum() >= 2:
        now = vector_stats(x[finite])
        row["norm_ratio_to_training"] = now["norm_median"] / max(reference["norm_median"], 1e-12)
        row["spread_ratio_to_training"] = now["spread"] / max(reference["spread"], 1e-12)
    if items is not None and {"user_id", "item_id", "event_timestamp"} <= set(events.columns):
        row["history_alignment"] = _history_alignment(events, users, items, x, finite, record.cutoff, seed)
    return pd.DataFrame([row])


def _history_alignment(events, users, items, x, finite, cutoff, seed) -> float:
    """Share of users whose vector scores the listing they clicked last above another user's last listing.

    A user's state follows their clicks, so a trained model scores near 1 (0.99 on the demo week, 0.68 for an
    id model after two epochs on a tiny week); user ids shuffled against their vectors score 0.5."""
    ts = pd.to_datetime(events["event_timestamp"], utc=True, errors="coerce", format="ISO8601")
    before = events.loc[ts < cutoff, ["user_id", "item_id"]].assign(_t=ts)
    last = before.sort_values("_t", kind="stable").groupby("user_id")["item_id"].last()
    item_rows = pd.Index(items["item_id"]).get_indexer(users["user_id"].map(last))
    item_x = _matrix(items)
    ok = finite & (item_rows >= 0)
    if ok.sum() < t.MIN_USERS_FOR_ALIGNMENT_CHECK or item_x.shape[1] != x.shape[1]:
        return 1.0  # too few users to say anything
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(ok)
    idx = idx[rng.permutation(len(idx))[: t.DRIFT_SAMPLE]]
    u, own = x[idx], item_x[item_rows[idx]]
    other = own[rng.permutation(len(idx))]
    return float(np.mean((u * own).sum(1) > (u * other).sum(1)))


def _pinned(release: Release, frame: pd.DataFrame | None, head: str) -> pd.DataFrame | None:
    """The vectors as published (pinned space); vectors of mixed sizes as they are (the vector suites fail them)."""
    if frame is None or frame["embedding"].map(len).nunique() != 1:
        return frame
    return release.columns(frame, head)


def _space(frame: pd.DataFrame | None, own: str | None) -> str | None:
    """The space a table's vectors are in: its ``space_version`` column (published tables), else the model's own."""
    if frame is not None and "space_version" in frame and len(frame) and frame["space_version"].iloc[0]:
        return str(frame["space_version"].iloc[0])
    return own


def _previous_space(previous: dict, table: str) -> str | None:
    """The space of the previous run's published vectors (runs published before releases: the model's own)."""
    frame = previous.get(table)
    key = "model_version" if table == "users" else "profile_model_version"
    own = previous.get(key) or (str(frame["model_version"].iloc[0]) if frame is not None and len(frame) else None)
    return _space(frame, own)


def compatibility_table(release: Release) -> pd.DataFrame:
    """One row: whether the release kept its consumers' space, and how a consumer fitted on the previous release
    does on this one's vectors (:func:`embeddings.release.compatibility`)."""
    figures = release.compat
    row: dict = {
        "space_kept": bool(figures.get("space_kept")),
        "consumer_measured": "consumer_auc_ratio" in figures,
    }
    for key in ("consumer_auc_ratio", "retrieval_recall_ratio"):
        if key in figures:
            row[key] = float(figures[key])
    return pd.DataFrame([row])


def _no_version(items: pd.DataFrame | None) -> pd.DataFrame | None:
    """Listing vectors without their model version (profile vectors carry their own: nothing to match)."""
    return None if items is None else items.drop(columns="model_version", errors="ignore")


# ------------------------------------------------------------------------------------------------- the run
def check_run(
    events: pd.DataFrame,
    listings: pd.DataFrame,
    users: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    scores: pd.DataFrame | None = None,
    previous: dict | None = None,
    reference: dict | None = None,
    *,
    profiles: pd.DataFrame | None = None,
    probes: dict | None = None,
    record: RunRecord | None = None,
    release: Release | None = None,
) -> Report:
    """Every check of a run. ``previous``: {"events_rows", "users", "profiles", "scores"} of the last published
    run; ``reference``: the model's user-vector statistics at training time (``vector_stats``, with the profile
    head's under ``"profile"``); ``profiles``: the profile head's vectors (checked like the intent ones, drift
    included); ``probes``: the run's probe report, shown among the figures; ``release``: the run's release (its
    pinned space and maps, :mod:`embeddings.release`): drift is measured on the vectors as published (pinned
    space against the previous run's pinned space), and its compatibility figures are checked."""
    v = Validator()
    ids = sorted(set(listings["item_id"].astype(str))) if "item_id" in listings else []
    v.run("listings", listings_table(listings), suites.listings_suite(), "data")
    v.run(
        "events", events_table(events, listings), suites.events_suite(ids, (previous or {}).get("events_rows")), "data"
    )
    expected = None
    if users is not None and record is None:
        record = RunRecord.of_vectors(users, profiles)  # tables built by hand
    if users is not None and "event_timestamp" in events and "user_id" in events:
        ts = pd.to_datetime(events["event_timestamp"], utc=True, errors="coerce", format="ISO8601")
        expected = events.loc[ts < record.cutoff, "user_id"].nunique()
    user_tables = {"user": users, "user_profile": profiles}
    for prefix, frame in user_tables.items():
        if frame is None:
            continue
        dim = int(pd.Series([len(e) for e in frame["embedding"]]).mode().iloc[0])
        name = f"{prefix}_vectors"
        v.run(name, vectors_table(frame, "user_id"), suites.vectors_suite(name, dim), "vectors")
        table = collapse_table(frame, expected)
        v.report.figures.update({f"{prefix}s_{k}": round(float(x), 4) for k, x in table.iloc[0].items()})
        v.run(f"{prefix}_collapse", table, suites.collapse_suite(f"{prefix}_collapse", True), "vectors")
    if items is not None:
        dim = int(pd.Series([len(e) for e in items["embedding"]]).mode().iloc[0])
        v.run(
            "listing_vectors", vectors_table(items, "item_id"), suites.vectors_suite("listing_vectors", dim), "vectors"
        )
        table = collapse_table(items)
        v.report.figures.update({f"listings_{k}": round(float(x), 4) for k, x in table.iloc[0].items()})
        v.run("listing_collapse", table, suites.collapse_suite("listing_collapse", False), "vectors")
    if scores is not None:
        v.run("scores", scores, suites.scores_suite(), "scores")
    if users is not None:
        table = run_table(events, users, items, scores, reference, record, record.model_version)
        v.report.figures.update({f"run_{k}": round(float(x), 4) for k, x in table.iloc[0].items()})
        v.run("run", table, suites.run_suite(list(table.columns)), "run")
        if not reference:
            v.report.checks.append(
                Check("run", "training-time reference", "norm_ratio_to_training", False, "none given", "warning")
            )
    if profiles is not None:
        if users is not None and set(profiles["user_id"]) != set(users["user_id"]):
            v.report.checks.append(
                Check("run", "profile and intent vectors for the same users", "user_id", False, "differ", "run")
            )
        profile_version = record.profile_model_version or ""
        table = run_table(
            events, profiles, _no_version(items), None, (reference or {}).get("profile"), record, profile_version
        )
        v.report.figures.update({f"profile_{k}": round(float(x), 4) for k, x in table.iloc[0].items()})
        v.run("profile_run", table, suites.run_suite(list(table.columns), "profile_run"), "run")
    if release is not None and release.against not in (None, release.model_version):
        table = compatibility_table(release)
        v.report.figures.update({f"compat_{k}": x for k, x in release.compat.items()})
        kind = "warning" if release.new_space_reason else "compatibility"  # a declared new space: reported only
        v.run("compatibility", table, suites.compatibility_suite(list(table.columns)), kind)
    pinned = {"users": users, "profiles": profiles}
    if release is not None and previous:
        pinned = {"users": _pinned(release, users, "intent"), "profiles": _pinned(release, profiles, "profile")}
    if previous and users is not None and scores is not None and previous.get("users") is not None:
        versions = (_previous_space(previous, "users"), _space(pinned["users"], record.model_version))
        table, figures = drift_table(previous["users"], pinned["users"], previous["scores"], scores, versions=versions)
        v.report.figures.update({k: (round(x, 4) if isinstance(x, float) else x) for k, x in figures.items()})
        v.report.figures.update({k: round(float(x), 4) for k, x in table.iloc[0].items()})
        v.run("drift", table, suites.drift_suite(bool(figures["same_space"]), list(table.columns)), "drift")
        v.run("drift_warnings", table, suites.drift_warning_suite(), "warning")
    if previous and profiles is not None and previous.get("profiles") is not None:
        own = record.profile_model_version
        versions = (_previous_space(previous, "profiles"), _space(pinned["profiles"], own))
        table, figures = drift_table(previous["profiles"], pinned["profiles"], None, None, versions=versions)
        v.report.figures.update(
            {f"profile_{k}": (round(x, 4) if isinstance(x, float) else x) for k, x in figures.items()}
        )
        v.report.figures.update({f"profile_{k}": round(float(x), 4) for k, x in table.iloc[0].items()})
        same = bool(figures["same_space"])
        v.run("profile_drift", table, suites.drift_suite(same, list(table.columns), "profile_drift"), "drift")
    for row in (probes or {}).get("rows", []):
        for name in (probes or {}).get("ours", []) + (probes or {}).get("baselines", []):
            if row.get(name) is not None:
                v.report.figures[f"probe_{row['probe']}_{row['metric']}_{name}"] = round(float(row[name]), 4)
    if probes and probes.get("preferred"):
        v.report.figures["probe_preferred_user_vector"] = probes["preferred"]
    return v.report
