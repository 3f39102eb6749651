"""User vectors as features: the probe table (``embeddings/stages/probe.py``) on the synthetic week, Video and ML-1M.

    python -m bench.probes [--quick] [--only week video ml1m] [--video PATH] [--ml1m PATH]

For each data set one SASRec with a profile head is trained on what lies before the cut-off (the week:
the temporal split's cut-off, labels from the last day; the ``user item`` files: each user's last 20 % of
items is the future, the model never sees it). Its intent and profile vectors, the mean of the user's item
vectors, and the baselines a consuming team could build (bag of items, history aggregates, popularity for
retrieval) go through the same probes. Writes bench/results/probes.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import ML1M, RESULTS, write
from embeddings.data import load_data
from embeddings.data.split import leave_last_out, temporal_split
from embeddings.data.synthetic import WeekConfig, generate_week
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.stages.embed import Embedder
from embeddings.stages.probe import ProbeConfig, run_probes, sequence_probe_data, week_probe_data
from embeddings.training.loop import TrainConfig

VIDEO = ML1M.with_name("video.txt")
HORIZON = 16


def week(quick: bool) -> dict:
    cfg = WeekConfig(users=1500, listings=2000) if quick else WeekConfig()
    listings, events, _ = generate_week(cfg)
    split = temporal_split(events, listings)
    model = SASRecConfig(item_encoder="hybrid", max_len=50, profile_horizon=HORIZON)
    began = time.perf_counter()
    rec = make_model("sasrec", split, listings, sasrec=model, train=TrainConfig(epochs=30, patience=4)).fit(split)
    fit_s = time.perf_counter() - began
    data = week_probe_data(events, listings, split.cutoff)
    embedder = Embedder(rec, listings)
    intent, profile = Embedder.split_heads(embedder.embed_users(events, split.cutoff, progress=False))
    items = data.align_items(embedder.embed_items(split.cutoff))
    vectors = {"intent": data.align(intent), "profile": data.align(profile)}
    report = run_probes(data, vectors, items, ProbeConfig())
    return {"data": f"synthetic week ({cfg.users} users, {cfg.listings} listings)", "fit_s": fit_s, "report": report}


def sequences(name: str, path: Path, max_len: int, budget_s: float) -> dict:
    data, history_events = sequence_probe_data(load_data(path).events)
    split = leave_last_out(history_events)  # the model sees histories only; its last two items validate / test
    model = SASRecConfig(max_len=max_len, profile_horizon=HORIZON)
    train = TrainConfig(epochs=200, patience=5, time_budget_s=budget_s, windows="all")
    began = time.perf_counter()
    rec = make_model("sasrec", split, None, sasrec=model, train=train).fit(split)
    fit_s = time.perf_counter() - began
    rows = pd.Index(split.item_ids).get_indexer(data.item_ids)  # probe catalogue -> model catalogue
    states = rec.user_states([rows[h] for h in data.histories])
    table = rec.item_table()[1:].numpy().astype(np.float64)
    items = np.full((len(data.item_ids), table.shape[1]), np.nan)
    items[rows >= 0] = table[rows[rows >= 0]]
    vectors = {k: v.numpy().astype(np.float64) for k, v in states.items()}
    report = run_probes(data, vectors, items, ProbeConfig())
    return {"data": name, "fit_s": fit_s, "epochs": len(rec.history), "report": report}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="a small week only")
    p.add_argument("--only", nargs="+", choices=("week", "video", "ml1m"))
    p.add_argument("--video", default=str(VIDEO))
    p.add_argument("--ml1m", default=str(ML1M))
    args = p.parse_args()
    chosen = args.only or (["week"] if args.quick else ["week", "video", "ml1m"])
    results = []
    for name in chosen:
        if name == "week":
            result = week(args.quick)
        elif name == "video" and Path(args.video).exists():
            result = sequences("Amazon Video Games (last 20 % of each user)", Path(args.video), 50, 300)
        elif name == "ml1m" and Path(args.ml1m).exists():
            result = sequences("ML-1M (last 20 % of each user)", Path(args.ml1m), 200, 600)
        else:
            print(f"skipped {name}: data file not found")
            continue
        report = result.pop("report")
        recall = next(r for r in report.rows if r["metric"] == "recall@10")
        result |= {
            **report.to_dict(),
            "profile_over_intent_recall@10": recall["profile"] / max(recall["intent"], 1e-12),
            "preferred": report.preferred(),
        }
        results.append(result)
        print(f"\n## {result['data']} (fit {result['fit_s']:.0f} s)\n\n{report.table()}", flush=True)
        print(f"profile / intent recall@10: {result['profile_over_intent_recall@10']:.2f}x", flush=True)
    if args.only and not args.quick and (RESULTS / "probes.json").exists():  # keep the data sets not rerun
        earlier = json.loads((RESULTS / "probes.json").read_text())["results"]
        fresh = {r["data"] for r in results}
        results = [r for r in earlier if r["data"] not in fresh] + results
        order = ("synthetic", "Amazon", "ML-1M")
        results.sort(key=lambda r: next((i for i, o in enumerate(order) if r["data"].startswith(o)), len(order)))
    print(f"\nwrote {write('probes', {'results': results, 'quick': args.quick, 'horizon': HORIZON})}")


if __name__ == "__main__":
    main()
