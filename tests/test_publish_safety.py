"""Publish under attack: traversal, changed and stale runs, live readers, two publishers at once."""

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from embeddings import pipeline as pl
from embeddings.embed import Embedder
from embeddings.errors import InputError, PublishError
from embeddings.feature_store import online_features
from embeddings.feature_store.repo import _redis_options
from embeddings.io import write_parquet
from embeddings.preference import fit_preference

DAY6, DAY7 = pd.Timestamp("2026-11-06", tz="UTC"), pd.Timestamp("2026-11-07", tz="UTC")
ALLOW = pl.PublishConfig(allow_drift="test: variants of one run")


@pytest.fixture(scope="module")
def runs(tiny_week, tiny_hybrid_model):
    """The same model's run as of two cut-offs, a day apart."""
    listings, events, _ = tiny_week
    embedder = Embedder.from_checkpoint(tiny_hybrid_model, listings)
    out = {}
    for cutoff in (DAY6, DAY7):
        users = embedder.embed_users(events, cutoff, progress=False)
        scores = fit_preference(users, events, listings, DAY6).scores.assign(event_timestamp=cutoff)
        out[cutoff] = pl.RunTables(users, embedder.embed_items(cutoff), scores)
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
    evil = pl.RunTables(run.users.assign(model_version="../../../x"), run.items, run.scores)
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


def test_two_publishers_at_once_never_mix_runs(run, later, tiny_dir, feature_repo, tmp_path):
    for i, variant in enumerate((run, later)):
        layout = pl.RunLayout(tmp_path / f"run{i}")
        write_parquet(variant.users, layout.user_embeddings)
        write_parquet(variant.items, layout.listing_embeddings)
        write_parquet(variant.scores.assign(p_rent=np.float32(0.1 + 0.8 * i)), layout.scores)
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
    want_p = 0.1 + 0.8 * (1 if latest["cutoff"].startswith("2026-11-07") else 0)
    assert np.allclose(got["p_rent"], want_p)
    assert not list(feature_repo.data.glob("*.staging.db"))


def test_a_redis_password_may_hold_commas():
    host, port, options = _redis_options("127.0.0.1:6379,password=a,b=c,,d,ssl=false")
    assert (host, port, options["password"], options["ssl"]) == ("127.0.0.1", "6379", "a,b=c,,d", "false")
