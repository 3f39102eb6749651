"""``make demo``: the whole job on the built-in synthetic week, through the CLI's own commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from embeddings.cli import main as cli


def run(out: Path, users: int, listings: int, seed: int) -> int:
    data, model_dir = out / "data", out / "sasrec"
    steps = [
        (
            "synthetic week",
            [
                "demo-data",
                "--users",
                str(users),
                "--listings",
                str(listings),
                "--days",
                "7",
                "--seed",
                str(seed),
                "--out",
                str(data),
            ],
        ),
        ("data contract", ["check-data", "--data", str(data)]),
        (
            "SASRec (hybrid item encoder)",
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(model_dir),
                "--item-encoder",
                "hybrid",
                "--max-len",
                "50",
                "--epochs",
                "30",
                "--patience",
                "4",
                "--seed",
                str(seed),
            ],
        ),
        (
            "SASRec against the baselines, same temporal split",
            [
                "evaluate",
                "--data",
                str(data),
                "--model",
                "popular",
                "lightfm",
                "sasrec",
                "--checkpoint",
                str(model_dir / "model.pt"),
                "--json",
                str(out / "evaluation.json"),
            ],
        ),
    ]
    began = time.perf_counter()
    for title, argv in steps:
        print(f"\n== {title}\n$ lst-embeddings {' '.join(argv)}", flush=True)
        rc = cli(argv)
        if rc:
            return rc
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s; outputs under {out}/")
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
