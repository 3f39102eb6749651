"""Publish under attack: traversal, changed and stale runs, live readers, two publishers at once, gate holes,
checks that agree with the contract, one-line errors, repeatable training."""

import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import day, feast_serve, fit_scores, lay_out

from embeddings import pipeline as pl
from embeddings.cli import main
from embeddings.data import load_data
from embeddings.data.contract import ContractError
from embeddings.errors import ChecksFailed, InputError, PublishError
from embeddings.feature_store import online_features
from embeddings.feature_store.repo import _redis_options
from embeddings.io import write_parquet
from embeddings.models.sasrec import SASRecConfig, SASRecRecommender
from embeddings.stages.embed import Embedder
from embeddings.training.config import TrainConfig

DAY6, DAY7 = day(4), day(5)
ALLOW = pl.PublishConfig(allow_drift="test: variants of one run")


@pytest.fixture(scope="module")
def runs(tiny_week, tiny_hybrid_model):
    """The same model's run as of two cut-offs, a day apart."""
    listings, events, _ = tiny_week
    embedder = Embedder.from_checkpoint(tiny_hybrid_model, listings)
    out = {}
    for cutoff in (DAY6, DAY7):
        users = embedder.embed_users(events, cutoff, progress=False)
        scores = fit_scores(embedder, users, events, listings, DAY6).scores.assign(event_timestamp=cutoff)
        out[cutoff] = pl.RunTables(users, embedder.embed_items(cutoff), scores, embedder.model.reference)
    return out


@pytest.fixture()
def run(runs):
    return runs[DAY6]


@pytest.fixture()
def later(runs):
    return runs[DAY7]


def _offline(repo):
    return {p: p.read_bytes() for p in (repo.data / "offline").rglob("*.parquet")} if repo.data.exists() else {}


def test_a_model_version_that_is_a_path_is_refused_and_nothing_is_written(run, tiny_dir, feature_repo, tmp_path):
    evil = pl.RunTables(*(t.assign(model_version="../../../x") for t in (run.users, run.items)), run.scores)
    with pytest.raises(InputError, match="not a plain name"):
        pl.publish(tiny_dir, feature_repo, evil)
    assert _offline(feature_repo) == {} and not list(tmp_path.parent.rglob("run-*x.parquet"))


def test_same_run_with_other_vectors_and_an_older_run_are_refused(run, later, tiny_dir, feature_repo):
    pl.publish(tiny_dir, feature_repo, later)
    offline, users = _offline(feature_repo), list(run.users["user_id"][:10])
    before = online_features(feature_repo, users)
    changed = pl.RunTables(later.users.copy(), later.items, later.scores)
    changed.users["embedding"] = [v * 1.01 for v in changed.users["embedding"]]
    with pytest.raises(PublishError, match="already published with other content"):
        pl.publish(tiny_dir, feature_repo, changed, ALLOW)
    with pytest.raises(PublishError, match="older than the published run"):
        pl.publish(tiny_dir, feature_repo, run, ALLOW)
    assert _offline(feature_repo) == offline
    pd.testing.assert_frame_equal(online_features(feature_repo, users), before)
    manifest = pl.publish(tiny_dir, feature_repo, run, pl.PublishConfig("test", force_older="backfill of a lost week"))
    assert manifest["forced_older"] == "backfill of a lost week"


def test_a_reader_opened_before_the_publish_sees_the_new_run(run, later, tiny_dir, feature_repo):
    pl.publish(tiny_dir, feature_repo, run)
    store = feature_repo.store()  # a long-lived reader, as in feast serve
    old_u, new_u = run.users.set_index("user_id"), later.users.set_index("user_id")
    user = next(u for u in old_u.index if not np.allclose(old_u.loc[u, "embedding"], new_u.loc[u, "embedding"]))
    features = store.get_feature_service("user_profile")

    def read():
        return store.get_online_features(features=features, entity_rows=[{"user_id": user}]).to_dict()

    old = read()
    pl.publish(tiny_dir, feature_repo, later, ALLOW)
    new = read()
    np.testing.assert_allclose(old["embedding"][0], old_u.loc[user, "embedding"], rtol=1e-6)
    np.testing.assert_allclose(new["embedding"][0], new_u.loc[user, "embedding"], rtol=1e-6)


def test_a_running_feast_serve_serves_the_new_run_after_a_publish(run, later, tiny_dir, feature_repo):
    pl.publish(tiny_dir, feature_repo, run)
    old_u, new_u = run.users.set_index("user_id"), later.users.set_index("user_id")
    users = [u for u in old_u.index if not np.allclose(old_u.loc[u, "embedding"], new_u.loc[u, "embedding"])][:3]
    with feast_serve(feature_repo.path) as ask:
        before = ask(users)["embedding"]
        pl.publish(tiny_dir, feature_repo, later, ALLOW)
        after = ask(users)["embedding"]
    for i, user in enumerate(users):
        np.testing.assert_allclose(before[i], old_u.loc[user, "embedding"], rtol=1e-6)
        np.testing.assert_allclose(after[i], new_u.loc[user, "embedding"], rtol=1e-6)


def test_two_publishers_at_once_never_mix_runs(run, later, tiny_dir, feature_repo, tmp_path):
    for i, variant in enumerate((run, later)):
        layout = pl.RunLayout(tmp_path / f"run{i}")
        lay_out(layout, variant, variant.scores.assign(p_rent=np.float32(0.1 + 0.8 * i)))
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from embeddings import pipeline as pl
        from embeddings.feature_store import Repo
        layout = pl.RunLayout(Path(sys.argv[1]))
        cfg = pl.PublishConfig(allow_drift="test: two runs at once")
        print(pl.publish(Path({str(tiny_dir)!r}), Repo(Path({str(feature_repo.path)!r})), layout, cfg)["run_id"])
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"run{i}")], stdout=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outs
    ok = [i for i, c in enumerate(codes) if c == 0]
    assert len(feature_repo.manifests()) == len(ok)  # a process that lost never reported success
    got = online_features(feature_repo, list(run.users["user_id"][:20]))
    # one run's values throughout: embeddings and scores of the same (latest published) run
    latest = feature_repo.latest_run()
    want_p = 0.1 + 0.8 * (1 if pd.Timestamp(latest["cutoff"]) == DAY7 else 0)
    assert np.allclose(got["p_rent"], want_p)
    assert not list(feature_repo.data.glob("*.staging.db"))


def test_a_redis_password_may_hold_commas():
    host, port, options = _redis_options("127.0.0.1:6379,password=a,b=c,,d,ssl=false")
    assert (host, port, options["password"], options["ssl"]) == ("127.0.0.1", "6379", "a,b=c,,d", "false")


# ------------------------------------------------------------------------------ gate holes with no earlier run
def _scaled(run):
    return replace(run, users=run.users.assign(embedding=[v * 100 for v in run.users["embedding"]]))


def _shuffled(run):
    ids = run.users["user_id"].to_numpy().copy()
    np.random.default_rng(0).shuffle(ids)
    return replace(run, users=run.users.assign(user_id=ids), scores=run.scores.assign(user_id=ids))


def _mixed_versions(run):
    version = np.where(np.arange(len(run.users)) % 2 == 0, run.users["model_version"], "sasrec-000000000000")
    return replace(run, users=run.users.assign(model_version=version))


def _half_scores(run):
    return replace(run, scores=run.scores.iloc[::2])


def _odd_dims(run):
    users = run.users.copy()
    users["embedding"] = [v[:-1] if i < 3 else v for i, v in enumerate(users["embedding"])]
    return replace(run, users=users)


GATE_HOLES = {
    "vectors x100": (_scaled, "run", "norm_ratio_to_training"),
    "user ids shuffled against vectors": (_shuffled, "run", "history_alignment"),
    "two model versions in one run": (_mixed_versions, "run", "model_versions"),
    "half the preference rows missing": (_half_scores, "run", "users_with_a_score"),
    "a few vectors one dimension short": (_odd_dims, "user_vectors", "dim"),
}


@pytest.mark.parametrize("hole", list(GATE_HOLES))
def test_gate_holes_without_an_earlier_run_are_refused_even_with_allow_drift(hole, run, tiny_dir, feature_repo):
    breaker, suite, column = GATE_HOLES[hole]
    with pytest.raises(ChecksFailed) as caught:
        pl.publish(tiny_dir, feature_repo, breaker(run), ALLOW)
    failed = {(c.suite, c.column) for c in caught.value.report.failures}
    assert (suite, column) in failed, failed
    assert not caught.value.report.drift_only
    assert _offline(feature_repo) == {}


def test_the_clean_run_passes_the_same_gate(run, tiny_dir, feature_repo):
    report = pl.validate(tiny_dir, feature_repo, run)
    assert not report.failures, report.summary()
    assert report.figures["run_history_alignment"] > 0.6
    assert 0.5 < report.figures["run_norm_ratio_to_training"] < 2.0


# ------------------------------------------------------------------------- the contract and the checks agree
def _break_events(events, listings, how):
    e = events.copy()
    if how == "empty user ids":
        e.loc[e.index[:3], "user_id"] = ""
    elif how == "int user ids":
        e["user_id"] = np.arange(len(e))
    elif how == "click before the listing was created":
        created = listings.groupby("item_id")["created_at"].min()
        e.loc[e.index[:2], "event_timestamp"] = e["item_id"].iloc[:2].map(created) - pd.Timedelta(hours=1)
    elif how == "clicks in the future":
        e.loc[e.index[:2], "event_timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=5)
    elif how == "unparsable timestamp":
        e["event_timestamp"] = e["event_timestamp"].astype(str)
        e.loc[e.index[0], "event_timestamp"] = "next tuesday"
    return e


BROKEN_EVENTS = [
    "empty user ids",
    "int user ids",
    "click before the listing was created",
    "clicks in the future",
    "unparsable timestamp",
]


@pytest.mark.parametrize("how", BROKEN_EVENTS + ["floor above floors_total"])
def test_contract_and_checks_agree(how, tiny_week, tmp_path, feature_repo, capsys):
    listings, events, _ = tiny_week
    data = tmp_path / "data"
    if how == "floor above floors_total":
        broken = listings.copy()
        broken.loc[broken.index[:2], "floor"] = broken["floors_total"].iloc[:2] + 3
        write_parquet(broken, data / "listings.parquet")
        write_parquet(events, data / "events.parquet")
    else:
        write_parquet(listings, data / "listings.parquet")
        write_parquet(_break_events(events, listings, how), data / "events.parquet")
    with pytest.raises(ContractError):
        load_data(data)
    rc = main(["validate", "--data", str(data), "--repo", str(feature_repo.path)])
    assert rc == 4
    assert "Traceback" not in capsys.readouterr().err
    assert not (data / "validation").exists()  # validate writes nothing into the data folder


def test_a_week_dated_in_the_future_or_with_no_test_case_is_refused(tiny_week, tmp_path, capsys):
    listings, events, _ = tiny_week
    future = tmp_path / "future"
    shift = pd.Timedelta(days=365 * 4)
    write_parquet(
        listings.assign(created_at=listings["created_at"] + shift, event_timestamp=listings["event_timestamp"] + shift),
        future / "listings.parquet",
    )
    write_parquet(events.assign(event_timestamp=events["event_timestamp"] + shift), future / "events.parquet")
    assert main(["train", "--data", str(future), "--out", str(tmp_path / "m1"), "--epochs", "1"]) == 2
    assert "after now (clock skew)" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists()
    late = day(7)  # after every click: no test case
    args = ["--data", str(tiny_week_dir(tmp_path, listings, events)), "--cutoff", str(late), "--epochs", "1"]
    assert main(["train", "--out", str(tmp_path / "m2"), *args]) == 2
    assert "leaves no test case" in capsys.readouterr().err
    assert not (tmp_path / "m2" / "model.pt").exists()


def tiny_week_dir(tmp_path, listings, events):
    folder = tmp_path / "week"
    write_parquet(listings, folder / "listings.parquet")
    write_parquet(events, folder / "events.parquet")
    return folder


# ------------------------------------------------------------------------------ one line, not a traceback
def test_user_mistakes_in_publish_and_train_are_one_line(run, tiny_week, tiny_dir, feature_repo, tmp_path, capsys):
    listings, events, _ = tiny_week
    empty = tmp_path / "empty"
    write_parquet(listings, empty / "listings.parquet")
    write_parquet(events.iloc[:0], empty / "events.parquet")
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "m"), "--epochs", "1"]) == 2
    taken = tmp_path / "a-file"
    taken.write_text("x")
    assert main(["train", "--data", str(tiny_dir), "--out", str(taken), "--epochs", "1"]) == 2
    assert taken.read_text() == "x"
    model = tmp_path / "model.pt"
    SASRecRecommender(SASRecConfig(max_len=20, dim=16), TrainConfig(epochs=1, batch_size=32, bf16=False)).fit(
        pl.split_data(load_data(tiny_dir), pl.DataConfig(tiny_dir))
    ).save(model)
    assert main(["embed", "--model", str(model), "--data", str(tiny_dir), "--out", str(taken / "sub")]) == 3
    layout = pl.RunLayout(tmp_path / "run")
    lay_out(layout, run)
    bad = tiny_week_dir(tmp_path, listings, _break_events(events, listings, "unparsable timestamp"))
    assert main(["publish", "--run", str(layout.root), "--data", str(bad), "--repo", str(feature_repo.path)]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 4 and "Not a directory" in err
    assert _offline(feature_repo) == {}


def test_publish_with_a_relative_repo_path(run, tiny_dir, feature_repo, tmp_path, monkeypatch):
    layout = pl.RunLayout(tmp_path / "run")
    lay_out(layout, run)
    monkeypatch.chdir(feature_repo.path.parent)
    assert main(["publish", "--run", str(layout.root), "--data", str(tiny_dir), "--repo", "feature_repo"]) == 0
    assert len(online_features(feature_repo, [str(run.users["user_id"].iloc[0])])) == 1


# -------------------------------------------------------------------------------- training repeats itself
def test_seeded_training_repeats_bit_for_bit_on_two_threads(tmp_path):
    import torch

    from embeddings.data.split import temporal_split
    from embeddings.data.synthetic import WeekConfig, generate_week
    from embeddings.models.zoo import make_model

    listings, events, _ = generate_week(WeekConfig(users=1500, listings=2000, seed=3))
    split = temporal_split(events, listings)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = [
            make_model("sasrec", split, listings, sasrec=SASRecConfig(max_len=50), train=TrainConfig(epochs=1))
            .fit(split)
            .model.state_dict()
            for _ in range(2)
        ]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_resuming_with_other_settings_is_refused(tiny_week, tmp_path):
    from embeddings.data.split import temporal_split

    listings, events, _ = tiny_week
    split = temporal_split(events, listings)
    cfg = SASRecConfig(max_len=20, dim=16)
    SASRecRecommender(cfg, TrainConfig(epochs=1, batch_size=32, bf16=False), checkpoint_dir=tmp_path).fit(split)
    other = TrainConfig(epochs=2, batch_size=32, bf16=False, seed=7, lr=1e-3)
    with pytest.raises(InputError, match=r"cannot resume with other settings \(lr 0.002 -> 0.001, seed 0 -> 7\)"):
        SASRecRecommender(cfg, other, checkpoint_dir=tmp_path).fit(split)


def test_foreign_checkpoints_bad_shapes_and_lookups_without_a_run_are_one_line(
    run, tiny_dir, feature_repo, tmp_path, capsys
):
    """#33 row 8: a dict or a list given as a checkpoint, a negative --max-len, a lookup before any publish and one
    after the online store lost its file end in one line and an exit code, never a traceback."""
    import torch

    torch.save({"a": 1}, tmp_path / "dict.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    data, out = ["--data", str(tiny_dir)], ["--out", str(tmp_path / "out")]
    assert main(["embed", "--model", str(tmp_path / "list.pt"), *data, *out]) == 2
    assert main(["embed", "--model", str(tmp_path / "dict.pt"), *data, *out]) == 2
    assert main(["train", *data, "--out", str(tmp_path / "m"), "--init-from", str(tmp_path / "list.pt")]) == 2
    assert main(["train", *data, "--out", str(tmp_path / "m"), "--max-len", "-5", "--epochs", "1"]) == 2
    lookup = ["lookup", "--repo", str(feature_repo.path), "--user", "U000001"]
    assert main(lookup) == 2
    layout = pl.RunLayout(tmp_path / "run")
    lay_out(layout, run)
    assert main(["publish", "--run", str(layout.root), *data, "--repo", str(feature_repo.path)]) == 0
    feature_repo.online_db.unlink()
    assert main(lookup) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 6, err
    assert "not an lst-embeddings checkpoint (a list" in err and "max_len -5: must be at least 1" in err
    assert "nothing published yet" in err and "lost its tables" in err
