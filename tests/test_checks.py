"""Faults injected into a run are caught by the Great Expectations checks and stop the publish."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import day, fit_scores

from embeddings.cli import main
from embeddings.data.contract import read_parquet
from embeddings.feature_store import online_features
from embeddings.io import write_json, write_parquet
from embeddings.record import RunRecord
from embeddings.stages.embed import Embedder
from validation.checks import check_run

CUTOFF = day(4)


@pytest.fixture(scope="module")
def clean(tiny_dir, tiny_week, tiny_hybrid_model, tmp_path_factory):
    """A clean run folder (embeddings/, preference/) and data folder, as make demo lays them out."""
    listings, events, _ = tiny_week
    root = tmp_path_factory.mktemp("clean")
    embedder = Embedder.from_checkpoint(tiny_hybrid_model, listings)
    users = embedder.embed_users(events, CUTOFF, progress=False)
    run = root / "run"
    write_parquet(users, run / "embeddings" / "user_embeddings.parquet")
    write_parquet(embedder.embed_items(CUTOFF), run / "embeddings" / "listing_embeddings.parquet")
    write_json(run / "embeddings" / "reference.json", embedder.model.reference)
    RunRecord(CUTOFF, embedder.version, embedder.encoder, embedder.model.heads).write(run / "embeddings" / "run.json")
    write_parquet(
        fit_scores(embedder, users, events, listings, CUTOFF).scores, run / "preference" / "preference.parquet"
    )
    return run, tiny_dir


@pytest.fixture()
def published(clean, feature_repo, tmp_path):
    """A feature repo holding the clean run, and copies of the run and data to break."""
    run, data = clean
    assert main(["publish", "--run", str(run), "--data", str(data), "--repo", str(feature_repo.path)]) == 0
    bad_run, bad_data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run, bad_run, ignore=shutil.ignore_patterns("validation"))
    shutil.copytree(data, bad_data, ignore=shutil.ignore_patterns("validation"))
    return feature_repo, bad_run, bad_data


def _edit(path, fn):
    write_parquet(fn(read_parquet(path)), path)


def _users(run):
    return run / "embeddings" / "user_embeddings.parquet"


def _rotate(df):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    return df.assign(embedding=[np.asarray(v) @ q for v in df["embedding"]])


def _flip_half(df):
    half = np.random.default_rng(0).random(len(df)) < 0.5
    p = np.where(half, 1 - df["p_rent"], df["p_rent"]).astype(np.float32)
    return df.assign(p_rent=p, predicted_deal_type=np.where(p >= 0.5, "rent", "sale"))


def _set_null(df):
    df = df.copy()
    df.loc[df.index[:5], "user_id"] = None
    return df


def _bad_deal(df):
    df = df.copy()
    df.loc[df.index[:3], "deal_type"] = "lease"
    return df


def _nan_vector(df):
    df = df.copy()
    v = np.array(df["embedding"].iloc[0], dtype=np.float32)
    v[3] = np.nan
    df.at[df.index[0], "embedding"] = v
    return df


def _collapse(df):
    base = np.asarray(df["embedding"].iloc[0], dtype=np.float32)
    noise = np.random.default_rng(0).normal(0, 1e-6, (len(df), len(base)))
    return df.assign(embedding=list((base + noise).astype(np.float32)))


FAULTS = {
    # fault: (file to break, how, the check that must catch it)
    "missing column": (
        "data/events.parquet",
        lambda d: d.drop(columns="event_type"),
        ("events", "expect_column_to_exist", "event_type"),
    ),
    "nulls": ("data/events.parquet", _set_null, ("events", "expect_column_values_to_not_be_null", "user_id")),
    "out-of-domain value": (
        "data/listings.parquet",
        _bad_deal,
        ("listings", "expect_column_values_to_be_in_set", "deal_type"),
    ),
    "duplicated events": (
        "data/events.parquet",
        lambda d: pd.concat([d, d.head(50)]),
        ("events", "expect_compound_columns_to_be_unique", None),
    ),
    "NaN embedding": (
        "run/embeddings/user_embeddings.parquet",
        _nan_vector,
        ("user_vectors", "expect_column_values_to_be_in_set", "finite"),
    ),
    "collapsed embeddings": (
        "run/embeddings/user_embeddings.parquet",
        _collapse,
        ("user_collapse", "expect_column_values_to_be_between", "near_duplicate_share"),
    ),
    "rotated space, same model version": (
        "run/embeddings/user_embeddings.parquet",
        _rotate,
        ("drift", "expect_column_values_to_be_between", "shared_user_median_cosine"),
    ),
    "p_rent flipped for half the users": (
        "run/preference/preference.parquet",
        _flip_half,
        ("drift", "expect_column_values_to_be_between", "flipped_share"),
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_caught_and_publish_refused(published, fault, capsys):
    repo, run, data = published
    target, breaker, (suite, expectation, column) = FAULTS[fault]
    _edit((run if target.startswith("run/") else data) / target.split("/", 1)[1], breaker)
    users = list(read_parquet(_users(run))["user_id"].dropna()[:10])
    before = online_features(repo, users)
    offline = {p: p.read_bytes() for p in (repo.data / "offline").rglob("*.parquet")}

    rc = main(["publish", "--run", str(run), "--data", str(data), "--repo", str(repo.path)])
    out = capsys.readouterr()
    assert rc == 4
    assert "publish refused" in out.err and f"FAILED [{suite}] {expectation}" in out.out
    if column:
        assert f"{expectation} {column}:" in out.out
    report = json.loads((run / "validation" / "checks.json").read_text())
    assert any(c["suite"] == suite and c["expectation"] == expectation and not c["success"] for c in report["checks"])
    assert (run / "validation" / "report.html").exists()
    # nothing changed: offline files, online values
    assert {p: p.read_bytes() for p in (repo.data / "offline").rglob("*.parquet")} == offline
    pd.testing.assert_frame_equal(online_features(repo, users), before)


def test_drift_can_be_overridden_with_a_recorded_reason(published, capsys):
    repo, run, data = published
    _edit(run / "preference" / "preference.parquet", _flip_half)
    for path in (run / "embeddings").glob("*.parquet"):  # a retrained model: a new run of the same week
        _edit(path, lambda d: d.assign(model_version="sasrec-retrained"))
    args = ["publish", "--run", str(run), "--data", str(data), "--repo", str(repo.path), "--allow-drift", "a reason"]
    assert main(args) == 4  # the tables say another model than the run's record: no reason publishes that
    assert "model_version_is_the_records" in capsys.readouterr().out
    record = RunRecord.read(run / "embeddings" / "run.json")
    replace(record, model_version="sasrec-retrained", space_version="").write(run / "embeddings" / "run.json")
    reason = "new pricing rules moved many users between rent and sale"
    args = ["publish", "--run", str(run), "--data", str(data), "--repo", str(repo.path), "--allow-drift", reason]
    assert main(args) == 4  # a model whose space cannot be mapped into the pinned one: no drift reason covers that
    assert "FAILED [compatibility]" in capsys.readouterr().out
    assert main([*args, "--new-space", "a model without a map to the old space"]) == 0
    manifest = repo.manifests()[-1]
    assert manifest["drift_override"]["reason"] == reason
    assert any("flipped_share" in f for f in manifest["drift_override"]["failed"])


def test_schema_failures_cannot_be_overridden(published):
    repo, run, data = published
    _edit(data / "events.parquet", lambda d: d.drop(columns="event_type"))
    assert (
        main(["publish", "--run", str(run), "--data", str(data), "--repo", str(repo.path), "--allow-drift", "please"])
        == 4
    )


def test_a_clean_second_run_passes_every_check(published, clean):
    repo, _, _ = published
    run, data = clean
    assert main(["validate", "--run", str(run), "--data", str(data), "--repo", str(repo.path)]) == 0
    report = json.loads((run / "validation" / "checks.json").read_text())
    assert all(c["success"] for c in report["checks"])
    assert report["figures"]["same_space"] is True and report["figures"]["psi_p_rent"] == 0.0


def test_new_model_version_reports_alignment_instead_of_failing(clean, tiny_week):
    run, _ = clean
    listings, events, _ = tiny_week
    users = read_parquet(_users(run))
    scores = read_parquet(run / "preference" / "preference.parquet")
    retrained = _rotate(users).assign(model_version="sasrec-retrained")
    report = check_run(events, listings, retrained, None, scores, {"users": users, "scores": scores})
    assert not report.failures
    assert report.figures["same_space"] is False
    assert report.figures["procrustes_residual"] < 0.05  # a pure rotation aligns back
    assert report.figures["knn_overlap@10"] > 0.95
    assert "refit" in report.figures["space_change"]


def test_profile_vectors_are_checked_and_their_drift_stops_a_publish(clean, tiny_week):
    """The profile table gets the vector, run and drift suites of its own: a rotated profile space under the
    same version fails drift even when the intent vectors are unchanged; NaN profiles fail the vector suite."""
    run, _ = clean
    listings, events, _ = tiny_week
    users = read_parquet(_users(run))
    scores = read_parquet(run / "preference" / "preference.parquet")
    profiles = users.assign(model_version=users["model_version"] + "-profile")
    previous = {"users": users, "scores": scores, "profiles": profiles}

    same = check_run(events, listings, users, None, scores, previous, profiles=profiles)
    assert not same.failures
    assert {"user_profile_vectors", "user_profile_collapse", "profile_run", "profile_drift"} <= {
        c.suite for c in same.checks
    }

    drifted = check_run(events, listings, users, None, scores, previous, profiles=_rotate(profiles))
    assert drifted.failures and {c.suite for c in drifted.failures} == {"profile_drift"}
    assert drifted.drift_only  # overridable with a reason, like the intent drift

    broken = profiles.assign(embedding=[np.full(16, np.nan, np.float32)] * len(profiles))
    report = check_run(events, listings, users, None, scores, None, profiles=broken)
    assert "user_profile_vectors" in {c.suite for c in report.failures} and not report.drift_only
