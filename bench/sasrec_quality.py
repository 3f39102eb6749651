"""SASRec quality and speed: ML-1M against the published figures, synthetic week against LightFM.

    python -m bench.sasrec_quality [--quick] [--ml1m PATH] [--budget-min 30] [--skip-ml1m] [--skip-week]

ML-1M: the SASRec papers' file, leave-last-out as published, full ranking, seen items excluded,
dim 64, 2 blocks, the `--preset ml1m` settings (max_len 200, every 200-item window of each history,
rotary positions), at most 30 minutes of training by default. The test HR@10 is
checked after each of the first 8 epochs, then every 4 (evaluation time is not counted as training
time), to find the training time until HR@10 reaches 0.30 and the curve RecTools is set against;
the reported quality is the model with the best validation NDCG@10. Seconds per epoch are set
against a compute lower bound: the epoch's FLOPs over the best bfloat16 matmul rate this machine
reaches on the epoch's own product shapes.

Synthetic week: temporal split, LightFM against SASRec with each item encoder, cold-start
targets (listings published after the cut-off) reported apart.

Writes bench/results/sasrec_week.json and sasrec_ml1m.json and prints the tables.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import ML1M, loss_matmul_rate, table, test_figures, training_flops, write
from embeddings.data import load_data
from embeddings.data.split import leave_last_out, temporal_split
from embeddings.data.synthetic import WeekConfig, generate_week
from embeddings.models.lightfm_model import LightFMConfig
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.stages.evaluate import evaluate
from embeddings.training.config import PRESETS, TrainConfig
from embeddings.training.loop import training_windows

# the `--preset ml1m` settings: every click of each history in overlapping windows, not only the last 200 (35 %
# of ML-1M's clicks are never a target otherwise), rotary positions, ... (bench/sasrec_levers.py measured each)
PRESET_MODEL, PRESET_TRAIN = PRESETS["ml1m"]
WINDOWS = PRESET_TRAIN["windows"]
PUBLISHED = {"SASRec, full CE (paper)": (0.3152, 0.1821), "RecTools SASRec": (0.3058, 0.1779)}


def window_lengths(split, windows: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of each training window, as ``train.training_windows`` cuts them (max_len 200), and the targets
    it trains (fewer than its positions where the first ones are context only: ``windows="overlap"``)."""
    cut, lead = training_windows(split.train, 200, windows)
    return cut.lengths - 1, cut.lengths - 1 - lead


def epoch_flops(lengths: np.ndarray, targets: np.ndarray, n_items: int, cfg: SASRecConfig) -> float:
    """Forward + backward FLOPs of one epoch: transformer on the windows' tokens, full softmax on the targets."""
    flops = training_flops(cfg, float(lengths.sum()), float(lengths.mean()), n_items, float(targets.sum()))
    return sum(flops.values())


def ml1m(path: str, quick: bool, budget_min: float) -> dict:
    events = load_data(path).events
    if quick:
        keep = events["user_id"].drop_duplicates().head(1000)
        events = events[events["user_id"].isin(keep)]
    split = leave_last_out(events)
    cfg = SASRecConfig(**{"dim": 64, "n_blocks": 2, "n_heads": 1, **PRESET_MODEL})
    settings = {"epochs": 300, "patience": 10, **PRESET_TRAIN, "eval_every": 2, "time_budget_s": budget_min * 60}
    train = TrainConfig(**{**settings, "epochs": 4} if quick else settings)
    curve, clock = [], {"train_s": 0.0, "reached_0.30_s": None}
    model = make_model("sasrec", split, None, sasrec=cfg, train=train)

    def on_epoch_end(epoch: int, stats: dict) -> None:
        clock["train_s"] += stats["seconds"]
        if epoch >= 8 and (epoch + 1) % 4 and not quick:
            return
        m = evaluate(model, split.test)
        curve.append(
            {"epoch": epoch + 1, "train_s": clock["train_s"], "test_hr@10": m["hr@10"], "test_ndcg@10": m["ndcg@10"]}
        )
        print(
            f"  epoch {epoch + 1:3d}  train {clock['train_s']:6.0f} s  "
            f"test HR@10 {m['hr@10']:.4f}  NDCG@10 {m['ndcg@10']:.4f}",
            flush=True,
        )
        if clock["reached_0.30_s"] is None and m["hr@10"] >= 0.30:
            clock["reached_0.30_s"] = clock["train_s"]

    model.on_epoch_end = on_epoch_end
    began = time.perf_counter()
    model.fit(split)
    wall = time.perf_counter() - began
    final = test_figures(model, split.test)
    epoch_s = statistics.median(h["seconds"] for h in model.history)
    lengths, targets = window_lengths(split, WINDOWS)
    flops = epoch_flops(lengths, targets, split.n_items, model.model.cfg)
    rate = loss_matmul_rate(split.n_items, model.model.cfg.dim)  # the best rate of the epoch's biggest products
    return {
        "windows": WINDOWS,
        "model_config": {k: v for k, v in vars(model.model.cfg).items() if k not in ("n_items", "n_features")},
        "train_config": {k: getattr(train, k) for k in ("lr", "lr_schedule", "batch_size", "epochs", "windows")},
        "positions_per_epoch": int(lengths.sum()),
        "targets_per_epoch": int(targets.sum()),
        "positions_per_epoch_last_window": int(window_lengths(split, "last")[0].sum()),  # what RecTools trains on
        "users": split.n_users,
        "items": split.n_items,
        **final,
        "best_epoch": model.best["epoch"] + 1,
        "epochs_run": len(model.history),
        "epoch_s_median": epoch_s,
        "epoch_flops": flops,
        "bf16_matmul_flops_per_s": rate,
        "epoch_s_lower_bound": flops / rate,
        "ratio_to_lower_bound": epoch_s / (flops / rate),
        "train_s_to_hr@10_0.30": clock["reached_0.30_s"],
        "wall_s_including_evaluation": wall,
        "curve": curve,
    }


def week(quick: bool) -> list[dict]:
    cfg = WeekConfig(users=1500, listings=2000) if quick else WeekConfig()
    listings, events, _ = generate_week(cfg)
    split = temporal_split(events, listings)
    rows = []
    lf = make_model("lightfm", split, listings, lightfm=LightFMConfig()).fit(split)
    rows.append({"model": lf.name, "fit_s": lf.fit_seconds, **evaluate(lf, split.test)})
    train = TrainConfig(epochs=5 if quick else 60, patience=5)
    for encoder, extra in (("id", {}), ("lst-frozen", {}), ("lst-frozen", {"frozen_linear": True}), ("hybrid", {})):
        start = time.perf_counter()
        cfg = SASRecConfig(item_encoder=encoder, max_len=50, **extra)
        m = make_model("sasrec", split, listings, sasrec=cfg, train=train)
        m.fit(split)
        name = m.name + ("+linear" if extra else "")
        rows.append({"model": name, "fit_s": time.perf_counter() - start, **evaluate(m, split.test)})
        print(table(rows[-1:], ["model", "hr@10", "ndcg@10", "cold_hr@10", "warm_hr@10"]).splitlines()[-1], flush=True)
    base = rows[0]["hr@10"]
    for r in rows:
        r["hr@10_over_lightfm"] = r["hr@10"] / base if base else None
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ml1m", default=str(ML1M))
    p.add_argument("--budget-min", type=float, default=30.0, help="training time budget, ML-1M headline run")
    p.add_argument("--skip-ml1m", action="store_true")
    p.add_argument("--skip-week", action="store_true")
    args = p.parse_args()
    out: dict = {"quick": args.quick}
    if not args.skip_week:
        print("synthetic week, temporal split")
        out["week"] = week(args.quick)
        print(
            table(out["week"], ["model", "hr@10", "ndcg@10", "cold_hr@10", "warm_hr@10", "hr@10_over_lightfm", "fit_s"])
        )
    if not args.skip_ml1m and not Path(args.ml1m).exists():
        print(f"\nML-1M skipped: {args.ml1m} not found (--ml1m PATH or ML1M=PATH)")
    elif not args.skip_ml1m:
        print("\nML-1M (the papers' file), leave-last-out, full ranking")
        r = out["ml1m"] = ml1m(args.ml1m, args.quick, args.budget_min)
        print(table([{"model": "ours (SASRec, id)", **r}], ["model", "hr@10", "ndcg@10", "epoch_s_median"]))
        print(
            f"epoch lower bound {r['epoch_s_lower_bound']:.1f} s (ratio {r['ratio_to_lower_bound']:.1f}x); "
            f"HR@10 0.30 after {r['train_s_to_hr@10_0.30']} s of training"
        )
        published = [{"model": k, "hr@10": v[0], "ndcg@10": v[1]} for k, v in PUBLISHED.items()]
        print(table(published, ["model", "hr@10", "ndcg@10"]))
    if "week" in out:
        print(f"wrote {write('sasrec_week', {'quick': args.quick, 'week': out['week']})}")
    if "ml1m" in out:
        print(f"wrote {write('sasrec_ml1m', {'quick': args.quick, 'ml1m': out['ml1m']})}")


if __name__ == "__main__":
    main()
