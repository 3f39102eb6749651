"""The data contract: what a listings table and a click-events table must hold.

One loader per table. Each reads Parquet, checks column presence, types, nulls and
value domains, and raises :class:`ContractError` naming the file, the column, how many
rows are wrong and a few examples. Nothing is ever written by a loader, and every writer
in the package goes through ``embeddings.io.write_atomic``, so a failed run leaves no
partial file behind. The same column table drives the Great Expectations suites
(``validation/suites.py``) and the Feast schema (``feature_repo/``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from embeddings.errors import InputError

DEAL_TYPES = ("rent", "sale")
PROPERTY_TYPES = ("flat", "room", "house", "townhouse")
EVENT_TYPES = ("view", "favorite", "contact")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "string" | "int" | "float" | "timestamp"
    domain: tuple[str, ...] | None = None
    min_value: float | None = None
    doc: str = ""


LISTING_COLUMNS: tuple[Column, ...] = (
    Column("item_id", "string", doc="listing id"),
    Column("deal_type", "string", DEAL_TYPES, doc="rent or sale"),
    Column("property_type", "string", PROPERTY_TYPES, doc="flat, room, house, townhouse"),
    Column("city", "string", doc="city name"),
    Column("district", "string", doc="district inside the city"),
    Column("rooms", "int", min_value=0, doc="number of rooms, 0 = studio"),
    Column("area_m2", "float", min_value=1.0, doc="total area, m2"),
    Column("floor", "int", doc="floor of the flat (0 = ground)"),
    Column("floors_total", "int", min_value=1, doc="floors in the building"),
    Column("price", "float", min_value=1.0, doc="price; monthly for rent"),
    Column("lat", "float", doc="latitude, WGS84"),
    Column("lon", "float", doc="longitude, WGS84"),
    Column("created_at", "timestamp", doc="when the listing was first published (UTC)"),
    Column("event_timestamp", "timestamp", doc="when this version of the features became true"),
)

EVENT_COLUMNS: tuple[Column, ...] = (
    Column("user_id", "string", doc="user id"),
    Column("item_id", "string", doc="listing id, must exist in the listings table"),
    Column("event_timestamp", "timestamp", doc="when the click happened (UTC)"),
    Column("event_type", "string", EVENT_TYPES, doc="view, favorite or contact"),
)


class ContractError(InputError):
    """Input that breaks the data contract. The message names file, column, count, examples."""

    def __init__(self, source: str, column: str | None, n_rows: int, problem: str, examples=()):
        self.source, self.column, self.n_rows, self.problem = source, column, n_rows, problem
        self.examples = list(examples)[:5]
        where = f"column '{column}'" if column else "table"
        shown = ", ".join(repr(x) for x in self.examples)
        msg = f"{source}: {where}: {problem} ({n_rows} row{'s' if n_rows != 1 else ''})"
        super().__init__(msg + (f"; e.g. {shown}" if shown else ""))


def _examples(values: pd.Series) -> list:
    return values.drop_duplicates().head(5).tolist()


def _coerce_column(df: pd.DataFrame, col: Column, source: str) -> pd.Series:
    """Return the column converted to its contract type, or raise naming the bad rows."""
    s = df[col.name]
    nulls = s.isna()
    if nulls.any():
        rows = list(df.index[nulls][:5])
        raise ContractError(source, col.name, int(nulls.sum()), "null values", [f"row {r}" for r in rows])
    if col.kind == "string":
        if not (pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s)):
            raise ContractError(source, col.name, len(s), f"expected strings, found {s.dtype}", _examples(s))
        not_str = ~s.map(lambda v: isinstance(v, str))
        if not_str.any():
            raise ContractError(source, col.name, int(not_str.sum()), "non-string values", _examples(s[not_str]))
        empty = s.str.len() == 0
        if empty.any():
            raise ContractError(source, col.name, int(empty.sum()), "empty strings")
        out = s.astype(object)
    elif col.kind in ("int", "float"):
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            raise ContractError(source, col.name, len(s), f"expected numbers, found {s.dtype}", _examples(s))
        if col.kind == "int":
            frac = (s.astype("float64") % 1) != 0
            if frac.any():
                raise ContractError(source, col.name, int(frac.sum()), "non-integer values", _examples(s[frac]))
            out = s.astype("int64")
        else:
            out = s.astype("float64")
            bad = ~np.isfinite(out)
            if bad.any():
                raise ContractError(source, col.name, int(bad.sum()), "NaN or infinite values", _examples(s[bad]))
    else:  # timestamp
        if pd.api.types.is_datetime64_any_dtype(s):
            out = s
        else:
            out = pd.to_datetime(s, utc=True, errors="coerce", format="ISO8601")
            bad = out.isna()
            if bad.any():
                raise ContractError(source, col.name, int(bad.sum()), "unparsable timestamps", _examples(s[bad]))
        out = out.dt.tz_localize("UTC") if out.dt.tz is None else out.dt.tz_convert("UTC")
        out = out.astype("datetime64[us, UTC]")
    if col.domain is not None:
        bad = ~out.isin(col.domain)
        if bad.any():
            raise ContractError(
                source, col.name, int(bad.sum()), f"values outside {list(col.domain)}", _examples(out[bad])
            )
    if col.min_value is not None:
        bad = out < col.min_value
        if bad.any():
            raise ContractError(source, col.name, int(bad.sum()), f"values below {col.min_value}", _examples(out[bad]))
    return out


def validate_frame(df: pd.DataFrame, columns: Iterable[Column], source: str) -> pd.DataFrame:
    """Check ``df`` against ``columns``; return a copy with contract types, contract columns first."""
    columns = tuple(columns)
    missing = [c.name for c in columns if c.name not in df.columns]
    if missing:
        raise ContractError(source, missing[0], len(df), f"missing column (all missing: {missing})")
    df = df.reset_index(drop=True)
    out = pd.DataFrame({c.name: _coerce_column(df, c, source) for c in columns})
    extra = [c for c in df.columns if c not in out.columns]
    for c in extra:
        out[c] = df[c]
    return out


def validate_listings(df: pd.DataFrame, source: str = "listings") -> pd.DataFrame:
    out = validate_frame(df, LISTING_COLUMNS, source)
    bad = out["floor"] > out["floors_total"]
    if bad.any():
        raise ContractError(
            source, "floor", int(bad.sum()), "floor above floors_total", _examples(out.loc[bad, "item_id"])
        )
    bad = out["event_timestamp"] < out["created_at"]
    if bad.any():
        raise ContractError(
            source,
            "event_timestamp",
            int(bad.sum()),
            "version earlier than created_at",
            _examples(out.loc[bad, "item_id"]),
        )
    dup = out.duplicated(["item_id", "event_timestamp"])
    if dup.any():
        raise ContractError(
            source,
            "item_id",
            int(dup.sum()),
            "duplicate (item_id, event_timestamp) versions",
            _examples(out.loc[dup, "item_id"]),
        )
    return out.sort_values(["item_id", "event_timestamp"], kind="stable").reset_index(drop=True)


def validate_events(df: pd.DataFrame, listings: pd.DataFrame | None, source: str = "events") -> pd.DataFrame:
    out = validate_frame(df, EVENT_COLUMNS, source)
    if listings is not None:
        unknown = ~out["item_id"].isin(set(listings["item_id"]))
        if unknown.any():
            raise ContractError(
                source,
                "item_id",
                int(unknown.sum()),
                "listings unknown to the listings table",
                _examples(out.loc[unknown, "item_id"]),
            )
    # stable sort keeps the file's order for equal timestamps
    return out.sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ContractError(str(path), None, 0, "file not found")
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(str(path), None, 0, f"not a readable Parquet file: {exc}") from exc


def load_listings(path: str | os.PathLike) -> pd.DataFrame:
    return validate_listings(read_parquet(path), source=str(path))


def load_events(path: str | os.PathLike, listings: pd.DataFrame | None) -> pd.DataFrame:
    return validate_events(read_parquet(path), listings, source=str(path))


def load_dataset(data_dir: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load ``listings.parquet`` and ``events.parquet`` from a folder, both checked."""
    data_dir = Path(data_dir)
    listings = load_listings(data_dir / "listings.parquet")
    events = load_events(data_dir / "events.parquet", listings)
    return listings, events


def latest_versions(listings: pd.DataFrame, as_of: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per listing: its newest version at ``as_of`` (or overall).

    Listings whose first version is after ``as_of`` keep their first version, so a model
    can still encode a listing published later from the features it was published with.
    """
    df = listings
    if as_of is not None:
        known = df[df["event_timestamp"] <= as_of]
        first = df.drop_duplicates("item_id", keep="first")
        df = pd.concat([known, first[~first["item_id"].isin(known["item_id"])]])
    return df.sort_values(["item_id", "event_timestamp"]).drop_duplicates("item_id", keep="last").reset_index(drop=True)
