"""Feature-store speed: materialize, online lookup (SQLite, Redis; SDK and HTTP), historical retrieval.

    python -m bench.feature_store [--quick] [--users N]

Synthetic user embeddings (dim 64) and rent/sale scores for N users (default 100,000) are published
through the publish stage's write step (``pipeline.write_to_feature_store``, where the checked ``publish``
ends) into a scratch copy of feature_repo/. Lookups of the ``user_profile``
service (embedding + p_rent) are timed one request at a time, in process (SDK) and against
``feast serve`` on 127.0.0.1 (HTTP). Redis is a real redis-server started on a free local port.
Each lookup is set next to its floor: the store's own read of the same number of users without
Feast (sqlite3 queries / one pipelined redis round trip, bytes not decoded), plus for HTTP one
POST to a do-nothing local HTTP server.
Writes bench/results/feature_store.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import disk_write_rate, local_redis, memory_copy_rate, table, write
from embeddings.feature_store import REPO, Repo, historical_features
from embeddings.pipeline import (
    RunTables,
    write_to_feature_store,  # the publish stage's write step, timed alone
)

FEAST = str(Path(sys.executable).with_name("feast"))
CUTOFF = pd.Timestamp.now(tz="UTC").floor("D") - pd.Timedelta(days=1)  # recent: served values are within their ttl
LOOKUP_COLUMNS = ["store", "path", "users_per_request", "p50_ms", "p99_ms", "floor_p50_ms", "p50_over_floor"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port}")


def synthetic_run(n_users: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = [f"U{i:07d}" for i in range(n_users)]
    emb = rng.standard_normal((n_users, 64)).astype(np.float32)
    user_embeddings = pd.DataFrame(
        {
            "user_id": users,
            "embedding": list(emb),
            "n_events": rng.integers(1, 100, n_users),
            "last_event_at": CUTOFF - pd.Timedelta(hours=1),
            "model_version": "sasrec-bench",
            "event_timestamp": CUTOFF,
        }
    )
    p = rng.random(n_users).astype(np.float32)
    preference = pd.DataFrame(
        {
            "user_id": users,
            "p_rent": p,
            "predicted_deal_type": np.where(p >= 0.5, "rent", "sale"),
            "classifier_version": "catboost-bench",
            "event_timestamp": CUTOFF,
        }
    )
    listings = pd.DataFrame(
        {
            "item_id": ["L0"],
            "deal_type": ["rent"],
            "property_type": ["flat"],
            "city": ["Moscow"],
            "district": ["D1"],
            "rooms": [1],
            "area_m2": [40.0],
            "floor": [2],
            "floors_total": [9],
            "price": [50000.0],
            "lat": [55.7],
            "lon": [37.6],
            "created_at": [CUTOFF - pd.Timedelta(days=3)],
            "event_timestamp": [CUTOFF - pd.Timedelta(days=3)],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": ["L0"],
            "embedding": [emb[0]],
            "source": "catalogue",
            "model_version": "sasrec-bench",
            "event_timestamp": CUTOFF,
        }
    )
    return listings, user_embeddings, items, preference


def percentiles(samples: list[float]) -> dict:
    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def latency(n: int, make_request, send) -> dict:
    """p50/p99 of ``send(make_request())`` over ``n`` requests after 20 warm-up ones; only ``send`` is timed."""
    samples = []
    for i in range(n + 20):
        request = make_request()
        start = time.perf_counter()
        send(request)
        if i >= 20:
            samples.append(time.perf_counter() - start)
    return percentiles(samples)


def post(url: str, body: bytes) -> bytes:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=30).read()


def time_sdk(store, users: list[str], batch: int, n: int, rng) -> dict:
    service = store.get_feature_service("user_profile")
    return latency(
        n,
        lambda: [{"user_id": u} for u in rng.choice(users, batch, replace=False)],
        lambda rows: store.get_online_features(features=service, entity_rows=rows).to_dict(),
    )


def time_http(port: int, users: list[str], batch: int, n: int, rng) -> dict:
    url = f"http://127.0.0.1:{port}/get-online-features"
    return latency(
        n,
        lambda: json.dumps(
            {"feature_service": "user_profile", "entities": {"user_id": list(rng.choice(users, batch, replace=False))}}
        ).encode(),
        lambda body: post(url, body),
    )


def floor_sqlite(db: Path, project: str, batch: int, n: int, rng) -> dict:
    """The store's own read, without Feast: the same per-view queries on the same keys, bytes not decoded."""
    import sqlite3

    con = sqlite3.connect(db)
    tables = [f"{project}_{view}" for view in ("user_embedding", "user_rent_sale_preference")]
    keys = [k for (k,) in con.execute(f"SELECT DISTINCT entity_key FROM {tables[0]}")]
    marks = ",".join("?" * batch)

    def read(chosen: list[bytes]) -> None:
        for t in tables:
            con.execute(
                f"SELECT entity_key, feature_name, value, event_ts FROM {t} WHERE entity_key IN ({marks})", chosen
            ).fetchall()

    result = latency(n, lambda: [keys[j] for j in rng.choice(len(keys), batch, replace=False)], read)
    con.close()
    return result


def floor_redis(env: dict, batch: int, n: int, rng) -> dict:
    """One pipelined HGETALL per user on one connection: a single round trip, bytes not decoded."""
    import redis

    client = redis.Redis(host=env["REDIS_HOST"], port=int(env["REDIS_PORT"]), password=env["REDIS_PASSWORD"])
    keys = list(client.scan_iter(count=10_000, _type="hash"))  # Feast's entity hashes (not the publish lease's keys)

    def read(chosen: list[bytes]) -> None:
        pipe = client.pipeline(transaction=False)
        for k in chosen:
            pipe.hgetall(k)
        pipe.execute()

    result = latency(n, lambda: [keys[j] for j in rng.choice(len(keys), batch, replace=False)], read)
    client.close()
    return result


def http_round_trip(n: int) -> dict:
    """A POST to a do-nothing HTTP server on 127.0.0.1 with the same client: the cost of HTTP alone."""
    import http.server
    import threading

    class Empty(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/get-online-features"
    result = latency(n, lambda: b'{"entities": {}}', lambda body: post(url, body))
    server.shutdown()
    return result


def lookups(repo: Repo, name: str, users: list[str], n: int, env: dict) -> list[dict]:
    """Feast lookups by SDK and HTTP, each next to the floor: the raw store read of the same number of rows."""
    rng = np.random.default_rng(1)
    store = repo.store()
    floors = {}
    for batch in (1, 100):
        if name == "sqlite":
            floors[batch] = floor_sqlite(repo.data / "online_store.db", store.project, batch, n, rng)
        else:
            floors[batch] = floor_redis(env, batch, n, rng)
    rows = []
    for batch in (1, 100):
        rows.append({"store": name, "path": "SDK", "users_per_request": batch, **time_sdk(store, users, batch, n, rng)})
    port = _free_port()
    cmd = [FEAST, "-f", str(repo.yaml), "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log"]
    server = subprocess.Popen(
        cmd, cwd=repo.path, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port, 120)
        for batch in (1, 100):
            rows.append(
                {"store": name, "path": "HTTP", "users_per_request": batch, **time_http(port, users, batch, n, rng)}
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    http = http_round_trip(n)
    for r in rows:
        floor = floors[r["users_per_request"]]
        r["floor_p50_ms"], r["floor_p99_ms"] = floor["p50_ms"], floor["p99_ms"]
        if r["path"] == "HTTP":  # plus one bare HTTP round trip
            r["floor_p50_ms"] += http["p50_ms"]
            r["floor_p99_ms"] += http["p99_ms"]
        r["p50_over_floor"] = r["p50_ms"] / r["floor_p50_ms"]
        print(table([r], LOOKUP_COLUMNS).splitlines()[-1], flush=True)
    return rows


def materialize_side_by_side(repo: Repo, scratch: Path) -> list[dict]:
    """User embeddings into a fresh Redis Cluster: Feast's ``materialize`` against the publisher's (one fenced
    ``HSET`` per user with its expiry, ``embeddings.feature_store._materialize.materialize_entities``) with one and
    two writers, in one run."""
    from bench.scale import start_cluster, stop_cluster
    from embeddings.feature_store._materialize import materialize_entities

    cluster = start_cluster(scratch / "cluster")
    if cluster is None:
        return []
    os.environ.update(cluster)
    try:
        cluster_repo = Repo(repo.path, "redis-cluster")
        store = cluster_repo.store()
        store.apply(cluster_repo.definitions())
        start, end = (
            (CUTOFF - pd.Timedelta(seconds=1)).to_pydatetime(),
            (CUTOFF + pd.Timedelta(seconds=1)).to_pydatetime(),
        )
        client = cluster_repo.redis()
        ways = {
            "feast materialize": lambda: _in(
                repo.path, store.materialize, start, end, feature_views=["user_embedding"]
            ),
            "publisher, 1 writer": lambda: materialize_entities(
                store, ["user_embedding"], start, end, token=1, writers=1, progress=False, newest=True
            ),
            "publisher, 2 writers": lambda: materialize_entities(
                store,
                ["user_embedding"],
                start,
                end,
                token=1,
                writers=2,
                progress=False,
                newest=True,
                parallel_min_rows=1,
            ),
        }
        rows = []
        for name, run in ways.items():
            times = []
            for _ in range(2):  # the faster of two runs into an empty cluster (the first warms caches)
                client.flushall()
                began = time.perf_counter()
                run()
                times.append(time.perf_counter() - began)
            n = sum(client.dbsize(target_nodes=node) for node in client.get_primaries())
            rows.append({"writer": name, "rows": n, "seconds": min(times), "rows_per_s": n / min(times)})
        for r in rows:
            r["over_feast"] = r["rows_per_s"] / rows[0]["rows_per_s"]
        print(table(rows, ["writer", "rows", "seconds", "rows_per_s", "over_feast"]))
        return rows
    finally:
        stop_cluster(scratch / "cluster")


def _in(folder: Path, call, *args, **kwargs):
    """``call`` with ``folder`` as the working folder: Feast's DuckDB store reads the repo's relative source paths
    from there."""
    with contextlib.chdir(folder):
        return call(*args, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--users", type=int, default=100_000)
    args = p.parse_args()
    n_users = 10_000 if args.quick else args.users
    n_requests = 100 if args.quick else 500
    scratch = Path(tempfile.mkdtemp(prefix="lst-feast-bench-"))
    shutil.copytree(REPO, scratch / "feature_repo", ignore=shutil.ignore_patterns("data", "__pycache__"))
    repo = Repo(scratch / "feature_repo")
    listings, users_df, items, pref = synthetic_run(n_users)
    users = list(users_df["user_id"])
    out: dict = {"users": n_users}

    start = time.perf_counter()
    manifest = write_to_feature_store(repo, listings, RunTables(users_df, items, pref))
    out["publish_s"] = time.perf_counter() - start
    # materialize alone, user embeddings only, into a fresh SQLite file
    store = repo.store(online_path=scratch / "materialize_only.db")
    store.apply(repo.definitions())  # creates the online tables in the fresh file
    start = time.perf_counter()
    _in(
        repo.path,
        store.materialize,
        CUTOFF.to_pydatetime() - pd.Timedelta(seconds=1),
        CUTOFF.to_pydatetime() + pd.Timedelta(seconds=1),
        feature_views=["user_embedding"],
    )
    mat_s = time.perf_counter() - start
    # I/O bound: the online table's bytes (key, 64 float32 values in Feast's proto, three small features, row
    # overhead: about 600 bytes a row in SQLite) over this disk's sequential write rate
    online_bytes = (scratch / "materialize_only.db").stat().st_size
    disk = disk_write_rate(scratch)
    out["materialize_user_embeddings"] = {
        "rows": n_users,
        "seconds": mat_s,
        "rows_per_s": n_users / mat_s,
        "online_bytes": online_bytes,
        "disk_write_bytes_per_s": disk,
        "bound_rows_per_s": n_users / (online_bytes / disk),
    }
    print(
        f"publish {out['publish_s']:.1f} s ({manifest['rows']}); "
        f"materialize user embeddings {n_users / mat_s:,.0f} rows/s"
    )

    # historical retrieval: 100k entity rows at random times around the cut-off
    rng = np.random.default_rng(2)
    n_rows = 10_000 if args.quick else 100_000
    entity_df = pd.DataFrame(
        {
            "user_id": rng.choice(users, n_rows),
            "event_timestamp": CUTOFF + pd.to_timedelta(rng.integers(-86400, 86400, n_rows), unit="s"),
        }
    )
    start = time.perf_counter()
    hist = historical_features(repo, entity_df)  # the service's views that hold rows (no profile head here)
    hist_s = time.perf_counter() - start
    # memory bound: reading both offline sources once and writing the joined result once
    source_bytes = sum(p.stat().st_size for p in (repo.data / "offline").rglob("*.parquet"))
    result_bytes = int(hist.memory_usage(deep=True).sum())
    mem = memory_copy_rate()
    out["historical"] = {
        "entity_rows": n_rows,
        "seconds": hist_s,
        "rows_per_s": n_rows / hist_s,
        "rows_with_values": int(hist["p_rent"].notna().sum()),
        "bound_seconds": (source_bytes + result_bytes) / mem,
        "memory_copy_bytes_per_s": mem,
    }
    print(f"historical retrieval {n_rows:,} rows in {hist_s:.2f} s ({n_rows / hist_s:,.0f} rows/s)")

    rows = lookups(repo, "sqlite", users, n_requests, {})
    if shutil.which("redis-server"):
        with local_redis() as env:
            os.environ.update(env)
            redis_repo = Repo(repo.path, "redis")
            start = time.perf_counter()
            write_to_feature_store(redis_repo, listings, RunTables(users_df, items, pref))
            out["publish_redis_s"] = time.perf_counter() - start
            rows += lookups(redis_repo, "redis", users, n_requests, env)
    else:
        print("redis-server not installed: Redis rows skipped (apt-get install redis-server)")
    out["lookups"] = rows
    out["materialize_redis_cluster"] = materialize_side_by_side(repo, scratch)
    print()
    print(table(rows, LOOKUP_COLUMNS + ["n"]))
    print(
        f"\nmaterialize {out['materialize_user_embeddings']['rows_per_s']:,.0f} rows/s (user embeddings, dim 64, "
        f"SQLite); historical {out['historical']['rows_per_s']:,.0f} rows/s ({n_rows:,} entity rows, DuckDB)"
    )
    print(f"wrote {write('feature_store', out)}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
