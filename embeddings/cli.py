"""``lst-embeddings``: the command line. It only parses arguments and wires the stages together."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from embeddings.contract import ContractError
from embeddings.publish import PublishError

SPLITS = ("auto", "temporal", "leave-last-out")


def _split(args: argparse.Namespace):
    from embeddings.data import load_data
    from embeddings.split import leave_last_out, temporal_split

    events, listings = load_data(args.data)
    protocol = args.split
    if protocol == "auto":
        protocol = "temporal" if listings is not None else "leave-last-out"
    if protocol == "temporal":
        cutoff = pd.Timestamp(args.cutoff) if args.cutoff else None
        return temporal_split(events, listings, cutoff), listings
    return leave_last_out(events, listings, drop_last=args.drop_last), listings


def _sasrec_options(args: argparse.Namespace):
    from embeddings.train import TrainConfig

    model = {
        "item_encoder": args.item_encoder,
        "max_len": args.max_len,
        "dim": args.dim,
        "n_blocks": args.blocks,
        "n_heads": args.heads,
        "dropout": args.dropout,
        "ffn_mult": args.ffn_mult,
        "frozen_linear": args.frozen_linear,
    }
    train = TrainConfig(
        epochs=args.epochs if args.epochs is not None else TrainConfig.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        n_negatives=args.negatives,
        patience=args.patience,
        seed=args.seed,
        **({"bf16": False} if args.fp32 else {}),
        time_budget_s=args.time_budget,
        windows=args.windows,
    )
    return model, train


def _print_table(rows: list[dict], keys: list[str]) -> None:
    cols = ["model"] + keys
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
    return "-" if v is None else str(v)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from embeddings.synthetic import WeekConfig, write_week

    paths = write_week(WeekConfig(args.users, args.listings, args.days, args.seed), args.out)
    for name, path in paths.items():
        print(f"{name:9s} {path}  ({len(pd.read_parquet(path)):,} rows)")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from embeddings.data import load_data

    events, listings = load_data(args.data)
    print(
        f"events   {len(events):,} rows, {events['user_id'].nunique():,} users, {events['item_id'].nunique():,} items"
    )
    print(f"         {events['event_timestamp'].min()} .. {events['event_timestamp'].max()}")
    print("         " + ", ".join(f"{k}={v:,}" for k, v in events["event_type"].value_counts().items()))
    if listings is not None:
        print(
            f"listings {len(listings):,} versions of {listings['item_id'].nunique():,} listings, "
            f"{listings['city'].nunique()} cities; contract OK"
        )
    return 0


def _fit_and_evaluate(args: argparse.Namespace, split, listings, model_name: str, checkpoint_dir=None):
    from embeddings.evaluate import evaluate
    from embeddings.models.lightfm_model import LightFMConfig
    from embeddings.zoo import make_model

    sasrec, train = _sasrec_options(args)
    lightfm = LightFMConfig(factors=args.factors, epochs=args.epochs or LightFMConfig.epochs, seed=args.seed)
    store = _repo(args) if getattr(args, "features_from", "table") == "feast" else None
    model = make_model(
        model_name,
        split,
        listings,
        lightfm=lightfm,
        sasrec=sasrec,
        train=train,
        checkpoint_dir=checkpoint_dir,
        feature_store=store,
    )
    start = time.perf_counter()
    model.fit(split)
    fit_s = time.perf_counter() - start
    metrics = evaluate(model, split.test, ks=args.k, exclude_seen=not args.keep_seen, sampled=args.sampled)
    return model, {"model": model.name, "protocol": split.protocol, "fit_seconds": fit_s, **metrics}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from embeddings.evaluate import evaluate

    split, listings = _split(args)
    dropped = f", each user's last {args.drop_last} item(s) dropped first" if split.meta.get("drop_last") else ""
    print(
        f"{split.protocol} split{dropped}: {split.n_users:,} users, {split.n_items:,} items, "
        f"{len(split.test):,} test cases",
        file=sys.stderr,
    )
    rows = []
    for name in args.model:
        if name == "sasrec" and args.checkpoint:
            from embeddings.train import SASRecRecommender

            model = SASRecRecommender.load(args.checkpoint)
            if list(model.item_ids) != list(split.item_ids):
                raise SystemExit(f"{args.checkpoint}: its item vocabulary does not match the data's catalogue")
            metrics = evaluate(model, split.test, ks=args.k, exclude_seen=not args.keep_seen, sampled=args.sampled)
            rows.append({"model": model.name, "protocol": split.protocol, **metrics})
        else:
            rows.append(_fit_and_evaluate(args, split, listings, name)[1])
    keys = [k for k in rows[0] if k.startswith(("hr@", "ndcg@", "cold_hr", "warm_hr", "sampled100_"))] + ["fit_seconds"]
    _print_table(rows, keys)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    split, listings = _split(args)
    model, metrics = _fit_and_evaluate(args, split, listings, "sasrec", checkpoint_dir=args.out)
    out = Path(args.out)
    model.save(out / "model.pt", metrics={"test": metrics, "best": model.best, "history": model.history})
    (out / "metrics.json").write_text(json.dumps({"test": metrics, "best": model.best}, indent=2))
    keys = [k for k in metrics if k.startswith(("hr@", "ndcg@", "cold_hr", "warm_hr"))] + ["fit_seconds"]
    _print_table([metrics], keys)
    print(f"model     {out / 'model.pt'}")
    return 0


def _model_cutoff(model_path: str, cutoff: str | None, events: pd.DataFrame) -> pd.Timestamp:
    """--cutoff, else the end of the model's training data, else just after the last event."""
    from embeddings.train import load_checkpoint

    if cutoff:
        ts = pd.Timestamp(cutoff)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts
    trained = load_checkpoint(model_path).get("cutoff")
    if trained:
        return pd.Timestamp(trained)
    return events["event_timestamp"].max() + pd.Timedelta(microseconds=1)


def cmd_embed(args: argparse.Namespace) -> int:
    from embeddings.contract import write_parquet_atomic
    from embeddings.data import load_data
    from embeddings.embed import Embedder

    events, listings = load_data(args.data)
    cutoff = _model_cutoff(args.model, args.cutoff, events)
    embedder = Embedder.from_checkpoint(args.model, listings)
    users = embedder.embed_users(events, cutoff, batch_size=args.batch_size)
    items = embedder.embed_items(cutoff if listings is not None else None)
    out = Path(args.out)
    write_parquet_atomic(users, out / "user_embeddings.parquet")
    write_parquet_atomic(items, out / "listing_embeddings.parquet")
    r = embedder.report
    print(f"cut-off   {cutoff}  model {embedder.version} ({embedder.encoder})")
    print(
        f"users     {len(users):,} embedded, {r.users_without_history:,} without a click before the cut-off "
        f"(no row), {r.unknown_clicks_skipped:,} clicks on unknown listings skipped"
    )
    print(f"listings  {len(items):,} ({(items['source'] == 'lst-features').sum():,} from lst features only)")
    print(f"wrote     {out / 'user_embeddings.parquet'}, {out / 'listing_embeddings.parquet'}")
    return 0


def cmd_embed_users(args: argparse.Namespace) -> int:
    from embeddings.contract import load_events, load_listings, write_parquet_atomic
    from embeddings.embed import Embedder

    listings = load_listings(args.listings) if args.listings else None
    events = load_events(args.events, listings)
    embedder = Embedder.from_checkpoint(args.model, listings)
    cutoff = pd.Timestamp(args.cutoff) if args.cutoff else None
    users = embedder.embed_users(events, cutoff)
    write_parquet_atomic(users, args.out)
    r = embedder.report
    print(
        f"{len(users):,} users embedded ({r.users_without_history:,} without usable clicks); "
        f"{r.unknown_listings_encoded:,} unknown listings encoded from lst features, "
        f"{r.unknown_clicks_skipped:,} clicks skipped -> {args.out}"
    )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from embeddings.contract import read_parquet, write_parquet_atomic
    from embeddings.data import load_data
    from embeddings.preference import fit_preference

    events, listings = load_data(args.data)
    if listings is None:
        raise SystemExit("classify needs a data folder with listings (deal types)")
    users = read_parquet(args.embeddings)
    cutoff = pd.Timestamp(users["event_timestamp"].iloc[0])
    latent = read_parquet(args.labels) if args.labels else None
    result = fit_preference(
        users, events, listings, cutoff, latent=latent, min_history=args.min_history, seed=args.seed
    )
    out = Path(args.out)
    write_parquet_atomic(result.scores, out / "preference.parquet")
    (out / "preference_metrics.json").write_text(
        json.dumps({"n_labelled": result.n_labelled, "n_train": result.n_train, "rows": result.table}, indent=2)
    )
    print(f"labelled users (clicks after {cutoff}): {result.n_labelled:,}, trained on {result.n_train:,}")
    rows = [{**r, "model": f"{r['users']}: {r['model']}"} for r in result.table]
    _print_table(rows, ["n", "precision", "recall", "f1", "roc_auc", "pr_auc"])
    print(f"wrote {out / 'preference.parquet'} ({len(result.scores):,} users)")
    return 0


def cmd_pictures(args: argparse.Namespace) -> int:
    from embeddings.contract import load_listings, read_parquet
    from embeddings.pictures import item_pictures, user_pictures

    folder = Path(args.embeddings)
    listings = load_listings(Path(args.data) / "listings.parquet")
    paths = item_pictures(read_parquet(folder / "listing_embeddings.parquet"), listings, Path(args.out), args.sample)
    paths += user_pictures(
        read_parquet(folder / "user_embeddings.parquet"), read_parquet(args.scores), Path(args.out), args.sample
    )
    for path in paths:
        print(f"picture   {path}")
    return 0


def _repo(args: argparse.Namespace):
    from embeddings.publish import REPO, Repo

    return Repo(Path(args.repo) if args.repo else REPO, args.profile)


def _run_tables(args: argparse.Namespace) -> dict:
    from embeddings.contract import read_parquet

    data = Path(args.data)
    tables = {"events": read_parquet(data / "events.parquet"), "listings": read_parquet(data / "listings.parquet")}
    if getattr(args, "run", None):
        run = Path(args.run)
        tables["users"] = read_parquet(run / "embeddings" / "user_embeddings.parquet")
        tables["items"] = read_parquet(run / "embeddings" / "listing_embeddings.parquet")
        tables["scores"] = read_parquet(run / "preference" / "preference.parquet")
    return tables


def _checks(args: argparse.Namespace, tables: dict):
    from embeddings.checks import check_run

    previous = _repo(args).previous_run()
    report = check_run(
        tables["events"], tables["listings"], tables.get("users"), tables.get("items"), tables.get("scores"), previous
    )
    folder = Path(args.run) / "validation" if getattr(args, "run", None) else Path(args.data) / "validation"
    path = report.write(folder)
    against = f" against run {previous['run_id']}" if previous else " (no earlier run: no drift checks)"
    print(f"checks{against}: {report.summary()}")
    print(f"report    {path}")
    return report


def cmd_validate(args: argparse.Namespace) -> int:
    report = _checks(args, _run_tables(args))
    return 4 if report.failures else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from embeddings.contract import validate_events, validate_listings
    from embeddings.publish import publish

    if not args.listings_only and not args.run:
        raise SystemExit("publish needs --run (or --listings-only)")
    tables = _run_tables(args)
    report = _checks(args, tables)
    extra: dict = {"events_rows": len(tables["events"]), "checks": len(report.checks)}
    if report.failures:
        if report.drift_only and args.allow_drift:
            extra["drift_override"] = {
                "reason": args.allow_drift,
                "failed": [f"{c.expectation} {c.column}: {c.observed}" for c in report.failures],
            }
            print(f"drift failures overridden: {args.allow_drift}")
        else:
            hint = " (drift only: --allow-drift REASON overrides)" if report.drift_only else ""
            print(
                f"error: publish refused, {len(report.failures)} failed check(s){hint}; nothing was changed",
                file=sys.stderr,
            )
            return 4
    listings = validate_listings(tables["listings"], source=str(Path(args.data) / "listings.parquet"))
    validate_events(tables["events"], listings, source=str(Path(args.data) / "events.parquet"))
    if args.listings_only:
        manifest = publish(_repo(args), listings)
    else:
        manifest = publish(
            _repo(args), listings, tables["users"], tables["items"], tables["scores"], extra_manifest=extra
        )
    rows = ", ".join(f"{k} {v:,}" for k, v in manifest["rows"].items())
    print(f"published run {manifest['run_id']} ({args.profile}) in {manifest['seconds']:.1f} s: {rows}")
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    from embeddings.publish import online_features

    frame = online_features(_repo(args), args.user, args.service)
    for record in frame.to_dict(orient="records"):
        vector = record.get("embedding")
        if vector is not None and not args.full:
            record["embedding"] = [round(float(x), 4) for x in vector[:4]] + [f"... ({len(vector)} floats)"]
        print(json.dumps(record, default=str))
    return 0


def _add_repo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="Feast feature repo (default: feature_repo/ of this checkout)")
    p.add_argument(
        "--profile",
        choices=("local", "redis"),
        default="local",
        help="redis: feature_store.redis.yaml, connection from REDIS_HOST/PORT/PASSWORD/SSL",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with listings.parquet + events.parquet, or a user-item .txt")
    p.add_argument("--split", choices=SPLITS, default="auto", help="auto: temporal with listings, else leave-last-out")
    p.add_argument("--cutoff", help="temporal split cut-off (UTC); default: midnight before the last event")
    p.add_argument(
        "--drop-last",
        type=int,
        default=0,
        help="leave-last-out: first drop each user's last N items (1 for our ML-1M copy: bench/README.md)",
    )
    p.add_argument("--k", type=int, nargs="+", default=[10])
    p.add_argument("--keep-seen", action="store_true", help="rank items the user already saw too")
    p.add_argument("--sampled", action="store_true", help="also report the sampled 100-negative variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="training epochs (LightFM default 30, SASRec 200 with early stopping)")
    p.add_argument("--factors", type=int, default=64, help="LightFM factors")
    g = p.add_argument_group("SASRec")
    g.add_argument("--item-encoder", choices=("id", "lst-frozen", "hybrid"), default="id")
    g.add_argument(
        "--frozen-linear", action="store_true", help="lst-frozen: one shared trainable map over frozen vectors"
    )
    g.add_argument("--max-len", type=int, default=200)
    g.add_argument("--dim", type=int, default=64)
    g.add_argument("--blocks", type=int, default=2)
    g.add_argument("--heads", type=int, default=1)
    g.add_argument("--dropout", type=float, default=0.2)
    g.add_argument("--ffn-mult", type=int, default=1, help="MLP hidden width in multiples of --dim (SASRec: 1)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--loss", choices=("softmax", "sampled"), default="softmax")
    g.add_argument("--negatives", type=int, default=256, help="negatives per batch for --loss sampled")
    g.add_argument("--patience", type=int, default=10)
    g.add_argument("--time-budget", type=float, help="stop training after this many seconds")
    g.add_argument(
        "--windows",
        choices=("last", "all"),
        default="last",
        help="train on each user's last max-len clicks (SASRec) or on the whole history in windows",
    )
    g.add_argument(
        "--fp32", action="store_true", help="no bfloat16 autocast (default: on where the CPU has AVX512-BF16)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lst-embeddings", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write a synthetic week (listings, events, labels)")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--listings", type=int, default=6000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("check-data", help="load a data folder or file through the data contract")
    p.add_argument("--data", required=True)
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("evaluate", help="fit models on a split and report HR@K / NDCG@K")
    p.add_argument("--model", nargs="+", default=["lightfm"], choices=("popular", "lightfm", "lightfm+lst", "sasrec"))
    p.add_argument("--checkpoint", help="sasrec: evaluate this trained model instead of training one")
    p.add_argument("--json", help="write the metrics here as JSON (flat keys such as hr@10)")
    _add_model_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train SASRec, keep checkpoints (resumes an interrupted run), report test metrics")
    p.add_argument("--out", required=True, help="folder for last.pt, best.pt, model.pt, metrics.json")
    p.add_argument(
        "--features-from",
        choices=("table", "feast"),
        default="table",
        help="lst features from listings.parquet, or from the feature store as of the cut-off",
    )
    _add_repo_options(p)

    _add_model_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="user embeddings as of a cut-off and listing embeddings, to Parquet")
    p.add_argument("--model", required=True, help="a SASRec checkpoint (model.pt)")
    p.add_argument("--data", required=True)
    p.add_argument("--cutoff", help="only clicks before this count (default: the model's training cut-off)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="folder for user_embeddings.parquet and listing_embeddings.parquet")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("embed-users", help="embed users from raw clicks (new users too), no retraining")
    p.add_argument("--model", required=True)
    p.add_argument("--events", required=True, help="events parquet (the data contract)")
    p.add_argument("--listings", help="listings parquet: lets lst-frozen/hybrid models encode unknown listings")
    p.add_argument("--cutoff", help="only clicks before this count (default: all)")
    p.add_argument("--out", required=True, help="output parquet")
    p.set_defaults(func=cmd_embed_users)

    p = sub.add_parser("classify", help="rent/sale preference (CatBoost on embeddings) with honest evaluation")
    p.add_argument("--embeddings", required=True, help="user_embeddings.parquet from embed")
    p.add_argument("--data", required=True, help="data folder: clicks after the cut-off give the labels")
    p.add_argument("--labels", help="latent intent (labels.parquet of the synthetic week), to check against")
    p.add_argument("--min-history", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("pictures", help="t-SNE PNGs of listing and user embeddings")
    p.add_argument("--embeddings", required=True, help="folder written by embed")
    p.add_argument("--data", required=True)
    p.add_argument("--scores", required=True, help="preference.parquet from classify")
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pictures)

    p = sub.add_parser("publish", help="append a run to the offline sources, apply, materialize, record a manifest")
    p.add_argument("--run", help="run folder with embeddings/ and preference/ (as make demo writes)")
    p.add_argument("--listings-only", action="store_true", help="publish only new lst feature versions of listings")
    p.add_argument("--data", required=True, help="data folder (its listings are published as lst features)")
    p.add_argument(
        "--allow-drift",
        metavar="REASON",
        help="publish despite drift failures (never schema/data ones); the reason is recorded in the run manifest",
    )
    _add_repo_options(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("validate", help="Great Expectations checks of a run: data, vectors, scores, drift")
    p.add_argument("--run", help="run folder with embeddings/ and preference/ (omit to check only the data)")
    p.add_argument("--data", required=True)
    _add_repo_options(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("lookup", help="online features of users from the feature store")
    p.add_argument("--user", required=True, action="append", help="user id (repeat for several)")
    p.add_argument("--service", default="user_profile", help="feature service (default: user_profile)")
    p.add_argument("--full", action="store_true", help="print whole embeddings")
    _add_repo_options(p)
    p.set_defaults(func=cmd_lookup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PublishError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
