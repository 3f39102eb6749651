"""What readers see while a run is published over another one on Redis: rows mixing two runs.

    python -m bench.publish_readers [--quick] [--users N]

Runs A and B of N synthetic users (default 20,000; vectors and scores all differ between the two) into a real
redis-server on a free local port. A is published; then B's rows are written two ways, each time from A online:

- ``view by view``: Feast's way (``OnlineStore.online_write_batch`` per view, what ``feast materialize`` does),
  through the publisher's parallel writers (``_materialize.materialize``);
- ``one HSET per user``: the publisher's way (``_materialize.materialize_entities``).

Meanwhile a reader loops ``get_online_features`` of the ``user_profile`` service for 50 random users and
counts the rows whose vector is one run's and whose ``p_rent`` is the other's. Same data, same writers (2
processes), same reader, one run. Writes bench/results/publish_readers.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import local_redis, table, write
from bench.feature_store import synthetic_run
from embeddings.feature_store import REPO, Repo, online_features
from embeddings.pipeline import RunTables, write_to_feature_store

COLUMNS = ["writer", "users", "write_s", "reads", "rows_read", "mixed_rows", "mixed_share"]


def _runs(n_users: int):
    listings, users_a, items, scores_a = synthetic_run(n_users, seed=0)
    _, users_b, _, scores_b = synthetic_run(n_users, seed=1)
    later = users_a["event_timestamp"].iloc[0] + pd.Timedelta(hours=1)
    users_b, scores_b = users_b.assign(event_timestamp=later), scores_b.assign(event_timestamp=later)
    return (
        listings,
        RunTables(users_a, items, scores_a),
        RunTables(users_b, items.assign(event_timestamp=later), scores_b),
    )


def _b_sources(store, run_b: RunTables, folder: Path) -> dict:
    """B's rows as Parquet files and data sources that read them (the shape the publisher stages)."""
    from embeddings.feature_store._writer import _offline_table, _source_at

    sources = {}
    stamp = pd.Timestamp.now(tz="UTC").floor("s")
    for table_name, view, df in (
        ("user_embeddings", "user_embedding", run_b.users),
        ("user_preference", "user_rent_sale_preference", run_b.scores),
    ):
        path = folder / f"{table_name}.parquet"
        _offline_table(table_name, df, stamp).to_parquet(path, index=False)
        sources[view] = _source_at(store.get_feature_view(view).batch_source, path)
    return sources


def _reader(repo: Repo, a: pd.DataFrame, b: pd.DataFrame, stop: threading.Event, seen: dict) -> None:
    rng = np.random.default_rng(0)
    ids = a.index.to_numpy()
    while not stop.is_set():
        users = list(rng.choice(ids, 50, replace=False))
        got = online_features(repo, users).set_index("user_id")
        vec_b = np.array([np.allclose(got.at[u, "embedding"], b.at[u, "embedding"], atol=1e-6) for u in users])
        score_b = np.isclose(got.loc[users, "p_rent"].astype(float).to_numpy(), b.loc[users, "p_rent"].to_numpy())
        seen["reads"] += 1
        seen["rows"] += len(users)
        seen["mixed"] += int((vec_b != score_b).sum())


def one_way(name: str, write_b, repo: Repo, listings, run_a, a, b) -> dict:
    repo.redis().flushall()
    for manifest in (repo.data / "manifests").glob("*.json"):
        manifest.unlink()
    write_to_feature_store(repo, listings, run_a)
    stop, seen = threading.Event(), {"reads": 0, "rows": 0, "mixed": 0}
    reader = threading.Thread(target=_reader, args=(repo, a, b, stop, seen))
    reader.start()
    time.sleep(0.5)  # the reader is reading before the write begins
    began = time.perf_counter()
    try:
        write_b()
        seconds = time.perf_counter() - began
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join()
    row = {
        "writer": name,
        "users": len(a),
        "write_s": round(seconds, 2),
        "reads": seen["reads"],
        "rows_read": seen["rows"],
        "mixed_rows": seen["mixed"],
        "mixed_share": round(seen["mixed"] / max(seen["rows"], 1), 4),
    }
    print(table([row], COLUMNS).splitlines()[-1], flush=True)
    return row


def main() -> None:
    from embeddings.feature_store._materialize import materialize, materialize_entities

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--users", type=int, default=20_000)
    args = p.parse_args()
    n_users = 5_000 if args.quick else args.users
    scratch = Path(tempfile.mkdtemp(prefix="lst-publish-readers-"))
    try:
        with local_redis(scratch) as env:
            os.environ.update(env)
            shutil.copytree(REPO, scratch / "repo", ignore=shutil.ignore_patterns("data", "__pycache__"))
            repo = Repo(scratch / "repo", "redis")
            listings, run_a, run_b = _runs(n_users)
            a = run_a.users.set_index("user_id")[["embedding"]].join(run_a.scores.set_index("user_id")["p_rent"])
            b = run_b.users.set_index("user_id")[["embedding"]].join(run_b.scores.set_index("user_id")["p_rent"])
            write_to_feature_store(repo, listings, run_a)
            store = repo.store()
            sources = _b_sources(store, run_b, scratch)
            views = list(sources)
            stamp = run_b.users["event_timestamp"].iloc[0]
            start, end = ((stamp + pd.Timedelta(seconds=s)).to_pydatetime() for s in (-1, 1))
            ways = {
                "view by view (Feast's online_write_batch)": lambda: materialize(
                    store, views, start, end, writers=2, progress=False, newest=True, sources=sources,
                    parallel_min_rows=1,
                ),
                "one HSET per user (publisher)": lambda: materialize_entities(
                    store, views, start, end, token=2**62, writers=2, progress=False, newest=True, sources=sources,
                    parallel_min_rows=1,
                ),
            }  # fmt: skip
            print(table([], COLUMNS))
            rows = [one_way(name, way, repo, listings, run_a, a, b) for name, way in ways.items()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(rows, COLUMNS))
    print(f"wrote {write('publish_readers', {'users': n_users, 'rows': rows})}")


if __name__ == "__main__":
    main()
