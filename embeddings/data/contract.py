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
from collections.abc import Callable, Iterable
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
MAX_FUTURE_SKEW_HOURS = 1  # clicks stamped after now (clock skew) are allowed up to this


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


def _as_timestamps(s: pd.Series) -> pd.Series:
    """UTC timestamps; unparsable values become NaT (naive values are read as UTC)."""
    if pd.api.types.is_datetime64_any_dtype(s):
        out = s
    else:
        out = pd.to_datetime(s.astype(object).where(s.notna(), None), utc=True, errors="coerce", format="ISO8601")
    out = out.dt.tz_localize("UTC") if out.dt.tz is None else out.dt.tz_convert("UTC")
    return out.astype("datetime64[us, UTC]")


def valid_rows(s: pd.Series, col: Column) -> pd.Series:
    """True for each value that meets the column's rule (type, not null, not empty, domain, minimum).

    The one definition of a column's rule: the loaders refuse a table with any False, and the Great
    Expectations suites check the same flags (``validation.checks``), so the two never disagree.
    """
    ok = s.notna()
    if col.kind == "string":
        ok &= s.map(lambda v: isinstance(v, str) and len(v) > 0).astype(bool)
    elif col.kind in ("int", "float"):
        if pd.api.types.is_bool_dtype(s):
            return pd.Series(False, index=s.index)
        num = pd.to_numeric(s, errors="coerce").astype("float64")
        ok &= np.isfinite(num)
        if col.kind == "int":
            ok &= (num % 1) == 0
        if col.min_value is not None:
            ok &= ~(num < col.min_value)
    else:
        ok &= _as_timestamps(s).notna()
    if col.domain is not None:
        ok &= s.isin(col.domain)
    return ok


def _coerce_column(df: pd.DataFrame, col: Column, source: str) -> pd.Series:
    """Return the column converted to its contract type, or raise naming the bad rows and the problem."""
    s = df[col.name]
    ok = valid_rows(s, col)
    if not ok.all():
        raise ContractError(source, col.name, int((~ok).sum()), _problem(s[~ok], col), _examples(s[~ok].astype(str)))
    if col.kind == "string":
        return s.astype(object)
    if col.kind == "int":
        return s.astype("int64")
    if col.kind == "float":
        return s.astype("float64")
    return _as_timestamps(s)


def _problem(bad: pd.Series, col: Column) -> str:
    """What is wrong with values that broke ``col``'s rule, in words (each kind of fault found, with its count when
    there are several)."""
    if col.kind in ("int", "float") and not pd.api.types.is_bool_dtype(bad):
        num = pd.to_numeric(bad, errors="coerce").astype("float64")
        kinds = {
            "null or NaN values": int(bad.isna().sum()),
            "infinite values": int(np.isinf(num).sum()),
            f"expected numbers, found {bad.dtype}": int((num.isna() & bad.notna()).sum()),
        }
        found = {k: n for k, n in kinds.items() if n}
        if len(found) > 1:
            return ", ".join(f"{n} {k}" for k, n in found.items())
        if found:
            return next(iter(found))
    if bad.isna().any():
        return "null values"
    if col.kind == "string":
        if not bad.map(lambda v: isinstance(v, str)).all():
            return "non-string values"
        if (bad.str.len() == 0).any():
            return "empty strings"
    if col.kind in ("int", "float"):
        num = pd.to_numeric(bad, errors="coerce")
        if pd.api.types.is_bool_dtype(bad) or num.isna().any():
            return f"expected numbers, found {bad.dtype}"
        if col.kind == "int" and ((num % 1) != 0).any():
            return "non-integer values"
        if col.min_value is not None and (num < col.min_value).any():
            return f"values below {col.min_value}"
    if col.kind == "timestamp" and _as_timestamps(bad).isna().any():
        return "unparsable timestamps"
    return f"values outside the allowed {list(col.domain or ())}"


@dataclass(frozen=True)
class RowRule:
    """A rule across columns: ``check(table, listings)`` is True for each row that meets it."""

    name: str  # the flag's column name in the checks' tables
    column: str  # the column a failure is reported on
    problem: str
    check: Callable[[pd.DataFrame, pd.DataFrame | None], pd.Series]


def _created_at(listings: pd.DataFrame) -> pd.Series:
    return _as_timestamps(listings["created_at"]).groupby(listings["item_id"].to_numpy()).min()


def _not_future(ts: pd.Series) -> pd.Series:
    return ts <= pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=MAX_FUTURE_SKEW_HOURS)


LISTING_RULES: tuple[RowRule, ...] = (
    RowRule(
        "floor_within_building",
        "floor",
        "floor above floors_total",
        lambda t, _: pd.to_numeric(t["floor"], errors="coerce") <= pd.to_numeric(t["floors_total"], errors="coerce"),
    ),
    RowRule(
        "version_after_created",
        "event_timestamp",
        "version earlier than created_at",
        lambda t, _: _as_timestamps(t["event_timestamp"]) >= _as_timestamps(t["created_at"]),
    ),
)

EVENT_RULES: tuple[RowRule, ...] = (
    RowRule(
        "click_after_listing_created",
        "event_timestamp",
        "clicks before the listing's created_at",
        lambda t, listings: (
            pd.Series(True, index=t.index)
            if listings is None
            else ~(_as_timestamps(t["event_timestamp"]) < t["item_id"].map(_created_at(listings)))
        ),
    ),
    RowRule(
        "not_in_the_future",
        "event_timestamp",
        f"clicks more than {MAX_FUTURE_SKEW_HOURS} h after now (clock skew)",
        lambda t, _: _not_future(_as_timestamps(t["event_timestamp"])),
    ),
)


def rule_flags(table: pd.DataFrame, rules: Iterable[RowRule], listings: pd.DataFrame | None = None) -> dict:
    """``{rule name: per-row bool}`` for the rules whose columns ``table`` (and ``listings``) have."""
    out = {}
    for rule in rules:
        try:
            out[rule.name] = rule.check(table, listings).fillna(False).astype(bool)
        except KeyError:  # a missing column is reported by its own expectation
            continue
    return out


def _apply_rules(table: pd.DataFrame, rules, listings, source: str, key: str) -> None:
    for rule in rules:
        ok = rule.check(table, listings).fillna(False).astype(bool)
        if not ok.all():
            raise ContractError(source, rule.column, int((~ok).sum()), rule.problem, _examples(table.loc[~ok, key]))


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
    _apply_rules(out, LISTING_RULES, None, source, "item_id")
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
    if out.empty:
        raise ContractError(source, None, 0, "no events")
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
    _apply_rules(out, EVENT_RULES, listings, source, "user_id")
    # stable sort keeps the file's order for equal timestamps
    return out.sort_values(["user_id", "event_timestamp"], kind="stable").reset_index(drop=True)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """One Parquet file, or a folder of them read as one table (hive partitions such as ``day=2026-11-02/``, as
    Spark writes them; the partition key columns are dropped: they repeat what the rows say)."""
    path = Path(path)
    if not path.exists():
        raise ContractError(str(path), None, 0, "file not found")
    try:
        if not path.is_dir():
            return pq.read_table(path).to_pandas()
        if not any(path.rglob("*.parquet")):
            raise ContractError(str(path), None, 0, "a folder without Parquet files")
        _same_types(path)
        table = pq.read_table(path, partitioning="hive")
        keys = {d.name.split("=", 1)[0] for d in path.rglob("*=*") if d.is_dir()}
        return table.drop_columns(sorted(keys & set(table.column_names))).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(str(path), None, 0, f"not a readable Parquet file: {exc}") from exc


def _same_types(folder: Path) -> None:
    """Every partition file's columns have the types of the other files' (Arrow would cast a partition to the
    first file's types without a word: an int64 ``item_id`` becomes strings that then match no listing)."""
    from collections import Counter

    files = sorted(folder.rglob("*.parquet"))
    schemas = {f: pq.read_schema(f) for f in files}
    types: dict[str, Counter] = {}
    for schema in schemas.values():
        for field in schema:
            types.setdefault(field.name, Counter())[str(field.type)] += 1
    for name, seen in types.items():
        if len(seen) < 2:
            continue
        usual = seen.most_common(1)[0][0]
        for file, schema in schemas.items():
            if name in schema.names and str(schema.field(name).type) != usual:
                rows = pq.ParquetFile(file).metadata.num_rows
                raise ContractError(
                    str(file), name, rows, f"type {schema.field(name).type}, while the other partitions have {usual}"
                )


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
