"""Losses for large catalogues: full softmax against sampled softmax and logQ-corrected sampled softmax.

    python -m bench.losses [--quick] [--items 5000 10000 20000 100000 300000] [--budget-s 240] [--skip-quality]

Speed: one SASRec training step (dim 64, 2 blocks, 128 sequences of 50 clicks, Zipf-popular items) on
catalogues of each size, each loss in its own process (so its peak RSS is its own): seconds per million
positions and peak RSS. The sequences are random; only the cost is measured here.

Quality: leave-last-out HR@10 / NDCG@10 (full ranking) on ``video.txt`` and ML-1M after the same
training-time budget for each loss (256 uniform negatives; logq adds the batch's own targets).
``--skip-quality`` keeps the quality rows of the last run that measured them (marked in the JSON).

Writes bench/results/losses.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np

from bench.common import ML1M, RESULTS, table, write

LOSSES = ("softmax", "sampled", "logq")


def _step_speed(n_items: int, loss: str, steps: int, out: mp.Queue) -> None:
    import torch

    from embeddings.data.split import EvalCases, Split
    from embeddings.models.sasrec import SASRecConfig, SASRecRecommender
    from embeddings.training.config import TrainConfig
    from embeddings.training.loop import _Loop

    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    pop /= pop.sum()
    seqs = [rng.choice(n_items, 51, p=pop) for _ in range(128)]
    empty = EvalCases(np.zeros(1, np.int64), [seqs[0][:-1]], np.array([int(seqs[0][-1])]), np.zeros(1, bool))
    split = Split("bench", np.arange(n_items).astype(str).astype(object), np.arange(128), seqs, empty, empty,
                  np.ones(n_items, bool))  # fmt: skip
    rec = SASRecRecommender(SASRecConfig(max_len=50), TrainConfig(loss=loss, bf16=False))
    loop = _Loop(rec, split)
    from embeddings.models.sasrec import pad_right

    inputs, targets = pad_right([s[:-1] for s in seqs], 50), pad_right([s[1:] for s in seqs], 50)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        n = int((targets > 0).sum())
        loss_value = loop.step(inputs, targets, n, g)
        loop.optimizer.zero_grad(set_to_none=True)
        loss_value.backward()
        loop.optimizer.step()
        times.append(time.perf_counter() - t0)
    per_step = float(np.median(times[1:]))
    out.put({"items": n_items, "loss": loss, "s_per_million_positions": per_step / n * 1e6,
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})  # fmt: skip


def speed(sizes: list[int], steps: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for n in sizes:
        for loss in LOSSES:
            q = ctx.Queue()
            p = ctx.Process(target=_step_speed, args=(n, loss, steps, q))
            p.start()
            rows.append(q.get())
            p.join()
        full = next(r for r in rows if r["items"] == n and r["loss"] == "softmax")
        for r in rows:
            if r["items"] == n:
                r["speedup_over_full"] = full["s_per_million_positions"] / r["s_per_million_positions"]
        cols = ["items", "loss", "s_per_million_positions", "speedup_over_full", "peak_rss_mb"]
        print(table([r for r in rows if r["items"] == n], cols), flush=True)
    return rows


def quality(name: str, path: Path, max_len: int, budget_s: float) -> list[dict]:
    from embeddings.data import load_data
    from embeddings.data.split import leave_last_out
    from embeddings.models.sasrec import SASRecConfig
    from embeddings.models.zoo import make_model
    from embeddings.stages.evaluate import evaluate
    from embeddings.training.config import TrainConfig

    split = leave_last_out(load_data(path).events)
    rows = []
    for loss in LOSSES:
        train = TrainConfig(epochs=500, patience=5, loss=loss, time_budget_s=budget_s, windows="all")
        began = time.perf_counter()
        rec = make_model("sasrec", split, None, sasrec=SASRecConfig(max_len=max_len), train=train).fit(split)
        m = evaluate(rec, split.test)
        rows.append({"data": name, "loss": loss, "hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"],
                     "epochs": len(rec.history), "fit_s": time.perf_counter() - began})  # fmt: skip
        print(table(rows[-1:], ["data", "loss", "hr@10", "ndcg@10", "epochs", "fit_s"]).splitlines()[-1], flush=True)
    full = rows[0]
    for r in rows:
        r["hr@10_vs_full"] = r["hr@10"] / max(full["hr@10"], 1e-12)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="one small catalogue, no quality runs")
    p.add_argument("--items", nargs="+", type=int, default=[5_000, 10_000, 20_000, 100_000, 300_000])
    p.add_argument("--budget-s", type=float, default=240.0, help="training seconds per loss and data set")
    p.add_argument("--skip-quality", action="store_true")
    args = p.parse_args()
    sizes = [20_000] if args.quick else args.items
    rows = speed(sizes, steps=3 if args.quick else 6)
    quality_rows, earlier = [], None
    if args.skip_quality and (RESULTS / "losses.json").exists():
        earlier = json.loads((RESULTS / "losses.json").read_text())
        quality_rows = earlier.get("quality", [])
    if not (args.quick or args.skip_quality):
        for name, path, max_len in (("Video", ML1M.with_name("video.txt"), 50), ("ML-1M", ML1M, 200)):
            if path.exists():
                quality_rows += quality(name, path, max_len, args.budget_s)
    print()
    print(table(rows, ["items", "loss", "s_per_million_positions", "speedup_over_full", "peak_rss_mb"]))
    if quality_rows:
        print(table(quality_rows, ["data", "loss", "hr@10", "ndcg@10", "hr@10_vs_full", "epochs", "fit_s"]))
    payload = {"speed": rows, "quality": quality_rows, "quick": args.quick}
    if earlier is not None:
        payload["quality_measured"] = earlier.get("quality_measured", earlier["machine"]["date"])
    print(f"\nwrote {write('losses', payload)}")


if __name__ == "__main__":
    main()
