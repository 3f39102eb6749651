"""Parquet written by ``lst-embeddings publish`` under ``data/offline`` beside this file: one file per
run in each folder, never rewritten. The offline store reads every file of a folder through the glob: DuckDB
(``FileSource``, the local and Redis targets) or Spark (``SparkSource``, the Spark target: lst-embeddings sets
``LST_OFFLINE_STORE=spark`` while it reads these definitions for that profile).

The DuckDB sources name their files relative to this folder (``data/offline/...``), so the registry holds no
absolute path and the repo works wherever it is copied or moved. Feast's DuckDB store resolves such a path
against the working folder: point-in-time joins run with the repo as the working folder (the ``feast`` CLI inside
it; in Python ``contextlib.chdir("feature_repo")``). Spark resolves paths on its own cluster: absolute there."""

import os
from pathlib import Path

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

DATA = Path(__file__).resolve().parent / "data" / "offline"
OFFLINE_STORE = os.environ.get("LST_OFFLINE_STORE", "duckdb")


def _runs(table: str) -> str:
    if OFFLINE_STORE == "spark":
        return str(DATA / table / "*.parquet")
    return f"data/offline/{table}/*.parquet"


def _parquet_runs(name: str, table: str, description: str):
    """The runs of one table as the target's offline store reads them."""
    common = {"timestamp_field": "event_timestamp", "created_timestamp_column": "published_at"}
    if OFFLINE_STORE == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=_runs(table), file_format="parquet", description=description, **common)
    return FileSource(name=name, path=_runs(table), file_format=ParquetFormat(), description=description, **common)


listing_lst_source = _parquet_runs(
    "listing_lst_source",
    "listings",
    "Versions of each listing's lst features; event_timestamp = when the version became true.",
)

listing_embedding_source = _parquet_runs(
    "listing_embedding_source",
    "listing_embeddings",
    "Listing vectors from the SASRec item encoder; event_timestamp = the run's cut-off.",
)

user_embedding_source = _parquet_runs(
    "user_embedding_source",
    "user_embeddings",
    "SASRec user states after the clicks before the run's cut-off (event_timestamp).",
)

user_profile_source = _parquet_runs(
    "user_profile_source",
    "user_profiles",
    "SASRec profile-head vectors (trained on the user's next clicks over a horizon) as of the cut-off.",
)

user_preference_source = _parquet_runs(
    "user_preference_source",
    "user_preference",
    "Rent/sale preference scores from the CatBoost classifier on user embeddings.",
)

# the stream worker (lst-embeddings stream) pushes fresh user vectors and scores, and new listings' vectors, through
# these: online per micro-batch, offline as files of their own beside the runs' (never a rewrite)
user_embedding_push = PushSource(name="user_embedding_push", batch_source=user_embedding_source)
user_profile_push = PushSource(name="user_profile_push", batch_source=user_profile_source)
user_preference_push = PushSource(name="user_preference_push", batch_source=user_preference_source)
listing_lst_push = PushSource(name="listing_lst_push", batch_source=listing_lst_source)
listing_embedding_push = PushSource(name="listing_embedding_push", batch_source=listing_embedding_source)
