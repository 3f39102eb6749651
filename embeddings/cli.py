"""``lst-embeddings``: the command line. It parses arguments and calls ``embeddings.pipeline``; nothing else."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from embeddings import pipeline as pl
from embeddings.data import load_data
from embeddings.data.contract import read_parquet
from embeddings.errors import ChecksFailed, InputError, LstError
from embeddings.feature_store import REPO, TARGETS, Repo
from embeddings.io import utc, write_json
from embeddings.models.sasrec import ITEM_ENCODERS, LAYERS, POSITIONS, SASRecConfig
from embeddings.space import KINDS
from embeddings.training.config import LOSSES, LR_SCHEDULES, PRESETS, WINDOWS, TrainConfig

# flags whose names differ from their dataclass field, and fields that are not command-line options
FLAGS = {"n_blocks": "--blocks", "n_heads": "--heads", "n_negatives": "--negatives", "time_budget_s": "--time-budget"}
CHOICES = {"item_encoder": (*ITEM_ENCODERS, "auto"), "loss": LOSSES, "windows": WINDOWS, "positions": POSITIONS,
           "lr_schedule": LR_SCHEDULES, "layer": LAYERS}  # fmt: skip
NOT_OPTIONS = {"n_items", "n_features", "eval_every", "bf16", "seed", "epochs"}


def _field_docs(cls) -> dict[str, str]:
    """The ``# comment`` after each field of a dataclass: the one place its meaning is written."""
    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2).replace("%", "%%")  # argparse formats help text with %
    return docs


def _add_dataclass_options(group, cls, preset: dict) -> None:
    """One option per field of ``cls``, its default (the preset's, else the dataclass's) and help from the class."""
    docs = _field_docs(cls)
    for f in fields(cls):
        if f.name in NOT_OPTIONS:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        default = preset.get(f.name, default)
        flag = FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        help_ = docs.get(f.name, "") + (f" (default: {default})" if default is not None else "")
        if isinstance(default, bool):
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=docs.get(f.name)
            )
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            group.add_argument(flag, dest=f.name, type=kind, default=default, choices=CHOICES.get(f.name), help=help_)


def _from_args(cls, args: argparse.Namespace, **extra):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names and k not in NOT_OPTIONS}, **extra)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    epochs = args.epochs or TrainConfig.epochs
    return _from_args(TrainConfig, args, epochs=epochs, seed=args.seed, bf16=False if args.fp32 else None)


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


def _metric_keys(row: dict, prefixes=("hr@", "ndcg@", "cold_hr", "warm_hr")) -> list[str]:
    return [k for k in row if k.startswith(prefixes)] + ["fit_seconds"]


def _repo(args: argparse.Namespace) -> Repo:
    return Repo(Path(args.repo) if args.repo else REPO, args.target)


def _data_config(args: argparse.Namespace) -> pl.DataConfig:
    return pl.DataConfig(Path(args.data), args.split, args.cutoff, args.drop_last)


# ------------------------------------------------------------------------------------------------ commands
def cmd_demo_data(args: argparse.Namespace) -> int:
    from embeddings.data.synthetic import WeekConfig, write_week, write_weeks

    cfg = WeekConfig(args.users, args.listings, args.days, args.seed, weeks=args.weeks)
    if args.weeks > 1:
        if args.partition_by_day:
            raise InputError("demo-data: --partition-by-day writes one week; drop it with --weeks")
        for folder in write_weeks(cfg, args.out):
            print(f"week      {folder}")
        return 0
    paths = write_week(cfg, args.out, args.partition_by_day, workers=args.workers)
    for name, path in paths.items():
        print(f"{name:9s} {path}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    data = load_data(args.data)
    ev = data.events
    print(f"events   {len(ev):,} rows, {ev['user_id'].nunique():,} users, {ev['item_id'].nunique():,} items")
    print(f"         {ev['event_timestamp'].min()} .. {ev['event_timestamp'].max()}")
    print("         " + ", ".join(f"{k}={v:,}" for k, v in ev["event_type"].value_counts().items()))
    if data.has_listings:
        li = data.listings
        print(f"listings {len(li):,} versions of {li['item_id'].nunique():,} listings, {li['city'].nunique()} cities")
    print("contract OK")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from embeddings.models.lightfm_model import LightFMConfig
    from embeddings.models.sasrec import SASRecRecommender
    from embeddings.models.zoo import make_model
    from embeddings.stages.evaluate import evaluate

    data = load_data(args.data)
    split = pl.split_data(data, _data_config(args))
    dropped = f", each user's last {args.drop_last} item(s) dropped first" if args.drop_last else ""
    print(
        f"{split.protocol} split{dropped}: {split.n_users:,} users, {split.n_items:,} items, "
        f"{len(split.test):,} test cases",
        file=sys.stderr,
    )
    rows = []
    for name in args.model:
        if name == "sasrec" and args.checkpoint:
            model = SASRecRecommender.load(args.checkpoint)
            if list(model.item_ids) != list(split.item_ids):
                raise InputError(f"{args.checkpoint}: its item vocabulary does not match the data's catalogue")
            fit_s = None
        else:
            lightfm = LightFMConfig(factors=args.factors, epochs=args.epochs or LightFMConfig.epochs, seed=args.seed)
            model = make_model(
                name,
                split,
                data.listings,
                lightfm=lightfm,
                sasrec=_from_args(SASRecConfig, args),
                train=_train_config(args),
            )
            began = time.perf_counter()
            model.fit(split)
            fit_s = time.perf_counter() - began
        metrics = evaluate(model, split.test, ks=args.k, exclude_seen=not args.keep_seen, sampled=args.sampled)
        rows.append({"model": model.name, "protocol": split.protocol, "fit_seconds": fit_s, **metrics})
    _print_table(rows, _metric_keys(rows[0], ("hr@", "ndcg@", "cold_hr", "warm_hr", "sampled100_")))
    if args.json:
        from embeddings.io import write_json

        write_json(args.json, rows[0] if len(rows) == 1 else rows)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from embeddings.training import distributed

    if args.workers > 1 and not distributed.launched():
        return distributed.launch(args.workers, _without_workers(sys.argv[1:]))
    layout = _ModelFolder(Path(args.out))
    result = pl.train(
        load_data(args.data),
        layout,
        _data_config(args),
        _from_args(SASRecConfig, args),
        _train_config(args),
        features_from=args.features_from,
        feature_store=_repo(args) if args.features_from == "feast" or args.compat_weight > 0 else None,
        init_from=Path(args.init_from) if args.init_from else None,
    )
    if not distributed.is_main():
        return 0
    _print_table([result.metrics], _metric_keys(result.metrics))
    print(f"model     {result.path}")
    return 0


def _without_workers(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


class _ModelFolder(pl.RunLayout):
    """``train --out DIR``: the model folder is DIR itself."""

    model_dir = property(lambda self: self.root)


def cmd_embed(args: argparse.Namespace) -> int:
    layout = _EmbeddingsFolder(Path(args.out))
    cfg = pl.EmbedConfig(args.cutoff, args.batch_size, args.engine, args.spark_master)
    result = pl.embed(load_data(args.data), layout, Path(args.model), cfg)
    r = result.report
    print(f"cut-off   {result.cutoff}  model {result.model_version} ({result.encoder})")
    print(
        f"users     {len(result.users):,} embedded, {r.users_without_history:,} without a click before the cut-off "
        f"(no row), {r.unknown_clicks_skipped:,} clicks on unknown listings skipped"
    )
    print(f"listings  {len(result.items):,} ({(result.items['source'] == 'lst-features').sum():,} from lst features)")
    profiles = f", {layout.user_profiles}" if result.profiles is not None else ""
    print(f"wrote     {layout.user_embeddings}{profiles}, {layout.listing_embeddings}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    data = load_data(args.data)
    settings = pl.ProbeSettings(args.horizon_days, args.folds, args.max_users, args.seed)
    if args.run:
        result = pl.probe(data, pl.RunLayout(Path(args.run)), settings)
        report, note = result.report, f"preferred user vector: {result.preferred}"
        out = pl.RunLayout(Path(args.run)).probe_report
    else:
        if not args.embeddings:
            raise InputError("probe needs --run or --embeddings")
        tables = {Path(p).stem: read_parquet(p) for p in args.embeddings}
        items = read_parquet(args.listing_embeddings) if args.listing_embeddings else None
        report = pl.probe_tables(data, tables, items, utc(args.cutoff) if args.cutoff else None, settings)
        note, out = "", Path(args.out) if args.out else None
        if out:
            write_json(out, report.to_dict())
    print(report.table())
    if note:
        print(note)
    if out:
        print(f"wrote {out}")
    return 0


class _EmbeddingsFolder(pl.RunLayout):
    """``embed --out DIR``: the embeddings folder is DIR itself."""

    embeddings_dir = property(lambda self: self.root)


def cmd_embed_users(args: argparse.Namespace) -> int:
    from embeddings.data.contract import load_events, load_listings
    from embeddings.io import write_parquet
    from embeddings.stages.embed import Embedder

    listings = load_listings(args.listings) if args.listings else None
    embedder = Embedder.from_checkpoint(args.model, listings)
    users = embedder.embed_users(load_events(args.events, listings), args.cutoff)
    write_parquet(users, args.out)
    r = embedder.report
    print(
        f"{len(users):,} users embedded ({r.users_without_history:,} without usable clicks); "
        f"{r.unknown_listings_encoded:,} unknown listings encoded from lst features, "
        f"{r.unknown_clicks_skipped:,} clicks skipped -> {args.out}"
    )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    layout = pl.RunLayout(Path(args.run))
    if not args.data:
        raise InputError("classify needs --data (the clicks: to fit a classifier, and for its history features)")
    data = load_data(args.data)
    if args.model:
        scores = pl.score(Path(args.model), read_parquet(layout.preferred_users()), data, layout.scores)
        print(f"scored {len(scores):,} users with {scores['classifier_version'].iloc[0]} -> {layout.scores}")
        return 0
    labels = read_parquet(args.labels) if args.labels else None
    result = pl.classify(data, layout, pl.ClassifyConfig(args.min_history, args.seed, args.label_days), labels)
    print(f"fitted on {result.n_train:,} users labelled in the {args.label_days:g} days before the cut-off")
    rows = [{**r, "model": f"{r['users']}: {r['model']}"} for r in result.table]
    _print_table(rows, ["n", "precision", "recall", "f1", "roc_auc", "pr_auc"])
    print(f"wrote {layout.scores} ({len(result.scores):,} users), classifier {result.classifier}")
    return 0


def cmd_pictures(args: argparse.Namespace) -> int:
    layout = pl.RunLayout(Path(args.run))
    for path in pl.pictures(load_data(args.data), layout, pl.PicturesConfig(args.sample)):
        print(f"picture   {path}")
    return 0


def _print_report(report) -> None:
    against = (
        f" against run {report.previous_run_id}" if report.previous_run_id else " (no earlier run: no drift checks)"
    )
    print(f"checks{against}: {report.summary()}")


def cmd_validate(args: argparse.Namespace) -> int:
    repo = _repo(args)
    run = pl.RunTables.read(pl.RunLayout(Path(args.run))) if args.run else None
    folder = Path(args.report) if args.report else (pl.RunLayout(Path(args.run)).validation_dir if args.run else None)
    report = pl.validate(Path(args.data), repo, run, folder)
    _print_report(report)
    if folder:
        print(f"report    {folder / 'report.html'}")
    return 4 if report.failures else 0


def cmd_publish(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if args.listings_only:
        manifest = pl.publish_listings(Path(args.data), repo)
    elif args.run:
        layout = pl.RunLayout(Path(args.run))
        try:
            cfg = pl.PublishConfig(
                args.allow_drift, args.force_older, args.writers, args.new_space, args.transition_releases,
                args.space_map,
            )  # fmt: skip
            manifest = pl.publish(Path(args.data), repo, layout, cfg)
        except ChecksFailed as exc:
            _print_report(exc.report)
            raise
        if "drift_override" in manifest:
            print(f"drift failures overridden: {args.allow_drift}")
        _print_release(manifest.get("release"))
    else:
        raise InputError("publish needs --run (or --listings-only)")
    rows = ", ".join(f"{k} {v:,}" for k, v in manifest["rows"].items())
    print(f"published run {manifest['run_id']} ({args.target}) in {manifest['seconds']:.1f} s: {rows}")
    for w in manifest.get("materialized", []):
        if "rows_per_s" in w:
            print(f"  online {w['view']}: {w['rows']:,} rows in {w['seconds']:.1f} s by {w['writers']} writer(s)")
    return 0


def _print_release(release: dict | None) -> None:
    if not release:
        return
    space = f"vectors in space {release['space_version']} (chain {' -> '.join(release['chain'])})"
    if release.get("next_space"):
        left = release["transition_left"]
        space += f"; new space {release['next_space']} beside it for {left} more release(s) (this one included)"
    print(f"release {release['model_version']}: {space}")
    compat = release.get("compat") or {}
    if "consumer_auc_ratio" in compat:
        recall = compat.get("retrieval_recall_ratio")
        print(
            f"  a consumer fitted on release {release['against']}: ROC-AUC x{compat['consumer_auc_ratio']:.3f}"
            + (f", retrieval recall@10 x{recall:.3f}" if recall is not None else "")
        )


def cmd_lookup(args: argparse.Namespace) -> int:
    from embeddings.feature_store import online_features

    frame = online_features(_repo(args), args.user, args.service)
    for record in frame.to_dict(orient="records"):
        vector = record.get("embedding")
        if vector is not None and not args.full:
            record["embedding"] = [round(float(x), 4) for x in vector[:4]] + [f"... ({len(vector)} floats)"]
        print(json.dumps(record, default=str))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from embeddings.stream import ClickStore, ListingFeed, RedisStreamSource, StreamWorker, status

    repo = _repo(args)
    if repo.target == "local":
        raise InputError("stream writes to a Redis online store: --target redis or redis-cluster")
    client = repo.redis()
    if args.seed_from:
        data = load_data(args.seed_from)
        cutoff = utc(repo.latest_run()["cutoff"]) if repo.latest_run() else None
        before = data.events if cutoff is None else data.events[data.events["event_timestamp"] < cutoff]
        n = ClickStore(client, repo.config().project).seed(before, data.listings)
        print(f"seeded the clicks of {before['user_id'].nunique():,} users ({n:,} clicks before {cutoff})")
        return 0
    source = RedisStreamSource(client, args.stream, args.group, args.consumer, args.claim_idle_ms)
    feed = ListingFeed(client, args.listings_stream, args.group, source.consumer, claim_idle_ms=args.claim_idle_ms)
    worker = StreamWorker(
        repo,
        source,
        args.batch_size,
        flush_s=args.flush_s,
        listings=feed,
        threads=args.threads,
        compact_after_s=args.compact_after_s,
    )
    report = worker.run(args.max_events, args.idle_stop_s)
    print(
        f"{report.events:,} events ({report.dead:,} to the dead letters), {report.users:,} user updates in "
        f"{report.batches:,} micro-batches ({report.percentiles()}), {report.listings:,} new listing "
        f"versions, {report.seconds:.1f} s; "
        f"release {report.release}; stream {status(client, args.stream, args.group)}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = pl.JobConfig.from_toml(args.config)
    if args.new_space:
        cfg.publish.new_space = args.new_space
    result = pl.run_job(cfg)
    print(f"job done: ran {result.ran or 'nothing'}, skipped {result.skipped or 'nothing'}; run folder {cfg.out}")
    return 0


# -------------------------------------------------------------------------------------------------- parser
class _Deprecated(argparse.Action):
    """``--profile``, the old name of ``--target`` (profile now means the user vector): kept for one release."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use --target {values}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_repo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="Feast feature repo (default: feature_repo/ of this checkout)")
    p.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default="local",
        help="the deployment: local (SQLite), redis, redis-cluster, spark (feature_repo/feature_store.*.yaml)",
    )
    p.add_argument("--profile", choices=tuple(TARGETS), action=_Deprecated, dest="target", help=argparse.SUPPRESS)


def _add_model_options(p: argparse.ArgumentParser, preset: str | None) -> None:
    p.add_argument("--data", required=True, help="folder with listings.parquet + events.parquet, or a user-item .txt")
    p.add_argument(
        "--split", choices=pl.SPLITS, default="auto", help="auto: temporal with listings, else leave-last-out"
    )
    p.add_argument("--cutoff", help="temporal split cut-off (UTC); default: midnight before the last event")
    p.add_argument("--drop-last", type=int, default=0, help="leave-last-out: first drop each user's last N items")
    p.add_argument("--k", type=int, nargs="+", default=[10])
    p.add_argument("--keep-seen", action="store_true", help="rank items the user already saw too")
    p.add_argument("--sampled", action="store_true", help="also report the sampled 100-negative variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="training epochs (LightFM default 30, SASRec 200 with early stopping)")
    p.add_argument("--factors", type=int, default=64, help="LightFM factors")
    p.add_argument("--fp32", action="store_true", help="no bfloat16 autocast (default: on where the CPU has it)")
    p.add_argument(
        "--preset", choices=tuple(PRESETS), help="SASRec settings for other data (ml1m: long histories); flags win"
    )
    model, train = PRESETS.get(preset, ({}, {}))
    _add_dataclass_options(p.add_argument_group("SASRec model"), SASRecConfig, model)
    _add_dataclass_options(p.add_argument_group("SASRec training"), TrainConfig, train)


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``preset`` (a name in ``train.PRESETS``) changes the SASRec options' defaults."""
    parser = argparse.ArgumentParser(prog="lst-embeddings", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole weekly job from one config file (what a scheduler calls)")
    p.add_argument("--config", required=True, help="TOML job config (see examples/week.toml)")
    p.add_argument("--new-space", metavar="REASON", help="publish declaring a new space (see publish --new-space)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo-data", help="write a synthetic week (listings, events, labels), or consecutive weeks")
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--listings", type=int, default=6000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--partition-by-day", action="store_true", help="events.parquet as a folder of day= partitions")
    p.add_argument("--workers", type=int, default=1, help="processes generating blocks of users (same files)")
    p.add_argument(
        "--weeks", type=int, default=1, help="consecutive weeks of one world: folders week-1 .. week-N under --out"
    )
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("check-data", help="load a data folder or file through the data contract")
    p.add_argument("--data", required=True)
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("evaluate", help="fit models on a split and report HR@K / NDCG@K")
    p.add_argument("--model", nargs="+", default=["lightfm"], choices=("popular", "lightfm", "lightfm+lst", "sasrec"))
    p.add_argument("--checkpoint", help="sasrec: evaluate this trained model instead of training one")
    p.add_argument("--json", help="write the metrics here as JSON (flat keys such as hr@10)")
    _add_model_options(p, preset)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train SASRec, keep checkpoints (resumes an interrupted run), report test metrics")
    p.add_argument("--out", required=True, help="folder for last.pt, best.pt, model.pt, metrics.json")
    p.add_argument("--features-from", choices=("table", "feast"), default="table", help="where lst features come from")
    p.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning on new clicks)")
    p.add_argument(
        "--workers", type=int, default=1, help="training processes (torchrun + DistributedDataParallel, gloo on CPU)"
    )
    _add_repo_options(p)
    _add_model_options(p, preset)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="user embeddings as of a cut-off and listing embeddings, to Parquet")
    p.add_argument("--model", required=True, help="a SASRec checkpoint (model.pt)")
    p.add_argument("--data", required=True)
    p.add_argument("--cutoff", help="only clicks before this count (default: the model's training cut-off)")
    p.add_argument("--batch-size", type=int, default=pl.EmbedConfig.batch_size)
    p.add_argument("--out", required=True, help="folder for user_embeddings.parquet and listing_embeddings.parquet")
    p.add_argument(
        "--engine", choices=pl.ENGINES, default="local", help="spark: users in partitions on Spark (Parquet folders)"
    )
    p.add_argument("--spark-master", help="with --engine spark: local[N], spark://host:port, yarn (default local[*])")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("embed-users", help="embed users from raw clicks (new users too), no retraining")
    p.add_argument("--model", required=True)
    p.add_argument("--events", required=True, help="events parquet (the data contract)")
    p.add_argument("--listings", help="listings parquet: lets lst-frozen/hybrid models encode unknown listings")
    p.add_argument("--cutoff", help="only clicks before this count (default: now, every click so far)")
    p.add_argument("--out", required=True, help="output parquet")
    p.set_defaults(func=cmd_embed_users)

    p = sub.add_parser("probe", help="user vectors as features: retrieval and linear probes against baselines")
    p.add_argument("--run", help="run folder: probe its intent and profile vectors (probe/ out)")
    p.add_argument("--embeddings", nargs="+", help="or any user embedding Parquet files (user_id, embedding)")
    p.add_argument("--listing-embeddings", help="listing vectors (item_id, embedding) for the retrieval probe")
    p.add_argument("--data", required=True, help="data folder: clicks after the cut-off give the labels")
    p.add_argument("--cutoff", help="labels from clicks at or after this (default: the embeddings' event_timestamp)")
    p.add_argument("--horizon-days", type=float, help="only clicks this many days after the cut-off count")
    p.add_argument("--folds", type=int, default=pl.ProbeSettings.folds)
    p.add_argument("--max-users", type=int, default=pl.ProbeSettings.max_users)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="with --embeddings: write the probe table as JSON here")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("classify", help="rent/sale preference: fit CatBoost on a run's embeddings, or score with one")
    p.add_argument("--run", required=True, help="run folder (embeddings/ in, preference/ out)")
    p.add_argument("--data", required=True, help="data folder: the clicks (labels before the cut-off, history)")
    p.add_argument("--model", help="a saved classifier.cbm: score the run's users with it, no fitting")
    p.add_argument("--labels", help="latent intent to check against (default: labels.parquet of the data folder)")
    p.add_argument("--min-history", type=int, default=pl.ClassifyConfig.min_history)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--label-days",
        type=float,
        default=pl.ClassifyConfig.label_days,
        help="fit on labels from the clicks in these last days before the cut-off (features as of their start)",
    )
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("pictures", help="t-SNE PNGs of a run's listing and user embeddings")
    p.add_argument("--run", required=True, help="run folder (embeddings/, preference/ in; pictures/ out)")
    p.add_argument("--data", required=True)
    p.add_argument("--sample", type=int, default=pl.PicturesConfig.sample)
    p.set_defaults(func=cmd_pictures)

    p = sub.add_parser("publish", help="check a run, then append it to the offline sources and materialize it")
    p.add_argument("--run", help="run folder with embeddings/ and preference/")
    p.add_argument("--listings-only", action="store_true", help="publish only new lst feature versions of listings")
    p.add_argument("--data", required=True, help="data folder (its listings are published as lst features)")
    p.add_argument("--allow-drift", metavar="REASON", help="publish despite drift failures; the reason is recorded")
    p.add_argument("--force-older", metavar="REASON", help="publish a run older than the latest one; recorded")
    p.add_argument("--writers", type=int, help="processes writing the online store (default: 1 for SQLite, 1 per core)")
    p.add_argument(
        "--new-space",
        metavar="REASON",
        help="declare this model's space the new pinned one (consumers must refit); the reason is recorded",
    )
    p.add_argument(
        "--transition-releases",
        type=int,
        default=pl.PublishConfig.transition_releases,
        help="releases that publish a declared new space beside the old one (default: %(default)s)",
    )
    p.add_argument(
        "--space-map",
        choices=KINDS,
        default=pl.PublishConfig.space_map,
        help="how a retrain's vectors are mapped into the pinned space (default: %(default)s)",
    )
    _add_repo_options(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("stream", help="keep users' vectors fresh from click events on a Redis Stream")
    p.add_argument("--stream", default="lst_embeddings:clicks", help="the stream key (dead letters: KEY:dead)")
    p.add_argument(
        "--listings-stream", default="lst_embeddings:listings", help="new listings with their lst features (KEY:dead)"
    )
    p.add_argument("--group", default="lst-embeddings", help="consumer group: workers of one group share the load")
    p.add_argument("--consumer", help="this worker's name in the group (default: host-pid; reuse it after a restart)")
    p.add_argument("--batch-size", type=int, default=500, help="events a micro-batch")
    p.add_argument("--claim-idle-ms", type=int, default=30_000, help="take over others' events pending this long")
    p.add_argument("--flush-s", type=float, default=1.0, help="offline files and acknowledgements this often")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this worker (add workers to scale)")
    p.add_argument(
        "--compact-after-s", type=float, default=3600.0, help="merge the per-flush offline files this old, per hour"
    )
    p.add_argument("--max-events", type=int, help="stop after this many events (default: run until stopped)")
    p.add_argument("--idle-stop-s", type=float, help="stop when the stream has been empty this long")
    p.add_argument("--seed-from", metavar="DATA", help="only seed the clicks store from a data folder's events")
    _add_repo_options(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("validate", help="Great Expectations checks of the data and, with --run, of a run")
    p.add_argument("--run", help="run folder with embeddings/ and preference/ (report goes to its validation/)")
    p.add_argument("--data", required=True)
    p.add_argument("--report", help="folder for report.html and checks.json (default: the run's validation/)")
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
    # a preset sets defaults, so it is read first: flags given beside it still win
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", choices=tuple(PRESETS))
    args = build_parser(early.parse_known_args(argv)[0].preset).parse_args(argv)
    try:
        return args.func(args)
    except LstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # no permission, a file where a folder should be, a full disk: nothing half-written
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 3
    except Exception as exc:
        message = _store_failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 3


def _store_failure(exc: Exception) -> str | None:
    """One line for a store that failed under a command (Redis gone or failing over, SQLite's disk full), or None
    for an exception that is a bug (its traceback is the report)."""
    import sqlite3

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__module__.startswith("redis"):
        return f"Redis: {first} (the online store failed under this command; run it again once Redis serves)"
    if isinstance(exc, sqlite3.Error):
        return f"SQLite: {first}"
    return None


if __name__ == "__main__":
    sys.exit(main())
