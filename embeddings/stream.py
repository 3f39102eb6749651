"""Fresh vectors between weekly runs: ``lst-embeddings stream``.

A worker reads click events from a Redis Stream through a consumer group (several workers share one stream),
checks every event against the data contract (a bad one goes to a dead-letter stream with its reason and changes
nothing), keeps each user's clicks in Redis (first touch of each listing, click count, clicks on rentals, last
click: what the batch ``embed`` and ``classify`` read from the events table, so a restarted or added worker
continues where another stopped), and for every user a micro-batch touched recomputes the intent and profile
vectors with the published release's model, mapped into the pinned space exactly as the weekly publish maps them,
and the rent/sale score with the release's classifier. New listings (with their lst features, on a listings
stream) get vectors from the release's item encoder. Everything goes online through Feast's push sources and
offline as appended Parquet files (one per table and flush, never a rewrite; merged per hour later), stamped
with the user's last click (later than the previous write, see ``_READ``); the events are acknowledged only after
that.

Delivery is at least once: a worker killed before its acknowledgement leaves the events pending, and a restarted
worker (or another, after ``claim_idle_ms``) processes them again. Re-processing is idempotent: the click store
counts an event id once, and the same clicks give the same vector. A weekly publish leaves a user the stream
wrote later alone (``_lst_streamed``); the workers then switch to its release on their own.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from embeddings.data.contract import (
    EVENT_COLUMNS,
    EVENT_RULES,
    LISTING_COLUMNS,
    LISTING_RULES,
    _problem,
    latest_versions,
    rule_flags,
    valid_rows,
    validate_frame,
)
from embeddings.errors import InputError
from embeddings.feature_store._writer import view_columns
from embeddings.feature_store.repo import Repo
from embeddings.io import kill_point
from embeddings.release import CLASSIFIER, MODEL, Release, published_release, release_dir
from embeddings.stages.classify import PreferenceModel

STREAM = "lst_embeddings:clicks"
LISTINGS = "lst_embeddings:listings"  # new listings and new versions, with their lst features
GROUP = "lst-embeddings"
PUSH_SOURCES = {
    "user_embeddings": "user_embedding_push",
    "user_profiles": "user_profile_push",
    "user_preference": "user_preference_push",
    "listings": "listing_lst_push",
    "listing_embeddings": "listing_embedding_push",
}
COMPACTED = "compacted"  # in the name of an offline file merged from a worker's per-flush files
COMPACT_EVERY_S = 600.0  # how often a worker's flusher looks for files to merge (compact_stream_files)
STREAMED = "_lst_streamed"  # on an entity's Feast hash: the event time (Unix us) of the stream's latest write to it


# ------------------------------------------------------------------------------------------------ sources
class EventSource(Protocol):
    """Where click events come from: a Redis Stream here; a Kafka topic would implement the same three calls."""

    def read(self, count: int, block_ms: int) -> list[tuple[str, dict[str, str]]]: ...

    def ack(self, ids: list[str]) -> None: ...

    def dead_letter(self, entry: str, fields: dict[str, str], reason: str) -> None: ...


class RedisStreamSource:
    """A consumer of a Redis Stream's consumer group: its own unacknowledged events first (after a restart), then
    events other consumers left pending for ``claim_idle_ms`` (a dead worker's), then new ones."""

    def __init__(
        self,
        client,
        stream: str = STREAM,
        group: str = GROUP,
        consumer: str | None = None,
        claim_idle_ms: int = 30_000,
    ):
        from redis.exceptions import ResponseError

        self.client, self.stream, self.group = client, stream, group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.dead = f"{stream}:dead"
        self.claim_idle_ms = claim_idle_ms
        self._own_pending = True
        try:
            client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        if self._own_pending:
            got = self.client.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
            entries = _entries(got)
            if entries:
                return entries
            self._own_pending = False
        claimed = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=count
        )
        entries = [(_text(i), _fields(f)) for i, f in claimed[1] if f]
        if entries:
            return entries
        block = block_ms if block_ms > 0 else None  # 0: do not wait (Redis would wait for ever)
        got = self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block)
        return _entries(got)

    def ack(self, ids: list[str]) -> None:
        if ids:
            self.client.xack(self.stream, self.group, *ids)

    def dead_letter(self, entry: str, fields: dict[str, str], reason: str) -> None:
        self.client.xadd(self.dead, {**fields, "reason": reason, "entry": entry})


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _fields(raw: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _entries(got) -> list[tuple[str, dict[str, str]]]:
    return [(_text(i), _fields(f)) for _, entries in (got or []) for i, f in entries if f]


# ------------------------------------------------------------------------------------------------- checks
def check_rows(rows: pd.DataFrame, columns, rules, listings: pd.DataFrame | None = None) -> pd.Series:
    """Per row: None when it meets the data contract's ``columns`` and row ``rules``, else the reason (column,
    problem), the first found."""
    reasons: dict = {}
    for col in columns:
        s = rows[col.name] if col.name in rows else pd.Series(None, index=rows.index, dtype=object)
        bad = ~valid_rows(s, col)
        for i in bad[bad].index:
            reasons.setdefault(i, f"column '{col.name}': {_problem(s[[i]], col)}")
    ok = [i for i in rows.index if i not in reasons]
    if ok:
        flags = rule_flags(rows.loc[ok], rules, listings)  # the rules read text as the loaders' types
        for rule in rules:
            if rule.name in flags:
                for i in flags[rule.name][~flags[rule.name]].index:
                    reasons.setdefault(i, f"column '{rule.column}': {rule.problem}")
    return pd.Series([reasons.get(i) for i in rows.index], index=rows.index, dtype=object)


def check_events(events: pd.DataFrame, known_items: set[str], listings: pd.DataFrame | None = None) -> pd.Series:
    """Per event: None when it meets the data contract, else the reason. ``listings``: the catalogue with each
    listing's ``created_at`` (a click before it breaks the contract)."""
    unknown = ~events["item_id"].isin(known_items)
    reason = "column 'item_id': a listing unknown to the published release and the listings table"
    reasons = check_rows(events, EVENT_COLUMNS, EVENT_RULES, listings)
    return reasons.where(reasons.notna() | ~unknown, reason)


def check_listings(rows: pd.DataFrame) -> pd.Series:
    """Per listing version: None when it meets the data contract, else the reason."""
    return check_rows(rows, LISTING_COLUMNS, LISTING_RULES)


# ---------------------------------------------------------------------------------------------- the clicks
# one event into a user's clicks, once: KEYS (ids set, first touches zset, stats hash); ARGV: event id, listing,
# time (Unix s, the first touches' order), 1 if the listing is a rental, time (Unix us), the keys' ttl (s)
_ADD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 'LT', ARGV[3], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'n_events', 1)
redis.call('HINCRBY', KEYS[3], 'rent', ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[3], 'last') or '-1')
if tonumber(ARGV[5]) > last then redis.call('HSET', KEYS[3], 'last', ARGV[5]) end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
return 1
"""
CLICKS_TTL_S = 8 * 86_400  # a user's clicks are kept this long after the last (the user views' ttl)
# a user's clicks, and the event time (Unix us) of the write they are read for: the last click's, but later than the
# previous write's and than the release's cut-off (ARGV[1]), so Feast's Redis store, which skips a write that is not
# newer than the stored one, takes every write (a late click, a second click in the same instant, a new release)
_READ = """
local touches = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local s = redis.call('HMGET', KEYS[3], 'n_events', 'last', 'rent', 'stamp')
if not s[1] then return {touches} end
local stamp = math.max(tonumber(s[2]), tonumber(s[4] or '0') + 1, tonumber(ARGV[1]) + 1)
redis.call('HSET', KEYS[3], 'stamp', string.format('%d', stamp))
return {touches, s[1], s[2], s[3] or '0', string.format('%d', stamp)}
"""


@dataclass(frozen=True)
class History:
    """What the click store holds of a user besides the first touches."""

    n_events: int
    last_us: int  # the last click, Unix us
    rent_clicks: int  # clicks on rentals (the classifier's history share)
    stamp_us: int  # the event time of the write this read is for


@dataclass
class ClickStore:
    """Each user's clicks in Redis: the first touch of each listing (a sorted set by time), the number of clicks, the
    clicks on rentals and the last one, and the ids of the events counted (so a re-delivered event counts once);
    kept ``ttl_s`` after the user's last click."""

    client: object  # a Redis or Redis Cluster client: the scripts go as EVAL (a cluster pipeline refuses EVALSHA)
    project: str
    ttl_s: int = CLICKS_TTL_S

    def _keys(self, user: str) -> list[str]:
        tag = f"lst_embeddings:clicks:{self.project}:{{{user}}}"  # one hash slot per user on a cluster
        return [f"{tag}:ids", f"{tag}:items", f"{tag}:stats"]

    def add(self, events: list[tuple[str, str, str, int, bool]]) -> int:
        """(event id, user, listing, Unix us, rental) each; one round trip. Returns how many were new."""
        pipe = self.client.pipeline(transaction=False)
        for event_id, user, item, us, rent in events:
            _eval(pipe, _ADD, self._keys(user), [*_add_args(event_id, item, us, rent), self.ttl_s])
        return sum(pipe.execute()) if events else 0

    def seed(self, events: pd.DataFrame, listings: pd.DataFrame | None = None) -> int:
        """The clicks of a batch run (the events table before its cut-off), so that streamed clicks continue them;
        ``listings``: their deal types (the classifier's history share)."""
        us = events["event_timestamp"].astype("datetime64[us, UTC]").astype("int64")
        rent = _rentals(listings)
        frame = events.assign(us=us.to_numpy(), rent=events["item_id"].isin(rent).to_numpy()).reset_index(drop=True)
        pipe = self.client.pipeline(transaction=False)
        for i, row in enumerate(frame.itertuples(index=False)):
            key = f"batch:{row.user_id}:{row.item_id}:{row.us}:{row.event_type}"  # a click seeded twice: once
            _eval(pipe, _ADD, self._keys(row.user_id), [*_add_args(key, row.item_id, row.us, row.rent), self.ttl_s])
            if i % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
        return len(frame)

    def mark_streamed(self, users: list[str], seconds: list[float]) -> None:
        """Remember which users streamed clicks, and their last: a new release re-embeds those after its cut-off."""
        key = f"lst_embeddings:streamed:{self.project}"
        self.client.zadd(key, dict(zip(users, seconds, strict=True)), gt=True)

    def streamed_since(self, seconds: float) -> list[str]:
        key = f"lst_embeddings:streamed:{self.project}"
        self.client.zremrangebyscore(key, "-inf", seconds)
        return sorted(_text(u) for u in self.client.zrangebyscore(key, f"({seconds}", "+inf"))

    def histories(self, users: list[str], after_us: int = 0) -> tuple[pd.DataFrame, dict[str, History]]:
        """The users' first touches (``user_id``, ``item_id``; each user's together, oldest first) and per user
        what else the store holds, with the event time of the write they are read for (later than ``after_us``)."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            _eval(pipe, _READ, self._keys(user), [after_us])
        rows, stats = [], {}
        for user, got in zip(users, pipe.execute(), strict=True):
            rows += [(user, _text(item)) for item in got[0][::2]]
            if len(got) > 1:
                stats[user] = History(*(int(_text(v)) for v in got[1:]))
        return pd.DataFrame(rows, columns=["user_id", "item_id"]), stats


def _eval(pipe, script: str, keys: list, args: list) -> None:
    """A Lua script in a pipeline of a Redis or a Redis Cluster client (routed by its keys' slot there)."""
    pipe.execute_command("EVAL", script, len(keys), *keys, *args)


def _add_args(event_id: str, item: str, us: int, rent: bool) -> list:
    return [event_id, item, repr(us / 1e6), int(bool(rent)), int(us)]


def _rentals(listings: pd.DataFrame | None) -> set[str]:
    if listings is None:
        return set()
    latest = latest_versions(listings)
    return set(latest.loc[latest["deal_type"] == "rent", "item_id"].astype(str))


# ------------------------------------------------------------------------------------------------ the worker
@dataclass
class StreamReport:
    events: int = 0
    dead: int = 0
    users: int = 0
    batches: int = 0
    seconds: float = 0.0
    release: str | None = None
    switched: int = 0  # new releases the worker moved to
    listings: int = 0  # new listing versions given vectors
    batch_ms: list[float] = field(default_factory=list, repr=False)  # each micro-batch's time
    lag_ms: list[float] = field(default_factory=list, repr=False)  # each event: from its XADD to its vectors online

    def percentiles(self) -> str:
        if not self.batch_ms:
            return "no micro-batch"
        (b50, b99), (l50, l99) = np.percentile(self.batch_ms, [50, 99]), np.percentile(self.lag_ms or [0], [50, 99])
        return f"micro-batch p50 {b50:.1f} ms, p99 {b99:.1f} ms; stream to online p50 {l50:.1f} ms, p99 {l99:.1f} ms"


class StreamWorker:
    """Consumes click events and keeps the touched users' online (and offline) vectors fresh; see the module."""

    def __init__(
        self,
        repo: Repo,
        source: EventSource,
        batch_size: int = 500,
        block_ms: int = 200,
        flush_s: float = 1.0,
        listings: ListingFeed | None = None,
        threads: int = 1,
        compact_after_s: float | None = 3600.0,
    ):
        import torch

        torch.set_num_threads(threads)  # micro-batches are small: workers scale out as processes, one core each
        self.repo, self.source, self.feed = repo, source, listings
        self.batch_size, self.block_ms, self.flush_s = batch_size, block_ms, flush_s
        self._offline: dict[str, list[pd.DataFrame]] = {name: [] for name in PUSH_SOURCES}
        self._unacked: list[str] = []
        self._unacked_listings: list[str] = []
        self._flusher = ThreadPoolExecutor(1, thread_name_prefix="lst-flush")
        self._flushing: Future | None = None
        self._flushed = time.monotonic()
        self.compact_after_s, self._compacted = compact_after_s, time.monotonic()  # None: never compacts
        self.store = repo.store()
        self.clicks = ClickStore(repo.redis(), self.store.project)
        self.release: Release | None = None
        self.report = StreamReport()

    def _load_release(self) -> None:
        """The latest published release's model, maps and listings (again when a publish brought a new one)."""
        from embeddings.stages.embed import Embedder

        latest = self.repo.latest_run()
        release = published_release(self.repo.data, latest)
        if release is None:
            raise InputError(f"{self.repo.path}: nothing published yet; the stream needs a published release")
        if self.release is not None and release.model_version == self.release.model_version:
            return
        model = release_dir(self.repo.data, release.model_version) / MODEL
        if not model.exists():
            raise InputError(f"{model}: the published release's model is missing; publish a run of it again")
        switched = self.release is not None
        if switched:
            self.flush(wait=True)  # the old release's rows and acknowledgements first
        self.views = {  # resolved once per release: Feast's push reads the registry again on every call
            source: self.store._fvs_for_push_source_or_raise(source, True) for source in PUSH_SOURCES.values()
        }
        self.ttls = {fv.name: int(fv.ttl.total_seconds()) for views in self.views.values() for fv in views}
        self.listings = _published_listings(self.repo)
        if self.feed is not None:
            self.feed.rewind()  # the catalogue again from the whole listings stream, for the new embedder
        self.embedder = Embedder.from_checkpoint(model, self.listings)
        self.scorer = None
        if release.scorer and (release_dir(self.repo.data, release.model_version) / CLASSIFIER).exists():
            self.scorer = PreferenceModel.load(release_dir(self.repo.data, release.model_version) / CLASSIFIER)
        self.cutoff_us = int(pd.Timestamp(latest["cutoff"]).value // 1000)
        self._catalogue()
        self._catch_up()
        self.release = release
        self.report.release = release.model_version
        if switched:  # users streamed since the new run's cut-off: their vectors again, from the new release
            cutoff = pd.Timestamp(latest["cutoff"]).timestamp()
            users = self.clicks.streamed_since(cutoff)  # (and the users streamed before it are forgotten)
            for start in range(0, len(users), self.batch_size):
                self._write(users[start : start + self.batch_size])
            self.report.switched += 1

    def run(self, max_events: int | None = None, idle_stop_s: float | None = None) -> StreamReport:
        """Process events until ``max_events`` were read, or (``idle_stop_s``) the stream was empty that long."""
        import gc

        self._load_release()
        gc.collect()
        gc.freeze()  # the model, registry and catalogue: out of the collector's way (a full pass took ~200 ms)
        idle_since = time.monotonic()
        while max_events is None or self.report.events < max_events:
            if self.feed is not None:  # new listings first: clicks on them may follow
                news = self.feed.source.read(self.batch_size, 0)
                if news:
                    self.process_listings(news)
            entries = self.source.read(self.batch_size, self.block_ms)
            if not entries:
                self.flush()
                self._load_release()  # a publish while the stream is quiet: switch now, not at the next click
                if idle_stop_s is not None and time.monotonic() - idle_since >= idle_stop_s:
                    break
                continue
            self.process(entries)
            idle_since = time.monotonic()
        self.flush(wait=True)
        return self.report

    def process(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """One micro-batch: check, store the clicks, recompute the touched users and write them online; the
        offline rows and the acknowledgements wait for :meth:`flush` (every ``flush_s``, and when the worker
        stops), so a worker killed in between has its events delivered again."""
        began = time.perf_counter()
        self._load_release()
        ids = [i for i, _ in entries]
        events = pd.DataFrame([f for _, f in entries], index=ids, columns=[c.name for c in EVENT_COLUMNS])
        if not events["item_id"].isin(self.known).all():
            self._catch_up()  # a listing published a moment ago, which another worker is writing
        created = self.created.reindex(events["item_id"].dropna().unique()).dropna()  # this batch's listings
        listings = pd.DataFrame({"item_id": created.index.to_numpy(object), "created_at": created.to_numpy()})
        reasons = check_events(events, self.known, listings)
        for entry, reason in reasons.dropna().items():
            self.source.dead_letter(entry, {k: str(v) for k, v in events.loc[entry].items() if pd.notna(v)}, reason)
        good = events[reasons.isna()]
        us = pd.to_datetime(good["event_timestamp"], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
        rent = good["item_id"].isin(self.rentals)
        self.clicks.add(list(zip(good.index, good["user_id"], good["item_id"], us.astype("int64"), rent, strict=True)))
        users = sorted(set(good["user_id"]))
        if users:
            self._write(users)
        self._unacked += ids
        self.report.events += len(entries)
        self.report.dead += int(reasons.notna().sum())
        self.report.users += len(users)
        self.report.batches += 1
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()
        self.report.seconds += time.perf_counter() - began
        self.report.batch_ms.append((time.perf_counter() - began) * 1000)
        online = time.time() * 1000  # a stream entry's id starts with the Redis server's clock at XADD, in ms
        self.report.lag_ms += [online - int(i.split("-")[0]) for i in ids]

    def _catalogue(self) -> None:
        """What clicks are checked against: the listings the model knows, and those it can encode, with each
        listing's ``created_at`` (kept per listing, so a micro-batch looks up its own listings only)."""
        self.rentals = _rentals(self.listings)
        self.known = set(map(str, self.embedder.index))
        self.created = pd.Series(dtype="datetime64[us, UTC]")
        if self.listings is not None:
            self.created = self.listings.set_index("item_id")["created_at"].astype("datetime64[us, UTC]")
        if self.embedder._can_encode:
            self.known |= set(self.listings["item_id"].astype(str))

    def _catch_up(self) -> None:
        """The listings the listings stream brought since the last look, into the catalogue (every worker reads
        them all; the one its consumer group hands an entry to writes the vectors)."""
        if self.feed is None:
            return
        rows = self.feed.since()
        if rows is None or not len(rows):
            return
        rows = rows[check_listings(rows).isna()]
        if not len(rows):
            return
        news = latest_versions(validate_frame(rows, LISTING_COLUMNS, "listings stream"))
        ids = news["item_id"]
        first = rows.assign(created_at=pd.to_datetime(rows["created_at"], utc=True, format="ISO8601"))
        created = first.groupby("item_id")["created_at"].min().astype("datetime64[us, UTC]")
        created = pd.concat([created, self.created.reindex(created.index).dropna()]).groupby(level=0).min()
        news = news.assign(created_at=ids.map(created).to_numpy())
        if self.listings is None:
            self.listings = news
        else:  # one row per listing, the newest version: the listings' rows replaced, no sort of the catalogue
            self.listings = pd.concat([self.listings[~self.listings["item_id"].isin(ids)], news], ignore_index=True)
        self.embedder.listings = self.listings
        self.embedder.encode_listings(ids[ids.isin(self.embedder._encoded)])  # a new version: its vector again
        self.created = pd.concat([self.created.drop(ids, errors="ignore"), created.reindex(ids)])
        rent = set(news.loc[news["deal_type"] == "rent", "item_id"].astype(str))
        self.rentals = (self.rentals - set(ids)) | rent
        if self.embedder._can_encode:
            self.known |= set(ids.astype(str))

    def process_listings(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """New listings (or versions) with their lst features: checked (a bad one to the dead letters), into the
        catalogue, and their vectors from the release's item encoder (lst-frozen, hybrid) pushed online through
        ``listing_embedding_push`` with the features through ``listing_lst_push``; offline and acknowledgement at
        the next :meth:`flush`."""
        self._load_release()
        self._catch_up()
        ids = [i for i, _ in entries]
        rows = pd.DataFrame([f for _, f in entries], index=ids, columns=[c.name for c in LISTING_COLUMNS])
        reasons = check_listings(rows)
        if not self.embedder._can_encode:
            encoder = self.embedder.encoder
            cannot = f"column 'item_id': the release's item encoder ({encoder}) has no vector for a new listing"
            reasons = reasons.fillna(cannot)
        for entry, reason in reasons.dropna().items():
            self.feed.source.dead_letter(entry, {k: str(v) for k, v in rows.loc[entry].items() if pd.notna(v)}, reason)
        good = rows[reasons.isna()]
        if len(good):
            self._write_listings(validate_frame(good, LISTING_COLUMNS, "listings stream"))
        self._unacked_listings += ids
        self.report.listings += len(good)
        self.report.dead += int(reasons.notna().sum())

    def _write_listings(self, versions: pd.DataFrame) -> None:
        """The newest version's vector (after the release's cut-off, so Feast takes it over the run's), online and
        buffered, with the versions' lst features."""
        latest = latest_versions(versions)
        ids = list(latest["item_id"].astype(str))
        floor = pd.Timestamp(self.cutoff_us + 1, unit="us", tz="UTC")  # after the release's rows: Feast takes it
        stamps = latest["event_timestamp"].astype("datetime64[us, UTC]").clip(lower=floor)
        table = pd.DataFrame(
            {
                "item_id": np.asarray(ids, dtype=object),
                "embedding": list(self.embedder._encode_new(ids, None).numpy().astype(np.float32)),
                "source": "lst-features",
                "model_version": self.release.model_version,
                "event_timestamp": stamps.to_numpy(),
            }
        )
        self._mark("item_id", ids, [int(t.value // 1000) for t in stamps], "listing_embedding")
        self._emit({"listings": versions, "listing_embeddings": self.release.columns(table, "intent")})

    def flush(self, wait: bool = False) -> None:
        """Hand the buffered offline rows and the acknowledgements to the flusher thread: one Parquet file per table
        (never a rewrite), then the acknowledgements, in the order of the flushes; the micro-batches go on
        meanwhile (the file writing leaves the click-to-visible path). ``wait``: until every flush is done. A
        flush that failed raises here, and the worker stops with its events unacknowledged."""
        if self._flushing is not None and (wait or self._flushing.done()):
            self._flushing.result()  # its error, if any, stops the worker
            self._flushing = None
        offline, ids, listings = self._offline, self._unacked, self._unacked_listings
        self._offline = {name: [] for name in PUSH_SOURCES}
        self._unacked, self._unacked_listings, self._flushed = [], [], time.monotonic()
        if ids or listings or any(offline.values()):
            before = self._flushing
            self._flushing = self._flusher.submit(self._write_files, offline, ids, listings, before)
            if wait:
                self.flush(wait=True)

    def _write_files(self, offline: dict[str, list[pd.DataFrame]], ids: list[str], listings: list[str], before):
        from embeddings.feature_store._writer import _offline_table, _write_offline, content_hash

        if before is not None:
            before.result()  # an earlier flush failed: acknowledge nothing after it
        stamp = pd.Timestamp.now(tz="UTC")
        for name, parts in offline.items():
            if parts:
                both = pd.concat(parts, ignore_index=True)
                rows = _offline_table(name, both.drop(columns="published_at"), both["published_at"].to_numpy())
                path = self.repo.data / "offline" / name / f"stream-{stamp:%Y%m%dT%H%M%S%f}-{os.getpid()}.parquet"
                _write_offline(rows, path, content_hash({name: rows}))
        kill_point("stream:before-ack")  # crash tests: the vectors are online, the events not yet acknowledged
        if self.feed is not None:
            self.feed.source.ack(listings)
        self.source.ack(ids)
        if self.compact_after_s is not None and time.monotonic() - self._compacted >= COMPACT_EVERY_S:
            self._compacted = time.monotonic()
            compact_stream_files(self.repo, self.clicks.client, self.compact_after_s)

    def _write(self, users: list[str]) -> None:
        """The users' vectors (and score) from their clicks in the store, online, then buffered for offline."""
        from embeddings.stages.embed import Embedder

        touches, stats = self.clicks.histories(users, self.cutoff_us)
        vectors = self.embedder.embed_first_touches(touches)
        if not len(vectors):
            return
        held = [stats[u] for u in vectors["user_id"]]
        vectors = vectors.assign(
            n_events=np.array([h.n_events for h in held], np.int64),
            last_event_at=pd.to_datetime([h.last_us for h in held], unit="us", utc=True),
            model_version=self.embedder.version,
            event_timestamp=pd.to_datetime([h.stamp_us for h in held], unit="us", utc=True),
        )
        intent, profiles = Embedder.split_heads(vectors)
        tables = {"user_embeddings": self.release.columns(intent, "intent")}
        if profiles is not None:
            tables["user_profiles"] = self.release.columns(profiles, "profile")
        if self.scorer is not None:
            head = profiles if self.release.scorer["head"] == "profile" else intent
            tables["user_preference"] = self._score(head, held)
        self._mark("user_id", intent["user_id"], [h.stamp_us for h in held], "user_embedding")
        self._emit(tables)
        self.clicks.mark_streamed(list(intent["user_id"]), [h.last_us / 1e6 for h in held])

    def _score(self, users: pd.DataFrame, held: list[History]) -> pd.DataFrame:
        """The release's classifier on the native vectors and the users' clicks (share of rentals, count): the
        features ``score_users`` gives the batch."""
        n = np.array([h.n_events for h in held], np.float64)
        share = np.array([h.rent_clicks for h in held], np.float64) / np.maximum(n, 1)
        x = np.hstack([np.stack(users["embedding"].to_numpy()), np.column_stack([share, np.log1p(n)])])
        p = self.scorer.predict(x.astype(np.float32))
        return pd.DataFrame(
            {
                "user_id": users["user_id"].to_numpy(object),
                "p_rent": p.astype(np.float32),
                "predicted_deal_type": np.where(p >= 0.5, "rent", "sale"),
                "classifier_version": self.scorer.version,
                "event_timestamp": users["event_timestamp"].to_numpy(),
            }
        )

    def _emit(self, tables: dict[str, pd.DataFrame]) -> None:
        """Each table online through its push source, and buffered for the offline files (written at the next
        :meth:`flush`, in the offline tables' shape, with the time the rows went online)."""
        published_at = pd.Timestamp.now(tz="UTC")
        for name, table in tables.items():
            table = table.assign(published_at=published_at)
            self._push(PUSH_SOURCES[name], view_columns(name, table))
            self._offline[name].append(table)

    def _push(self, source: str, rows: pd.DataFrame) -> None:
        """What ``FeatureStore.push(source, rows, to=ONLINE)`` does: the provider's ingestion into each view of the
        push source (a view whose features are all null skipped), with the views resolved once per release and
        the rows converted to Arrow once for all of them (``ingest_df`` converts them again for every view)."""
        import pyarrow as pa
        from feast.utils import _convert_arrow_to_proto

        provider = self.store._get_provider()
        table = pa.Table.from_pandas(rows, preserve_index=False).combine_chunks()
        for fv in self.views[source]:
            if fv.name.endswith("_next_space") and self.release.next_space is None:
                continue  # no next space: the publish's nulls stay
            keys = {entity.name: entity.dtype.to_value_type() for entity in fv.entity_columns}
            provider.online_write_batch(self.store.config, fv, _convert_arrow_to_proto(table, fv, keys), progress=None)

    def _mark(self, key: str, ids, stamps_us: list[int], view: str) -> None:
        """Before the push: each entity's Feast key records the event time of the stream's write (a weekly publish
        of older rows then leaves it alone: the batch never moves a user back in time), and a key that only
        streamed values made (a new user or listing) expires with them: the write's time + ``view``'s ttl. A key
        that a weekly publish made keeps the publish's expiry."""
        from feast.infra.online_stores.helpers import _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        ttl = self.ttls[view]
        version = self.store.config.entity_key_serialization_version
        pipe = self.clicks.client.pipeline(transaction=False)
        for entity, us in zip(ids, stamps_us, strict=True):
            entity_key = EntityKey(join_keys=[key], entity_values=[Value(string_val=entity)])
            _eval(pipe, _MARK, [_redis_key(self.store.project, entity_key, version)], [int(us), int(us) // 10**6 + ttl])
        pipe.execute()


_MARK = f"""
local old = tonumber(redis.call('HGET', KEYS[1], '{STREAMED}') or '0')
if tonumber(ARGV[1]) > old then redis.call('HSET', KEYS[1], '{STREAMED}', ARGV[1]) end
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
"""


def _published_listings(repo: Repo) -> pd.DataFrame | None:
    """Every listing's latest lst features in the repo's offline files (to encode listings new to the model)."""
    files = sorted((repo.data / "offline" / "listings").glob("*.parquet"))
    if not files:
        return None
    listings = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    listings["created_at"] = listings.groupby("item_id")["event_timestamp"].transform("min")
    return latest_versions(listings)


class ListingFeed:
    """The listings stream, twice: read whole by every worker (:meth:`since`: the catalogue clicks are checked
    against and sequences are encoded with), and through the consumer group (``source``: the worker an entry is
    handed to writes its vectors, at least once)."""

    def __init__(self, client, stream: str = LISTINGS, group: str = GROUP, consumer: str | None = None, **kwargs):
        self.client, self.stream = client, stream
        self.source = RedisStreamSource(client, stream, group, consumer, **kwargs)
        self.last = "0"

    def rewind(self) -> None:
        self.last = "0"

    def since(self) -> pd.DataFrame | None:
        rows = []
        while True:
            got = _entries(self.client.xread({self.stream: self.last}, count=10_000))
            if not got:
                break
            rows += got
            self.last = got[-1][0]
        if not rows:
            return None
        return pd.DataFrame([f for _, f in rows], columns=[c.name for c in LISTING_COLUMNS])


def compact_stream_files(repo: Repo, client, older_than_s: float = 3600.0) -> dict[str, int]:
    """Merge the workers' offline files (one per flush) older than ``older_than_s`` into one file per table and
    hour (with any earlier merge of that hour), so that point-in-time joins read a few files a day, not one a
    second. One compaction at a time (a Redis lock); the merged file is in place before its parts go. A join that
    listed a part just before it went fails with "file not found": run it again. Returns the parts merged per
    table."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    from embeddings.io import write_atomic

    lock, token = f"lst_embeddings:compact:{repo.config().project}", uuid.uuid4().hex
    if not client.set(lock, token, nx=True, px=600_000):
        return {}
    merged: dict[str, int] = {}
    try:
        before = time.time() - older_than_s
        for folder in sorted(p for p in (repo.data / "offline").glob("*") if p.is_dir()):
            hours: dict[str, list[Path]] = {}
            for path in folder.glob("stream-*.parquet"):
                hours.setdefault(path.name[len("stream-") :][:11], []).append(path)  # YYYYmmddTHH
            for hour, paths in sorted(hours.items()):
                parts = [p for p in paths if COMPACTED not in p.name and p.stat().st_mtime < before]
                if not parts or len(paths) < 2:
                    continue
                group = sorted(p for p in paths if COMPACTED in p.name or p in parts)
                table = pa.concat_tables([pq.read_table(p).replace_schema_metadata(None) for p in group])
                path = folder / f"stream-{hour}-{COMPACTED}-{token[:8]}.parquet"
                write_atomic(path, lambda tmp, table=table: pq.write_table(table, tmp))
                for p in group:
                    p.unlink()
                merged[folder.name] = merged.get(folder.name, 0) + len(group)
    finally:
        client.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end", 1, lock, token)
    return merged


def write_listings(client, listings: pd.DataFrame, stream: str = LISTINGS) -> list[str]:
    """Append listing versions (the data contract's columns) to the listings stream: what the site's listings
    service does when a listing is published or changed."""
    return _append(client, listings, LISTING_COLUMNS, stream)


def write_clicks(client, events: pd.DataFrame, stream: str = STREAM) -> list[str]:
    """Append click events (the data contract's columns) to the stream: what the site's click log does."""
    return _append(client, events, EVENT_COLUMNS, stream)


def _append(client, rows: pd.DataFrame, columns, stream: str) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for row in rows.itertuples(index=False):
        pipe.xadd(stream, {c.name: _stamp(getattr(row, c.name)) for c in columns if hasattr(row, c.name)})
    return [_text(i) for i in pipe.execute()]


def _stamp(value) -> str:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return str(value)


def status(client, stream: str = STREAM, group: str = GROUP) -> dict:
    """The stream's length, its group's pending events and the dead letters: what an operator checks."""
    groups = {_text(g["name"]): g for g in client.xinfo_groups(stream)} if client.exists(stream) else {}
    pending = int(groups[group]["pending"]) if group in groups else 0
    return {"length": client.xlen(stream), "pending": pending, "dead": client.xlen(f"{stream}:dead")}
