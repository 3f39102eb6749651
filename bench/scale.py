"""A classifieds-size week, stage by stage: wall time, peak RSS and rows per second as the world grows.

    python -m bench.scale [--quick] [--users 100000 1000000] [--listings 300000] [--spark-at 100000]

For each world (users x listings, seed 0, events partitioned by day) every stage of the weekly job runs as its own
command, as a scheduler would call it, so its peak RSS is its own (children included: for ``train --workers 2`` and
parallel online writers, the largest process):

    generate (demo-data, 2 processes) -> contract (check-data) -> split -> train (one epoch) -> embed -> classify
    -> checks (validate --run) -> publish (checks again, offline write, materialize)

then what a consumer does: a point-in-time join of 100,000 entity rows (``user_profile``) and single-user online
lookups of ``user_profile`` (SDK, p50/p99 of 2,000). Targets: ``local`` (DuckDB offline, SQLite online, the
default), ``redis-cluster`` (DuckDB offline, a three-master Redis Cluster started here; parallel writers), and on the
worlds in ``--spark-at`` also ``spark`` (Spark offline store and Feast's Spark engine on local[*], the same Redis
Cluster; ``embed --engine spark``) side by side with the local ones. The whole job is the sum of the local
target's stages. The growth exponent of each stage between the two largest worlds is log(time ratio) / log(size
ratio) in events. On the first world, training also runs as two processes with the same global batch.

Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, table, write

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "embeddings.cli"]
ME = [sys.executable, "-m", "bench.scale"]
CLUSTER_PORT = 7301
PIT_ROWS = 100_000
LOOKUPS = 2_000


def _run(cmd: list[str], log: Path, env: dict | None = None, ok: tuple[int, ...] = (0,)) -> dict:
    """Run ``cmd``; its wall time and the peak RSS of its largest process (children waited for included)."""
    began = time.perf_counter()
    env = {**os.environ, "LST_EMBEDDINGS_QUIET": "1", **(env or {})}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}:\n{log.read_text()[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "exit_code": code}


def _measure(what: str, args: list[str], log: Path, env: dict | None = None) -> dict:
    """A measurement run by this script in its own process (``--measure``); its JSON plus wall time and RSS."""
    out = log.with_suffix(".json")
    row = _run([*ME, "--measure", what, str(out), *args], log, env)
    return {**row, **json.loads(out.read_text())}


# ------------------------------------------------------------------------------ measurements in their own process
def measure_split(out: Path, data: str) -> None:
    from embeddings.data import load_data
    from embeddings.pipeline import DataConfig, split_data

    dataset = load_data(data)
    began = time.perf_counter()
    split = split_data(dataset, DataConfig(Path(data)))
    out.write_text(json.dumps({"split_s": time.perf_counter() - began, "test_users": len(split.test)}))


def _repo(path: str, target: str):
    from embeddings.feature_store import Repo

    return Repo(Path(path), target)


def measure_pit(out: Path, repo: str, target: str, users: str) -> None:
    """Point-in-time rows of ``user_profile`` for PIT_ROWS (user, time) pairs around the run's cut-off."""
    import numpy as np
    import pandas as pd

    from embeddings.data.contract import read_parquet
    from embeddings.feature_store import historical_features

    table = read_parquet(users)
    rng = np.random.default_rng(0)
    cutoff = pd.Timestamp(table["event_timestamp"].iloc[0])
    entity_df = pd.DataFrame(
        {
            "user_id": rng.choice(table["user_id"].to_numpy(), PIT_ROWS),
            "event_timestamp": cutoff + pd.to_timedelta(rng.integers(-86_400, 86_400, PIT_ROWS), unit="s"),
        }
    )
    the_repo = _repo(repo, target)
    the_repo.store()  # Spark: the session starts here, not inside the timed join
    began = time.perf_counter()
    got = historical_features(the_repo, entity_df)
    seconds = time.perf_counter() - began
    out.write_text(json.dumps({"pit_s": seconds, "rows": len(got), "with_values": int(got["embedding"].notna().sum())}))


def measure_lookup(out: Path, repo: str, target: str, users: str) -> None:
    """Single-user ``user_profile`` lookups through the SDK: p50 / p99 of LOOKUPS after 100 warm-up ones."""
    import numpy as np

    from embeddings.data.contract import read_parquet

    ids = read_parquet(users)["user_id"].to_numpy()
    store = _repo(repo, target).store()
    service = store.get_feature_service("user_profile")
    rng = np.random.default_rng(1)
    times = []
    for i in range(100 + LOOKUPS):
        rows = [{"user_id": str(rng.choice(ids))}]
        began = time.perf_counter()
        got = store.get_online_features(features=service, entity_rows=rows).to_dict()
        if i >= 100:
            times.append(time.perf_counter() - began)
    assert got["embedding"][0] is not None, "lookup found no embedding"
    ms = np.asarray(times) * 1000
    out.write_text(json.dumps({"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}))


def measure_publish(out: Path, run: str, data: str, repo: str, target: str) -> None:
    """The feature-store write of a run (offline Parquet, materialization), where the checked ``publish`` ends
    once its checks pass: the checks are the ``checks`` stage (a one-epoch model may fail them)."""
    from embeddings.data.contract import load_listings
    from embeddings.pipeline import RunLayout, RunTables, write_to_feature_store

    tables = RunTables.read(RunLayout(Path(run)))
    listings = load_listings(Path(data) / "listings.parquet")
    began = time.perf_counter()
    manifest = write_to_feature_store(_repo(repo, target), listings, tables)
    out.write_text(json.dumps({"write_s": time.perf_counter() - began, "manifest": manifest}, default=str))


MEASURES = {"split": measure_split, "pit": measure_pit, "lookup": measure_lookup, "publish": measure_publish}


# --------------------------------------------------------------------------------------------------- a world
def _events(folder: Path) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(folder / "events.parquet", partitioning="hive").count_rows()


def _train(data: Path, out: Path, workers: int, log: Path) -> dict:
    import torch

    cmd = [*CLI, "train", "--data", str(data), "--out", str(out), "--epochs", "1", "--workers", str(workers)]
    row = _run(cmd, log)
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    epoch = state["metrics"]["history"][0]
    test = state["metrics"]["test"]
    return {
        **row,
        "processes": workers,
        "loss_function": epoch["loss_function"],
        "epoch_s": epoch["seconds"],
        "positions": epoch["positions"],
        "positions_per_s": epoch["positions"] / epoch["seconds"],
        "positions_per_s_per_process": epoch["positions"] / epoch["seconds"] / workers,
        "test_users": int(test["n_cases"]),
        "hr@10": test["hr@10"],
        "ndcg@10": test["ndcg@10"],
    }


def _publish(run: Path, data: Path, repo: Path, target: str, log: Path, env: dict) -> dict:
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    out = log.with_suffix(".json")
    row = _run([*ME, "--measure", "publish", str(out), str(run), str(data), str(repo), target], log, env)
    manifest = json.loads(out.read_text())["manifest"]
    rows = sum(manifest["rows"].values())
    materialized = manifest["materialized"]
    mat_s = sum(w["seconds"] for w in materialized)
    return {
        **row,
        "rows": rows,
        "rows_per_s": rows / row["seconds"],
        "offline_write_s": manifest["offline_write_seconds"],
        "materialize_s": mat_s,
        "materialize_rows_per_s": rows / mat_s,
        "materialized": materialized,
    }


def world(users: int, listings: int, root: Path, logs: Path, first: bool, spark: bool, cluster: dict | None) -> dict:
    data, run = root / f"world-{users}", root / f"run-{users}"
    name = f"{users}x{listings}"
    log = lambda stage: logs / f"{name}-{stage}.log"  # noqa: E731
    stages: dict[str, dict] = {}
    stages["generate"] = _run(
        [*CLI, "demo-data", "--users", str(users), "--listings", str(listings), "--out", str(data),
         "--partition-by-day", "--workers", "2"],
        log("generate"),
    )  # fmt: skip
    events = _events(data)
    stages["contract"] = _run([*CLI, "check-data", "--data", str(data)], log("check"))
    stages["split"] = _measure("split", [str(data)], log("split"))
    stages["train_one_epoch"] = _train(data, run / "model", 1, log("train"))
    stages["embed"] = _run([*CLI, "embed", "--model", str(run / "model" / "model.pt"), "--data", str(data),
                            "--out", str(run / "embeddings")], log("embed"))  # fmt: skip
    stages["classify"] = _run([*CLI, "classify", "--run", str(run), "--data", str(data)], log("classify"))
    checks_repo = root / f"repo-checks-{users}"  # empty: no earlier run to compare drift with
    shutil.copytree(ROOT / "feature_repo", checks_repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    cmd = [*CLI, "validate", "--run", str(run), "--data", str(data), "--repo", str(checks_repo)]
    stages["checks"] = _run(cmd, log("checks"), ok=(0, 4))  # 4: some check failed (reported, not a bench error)
    stages["checks"]["failed"] = _failed_checks(run)
    users_table = str(run / "embeddings" / "user_embeddings.parquet")
    stages["publish"] = _publish(run, data, root / f"repo-local-{users}", "local", log("publish"), {})
    stages["pit_join"] = _measure("pit", [str(root / f"repo-local-{users}"), "local", users_table], log("pit"))
    for s in stages.values():
        s.setdefault("rows_per_s", events / s["seconds"])
    result = {"users": users, "listings": listings, "events": events, "stages": stages}
    result["whole_job_s"] = sum(stages[s]["seconds"] for s in WHOLE_JOB)
    result["peak_rss_mb"] = max(stages[s]["peak_rss_mb"] for s in stages)

    sides: dict[str, dict] = {}
    if cluster:
        repo = root / f"repo-cluster-{users}"
        sides["publish redis-cluster"] = _publish(run, data, repo, "redis-cluster", log("publish-cluster"), cluster)
        sides["lookup redis-cluster"] = _measure(
            "lookup", [str(repo), "redis-cluster", users_table], log("lookup"), cluster
        )
    if spark:
        spark_run = root / f"run-spark-{users}"
        shutil.copytree(run, spark_run, ignore=shutil.ignore_patterns("embeddings", "validation"))
        sides["embed spark"] = _run([*CLI, "embed", "--engine", "spark", "--model", str(run / "model" / "model.pt"),
                                     "--data", str(data), "--out", str(spark_run / "embeddings")],
                                    log("embed-spark"))  # fmt: skip
        sides["embed spark"]["max_abs_diff_vs_local"] = _max_diff(users_table, spark_run)
        if cluster:
            repo = root / f"repo-spark-{users}"
            sides["publish spark"] = _publish(run, data, repo, "spark", log("publish-spark"), cluster)
            sides["pit_join spark"] = _measure("pit", [str(repo), "spark", users_table], log("pit-spark"), cluster)
            sides["lookup spark"] = _measure("lookup", [str(repo), "spark", users_table], log("lookup-spark"), cluster)
    result["profiles"] = sides
    if first:
        result["train_two_processes"] = _train(data, root / f"model2-{users}", 2, log("train2"))
    if cluster:
        _flush(cluster)
    shutil.rmtree(data, ignore_errors=True)
    return result


def _failed_checks(run: Path) -> list[str]:
    checks = json.loads((run / "validation" / "checks.json").read_text())["checks"]
    return [f"{c['suite']}: {c['column']}" for c in checks if not c["success"] and c["kind"] != "warning"]


WHOLE_JOB = ("generate", "contract", "train_one_epoch", "embed", "classify", "checks", "publish")


def _max_diff(local_users: str, spark_run: Path) -> float:
    import numpy as np

    from embeddings.data.contract import read_parquet

    a = read_parquet(local_users).set_index("user_id")
    b = read_parquet(spark_run / "embeddings" / "user_embeddings.parquet").set_index("user_id").loc[a.index]
    return float(np.abs(np.stack(a["embedding"]) - np.stack(b["embedding"])).max())


# ------------------------------------------------------------------------------------------- redis cluster
def start_cluster(folder: Path) -> dict | None:
    if shutil.which("redis-server") is None:
        print("redis-server missing: no Redis Cluster rows (apt-get install redis-server)")
        return None
    password = f"scale-{os.getpid()}"
    env = {**os.environ, "REDIS_CLUSTER_PASSWORD": password}
    got = subprocess.run(["bash", str(ROOT / "scripts" / "redis-cluster.sh"), "start", str(CLUSTER_PORT), str(folder)],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    exported = dict(line.removeprefix("export ").split("=", 1) for line in got.stdout.strip().splitlines())
    return {"REDIS_CLUSTER_NODES": exported["REDIS_CLUSTER_NODES"], "REDIS_CLUSTER_PASSWORD": password}


def stop_cluster(folder: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "redis-cluster.sh"), "stop", str(CLUSTER_PORT), str(folder)])


def _flush(cluster: dict) -> None:
    from embeddings.feature_store.repo import redis_client

    redis_client(f"{cluster['REDIS_CLUSTER_NODES']},password={cluster['REDIS_CLUSTER_PASSWORD']}", True).flushall()


def growth(worlds: list[dict]) -> dict:
    """Exponent of each stage's time in the number of events, between the two largest worlds."""
    if len(worlds) < 2:
        return {}
    a, b = worlds[-2], worlds[-1]
    size = math.log(b["events"] / a["events"])
    return {s: math.log(b["stages"][s]["seconds"] / a["stages"][s]["seconds"]) / size for s in a["stages"]}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":
        MEASURES[sys.argv[2]](Path(sys.argv[3]), *sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="worlds of 5,000 and 20,000 users, 30,000 listings")
    ap.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--listings", type=int, default=300_000)
    ap.add_argument("--spark-at", type=int, nargs="*", default=[100_000], help="worlds that also run the Spark target")
    args = ap.parse_args()
    sizes, listings = ([5_000, 20_000], 30_000) if args.quick else (sorted(args.users), args.listings)
    spark_at = {sizes[0]} if args.quick else set(args.spark_at)
    root = Path(tempfile.mkdtemp(prefix="lst-scale-"))
    logs = RESULTS / "scale-logs"
    logs.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster(root / "cluster")
    try:
        worlds = []
        for i, users in enumerate(sizes):
            worlds.append(world(users, listings, root, logs, i == 0, users in spark_at, cluster))
            print(f"{users:,} users done: whole job {worlds[-1]['whole_job_s'] / 60:.1f} min", flush=True)
    finally:
        if cluster:
            stop_cluster(root / "cluster")
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        {"users": w["users"], "events": w["events"], "stage": stage, **v}
        for w in worlds
        for stage, v in [*w["stages"].items(), *w["profiles"].items()]
    ]
    print(table(rows, ["users", "events", "stage", "seconds", "peak_rss_mb", "rows_per_s"]))
    procs = [w["stages"]["train_one_epoch"] for w in worlds[:1]] + [w["train_two_processes"] for w in worlds[:1]]
    print(table(procs, ["processes", "epoch_s", "positions", "positions_per_s", "positions_per_s_per_process",
                        "peak_rss_mb", "hr@10"]))  # fmt: skip
    exponents = growth(worlds)
    if exponents:
        print("growth exponents (time vs events):", json.dumps({k: round(v, 2) for k, v in exponents.items()}))
    print(write("scale", {"worlds": worlds, "growth_exponent": exponents, "quick": args.quick}))


if __name__ == "__main__":
    main()
