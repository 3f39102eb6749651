"""User embeddings on Spark: the same :class:`~embeddings.stages.embed.Embedder`, one partition of users per task.

The events Parquet (one file or a folder of day partitions) is read by Spark, cut at the cut-off and
hash-partitioned by ``user_id``, so each task holds every click of its users. Each task checks its rows
against the data contract, then embeds them with the checkpoint and listings table broadcast from the driver:
a Python worker loads the model once and keeps it for every later task it runs. The tasks write Parquet
partitions (``part-*.parquet``) into a folder beside ``out``, renamed to ``out`` only when every task has
finished: a failed job leaves no partial output.

Vectors equal the single-machine path's (``Embedder.embed_users`` on the whole table): a user's clicks reach
the task in file order (ties in time keep it), which is the order the first-touch sequence is built from.

For a real cluster: pass ``spark`` (a session built by the scheduler) or ``master``, and paths every executor
can read (shared storage); the checkpoint and listings travel as broadcasts.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from embeddings.data.contract import EVENT_COLUMNS, ContractError, validate_events
from embeddings.errors import InputError
from embeddings.io import utc

ORDER = ("_file", "_row")  # where a click sat in the input: the tie-break of equal timestamps


@dataclass
class SparkEmbedResult:
    path: Path  # the folder of Parquet partitions
    users: int
    partitions: int
    seconds: float


MASTER = re.compile(r"^(local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|yarn|(spark|mesos|k8s)://\S+)$")


def check_spark_master(master: str, timeout_s: float = 5.0) -> None:
    """A clear error within seconds for a master URL Spark cannot use (Spark itself retries for over a minute and
    answers with pages of Java stack trace): the URL's form, and for ``spark://`` that its masters answer."""
    import socket

    if not MASTER.match(master):
        raise InputError(
            f"Spark master {master!r}: not a master URL (local, local[N], local[*], spark://host:port, yarn, "
            "k8s://..., mesos://...)"
        )
    if master.startswith("spark://"):
        for hostport in master.removeprefix("spark://").split(","):
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit():
                raise InputError(f"Spark master {master!r}: {hostport!r} is not host:port")
            try:
                socket.create_connection((host, int(port)), timeout=timeout_s).close()
            except OSError as exc:
                raise InputError(f"Spark master {master!r}: {hostport} does not answer ({exc})") from exc


def spark_session(master: str | None = "local[2]", app: str = "lst-embeddings"):
    """A Spark session in UTC, writing Parquet timestamps as microseconds (the session already running, if any,
    is reused with those settings). Spark's Python workers run this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise InputError("the Spark engine needs pyspark: pip install -e '.[spark]' (and Java 17)") from exc

    if master:
        check_spark_master(master)
    builder = SparkSession.builder.appName(app).config("spark.ui.enabled", "false")
    if master:
        builder = builder.master(master)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # no Java, a master that does not answer: Py4J's and Spark's own errors
        raise InputError(f"Spark did not start (master {master or 'default'}; it needs Java 17): {exc}") from exc
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    return spark


def embed_users_spark(
    events: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    cutoff: pd.Timestamp,
    listings: pd.DataFrame | None = None,
    *,
    profiles_out: str | os.PathLike | None = None,
    spark=None,
    partitions: int | None = None,
    batch_size: int = 256,
    threads_per_task: int = 1,
) -> SparkEmbedResult:
    """Embed every user with a click before ``cutoff``; write ``out`` as a folder of Parquet partitions with the
    columns of ``Embedder.embed_users``. ``listings``: the contract-checked listings table (unknown listings are
    encoded from it by lst models, and clicks are checked against it). ``profiles_out``: with a model that has a
    profile head, its vectors go there in the shape of ``Embedder.split_heads`` and ``out`` keeps the intent ones."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType, LongType, StringType, StructField, StructType, TimestampType

    from embeddings.models.sasrec import SASRecRecommender

    began = time.perf_counter()
    events, out, cutoff = str(events), Path(out), utc(cutoff)
    model = SASRecRecommender.load(checkpoint)  # the driver checks the file and learns the heads
    spark = spark or spark_session()
    sc = spark.sparkContext
    partitions = partitions or max(2, sc.defaultParallelism)
    shared_model = sc.broadcast(Path(checkpoint).read_bytes())
    shared_listings = sc.broadcast(listings)

    frame = spark.read.parquet(events)
    missing = [c.name for c in EVENT_COLUMNS if c.name not in frame.columns]
    if missing:
        raise InputError(f"{events}: column(s) {missing} missing (0 rows read)")
    frame = (
        frame.select(*[c.name for c in EVENT_COLUMNS])
        .withColumn(ORDER[0], F.input_file_name())
        .withColumn(ORDER[1], F.monotonically_increasing_id())
        .where(F.col("event_timestamp") < F.lit(cutoff.to_pydatetime()))
        .repartition(partitions, "user_id")
    )
    fields = [
        StructField("user_id", StringType()),
        StructField("embedding", ArrayType(FloatType())),
        StructField("n_events", LongType()),
        StructField("last_event_at", TimestampType()),
        StructField("model_version", StringType()),
        StructField("event_timestamp", TimestampType()),
    ]
    if "profile" in model.heads:
        fields.insert(2, StructField("profile_embedding", ArrayType(FloatType())))
    problems = sc.accumulator([], _Problems())
    task = _Task(shared_model, model.version, shared_listings, cutoff, batch_size, threads_per_task, events, problems)
    result = frame.mapInPandas(task, StructType(fields))

    # both heads' vectors land here first; the tables finally written are staged as ".<name>.spark-staging"
    staging = out.with_name(f".{out.name}.spark-both")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result.write.parquet(str(staging))
        if problems.value:
            raise _contract_error(events, problems.value)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, InputError):
            raise
        text = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise InputError(f"{events}: the Spark embedding job failed: {text}") from exc
    finally:
        shared_model.unpersist()
        shared_listings.unpersist()
    files = sorted(staging.glob("*.parquet"))
    users = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if users == 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"{events}: no user has a usable click before the cut-off {cutoff}")
    if "profile" in model.heads:
        _split_heads(spark, staging, out, Path(profiles_out) if profiles_out else None)
    else:
        _replace(staging, out)
    return SparkEmbedResult(out, users, len(files), time.perf_counter() - began)


def _split_heads(spark, staging: Path, out: Path, profiles_out: Path | None) -> None:
    """The intent table to ``out`` and the profile table to ``profiles_out``, as ``Embedder.split_heads`` does."""
    from pyspark.sql import functions as F

    from embeddings.stages.embed import PROFILE_SUFFIX

    both = spark.read.parquet(str(staging))
    tables = {out: both.drop("profile_embedding")}
    if profiles_out is not None:
        profile = both.withColumn("embedding", F.col("profile_embedding")).drop("profile_embedding")
        tables[profiles_out] = profile.withColumn("model_version", F.concat("model_version", F.lit(PROFILE_SUFFIX)))
    written = {}
    try:
        for path, frame in tables.items():
            written[path] = path.with_name(f".{path.name}.spark-staging")
            shutil.rmtree(written[path], ignore_errors=True)
            frame.write.parquet(str(written[path]))
    except Exception:
        for path in written.values():
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for path, ready in written.items():
        _replace(ready, path)


def _replace(ready: Path, path: Path) -> None:
    """``ready`` (a finished folder) becomes ``path``; what was there before (a file or folder) goes."""
    old = path.with_name(f".{path.name}.replaced")
    if path.exists():
        path.rename(old)
    ready.rename(path)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)


class _Problems:  # a pyspark AccumulatorParam
    """Contract violations the tasks found: (column, problem, rows, examples) per task, summed on the driver."""

    def zero(self, value):
        return []

    def addInPlace(self, a, b):  # noqa: N802 (Spark's name)
        return a + b


def _contract_error(source: str, found: list[tuple]) -> ContractError:
    """One error over every partition: the first kind of violation with its rows summed across partitions."""
    column, problem = found[0][0], found[0][1]
    same = [f for f in found if (f[0], f[1]) == (column, problem)]
    examples = list(dict.fromkeys(x for f in same for x in f[3]))
    return ContractError(source, column, sum(f[2] for f in same), problem, examples)


_MODELS: dict[str, object] = {}  # per Python worker: model version -> Embedder, loaded once


class _Task:
    """What each Spark task runs over its partition (picklable: broadcasts and plain settings only)."""

    def __init__(self, model, version, listings, cutoff, batch_size, threads, source, problems):
        self.model, self.version, self.listings, self.cutoff = model, version, listings, cutoff
        self.batch_size, self.threads, self.source, self.problems = batch_size, threads, source, problems

    def embedder(self):
        if self.version not in _MODELS:
            import io

            import torch

            from embeddings.models.sasrec import SASRecRecommender
            from embeddings.stages.embed import Embedder

            torch.set_num_threads(self.threads)
            state = torch.load(io.BytesIO(self.model.value), map_location="cpu", weights_only=True)
            _MODELS[self.version] = Embedder(SASRecRecommender.from_state(state), self.listings.value)
        return _MODELS[self.version]

    def __call__(self, batches):
        frames = [b for b in batches if len(b)]
        if not frames:
            return
        rows = pd.concat(frames, ignore_index=True).sort_values(["user_id", "event_timestamp", *ORDER])
        try:
            clicks = validate_events(rows.drop(columns=list(ORDER)), self.listings.value, source=self.source)
        except ContractError as exc:  # reported with every other partition's by the driver; no rows from here
            self.problems.add([(exc.column, exc.problem, exc.n_rows, exc.examples)])
            return
        users = self.embedder().embed_users(clicks, self.cutoff, self.batch_size, progress=False)
        for start in range(0, len(users), 10_000):
            yield users.iloc[start : start + 10_000]
