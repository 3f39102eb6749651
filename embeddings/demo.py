"""``make demo``: the whole job on the built-in synthetic week, through the CLI's own commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from embeddings.cli import main as cli


def steps(out: Path, users: int, listings: int, seed: int) -> list[tuple[str, list[str]]]:
    data, model, emb, pref = out / "data", out / "sasrec", out / "embeddings", out / "preference"
    week = f"demo-data --users {users} --listings {listings} --days 7 --seed {seed} --out {data}"
    train = (
        f"train --data {data} --out {model} --item-encoder hybrid --features-from feast "
        f"--max-len 50 --epochs 30 --patience 4 --seed {seed}"
    )
    compare = (
        f"evaluate --data {data} --model popular lightfm sasrec --checkpoint {model}/model.pt "
        f"--json {out}/evaluation.json"
    )
    classify = (
        f"classify --embeddings {emb}/user_embeddings.parquet --data {data} --labels {data}/labels.parquet --out {pref}"
    )
    pictures = f"pictures --embeddings {emb} --data {data} --scores {pref}/preference.parquet --out {out}/pictures"
    return [
        ("synthetic week", week.split()),
        ("data contract", f"check-data --data {data}".split()),
        ("lst features of the listings into the feature store", f"publish --listings-only --data {data}".split()),
        ("SASRec (hybrid item encoder, lst features read through Feast)", train.split()),
        ("SASRec against the baselines, same temporal split", compare.split()),
        (
            "user and listing embeddings as of the training cut-off",
            f"embed --model {model}/model.pt --data {data} --out {emb}".split(),
        ),
        ("rent/sale preference: CatBoost on embeddings against the baselines", classify.split()),
        ("t-SNE pictures", pictures.split()),
        (
            "publish to the local feature store (DuckDB offline, SQLite online)",
            f"publish --run {out} --data {data}".split(),
        ),
        ("one user's online features", ["lookup", "--user", "U000000"]),
    ]


def run(out: Path, users: int, listings: int, seed: int) -> int:
    began = time.perf_counter()
    for title, argv in steps(out, users, listings, seed):
        print(f"\n== {title}\n$ lst-embeddings {' '.join(argv)}", flush=True)
        rc = cli(argv)
        if rc:
            return rc
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s; outputs under {out}/")
    for path in sorted((out / "pictures").glob("*.png")):
        print(f"  picture: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--listings", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run(Path(args.out), args.users, args.listings, args.seed)


if __name__ == "__main__":
    sys.exit(main())
