"""One change at a time: each lever on ML-1M against the baseline, for the same training-time budget.

    python bench/sasrec_levers.py [--only NAME ...] [--budget-min 10] [--ml1m PATH] [--quick]

The baseline is the model of ``bench/sasrec_quality.py`` (dim 64, 2 blocks, 1 head, dropout 0.2, learned
positions, max_len 200, every 200-item window, full softmax, lr 2e-3, batch 128). Each lever changes one thing
and trains until early stopping (validation NDCG@10 every 2 epochs, patience 10) or the budget; the model with
the best validation NDCG@10 is tested (leave-last-out, full ranking). A lever is kept only if it beats the
baseline on the test set by more than the run-to-run noise. Results merge into
bench/results/sasrec_levers.json by name, so levers can be run one at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import ML1M, RESULTS, table, write  # noqa: E402

from embeddings.data import load_data  # noqa: E402
from embeddings.evaluate import evaluate  # noqa: E402
from embeddings.models.sasrec import SASRecConfig, SASRecRecommender  # noqa: E402
from embeddings.split import leave_last_out  # noqa: E402
from embeddings.train import TrainConfig  # noqa: E402

BASE_MODEL = {"max_len": 200, "dim": 64, "n_blocks": 2, "n_heads": 1, "dropout": 0.2}
BASE_TRAIN = {"epochs": 1000, "windows": "all", "eval_every": 2, "patience": 10}
ROTARY = {"positions": "rotary"}
COSINE = {"lr_schedule": "cosine", "epochs": 50, "patience": 1000}  # a fixed horizon instead of early stopping
# name: (model changes, training changes) from the baseline. Levers are tried one at a time, each on top of the
# ones kept before it (rotary positions, the first one kept, is part of every later lever)
LEVERS: dict[str, tuple[dict, dict]] = {
    "baseline": ({}, {}),
    "rotary positions": (ROTARY, {}),
    "rotary + dropout 0.4": ({**ROTARY, "dropout": 0.4}, {}),
    "rotary + cosine lr, 50 epochs": (ROTARY, COSINE),
    "rotary + dim 128, dropout 0.4": ({**ROTARY, "dim": 128, "dropout": 0.4}, {}),
    "rotary + 4 blocks, dropout 0.4": ({**ROTARY, "n_blocks": 4, "dropout": 0.4}, {}),
}


def run(name: str, split, budget_s: float) -> dict:
    model_kw, train_kw = LEVERS[name]
    model = SASRecRecommender(
        SASRecConfig(**{**BASE_MODEL, **model_kw}), TrainConfig(**{**BASE_TRAIN, **train_kw}, time_budget_s=budget_s)
    )
    began = time.perf_counter()
    model.fit(split)
    wall = time.perf_counter() - began
    test = evaluate(model, split.test)
    seconds = [h["seconds"] for h in model.history]
    return {
        "lever": name,
        "model_changes": model_kw,
        "train_changes": train_kw,
        "hr@10": test["hr@10"],
        "ndcg@10": test["ndcg@10"],
        "best_epoch": model.best["epoch"] + 1,
        "best_valid_ndcg@10": model.best["ndcg@10"],
        "epochs_run": len(seconds),
        "epoch_s_median": sorted(seconds)[len(seconds) // 2],
        "train_s": sum(seconds),
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", nargs="+", choices=tuple(LEVERS), help="run these levers (default: all)")
    p.add_argument("--budget-min", type=float, default=10.0)
    p.add_argument("--ml1m", default=str(ML1M))
    p.add_argument("--quick", action="store_true", help="500 users, 1 minute a lever")
    args = p.parse_args()
    events = load_data(args.ml1m).events
    if args.quick:
        events = events[events["user_id"].isin(events["user_id"].drop_duplicates().head(500))]
    split = leave_last_out(events)
    budget = 60.0 if args.quick else args.budget_min * 60
    path = RESULTS / "sasrec_levers.json"
    done = {r["lever"]: r for r in json.loads(path.read_text())["levers"]} if path.exists() else {}
    for name in args.only or LEVERS:
        print(f"lever: {name}", flush=True)
        done[name] = {**run(name, split, budget), "budget_s": budget}
        rows = [done[n] for n in LEVERS if n in done]
        write("sasrec_levers", {"quick": args.quick, "levers": rows})
    base = done.get("baseline")
    rows = [done[n] for n in LEVERS if n in done]
    for r in rows:
        r["hr@10_over_baseline"] = r["hr@10"] / base["hr@10"] if base else None
    cols = ["lever", "hr@10", "ndcg@10", "hr@10_over_baseline", "best_epoch", "epochs_run", "epoch_s_median"]
    print(table(rows, cols))
    print(f"wrote {write('sasrec_levers', {'quick': args.quick, 'levers': rows})}")


if __name__ == "__main__":
    main()
