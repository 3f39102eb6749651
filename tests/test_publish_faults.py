"""A publish under faults: killed at every step, paused past its lease, read while it writes, a Redis Cluster
master lost, a full disk. Real processes, real Redis (Cluster), real Feast; faults are real signals."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from conftest import day, fit_scores

from embeddings import pipeline as pl
from embeddings.data import load_data
from embeddings.errors import PublishError
from embeddings.feature_store import Repo, historical_features, online_features
from embeddings.feature_store._writer import LEASE_S, STAGED, publish_lock
from embeddings.io import write_parquet
from embeddings.stages.embed import Embedder

A_DAY, B_DAY = day(4), day(5)


@pytest.fixture(scope="module")
def runs(tiny_week, tiny_hybrid_model):
    """Runs A and B of one model a day apart, and the users whose vector and score both differ between them."""
    listings, events, _ = tiny_week
    embedder = Embedder.from_checkpoint(tiny_hybrid_model, listings)
    out = {}
    for cutoff in (A_DAY, B_DAY):
        users = embedder.embed_users(events, cutoff, progress=False)
        scores = fit_scores(embedder, users, events, listings, A_DAY).scores.assign(event_timestamp=cutoff)
        out[cutoff] = pl.RunTables(users, embedder.embed_items(cutoff), scores, embedder.model.reference)
    a, b = (_by_user(out[d]) for d in (A_DAY, B_DAY))
    both = a.index.intersection(b.index)
    differ = [
        u
        for u in both
        if not np.allclose(a.loc[u, "embedding"], b.loc[u, "embedding"]) and a.loc[u, "p_rent"] != b.loc[u, "p_rent"]
    ]
    assert len(differ) >= 30
    return out[A_DAY], out[B_DAY], differ


def _by_user(tables: pl.RunTables) -> pd.DataFrame:
    return tables.users.set_index("user_id")[["embedding"]].join(tables.scores.set_index("user_id")[["p_rent"]])


def _lay_out(root, tables: pl.RunTables) -> pl.RunLayout:
    layout = pl.RunLayout(root)
    write_parquet(tables.users, layout.user_embeddings)
    write_parquet(tables.items, layout.listing_embeddings)
    write_parquet(tables.scores, layout.scores)
    tables.record.write(layout.record)
    return layout


def _cli_publish(layout, data_dir, repo: Repo, env: dict | None = None, wait=True):
    argv = [sys.executable, "-m", "embeddings.cli", "publish", "--run", str(layout.root), "--data", str(data_dir)]
    argv += ["--repo", str(repo.path), "--target", repo.target, "--allow-drift", "test: two days of one model"]
    proc = subprocess.Popen(
        argv,
        env={**os.environ, "LST_EMBEDDINGS_QUIET": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def _which(values: pd.Series, a: pd.Series, b: pd.Series, names=("A", "B")) -> set[str]:
    """Which run(s) ``values`` (per user) come from: ``a``'s (named A), ``b``'s (B), "none" for missing values."""
    seen = set()
    for user, value in values.items():
        if value is None or (np.isscalar(value) and pd.isna(value)):
            seen.add("none")
        elif np.allclose(np.asarray(value, dtype=float), np.asarray(a[user], dtype=float), atol=1e-6):
            seen.add(names[0])
        elif np.allclose(np.asarray(value, dtype=float), np.asarray(b[user], dtype=float), atol=1e-6):
            seen.add(names[1])
        else:
            seen.add("other")
    return seen


def _served(repo: Repo, users, a, b) -> tuple[set, set]:
    """(runs the online store serves, runs a point-in-time join as of now returns) for ``users``' vectors."""
    online = online_features(repo, users).set_index("user_id")["embedding"]
    now = pd.Timestamp.now(tz="UTC")
    joined = historical_features(repo, pd.DataFrame({"user_id": users, "event_timestamp": now}))
    offline = joined.set_index("user_id")["embedding"]
    return _which(online, a["embedding"], b["embedding"]), _which(offline, a["embedding"], b["embedding"])


def _leftovers(repo: Repo) -> list:
    return [p for p in repo.data.rglob(f"*{STAGED}")] + list(repo.data.glob("*.staging.db"))


# before the online commit: both stores on A; after it: online B at once, offline B from the renames on
KILLS = {
    "publish:staged": ({"A"}, {"A"}),
    "publish:before-swap": ({"A"}, {"A"}),
    "publish:online-committed": ({"B"}, {"A"}),  # the one window: online committed, files not yet renamed
    "publish:offline-committed": ({"B"}, {"B"}),  # everything in place but the manifest
}


@pytest.mark.parametrize("kill_at", list(KILLS))
def test_a_publish_killed_at_any_step_is_completed_by_the_next_one(kill_at, runs, tiny_dir, feature_repo, tmp_path):
    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    users = users[:20]
    pl.write_to_feature_store(feature_repo, load_data(tiny_dir).listings, run_a)
    layout = _lay_out(tmp_path / "run-b", run_b)

    code, output = _cli_publish(layout, tiny_dir, feature_repo, {"LST_EMBEDDINGS_KILL_AT": kill_at})
    assert code == -signal.SIGKILL, output
    assert _served(feature_repo, users, a, b) == KILLS[kill_at]
    assert [m["run_id"] for m in feature_repo.manifests()] == [feature_repo.latest_run()["run_id"]]  # A's only

    code, output = _cli_publish(layout, tiny_dir, feature_repo)  # the same command again completes it
    assert code == 0, output
    assert _served(feature_repo, users, a, b) == ({"B"}, {"B"})
    assert len(feature_repo.manifests()) == 2 and not _leftovers(feature_repo)
    if kill_at == "publish:online-committed":
        assert feature_repo.manifests()[-1]["recovered"] == feature_repo.manifests()[-1]["run_id"]


def test_an_online_commit_left_by_a_killed_publish_is_finished_by_the_next_publish_of_any_run(
    runs, tiny_dir, feature_repo, tmp_path
):
    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    pl.write_to_feature_store(feature_repo, load_data(tiny_dir).listings, run_a)
    layout = _lay_out(tmp_path / "run-b", run_b)
    code, _ = _cli_publish(layout, tiny_dir, feature_repo, {"LST_EMBEDDINGS_KILL_AT": "publish:online-committed"})
    assert code == -signal.SIGKILL
    later = pl.RunTables(*(t.assign(event_timestamp=day(6)) for t in (run_b.users, run_b.items, run_b.scores)))
    pl.write_to_feature_store(feature_repo, load_data(tiny_dir).listings, later)
    assert len(feature_repo.manifests()) == 3 and not _leftovers(feature_repo)
    joined = historical_features(
        feature_repo, pd.DataFrame({"user_id": users[:10], "event_timestamp": B_DAY + pd.Timedelta(hours=1)})
    )
    assert _which(joined.set_index("user_id")["embedding"], a["embedding"], b["embedding"]) == {"B"}


def _redis_repo(feature_repo, server, monkeypatch) -> Repo:
    port, password = server
    for key, value in {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_PASSWORD": password}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REDIS_SSL", "false")
    repo = Repo(feature_repo.path, "redis")
    repo.redis().flushall()
    return repo


def test_a_killed_redis_publisher_frees_its_lease_within_seconds(
    runs, tiny_dir, feature_repo, redis_server, monkeypatch, tmp_path
):
    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    repo = _redis_repo(feature_repo, redis_server, monkeypatch)
    pl.write_to_feature_store(repo, load_data(tiny_dir).listings, run_a)
    layout = _lay_out(tmp_path / "run-b", run_b)
    code, output = _cli_publish(layout, tiny_dir, repo, {"LST_EMBEDDINGS_KILL_AT": "publish:before-online-write"})
    assert code == -signal.SIGKILL, output
    assert _served(repo, users[:20], a, b) == ({"A"}, {"A"})
    began = time.monotonic()
    with publish_lock(repo, wait_s=60) as lease:
        waited = time.monotonic() - began
        assert lease.token is not None
    assert waited <= LEASE_S + 2, waited  # the dead publisher's lease expired; it was not an hour
    code, output = _cli_publish(layout, tiny_dir, repo)
    assert code == 0, output
    assert _served(repo, users[:20], a, b) == ({"B"}, {"B"})


def test_a_paused_publisher_cannot_write_after_its_lease_was_taken_over(
    runs, tiny_dir, feature_repo, redis_server, monkeypatch, tmp_path
):
    """Two machines (two copies of the repo, one Redis): the first pauses past its lease, the second publishes,
    the first resumes. It writes nothing and fails clearly; the online values stay the second's."""
    import shutil

    run_a, run_b, users = runs
    b = _by_user(run_b)
    first = _redis_repo(feature_repo, redis_server, monkeypatch)
    shutil.copytree(first.path, tmp_path / "other-machine", ignore=shutil.ignore_patterns("data", "__pycache__"))
    second = Repo(tmp_path / "other-machine", "redis")
    listings = load_data(tiny_dir).listings
    pl.write_to_feature_store(first, listings, run_a)
    pl.write_to_feature_store(second, listings, run_a)
    paused = _cli_publish(
        _lay_out(tmp_path / "run-b", run_b), tiny_dir, first, {"LST_EMBEDDINGS_STOP_AT": "publish:before-online-write"},
        wait=False,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _stopped(paused.pid):
            assert paused.poll() is None and time.monotonic() < deadline, paused.communicate()
            time.sleep(0.2)
        other = pl.RunTables(
            run_b.users.assign(embedding=run_b.users["embedding"].map(lambda v: np.asarray(v) * 2)),
            run_b.items,
            run_b.scores,
        )
        pl.write_to_feature_store(second, listings, other)  # waits out the paused one's lease, then takes over
        doubled = other.users.set_index("user_id")["embedding"]
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    out, err = paused.communicate(timeout=120)
    assert paused.returncode == 3, out + err
    assert "error: " in err and "Traceback" not in err and ("took the publish lease over" in err or "lease" in err)
    online = online_features(second, users[:20]).set_index("user_id")["embedding"]
    assert _which(online, doubled, b["embedding"], names=("second", "paused")) == {"second"}
    assert not (first.data / "manifests" / f"{second.latest_run()['run_id']}.json").exists()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_write_with_an_older_fencing_token_leaves_the_hash_alone(
    runs, tiny_dir, feature_repo, redis_server, monkeypatch
):
    from embeddings.feature_store._materialize import _pull
    from embeddings.feature_store._redis_rows import EntityWriter

    run_a, run_b, users = runs
    repo = _redis_repo(feature_repo, redis_server, monkeypatch)
    pl.write_to_feature_store(repo, load_data(tiny_dir).listings, run_a)
    before = online_features(repo, users[:10])
    store = repo.store()
    fv = store.get_feature_view("user_embedding")
    table = _pull(store, fv, B_DAY - pd.Timedelta(days=30), B_DAY + pd.Timedelta(days=1))
    late = EntityWriter(store.config, [fv], token=1, newest=True, ttl_views={fv.name})
    assert late._send(late._hashes([table])) == 0  # refused key by key
    with pytest.raises(PublishError, match="took the publish lease over"):
        late.write([table])
    pd.testing.assert_frame_equal(online_features(repo, users[:10]), before)


def _read_loop(repo: Repo, users: list[str], a: pd.DataFrame, b: pd.DataFrame, stop: threading.Event, seen: dict):
    """Read ``users`` online until ``stop``; count reads, rows mixing runs, missing rows and clean errors."""
    while not stop.is_set():
        try:
            got = online_features(repo, users).set_index("user_id")
        except PublishError:
            seen["errors"] += 1
            continue
        seen["reads"] += 1
        for user in users:
            vector = _which(got["embedding"][[user]], a["embedding"], b["embedding"])
            score = _which(got["p_rent"][[user]], a["p_rent"], b["p_rent"])
            seen["runs"] |= vector
            if vector != score:
                seen["mixed"] += 1
            if "none" in vector | score:
                seen["missing"] += 1


@pytest.mark.parametrize("target", ["redis", "redis-cluster"])
def test_readers_during_a_redis_publish_never_see_a_row_mixing_runs(
    target, runs, tiny_dir, feature_repo, redis_server, redis_cluster, monkeypatch
):
    from embeddings.feature_store import _materialize

    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    if target == "redis":
        repo = _redis_repo(feature_repo, redis_server, monkeypatch)
    else:
        monkeypatch.setenv("REDIS_CLUSTER_NODES", redis_cluster[0])
        monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", redis_cluster[1])
        repo = Repo(feature_repo.path, "redis-cluster")
        repo.redis().flushall()
    listings = load_data(tiny_dir).listings
    pl.write_to_feature_store(repo, listings, run_a)
    monkeypatch.setattr(_materialize, "BATCH_ROWS", 10)  # many small writes: readers meet the publish mid-way
    stop, seen = threading.Event(), {"reads": 0, "mixed": 0, "missing": 0, "errors": 0, "runs": set()}
    reader = threading.Thread(target=_read_loop, args=(repo, users[:40], a, b, stop, seen))
    reader.start()
    began = time.perf_counter()
    try:
        pl.write_to_feature_store(repo, listings, run_b, writers=1)
        seconds = time.perf_counter() - began
        time.sleep(0.2)
    finally:
        stop.set()
        reader.join()
    print(f"{target}: {seen['reads']} reads of 40 users in {seconds:.2f} s of publish, {seen['mixed']} mixed rows")
    assert seen["reads"] >= 3 and seen["mixed"] == 0 and seen["missing"] == 0 and seen["errors"] == 0, seen
    assert _which(
        online_features(repo, users[:40]).set_index("user_id")["embedding"], a["embedding"], b["embedding"]
    ) == {"B"}
