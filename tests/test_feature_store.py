"""The Feast side for real: feast apply, DuckDB offline store, SQLite and Redis online stores, feast serve."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import day, feast_serve, fit_scores

from embeddings import pipeline
from embeddings.cli import main
from embeddings.data.split import temporal_split
from embeddings.errors import PublishError
from embeddings.feature_store import Repo, historical_features, listings_from_store, online_features
from embeddings.feature_store._writer import publish_lock, write_run
from embeddings.feature_store.repo import VIEWS, redis_client
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.stages.embed import Embedder
from embeddings.training.config import TrainConfig

FEAST = str(Path(sys.executable).with_name("feast"))
DAY5, DAY6, DAY7 = day(4), day(5), day(6)


@pytest.fixture(scope="module")
def runs(tiny_week, tiny_hybrid_model):
    """Three runs of the same model at three cut-offs: (listings, user_emb, item_emb, preference) each."""
    listings, events, _ = tiny_week
    embedder = Embedder.from_checkpoint(tiny_hybrid_model, listings)
    out = {}
    for cutoff in (DAY5, DAY6, DAY7):
        users = embedder.embed_users(events, cutoff, progress=False)
        items = embedder.embed_items(cutoff)
        pref = fit_scores(embedder, users, events, listings, DAY5).scores.assign(event_timestamp=cutoff)
        out[cutoff] = (listings[listings["event_timestamp"] < cutoff], users, items, pref)
    return out


@pytest.fixture()
def repo(feature_repo):
    return feature_repo


@pytest.fixture()
def publish(tiny_dir):
    """The library's checked publish of one run of ``runs`` (same model: drift between days is expected)."""

    def publish(repo, listings, users, items, scores):
        tables = pipeline.RunTables(users, items, scores)
        return pipeline.publish(tiny_dir, repo, tables, pipeline.PublishConfig(allow_drift="test: days of one week"))

    return publish


def _online(repo, users):
    return online_features(repo, users).set_index("user_id")


def test_feast_apply_accepts_the_repo(repo, runs, publish):
    publish(repo, *runs[DAY5])
    rc = subprocess.run([FEAST, "apply"], cwd=repo.path, capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr
    listed = subprocess.run([FEAST, "feature-views", "list"], cwd=repo.path, capture_output=True, text=True)
    for view in ("listing_lst_features", "listing_embedding", "user_embedding", "user_rent_sale_preference"):
        assert view in listed.stdout


def test_point_in_time_training_rows_never_see_later_values(repo, runs, publish):
    publish(repo, *runs[DAY5])
    publish(repo, *runs[DAY6])
    u5 = runs[DAY5][1].set_index("user_id")
    u6 = runs[DAY6][1].set_index("user_id")
    changed = [u for u in u6.index if u in u5.index and not np.allclose(u5.loc[u, "embedding"], u6.loc[u, "embedding"])]
    user = changed[0]
    times = [
        DAY5 - pd.Timedelta(hours=1),
        DAY5 + pd.Timedelta(hours=3),
        DAY6 - pd.Timedelta(seconds=1),
        DAY6,
        DAY6 + pd.Timedelta(days=2),
    ]
    got = historical_features(repo, pd.DataFrame({"user_id": user, "event_timestamp": times}))
    got = got.sort_values("event_timestamp").reset_index(drop=True)
    assert got.loc[0, "embedding"] is None  # before the first publish's cut-off: nothing yet
    for i in (1, 2):
        np.testing.assert_allclose(got.loc[i, "embedding"], u5.loc[user, "embedding"], rtol=1e-6)
    for i in (3, 4):
        np.testing.assert_allclose(got.loc[i, "embedding"], u6.loc[user, "embedding"], rtol=1e-6)
    online = _online(repo, [user])
    np.testing.assert_allclose(online.loc[user, "embedding"], u6.loc[user, "embedding"], rtol=1e-6)
    assert online.loc[user, "p_rent"] == pytest.approx(
        float(runs[DAY6][3].set_index("user_id").loc[user, "p_rent"]), rel=1e-6
    )


def test_republishing_a_run_changes_nothing(repo, runs, publish):
    first = publish(repo, *runs[DAY6])
    files = {p: p.read_bytes() for p in (repo.data / "offline").rglob("*.parquet")}
    users = list(runs[DAY6][1]["user_id"][:20])
    before = _online(repo, users)
    again = publish(repo, *runs[DAY6])
    assert again["run_id"] == first["run_id"] and again["rows"] == first["rows"]
    assert {p: p.read_bytes() for p in (repo.data / "offline").rglob("*.parquet")} == files
    pd.testing.assert_frame_equal(_online(repo, users), before)
    assert len(repo.manifests()) == 1


def test_failed_publish_leaves_the_online_store_on_the_previous_run(repo, runs, publish):
    publish(repo, *runs[DAY5])
    users = list(runs[DAY5][1]["user_id"][:30])
    before = _online(repo, users)
    with pytest.raises(PublishError):
        write_run(repo, *runs[DAY6], fail_before_swap=True)  # the writer's own failure path
    pd.testing.assert_frame_equal(_online(repo, users), before)
    assert not list(repo.data.glob("*.staging.db"))
    manifest = publish(repo, *runs[DAY6])  # the rerun completes it
    after = _online(repo, users)
    assert manifest["cutoff"] == DAY6.isoformat()
    assert not after["embedding"].equals(before["embedding"])


def test_feast_serve_answers_get_online_features(repo, runs, publish):
    publish(repo, *runs[DAY5])
    with feast_serve(repo.path) as ask:
        users = list(runs[DAY5][1]["user_id"][:3])
        p_rent = ask(users)["p_rent"]
        expected = runs[DAY5][3].set_index("user_id").loc[users, "p_rent"].to_numpy()
        np.testing.assert_allclose(p_rent, expected, rtol=1e-6)


def _publish_and_read_back(repo, runs, publish) -> list:
    """Publish DAY5 into ``repo``; five users' online embeddings are the published ones. Returns those users."""
    publish(repo, *runs[DAY5])
    users = list(runs[DAY5][1]["user_id"][:5])
    got = _online(repo, users)
    want = runs[DAY5][1].set_index("user_id")
    for u in users:
        np.testing.assert_allclose(got.loc[u, "embedding"], want.loc[u, "embedding"], rtol=1e-6)
    return users


def test_redis_publish_and_lookup(repo, runs, redis_server, monkeypatch, publish):
    port, password = redis_server
    for k, v in {
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(port),
        "REDIS_PASSWORD": password,
        "REDIS_SSL": "false",
    }.items():
        monkeypatch.setenv(k, v)
    redis_repo = Repo(repo.path, "redis")
    users = _publish_and_read_back(redis_repo, runs, publish)

    monkeypatch.setenv("REDIS_PASSWORD", "wrong-password")
    with pytest.raises(PublishError, match="authentication failed, check REDIS_PASSWORD"):
        online_features(Repo(repo.path, "redis"), users)

    monkeypatch.setenv("REDIS_PASSWORD", password)  # a publisher elsewhere holds the repo's lock in Redis
    held = redis_client(redis_repo.config().online_store.connection_string).lock(
        f"lst_embeddings:publish:{redis_repo.config().project}", timeout=60
    )
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(PublishError, match="another publish has held the lock"), publish_lock(redis_repo, wait_s=1):
            raise AssertionError("took a lock that another publisher holds")
    finally:
        held.release()


def test_redis_cluster_publish_and_lookup(repo, runs, redis_cluster, monkeypatch, publish):
    nodes, password = redis_cluster
    monkeypatch.setenv("REDIS_CLUSTER_NODES", nodes)
    monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", password)
    cluster_repo = Repo(repo.path, "redis-cluster")
    users = _publish_and_read_back(cluster_repo, runs, publish)
    client = cluster_repo.redis()
    masters = [n for n in client.get_nodes() if n.server_type == "primary"]
    assert len(masters) == 3
    keys_per_master = [client.dbsize(target_nodes=n) for n in masters]  # the rows are spread over the masters
    assert min(keys_per_master) > 0, keys_per_master

    monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", "wrong-password")
    with pytest.raises(PublishError, match="Redis Cluster at .*authentication failed, check REDIS_CLUSTER_PASSWORD"):
        online_features(Repo(repo.path, "redis-cluster"), users)


def test_spark_profile_gives_the_local_profiles_rows(repo, runs, redis_cluster, monkeypatch, publish, tmp_path):
    """Two runs published through the local profile (DuckDB offline, SQLite online) and through the Spark profile
    (Feast's Spark offline store and Spark compute engine on local[2], a Redis Cluster online), from the same
    Parquet: the same point-in-time training rows and the same online values."""
    from embeddings.feature_store import REPO

    nodes, password = redis_cluster
    monkeypatch.setenv("REDIS_CLUSTER_NODES", nodes)
    monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", password)
    shutil.copytree(REPO, tmp_path / "spark_repo", ignore=shutil.ignore_patterns("data", "__pycache__"))
    spark = Repo(tmp_path / "spark_repo", "spark")
    for target in (repo, spark):
        publish(target, *runs[DAY5])
        publish(target, *runs[DAY6])
    assert spark.store().config.offline_store.type == "spark"

    users = list(runs[DAY6][1]["user_id"][:6])
    times = [DAY5 - pd.Timedelta(hours=1), DAY5 + pd.Timedelta(hours=12), DAY6 + pd.Timedelta(hours=1)]
    entity_df = pd.DataFrame([(u, t) for u in users for t in times], columns=["user_id", "event_timestamp"])
    key = ["user_id", "event_timestamp"]
    local_rows = historical_features(repo, entity_df).sort_values(key).reset_index(drop=True)
    spark_rows = historical_features(spark, entity_df).sort_values(key).reset_index(drop=True)
    assert list(spark_rows.columns) == list(local_rows.columns) and len(spark_rows) == len(entity_df)
    pd.testing.assert_frame_equal(spark_rows[key], local_rows[key])
    assert local_rows["embedding"].isna().sum() == len(users)  # before the first cut-off: nothing yet
    for col in local_rows.columns.drop(key):
        for a, b in zip(local_rows[col], spark_rows[col], strict=True):
            if isinstance(a, np.ndarray | list):
                np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6)
            else:
                assert (pd.isna(a) and pd.isna(b)) or a == b, (col, a, b)

    local_online, spark_online = _online(repo, users), _online(spark, users)
    assert list(spark_online.columns) == list(local_online.columns)
    for u in users:
        np.testing.assert_allclose(spark_online.loc[u, "embedding"], local_online.loc[u, "embedding"], rtol=1e-6)
        assert spark_online.loc[u, "p_rent"] == pytest.approx(local_online.loc[u, "p_rent"])


def test_with_spark_installed_a_python_c_process_still_runs():
    """pyspark 4 without its connect extras calls sys.exit(0) on import from a ``python -c`` process (no
    ``__main__.__file__``), and Great Expectations imports pyspark: a scheduler's one-liner would "succeed" having
    done nothing. The spark extra brings those dependencies; this keeps it so."""
    done = subprocess.run(
        [sys.executable, "-c", "import great_expectations, pyspark.sql.connect.utils; print('still here')"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "still here" in done.stdout, done.stderr[-2000:]


def test_trainer_reads_lst_features_through_the_feature_store(repo, tiny_week, tiny_dir):
    from embeddings.data.features import listing_features

    listings, events, _ = tiny_week
    manifest = pipeline.publish_listings(tiny_dir, repo)  # lst features only
    assert set(manifest["rows"]) == {"listings"}
    split = temporal_split(events, listings)
    from_store = listings_from_store(repo, split.item_ids, split.cutoff)
    want = listing_features(listings, split.item_ids, split.cutoff).smooth()[0]
    got = listing_features(from_store, split.item_ids).smooth()[0]
    np.testing.assert_allclose(got, want, atol=1e-6)  # price drops after the cut-off are not seen
    model = make_model(
        "sasrec",
        split,
        None,
        sasrec=SASRecConfig(item_encoder="lst-frozen", max_len=20, dim=16),
        train=TrainConfig(epochs=1, batch_size=32, bf16=False),
        feature_store=repo,
    )
    assert model.fit(split).history[0]["loss"] > 0


def test_parallel_writers_write_what_feasts_materialize_writes(repo, runs, redis_cluster, monkeypatch, publish):
    """The publisher's materialization (column-wise conversion, writer processes) against Feast's own
    ``materialize`` into the same Redis Cluster: the same protos for every view, the same online values."""
    import pyarrow as pa
    from feast.utils import _convert_arrow_to_proto

    from embeddings.feature_store._materialize import _pull, materialize, materialize_entities
    from embeddings.feature_store._rows import arrow_to_rows

    nodes, password = redis_cluster
    monkeypatch.setenv("REDIS_CLUSTER_NODES", nodes)
    monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", password)
    cluster = Repo(repo.path, "redis-cluster")
    manifest = publish(cluster, *runs[DAY5])
    views = [w["view"] for w in manifest["materialized"]]
    assert set(VIEWS.values()) - set(views) == {"user_profile_embedding"}  # this model has no profile head
    store = cluster.store()
    start, end = DAY5 - pd.Timedelta(days=30), DAY5 + pd.Timedelta(seconds=1)
    for view in views:
        fv = store.get_feature_view(view)
        table = _pull(store, fv, start, end)
        assert table.num_rows > 0
        keys = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}
        assert arrow_to_rows(table, fv) == _convert_arrow_to_proto(table, fv, keys), view
    fv = store.get_feature_view("listing_lst_features")  # nulls go through Feast's own rules
    table = _pull(store, fv, start, end).slice(0, 3)
    nulls = table.set_column(
        table.schema.get_field_index("district"), "district", pa.array([None, "x", None], pa.string())
    ).set_column(table.schema.get_field_index("price"), "price", pa.array([1.5, None, 2.0], pa.float64()))
    keys = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}
    assert arrow_to_rows(nulls, fv) == _convert_arrow_to_proto(nulls, fv, keys)

    users = list(runs[DAY5][1]["user_id"])
    client = cluster.redis()
    client.flushall()
    with contextlib.chdir(cluster.path):  # Feast's DuckDB store reads the sources' relative paths from here
        store.materialize(
            start.to_pydatetime(), end.to_pydatetime(), feature_views=["user_embedding", "user_rent_sale_preference"]
        )
    feasts = online_features(cluster, users)
    client.flushall()
    done = materialize(
        store, ["user_embedding", "user_rent_sale_preference"], start, end, writers=2, parallel_min_rows=1,
        progress=False, newest=True,
    )  # fmt: skip
    assert [w.writers for w in done] == [2, 2] and done[0].rows == len(users)
    ours = online_features(cluster, users)
    pd.testing.assert_frame_equal(ours.drop(columns="embedding"), feasts.drop(columns="embedding"))
    for a, b in zip(ours["embedding"], feasts["embedding"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    client.flushall()  # the publisher's path: both user views in one HSET per user, from two writers
    together = materialize_entities(
        store, ["user_embedding", "user_rent_sale_preference"], start, end, token=1, writers=2, progress=False,
        newest=True, parallel_min_rows=1,
    )  # fmt: skip
    assert [w.writers for w in together] == [2, 2] and together[0].rows == len(users)
    whole = online_features(cluster, users)
    pd.testing.assert_frame_equal(whole.drop(columns="embedding"), feasts.drop(columns="embedding"))
    for a, b in zip(whole["embedding"], feasts["embedding"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _dated(run, when: pd.Timestamp):
    """``run``'s tables (listings, users, items, scores) with the vectors and scores stamped ``when``."""
    listings, users, items, scores = run
    return listings, *(t.assign(event_timestamp=when) for t in (users, items, scores))


def _present(repo, users) -> pd.Series:
    got = _online(repo, users)
    return got["embedding"].notna() & got["p_rent"].notna() & got["profile_embedding"].isna()  # no profile head


@pytest.mark.parametrize("profile", ["local", "redis", "redis-cluster"])
def test_values_past_their_ttl_are_never_served(profile, repo, runs, request, monkeypatch, capsys):
    """A value is served online until its event time + the view's ttl (8 days), by the real clock, then not at all:
    one run published 8 days minus a few seconds ago is served, then not; one published 9 days ago never is."""
    if profile == "redis":
        port, password = request.getfixturevalue("redis_server")
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": password, "REDIS_SSL": "false"}
    elif profile == "redis-cluster":
        nodes, password = request.getfixturevalue("redis_cluster")
        env = {"REDIS_CLUSTER_NODES": nodes, "REDIS_CLUSTER_PASSWORD": password}
    else:
        env = {}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    store = Repo(repo.path, profile)
    ttl = pd.Timedelta(days=8)
    listings, users, items, scores = runs[DAY5]
    old, fresh = list(users["user_id"][:10]), list(users["user_id"][10:20])
    now = pd.Timestamp.now(tz="UTC").floor("s")
    ancient = _dated((listings, users[users["user_id"].isin(old)], items, scores[scores["user_id"].isin(old)]),
                     now - ttl - pd.Timedelta(days=1))  # fmt: skip
    write_run(store, *ancient)
    assert not _present(store, old).any()  # published already past its ttl: never served

    expires = now - ttl + pd.Timedelta(seconds=30 if profile == "local" else 15)  # local: time for `feast apply`
    nearly = (listings, users[users["user_id"].isin(fresh)], items, scores[scores["user_id"].isin(fresh)])
    write_run(store, *_dated(nearly, expires))
    assert _present(store, fresh).all()
    item_ids = list(items["item_id"][:5])
    listing_rows = (
        store.store()
        .get_online_features(
            features=["listing_embedding:embedding", "listing_lst_features:deal_type"],
            entity_rows=[{"item_id": i} for i in item_ids],
        )
        .to_dict()
    )
    assert all(v is not None for v in listing_rows["embedding"])
    if profile == "local":  # what a consumer's own `feast apply` does to the repo changes nothing
        rc = subprocess.run([FEAST, "apply"], cwd=repo.path, capture_output=True, text=True, timeout=120)
        assert rc.returncode == 0, rc.stderr
        assert _present(store, fresh).all()
    time.sleep(max((expires + ttl - pd.Timestamp.now(tz="UTC")).total_seconds() + 1, 0))
    assert not _present(store, fresh).any()
    after = (
        store.store()
        .get_online_features(features=["listing_embedding:embedding"], entity_rows=[{"item_id": i} for i in item_ids])
        .to_dict()
    )
    assert all(v is None for v in after["embedding"])
    args = ["lookup", "--repo", str(repo.path), "--target", profile, *[f"--user={u}" for u in fresh[:2]]]
    assert main(args) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(printed) == 2 and all(r["p_rent"] is None and r["embedding"] is None for r in printed)
    if profile == "local":
        with feast_serve(repo.path) as ask:
            assert all(v is None for v in ask(fresh)["p_rent"])


BLOCK_OUR_PACKAGES = """
import importlib.abc, json, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("embeddings", "validation"):
            raise ModuleNotFoundError(f"{name} is not installed (a consumer has Feast only)")
sys.meta_path.insert(0, _Block())
exec(open(sys.argv[1]).read())
vectors = [list(map(float, v)) for v in training["embedding"]]
print(json.dumps({"online": online["embedding"], "training": vectors, "dim": dim, "users": list(training["user_id"])}))
"""


def test_a_copied_repo_serves_a_feast_only_consumer(repo, runs, publish, tmp_path):
    """The README's consumer example, with this package not importable, in a copy of a published repo whose
    original is gone: no `feast apply`; the registry describes the vectors; joins and lookups give the runs' values."""
    publish(repo, *runs[DAY5])
    publish(repo, *runs[DAY6])
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(repo.path, elsewhere / "feature_repo")
    shutil.rmtree(repo.path)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if 'REPO = Path("feature_repo")' in b
    )
    (tmp_path / "example.py").write_text(example)
    (tmp_path / "consumer.py").write_text(BLOCK_OUR_PACKAGES)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    got = subprocess.run(
        [sys.executable, str(tmp_path / "consumer.py"), str(tmp_path / "example.py")],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    out = json.loads(got.stdout.strip().splitlines()[-1])
    assert out["dim"] == 16
    want = runs[DAY6][1].set_index("user_id")
    for user, vector in zip(["U000000", "U000001"], out["online"], strict=True):
        np.testing.assert_allclose(vector, want.loc[user, "embedding"], rtol=1e-6)
    for user, vector in zip(out["users"], out["training"], strict=True):  # both rows are after DAY6's cut-off
        np.testing.assert_allclose(vector, want.loc[user, "embedding"], rtol=1e-6)
    described = subprocess.run(
        [FEAST, "feature-views", "describe", "user_embedding"], cwd=elsewhere / "feature_repo",
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert described.returncode == 0, described.stderr[-2000:]
    assert "vectorLength: 16" in described.stdout
    assert str(runs[DAY6][1]["model_version"].iloc[0]) in described.stdout
