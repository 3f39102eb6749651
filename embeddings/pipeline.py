"""The weekly job as a library: one function per stage, typed configs in, typed results out.

    raw events + listings -> train -> embed -> probe -> classify -> pictures -> checks -> publish

Each stage reads and writes a run folder whose paths :class:`RunLayout` owns. The CLI, ``make demo``
and schedulers only call these functions. :func:`run_job` runs them all from one :class:`JobConfig`
(``lst-embeddings run --config week.toml``), skipping every stage whose outputs already exist for the
same inputs and settings: a rerun after a crash continues where it stopped, a rerun after success does
nothing.

:func:`publish` is the only public way into the feature store: it runs every check first and raises
:class:`~embeddings.errors.ChecksFailed` (nothing written) when one fails.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import tomllib
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import pandas as pd

from embeddings.data import Dataset, load_data
from embeddings.data.contract import read_parquet, validate_events, validate_listings
from embeddings.data.split import Split, default_cutoff, leave_last_out, temporal_split
from embeddings.errors import ChecksFailed, InputError, NothingToPublish
from embeddings.feature_store import REPO, Repo
from embeddings.io import file_digest, utc, write_json, write_parquet, write_text
from embeddings.models.sasrec import SASRecConfig, SASRecRecommender
from embeddings.record import RunRecord
from embeddings.release import WINDOW, Release
from embeddings.space import KINDS
from embeddings.stages.classify import LABEL_DAYS, PreferenceModel, fit_preference, score_users
from embeddings.stages.embed import Embedder, EmbedReport
from embeddings.stages.probe import ProbeReport
from embeddings.training import distributed
from embeddings.training.config import TrainConfig

SPLITS = ("auto", "temporal", "leave-last-out")
ENGINES = ("local", "spark")


# ------------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class RunLayout:
    """Every path of a run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    model_dir = property(lambda self: self.root / "model")  # last.pt, best.pt, model.pt, metrics.json
    model = property(lambda self: self.model_dir / "model.pt")
    train_metrics = property(lambda self: self.model_dir / "metrics.json")
    embeddings_dir = property(lambda self: self.root / "embeddings")
    user_embeddings = property(lambda self: self.embeddings_dir / "user_embeddings.parquet")
    user_profiles = property(lambda self: self.embeddings_dir / "user_profiles.parquet")  # profile head's vectors
    listing_embeddings = property(lambda self: self.embeddings_dir / "listing_embeddings.parquet")
    reference = property(lambda self: self.embeddings_dir / "reference.json")  # the model's training-time stats
    record = property(lambda self: self.embeddings_dir / "run.json")  # the run's facts (RunRecord), from embed
    preference_dir = property(lambda self: self.root / "preference")
    scores = property(lambda self: self.preference_dir / "preference.parquet")
    classifier = property(lambda self: self.preference_dir / "classifier.cbm")
    preference_metrics = property(lambda self: self.preference_dir / "preference_metrics.json")
    probe_dir = property(lambda self: self.root / "probe")
    probe_report = property(lambda self: self.probe_dir / "probe.json")  # the probe table, and which vector wins
    release_dir = property(lambda self: self.root / "release")  # the pinned space, maps, compatibility figures
    pictures_dir = property(lambda self: self.root / "pictures")
    validation_dir = property(lambda self: self.root / "validation")
    evaluation = property(lambda self: self.root / "evaluation.json")
    stages_dir = property(lambda self: self.root / ".stages")

    def stage_file(self, stage: str) -> Path:
        return self.stages_dir / f"{stage}.json"

    def preferred_users(self) -> Path:
        """The user vectors the classifier and the pictures take: the profile table when the probes say it is
        the better feature (``probe/probe.json``), else the intent table."""
        report = json.loads(self.probe_report.read_text()) if self.probe_report.exists() else {}
        return self.user_profiles if report.get("preferred") == "profile" else self.user_embeddings


# ----------------------------------------------------------------------------------------------- configs
@dataclass
class DataConfig:
    path: Path  # folder with listings.parquet + events.parquet, or a `user item` text file
    split: str = "auto"  # auto: temporal with listings, else leave-last-out
    cutoff: str | None = None  # temporal split cut-off (UTC); default: midnight before the last event
    drop_last: int = 0  # leave-last-out: first drop each user's last N items

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {self.split!r}")


@dataclass
class FeatureStoreConfig:
    repo: Path = REPO
    target: str = "local"  # local (DuckDB + SQLite) | redis | redis-cluster | spark: feature_store.*.yaml
    profile: str | None = None  # the old name of ``target``: still read for one release, with a warning

    def __post_init__(self) -> None:
        if self.profile is not None:
            warnings.warn(
                "[feature_store] profile is deprecated: call it target (profile now means the user vector)",
                DeprecationWarning,
                stacklevel=3,
            )
            print("warning: [feature_store] profile is deprecated; use target", file=sys.stderr)
            self.target, self.profile = self.profile, None

    def open(self) -> Repo:
        return Repo(Path(self.repo), self.target)


@dataclass
class EmbedConfig:
    cutoff: str | None = None  # only clicks before this count (default: the model's training cut-off, else the
    # data's default cut-off: midnight before the last click)
    batch_size: int = 256
    engine: str = "local"  # local (this process) or spark (user partitions on Spark; see embeddings.stages.spark_embed)
    spark_master: str | None = None  # for engine spark: e.g. local[4], spark://host:7077 (default: local[*])

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"embed engine must be one of {ENGINES}, got {self.engine!r}")


@dataclass
class ClassifyConfig:
    min_history: int = 3  # users with fewer clicks before the cut-off are reported apart
    seed: int = 0
    label_days: float = LABEL_DAYS  # fit on labels from [cut-off - label_days, cut-off), features as of its start

    def __post_init__(self) -> None:
        if not self.label_days > 0:
            raise InputError(f"label_days must be positive, got {self.label_days}")


@dataclass
class ProbeSettings:
    horizon_days: float | None = None  # labels from clicks this many days after the cut-off (default: all after)
    folds: int = 5
    max_users: int = 20_000  # users sampled for the linear probes
    seed: int = 0


@dataclass
class EvaluateConfig:
    baselines: list[str] = field(default_factory=list)  # e.g. ["popular", "lightfm"]: on the same split as SASRec

    def __post_init__(self) -> None:
        from embeddings.models.zoo import MODELS

        unknown = [b for b in self.baselines if b not in MODELS]
        if unknown:
            raise InputError(f"[evaluate] baselines: unknown model(s) {unknown}; known: {sorted(MODELS)}")


@dataclass
class PicturesConfig:
    sample: int = 2000  # points per picture
    seed: int = 0


@dataclass
class PublishConfig:
    allow_drift: str | None = None  # a reason: publish despite drift failures (never data/vector/score ones)
    force_older: str | None = None  # a reason: publish a run older than the latest published one
    writers: int | None = None  # processes writing the online store; default: 1 for SQLite, one per core for Redis
    new_space: str | None = None  # a reason: this model's space becomes the pinned one (after the transition)
    transition_releases: int = WINDOW  # releases that publish a declared new space beside the old one
    space_map: str = "orthogonal"  # orthogonal | linear: how a release's vectors are mapped to the pinned space

    def __post_init__(self) -> None:  # before the checks, which take minutes on a site-size week
        if self.writers is not None and self.writers < 1:
            raise InputError(f"writers must be at least 1, got {self.writers}")
        if self.transition_releases < 0:
            raise InputError(f"transition_releases must be 0 or more, got {self.transition_releases}")
        if self.space_map not in KINDS:
            raise InputError(f"space_map must be one of {KINDS}, got {self.space_map!r}")


@dataclass
class JobConfig:
    """The whole weekly job (``run --config``): see ``examples/week.toml``."""

    out: Path
    data: DataConfig
    model: SASRecConfig = field(default_factory=SASRecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    features_from: str = "table"  # table | feast: lst features for training from listings.parquet or Feast
    init_from: Path | None = None  # start training from this checkpoint's weights (fine-tuning)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    pictures: PicturesConfig = field(default_factory=PicturesConfig)
    feature_store: FeatureStoreConfig = field(default_factory=FeatureStoreConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    @classmethod
    def from_toml(cls, path: str | Path) -> JobConfig:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"{path}: cannot read the job config ({exc})") from exc
        return cls.from_dict(raw, base=path.parent)

    @classmethod
    def from_dict(cls, raw: dict, base: Path = Path(".")) -> JobConfig:
        sections = {
            "data": DataConfig,
            "model": SASRecConfig,
            "train": TrainConfig,
            "evaluate": EvaluateConfig,
            "embed": EmbedConfig,
            "probe": ProbeSettings,
            "classify": ClassifyConfig,
            "pictures": PicturesConfig,
            "feature_store": FeatureStoreConfig,
            "publish": PublishConfig,
        }
        job = dict(raw.get("job", {}))
        kwargs: dict = {}
        for name, kind in sections.items():
            values = dict(raw.get(name, {}))
            known = {f.name for f in fields(kind)}
            unknown = set(values) - known
            if unknown:
                raise InputError(f"[{name}]: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
            for key in ("path", "repo"):
                if key in values:
                    values[key] = (base / values[key]).resolve()
            try:
                kwargs[name] = kind(**values)
            except TypeError as exc:
                raise InputError(f"[{name}]: {exc}") from exc
        unknown = set(job) - {"out", "features_from", "init_from"}
        if unknown or "out" not in job:
            raise InputError(f"[job]: needs out (the run folder); unknown setting(s) {sorted(unknown)}")
        init = job.get("init_from")
        return cls(
            out=(base / job["out"]).resolve(),
            features_from=job.get("features_from", "table"),
            init_from=(base / init).resolve() if init else None,
            **kwargs,
        )


# ------------------------------------------------------------------------------------------------ results
@dataclass
class TrainResult:
    model: SASRecRecommender
    path: Path
    metrics: dict  # test metrics of the split (hr@10, ndcg@10, ...), fit_seconds


@dataclass
class EmbedResult:
    users: pd.DataFrame
    profiles: pd.DataFrame | None  # the profile head's vectors (same users), when the model has one
    items: pd.DataFrame
    record: RunRecord  # cut-off, model version, encoder, heads: what every later stage reads
    report: EmbedReport

    cutoff = property(lambda self: self.record.cutoff)
    model_version = property(lambda self: self.record.model_version)
    encoder = property(lambda self: self.record.encoder)


@dataclass
class ClassifyResult:
    scores: pd.DataFrame
    table: list[dict]
    n_labelled: int
    n_train: int
    classifier: Path
    classifier_version: str


# ------------------------------------------------------------------------------------------------- stages
def split_data(data: Dataset, cfg: DataConfig) -> Split:
    protocol = cfg.split
    if protocol == "auto":
        protocol = "temporal" if data.has_listings else "leave-last-out"
    if protocol == "temporal":
        split = temporal_split(data.events, data.listings, utc(cfg.cutoff) if cfg.cutoff else None)
    else:
        split = leave_last_out(data.events, data.listings, drop_last=cfg.drop_last)
    if len(split.test) == 0:
        where = f" after the cut-off {split.cutoff}" if split.cutoff is not None else ""
        raise InputError(f"{cfg.path}: the split leaves no test case (no user clicks a new listing{where})")
    return split


def train(
    data: Dataset,
    layout: RunLayout,
    split: DataConfig,
    model: SASRecConfig | None = None,
    train: TrainConfig | None = None,
    *,
    features_from: str = "table",
    feature_store: Repo | None = None,
    init_from: Path | None = None,
) -> TrainResult:
    """Train SASRec on the split, keep checkpoints in ``layout.model_dir`` (resumes), report test metrics."""
    from embeddings.models.zoo import make_model
    from embeddings.stages.evaluate import evaluate

    if layout.model_dir.exists() and not layout.model_dir.is_dir():
        raise InputError(f"{layout.model_dir}: exists and is not a folder")
    if features_from not in ("table", "feast"):
        raise InputError(f"features_from must be 'table' or 'feast', got {features_from!r}")
    the_split = split_data(data, split)
    rec = make_model(
        "sasrec",
        the_split,
        data.listings,
        sasrec=model,
        train=train,
        checkpoint_dir=layout.model_dir,
        feature_store=feature_store if features_from == "feast" else None,
        init_from=init_from,
    )
    if rec.train_config.compat_weight > 0:  # the training-time compatibility loss against the latest release
        rec.compat_target = _compat_target(feature_store, the_split)
    began = time.perf_counter()
    rec.fit(the_split)
    if not distributed.is_main():  # torchrun: rank 0 evaluates and writes the model
        return TrainResult(rec, layout.model, {})
    metrics = {
        "model": rec.name,
        "protocol": the_split.protocol,
        "fit_seconds": time.perf_counter() - began,
        **evaluate(rec, the_split.test),
    }
    rec.save(layout.model, metrics={"test": metrics, "best": rec.best, "history": rec.history})
    write_json(layout.train_metrics, {"test": metrics, "best": rec.best})
    return TrainResult(rec, layout.model, metrics)


def latest_release_model(repo: Repo | None) -> Path | None:
    """The checkpoint of the latest published release (None before the first, or without a feature store)."""
    from embeddings.release import MODEL, published_release, release_dir

    previous = published_release(repo.data, repo.latest_run()) if repo is not None else None
    path = release_dir(repo.data, previous.model_version) / MODEL if previous else None
    return path if path is not None and path.exists() else None


def _compat_target(repo: Repo | None, split: Split):
    """The latest release's item vectors by this split's tokens: the target of ``TrainConfig.compat_weight``."""
    from embeddings.models.sasrec import compat_target

    path = latest_release_model(repo)
    if path is None:
        print("compat_weight: no published release to be compatible with yet; training without it", file=sys.stderr)
        return None
    return compat_target(SASRecRecommender.load(path), split.item_ids)


def embed(
    data: Dataset,
    layout: RunLayout,
    model: SASRecRecommender | Path | None = None,
    cfg: EmbedConfig | None = None,
) -> EmbedResult:
    """User embeddings as of the cut-off and listing embeddings, to ``layout.embeddings_dir``.

    ``model``: a loaded model, a checkpoint path, or (default) the run's own ``model/model.pt``; loaded once.
    """
    cfg = cfg or EmbedConfig()
    rec = model if isinstance(model, SASRecRecommender) else SASRecRecommender.load(model or layout.model)
    cutoff = utc(cfg.cutoff or rec.cutoff or default_cutoff(data.events))
    embedder = Embedder(rec, data.listings)
    if cfg.engine == "spark":
        users, profiles = _embed_users_on_spark(data, layout, model or layout.model, rec, cutoff, cfg)
        embedder.report.users = len(users)
        embedder.report.users_without_history = data.events["user_id"].nunique() - len(users)
    else:
        users = embedder.embed_users(data.events, cutoff, batch_size=cfg.batch_size)
        if users.empty:
            raise InputError(f"{data.source}: no user has a usable click before the cut-off {cutoff}")
        users, profiles = Embedder.split_heads(users)
        for table, path in ((users, layout.user_embeddings), (profiles, layout.user_profiles)):
            if table is not None:
                if path.is_dir():  # an earlier Spark run's partitions (a file is replaced atomically)
                    shutil.rmtree(path)
                write_parquet(table, path)
    if profiles is None:
        _remove(layout.user_profiles)  # an earlier model's profiles do not belong to this one
    items = embedder.embed_items(cutoff if data.has_listings else None)
    write_parquet(items, layout.listing_embeddings)
    write_json(layout.reference, rec.reference)
    profile_version = str(profiles["model_version"].iloc[0]) if profiles is not None else None
    checkpoint = None if isinstance(model, SASRecRecommender) else Path(model or layout.model).resolve()
    heads, path = tuple(rec.heads), str(checkpoint) if checkpoint else None
    record = RunRecord(cutoff, embedder.version, embedder.encoder, heads, profile_version, model_path=path)
    record.write(layout.record)  # last: a run folder with a record has every table of it
    return EmbedResult(users, profiles, items, record, embedder.report)


def _embed_users_on_spark(data: Dataset, layout: RunLayout, model, rec: SASRecRecommender, cutoff, cfg: EmbedConfig):
    """User (and profile) vectors by :func:`embeddings.stages.spark_embed.embed_users_spark`, written as folders of
    Parquet partitions at the run layout's paths, and read back for the stages after this one."""
    from embeddings.stages.spark_embed import embed_users_spark, spark_session

    if isinstance(model, SASRecRecommender) or not data.source.is_dir():
        raise InputError("the Spark engine embeds from a checkpoint file and a data folder's events.parquet")
    profiles_out = layout.user_profiles if "profile" in rec.heads else None
    embed_users_spark(
        data.source / "events.parquet", model, layout.user_embeddings, cutoff, data.listings,
        profiles_out=profiles_out, spark=spark_session(cfg.spark_master or "local[*]"), batch_size=cfg.batch_size,
    )  # fmt: skip
    users = read_parquet(layout.user_embeddings)
    return users, read_parquet(profiles_out) if profiles_out else None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclass
class ProbeResult:
    report: ProbeReport
    preferred: str  # intent | profile: the vector the classifier and the pictures take
    cutoff: pd.Timestamp


def probe_tables(
    data: Dataset,
    users: dict[str, pd.DataFrame],
    items: pd.DataFrame | None = None,
    cutoff: pd.Timestamp | None = None,
    cfg: ProbeSettings | None = None,
) -> ProbeReport:
    """Probe any user vector tables (name -> frame with ``user_id``, ``embedding``) as features of what users do
    after ``cutoff`` (default: the tables' ``event_timestamp``), with the listing vectors ``items`` for the
    retrieval probe. Raises when there is no click after the cut-off."""
    from embeddings.stages.probe import ProbeConfig, run_probes, week_probe_data

    cfg = cfg or ProbeSettings()
    if not data.has_listings:
        raise InputError(f"{data.source}: probes need a data folder with listings (labels)")
    first = next(iter(users.values()))
    cutoff = utc(cutoff if cutoff is not None else first["event_timestamp"].iloc[0])
    horizon = pd.Timedelta(days=cfg.horizon_days) if cfg.horizon_days else None
    pdata = week_probe_data(data.events, data.listings, cutoff, horizon)
    vectors = {name: pdata.align(frame) for name, frame in users.items()}
    item_vectors = pdata.align_items(items) if items is not None else None
    return run_probes(pdata, vectors, item_vectors, ProbeConfig(cfg.folds, cfg.max_users, seed=cfg.seed))


def probe(data: Dataset, layout: RunLayout, cfg: ProbeSettings | None = None) -> ProbeResult:
    """Probe the run's user vectors as features (labels from after the embeddings' cut-off) against the
    baselines a consuming team could build; writes ``probe/probe.json`` (with the vector the classifier and the
    pictures take) and ``probe/probe.md``. With no click after the cut-off it records why and prefers intent."""
    users = read_parquet(layout.user_embeddings)
    cutoff = RunRecord.read(layout.record).cutoff
    if not (data.events["event_timestamp"] >= cutoff).any():
        reason = f"no click after the embeddings' cut-off {cutoff}: no labels to probe with"
        write_json(layout.probe_report, {"cutoff": cutoff, "preferred": "intent", "skipped": reason, "rows": []})
        return ProbeResult(ProbeReport([], [], []), "intent", cutoff)
    tables = {"intent": users}
    if layout.user_profiles.exists():
        tables["profile"] = read_parquet(layout.user_profiles)
    report = probe_tables(data, tables, read_parquet(layout.listing_embeddings), cutoff, cfg)
    preferred = report.preferred(tuple(tables))
    write_json(layout.probe_report, {"cutoff": cutoff, "preferred": preferred, **report.to_dict()})
    write_text(layout.probe_dir / "probe.md", report.table() + "\n")
    return ProbeResult(report, preferred, cutoff)


def classify(
    data: Dataset, layout: RunLayout, cfg: ClassifyConfig | None = None, labels: pd.DataFrame | None = None
) -> ClassifyResult:
    """Fit the rent/sale classifier point-in-time correctly (features as of ``cut-off - label_days``, labels from
    the clicks between then and the cut-off; see :mod:`embeddings.stages.classify`), score every embedded user as of the
    cut-off, report the scores against labels from after it (when the data go on) beside the baselines, and save
    the classifier (``classifier.cbm``)."""
    cfg = cfg or ClassifyConfig()
    if not data.has_listings:
        raise InputError(f"{data.source}: classify needs a data folder with listings (deal types)")
    source = layout.preferred_users()
    users = read_parquet(source)
    cutoff = RunRecord.read(layout.record).cutoff
    start = cutoff - pd.Timedelta(days=cfg.label_days)
    ts = data.events["event_timestamp"]
    labelled = data.events.loc[(ts >= start) & (ts < cutoff), "user_id"].unique()  # only they can be fitted on
    clicks = data.events[data.events["user_id"].isin(labelled)]
    past = Embedder.from_checkpoint(layout.model, data.listings).embed_users(clicks, start)  # the fit's features
    intent, profiles = Embedder.split_heads(past)
    past = profiles if source == layout.user_profiles and profiles is not None else intent
    labels = data.labels() if labels is None else labels
    result = fit_preference(
        users, past, data.events, data.listings, cutoff, cfg.label_days, labels, cfg.min_history, cfg.seed
    )
    result.model.save(layout.classifier)
    write_parquet(result.scores, layout.scores)
    write_json(
        layout.preference_metrics,
        {
            "n_labelled": result.n_labelled,
            "n_train": result.n_train,
            "label_window": [start, cutoff],
            "user_vectors": source.name,
            "rows": result.table,
        },
    )
    return ClassifyResult(
        result.scores, result.table, result.n_labelled, result.n_train, layout.classifier, result.model.version
    )


def score(classifier: Path, user_embeddings: pd.DataFrame, data: Dataset, out: Path | None = None) -> pd.DataFrame:
    """Rent/sale scores of any user vectors with a saved classifier, without refitting; the history features come
    from ``data``'s clicks before the vectors' cut-off."""
    scores = score_users(PreferenceModel.load(classifier), user_embeddings, data.events, data.listings)
    if out is not None:
        write_parquet(scores, out)
    return scores


def pictures(data: Dataset, layout: RunLayout, cfg: PicturesConfig | None = None) -> list[Path]:
    """t-SNE PNGs of the run's listing and user embeddings under ``layout.pictures_dir``."""
    from embeddings.stages.pictures import item_pictures, user_pictures

    cfg = cfg or PicturesConfig()
    if not data.has_listings:
        raise InputError(f"{data.source}: pictures need a data folder with listings")
    out = layout.pictures_dir
    paths = item_pictures(read_parquet(layout.listing_embeddings), data.listings, out, cfg.sample, cfg.seed)
    paths += user_pictures(
        read_parquet(layout.preferred_users()), read_parquet(layout.scores), out, cfg.sample, cfg.seed
    )
    return paths


@dataclass
class RunTables:
    """What a run publishes: user (intent, and profile) and listing embeddings, rent/sale scores, and the run's
    record (tables built by hand get one from their first row)."""

    users: pd.DataFrame
    items: pd.DataFrame
    scores: pd.DataFrame
    reference: dict | None = None  # the model's user-vector statistics at training time (checked against)
    profiles: pd.DataFrame | None = None  # the profile head's user vectors
    probes: dict | None = None  # the run's probe report (``probe/probe.json``), shown in the checks' report
    record: RunRecord | None = None
    release: Release | None = None  # set by publish: the pinned space and the maps into it (:func:`release`)
    model: Path | None = None  # set by publish: the run's checkpoint, checked against the record (or None)
    classifier: Path | None = None  # the run's rent/sale classifier (the stream worker scores with it)

    def __post_init__(self) -> None:
        if self.record is None:
            self.record = RunRecord.of_vectors(self.users, self.profiles)

    @classmethod
    def read(cls, layout: RunLayout) -> RunTables:
        reference = json.loads(layout.reference.read_text()) if layout.reference.exists() else None
        users, items = read_parquet(layout.user_embeddings), read_parquet(layout.listing_embeddings)
        profiles = read_parquet(layout.user_profiles) if layout.user_profiles.exists() else None
        probes = json.loads(layout.probe_report.read_text()) if layout.probe_report.exists() else None
        record = RunRecord.read(layout.record)
        classifier = layout.classifier if layout.classifier.exists() else None
        scores = read_parquet(layout.scores)
        return cls(users, items, scores, reference, profiles, probes, record, classifier=classifier)


def _raw_inputs(data_dir: Path) -> dict[str, pd.DataFrame]:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: checks and publish need a data folder with listings.parquet and events.parquet")
    return {
        "events": read_parquet(data_dir / "events.parquet"),
        "listings": read_parquet(data_dir / "listings.parquet"),
    }


def validate(
    data_dir: Path,
    repo: Repo,
    run: RunTables | None = None,
    report_dir: Path | None = None,
    raw: dict[str, pd.DataFrame] | None = None,
):
    """Every Great Expectations check of the input data and (with ``run``) of the run's vectors, scores and
    drift against the latest published run. Returns the report; writes it to ``report_dir`` when given.
    ``raw``: the data folder's tables when the caller has read them already."""
    from validation.checks import check_run

    raw = raw if raw is not None else _raw_inputs(data_dir)
    previous = repo.previous_run()
    report = check_run(
        raw["events"],
        raw["listings"],
        run.users if run else None,
        run.items if run else None,
        run.scores if run else None,
        previous,
        run.reference if run else None,
        profiles=run.profiles if run else None,
        probes=run.probes if run else None,
        record=run.record if run else None,
        release=run.release if run else None,
    )
    report.previous_run_id = previous["run_id"] if previous else None
    if report_dir is not None:
        report.write(report_dir)
    return report


def publish(data_dir: Path, repo: Repo, run: RunTables | RunLayout, cfg: PublishConfig | None = None) -> dict:
    """Align the run with the published release (:func:`release`), check it and, only if every check passes
    (drift failures may be overridden with a reason; compatibility failures only by declaring a new space), write
    it to the feature store. Returns the manifest; raises ``ChecksFailed`` with nothing written."""
    cfg = cfg or PublishConfig()
    layout = run if isinstance(run, RunLayout) else None
    tables = RunTables.read(run) if layout else run
    raw = _raw_inputs(data_dir)  # read once: checked as they are, then through the contract
    try:
        data = _contract_tables(data_dir, raw)
    except InputError:
        data = None  # the data checks below say what is wrong, expectation by expectation
    if data is not None:
        tables.model = checkpoint_of(tables.record)  # read and hashed once: the alignment and the writer take it
        tables.release = replace(release(repo, tables, data, cfg), scorer=scorer_of(tables))
        if layout:
            tables.release.save(layout.release_dir)
    report = validate(data_dir, repo, tables, layout.validation_dir if layout else None, raw)
    extra: dict = {"checks": len(report.checks)}
    if report.failures:
        if not (report.drift_only and cfg.allow_drift):
            hint = " (drift only: allow_drift with a reason overrides)" if report.drift_only else ""
            if any(c.kind == "compatibility" for c in report.failures):
                hint = " (consumers' models would break: declare a new space with a reason to publish it anyway)"
            raise ChecksFailed(
                f"publish refused, {len(report.failures)} failed check(s){hint}; nothing was changed", report
            )
        extra["drift_override"] = {
            "reason": cfg.allow_drift,
            "failed": [f"{c.expectation} {c.column}: {c.observed}" for c in report.failures],
        }
    data = data or _contract_tables(data_dir, raw)
    extra["events_rows"] = len(data.events)
    return write_to_feature_store(repo, data.listings, tables, extra, cfg.force_older, cfg.writers)


def release(repo: Repo, tables: RunTables, data: Dataset, cfg: PublishConfig | None = None) -> Release:
    """The run's release against the latest published one: the pinned space, the maps into it (fitted on the
    vectors this run's model and the previous release's model give this run's users and listings) and the
    compatibility figures of the publish gate (:func:`embeddings.release.align`). Without ``tables.model`` (the
    run's checkpoint, :func:`checkpoint_of`) no map can be fitted."""
    from embeddings.release import MODEL, Vectors, align, published_release, release_dir
    from embeddings.stages.classify import preference_labels

    cfg = cfg or PublishConfig()
    record = tables.record
    previous = published_release(repo.data, repo.latest_run())
    new = Vectors(tables.users, tables.profiles, tables.items)
    old = None
    model = tables.model
    uniform = all(
        f is None or f["embedding"].map(len).nunique() == 1 for f in (tables.users, tables.profiles, tables.items)
    )
    if previous is not None and previous.model_version != record.model_version:
        old_model = release_dir(repo.data, previous.model_version) / MODEL
        if model is not None and old_model.exists() and uniform:  # (vectors of mixed sizes fail the vector suites)
            embedder = Embedder.from_checkpoint(old_model, data.listings)
            users, profiles = Embedder.split_heads(embedder.embed_users(data.events, record.cutoff))
            old = Vectors(users, profiles, embedder.embed_items(record.cutoff if data.has_listings else None))
    after = data.events[data.events["event_timestamp"] >= record.cutoff]
    labels = None
    if len(after) and data.has_listings:
        labels = (preference_labels(data.events, data.listings, record.cutoff), after)
    kwargs = {"new_space": cfg.new_space, "window": cfg.transition_releases, "kind": cfg.space_map}
    return align(previous, record.model_version, new, old, labels, **kwargs)


def scorer_of(tables: RunTables) -> dict:
    """The classifier that made the run's scores and the vector it reads (the probes' preferred head), for the
    release folder; empty when the classifier file is not the one that scored the run."""
    if tables.classifier is None or not len(tables.scores):
        return {}
    version = str(tables.scores["classifier_version"].iloc[0])
    if PreferenceModel.load(tables.classifier).version != version:
        return {}
    return {"classifier_version": version, "head": (tables.probes or {}).get("preferred", "intent")}


def checkpoint_of(record: RunRecord) -> Path | None:
    """The run's checkpoint when it is still there and still the model that made the vectors."""
    from embeddings.stages.embed import model_version

    path = Path(record.model_path) if record.model_path else None
    if path is None or not path.is_file():
        return None
    return path if model_version(path) == record.model_version else None


def write_to_feature_store(
    repo: Repo,
    listings: pd.DataFrame,
    tables: RunTables,
    extra_manifest: dict | None = None,
    force_older: str | None = None,
    writers: int | None = None,
) -> dict:
    """The write step of :func:`publish`, after its checks: offline Parquet, online store, manifest. Named so
    that a benchmark can time the write alone (``bench/feature_store.py``, ``bench/scale.py``); anything that
    publishes a run calls :func:`publish`, whose checks stop a bad run before this step."""
    from embeddings.feature_store._writer import write_run

    return write_run(
        repo,
        listings,
        tables.users,
        tables.items,
        tables.scores,
        user_profiles=tables.profiles,
        record=tables.record,
        release=tables.release,
        model=tables.model if tables.release is not None else None,
        classifier=tables.classifier if tables.release is not None else None,
        extra_manifest=extra_manifest,
        force_older=force_older,
        writers=writers,
    )


def publish_listings(data_dir: Path, repo: Repo) -> dict:
    """Publish the lst features of new listing versions (checked like a run's input data)."""
    from embeddings.feature_store._writer import write_run

    raw = _raw_inputs(data_dir)
    report = validate(data_dir, repo, raw=raw)
    if report.failures:
        raise ChecksFailed(f"publish refused, {len(report.failures)} failed check(s) of the listings data", report)
    return write_run(repo, _contract_tables(data_dir, raw).listings)


def _contract_tables(data_dir: Path, raw: dict[str, pd.DataFrame]) -> Dataset:
    listings = validate_listings(raw["listings"], source=str(Path(data_dir) / "listings.parquet"))
    events = validate_events(raw["events"], listings, source=str(Path(data_dir) / "events.parquet"))
    return Dataset(events, listings, Path(data_dir))


# ---------------------------------------------------------------------------------------------- the job
def _digest(path: Path) -> str:
    """A file's content digest; a folder's over its files (names and contents)."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    for part in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(part.relative_to(path)).encode() + file_digest(part).encode())
    return digest.hexdigest()


def _fingerprint(stage: str, settings: dict, inputs: list[Path]) -> str:
    digest = hashlib.sha256(json.dumps([stage, settings], sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(_digest(path).encode())
    return digest.hexdigest()


def _outputs(outputs: list[Path]) -> dict[str, str] | None:
    """The digests of a stage's outputs; None when one is missing."""
    if not all(Path(p).exists() for p in outputs):
        return None
    return {str(p): _digest(p) for p in outputs}


def _done(layout: RunLayout, stage: str, fingerprint: str, outputs: list[Path]) -> bool:
    """The stage ran with these inputs and settings, and its outputs are still what it wrote (a truncated or
    edited output reruns the stage)."""
    path = layout.stage_file(stage)
    if not path.exists():
        return False
    stamp, current = json.loads(path.read_text()), _outputs(outputs)
    return current is not None and stamp.get("fingerprint") == fingerprint and stamp.get("outputs") == current


def _stamp(layout: RunLayout, stage: str, fingerprint: str, outputs: list[Path], summary: dict) -> None:
    stamp = {"fingerprint": fingerprint, "outputs": _outputs(outputs) or {}, **summary}
    write_json(layout.stage_file(stage), {**stamp, "finished_at": pd.Timestamp.now(tz="UTC")})


@dataclass
class JobResult:
    layout: RunLayout
    ran: list[str]  # stages that did work
    skipped: list[str]  # stages whose outputs were already there for the same inputs and settings
    manifest: dict | None


def run_job(cfg: JobConfig, log=print) -> JobResult:
    """The whole weekly job. A stage is skipped when it ran with the same inputs and settings and its outputs are
    still what it wrote (publish: when its run is still in the feature store, online included)."""
    layout = RunLayout(cfg.out)
    repo = cfg.feature_store.open()
    data = load_data(cfg.data.path)
    ran, skipped = [], []

    def stage(name: str, settings: dict, inputs: list[Path], outputs: list[Path], work, live=None) -> None:
        fingerprint = _fingerprint(name, settings, inputs)
        if _done(layout, name, fingerprint, outputs) and (live is None or live()):
            skipped.append(name)
            log(f"== {name}: up to date, skipped")
            return
        log(f"== {name}")
        summary = work() or {}
        _stamp(layout, name, fingerprint, outputs, summary)
        ran.append(name)

    if cfg.features_from == "feast":
        stage("publish-listings", asdict(cfg.feature_store), data.files, [], lambda: _listings(cfg, repo, log))
    train_settings = {
        "split": asdict(cfg.data) | {"path": None},
        "model": asdict(cfg.model),
        "train": asdict(cfg.train),
        "features_from": cfg.features_from,
    }
    init = [cfg.init_from] if cfg.init_from else []
    if cfg.train.compat_weight > 0:  # trained against the latest release: a new release retrains
        init += [p for p in [latest_release_model(repo)] if p is not None]

    def do_train():
        result = train(
            data, layout, cfg.data, cfg.model, cfg.train,
            features_from=cfg.features_from, feature_store=repo, init_from=cfg.init_from,
        )  # fmt: skip
        log(f"   test HR@10 {result.metrics['hr@10']:.4f}, NDCG@10 {result.metrics['ndcg@10']:.4f}")
        return {"hr@10": result.metrics["hr@10"], "ndcg@10": result.metrics["ndcg@10"]}

    stage("train", train_settings, data.files + init, [layout.model], do_train)
    if cfg.evaluate.baselines:

        def do_evaluate():
            rows = evaluate_models(data, layout, cfg.data, cfg.evaluate)
            for r in rows:
                log(f"   {r['model']:18s} HR@10 {r['hr@10']:.4f}  NDCG@10 {r['ndcg@10']:.4f}")
            return {"models": [r["model"] for r in rows]}

        settings = {"split": train_settings["split"], **asdict(cfg.evaluate)}
        stage("evaluate", settings, data.files + [layout.model], [layout.evaluation], do_evaluate)

    def do_embed():
        result = embed(data, layout, layout.model, cfg.embed)
        heads = " and ".join(result.record.heads)
        log(f"   {len(result.users):,} users ({heads} vectors), {len(result.items):,} listings as of {result.cutoff}")
        log(f"   model {result.model_version} ({result.encoder} items); record {layout.record}")
        return {"users": len(result.users), "model_version": result.model_version}

    outputs = [layout.user_embeddings, layout.listing_embeddings, layout.reference, layout.record]
    stage("embed", asdict(cfg.embed), data.files + [layout.model], outputs, do_embed)

    def do_probe():
        result = probe(data, layout, cfg.probe)
        for line in result.report.table().splitlines():
            log(f"   {line}")
        log(f"   the classifier and the pictures take the {result.preferred} vector")
        return {"preferred": result.preferred}

    vectors = [p for p in (layout.user_embeddings, layout.user_profiles, layout.listing_embeddings) if p.exists()]
    stage("probe", asdict(cfg.probe), data.files + vectors + [layout.record], [layout.probe_report], do_probe)

    def do_classify():
        result = classify(data, layout, cfg.classify)
        log(
            f"   fitted on {result.n_train:,} users labelled in the {cfg.classify.label_days:g} days before the cut-off"
        )
        for r in result.table:
            if r["users"] == "all users labelled after the cut-off":
                log(f"   {r['model']:26s} ROC-AUC {r['roc_auc']:.4f} on labels after the cut-off ({r['n']:,} users)")
        return {"classifier_version": result.classifier_version}

    outputs = [layout.scores, layout.classifier, layout.preference_metrics]
    users_in = [layout.preferred_users(), layout.probe_report, layout.record]
    stage("classify", asdict(cfg.classify), data.files + users_in, outputs, do_classify)

    def do_pictures():
        paths = pictures(data, layout, cfg.pictures)
        log(f"   {len(paths)} PNGs in {layout.pictures_dir}")
        return {"pictures": [p.name for p in paths]}

    inputs = [*users_in, layout.listing_embeddings, layout.scores]
    stage("pictures", asdict(cfg.pictures), inputs, [layout.pictures_dir], do_pictures)
    manifest: dict | None = None

    def do_publish():
        nonlocal manifest
        manifest = publish(cfg.data.path, repo, layout, cfg.publish)
        log(f"   {manifest['checks']} checks passed; report {layout.validation_dir / 'report.html'}")
        log(f"   published run {manifest['run_id']} ({repo.target}): {manifest['rows']}")
        return {"run_id": manifest["run_id"]}

    settings = {"repo": str(repo.path), "target": repo.target, **asdict(cfg.publish)}
    inputs = data.files + [*vectors, layout.scores, layout.record]
    stage("publish", settings, inputs, [], do_publish, live=lambda: _still_published(repo, layout))
    if manifest is None and layout.stage_file("publish").exists():
        manifest = repo.manifest(json.loads(layout.stage_file("publish").read_text())["run_id"])
    return JobResult(layout, ran, skipped, manifest)


def _still_published(repo: Repo, layout: RunLayout) -> bool:
    """The run the publish stage recorded is in the feature store: its manifest, and one of its users online with
    the run's model version (a lost or replaced online store, or one past the ttl, publishes again)."""
    from embeddings.feature_store import online_features

    run_id = json.loads(layout.stage_file("publish").read_text()).get("run_id")
    if not run_id or repo.manifest(run_id) is None:
        return False
    user = str(read_parquet(layout.user_embeddings)["user_id"].iloc[0])
    try:
        online = online_features(repo, [user], "user_profile")
    except Exception:  # noqa: BLE001  (any store error: a missing table, an unreachable Redis) means not live
        return False
    return bool(len(online)) and online["model_version"].iloc[0] == RunRecord.read(layout.record).model_version


def evaluate_models(data: Dataset, layout: RunLayout, split: DataConfig, cfg: EvaluateConfig) -> list[dict]:
    """The run's model and ``cfg.baselines`` on the same split: HR@10, NDCG@10 (``layout.evaluation``)."""
    from embeddings.models.zoo import make_model
    from embeddings.stages.evaluate import evaluate

    the_split = split_data(data, split)
    rows = [{"model": "sasrec (this run)", **evaluate(SASRecRecommender.load(layout.model), the_split.test)}]
    for name in cfg.baselines:
        model = make_model(name, the_split, data.listings).fit(the_split)
        rows.append({"model": model.name, **evaluate(model, the_split.test)})
    write_json(layout.evaluation, rows)
    return rows


def _listings(cfg: JobConfig, repo: Repo, log=print) -> dict:
    try:
        run_id = publish_listings(cfg.data.path, repo)["run_id"]
        log(f"   lst features published: run {run_id}")
        return {"run_id": run_id}
    except NothingToPublish:
        log("   every listing version is already in the feature store")
        return {"run_id": None}
