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
from conftest import SCRIPT, day, fit_scores, lay_out, on_redis

from embeddings import pipeline as pl
from embeddings.data import load_data
from embeddings.errors import PublishError
from embeddings.feature_store import Repo, historical_features, online_features
from embeddings.feature_store._writer import LEASE_S, STAGED, publish_lock
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
        elif user in a.index and np.allclose(np.asarray(value, float), np.asarray(a[user], float), atol=1e-6):
            seen.add(names[0])
        elif user in b.index and np.allclose(np.asarray(value, float), np.asarray(b[user], float), atol=1e-6):
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
    layout = lay_out(pl.RunLayout(tmp_path / "run-b"), run_b)

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
    layout = lay_out(pl.RunLayout(tmp_path / "run-b"), run_b)
    code, _ = _cli_publish(layout, tiny_dir, feature_repo, {"LST_EMBEDDINGS_KILL_AT": "publish:online-committed"})
    assert code == -signal.SIGKILL
    later = pl.RunTables(*(t.assign(event_timestamp=day(6)) for t in (run_b.users, run_b.items, run_b.scores)))
    pl.write_to_feature_store(feature_repo, load_data(tiny_dir).listings, later)
    assert len(feature_repo.manifests()) == 3 and not _leftovers(feature_repo)
    joined = historical_features(
        feature_repo, pd.DataFrame({"user_id": users[:10], "event_timestamp": B_DAY + pd.Timedelta(hours=1)})
    )
    assert _which(joined.set_index("user_id")["embedding"], a["embedding"], b["embedding"]) == {"B"}


def test_a_killed_redis_publisher_frees_its_lease_within_seconds(
    runs, tiny_dir, feature_repo, redis_server, monkeypatch, tmp_path
):
    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    repo = on_redis(feature_repo, redis_server, monkeypatch)
    pl.write_to_feature_store(repo, load_data(tiny_dir).listings, run_a)
    layout = lay_out(pl.RunLayout(tmp_path / "run-b"), run_b)
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
    first = on_redis(feature_repo, redis_server, monkeypatch)
    shutil.copytree(first.path, tmp_path / "other-machine", ignore=shutil.ignore_patterns("data", "__pycache__"))
    second = Repo(tmp_path / "other-machine", "redis")
    listings = load_data(tiny_dir).listings
    pl.write_to_feature_store(first, listings, run_a)
    pl.write_to_feature_store(second, listings, run_a)
    layout = lay_out(pl.RunLayout(tmp_path / "run-b"), run_b)
    stop_at = {"LST_EMBEDDINGS_STOP_AT": "publish:before-online-write"}
    paused = _cli_publish(layout, tiny_dir, first, stop_at, wait=False)
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
    repo = on_redis(feature_repo, redis_server, monkeypatch)
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
            time.sleep(0.05)
            continue
        except Exception as exc:  # anything but the one clean error is a failure of the test
            seen["crash"] = repr(exc)
            return
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
        repo = on_redis(feature_repo, redis_server, monkeypatch)
    else:
        monkeypatch.setenv("REDIS_CLUSTER_NODES", redis_cluster[0])
        monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", redis_cluster[1])
        repo = Repo(feature_repo.path, "redis-cluster")
        repo.redis().flushall()
    listings = load_data(tiny_dir).listings
    pl.write_to_feature_store(repo, listings, run_a)
    monkeypatch.setattr(_materialize, "BATCH_ROWS", 10)  # many small writes: readers meet the publish mid-way
    stop, seen = threading.Event(), {"reads": 0, "mixed": 0, "missing": 0, "errors": 0, "runs": set()}
    # 10 users a request: Feast's request is one pipeline of per-view HMGETs, which Redis runs without another
    # client's command in between only when it arrives in one read (16 KB; about 40 users here): larger requests
    # can meet a publish between two views of a user (README)
    reader = threading.Thread(target=_read_loop, args=(repo, users[:10], a, b, stop, seen))
    reader.start()
    began = time.perf_counter()
    try:
        pl.write_to_feature_store(repo, listings, run_b, writers=1)
        seconds = time.perf_counter() - began
        time.sleep(0.2)
    finally:
        stop.set()
        reader.join()
    print(f"{target}: {seen['reads']} reads of 10 users in {seconds:.2f} s of publish, {seen['mixed']} mixed rows")
    assert seen["reads"] >= 3 and seen["mixed"] == 0 and seen["missing"] == 0 and seen["errors"] == 0, seen
    assert "crash" not in seen, seen
    assert _which(
        online_features(repo, users[:40]).set_index("user_id")["embedding"], a["embedding"], b["embedding"]
    ) == {"B"}


def test_a_cluster_master_lost_during_lookups_and_a_publish(
    runs, tiny_dir, feature_repo, private_cluster, monkeypatch, capsys
):
    """Three masters with replicas. A master is killed (SIGKILL) in the middle of a publish while a reader loops:
    the publish goes on through the failover and completes; readers get clean errors at worst and never a missing
    value; then every user reads back, all on the new run, also after the lost master rejoins (as a replica). With a
    whole shard gone (master and replica), a lookup is one error line."""
    from embeddings.cli import main
    from embeddings.feature_store import _materialize
    from embeddings.feature_store._redis_rows import EntityWriter

    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    monkeypatch.setenv("REDIS_CLUSTER_NODES", private_cluster.nodes)
    monkeypatch.setenv("REDIS_CLUSTER_PASSWORD", private_cluster.password)
    repo = Repo(feature_repo.path, "redis-cluster")
    listings = load_data(tiny_dir).listings
    pl.write_to_feature_store(repo, listings, run_a)

    victim = private_cluster.first
    write = EntityWriter.write
    calls = []

    def write_then_lose_a_master(self, parts):
        calls.append(len(calls))
        if len(calls) == 3:
            os.kill(private_cluster.pid(victim), signal.SIGKILL)
        return write(self, parts)

    monkeypatch.setattr(EntityWriter, "write", write_then_lose_a_master)
    monkeypatch.setattr(_materialize, "BATCH_ROWS", 20)
    stop, seen = threading.Event(), {"reads": 0, "mixed": 0, "missing": 0, "errors": 0, "runs": set()}
    reader = threading.Thread(target=_read_loop, args=(repo, users[:40], a, b, stop, seen))
    reader.start()
    try:
        manifest = pl.write_to_feature_store(repo, listings, run_b, writers=1)
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join()
    assert len(calls) > 3 and manifest["run_id"] == repo.latest_run()["run_id"]
    everyone = list(run_b.users["user_id"])
    online = online_features(repo, everyone).set_index("user_id")
    for user in everyone:  # none missing, none left on A
        np.testing.assert_allclose(online.loc[user, "embedding"], b.loc[user, "embedding"], atol=1e-6)
    np.testing.assert_allclose(online.loc[everyone, "p_rent"].astype(float), b.loc[everyone, "p_rent"], atol=1e-6)
    # reads raise the one clean error or answer in full; a read that the client retried across the failover may
    # combine the old master's answer for one view with the new master's for another (Feast reads view by view):
    # counted, not failed (the stored rows are whole: every user reads back on B above)
    assert seen["missing"] == 0 and seen["reads"] > 0 and "crash" not in seen, seen.get("crash", seen)
    print(f"reader during the failover: {seen}")

    env = {**os.environ, "REDIS_CLUSTER_PASSWORD": private_cluster.password}  # the lost master rejoins
    subprocess.run(["bash", str(SCRIPT), "restart-node", str(victim), str(private_cluster.folder)], env=env, check=True)
    deadline = time.monotonic() + 60
    while not _in_sync(repo, victim):
        assert time.monotonic() < deadline, "the restarted node did not rejoin as a replica"
        time.sleep(0.2)
    online = online_features(repo, everyone).set_index("user_id")
    for user in everyone:  # nothing lost when it came back
        np.testing.assert_allclose(online.loc[user, "embedding"], b.loc[user, "embedding"], atol=1e-6)

    client = repo.redis()
    shard = next(n for n in client.get_primaries() if n.port != victim)
    for port in _shard_ports(client, shard.port):  # a whole shard: no replica left to take over
        os.kill(private_cluster.pid(port), signal.SIGKILL)
    capsys.readouterr()
    asked = [x for u in everyone[:50] for x in ("--user", u)]
    code = main(["lookup", "--repo", str(repo.path), "--target", "redis-cluster", *asked])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def _in_sync(repo: Repo, port: int) -> bool:
    """Whether the node on ``port`` is a replica whose link to its master is up."""
    import redis

    try:
        node = redis.Redis(port=port, password=os.environ["REDIS_CLUSTER_PASSWORD"], socket_connect_timeout=1)
        info = node.info("replication")
    except redis.exceptions.RedisError:
        return False
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


def _shard_ports(client, master_port: int) -> list[int]:
    """The master on ``master_port`` and its replicas."""
    nodes = client.cluster_nodes()
    master = next(v["node_id"] for k, v in nodes.items() if k.endswith(f":{master_port}"))
    return [
        int(k.rsplit(":", 1)[1].split("@")[0]) for k, v in nodes.items() if master in (v["node_id"], v["master_id"])
    ]


# ------------------------------------------------------------------------------------------------ one-line errors
@pytest.fixture()
def small_disk(tmp_path):
    """A 32 MB tmpfs: a disk that fills up for real (needs the right to mount, as root in CI)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder, leave_bytes: int):
    """Fill ``folder``'s disk but ``leave_bytes``; returns the filler file (delete it to free the disk)."""
    import shutil as sh

    filler = folder / "filler"
    free = sh.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def test_a_full_disk_during_a_publish_is_one_line_and_the_previous_run_stays(
    runs, tiny_dir, small_disk, tmp_path, capsys
):
    import shutil as sh

    from embeddings.cli import main
    from embeddings.feature_store import REPO

    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    sh.copytree(REPO, small_disk / "repo", ignore=sh.ignore_patterns("data", "__pycache__"))
    repo = Repo(small_disk / "repo")
    pl.write_to_feature_store(repo, load_data(tiny_dir).listings, run_a)
    layout = lay_out(pl.RunLayout(tmp_path / "run-b"), run_b)
    filler = _fill(small_disk, 60_000)  # room for some staged files, not for the online database's copy
    capsys.readouterr()
    argv = ["publish", "--run", str(layout.root), "--data", str(tiny_dir), "--repo", str(repo.path)]
    code = main([*argv, "--allow-drift", "test"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: ") and err.count("\n") == 1, err
    assert _served(repo, users[:20], a, b) == ({"A"}, {"A"}) and len(repo.manifests()) == 1
    filler.unlink()
    assert main([*argv, "--allow-drift", "test"]) == 0, capsys.readouterr().err
    assert _served(repo, users[:20], a, b) == ({"B"}, {"B"}) and not _leftovers(repo)


def test_a_full_disk_while_training_saves_a_checkpoint_is_one_line(tiny_dir, small_disk, capsys):
    from embeddings.cli import main

    _fill(small_disk, 20_000)
    argv = ["train", "--data", str(tiny_dir), "--out", str(small_disk / "model"), "--epochs", "1", "--dim", "16"]
    code = main([*argv, "--max-len", "20", "--batch-size", "32"])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "No space left on device" in err or "disk full" in err
    assert not list((small_disk / "model").glob("*.pt")) if (small_disk / "model").exists() else True


def test_a_manifests_folder_leading_outside_the_repo_stops_the_publish_before_anything_is_online(
    runs, tiny_dir, feature_repo, tmp_path, capsys
):
    from embeddings.cli import main

    run_a, run_b, users = runs
    a, b = _by_user(run_a), _by_user(run_b)
    pl.write_to_feature_store(feature_repo, load_data(tiny_dir).listings, run_a)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    manifests = feature_repo.data / "manifests"
    for m in manifests.iterdir():
        m.rename(outside / m.name)
    manifests.rmdir()
    manifests.symlink_to(outside)
    layout = lay_out(pl.RunLayout(tmp_path / "run-b"), run_b)
    capsys.readouterr()
    argv = ["publish", "--run", str(layout.root), "--data", str(tiny_dir), "--repo", str(feature_repo.path)]
    assert main([*argv, "--allow-drift", "test"]) == 2
    err = capsys.readouterr().err
    assert "outside" in err and err.count("\n") == 1, err
    assert _served(feature_repo, users[:20], a, b) == ({"A"}, {"A"})
    assert not list(outside.glob(f"*{STAGED}"))


def test_wording_of_bad_numbers_bytes_and_settings(tiny_dir, tiny_hybrid_model, tmp_path, capsys):
    """#33 row 16: infinite prices are called infinite, random bytes are not called code, and --dim beside
    --init-from is refused rather than silently replaced."""
    from embeddings.cli import main

    listings = pd.read_parquet(tiny_dir / "listings.parquet")
    listings.loc[listings.index[:3], "price"] = np.inf
    bad = tmp_path / "week"
    bad.mkdir()
    listings.to_parquet(bad / "listings.parquet")
    (bad / "events.parquet").write_bytes((tiny_dir / "events.parquet").read_bytes())
    (tmp_path / "random.pt").write_bytes(os.urandom(4096))
    capsys.readouterr()
    assert main(["check-data", "--data", str(bad)]) == 2
    data, out = ["--data", str(tiny_dir)], ["--out", str(tmp_path / "out")]
    assert main(["embed", "--model", str(tmp_path / "random.pt"), *data, *out]) == 2
    tune = ["train", *data, "--out", str(tmp_path / "m"), "--init-from", str(tiny_hybrid_model), "--epochs", "1"]
    assert main([*tune, "--dim", "32"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "column 'price': infinite values (3 rows)" in err[0]
    assert "not a readable checkpoint" in err[1] and "run code" not in err[1]
    assert "dim 32 (the checkpoint has 16)" in err[2] and len(err) == 3


def test_a_bad_spark_master_is_refused_within_seconds(tiny_dir, tiny_hybrid_model, tmp_path, capsys):
    from conftest import free_port

    from embeddings.cli import main

    for master in (f"spark://127.0.0.1:{free_port()}", "not-a-master"):
        began = time.monotonic()
        argv = ["embed", "--model", str(tiny_hybrid_model), "--data", str(tiny_dir), "--out", str(tmp_path / "o")]
        assert main([*argv, "--engine", "spark", "--spark-master", master]) == 2
        assert time.monotonic() - began < 20
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"Spark master {master!r}" in err, err
    assert not (tmp_path / "o").exists()


def test_redis_dying_during_a_publish_and_a_lookup_is_one_line(
    runs, tiny_dir, feature_repo, private_redis, monkeypatch, tmp_path, capsys
):
    """#33 row 5: Redis killed after the connection check, in the middle of a publish: one error line, exit 3,
    no traceback; the same for a lookup."""
    from embeddings.cli import main
    from embeddings.feature_store import _redis_rows

    port, password, server = private_redis
    run_a, run_b, users = runs
    repo = on_redis(feature_repo, (port, password), monkeypatch)
    pl.write_to_feature_store(repo, load_data(tiny_dir).listings, run_a)
    write, calls = _redis_rows.EntityWriter.write, []

    def write_then_lose_redis(self, parts):
        calls.append(1)
        if len(calls) == 2:
            server.kill()
            server.wait()
        return write(self, parts)

    monkeypatch.setattr(_redis_rows.EntityWriter, "write", write_then_lose_redis)
    monkeypatch.setattr(_redis_rows, "RETRY_S", 2.0)
    monkeypatch.setattr("embeddings.feature_store._materialize.BATCH_ROWS", 20)
    layout = lay_out(pl.RunLayout(tmp_path / "run-b"), run_b)
    capsys.readouterr()
    argv = ["publish", "--run", str(layout.root), "--data", str(tiny_dir), "--repo", str(repo.path)]
    assert main([*argv, "--target", "redis", "--allow-drift", "test", "--writers", "1"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: Redis at 127.0.0.1:{port}: ") and "again" in err, err
    assert len(repo.manifests()) == 1  # the run is not claimed
    assert main(["lookup", "--repo", str(repo.path), "--target", "redis", "--user", users[0]]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err


def test_the_cluster_script_never_follows_what_was_planted_in_its_folder(tmp_path):
    """#33 row 13: a folder given to the script must be new or empty (nothing planted in it is written through);
    without one, the script makes its own with mktemp."""
    from conftest import SCRIPT

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = tmp_path / "shared"
    planted.mkdir()
    (planted / "create.log").symlink_to(victim)
    env = {**os.environ, "REDIS_CLUSTER_PASSWORD": "x-secret"}
    got = subprocess.run(
        ["bash", str(SCRIPT), "start", "7991", str(planted)], env=env, capture_output=True, text=True, timeout=30
    )
    assert got.returncode == 2 and "not empty" in got.stderr and victim.read_text() == "keep me"
    assert "mktemp -d" in SCRIPT.read_text()
