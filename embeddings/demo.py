"""``make demo``: the whole job on the built-in synthetic week, through the pipeline's stage functions."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from embeddings import pipeline as pl
from embeddings.data import load_data
from embeddings.data.synthetic import WeekConfig, write_week
from embeddings.errors import LstError
from embeddings.feature_store import REPO, Repo, online_features
from embeddings.io import write_json
from embeddings.models.sasrec import SASRecConfig
from embeddings.models.zoo import make_model
from embeddings.stages.evaluate import evaluate
from embeddings.training.config import TrainConfig

PROFILE_HORIZON = 16  # the profile head scores any of the next 16 clicks (about a user's week in the demo)


def run(out: Path, users: int, listings: int, seed: int, repo: Repo) -> None:
    began = time.perf_counter()
    layout, data_dir = pl.RunLayout(out), out / "data"

    print("== synthetic week", flush=True)
    write_week(WeekConfig(users, listings, 7, seed), data_dir)
    data = load_data(data_dir)
    print(f"   {len(data.events):,} events, {len(data.listings):,} listing versions; contract OK")

    print("== lst features of the listings into the feature store", flush=True)
    try:
        print(f"   run {pl.publish_listings(data_dir, repo)['run_id']}")
    except pl.NothingToPublish:
        print("   already there")

    print("== SASRec (hybrid item encoder, lst features read through Feast)", flush=True)
    split_cfg = pl.DataConfig(data_dir)
    trained = pl.train(
        data,
        layout,
        split_cfg,
        SASRecConfig(item_encoder="hybrid", max_len=50, profile_horizon=PROFILE_HORIZON),
        TrainConfig(epochs=30, patience=4, seed=seed),
        features_from="feast",
        feature_store=repo,
    )

    print("== SASRec against the baselines, same temporal split", flush=True)
    split = pl.split_data(data, split_cfg)
    rows = [trained.metrics]
    for name in ("popular", "lightfm"):
        model = make_model(name, split, data.listings).fit(split)
        rows.append({"model": model.name, **evaluate(model, split.test)})
    for r in rows:
        print(f"   {r['model']:18s} HR@10 {r['hr@10']:.4f}  NDCG@10 {r['ndcg@10']:.4f}")
    write_json(layout.evaluation, rows)

    print("== user and listing embeddings as of the training cut-off", flush=True)
    embedded = pl.embed(data, layout, trained.model)
    print(f"   {len(embedded.users):,} users (intent and profile vectors), {len(embedded.items):,} listings, "
          f"model {embedded.model_version}")  # fmt: skip

    print("== user vectors as features: probes against what a consuming team could build alone", flush=True)
    probed = pl.probe(data, layout)
    for line in probed.report.table().splitlines():
        print(f"   {line}")
    print(f"   the classifier and the pictures take the {probed.preferred} vector")

    print("== rent/sale preference: CatBoost fitted on labels before the cut-off, scored at it", flush=True)
    classified = pl.classify(data, layout)
    days = pl.ClassifyConfig.label_days
    print(f"   fitted on {classified.n_train:,} users labelled in the {days:g} days before the cut-off; scored at it")
    groups = {"all users labelled after the cut-off": "all users", "users never seen by the classifier": "never seen"}
    for r in classified.table:
        if r["users"] in groups:
            p, rec, auc = r["precision"], r["recall"], r["roc_auc"]
            print(f"   {groups[r['users']]:10s} {r['model']:26s} precision {p:.3f} recall {rec:.3f} ROC-AUC {auc:.4f}")

    print("== t-SNE pictures", flush=True)
    for path in pl.pictures(data, layout):
        print(f"   {path}")

    print("== checks, then publish to the local feature store (DuckDB offline, SQLite online)", flush=True)
    manifest = pl.publish(data_dir, repo, layout)
    print(f"   published run {manifest['run_id']}: {manifest['rows']}; report {layout.validation_dir / 'report.html'}")

    print("== one user's online features", flush=True)
    user = str(embedded.users["user_id"].iloc[0])
    record = online_features(repo, [user]).iloc[0].to_dict()
    for name in ("embedding", "profile_embedding"):
        record[name] = [round(float(x), 4) for x in record[name][:4]] + ["..."]
    print(f"   {record}")
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s; outputs under {out}/")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--listings", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repo", default=str(REPO))
    args = p.parse_args(argv)
    try:
        run(Path(args.out), args.users, args.listings, args.seed, Repo(Path(args.repo)))
    except LstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
