"""``make demo``: a synthetic week, then the weekly job exactly as a scheduler runs it (``run_job`` on
``examples/week.toml``), then one user's online features as a consumer reads them."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from embeddings import pipeline as pl
from embeddings.data.synthetic import WeekConfig, write_week
from embeddings.errors import LstError
from embeddings.feature_store import REPO, online_features

WEEK_TOML = Path(__file__).resolve().parents[1] / "examples" / "week.toml"


def run(out: Path, users: int, listings: int, seed: int, repo: Path, config: Path = WEEK_TOML) -> None:
    began = time.perf_counter()
    data_dir = out / "data"
    print(f"== synthetic week: {users:,} users, {listings:,} listings, ending today", flush=True)
    write_week(WeekConfig(users, listings, 7, seed), data_dir)

    job = pl.JobConfig.from_toml(config)
    job = replace(
        job,
        out=out,
        data=replace(job.data, path=data_dir),
        feature_store=replace(job.feature_store, repo=repo),
    )
    print(f"== the weekly job: {config.name} on it (lst-embeddings run --config), run folder {out}", flush=True)
    result = pl.run_job(job, log=lambda line: print(line, flush=True))

    print("== one user's online features, as a consumer reads them", flush=True)
    first = pl.RunTables.read(result.layout).users["user_id"].iloc[0]
    record = online_features(job.feature_store.open(), [str(first)]).iloc[0].to_dict()
    for name in ("embedding", "profile_embedding"):
        if record.get(name) is not None:
            record[name] = [round(float(x), 4) for x in record[name][:4]] + ["..."]
    print(f"   {record}")
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s; outputs under {out}/, published into {repo}/data/")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--listings", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repo", default=str(REPO))
    p.add_argument("--config", default=str(WEEK_TOML), help="the job's settings (its data and run paths are replaced)")
    args = p.parse_args(argv)
    try:
        run(
            Path(args.out).resolve(), args.users, args.listings, args.seed, Path(args.repo).resolve(), Path(args.config)
        )
    except LstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
