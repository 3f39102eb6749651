"""LightFM (WARP) on the synthetic week (temporal split) and on ML-1M (leave-last-out).

ML-1M is the SASRec papers' file, leave-last-out as published.

    python -m bench.lightfm_baseline [--quick] [--ml1m PATH]

Prints HR@10, NDCG@10 and fit seconds; writes bench/results/lightfm_baseline.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import ML1M, table, write
from embeddings.data import load_data
from embeddings.data.split import leave_last_out, temporal_split
from embeddings.data.synthetic import WeekConfig, generate_week
from embeddings.models.lightfm_model import LightFMConfig
from embeddings.models.zoo import make_model
from embeddings.stages.evaluate import evaluate


def run(name, split, listings, models, epochs) -> list[dict]:
    rows = []
    for model_name in models:
        model = make_model(model_name, split, listings, lightfm=LightFMConfig(epochs=epochs))
        model.fit(split)
        m = evaluate(model, split.test)
        rows.append({"data": name, "model": model.name, "fit_s": getattr(model, "fit_seconds", 0.0), **m})
        print(table(rows[-1:], ["data", "model", "hr@10", "ndcg@10", "fit_s"]).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small week, ML-1M skipped")
    p.add_argument("--ml1m", default=str(ML1M))
    args = p.parse_args()
    week = WeekConfig(users=1500, listings=2000) if args.quick else WeekConfig()
    listings, events, _ = generate_week(week)
    rows = run(
        f"synthetic week ({week.users} users)",
        temporal_split(events, listings),
        listings,
        ["popular", "lightfm", "lightfm+lst"],
        epochs=30,
    )
    if not args.quick and Path(args.ml1m).exists():
        ev = load_data(args.ml1m).events
        rows += run("ML-1M", leave_last_out(ev), None, ["popular", "lightfm"], epochs=30)
    print()
    print(table(rows, ["data", "model", "hr@10", "ndcg@10", "cold_hr@10", "fit_s"]))
    print(f"\nwrote {write('lightfm_baseline', {'rows': rows, 'quick': args.quick})}")


if __name__ == "__main__":
    main()
