"""SASRec (each item encoder) over LightFM on synthetic weeks of different sizes, same split code.

    python -m bench.world_grid [--worlds 3000x1500 10000x5000 ...] [--seed 7] [--epochs 30] [--quick]

Each world is ``generate_week(WeekConfig(users, listings, seed))``, temporal split at midnight before the
last day (cold listings reported apart), LightFM (``LightFMConfig()``) against SASRec with the ``id``,
``lst-frozen`` and ``hybrid`` encoders (``train`` defaults, at most ``--epochs`` epochs with early stopping).
The ratio is SASRec's HR@10 over LightFM's. Worlds are measured one at a time and merge into
bench/results/world_grid.json by name. Also reported per world: clicks per listing in training and the share
of test targets that are cold (listings first seen after the cut-off): what an id model cannot rank.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.common import RESULTS, table, write
from embeddings.data.split import temporal_split
from embeddings.data.synthetic import WeekConfig, generate_week
from embeddings.models.lightfm_model import LightFMConfig
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.stages.evaluate import evaluate
from embeddings.training.loop import TrainConfig

# the corners of 3,000-100,000 users x 1,500-50,000 listings, and between them: few users on a large catalogue,
# many on a small one
WORLDS = (
    "3000x1500", "3000x15000", "3000x50000", "10000x5000", "30000x1500", "30000x15000", "100000x1500", "100000x50000",
)  # fmt: skip
ENCODERS = ("id", "lst-frozen", "hybrid")


def world(users: int, listings: int, seed: int, epochs: int) -> dict:
    began = time.perf_counter()
    items, events, _ = generate_week(WeekConfig(users=users, listings=listings, seed=seed))
    split = temporal_split(events, items)
    train_clicks = split.train.lengths.sum()
    row: dict = {
        "world": f"{users}x{listings}",
        "users": users,
        "listings": listings,
        "events": len(events),
        "train_clicks_per_listing": float(train_clicks / max(1, split.seen_in_train().sum())),
        "test_cold_share": float(np.mean(split.test.cold)),
    }
    lf = make_model("lightfm", split, items, lightfm=LightFMConfig()).fit(split)
    row["lightfm_hr@10"] = evaluate(lf, split.test)["hr@10"]
    for encoder in ENCODERS:
        model = make_model("sasrec", split, items, sasrec=SASRecConfig(item_encoder=encoder), train=TrainConfig(
            epochs=epochs, patience=3))  # fmt: skip
        model.fit(split)
        m = evaluate(model, split.test)
        row[f"{encoder}_hr@10"] = m["hr@10"]
        row[f"{encoder}_warm_hr@10"] = m.get("warm_hr@10")
        row[f"{encoder}_over_lightfm"] = m["hr@10"] / max(row["lightfm_hr@10"], 1e-12)
    row["seconds"] = time.perf_counter() - began
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--worlds", nargs="+", default=list(WORLDS), help="USERSxLISTINGS")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="one small world, 3 epochs")
    args = p.parse_args()
    worlds = ["3000x1500"] if args.quick else args.worlds
    path = RESULTS / "world_grid.json"
    done = {r["world"]: r for r in json.loads(path.read_text())["worlds"]} if path.exists() else {}
    for name in worlds:
        users, listings = (int(x) for x in name.split("x"))
        print(f"world {name}", flush=True)
        done[name] = world(users, listings, args.seed, 3 if args.quick else args.epochs)
        write("world_grid", {"seed": args.seed, "worlds": list(done.values())})
    rows = sorted(done.values(), key=lambda r: (r["users"], r["listings"]))
    cols = ["world", "train_clicks_per_listing", "test_cold_share", "lightfm_hr@10"]
    cols += [f"{e}_over_lightfm" for e in ENCODERS]
    print(table(rows, cols))
    print(f"wrote {write('world_grid', {'seed': args.seed, 'worlds': rows})}")


if __name__ == "__main__":
    main()
