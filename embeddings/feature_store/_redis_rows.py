"""One hash write per entity: the publisher's Redis (and Redis Cluster) writer.

Feast's Redis store keeps every view of one entity in one hash (key: the serialized entity key and the project;
fields: ``mmh3("<view>:<feature>")`` and ``_ts:<view>``). Feast's materialization writes a view at a time, so while
a run is published a reader could get a user's intent vector from the new run and the score from the old one.
:func:`write_entities` writes the fields of every view of a run for one entity in a single ``HSET``, Feast's own
layout, so each user (and listing) switches runs in one step. The same script gives the key its expiry and carries
the publisher's fencing token, and leaves alone an entity the stream worker gave newer values
(``embeddings.stream``):

- each hash keeps the token of the publish that last wrote it (field ``_lst_fence``); a write with a smaller
  token is refused, so a publisher that was paused while another took its lease over cannot overwrite the newer
  run (:func:`fence_token` hands out tokens that only grow, even after Redis lost its keys);
- before each batch the writer checks that its token is still the latest one and stops otherwise.

A batch that meets a lost connection, a failover or a moved slot is sent again (the writes are idempotent) until
``RETRY_S`` has passed; then the publish fails with one clear error. Where masters have replicas, a batch counts
as written once a replica holds it (``WAIT``): a master that dies right after it answered cannot take the batch
with it (Redis replicates asynchronously), so after a failover no user is silently missing or left on the old run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from embeddings.errors import PublishError

FENCE_FIELD = b"_lst_fence"
RETRY_S = 30.0  # how long a batch is retried through a failover before the publish fails
WAIT_MS = 2_000  # how long a batch waits for a replica to hold it (a master without a live replica: not waited for)

# KEYS[1] the entity's hash; ARGV: token, expire-at (Unix s, 0 = none), '1' = only shorten the expiry, the rows'
# event time (Unix us), fields... An entity the stream worker wrote later than the rows' event time keeps its values
# (field _lst_streamed, Unix us: see embeddings.stream): the batch never moves a user back in time.
WRITE = """
local fence = redis.call('HGET', KEYS[1], '_lst_fence')
if fence and tonumber(fence) > tonumber(ARGV[1]) then return 0 end
local streamed = redis.call('HGET', KEYS[1], '_lst_streamed')
if streamed and tonumber(streamed) > tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], '_lst_fence', ARGV[1], unpack(ARGV, 5))
if ARGV[2] ~= '0' and ARGV[3] == '1' then redis.call('EXPIREAT', KEYS[1], ARGV[2], 'LT')
elseif ARGV[2] ~= '0' then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return 1
"""
# KEYS[1] the project's fence counter: a token larger than every earlier one and than Redis's clock in ms, so the
# tokens keep growing even if the counter was lost with a node
NEXT_TOKEN = """
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if token <= last then token = last + 1 end
redis.call('SET', KEYS[1], string.format('%d', token))
return token
"""


def fence_key(project: str) -> str:
    return f"lst_embeddings:publish:{project}:fence"


def fence_token(client, project: str) -> int:
    """A fencing token for a new publish: larger than every token handed out before."""
    return int(client.eval(NEXT_TOKEN, 1, fence_key(project)))


@dataclass
class Group:
    """Views of one entity (e.g. a user's intent, profile and score) and their pulled rows."""

    views: list  # FeatureViews
    tables: list[pa.Table]

    def aligned(self) -> tuple[np.ndarray, list[tuple[pa.Table, np.ndarray]]]:
        """The entities of every view (sorted), and each view's rows sorted by entity with their positions."""
        key = self.views[0].entity_columns[0].name
        ids = [t.column(key).to_numpy(zero_copy_only=False).astype(str) for t in self.tables]
        order = np.unique(np.concatenate(ids)) if ids else np.array([], str)
        out = []
        for table, values in zip(self.tables, ids, strict=True):
            pos = np.searchsorted(order, values)
            idx = np.argsort(pos, kind="stable")
            out.append((table.take(pa.array(idx)), pos[idx]))
        return order, out


def client_of(config):
    """Feast's own client for the target's online store (same connection options as its reader)."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    return RedisOnlineStore()._get_client(config.online_store)


class EntityWriter:
    """Writes whole entities (all of their views' fields at once) with one client."""

    def __init__(self, config, views: list, token: int, newest: bool, ttl_views: set[str]):
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        self.config, self.views, self.token, self.newest = config, views, token, newest
        self.ttl_views = ttl_views  # the entity's views that have a ttl (all of them decide the key's expiry)
        self.client = client_of(config)
        self.client.set_retry(Retry(NoBackoff(), 0))  # retried here, batch by batch, within RETRY_S
        self.cluster = isinstance(self.client, RedisCluster)
        self.unreplicated: set[str] = set()  # masters whose replica did not answer a WAIT: not waited for again
        self.sha, self.replicas = None, False
        with contextlib.suppress(Exception):  # Redis unreachable now: the first batch retries it, then fails clearly
            self._prepare()

    def _prepare(self) -> None:
        self.sha = self.client.script_load(WRITE)
        self.replicas = self._has_replicas()

    def write(self, parts: list[pa.Table]) -> int:
        """Write the rows of ``parts`` (one slice per view, same entities); returns the entities written."""
        hashes = self._hashes(parts)
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                if self.sha is None:
                    self._prepare()
                self._check_fence()
                if not self.newest:
                    hashes = self._newer_only(hashes)
                return self._send(hashes)
            except PublishError:
                raise
            except Exception as exc:  # a lost node, a failover, a moved slot, a flushed script cache: send again
                if not _retryable(exc) or time.monotonic() > deadline:
                    raise _redis_error(self.config, exc) from exc
                time.sleep(0.5)
                self._reconnect()

    # ------------------------------------------------------------------------------------------------ rows
    def _hashes(self, parts: list[pa.Table]) -> dict[bytes, dict]:
        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.infra.online_stores.redis import _versioned_fv_name
        from feast.utils import make_tzaware
        from google.protobuf.timestamp_pb2 import Timestamp

        from embeddings.feature_store._rows import arrow_to_rows

        project, version = self.config.project, self.config.entity_key_serialization_version
        out: dict[bytes, dict] = {}
        for fv, table in zip(self.views, parts, strict=True):
            name = _versioned_fv_name(fv, self.config)
            fields = {f.name: _mmh3(f"{name}:{f.name}") for f in fv.features}
            ttl = int(fv.ttl.total_seconds()) if fv.ttl else 0
            for entity_key, values, event_time, _ in arrow_to_rows(table, fv):
                key = _redis_key(project, entity_key, version)
                stamp = Timestamp()
                stamp.FromDatetime(make_tzaware(event_time))
                entry = out.setdefault(key, {"fields": {}, "until": [], "views": {}})
                entry["fields"][f"_ts:{name}".encode()] = stamp.SerializeToString()
                entry["fields"].update({fields[k]: v.SerializeToString() for k, v in values.items()})
                entry["views"][name] = stamp.seconds * 1_000_000_000 + stamp.nanos
                if ttl:
                    entry["until"].append(stamp.seconds + ttl)
        return out

    def _newer_only(self, hashes: dict[bytes, dict]) -> dict[bytes, dict]:
        """Feast's rule for rows that may be older than the stored ones: a view's fields are written only if its
        event time is not older than the stored one."""
        from google.protobuf.timestamp_pb2 import Timestamp

        keys = list(hashes)
        names = [list(hashes[k]["views"]) for k in keys]
        with self.client.pipeline(transaction=False) as pipe:
            for key, views in zip(keys, names, strict=True):
                pipe.hmget(key, [f"_ts:{v}".encode() for v in views])
            stored = pipe.execute()
        for key, views, old in zip(keys, names, stored, strict=True):
            entry = hashes[key]
            for view, raw in zip(views, old, strict=True):
                if raw is None:
                    continue
                ts = Timestamp.FromString(raw)
                if ts.seconds * 1_000_000_000 + ts.nanos > entry["views"][view]:
                    stale = {f"_ts:{view}".encode(), *self._field_names(view)}
                    entry["fields"] = {f: v for f, v in entry["fields"].items() if f not in stale}
                    del entry["views"][view]
        return {k: e for k, e in hashes.items() if e["views"]}

    def _field_names(self, view: str) -> set[bytes]:
        from feast.infra.online_stores.helpers import _mmh3

        fv = next(fv for fv in self.views if fv.name == view)
        return {_mmh3(f"{view}:{f.name}") for f in fv.features}

    # ------------------------------------------------------------------------------------------------ Redis
    def _send(self, hashes: dict[bytes, dict]) -> int:
        nodes = {}
        with self.client.pipeline(transaction=False) as pipe:
            for key, entry in hashes.items():
                until = min(entry["until"]) if entry["until"] else 0
                shorten = "0" if set(entry["views"]) >= self.ttl_views else "1"
                flat = [x for pair in entry["fields"].items() for x in pair]
                stamp = max(entry["views"].values()) // 1000  # the rows' event time, Unix us
                args = ("EVALSHA", self.sha, 1, key, self.token, until, shorten, stamp, *flat)
                if self.cluster:  # the node from the key's slot, computed here (no round trip per command)
                    node = self.client.get_node_from_key(key)
                    nodes[node.name] = node
                    pipe.execute_command(*args, target_nodes=node)
                else:
                    pipe.execute_command(*args)
            waits = [n for n in (nodes.values() if self.cluster else [None]) if self._replicated(n)]
            for node in waits:  # on the connection that wrote: WAIT counts the replicas that hold its writes
                pipe.execute_command("WAIT", 1, WAIT_MS, **({"target_nodes": node} if node else {}))
            answers = pipe.execute()
        written, acks = answers[: len(hashes)], answers[len(hashes) :]
        for node, ack in zip(waits, acks, strict=True):
            if int(ack) < 1:  # its replica is down or lagging: the batch is on the master only
                self.unreplicated.add(node.name if node else "main")
        return int(sum(written))

    def _replicated(self, node) -> bool:
        """Whether the master ``node`` (None: the one Redis) has a replica worth waiting for."""
        return self.replicas and (node.name if node is not None else "main") not in self.unreplicated

    def _has_replicas(self) -> bool:
        if self.cluster:
            return bool(self.client.get_replicas())
        return int(self.client.info("replication").get("connected_slaves", 0)) > 0

    def _check_fence(self) -> None:
        latest = self.client.get(fence_key(self.config.project))
        if latest is not None and int(latest) > self.token:
            raise PublishError(
                "another publisher took the publish lease over (this one was paused past its lease); it stopped "
                "writing, the other publish's values stay"
            )

    def _reconnect(self) -> None:
        with contextlib.suppress(Exception):
            if self.cluster:
                self.client.nodes_manager.initialize()
            self._prepare()


def _retryable(exc: Exception) -> bool:
    import redis

    errors = redis.exceptions
    passing = (  # a failover or a lost connection; a promoted replica has no script cache
        errors.ConnectionError,
        errors.TimeoutError,
        errors.ClusterDownError,
        errors.TryAgainError,
        errors.MovedError,
        errors.AskError,
        errors.NoScriptError,
        errors.ReadOnlyError,
        errors.BusyLoadingError,
        errors.RedisClusterException,
    )
    if isinstance(exc, passing):
        return True
    text = str(exc).split(" caused error: ")[-1]  # a pipeline names the command first
    return isinstance(exc, errors.ResponseError) and text.startswith(
        ("NOSCRIPT", "No matching script", "MOVED", "ASK", "CLUSTERDOWN", "The cluster is down", "TRYAGAIN",
         "LOADING", "READONLY")
    )  # fmt: skip


def _redis_error(config, exc: Exception) -> PublishError:
    from embeddings.feature_store.repo import _redis_parts

    where = ",".join(f"{host}:{port}" for host, port in _redis_parts(config.online_store.connection_string)[0])
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return PublishError(
        f"Redis at {where}: {first}. The publish stopped; users written so far hold the new run, each whole; "
        "run the same publish again to complete it"
    )
