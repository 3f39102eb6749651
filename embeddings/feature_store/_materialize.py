"""Materialization with parallel writers, through Feast's own interfaces.

Feast's local engine pulls a view's latest rows for an interval from the offline store, converts them to
protobuf values one cell at a time in Python, and hands them to the online store in one call: about 10,000 rows/s
into a Redis Cluster on two cores. :func:`materialize` does the same three steps with the same Feast calls
(``offline_store.pull_latest_from_table_or_query``, ``OnlineStore.online_write_batch``,
``registry.apply_materialization``), so keys, values and event-time deduplication are Feast's, but

- converts a column at a time (:func:`arrow_to_rows`; equal to Feast's ``_convert_arrow_to_proto``, tested),
- writes in batches of ``batch_rows`` from ``writers`` processes; each holds its own online-store client and
  reads its slices of the pulled rows from one Arrow file (memory-mapped, never pickled).

SQLite takes one writer at a time: its profile writes in this process.

:func:`materialize_entities` is the publisher's Redis path: the same pull and conversion, but the views of one
entity are written together, one ``HSET`` per entity (:mod:`._redis_rows`), so a reader never gets a user's
vectors from one run and the score from another.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import pyarrow as pa

from embeddings.feature_store._rows import arrow_to_rows

BATCH_ROWS = 5_000  # rows per online_write_batch call: one Redis pipeline
PARALLEL_MIN_ROWS = 20_000  # below this, one writer: starting processes costs more than it saves


@dataclass
class ViewWrite:
    view: str
    rows: int
    seconds: float
    writers: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def default_writers(online_store_type: str) -> int:
    return 1 if online_store_type == "sqlite" else os.cpu_count() or 1


def materialize(
    store,
    views: list[str],
    start: datetime,
    end: datetime,
    writers: int = 1,
    progress: bool = True,
    newest: bool = False,
    parallel_min_rows: int = PARALLEL_MIN_ROWS,
    sources: dict | None = None,
) -> list[ViewWrite]:
    """Load each view's latest rows in [start, end) from the offline store into the online store (``sources``:
    view -> a data source to pull from instead of the view's own).

    ``newest``: the caller guarantees these rows are to replace whatever the online store holds for their keys
    (the publisher holds the publish lock and has refused stale runs), so a Redis store skips its
    read-before-write of every key's event time (``skip_dedup``): one round trip instead of two.
    """
    from feast.utils import make_tzaware

    start, end = make_tzaware(start), make_tzaware(end)
    config = store.config
    if newest and hasattr(config.online_store, "skip_dedup"):
        config = copy.deepcopy(config)
        config.online_store.skip_dedup = True
    out = []
    for name in views:
        fv = store.get_feature_view(name)
        began = time.perf_counter()
        table = _pull(store, fv, start, end, (sources or {}).get(name))
        used = writers if table.num_rows >= parallel_min_rows and writers > 1 else 1
        if used == 1:
            _write_here(store, config, fv, table, progress)
        else:
            _write_parallel(config, fv, table, used, progress)
        store.registry.apply_materialization(fv, store.project, start, end)
        out.append(ViewWrite(name, table.num_rows, time.perf_counter() - began, used))
    return out


def materialize_entities(
    store,
    views: list[str],
    start: datetime,
    end: datetime,
    token: int,
    writers: int = 1,
    progress: bool = True,
    newest: bool | set[str] = False,
    sources: dict | None = None,
    parallel_min_rows: int = PARALLEL_MIN_ROWS,
) -> list[ViewWrite]:
    """Load each view's latest rows in [start, end) into a Redis online store, the views of one entity in one
    ``HSET`` per entity, with the key's expiry and the fencing ``token`` (:mod:`._redis_rows`).

    ``sources``: view -> the data source to pull from instead of the view's own (the publisher's staged files).
    ``newest``: the rows replace whatever is stored (else a view's older rows are skipped, Feast's rule); a set
    names the views whose rows do.
    Returns one :class:`ViewWrite` per view (the seconds are the group's).
    """
    from feast.utils import make_tzaware

    from embeddings.feature_store._redis_rows import Group

    start, end = make_tzaware(start), make_tzaware(end)
    sources = sources or {}
    fvs = [store.get_feature_view(v) for v in views]
    by_entity: dict[str, list] = {}
    for fv in fvs:
        by_entity.setdefault(fv.entity_columns[0].name, []).append(fv)
    ttl_views = {
        key: {fv.name for fv in store.list_feature_views() if fv.ttl and fv.entity_columns[0].name == key}
        for key in by_entity
    }
    out = []
    for key, group_views in by_entity.items():
        began = time.perf_counter()
        group = Group(group_views, [_pull(store, fv, start, end, sources.get(fv.name)) for fv in group_views])
        rows = max(t.num_rows for t in group.tables)
        used = writers if rows >= parallel_min_rows and writers > 1 else 1
        replace = newest if isinstance(newest, bool) else all(fv.name in newest for fv in group_views)
        protos = [fv.to_proto().SerializeToString() for fv in group_views]
        init = (store.config, protos, token, replace, ttl_views[key])
        _write_group(group, init, used, progress)
        for fv in group_views:
            store.registry.apply_materialization(fv, store.project, start, end)
        seconds = time.perf_counter() - began
        done = zip(group_views, group.tables, strict=True)
        out.extend(ViewWrite(fv.name, t.num_rows, seconds, used) for fv, t in done)
    return out


def _write_group(group, init: tuple, writers: int, progress: bool) -> None:
    from embeddings.progress import progress as bar

    order, aligned = group.aligned()
    paths = []
    try:
        for table, _ in aligned:
            fd, name = tempfile.mkstemp(prefix="lst-materialize-group.", suffix=".arrow")
            os.close(fd)
            paths.append(name)
            with pa.OSFile(name, "wb") as sink, pa.ipc.new_file(sink, table.schema) as ipc:
                ipc.write_table(table, max_chunksize=BATCH_ROWS)
        positions = [pos for _, pos in aligned]
        spans = [
            [(int(np.searchsorted(p, lo)), int(np.searchsorted(p, lo + n))) for p in positions]
            for lo, n in _batches(len(order))
        ]
        desc = f"materialize {'+'.join(fv.name for fv in group.views)}"
        if writers == 1:
            _init_group(*init, paths)
            for span in bar(spans, desc=desc, unit="batch") if progress else spans:
                _write_entities(span)
            return
        pool = ProcessPoolExecutor(writers, mp_context=_CONTEXT, initializer=_init_group, initargs=(*init, paths))
        with pool:
            futures = [pool.submit(_write_entities, span) for span in spans]
            done = as_completed(futures)
            for future in bar(done, total=len(futures), desc=desc, unit="batch") if progress else done:
                future.result()  # a writer's error ends the publish (nothing is committed)
    finally:
        _GROUP.clear()
        for name in paths:
            Path(name).unlink(missing_ok=True)


_GROUP: dict = {}


def _init_group(config, fv_protos: list[bytes], token: int, newest: bool, ttl_views: set[str], paths: list[str]):
    from feast import FeatureView
    from feast.protos.feast.core.FeatureView_pb2 import FeatureView as FeatureViewProto

    from embeddings.feature_store._redis_rows import EntityWriter

    views = [FeatureView.from_proto(FeatureViewProto.FromString(p)) for p in fv_protos]
    _GROUP.update(
        writer=EntityWriter(config, views, token, newest, ttl_views),
        tables=[pa.ipc.open_file(pa.memory_map(p)).read_all() for p in paths],
    )


def _write_entities(span: list[tuple[int, int]]) -> int:
    parts = [t.slice(lo, hi - lo) for t, (lo, hi) in zip(_GROUP["tables"], span, strict=True)]
    return _GROUP["writer"].write(parts)


def _pull(store, fv, start: datetime, end: datetime, source=None) -> pa.Table:
    """The view's latest row per entity in [start, end), as Feast's engines pull it (from ``source`` if given, else
    the view's batch source)."""
    from feast.utils import _get_column_names, _run_pyarrow_field_mapping

    entities = [store.registry.get_entity(e, store.project) for e in fv.entities]
    join_keys, features, ts_field, created_field = _get_column_names(fv, entities)
    source = source or fv.batch_source
    with contextlib.chdir(store.config.repo_path or "."):  # the DuckDB sources' paths are relative to the repo
        job = store._get_provider().offline_store.pull_latest_from_table_or_query(
            config=store.config,
            data_source=source,
            join_key_columns=join_keys,
            feature_name_columns=features,
            timestamp_field=ts_field,
            created_timestamp_column=created_field,
            start_date=start,
            end_date=end,
        )
        table = job.to_arrow()
    if source.field_mapping:
        table = _run_pyarrow_field_mapping(table, source.field_mapping)
    return table.combine_chunks()


# ------------------------------------------------------------------------------------------------ writers
def _batches(n: int, size: int | None = None) -> list[tuple[int, int]]:
    size = size or BATCH_ROWS
    return [(i, min(size, n - i)) for i in range(0, n, size)]


def _write_here(store, config, fv, table: pa.Table, progress: bool) -> None:
    from embeddings.progress import progress as bar

    online = store._get_provider().online_store
    batches = _batches(table.num_rows)
    for offset, length in bar(batches, desc=f"materialize {fv.name}", unit="batch") if progress else batches:
        online.online_write_batch(config, fv, arrow_to_rows(table.slice(offset, length), fv), None)


def _write_parallel(config, fv, table: pa.Table, writers: int, progress: bool) -> None:
    from embeddings.progress import progress as bar

    fd, name = tempfile.mkstemp(prefix=f"lst-materialize-{fv.name}.", suffix=".arrow")
    os.close(fd)
    path = Path(name)
    try:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as ipc:
            ipc.write_table(table, max_chunksize=BATCH_ROWS)
        spans = _batches(table.num_rows, BATCH_ROWS * 4)
        init = (config, fv.to_proto().SerializeToString(), str(path))
        with ProcessPoolExecutor(writers, mp_context=_CONTEXT, initializer=_init, initargs=init) as pool:
            futures = [pool.submit(_write_span, offset, length) for offset, length in spans]
            done = as_completed(futures)
            if progress:
                done = bar(done, total=len(futures), desc=f"materialize {fv.name}", unit="span")
            for future in done:
                future.result()  # a writer's error ends the publish (the manifest is not written)
    finally:
        path.unlink(missing_ok=True)


# Writers fork where the platform can (they need only Arrow, protobuf and the store's client, all created after
# the fork; spawning would import Feast again, ~4 s each); elsewhere they spawn.
_CONTEXT = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
_WORKER: dict = {}


def _init(config, fv_proto: bytes, path: str) -> None:
    from feast import FeatureView
    from feast.infra.online_stores.helpers import get_online_store_from_config
    from feast.protos.feast.core.FeatureView_pb2 import FeatureView as FeatureViewProto

    _WORKER.update(
        config=config,
        fv=FeatureView.from_proto(FeatureViewProto.FromString(fv_proto)),
        online=get_online_store_from_config(config.online_store),
        table=pa.ipc.open_file(pa.memory_map(path)).read_all(),
    )


def _write_span(offset: int, length: int) -> int:
    w = _WORKER
    for start, size in _batches(length):
        rows = arrow_to_rows(w["table"].slice(offset + start, size), w["fv"])
        w["online"].online_write_batch(w["config"], w["fv"], rows, None)
    return length
