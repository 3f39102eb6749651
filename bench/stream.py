"""Fresh vectors: the stream worker's events per second and click-to-visible latency, on a real Redis.

    python -m bench.stream [--quick] [--users N] [--events N] [--rate 200] [--seconds 20]

Setup, for each store (``--stores``: a redis-server on a free loopback port, the ``redis`` target, and a local Redis
Cluster of three masters and three replicas from scripts/redis-cluster.sh, the ``redis-cluster`` target): a
synthetic week, a hybrid SASRec (profile head) trained briefly on it, the run published, the clicks store seeded
with the week. Then, in one run:

- throughput: ``--events`` valid clicks (known users, known listings) written to the stream at once, then 1 and
  then 2 workers (``lst-embeddings stream`` processes, micro-batches of 500) until every event is acknowledged;
- latency: one worker (micro-batches of up to 500); a producer writes clicks at ``--rate`` events/s for
  ``--seconds``, each by a user new to the site, and a reader polls ``get_online_features`` (the Feast SDK) for
  the 20 oldest pending users every 5 ms: p50 and p99 from the click's ``XADD`` to the first read that returns
  its vector.

- offline writes: Feast's offline push (DuckDB offline store: it rewrites the whole Parquet file) against the
  worker's appended files, 50 rows into tables of 10k, 100k and 300k rows.

Each measurement has a stream of its own (a stream deleted and made again under the same key stalled a new worker
for seconds here; not understood yet).

Writes bench/results/stream.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import local_redis, table, write


def _setup(folder: Path, users: int, env: dict, target: str = "redis"):
    import shutil

    from embeddings import pipeline as pl
    from embeddings.data.synthetic import WeekConfig, write_week
    from embeddings.feature_store import REPO, Repo
    from embeddings.stream import ClickStore

    os.environ.update(env)
    write_week(WeekConfig(users=users, listings=users, days=7, seed=0), folder / "week")
    shutil.copytree(REPO, folder / "repo", ignore=shutil.ignore_patterns("data", "__pycache__"))
    repo = Repo(folder / "repo", target)
    job = pl.JobConfig.from_dict(
        {
            "job": {"out": str(folder / "run")},
            "data": {"path": str(folder / "week")},
            "model": {"item_encoder": "hybrid", "max_len": 50, "dim": 64, "profile_horizon": 16},
            "train": {"epochs": 3},
            "feature_store": {"repo": str(repo.path), "target": target},
            "publish": {"allow_drift": "bench"},
        }
    )
    result = pl.run_job(job, log=lambda line: None)
    data = pl.load_data(folder / "week")
    cutoff = pd.Timestamp(result.manifest["cutoff"])
    ClickStore(repo.redis(), repo.config().project).seed(
        data.events[data.events["event_timestamp"] < cutoff], data.listings
    )
    return repo, data


def _clicks(data, n: int, seed: int, new_users: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = [f"U-new-{seed}-{i}" for i in range(n)] if new_users else rng.choice(data.events["user_id"].unique(), n)
    items = rng.choice(data.listings["item_id"].unique(), n)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    return pd.DataFrame(
        {"user_id": users, "item_id": items, "event_timestamp": now - pd.Timedelta(minutes=1), "event_type": "view"}
    )


def _workers(repo, env: dict, n: int, stream: str) -> list[subprocess.Popen]:
    argv = [sys.executable, "-m", "embeddings.cli", "stream", "--repo", str(repo.path), "--target", repo.target]
    argv += ["--idle-stop-s", "2", "--batch-size", "500", "--stream", stream]
    return [
        subprocess.Popen([*argv, "--consumer", f"worker-{k}"], env={**os.environ, **env}, stdout=subprocess.PIPE)
        for k in range(n)
    ]


def throughput(repo, data, env: dict, events: int, n_workers: int) -> dict:
    from embeddings.stream import status, write_clicks

    client = repo.redis()
    stream = f"bench:throughput-{n_workers}"  # a stream of its own for each measurement
    workers = _workers(repo, env, n_workers, stream)
    _ready(repo, client, data, n_workers, stream)
    before = _delivered(client, stream)
    began = time.perf_counter()
    write_clicks(client, _clicks(data, events, seed=n_workers), stream)
    while status(client, stream)["pending"] or _delivered(client, stream) < before + events:
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    for w in workers:
        w.wait(timeout=60)
    return {"workers": n_workers, "events": events, "seconds": seconds, "events_per_s": events / seconds}


def _ready(repo, client, data, n_workers: int, stream: str, store=None) -> None:
    """Wait until every worker has loaded its release: one probe click each, visible online (read with ``store``,
    whose first reads are then behind it)."""
    from embeddings.stream import write_clicks

    store = store or repo.store()
    for k in range(n_workers):
        probe = _clicks(data, 1, seed=1000 + k + hash(stream) % 1000, new_users=True)
        write_clicks(client, probe, stream)
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            got = store.get_online_features(
                features=["user_embedding:embedding"], entity_rows=[{"user_id": probe["user_id"].iloc[0]}]
            ).to_dict()
            if got["embedding"][0] is not None:
                break
            time.sleep(0.005)
    time.sleep(0.5)


def _delivered(client, stream: str) -> int:
    groups = client.xinfo_groups(stream)
    return int(groups[0].get("entries-read") or 0) if groups else 0


def latency(repo, data, env: dict, rate: float, seconds: float) -> dict:
    from embeddings.stream import write_clicks

    client = repo.redis()
    stream = "bench:latency"
    store = repo.store()
    workers = _workers(repo, env, 1, stream)
    _ready(repo, client, data, 1, stream, store)
    clicks = _clicks(data, int(rate * seconds), seed=99, new_users=True)
    pending: dict[str, float] = {}
    seen: list[float] = []
    lock, done = threading.Lock(), threading.Event()

    def read() -> None:
        while not done.is_set() or pending:
            with lock:
                users = list(pending)[:20]  # the oldest: the worker takes the stream in order
            if users:
                got = store.get_online_features(
                    features=["user_embedding:embedding"], entity_rows=[{"user_id": u} for u in users]
                ).to_dict()
                now = time.perf_counter()
                with lock:
                    for user, vector in zip(got["user_id"], got["embedding"], strict=True):
                        if vector is not None and user in pending:
                            seen.append(now - pending.pop(user))
            time.sleep(0.005)

    reader = threading.Thread(target=read)
    reader.start()
    began = time.perf_counter()
    for i in range(len(clicks)):
        wait = began + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        with lock:
            write_clicks(client, clicks.iloc[[i]], stream)
            pending[clicks["user_id"].iloc[i]] = time.perf_counter()
    deadline = time.perf_counter() + 30
    while pending and time.perf_counter() < deadline:
        time.sleep(0.05)
    done.set()
    reader.join()
    for w in workers:
        print("  worker:", w.communicate(timeout=60)[0].decode().strip())
    ms = np.array(seen) * 1000
    return {
        "rate": rate,
        "clicks": len(clicks),
        "visible": len(seen),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def offline_push(folder: Path, sizes=(10_000, 100_000, 300_000), batch: int = 50, pushes: int = 5) -> list[dict]:
    """Feast's offline push (``FeatureStore.push(..., to=PushMode.OFFLINE)``, DuckDB offline store, a FileSource of
    one Parquet file: it reads the whole file, appends and writes it again) against the worker's way (a new file
    per flush beside the others), for ``batch`` rows of 64-float vectors into a table of ``size`` rows. Median of
    ``pushes``."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, PushSource, RepoConfig
    from feast.data_source import PushMode
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.types import Array, Float32

    from embeddings.feature_store._writer import _write_offline

    def rows(n: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        start = pd.Timestamp("2026-12-01", tz="UTC")
        return pd.DataFrame(
            {
                "user_id": [f"U{seed}-{i}" for i in range(n)],
                "embedding": list(rng.normal(size=(n, 64))),
                "event_timestamp": start + pd.to_timedelta(np.arange(n), unit="s"),
                "published_at": start,
            }
        )

    out = []
    for size in sizes:
        where = folder / f"push-{size}"
        where.mkdir(parents=True)
        rows(size, 0).to_parquet(where / "table.parquet")
        user = Entity(name="user", join_keys=["user_id"])
        source = FileSource(
            name="table", path=str(where / "table.parquet"), timestamp_field="event_timestamp",
            created_timestamp_column="published_at",
        )  # fmt: skip
        push = PushSource(name="table_push", batch_source=source)
        vector = Field(name="embedding", dtype=Array(Float32))
        view = FeatureView(name="v", entities=[user], schema=[vector], source=push)
        config = RepoConfig(
            project="bench", provider="local", registry=str(where / "registry.db"), repo_path=str(where),
            online_store=SqliteOnlineStoreConfig(path=str(where / "online.db")),
            offline_store=DuckDBOfflineStoreConfig(), entity_key_serialization_version=3,
        )  # fmt: skip
        store = FeatureStore(config=config)
        store.apply([user, push, view])
        feast_s, append_s = [], []
        for k in range(pushes):
            new = rows(batch, k + 1)
            began = time.perf_counter()
            store.push("table_push", new, to=PushMode.OFFLINE)
            feast_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            _write_offline(new, where / "appended" / f"stream-{k}.parquet", f"bench-{k}")
            append_s.append(time.perf_counter() - began)
        feast, append = float(np.median(feast_s)), float(np.median(append_s))
        out.append({"table_rows": size, "batch_rows": batch, "feast_push_s": feast, "appended_file_s": append,
                    "ratio": feast / append})  # fmt: skip
    return out


def measure(folder: Path, env: dict, target: str, users: int, events: int, rate: float, seconds: float) -> dict:
    repo, data = _setup(folder, users, env, target)
    rows = [{"store": target, **throughput(repo, data, env, events, n)} for n in (1, 2)]
    print(table(rows, ["store", "workers", "events", "seconds", "events_per_s"]))
    lat = {"store": target, **latency(repo, data, env, rate, seconds)}
    print(table([lat], ["store", "rate", "clicks", "visible", "p50_ms", "p99_ms", "max_ms"]))
    return {"throughput": rows, "latency": lat}


def main() -> None:
    from bench.scale import start_cluster, stop_cluster

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--stores", default="redis,redis-cluster", help="redis, redis-cluster or both")
    args = p.parse_args()
    users, events, seconds = (1000, 4000, 8.0) if args.quick else (args.users, args.events, args.seconds)
    folder = Path(tempfile.mkdtemp(prefix="lst-stream-"))
    for store in ("redis", "cluster"):
        (folder / store).mkdir()
    results = {}
    if "redis" in args.stores.split(","):
        with local_redis(folder / "redis") as env:
            results["redis"] = measure(folder / "redis", env, "redis", users, events, args.rate, seconds)
    if "redis-cluster" in args.stores.split(","):
        env = start_cluster(folder / "cluster")
        if env is not None:
            try:
                results["redis-cluster"] = measure(
                    folder / "cluster", env, "redis-cluster", users, events, args.rate, seconds
                )
            finally:
                stop_cluster(folder / "cluster")
    pushes = offline_push(folder / "offline", (10_000, 50_000) if args.quick else (10_000, 100_000, 300_000))
    rows = [r for result in results.values() for r in result["throughput"]]
    print(table(rows, ["store", "workers", "events", "seconds", "events_per_s"]))
    lats = [result["latency"] for result in results.values()]
    print(table(lats, ["store", "rate", "clicks", "visible", "p50_ms", "p99_ms", "max_ms"]))
    print(table(pushes, ["table_rows", "batch_rows", "feast_push_s", "appended_file_s", "ratio"]))
    payload = {"users": users, "throughput": rows, "latency": lats, "offline_push": pushes}
    print(f"wrote {write('stream', payload)}")


if __name__ == "__main__":
    main()
