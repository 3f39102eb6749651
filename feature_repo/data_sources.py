"""Parquet written by ``lst-embeddings publish`` under ``data/offline`` beside this file: one file per
run in each folder, never rewritten. DuckDB reads every file of a folder through the glob."""

from pathlib import Path

from feast import FileSource
from feast.data_format import ParquetFormat

DATA = Path(__file__).resolve().parent / "data" / "offline"


def _runs(table: str) -> str:
    return str(DATA / table / "*.parquet")


listing_lst_source = FileSource(
    name="listing_lst_source",
    path=_runs("listings"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="published_at",
    description="Versions of each listing's lst features; event_timestamp = when the version became true.",
)

listing_embedding_source = FileSource(
    name="listing_embedding_source",
    path=_runs("listing_embeddings"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="published_at",
    description="Listing vectors from the SASRec item encoder; event_timestamp = the run's cut-off.",
)

user_embedding_source = FileSource(
    name="user_embedding_source",
    path=_runs("user_embeddings"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="published_at",
    description="SASRec user states after the clicks before the run's cut-off (event_timestamp).",
)

user_profile_source = FileSource(
    name="user_profile_source",
    path=_runs("user_profiles"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="published_at",
    description="SASRec profile-head vectors (trained on the user's next clicks over a horizon) as of the cut-off.",
)

user_preference_source = FileSource(
    name="user_preference_source",
    path=_runs("user_preference"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="published_at",
    description="Rent/sale preference scores from the CatBoost classifier on user embeddings.",
)
