"""Read-only access to the Feast feature repo (``feature_repo/``): the store, its manifests, lookups."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from embeddings.data.contract import LISTING_COLUMNS, read_parquet
from embeddings.errors import InputError, PublishError

REPO = Path(__file__).resolve().parents[2] / "feature_repo"
TARGETS = {  # where a run is published: the yaml of each deployment
    "local": "feature_store.yaml",
    "redis": "feature_store.redis.yaml",
    "redis-cluster": "feature_store.redis_cluster.yaml",
    "spark": "feature_store.spark.yaml",
}
REDIS_TARGETS = ("redis", "redis-cluster", "spark")
CLUSTER_TARGETS = ("redis-cluster", "spark")  # online store: a Redis Cluster
SPARK_TARGETS = ("spark",)  # offline store and materialization engine: Spark
TABLES = ("listings", "listing_embeddings", "user_embeddings", "user_profiles", "user_preference")
VIEWS = {
    "listings": "listing_lst_features",
    "listing_embeddings": "listing_embedding",
    "user_embeddings": "user_embedding",
    "user_profiles": "user_profile_embedding",
    "user_preference": "user_rent_sale_preference",
}
# the profile table's columns in the offline store and in Feast (the run folder's file says embedding, model_version)
PROFILE_COLUMNS = {
    "embedding": "profile_embedding",
    "model_version": "profile_model_version",
    "space_version": "profile_space_version",
    "native_embedding": "native_profile_embedding",
    "next_space_embedding": "next_space_profile_embedding",
    "next_space_version": "next_space_profile_version",
}
# the views of a vector table beside its pinned one: the model's own space, and a declared next space
SPACE_VIEWS = {
    "listing_embeddings": ("listing_embedding_native", "listing_embedding_next_space"),
    "user_embeddings": ("user_embedding_native", "user_embedding_next_space"),
    "user_profiles": ("user_profile_embedding_native", "user_profile_embedding_next_space"),
}


def views_of(table: str) -> tuple[str, ...]:
    """Every feature view that reads an offline table."""
    return (VIEWS[table], *SPACE_VIEWS.get(table, ()))


LISTING_FEATURES = [c.name for c in LISTING_COLUMNS if c.name not in ("item_id", "created_at", "event_timestamp")]


@dataclass
class Repo:
    path: Path = REPO
    target: str = "local"  # the deployment: a key of TARGETS

    def __post_init__(self) -> None:
        self.path = Path(self.path).resolve()  # a relative path would be resolved again by Feast, doubled
        if self.target not in TARGETS:
            raise InputError(f"unknown feature store target {self.target!r}; choose from {tuple(TARGETS)}")
        if not (self.path / TARGETS[self.target]).is_file():
            raise InputError(f"{self.path}: not a feature repo (no {TARGETS[self.target]})")

    @property
    def data(self) -> Path:
        return self.path / "data"  # registry, online store (SQLite), offline Parquet, manifests

    @property
    def yaml(self) -> Path:
        return self.path / TARGETS[self.target]

    def config(self, online_path: Path | None = None, registry_path: Path | None = None):
        from feast.repo_config import load_repo_config

        config = load_repo_config(self.path, self.yaml)
        if not Path(config.registry.path).is_absolute():  # Feast would resolve it against the working folder
            config.registry.path = str(self.path / config.registry.path)
        if config.online_store.type == "sqlite" and not Path(config.online_store.path).is_absolute():
            config.online_store.path = str(self.path / config.online_store.path)
        if online_path is not None:
            config.online_store.path = str(online_path)
        if registry_path is not None:
            config.registry.path = str(registry_path)
        return config

    def store(self, online_path: Path | None = None, registry_path: Path | None = None):
        """A FeatureStore for this repo; ``online_path`` points the SQLite online store elsewhere, ``registry_path``
        the registry (a publish writes a copy, renamed over the registry when it commits)."""
        from feast import FeatureStore

        config = self.config(online_path, registry_path)
        if self.target in REDIS_TARGETS:
            check_redis(config.online_store.connection_string, cluster=self.target in CLUSTER_TARGETS)
        if config.offline_store.type == "spark":
            start_spark(config.offline_store)
        return FeatureStore(config=config)

    def redis(self):
        """A Redis (or Redis Cluster) client of this target's online store."""
        return redis_client(self.config().online_store.connection_string, cluster=self.target in CLUSTER_TARGETS)

    @property
    def registry(self) -> Path:
        return Path(self.config().registry.path)

    @property
    def online_db(self) -> Path:
        """The SQLite online store of the local target."""
        return Path(self.config().online_store.path)

    def definitions(self, published: Path | None = None) -> list:
        """Entities, sources, views and services defined by the repo's Python files (``published``: the record of
        published vectors the views describe, instead of ``data/published.json``: a publish in progress)."""
        from feast.repo_operations import parse_repo

        for py in self.path.glob("*.py"):  # another repo's modules of the same names may be loaded
            sys.modules.pop(py.stem, None)
        sys.path.insert(0, str(self.path))
        settings = {  # which kind of source to build; which record to describe
            "LST_OFFLINE_STORE": self.config().offline_store.type,
            "LST_PUBLISHED": str(published) if published else None,
        }
        before = {k: os.environ.get(k) for k in settings}
        _set_env(settings)
        try:
            with contextlib.chdir(self.path):  # Feast names repo modules relative to the working folder
                contents = parse_repo(self.path)
        finally:
            sys.path.remove(str(self.path))
            _set_env(before)
        return [*contents.entities, *contents.data_sources, *contents.feature_views, *contents.feature_services]

    def manifests(self) -> list[dict]:
        folder = self.data / "manifests"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    def manifest(self, run_id: str) -> dict | None:
        path = self.data / "manifests" / f"{run_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def run_file(self, table: str, run_id: str) -> Path:
        """Where a run's rows of one offline table live (one file per run, never rewritten)."""
        return self.data / "offline" / table / f"run-{run_id}.parquet"

    def latest_run(self) -> dict | None:
        """The manifest of the newest published run with embeddings (by cut-off, then publish time)."""
        runs = [m for m in self.manifests() if m.get("model_version")]
        return max(runs, key=lambda m: (m["cutoff"], m["published_at"])) if runs else None

    def previous_run(self) -> dict | None:
        """What the drift checks compare against: the latest published run with embeddings."""
        last = self.latest_run()
        if last is None:
            return None
        files = {
            key: self.run_file(table, last["run_id"])
            for key, table in (
                ("users", "user_embeddings"),
                ("profiles", "user_profiles"),
                ("scores", "user_preference"),
            )
        }
        tables = {key: read_parquet(path) if path.exists() else None for key, path in files.items()}
        if tables["profiles"] is not None:
            tables["profiles"] = tables["profiles"].rename(columns={v: k for k, v in PROFILE_COLUMNS.items()})
        versions = {k: last.get(k) for k in ("model_version", "profile_model_version", "space_version")}
        return {"run_id": last["run_id"], "events_rows": last.get("events_rows"), **versions, **tables}


def _set_env(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _redis_parts(connection_string: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The ``host:port`` nodes (a cluster lists several) and the options of Feast's
    ``host:port[,host:port...],key=value,...`` string; a password may hold commas."""
    nodes: list[tuple[str, str]] = []
    options: dict[str, str] = {}
    key = None
    for part in connection_string.split(","):
        name, eq, value = part.partition("=")
        if eq and name in ("password", "ssl", "db", "username"):
            key, options[name] = name, value
        elif key is not None:  # a comma inside the previous value
            options[key] += "," + part
        elif not eq:
            host, _, port = part.strip().rpartition(":")
            nodes.append((host, port))
    return nodes, options


def _redis_options(connection_string: str) -> tuple[str, str, dict[str, str]]:
    """host and port of the first node, and the options of Feast's connection string."""
    nodes, options = _redis_parts(connection_string)
    host, port = nodes[0] if nodes else ("", "")
    return host, port, options


def redis_client(connection_string: str, cluster: bool = False):
    """A client for the Redis (``cluster``: the Redis Cluster) in Feast's connection string."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    nodes, options = _redis_parts(connection_string)
    if not nodes or not all(h and p.isdigit() for h, p in nodes):
        variable = "REDIS_CLUSTER_NODES" if cluster else "REDIS_HOST and REDIS_PORT"
        where = ",".join(f"{h or '?'}:{p or '?'}" for h, p in nodes) or "?:?"
        raise PublishError(f"Redis at {where}: set {variable} (the target's yaml reads them)")
    password = options.get("password") or None
    ssl = options.get("ssl", "false").lower() == "true"
    if cluster:
        startup = [ClusterNode(h, int(p)) for h, p in nodes]
        return RedisCluster(startup_nodes=startup, password=password, ssl=ssl, socket_connect_timeout=3)
    host, port = nodes[0]
    return redis.Redis(host=host, port=int(port), password=password, ssl=ssl, socket_connect_timeout=3)


def check_redis(connection_string: str, cluster: bool = False) -> None:
    """Fail early and clearly when Redis is unreachable or refuses the credentials."""
    import redis

    nodes, _ = _redis_parts(connection_string)
    where = ("Redis Cluster at " if cluster else "Redis at ") + ",".join(f"{h or '?'}:{p or '?'}" for h, p in nodes)
    hint = "check REDIS_CLUSTER_PASSWORD" if cluster else "check REDIS_PASSWORD"
    try:
        client = redis_client(connection_string, cluster)
        client.ping()
        client.close()
    except redis.exceptions.AuthenticationError as exc:
        raise PublishError(f"{where}: authentication failed, {hint} ({exc})") from exc
    except (redis.exceptions.ResponseError, redis.exceptions.RedisClusterException) as exc:
        text = str(exc)
        if any(s in text for s in ("NOAUTH", "WRONGPASS", "password", "Authentication")):
            raise PublishError(f"{where}: authentication failed, {hint} ({text.splitlines()[0]})") from exc
        raise PublishError(f"{where}: {text.splitlines()[0]}") from exc
    except redis.exceptions.ConnectionError as exc:
        raise PublishError(f"{where}: cannot connect ({exc})") from exc


def start_spark(offline_store) -> None:
    """The Spark session of the Spark target, started from ``offline_store.spark_conf`` before Feast's compute
    engine can start one without it (Feast 0.67 does not apply ``batch_engine.spark_conf``), with Spark's Python
    workers on this interpreter (they import Feast)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
        get_spark_session_or_start_new_with_repoconfig,
    )

    from embeddings.stages.spark_embed import check_spark_master

    master = (offline_store.spark_conf or {}).get("spark.master")
    if master:
        check_spark_master(master)

    get_spark_session_or_start_new_with_repoconfig(offline_store)


def online_features(repo: Repo, user_ids: list[str], service: str = "user_profile") -> pd.DataFrame:
    """Online values of ``service``'s features for ``user_ids``; a clear error before any publish or when the online
    store has lost its tables."""
    import sqlite3

    from feast.errors import FeastObjectNotFoundException

    store = repo.store()
    try:
        features = store.get_feature_service(service)
        return store.get_online_features(features=features, entity_rows=[{"user_id": u} for u in user_ids]).to_df()
    except (FeastObjectNotFoundException, FileNotFoundError) as exc:
        raise InputError(f"{repo.path}: nothing published yet ({str(exc).splitlines()[0]}); run publish first") from exc
    except sqlite3.OperationalError as exc:
        raise PublishError(
            f"{repo.online_db}: the online store lost its tables ({exc}); publish the run again"
        ) from exc
    except Exception as exc:  # Redis lost, failing over, or a cluster node gone after the connection check
        if not type(exc).__module__.startswith("redis"):
            raise
        where = ",".join(f"{h}:{p}" for h, p in _redis_parts(store.config.online_store.connection_string)[0])
        raise PublishError(f"Redis at {where}: {str(exc).splitlines()[0] or type(exc).__name__}") from exc


def historical_features(repo: Repo, entity_df: pd.DataFrame, service: str = "user_profile") -> pd.DataFrame:
    """Point-in-time rows of the service's features for ``entity_df``. Views that nothing was ever published to
    (e.g. profile vectors before the first run of a model with a profile head) are left out, not an error."""
    store = repo.store()
    published = {v for t in TABLES if any((repo.data / "offline" / t).glob("*.parquet")) for v in views_of(t)}
    refs = [
        f"{p.name_to_use()}:{f.name}"
        for p in store.get_feature_service(service).feature_view_projections
        if p.name in published
        for f in p.features
    ]
    if not refs:
        raise InputError(f"{repo.path}: nothing published yet for feature service {service!r}")
    with contextlib.chdir(repo.path):  # the DuckDB sources' paths are relative to the repo
        got = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    stamps = got["event_timestamp"]
    if stamps.dt.tz is None:  # Spark gives UTC wall-clock time without the zone, in microseconds
        stamps = stamps.dt.tz_localize("UTC")
    if isinstance(entity_df["event_timestamp"].dtype, pd.DatetimeTZDtype):
        stamps = stamps.astype(entity_df["event_timestamp"].dtype)  # the entity frame's own timestamps back
    got["event_timestamp"] = stamps
    return got


def listings_from_store(repo: Repo, item_ids, as_of: pd.Timestamp) -> pd.DataFrame:
    """lst features of ``item_ids`` as the feature store knew them at ``as_of`` (point-in-time), one row per
    listing in the listings-table shape, for building frozen or hybrid item vectors.

    A listing first published after ``as_of`` (a cold-start listing) gets its earliest published version.
    """
    store = repo.store()
    refs = [f"listing_lst_features:{c}" for c in LISTING_FEATURES]
    ids = pd.Series(list(item_ids), dtype=object)
    with contextlib.chdir(repo.path):  # the DuckDB sources' paths are relative to the repo
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
