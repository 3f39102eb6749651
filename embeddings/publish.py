"""Publishing a run's outputs to the Feast feature repo, and reading them back.

``publish``:

1. adds the run's tables to the offline Parquet sources as new files named by the run id
   (earlier runs' files are never rewritten; a file that is already there with the same run id
   is left alone, which makes a rerun idempotent);
2. applies the feature repo (entities, sources, views, services);
3. materializes the run's interval into the online store. With SQLite this happens on a copy
   of the online database that replaces the live one in one rename, so a failed or interrupted
   publish leaves consumers on the previous run's values;
4. records a manifest (run id, model versions, row counts, interval, time) under ``manifests/``.

Listing versions already published are not published again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd

from embeddings.contract import LISTING_COLUMNS, read_parquet, write_parquet_atomic

REPO = Path(__file__).resolve().parents[1] / "feature_repo"
PROFILES = {"local": "feature_store.yaml", "redis": "feature_store.redis.yaml"}
TABLES = ("listings", "listing_embeddings", "user_embeddings", "user_preference")
VIEWS = {
    "listings": "listing_lst_features",
    "listing_embeddings": "listing_embedding",
    "user_embeddings": "user_embedding",
    "user_preference": "user_rent_sale_preference",
}
LISTING_FEATURES = [c.name for c in LISTING_COLUMNS if c.name not in ("item_id", "created_at", "event_timestamp")]


class PublishError(RuntimeError):
    pass


@dataclass
class Repo:
    path: Path = REPO
    profile: str = "local"

    @property
    def data(self) -> Path:
        return self.path / "data"  # registry, online store (SQLite), offline Parquet, manifests

    @property
    def yaml(self) -> Path:
        return self.path / PROFILES[self.profile]

    def store(self, online_path: Path | None = None):
        """A FeatureStore for this repo; ``online_path`` points the SQLite online store elsewhere."""
        from feast import FeatureStore
        from feast.repo_config import load_repo_config

        config = load_repo_config(self.path, self.yaml)
        if not Path(config.registry.path).is_absolute():  # Feast would resolve it against the working folder
            config.registry.path = str(self.path / config.registry.path)
        if online_path is not None:
            config.online_store.path = str(online_path)
        if self.profile == "redis":
            check_redis(config.online_store.connection_string)
        return FeatureStore(config=config)

    def apply(self, store) -> None:
        from feast.repo_operations import parse_repo

        for py in self.path.glob("*.py"):  # another repo's modules of the same names may be loaded
            sys.modules.pop(py.stem, None)
        sys.path.insert(0, str(self.path))
        try:
            with contextlib.chdir(self.path):  # Feast names repo modules relative to the working folder
                contents = parse_repo(self.path)
        finally:
            sys.path.remove(str(self.path))
        objects = [*contents.entities, *contents.data_sources, *contents.feature_views, *contents.feature_services]
        store.apply(objects)

    def manifests(self) -> list[dict]:
        folder = self.data / "manifests"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    def run_file(self, table: str, run_id: str) -> Path:
        """Where a run's rows of one offline table live (one file per run, never rewritten)."""
        return self.data / "offline" / table / f"run-{run_id}.parquet"

    def previous_run(self) -> dict | None:
        """What the drift checks compare against: the last published run with embeddings."""
        runs = [m for m in self.manifests() if m.get("model_version")]
        if not runs:
            return None
        last = max(runs, key=lambda m: m["published_at"])
        users, scores = (
            self.run_file("user_embeddings", last["run_id"]),
            self.run_file("user_preference", last["run_id"]),
        )
        return {
            "run_id": last["run_id"],
            "events_rows": last.get("events_rows"),
            "users": read_parquet(users) if users.exists() else None,
            "scores": read_parquet(scores) if scores.exists() else None,
        }


def check_redis(connection_string: str) -> None:
    """Fail early and clearly when Redis is unreachable or refuses the credentials."""
    import redis

    host_port, *params = connection_string.split(",")
    host, _, port = host_port.rpartition(":")
    options = dict(p.split("=", 1) for p in params if "=" in p)
    where = f"Redis at {host or '?'}:{port or '?'}"
    if not host or not port.isdigit():
        raise PublishError(f"{where}: set REDIS_HOST and REDIS_PORT (feature_store.redis.yaml reads them)")
    client = redis.Redis(
        host=host,
        port=int(port),
        password=options.get("password") or None,
        ssl=options.get("ssl", "false").lower() == "true",
        socket_connect_timeout=3,
    )
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise PublishError(f"{where}: authentication failed, check REDIS_PASSWORD ({exc})") from exc
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise PublishError(f"{where}: authentication failed, check REDIS_PASSWORD ({exc})") from exc
        raise
    except redis.exceptions.ConnectionError as exc:
        raise PublishError(f"{where}: cannot connect ({exc})") from exc
    finally:
        client.close()


def run_id_for(cutoff: pd.Timestamp, model_version: str) -> str:
    return f"{cutoff.tz_convert('UTC'):%Y%m%dT%H%M%SZ}-{model_version}"


def _new_listing_versions(repo: Repo, listings: pd.DataFrame, own_file: Path) -> pd.DataFrame:
    """Listing versions not yet in the offline source (this run's own file aside)."""
    folder = repo.data / "offline" / "listings"
    seen = [read_parquet(p)[["item_id", "event_timestamp"]] for p in sorted(folder.glob("*.parquet")) if p != own_file]
    if not seen:
        return listings
    known = pd.concat(seen).drop_duplicates()
    merged = listings.merge(known.assign(_known=True), on=["item_id", "event_timestamp"], how="left")
    return listings[merged["_known"].isna().to_numpy()]


def _offline_table(name: str, df: pd.DataFrame, published_at: pd.Timestamp) -> pd.DataFrame:
    df = df.copy()
    if name == "listings":
        df = df[["item_id", *LISTING_FEATURES, "event_timestamp"]]
    if name in ("listing_embeddings", "user_embeddings"):
        df["embedding"] = df["embedding"].map(lambda v: [float(x) for x in v])
    if name == "user_embeddings":  # Unix seconds: Feast's online types carry no time zone
        df["last_event_at"] = df["last_event_at"].astype("datetime64[us, UTC]").astype("int64") // 1_000_000
    df["published_at"] = published_at
    return df


def publish(
    repo: Repo,
    listings: pd.DataFrame,
    user_embeddings: pd.DataFrame | None = None,
    listing_embeddings: pd.DataFrame | None = None,
    preference: pd.DataFrame | None = None,
    extra_manifest: dict | None = None,
    fail_before_swap: bool = False,
) -> dict:
    """Publish one run (or, with only ``listings``, new lst feature versions); returns the manifest.

    ``fail_before_swap`` stops just before the online update, for tests of the failure path.
    """
    began = time.perf_counter()
    published_at = pd.Timestamp.now(tz="UTC").floor("s")
    if user_embeddings is not None:
        cutoff = pd.Timestamp(user_embeddings["event_timestamp"].iloc[0])
        model_version = str(user_embeddings["model_version"].iloc[0])
        run_id = run_id_for(cutoff, model_version)
    else:
        cutoff, model_version = pd.Timestamp(listings["event_timestamp"].max()), None
        run_id = f"{cutoff.tz_convert('UTC'):%Y%m%dT%H%M%SZ}-listings"
    tables = {
        "listings": listings,
        "listing_embeddings": listing_embeddings,
        "user_embeddings": user_embeddings,
        "user_preference": preference,
    }
    run: dict[str, pd.DataFrame] = {}
    for name, df in tables.items():
        if df is None:
            continue
        path = repo.run_file(name, run_id)
        if path.exists():  # a rerun: this run's rows are already there, publish exactly those
            run[name] = read_parquet(path)
            continue
        if name == "listings":
            df = _new_listing_versions(repo, df, path)
        if len(df):
            run[name] = _offline_table(name, df, published_at)
            write_parquet_atomic(run[name], path)
    if not run:
        raise PublishError("nothing to publish: every listing version is already in the feature store")

    store = _materialize(repo, run, fail_before_swap)
    manifest = {
        "run_id": run_id,
        "cutoff": cutoff.isoformat(),
        "model_version": model_version,
        "classifier_version": str(preference["classifier_version"].iloc[0]) if preference is not None else None,
        "rows": {name: len(df) for name, df in run.items()},
        "profile": repo.profile,
        "project": store.project,
        "published_at": published_at.isoformat(),
        "seconds": round(time.perf_counter() - began, 3),
        **(extra_manifest or {}),
    }
    path = repo.data / "manifests" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, path)
    return manifest


def _materialize(repo: Repo, run: dict[str, pd.DataFrame], fail_before_swap: bool):
    """Apply the repo and load the run's interval into the online store (atomically for SQLite)."""
    repo.data.mkdir(parents=True, exist_ok=True)
    start = min(pd.Timestamp(df["event_timestamp"].min()) for df in run.values() if len(df))
    end = max(pd.Timestamp(df["event_timestamp"].max()) for df in run.values() if len(df)) + timedelta(seconds=1)
    start_dt, end_dt = start.to_pydatetime() - timedelta(seconds=1), end.to_pydatetime()
    views = [VIEWS[name] for name, df in run.items() if len(df)]
    if repo.profile != "local":
        store = repo.store()
        repo.apply(store)
        if fail_before_swap:
            raise PublishError("publish stopped before the online update (test hook)")
        store.materialize(start_dt, end_dt, feature_views=views)
        return store
    live = repo.data / "online_store.db"
    staging = repo.data / "online_store.db.staging"
    staging.unlink(missing_ok=True)
    if live.exists():
        shutil.copy2(live, staging)
    store = repo.store(online_path=staging)
    try:
        repo.apply(store)
        store.materialize(start_dt, end_dt, feature_views=views)
        if fail_before_swap:
            raise PublishError("publish stopped before the online store swap (test hook)")
        os.replace(staging, live)
    finally:
        staging.unlink(missing_ok=True)
    return repo.store()


def online_features(repo: Repo, user_ids: list[str], service: str = "user_profile") -> pd.DataFrame:
    store = repo.store()
    features = store.get_feature_service(service)
    return store.get_online_features(features=features, entity_rows=[{"user_id": u} for u in user_ids]).to_df()


def historical_features(repo: Repo, entity_df: pd.DataFrame, service: str = "user_profile") -> pd.DataFrame:
    store = repo.store()
    return store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(service)).to_df()


def listings_from_store(repo: Repo, item_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """lst features of ``item_ids`` as the feature store knew them at ``as_of`` (point-in-time), one row per
    listing in the listings-table shape, for building frozen or hybrid item vectors.

    A listing first published after ``as_of`` (a cold-start listing) gets its earliest published version.
    """
    store = repo.store()
    refs = [f"listing_lst_features:{c}" for c in LISTING_FEATURES]
    ids = pd.Series(list(item_ids), dtype=object)
    got = store.get_historical_features(
        entity_df=pd.DataFrame({"item_id": ids, "event_timestamp": as_of}), features=refs
    ).to_df()
    missing = got[got["deal_type"].isna()]["item_id"]
    if len(missing):
        first = pd.concat([read_parquet(p) for p in sorted((repo.data / "offline" / "listings").glob("*.parquet"))])
        first = first[first["item_id"].isin(missing)].sort_values("event_timestamp").drop_duplicates("item_id")
        got = pd.concat([got[got["deal_type"].notna()], first[["item_id", *LISTING_FEATURES, "event_timestamp"]]])
    unknown = set(ids) - set(got["item_id"])
    if unknown:
        raise PublishError(
            f"{len(unknown)} listings have no lst features in the feature store, e.g. {sorted(unknown)[:5]}"
        )
    got = got.drop_duplicates("item_id").set_index("item_id").loc[list(ids)].reset_index()
    got["event_timestamp"] = as_of
    got["created_at"] = as_of
    for col in ("rooms", "floor", "floors_total"):
        got[col] = got[col].astype("int64")
    return got[["item_id", *LISTING_FEATURES, "created_at", "event_timestamp"]]
