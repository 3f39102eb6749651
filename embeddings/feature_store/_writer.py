"""Writing one run into the feature repo. Private: call the pipeline's ``publish``, which checks the run first.

:func:`write_run`, under an exclusive lock on the repo (a second publisher waits, then fails clearly):

1. refuses a run id already published with other content, and a run older than the latest published one
   unless forced with a reason;
2. adds the run's tables to the offline Parquet sources as new files named by the run id (earlier runs'
   files are never rewritten; a file already there with the same content is reused, which makes a rerun
   after a crash continue where it stopped);
3. applies the feature repo and materializes the run's interval into the online store. With SQLite this
   happens on a private copy of the online database, whose tables then replace the live ones inside one
   transaction of the live database: readers already connected (a running ``feast serve``) see the old
   run or the new one, never a mix, and never a deleted file;
4. records a manifest (run id, model versions, content hash, row counts, interval, time) under ``manifests/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from embeddings.errors import InputError, NothingToPublish, PublishError
from embeddings.feature_store._materialize import default_writers, materialize
from embeddings.feature_store.repo import LISTING_FEATURES, PROFILE_COLUMNS, REDIS_TARGETS, SPARK_TARGETS, VIEWS, Repo
from embeddings.io import kill_point, utc, write_atomic, write_json
from embeddings.record import RunRecord

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CONTENT_KEY = b"lst_embeddings.content_sha256"
LOCK_WAIT_S = 600.0  # how long a publisher waits for another one to finish
REDIS_LOCK_TTL_S = 3600  # a crashed publisher's Redis lock expires after this


def run_id_for(cutoff: pd.Timestamp, model_version: str) -> str:
    if not SAFE_NAME.match(model_version):
        raise InputError(f"model_version {model_version[:80]!r} is not a plain name (letters, digits, '-', '_')")
    return f"{utc(cutoff):%Y%m%dT%H%M%SZ}-{model_version}"


def _inside(folder: Path, path: Path) -> Path:
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"{path}: outside {folder}")
    return path


@contextlib.contextmanager
def publish_lock(repo: Repo, wait_s: float | None = None):
    """One publisher per repo at a time: the next one waits up to ``wait_s``, then fails (never half-runs).

    A file lock in the repo's data folder (publishers on one machine or one shared folder), and with the
    Redis targets also a lock in Redis itself (publishers anywhere that reach the same Redis).
    """
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    busy = f"{repo.path}: another publish has held the lock for over {wait_s:.0f} s; nothing was changed"
    repo.data.mkdir(parents=True, exist_ok=True)
    with open(repo.data / "publish.lock", "a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PublishError(busy) from None
                time.sleep(0.2)
        try:
            with _redis_lock(repo, max(deadline - time.monotonic(), 0.1), busy):
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _redis_lock(repo: Repo, wait_s: float, busy: str):
    if repo.target not in REDIS_TARGETS:
        yield
        return
    client = repo.redis()
    lock = client.lock(f"lst_embeddings:publish:{repo.config().project}", timeout=REDIS_LOCK_TTL_S)
    if not lock.acquire(blocking=True, blocking_timeout=wait_s):
        raise PublishError(busy)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # expired after REDIS_LOCK_TTL_S: nothing left to give back
            lock.release()


def content_hash(tables: dict[str, pd.DataFrame | None]) -> str:
    """A hash of the rows a run publishes (independent of when it is published)."""
    digest = hashlib.sha256()
    for name in sorted(tables):
        df = tables[name]
        if df is None:
            continue
        digest.update(name.encode())
        for col in sorted(df.columns):
            values = df[col]
            digest.update(col.encode())
            if values.dtype == object and len(values) and isinstance(values.iloc[0], (list, np.ndarray)):
                digest.update(np.stack(values.to_numpy()).astype(np.float32).tobytes())
            else:
                digest.update(pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _new_listing_versions(repo: Repo, listings: pd.DataFrame, own_file: Path) -> pd.DataFrame:
    """Listing versions not yet in the offline source (this run's own file aside)."""
    folder = repo.data / "offline" / "listings"
    seen = [
        pq.read_table(p, columns=["item_id", "event_timestamp"]).to_pandas()
        for p in sorted(folder.glob("*.parquet"))
        if p != own_file
    ]
    if not seen:
        return listings
    known = pd.concat(seen).drop_duplicates()
    merged = listings.merge(known.assign(_known=True), on=["item_id", "event_timestamp"], how="left")
    return listings[merged["_known"].isna().to_numpy()]


def _offline_table(name: str, df: pd.DataFrame, published_at: pd.Timestamp) -> pd.DataFrame:
    df = df.copy()
    if name == "listings":
        df = df[["item_id", *LISTING_FEATURES, "event_timestamp"]]
    if name in ("listing_embeddings", "user_embeddings", "user_profiles"):
        df["embedding"] = df["embedding"].map(lambda v: [float(x) for x in v])
    if name == "user_embeddings":  # Unix seconds: Feast's online types carry no time zone
        df["last_event_at"] = df["last_event_at"].astype("datetime64[us, UTC]").astype("int64") // 1_000_000
    if name == "user_profiles":  # names of their own, so a service with both views has no clashing features
        df = df[["user_id", "embedding", "model_version", "event_timestamp"]].rename(columns=PROFILE_COLUMNS)
    df["published_at"] = published_at
    for col in df.columns:  # microseconds: Spark's offline store cannot read nanosecond Parquet timestamps
        if isinstance(df[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(df[col]):
            df[col] = df[col].astype("datetime64[us, UTC]" if getattr(df[col].dt, "tz", None) else "datetime64[us]")
    return df


def _write_offline(df: pd.DataFrame, path: Path, content: str) -> None:
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), CONTENT_KEY: content.encode()})
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def _file_content(path: Path) -> str | None:
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(CONTENT_KEY)
    return value.decode() if value else None


def write_run(
    repo: Repo,
    listings: pd.DataFrame,
    user_embeddings: pd.DataFrame | None = None,
    listing_embeddings: pd.DataFrame | None = None,
    preference: pd.DataFrame | None = None,
    extra_manifest: dict | None = None,
    force_older: str | None = None,
    fail_before_swap: bool = False,
    user_profiles: pd.DataFrame | None = None,
    writers: int | None = None,
    record: RunRecord | None = None,
) -> dict:
    """Write one run (or, with only ``listings``, new lst feature versions); returns the manifest.

    ``record``: the run's cut-off and model versions (``embed``'s record; tables built by hand get one from their
    first row).

    ``force_older`` (a reason, recorded) publishes a run older than the latest published one.
    ``fail_before_swap`` stops just before the online update, for tests of the failure path.
    ``writers``: processes writing the online store (default: one for SQLite, one per core otherwise).
    """
    with publish_lock(repo):
        return _write_run(
            repo,
            listings,
            user_embeddings,
            listing_embeddings,
            preference,
            extra_manifest,
            force_older,
            fail_before_swap,
            user_profiles,
            writers,
            record,
        )


def _write_run(
    repo,
    listings,
    user_embeddings,
    listing_embeddings,
    preference,
    extra,
    force_older,
    fail_before_swap,
    profiles,
    writers,
    record,
):
    began = time.perf_counter()
    published_at = pd.Timestamp.now(tz="UTC").floor("s")
    tables = {
        "listings": listings,
        "listing_embeddings": listing_embeddings,
        "user_embeddings": user_embeddings,
        "user_profiles": profiles,
        "user_preference": preference,
    }
    if user_embeddings is not None:
        record = record or RunRecord.of_vectors(user_embeddings, profiles)
        cutoff, model_version = record.cutoff, record.model_version
        run_id = run_id_for(cutoff, model_version)
        content = content_hash({k: v for k, v in tables.items() if k != "listings"})  # listings: deduplicated
        _refuse_stale_or_changed(repo, run_id, cutoff, content, force_older)
    else:
        cutoff, model_version = utc(listings["event_timestamp"].max()), None
        run_id = f"{cutoff:%Y%m%dT%H%M%SZ}-listings"
        content = content_hash({"listings": listings})
    run: dict[str, pd.DataFrame] = {}
    for name, df in tables.items():
        if df is None:
            continue
        path = _inside(repo.data, repo.run_file(name, run_id))
        if path.exists():
            if _file_content(path) != content:
                raise PublishError(f"{path}: holds other rows for run {run_id}; nothing was changed")
            run[name] = pq.read_table(path).to_pandas()  # a rerun after a crash: publish exactly those rows
            continue
        if name == "listings":
            df = _new_listing_versions(repo, df, path)
        if len(df):
            run[name] = _offline_table(name, df, published_at)
            _write_offline(run[name], path, content)
    if not run:
        raise NothingToPublish("nothing to publish: every listing version is already in the feature store")

    offline_s = time.perf_counter() - began
    _record_published(repo, run, run_id, published_at)
    store, writes = _materialize(repo, run, fail_before_swap, writers)
    expiring = _expire_redis(repo, store, run) if repo.target in REDIS_TARGETS else None
    manifest = {
        "run_id": run_id,
        "cutoff": cutoff.isoformat(),
        "model_version": model_version,
        "profile_model_version": record.profile_model_version if record else None,
        "space_version": record.space_version if record else None,
        "encoder": record.encoder if record else None,
        "classifier_version": str(preference["classifier_version"].iloc[0]) if preference is not None else None,
        "content_sha256": content,
        "rows": {name: len(df) for name, df in run.items()},
        "target": repo.target,
        "project": store.project,
        "published_at": published_at.isoformat(),
        "seconds": round(time.perf_counter() - began, 3),
        "offline_write_seconds": round(offline_s, 3),
        "materialized": writes,
        **({"redis_keys_expiring": expiring} if expiring is not None else {}),
        **({"forced_older": force_older} if force_older else {}),
        **(extra or {}),
    }
    write_json(_inside(repo.data, repo.data / "manifests" / f"{run_id}.json"), manifest)
    return manifest


VECTOR_COLUMNS = {
    "listing_embeddings": "embedding",
    "user_embeddings": "embedding",
    "user_profiles": "profile_embedding",
}
VERSION_COLUMNS = {
    "listing_embeddings": "model_version",
    "user_embeddings": "model_version",
    "user_profiles": "profile_model_version",
    "user_preference": "classifier_version",
}


def _record_published(repo: Repo, run: dict[str, pd.DataFrame], run_id: str, published_at: pd.Timestamp) -> None:
    """``data/published.json``: per view, what this publish put in it (vector_dim, model_version, run_id,
    published_at); ``feature_views.py`` reads it, so the registry describes the vectors it serves."""
    path = repo.data / "published.json"
    try:
        record = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        record = {}
    for name, df in run.items():
        if name not in VERSION_COLUMNS or not len(df):
            continue
        entry = {"model_version": str(df[VERSION_COLUMNS[name]].iloc[0]), "run_id": run_id}
        if name in VECTOR_COLUMNS:
            entry["vector_dim"] = len(df[VECTOR_COLUMNS[name]].iloc[0])
        record[VIEWS[name]] = {**entry, "published_at": published_at.isoformat()}
    write_json(_inside(repo.data, path), record)


def _refuse_stale_or_changed(repo: Repo, run_id: str, cutoff: pd.Timestamp, content: str, force_older: str | None):
    same = repo.manifest(run_id)
    if same is not None and same.get("content_sha256") not in (None, content):
        raise PublishError(
            f"run {run_id} was already published with other content; a changed run needs a new model version "
            "or cut-off. Nothing was changed"
        )
    latest = repo.latest_run()
    if latest is not None and latest["run_id"] != run_id and utc(latest["cutoff"]) > cutoff and not force_older:
        raise PublishError(
            f"run {run_id} (cut-off {cutoff}) is older than the published run {latest['run_id']}; publishing it "
            "would roll the online store back. Pass a reason to force it (recorded). Nothing was changed"
        )


def _interval(run: dict[str, pd.DataFrame]):
    start = min(pd.Timestamp(df["event_timestamp"].min()) for df in run.values() if len(df))
    end = max(pd.Timestamp(df["event_timestamp"].max()) for df in run.values() if len(df)) + timedelta(seconds=1)
    return start.to_pydatetime() - timedelta(seconds=1), end.to_pydatetime()


def _materialize(repo: Repo, run: dict[str, pd.DataFrame], fail_before_swap: bool, writers: int | None):
    """Apply the repo and load the run's interval into the online store (atomically for SQLite).

    The Spark profile materializes with Feast's Spark engine; the others with :mod:`._materialize` (Feast's
    offline pull and online writer, parallel writer processes for Redis). Returns the store and, per view,
    rows, seconds, writers and rows/s.
    """
    repo.data.mkdir(parents=True, exist_ok=True)
    start, end = _interval(run)
    views = [VIEWS[name] for name, df in run.items() if len(df)]
    definitions = repo.definitions()
    if repo.target != "local":
        store = repo.store()
        store.apply(definitions)
        if fail_before_swap:
            raise PublishError("publish stopped before the online update (test hook)")
        return store, _load(repo, store, views, start, end, writers)
    live = repo.online_db
    for stale in repo.data.glob(".online_store.*.staging.db"):  # left by a killed publish; we hold the lock
        stale.unlink()
    fd, staging_name = tempfile.mkstemp(prefix=".online_store.", suffix=".staging.db", dir=repo.data)
    os.close(fd)
    staging = Path(staging_name)
    try:
        if live.exists():
            with sqlite3.connect(live) as src, sqlite3.connect(staging) as dst:
                src.backup(dst)  # a consistent copy even while readers are connected
            _unmask(staging)
        store = repo.store(online_path=staging)
        store.apply(definitions)
        writes = _load(repo, store, views, start, end, 1)
        if fail_before_swap:
            raise PublishError("publish stopped before the online store swap (test hook)")
        kill_point("publish:before-swap")
        _swap_tables(staging, live, _sqlite_ttls(store))
    finally:
        staging.unlink(missing_ok=True)
    live_store = repo.store()
    _record_infra(live_store)
    return live_store, writes


def _record_infra(store) -> None:
    """Record the live online tables as the registry's infrastructure, as ``feast apply`` would: a consumer's own
    ``feast apply`` then finds them unchanged and leaves the ttl views alone (it cannot index a view)."""
    registry = store.registry
    infra = store._get_provider().plan_infra(store.config, registry._get_registry_proto(project=store.project))
    registry.update_infra(infra, store.project, commit=True)


def _expire_redis(repo: Repo, store, run: dict[str, pd.DataFrame]) -> int:
    """Give every Redis key this run wrote an expiry: the earliest ``event_timestamp + ttl`` of the views written
    to it (Feast's Redis store keeps all views of one entity in one hash, so one key carries one expiry). Redis
    then drops the values itself once they are past their ttl, whoever reads (Feast 0.67's online read path
    ignores the ttl). A key whose entity's views were not all written by this run only has its expiry shortened
    (``EXPIREAT ... LT``): new lst features never extend the life of an older run's listing vector. Returns the
    number of keys."""
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    by_key: dict[str, list[pd.Series]] = {}
    views_of: dict[str, set[str]] = {}
    for fv in store.list_feature_views():
        if fv.ttl:
            views_of.setdefault(fv.entity_columns[0].name, set()).add(fv.name)
    written: dict[str, set[str]] = {}
    for name, df in run.items():
        fv = store.get_feature_view(VIEWS[name])
        if not len(df) or not fv.ttl:
            continue
        key = fv.entity_columns[0].name
        until = (pd.to_datetime(df["event_timestamp"], utc=True) + fv.ttl).groupby(df[key].to_numpy()).max()
        by_key.setdefault(key, []).append(until)
        written.setdefault(key, set()).add(fv.name)
    client = repo.redis()
    version = store.config.entity_key_serialization_version
    count = 0
    for key, parts in by_key.items():
        expiries = pd.concat(parts, axis=1)
        until = expiries.min(axis=1)  # the earliest expiry of the views this run wrote
        whole = (expiries.notna().all(axis=1) & (written[key] >= views_of.get(key, set()))).to_numpy()
        rows = list(
            zip(
                until.index,
                ((until - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(),
                whole,
                strict=True,
            )
        )
        for lo in range(0, len(rows), 5_000):
            with client.pipeline(transaction=False) as pipe:
                for entity, at, all_views in rows[lo : lo + 5_000]:
                    entity_key = EntityKey(join_keys=[key], entity_values=[Value(string_val=str(entity))])
                    pipe.expireat(_redis_key(store.project, entity_key, version), int(at), lt=not all_views)
                pipe.execute()
        count += len(rows)
    return count


def _load(repo: Repo, store, views: list[str], start, end, writers: int | None) -> list[dict]:
    if repo.target not in SPARK_TARGETS:
        writers = writers or default_writers(store.config.online_store.type)
        done = materialize(store, views, start, end, writers=writers, newest=True)
        return [{**asdict(w), "rows_per_s": round(w.rows_per_s)} for w in done]
    began = time.perf_counter()
    store.materialize(start, end, feature_views=views)  # Feast's Spark engine
    return [{"view": ", ".join(views), "seconds": round(time.perf_counter() - began, 3), "engine": "spark"}]


ROWS_SUFFIX = "__rows"  # the live SQLite database keeps a view's rows in "<table>__rows", behind a view "<table>"


def _sqlite_ttls(store) -> dict[str, int | None]:
    """Feast's SQLite table name of each feature view, and the view's ttl in seconds (None: no ttl)."""
    return {
        f"{store.project}_{fv.name}": int(fv.ttl.total_seconds()) if fv.ttl else None
        for fv in store.list_feature_views()
    }


def _ttl_view_sql(table: str, ttl_s: int | None) -> str:
    """Feast's online reader selects from ``table``: a view that hides rows older than the feature view's ttl,
    measured by SQLite's own clock at read time (Feast 0.67's online read path ignores the ttl)."""
    if not ttl_s:
        return f'CREATE VIEW main."{table}" AS SELECT * FROM main."{table}{ROWS_SUFFIX}"'
    # Feast 0.67 stores Unix seconds; older Feast wrote ISO text: compare either with the clock in its own form
    where = (
        f" WHERE CASE typeof(event_ts) WHEN 'text' THEN event_ts >= datetime('now', '-{int(ttl_s)} seconds')"
        f" ELSE event_ts >= CAST(strftime('%s', 'now') AS INTEGER) - {int(ttl_s)} END"
    )
    return f'CREATE VIEW main."{table}" AS SELECT * FROM main."{table}{ROWS_SUFFIX}"{where}'


def _unmask(db: Path) -> None:
    """Turn a live database's ttl views back into Feast's plain tables (the staging copy, which Feast writes)."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        views = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'view'")]
        con.execute("BEGIN")
        for view in views:
            con.execute(f'DROP VIEW "{view}"')
            con.execute(f'ALTER TABLE "{view}{ROWS_SUFFIX}" RENAME TO "{view}"')
        con.execute("COMMIT")
    finally:
        con.close()


def _swap_tables(staging: Path, live: Path, ttls: dict[str, int | None]) -> None:
    """Make the live database's rows those of ``staging``, in one transaction of the live database.

    Each of Feast's tables ``T`` lives there as ``T__rows`` behind a view ``T`` that shows only rows within the
    feature view's ttl (``ttls``: table -> seconds), so every reader (SDK, ``feast serve``) sees stale values as
    absent. Feast's own ``apply`` leaves the layout alone: its CREATE TABLE / CREATE INDEX ... IF NOT EXISTS find
    the view and the index ``T_ek`` (on ``T__rows``) already there."""
    con = sqlite3.connect(live, timeout=60, isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS staging", (str(staging),))
        con.execute("BEGIN IMMEDIATE")
        new = dict(con.execute("SELECT name, sql FROM staging.sqlite_master WHERE type = 'table'").fetchall())
        kinds = dict(con.execute("SELECT name, type FROM main.sqlite_master WHERE type IN ('table', 'view')"))
        for name, kind in kinds.items():  # views the repo no longer defines
            if name.removesuffix(ROWS_SUFFIX) not in new:
                con.execute(f'DROP {kind.upper()} main."{name}"')
        for name, sql in new.items():
            rows = f"{name}{ROWS_SUFFIX}"
            if kinds.get(name) == "table":  # a plain table of Feast's (an online store written before ttl views)
                con.execute(f'DROP TABLE main."{name}"')
            elif kinds.get(name) == "view":
                con.execute(f'DROP VIEW main."{name}"')
            if kinds.get(rows) != "table":
                create, _, columns = sql.partition("(")  # Feast's own schema, primary key included
                if name not in create:
                    raise PublishError(f"{staging}: unexpected schema of table {name}: {sql[:200]}")
                con.execute(f'CREATE TABLE main."{rows}" ({columns}')
                con.execute(f'CREATE INDEX main."{name}_ek" ON "{rows}" (entity_key)')
            else:
                con.execute(f'DELETE FROM main."{rows}"')
            con.execute(f'INSERT INTO main."{rows}" SELECT * FROM staging."{name}"')
            con.execute(_ttl_view_sql(name, ttls.get(name)))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
