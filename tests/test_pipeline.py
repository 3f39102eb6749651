"""The weekly job through the Python API alone, the gate inside the library, and `run --config` after crashes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import day

from embeddings import pipeline as pl
from embeddings.cli import main
from embeddings.data import load_data
from embeddings.data.contract import read_parquet
from embeddings.errors import ChecksFailed, InputError
from embeddings.feature_store import online_features
from embeddings.models.sasrec import SASRecConfig
from embeddings.record import RunRecord
from embeddings.training.config import TrainConfig

CUTOFF = str(day(4))  # mid-week: enough users labelled after it in a tiny week
TINY_MODEL = SASRecConfig(item_encoder="hybrid", max_len=20, dim=16, profile_horizon=4)
TINY_TRAIN = TrainConfig(epochs=3, batch_size=32, bf16=False)


@pytest.fixture(scope="module")
def job(tiny_dir, tmp_path_factory):
    """The whole job through the library: (data, layout, split config, results by stage)."""
    layout = pl.RunLayout(tmp_path_factory.mktemp("api-run"))
    data = load_data(tiny_dir)
    split = pl.DataConfig(tiny_dir, cutoff=CUTOFF)
    trained = pl.train(data, layout, split, TINY_MODEL, TINY_TRAIN)
    embedded = pl.embed(data, layout, trained.model)
    probed = pl.probe(data, layout, pl.ProbeSettings(folds=3))
    classified = pl.classify(data, layout)
    pics = pl.pictures(data, layout, pl.PicturesConfig(sample=150))
    done = {"train": trained, "embed": embedded, "probe": probed, "classify": classified, "pictures": pics}
    return data, layout, done


def _online(repo, users):
    return online_features(repo, users).set_index("user_id").sort_index()


def test_whole_job_through_the_python_api_then_a_user_read_back(job, tiny_dir, feature_repo):
    data, layout, done = job
    assert layout.model.exists() and done["train"].metrics["hr@10"] >= 0
    assert done["embed"].cutoff == day(4)
    assert [p.name for p in done["pictures"]][-1] == "users_by_preference.png"
    manifest = pl.publish(tiny_dir, feature_repo, layout)
    assert manifest["model_version"] == done["embed"].model_version
    assert manifest["classifier_version"] == done["classify"].classifier_version
    assert manifest["profile_model_version"] == done["embed"].model_version + "-profile"
    user, profile = done["embed"].users.iloc[3], done["embed"].profiles.iloc[3]
    assert profile["user_id"] == user["user_id"]
    got = _online(feature_repo, [user["user_id"]])
    np.testing.assert_allclose(got.loc[user["user_id"], "embedding"], user["embedding"], rtol=1e-6)
    np.testing.assert_allclose(got.loc[user["user_id"], "profile_embedding"], profile["embedding"], rtol=1e-6)
    assert got.loc[user["user_id"], "profile_model_version"] == manifest["profile_model_version"]
    assert (layout.validation_dir / "report.html").exists()
    checks = json.loads((layout.validation_dir / "checks.json").read_text())
    assert {"user_profile_vectors", "profile_run"} <= {c["suite"] for c in checks["checks"]}
    assert checks["figures"]["probe_preferred_user_vector"] == done["probe"].preferred


def test_probe_stage_picks_the_vector_the_classifier_and_pictures_take(job):
    _, layout, done = job
    report = json.loads(layout.probe_report.read_text())
    assert report["preferred"] == done["probe"].preferred in ("intent", "profile")
    assert {"intent", "profile", "mean_of_items"} <= set(report["ours"])
    assert {r["probe"] for r in report["rows"]} >= {"future listings", "rent_sale"}
    for row in report["rows"]:
        assert row["margin"] == pytest.approx(row[row["best_ours"]] - row[row["best_baseline"]])
    used = json.loads(layout.preference_metrics.read_text())["user_vectors"]
    assert used == layout.preferred_users().name
    assert used == ("user_profiles.parquet" if report["preferred"] == "profile" else "user_embeddings.parquet")


def test_library_publish_refuses_nan_embeddings_and_changes_nothing(job, tiny_dir, feature_repo, tmp_path):
    _, layout, done = job
    pl.publish(tiny_dir, feature_repo, layout)
    users = list(done["embed"].users["user_id"][:20])
    before = _online(feature_repo, users)
    offline = {p: p.read_bytes() for p in (feature_repo.data / "offline").rglob("*.parquet")}
    manifests = feature_repo.manifests()

    bad = done["embed"].users.copy()
    bad["embedding"] = [np.full(16, np.nan, np.float32) if i % 7 == 0 else v for i, v in enumerate(bad["embedding"])]
    bad["model_version"] = "sasrec-broken"  # a new run id, so nothing could be reused
    tables = pl.RunTables(bad, done["embed"].items, done["classify"].scores)
    with pytest.raises(ChecksFailed, match="publish refused") as caught:
        pl.publish(tiny_dir, feature_repo, tables)
    assert any(c.suite == "user_vectors" and not c.success for c in caught.value.report.checks)
    assert {p: p.read_bytes() for p in (feature_repo.data / "offline").rglob("*.parquet")} == offline
    assert feature_repo.manifests() == manifests
    pd.testing.assert_frame_equal(_online(feature_repo, users), before)


def test_embed_loads_the_checkpoint_once(job, monkeypatch, tmp_path):
    import embeddings.models.sasrec as sasrec

    data, layout, _ = job
    calls = []
    real = sasrec.load_checkpoint
    monkeypatch.setattr(sasrec, "load_checkpoint", lambda path: calls.append(path) or real(path))
    assert main(["embed", "--model", str(layout.model), "--data", str(data.source), "--out", str(tmp_path)]) == 0
    assert len(calls) == 1


def test_saved_classifier_scores_like_the_run_that_trained_it(job, tiny_dir, tmp_path):
    _, layout, done = job
    run = pl.RunLayout(tmp_path / "new-run")
    shutil.copytree(layout.embeddings_dir, run.embeddings_dir)
    shutil.copytree(layout.probe_dir, run.probe_dir)  # which vector the classifier takes
    data = ["--data", str(tiny_dir)]  # the history features come from the clicks
    assert main(["classify", "--run", str(run.root), *data, "--model", str(layout.classifier)]) == 0
    again = read_parquet(run.scores)
    pd.testing.assert_frame_equal(again, done["classify"].scores.reset_index(drop=True), check_exact=True)
    assert again["classifier_version"].iloc[0] == done["classify"].classifier_version


def test_fine_tuning_starts_from_the_saved_weights(job, tiny_dir, tmp_path):
    data, layout, done = job
    loaded = pl.train(
        data,
        pl.RunLayout(tmp_path / "week2"),
        pl.DataConfig(tiny_dir, cutoff=str(day(5))),  # next day's clicks, a catalogue grown by new listings
        train=TrainConfig(epochs=1, batch_size=32, bf16=False, lr=1e-9),
        init_from=layout.model,
    )
    old = done["train"].model
    assert loaded.model.config.item_encoder == "hybrid" and loaded.model.config.dim == 16  # the checkpoint's shape
    new_rows = {str(i): r for r, i in enumerate(loaded.model.item_ids, start=1)}
    old_state, new_state = old.model.state_dict(), loaded.model.model.state_dict()
    for r, item in enumerate(old.item_ids[:50], start=1):  # a near-zero learning rate: the weights barely move
        np.testing.assert_allclose(
            new_state["items.ids.weight"][new_rows[str(item)]], old_state["items.ids.weight"][r], atol=1e-5
        )
    np.testing.assert_allclose(new_state["blocks.0.qkv.weight"], old_state["blocks.0.qkv.weight"], atol=1e-5)


def test_user_mistakes_end_in_one_line_and_an_exit_code(tmp_path, tiny_dir, capsys):
    assert main(["check-data", "--data", str(tmp_path / "nowhere")]) == 2
    assert (
        main(["embed", "--model", str(tmp_path / "missing.pt"), "--data", str(tiny_dir), "--out", str(tmp_path)]) == 2
    )
    bad = tmp_path / "week.toml"
    bad.write_text("[job]\nout = 'x'\n[data]\npath = 'd'\n[model]\ndim = 64\nwings = 2\n")
    assert main(["run", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 3 and "Traceback" not in err
    assert "missing.pt: checkpoint not found" in err and "unknown setting(s) ['wings']" in err


# ------------------------------------------------------------------------------------- run --config
def _config(tmp_path, data, repo, name):
    text = f"""
[job]
out = "{tmp_path / name}"
features_from = "feast"
[data]
path = "{data}"
cutoff = "{CUTOFF}"
[model]
item_encoder = "hybrid"
max_len = 20
dim = 16
[train]
epochs = 3
batch_size = 32
bf16 = false
[pictures]
sample = 150
[feature_store]
repo = "{repo}"
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _cli(config, kill_at=None):
    env = {**os.environ, "LST_EMBEDDINGS_QUIET": "1"}
    if kill_at:
        env["LST_EMBEDDINGS_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "embeddings.cli", "run", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _manifests(repo):
    """The manifests without what depends on when and how fast they were written."""
    timing = {"published_at", "seconds", "offline_write_seconds", "materialized"}
    untimed = [{k: v for k, v in m.items() if k not in timing} for m in repo.manifests()]
    for m, full in zip(untimed, repo.manifests(), strict=True):
        m["materialized"] = [(w["view"], w["rows"]) for w in full.get("materialized", [])]
    return untimed


def test_run_config_after_sigkill_in_training_and_in_publishing_ends_like_an_uninterrupted_run(
    tiny_dir, tmp_path, tmp_path_factory
):
    from embeddings.feature_store import REPO, Repo

    repos = {}
    for name in ("straight", "crashed"):
        shutil.copytree(REPO, tmp_path / f"repo-{name}", ignore=shutil.ignore_patterns("data", "__pycache__"))
        repos[name] = Repo(tmp_path / f"repo-{name}")
    straight = pl.run_job(pl.JobConfig.from_toml(_config(tmp_path, tiny_dir, repos["straight"].path, "straight")))
    assert "publish" in straight.ran and not straight.skipped

    config = _config(tmp_path, tiny_dir, repos["crashed"].path, "crashed")
    killed = _cli(config, kill_at="train:epoch-end")
    assert killed.returncode == -9, killed.stderr
    layout = pl.RunLayout(tmp_path / "crashed")
    assert (layout.model_dir / "last.pt").exists() and not layout.model.exists()
    killed = _cli(config, kill_at="publish:before-swap")
    assert killed.returncode == -9, killed.stderr
    assert layout.user_embeddings.exists() and repos["crashed"].latest_run() is None  # only the listings

    resumed = pl.run_job(pl.JobConfig.from_toml(config))
    assert resumed.ran == ["publish"]
    users = list(read_parquet(layout.user_embeddings)["user_id"][:25])
    pd.testing.assert_frame_equal(_online(repos["crashed"], users), _online(repos["straight"], users))
    assert _manifests(repos["crashed"]) == _manifests(repos["straight"])
    assert not list(repos["crashed"].data.glob("*.staging.db"))

    again = _cli(config)
    assert again.returncode == 0, again.stderr
    assert "ran nothing" in again.stdout
    assert json.loads(layout.stage_file("publish").read_text())["run_id"] == resumed.manifest["run_id"]

    # a damaged output reruns the stage that wrote it (and those that read it); a lost online store, the publish
    layout.scores.write_bytes(layout.scores.read_bytes()[:100])
    healed = pl.run_job(pl.JobConfig.from_toml(config))
    assert healed.ran[0] == "classify" and "train" in healed.skipped and "embed" in healed.skipped
    assert len(read_parquet(layout.scores)) == len(read_parquet(layout.user_embeddings))
    repos["crashed"].online_db.unlink()
    republished = pl.run_job(pl.JobConfig.from_toml(config))
    assert republished.ran == ["publish"]
    pd.testing.assert_frame_equal(_online(repos["crashed"], users), _online(repos["straight"], users))


def test_probe_cli_on_any_embedding_file(job, tiny_dir, tmp_path, capsys):
    _, layout, _ = job
    out = tmp_path / "probe.json"
    argv = ["probe", "--embeddings", str(layout.user_embeddings), str(layout.user_profiles)]
    argv += ["--listing-embeddings", str(layout.listing_embeddings), "--data", str(tiny_dir), "--folds", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ours"][:2] == ["user_embeddings", "user_profiles"]
    assert "| rent_sale | roc_auc |" in capsys.readouterr().out
    late = pd.Timestamp("2030-01-01", tz="UTC").isoformat()  # nothing after it: a clear error, exit 2
    assert main([*argv, "--cutoff", late]) == 2
    assert "no click after the cut-off" in capsys.readouterr().err


def test_embed_writes_the_run_record_every_later_stage_reads(job):
    """One record of the run (embeddings/run.json): cut-off, model and space versions, encoder, heads. classify's
    label window ends at the record's cut-off; a run folder without a record is refused by the stages after embed."""
    data, layout, done = job
    record = RunRecord.read(layout.record)
    assert record == done["embed"].record
    assert record.cutoff == day(4) and record.model_version == done["embed"].users["model_version"].iloc[0]
    assert record.space_version == record.model_version and record.heads == ("intent", "profile")
    assert record.profile_model_version == f"{record.model_version}-profile"
    window = json.loads(layout.preference_metrics.read_text())["label_window"]
    assert pd.Timestamp(window[1]) == record.cutoff
    moved = pl.RunLayout(layout.root.parent / "no-record")
    shutil.copytree(layout.root, moved.root)
    moved.record.unlink()
    with pytest.raises(InputError, match="no run record; run the embed stage first"):
        pl.classify(data, moved)
