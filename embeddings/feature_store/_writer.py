"""Writing one run into the feature repo. Private: call the pipeline's ``publish``, which checks the run first.

:func:`write_run`, under the publish lock (a file lock; with the Redis targets also a lease in Redis that is
renewed while the publisher lives, taken over seconds after it dies, and carries a fencing token):

1. refuses a run id already published with other content, and a run older than the latest published one
   unless forced with a reason;
2. **stages** everything the run adds to the repo beside its final place, under names no reader looks at:
   the offline Parquet files (``run-<id>.parquet.staged``: the sources read ``*.parquet``), the manifest and
   ``published.json`` (``*.staged``). A folder that cannot take them fails the publish here, before anything is
   visible;
3. writes the online store from the staged files and **commits** it: SQLite builds a private copy of the online
   database whose tables replace the live ones in one transaction, which also records the committed run; Redis
   writes each entity (a user's intent, profile and score) in one ``HSET`` and then records the committed run;
4. moves the staged files into place (renames in one folder tree: microseconds), the manifest last.

A publish killed before step 3's commit leaves point-in-time joins and online lookups on the previous run (on
Redis, users already written hold the new run, each whole); rerunning it completes it, reusing the staged files.
Killed between the commit and step 4, the next publish of any run first finishes the committed one (a run
that is online always gets its offline files and manifest).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from embeddings.errors import InputError, NothingToPublish, PublishError
from embeddings.feature_store._materialize import default_writers, materialize, materialize_entities
from embeddings.feature_store._redis_rows import fence_token
from embeddings.feature_store.repo import LISTING_FEATURES, PROFILE_COLUMNS, REDIS_TARGETS, VIEWS, Repo, views_of
from embeddings.io import kill_point, utc, write_atomic, write_json
from embeddings.record import RunRecord
from embeddings.release import Release, published_release, release_dir

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CONTENT_KEY = b"lst_embeddings.content_sha256"
LOCK_WAIT_S = 600.0  # how long a publisher waits for another one to finish
LEASE_S = 10.0  # the Redis lease: renewed every LEASE_S / 3 while the publisher lives, free LEASE_S after it dies
STAGED = ".staged"  # suffix of a publish's files until its commit
COMMIT_TABLE = "lst_embeddings_commit"  # SQLite: the committed run, written in the swap's transaction


def run_id_for(cutoff: pd.Timestamp, model_version: str) -> str:
    if not SAFE_NAME.match(model_version):
        raise InputError(f"model_version {model_version[:80]!r} is not a plain name (letters, digits, '-', '_')")
    return f"{utc(cutoff):%Y%m%dT%H%M%SZ}-{model_version}"


def _inside(folder: Path, path: Path) -> Path:
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"{path}: outside {folder}")
    return path


@dataclass
class Lease:
    """The publish lock as held: ``token`` fences the Redis writes (None with the file lock alone)."""

    token: int | None = None
    lost: threading.Event = field(default_factory=threading.Event)

    def check(self, step: str) -> None:
        if self.lost.is_set():
            raise PublishError(
                f"the publish lease was lost before {step} (this publisher was paused or cut off from Redis "
                f"for over {LEASE_S:.0f} s and another may have taken over); nothing more was written"
            )


@contextlib.contextmanager
def publish_lock(repo: Repo, wait_s: float | None = None):
    """One publisher per repo at a time: the next one waits up to ``wait_s``, then fails (never half-runs).

    A file lock in the repo's data folder (publishers on one machine or one shared folder; the kernel releases
    it when its owner dies), and with the Redis targets also a lease in Redis (publishers anywhere that reach the
    same Redis). Yields the :class:`Lease`.
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
            if repo.target in REDIS_TARGETS:
                with redis_lease(repo, max(deadline - time.monotonic(), 0.1), busy) as lease:
                    yield lease
            else:
                yield Lease()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def redis_lease(repo: Repo, wait_s: float, busy: str = "another publish holds the lease"):
    """A lease in Redis: ``LEASE_S`` long, renewed by a thread every ``LEASE_S / 3`` while this process runs, so a
    killed publisher's lease is free within ``LEASE_S``. Each lease takes a new fencing token. A renewal that finds
    the lease gone, or that could not reach Redis for ``LEASE_S`` (it may have expired), marks it lost, and the
    writer stops; a failover shorter than that only delays the renewal."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = repo.redis()
    client.set_retry(Retry(NoBackoff(), 1))  # a Redis that is gone fails the renewal in time, not after backoffs
    project = repo.config().project
    lock = client.lock(f"lst_embeddings:publish:{project}", timeout=LEASE_S, thread_local=False)
    if not lock.acquire(blocking=True, blocking_timeout=wait_s):
        raise PublishError(busy)
    lease = Lease(fence_token(client, project))
    stop = threading.Event()

    def renew() -> None:
        from redis.exceptions import LockNotOwnedError

        renewed, wait = time.monotonic(), LEASE_S / 3
        while not stop.wait(wait):
            try:
                lock.reacquire()  # back to LEASE_S
                renewed, wait = time.monotonic(), LEASE_S / 3
            except LockNotOwnedError:  # expired and maybe taken: no longer ours
                lease.lost.set()
                return
            except Exception:  # Redis unreachable or failing over: try again soon, until the lease may have run out
                if time.monotonic() - renewed >= LEASE_S:
                    lease.lost.set()
                    return
                wait = 0.5

    renewer = threading.Thread(target=renew, name="publish-lease", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        with contextlib.suppress(Exception):  # lost or expired: nothing left to give back
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
            elif values.dtype == object and values.isna().all():  # a vector column of nulls (no next space)
                digest.update(b"null" * len(values))
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
        for col in VECTORS:
            if col in df:
                df[col] = df[col].map(lambda v: None if v is None else np.asarray(v, np.float64))  # list<double>
    if name == "user_profiles":
        df = df[["user_id", *(c for c in PROFILE_COLUMNS if c in df), "event_timestamp"]]
    df = view_columns(name, df)
    df["published_at"] = published_at
    for col in df.columns:  # microseconds: Spark's offline store cannot read nanosecond Parquet timestamps
        if isinstance(df[col].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(df[col]):
            df[col] = df[col].astype("datetime64[us, UTC]" if getattr(df[col].dt, "tz", None) else "datetime64[us]")
    return df


def view_columns(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """A table's rows under its feature views' field names and types (what the offline files and a push carry)."""
    if name == "user_embeddings":  # Unix seconds: Feast's online types carry no time zone
        return df.assign(last_event_at=df["last_event_at"].astype("datetime64[us, UTC]").astype("int64") // 10**6)
    if name == "user_profiles":  # names of their own, so a service with both views has no clashing features
        return df.rename(columns=PROFILE_COLUMNS)
    return df


VECTORS = ("embedding", "native_embedding", "next_space_embedding")  # vector columns of a run folder's tables


def _write_offline(df: pd.DataFrame, path: Path, content: str) -> None:
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    for i, column in enumerate(table.schema):  # a column of nulls (no next space) keeps its type in every file
        if pa.types.is_null(column.type):
            kind = pa.list_(pa.float64()) if column.name.endswith("embedding") else pa.string()
            table = table.set_column(i, column.name, table.column(i).cast(kind))
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
    release: Release | None = None,
    model: Path | None = None,
    classifier: Path | None = None,
) -> dict:
    """Write one run (or, with only ``listings``, new lst feature versions); returns the manifest.

    ``record``: the run's cut-off and model versions (``embed``'s record; tables built by hand get one from their
    first row). ``release``: the pinned space and the maps into it (default: the model's own space); its folder
    (with ``model``, the checkpoint, and ``classifier``, the rent/sale classifier) goes to
    ``data/releases/<model_version>``.

    ``force_older`` (a reason, recorded) publishes a run older than the latest published one.
    ``fail_before_swap`` stops just before the online commit, for tests of the failure path.
    ``writers``: processes writing the online store (default: one for SQLite, one per core otherwise).
    """
    tables = {
        "listings": listings,
        "listing_embeddings": listing_embeddings,
        "user_embeddings": user_embeddings,
        "user_profiles": user_profiles,
        "user_preference": preference,
    }
    with publish_lock(repo) as lease:
        files = (model, classifier)
        return _write_run(
            repo, tables, record, extra_manifest, force_older, fail_before_swap, writers, lease, release, files
        )


def _write_run(
    repo, tables, record, extra, force_older, fail_before_swap, writers, lease: Lease, release, files_of_release
) -> dict:
    began = time.perf_counter()
    published_at = pd.Timestamp.now(tz="UTC").floor("s")
    if tables["user_embeddings"] is not None:
        record = record or RunRecord.of_vectors(tables["user_embeddings"], tables["user_profiles"])
        cutoff, model_version = record.cutoff, record.model_version
        release = release or Release.own(model_version)
        _refuse_other_release(repo, release)
        for name, head in HEADS.items():
            if tables[name] is not None:
                tables[name] = release.columns(tables[name], head)
        run_id = run_id_for(cutoff, model_version)
        content = content_hash({k: v for k, v in tables.items() if k != "listings"})  # listings: deduplicated
        _refuse_stale_or_changed(repo, run_id, cutoff, content, force_older)
    else:
        record = None
        cutoff, model_version = utc(tables["listings"]["event_timestamp"].max()), None
        run_id = f"{cutoff:%Y%m%dT%H%M%SZ}-listings"
        content = content_hash({"listings": tables["listings"]})
    recovered = _recover(repo, run_id)

    run: dict[str, pd.DataFrame] = {}
    files: dict[str, Path] = {}  # where each table's rows are now: its staged file (or the committed one)
    for name, df in tables.items():
        if df is None:
            continue
        final = _inside(repo.data, repo.run_file(name, run_id))
        staged = _staged(final)
        for path in (final, staged):  # a rerun after a crash: publish exactly those rows
            if path.exists():
                if _file_content(path) != content:
                    raise PublishError(f"{path}: holds other rows for run {run_id}; nothing was changed")
                run[name], files[name] = pq.read_table(path).to_pandas(), path
                break
        else:
            if name == "listings":
                df = _new_listing_versions(repo, df, final)
            if len(df):
                run[name], files[name] = _offline_table(name, df, published_at), staged
                _write_offline(run[name], staged, content)
    if not run:
        raise NothingToPublish("nothing to publish: every listing version is already in the feature store")
    if release is not None:  # content-addressed by model version: nothing reads it before the manifest names it
        release.save(_inside(repo.data, release_dir(repo.data, release.model_version)), *files_of_release)
    kill_point("publish:staged")

    manifest = {
        "run_id": run_id,
        "cutoff": cutoff.isoformat(),
        "model_version": model_version,
        "profile_model_version": record.profile_model_version if record else None,
        "space_version": release.space_version if release else None,
        "release": release.summary() if release else None,
        "encoder": record.encoder if record else None,
        "classifier_version": _first(tables["user_preference"], "classifier_version"),
        "content_sha256": content,
        "rows": {name: len(df) for name, df in run.items()},
        "target": repo.target,
        "project": repo.config().project,
        "published_at": published_at.isoformat(),
        "offline_write_seconds": round(time.perf_counter() - began, 3),
        **({"forced_older": force_older} if force_older else {}),
        **({"recovered": recovered} if recovered else {}),
        **(extra or {}),
    }
    manifest_file = _inside(repo.data, repo.data / "manifests" / f"{run_id}.json")
    write_json(_staged(manifest_file), manifest)  # a manifests folder that cannot take it stops us here
    published = _inside(repo.data, repo.data / "published.json")
    write_json(_staged(published), _published_record(repo, run, run_id, published_at, release))

    lease.check("the online write")
    store, writes = _materialize(repo, run, files, run_id, fail_before_swap, writers, lease)
    kill_point("publish:online-committed")
    manifest.update(seconds=round(time.perf_counter() - began, 3), materialized=writes)
    write_json(_staged(manifest_file), manifest)
    _commit_files(repo, run_id)
    return manifest


def _first(df: pd.DataFrame | None, column: str) -> str | None:
    return str(df[column].iloc[0]) if df is not None and len(df) else None


HEADS = {"user_embeddings": "intent", "listing_embeddings": "intent", "user_profiles": "profile"}  # their maps


def _staged(path: Path) -> Path:
    return path.with_name(path.name + STAGED)


def _commit_files(repo: Repo, run_id: str) -> None:
    """Move a committed run's staged files into place: offline files, ``published.json`` and the registry, the
    manifest last."""
    from embeddings.feature_store.repo import TABLES

    for table in TABLES:
        final = repo.run_file(table, run_id)
        if _staged(final).exists():
            os.replace(_staged(final), final)
    kill_point("publish:offline-committed")
    for path in (repo.data / "published.json", repo.registry):
        if _staged(path).exists():
            os.replace(_staged(path), path)
    manifest = repo.data / "manifests" / f"{run_id}.json"
    if _staged(manifest).exists():
        os.replace(_staged(manifest), manifest)


def _recover(repo: Repo, run_id: str) -> str | None:
    """Before a publish (under the lock): finish a run that a killed publisher committed online but did not move
    into place, and drop what other unfinished publishes staged. Returns the run id it finished, if any."""
    manifests = repo.data / "manifests"
    pending = sorted(p.name.removesuffix(".json" + STAGED) for p in manifests.glob(f"*.json{STAGED}"))
    committed = _online_run(repo) if pending else None
    finished = None
    for other in pending:
        if other == committed:
            _commit_files(repo, other)
            finished = other
    ours = {f"run-{run_id}.parquet{STAGED}", f"{run_id}.json{STAGED}"}
    for path in [*(repo.data / "offline").glob(f"*/*{STAGED}"), *manifests.glob(f"*{STAGED}")]:
        if path.name not in ours:  # what a killed publish of another run staged: never visible, never will be
            path.unlink(missing_ok=True)
    for path in (repo.data / "published.json", repo.registry):  # this publish writes its own
        _staged(path).unlink(missing_ok=True)
    return finished


def _online_run(repo: Repo) -> str | None:
    """The run whose online write committed last (recorded by the commit itself)."""
    if repo.target not in REDIS_TARGETS:
        if not repo.online_db.exists():
            return None
        con = sqlite3.connect(repo.online_db)
        try:
            row = con.execute(f"SELECT run_id FROM {COMMIT_TABLE}").fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            con.close()
        return row[0] if row else None
    value = repo.redis().get(_commit_key(repo))
    return value.decode() if value else None


def _commit_key(repo: Repo) -> str:
    return f"lst_embeddings:publish:{repo.config().project}:committed"


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


def _published_record(
    repo: Repo, run: dict[str, pd.DataFrame], run_id: str, published_at: pd.Timestamp, release: Release | None = None
) -> dict:
    """``data/published.json`` after this publish: per view, what it put there (vector_dim, model_version, run_id,
    published_at; the pinned views their space and its chain, the next-space views theirs); ``feature_views.py``
    reads it, so the registry describes the vectors it serves."""
    path = repo.data / "published.json"
    try:
        record = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        record = {}
    for name, df in run.items():
        if name not in VERSION_COLUMNS or not len(df):
            continue
        entry = {"model_version": str(df[VERSION_COLUMNS[name]].iloc[0]), "run_id": run_id}
        stamp = {"published_at": published_at.isoformat()}
        if name in VECTOR_COLUMNS:
            entry["vector_dim"] = len(df[VECTOR_COLUMNS[name]].iloc[0])
        if name not in SPACE_COLUMNS or release is None:
            record[VIEWS[name]] = {**entry, **stamp}
            continue
        space, next_space = (str(df[c].iloc[0]) if df[c].iloc[0] is not None else "" for c in SPACE_COLUMNS[name])
        native, upcoming = views_of(name)[1:]
        prefix = "native_profile" if name == "user_profiles" else "native"
        later = df["next_space_profile_embedding" if name == "user_profiles" else "next_space_embedding"].iloc[0]
        record[VIEWS[name]] = {**entry, "space_version": space, "space_chain": ",".join(release.chain), **stamp}
        own = {"vector_dim": len(df[f"{prefix}_embedding"].iloc[0]), "space_version": entry["model_version"]}
        record[native] = {**entry, **own, **stamp}
        record[upcoming] = {
            **entry,
            "vector_dim": 0 if later is None else len(later),
            "space_version": next_space,
            "space_chain": ",".join(release.next_chain),
            "transition_releases_left": str(release.transition_left),
            **stamp,
        }
    return record


SPACE_COLUMNS = {  # a vector table's space columns as published: pinned, next
    "listing_embeddings": ("space_version", "next_space_version"),
    "user_embeddings": ("space_version", "next_space_version"),
    "user_profiles": ("profile_space_version", "next_space_profile_version"),
}


def _refuse_other_release(repo: Repo, release: Release) -> None:
    """Under the lock: the release was aligned with the latest published one (another publish may have come
    between the alignment and the lock)."""
    latest = published_release(repo.data, repo.latest_run())
    if latest is None or release.against is None or latest.model_version in (release.model_version, release.against):
        return  # (against None: tables written without alignment, in their own space)
    raise PublishError(
        f"release {release.model_version} was aligned with release {release.against}, but {latest.model_version} "
        "was published since; publish again (it aligns with the latest). Nothing was changed"
    )


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


def _materialize(
    repo: Repo,
    run: dict[str, pd.DataFrame],
    files: dict[str, Path],
    run_id: str,
    fail_before_swap: bool,
    writers: int | None,
    lease: Lease,
):
    """Apply the repo, load the run's rows from its staged ``files`` into the online store and commit them.

    SQLite: into a private copy of the online database, whose tables then replace the live ones in one
    transaction. Redis (every other target; Spark pulls the staged rows): each entity's views in one ``HSET``,
    fenced by the lease's token, then the committed run is recorded. Returns the store and, per view, rows,
    seconds, writers and rows/s.
    """
    repo.data.mkdir(parents=True, exist_ok=True)
    start, end = _interval(run)
    views = [view for name, df in run.items() if len(df) for view in views_of(name)]
    definitions = repo.definitions(published=_staged(repo.data / "published.json"))
    registry = _staged(repo.registry)  # Feast rewrites its registry file in place: readers meanwhile see the old one
    if repo.registry.exists():
        shutil.copyfile(repo.registry, registry)
    sources = {
        view: _source_at(d, files[name])
        for name in run
        for d in definitions
        if _is_source_of(d, name)
        for view in views_of(name)
    }
    if repo.target != "local":
        store = repo.store(registry_path=registry)
        store.apply(definitions)
        if fail_before_swap:
            raise PublishError("publish stopped before the online update (test hook)")
        kill_point("publish:before-online-write")
        client = repo.redis()
        token = lease.token if lease.token is not None else fence_token(client, store.project)
        done = materialize_entities(
            store, views, start, end, token, writers or default_writers("redis"),
            newest={v for v in views if v != VIEWS["listings"]}, sources=sources,
        )  # fmt: skip
        lease.check("recording the commit")
        client.set(_commit_key(repo), run_id)
        return store, [{**asdict(w), "rows_per_s": round(w.rows_per_s)} for w in done]
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
        store = repo.store(online_path=staging, registry_path=registry)
        store.apply(definitions)
        done = materialize(store, views, start, end, writers=1, newest=True, sources=sources)
        if fail_before_swap:
            raise PublishError("publish stopped before the online store swap (test hook)")
        kill_point("publish:before-swap")
        _swap_tables(staging, live, _sqlite_ttls(store), run_id)
    except sqlite3.OperationalError as exc:
        raise PublishError(f"{repo.data}: the online store could not be written ({exc}); nothing was changed") from exc
    finally:
        staging.unlink(missing_ok=True)
    live_store = repo.store(registry_path=registry)
    _record_infra(live_store)
    return live_store, [{**asdict(w), "rows_per_s": round(w.rows_per_s)} for w in done]


def _is_source_of(definition, table: str) -> bool:
    """Whether ``definition`` is the offline source of ``table`` (its path names the table's folder)."""
    path = getattr(definition, "path", None)
    return isinstance(path, str) and Path(path).parent.name == table


def _source_at(source, path: Path):
    """``source`` reading one file: the run's staged rows (a DuckDB or Spark source, as the target's)."""
    from feast import FileSource
    from feast.data_format import ParquetFormat

    common = {
        "name": source.name,
        "timestamp_field": source.timestamp_field,
        "created_timestamp_column": source.created_timestamp_column,
        "field_mapping": source.field_mapping,
    }
    if type(source).__name__ == "SparkSource":
        return type(source)(path=str(path.resolve()), file_format="parquet", **common)
    return FileSource(path=str(path.resolve()), file_format=ParquetFormat(), **common)


def _record_infra(store) -> None:
    """Record the live online tables as the registry's infrastructure, as ``feast apply`` would: a consumer's own
    ``feast apply`` then finds them unchanged and leaves the ttl views alone (it cannot index a view)."""
    registry = store.registry
    infra = store._get_provider().plan_infra(store.config, registry._get_registry_proto(project=store.project))
    registry.update_infra(infra, store.project, commit=True)


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


def _swap_tables(staging: Path, live: Path, ttls: dict[str, int | None], run_id: str) -> None:
    """Make the live database's rows those of ``staging``, in one transaction of the live database.

    Each of Feast's tables ``T`` lives there as ``T__rows`` behind a view ``T`` that shows only rows within the
    feature view's ttl (``ttls``: table -> seconds), so every reader (SDK, ``feast serve``) sees stale values as
    absent. Feast's own ``apply`` leaves the layout alone: its CREATE TABLE / CREATE INDEX ... IF NOT EXISTS find
    the view and the index ``T_ek`` (on ``T__rows``) already there. The same transaction records ``run_id`` as the
    committed run (table ``lst_embeddings_commit``)."""
    con = sqlite3.connect(live, timeout=60, isolation_level=None)
    try:
        con.execute("ATTACH DATABASE ? AS staging", (str(staging),))
        con.execute("BEGIN IMMEDIATE")
        ours = f"name NOT LIKE '{COMMIT_TABLE}%'"
        new = dict(con.execute(f"SELECT name, sql FROM staging.sqlite_master WHERE type = 'table' AND {ours}"))
        kinds = dict(
            con.execute(f"SELECT name, type FROM main.sqlite_master WHERE type IN ('table', 'view') AND {ours}")
        )
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
        con.execute(f"CREATE TABLE IF NOT EXISTS main.{COMMIT_TABLE} (run_id TEXT NOT NULL)")
        con.execute(f"DELETE FROM main.{COMMIT_TABLE}")
        con.execute(f"INSERT INTO main.{COMMIT_TABLE} VALUES (?)", (run_id,))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
