"""One change at a time: each lever against the baseline, for the same training-time budget.

    python -m bench.sasrec_levers [--data ml1m|video] [--only NAME ...] [--budget-min 10|6] [--quick]

ML-1M (long histories): the baseline is dim 64, 2 blocks, 1 head, dropout 0.2, learned positions, max_len 200,
every 200-item window, full softmax, lr 2e-3, batch 128; early stopping on validation NDCG@10 every 2 epochs,
patience 10. Video (short sequences, ``video.txt`` beside the ML-1M file): the ``train`` defaults as they were
(dropout 0.2, max_len 50, loss auto = logQ, batches of 128 windows), validation every epoch. Each lever trains
until early stopping or the budget; the model with the best validation NDCG@10 is tested (leave-last-out, full
ranking). A lever is kept only if it beats the baseline on the test set by more than the run-to-run noise.
Results merge by lever, machine and budget into bench/results/sasrec_levers.json (ML-1M) or sasrec_levers_video.json,
so levers run one at a time; ratios are taken within one machine only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import ML1M, RESULTS, machine, table, test_figures, write
from embeddings.data import load_data
from embeddings.data.split import leave_last_out
from embeddings.models.sasrec import SASRecConfig, SASRecRecommender
from embeddings.training.loop import TrainConfig

ROTARY = {"positions": "rotary"}
LIGR = {**ROTARY, "layer": "ligr", "ffn_mult": 4}  # kept: the ml1m preset
OVERLAP = {"windows": "overlap"}  # kept: the ml1m preset
COSINE = {"lr_schedule": "cosine", "epochs": 50, "patience": 1000}  # a fixed horizon instead of early stopping
# per data: (base model, base training, {name: (model changes, training changes)}). Levers are tried one at a
# time, each on top of the ones kept before it (ML-1M: rotary positions, the first one kept, is in every later one)
DATA: dict[str, tuple[dict, dict, dict[str, tuple[dict, dict]]]] = {
    "ml1m": (
        {"max_len": 200, "dim": 64, "n_blocks": 2, "n_heads": 1, "dropout": 0.2, "positions": "learned"},
        {"epochs": 1000, "windows": "all", "eval_every": 2, "patience": 10, "batch_size": 128},
        {
            "baseline": ({}, {}),
            "rotary positions": (ROTARY, {}),
            "rotary + dropout 0.4": ({**ROTARY, "dropout": 0.4}, {}),
            "rotary + cosine lr, 50 epochs": (ROTARY, COSINE),
            "rotary + dim 128": ({**ROTARY, "dim": 128}, {}),
            "rotary + dim 128, dropout 0.4": ({**ROTARY, "dim": 128, "dropout": 0.4}, {}),
            "rotary + 4 blocks, dropout 0.4": ({**ROTARY, "n_blocks": 4, "dropout": 0.4}, {}),
            "rotary + LiGR layers (SwiGLU x4)": (LIGR, {}),
            "LiGR + 3 blocks": ({**LIGR, "n_blocks": 3}, {}),
            "LiGR + 2 heads": ({**LIGR, "n_heads": 2}, {}),
            "LiGR + dropout 0.3": ({**LIGR, "dropout": 0.3}, {}),
            "LiGR + weight decay 0.1": (LIGR, {"weight_decay": 0.1}),
            "LiGR + cosine lr, 96 epochs": (LIGR, {"lr_schedule": "cosine", "epochs": 96, "patience": 1000}),
            "LiGR + batches of 64 windows": (LIGR, {"batch_size": 64}),
            "LiGR, seed 1 (run-to-run noise)": (LIGR, {"seed": 1}),
            "LiGR + dropout 0.1": ({**LIGR, "dropout": 0.1}, {}),
            "LiGR + max_len 256": ({**LIGR, "max_len": 256}, {}),
            "LiGR + 3 blocks, dropout 0.3": ({**LIGR, "n_blocks": 3, "dropout": 0.3}, {}),
            "LiGR + dim 128": ({**LIGR, "dim": 128}, {}),
            "LiGR + dim 128, dropout 0.3": ({**LIGR, "dim": 128, "dropout": 0.3}, {}),
            "LiGR + overlapping windows (every 100 clicks, newest half trained)": (LIGR, OVERLAP),
            "LiGR, overlap, seed 1 (run-to-run noise)": (LIGR, {**OVERLAP, "seed": 1}),
        },
    ),
    "video": (
        {"max_len": 50, "dropout": 0.2, "item_encoder": "id", "positions": "learned"},
        {"patience": 10, "batch_size": 128},
        {
            "baseline": ({}, {}),
            "dropout 0.5": ({"dropout": 0.5}, {}),
            "dropout 0.5 + rotary": ({"dropout": 0.5, **ROTARY}, {}),
            "dropout 0.5 + batches of 8,192 positions": ({"dropout": 0.5}, {"batch_size": 0, "batch_positions": 8192}),
            "dropout 0.5 + batches of 4,096 positions": ({"dropout": 0.5}, {"batch_size": 0, "batch_positions": 4096}),
            "dropout 0.5 + 4,096 positions + LiGR layers (SwiGLU x4)": (
                {"dropout": 0.5, "layer": "ligr", "ffn_mult": 4},
                {"batch_size": 0, "batch_positions": 4096},
            ),
            "dropout 0.5 + 4,096 positions + every window": (
                {"dropout": 0.5},
                {"batch_size": 0, "batch_positions": 4096, "windows": "all"},
            ),
            "dropout 0.5 + 4,096 positions + overlapping windows": (
                {"dropout": 0.5},
                {"batch_size": 0, "batch_positions": 4096, "windows": "overlap"},
            ),
        },
    ),
}


def run(data: str, name: str, split, budget_s: float) -> dict:
    base_model, base_train, levers = DATA[data]
    model_kw, train_kw = levers[name]
    model = SASRecRecommender(
        SASRecConfig(**{**base_model, **model_kw}), TrainConfig(**{**base_train, **train_kw}, time_budget_s=budget_s)
    )
    began = time.perf_counter()
    model.fit(split)
    wall = time.perf_counter() - began
    test = test_figures(model, split.test)
    seconds = [h["seconds"] for h in model.history]
    return {
        "lever": name,
        "model_changes": model_kw,
        "train_changes": train_kw,
        **test,
        "best_epoch": model.best["epoch"] + 1,
        "best_valid_ndcg@10": model.best["ndcg@10"],
        "epochs_run": len(seconds),
        "epoch_s_median": sorted(seconds)[len(seconds) // 2],
        "us_per_position": sum(seconds) / max(1, sum(h["positions"] for h in model.history)) * 1e6,
        "loss_function": model.history[-1]["loss_function"] if model.history else None,
        "train_s": sum(seconds),
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", choices=tuple(DATA), default="ml1m")
    p.add_argument("--only", nargs="+", help="run these levers (default: all of --data's)")
    p.add_argument("--budget-min", type=float, help="training-time budget a lever (default: ML-1M 10, Video 6)")
    p.add_argument("--ml1m", default=str(ML1M), help="the ML-1M file; video.txt is read beside it")
    p.add_argument("--quick", action="store_true", help="500 users, 1 minute a lever")
    args = p.parse_args()
    levers = DATA[args.data][2]
    if unknown := set(args.only or ()) - set(levers):
        p.error(f"unknown levers for {args.data}: {sorted(unknown)}; choose from {list(levers)}")
    path = Path(args.ml1m) if args.data == "ml1m" else Path(args.ml1m).with_name("video.txt")
    if not path.exists():
        print(f"{path} not found: skipped")
        return
    events = load_data(path).events
    if args.quick:
        events = events[events["user_id"].isin(events["user_id"].drop_duplicates().head(500))]
    split = leave_last_out(events)
    budget = 60.0 if args.quick else (args.budget_min or (10.0 if args.data == "ml1m" else 6.0)) * 60
    name = "sasrec_levers" if args.data == "ml1m" else f"sasrec_levers_{args.data}"
    out = RESULTS / f"{name}.json"
    earlier = json.loads(out.read_text()) if out.exists() else {"levers": []}
    # a row per lever and machine (rows without a "cpu" are the file's machine's): only rows of one machine
    # are set against each other
    cpu = machine()["cpu"]
    done: dict[tuple[str, str], dict] = {}
    for r in earlier["levers"]:
        r.setdefault("cpu", earlier["machine"]["cpu"])
        done[r["lever"], r["cpu"], r["budget_s"]] = r
    order = {n: i for i, n in enumerate(levers)}

    def ordered() -> list[dict]:  # this machine's rows first, each machine's in the order of DATA
        return sorted(
            done.values(),
            key=lambda r: (r["cpu"] != cpu, r["cpu"], r["budget_s"], order.get(r["lever"], len(order))),
        )

    for lever in args.only or levers:
        print(f"lever: {lever}", flush=True)
        done[lever, cpu, budget] = {**run(args.data, lever, split, budget), "budget_s": budget, "cpu": cpu}
        write(name, {"quick": args.quick, "data": args.data, "levers": ordered()})
    rows = ordered()
    for r in rows:
        base = done.get(("baseline", r["cpu"], r["budget_s"]))
        r["hr@10_over_baseline"] = r["hr@10"] / base["hr@10"] if base else None
    cols = [
        "lever",
        "cpu",
        "budget_s",
        "hr@10",
        "ndcg@10",
        "hr@10_over_baseline",
        "best_epoch",
        "epochs_run",
        "epoch_s_median",
    ]
    print(table(rows, cols))
    print(f"wrote {write(name, {'quick': args.quick, 'data': args.data, 'levers': rows})}")


if __name__ == "__main__":
    main()
