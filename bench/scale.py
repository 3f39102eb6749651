"""A classifieds-size week, stage by stage: wall time, peak RSS and rows per second as the world grows.

    python bench/scale.py [--quick] [--users 100000 1000000] [--listings 300000] [--workers-at 100000]

For each world (users x listings, seed 0, partitioned by day): ``demo-data`` (2 processes), ``check-data`` (the data
contract over the partitioned folder) and ``train`` for one epoch (loss auto: logQ-sampled softmax above 10,000
listings; temporal split, validation, test ranking of every test user over the whole catalogue). Each stage runs as
its own command, as a scheduler would call it, so its peak RSS is its own (for ``train --workers 2``: the largest
process). On the first world, training also runs as two processes with the same global batch (one thread each:
on 2 cores the processes share the cores, so throughput per process is bounded by them). The growth exponent of
each stage between the two largest worlds is log(time ratio) / log(size ratio).

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

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, table, write  # noqa: E402

CLI = [sys.executable, "-m", "embeddings.cli"]


def _run(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; its wall time and the peak RSS of its largest process (children waited for included)."""
    began = time.perf_counter()
    env = {**os.environ, "LST_EMBEDDINGS_QUIET": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}:\n{log.read_text()[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


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


def world(users: int, listings: int, root: Path, logs: Path, two_processes: bool) -> dict:
    data = root / f"world-{users}"
    name = f"{users}x{listings}"
    gen = _run(
        [*CLI, "demo-data", "--users", str(users), "--listings", str(listings), "--out", str(data),
         "--partition-by-day", "--workers", "2"],
        logs / f"{name}-generate.log",
    )  # fmt: skip
    events = _events(data)
    check = _run([*CLI, "check-data", "--data", str(data)], logs / f"{name}-check.log")
    train = _train(data, root / f"model-{users}", 1, logs / f"{name}-train.log")
    result = {
        "users": users,
        "listings": listings,
        "events": events,
        "stages": {
            "generate": {**gen, "rows_per_s": events / gen["seconds"]},
            "contract": {**check, "rows_per_s": events / check["seconds"]},
            "train_one_epoch": {**train, "rows_per_s": events / train["seconds"]},
        },
    }
    if two_processes:
        result["train_two_processes"] = _train(data, root / f"model2-{users}", 2, logs / f"{name}-train2.log")
    shutil.rmtree(data, ignore_errors=True)
    return result


def growth(worlds: list[dict]) -> dict:
    """Exponent of each stage's time in the number of events, between the two largest worlds."""
    if len(worlds) < 2:
        return {}
    a, b = worlds[-2], worlds[-1]
    size = math.log(b["events"] / a["events"])
    return {s: math.log(b["stages"][s]["seconds"] / a["stages"][s]["seconds"]) / size for s in a["stages"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="worlds of 5,000 and 20,000 users, 30,000 listings")
    ap.add_argument("--users", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--listings", type=int, default=300_000)
    args = ap.parse_args()
    sizes, listings = ([5_000, 20_000], 30_000) if args.quick else (sorted(args.users), args.listings)
    root = Path(tempfile.mkdtemp(prefix="lst-scale-"))
    logs = RESULTS / "scale-logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        worlds = []
        for i, users in enumerate(sizes):
            worlds.append(world(users, listings, root, logs, two_processes=i == 0))
            print(f"{users:,} users done", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = [
        {"users": w["users"], "listings": w["listings"], "events": w["events"], "stage": stage, **v}
        for w in worlds
        for stage, v in w["stages"].items()
    ]
    print(table(rows, ["users", "listings", "events", "stage", "seconds", "peak_rss_mb", "rows_per_s"]))
    procs = [w["stages"]["train_one_epoch"] for w in worlds[:1]] + [w["train_two_processes"] for w in worlds[:1]]
    print(table(procs, ["processes", "epoch_s", "positions", "positions_per_s", "positions_per_s_per_process",
                        "peak_rss_mb", "hr@10"]))  # fmt: skip
    exponents = growth(worlds)
    if exponents:
        print("growth exponents (time vs events):", json.dumps({k: round(v, 2) for k, v in exponents.items()}))
    print(write("scale", {"worlds": worlds, "growth_exponent": exponents, "quick": args.quick}))


if __name__ == "__main__":
    main()
