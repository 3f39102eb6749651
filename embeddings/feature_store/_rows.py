"""Arrow rows as the protobuf values Feast's online stores take: ``arrow_to_rows``, a column at a time (equal to
Feast's ``_convert_arrow_to_proto``, tested)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def arrow_to_rows(table: pa.Table | pa.RecordBatch, fv) -> list[tuple]:
    """The rows ``OnlineStore.online_write_batch`` takes: (entity key, {feature: Value}, event time, created time).

    The same protos as Feast's ``_convert_arrow_to_proto``, built a column at a time: a float vector from its
    bytes, scalars by type. Types without a fast path go through Feast's own converter.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    join_keys = {e.name: e.dtype.to_value_type() for e in fv.entity_columns}
    columns = {f.name: _values(table.column(f.name), f.dtype.to_value_type()) for f in fv.features}
    keys = {k: _values(table.column(k), t) for k, t in join_keys.items()}
    entity_keys = _entity_keys(list(join_keys), list(keys.values()))
    features = [dict(zip(columns, vals, strict=True)) for vals in zip(*columns.values(), strict=True)]
    source = fv.batch_source
    event_times = _datetimes(table.column(source.timestamp_field))
    created = (
        _datetimes(table.column(source.created_timestamp_column))
        if source.created_timestamp_column
        else [None] * table.num_rows
    )
    return list(zip(entity_keys, features, event_times, created, strict=True))


def _entity_keys(names: list[str], columns: list[list]) -> list:
    """``EntityKey(join_keys=names, entity_values=[...])`` per row, parsed from its encoding (building the message
    field by field copies every value)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    head = EntityKey(join_keys=names).SerializeToString()
    field = EntityKey.DESCRIPTOR.fields_by_name["entity_values"].number
    tag = _varint(field << 3 | 2)
    encoded = [[v.SerializeToString() for v in column] for column in columns]
    rows = zip(*encoded, strict=True)
    return [EntityKey.FromString(head + b"".join(tag + _varint(len(b)) + b for b in row)) for row in rows]


def _datetimes(column: pa.ChunkedArray) -> list:
    return list(pd.to_datetime(column.to_numpy(zero_copy_only=False)).to_pydatetime())


def _values(column: pa.ChunkedArray, value_type) -> list:
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import python_values_to_proto_values
    from feast.value_type import ValueType

    array = column.combine_chunks()
    if value_type == ValueType.FLOAT_LIST:
        fast = _float_lists(array)
        if fast is not None:
            return fast
    scalar = {
        ValueType.STRING: "string_val",
        ValueType.INT64: "int64_val",
        ValueType.INT32: "int32_val",
        ValueType.DOUBLE: "double_val",
        ValueType.FLOAT: "float_val",
        ValueType.BOOL: "bool_val",
    }.get(value_type)
    if scalar is None or array.null_count:  # Feast's own rules for nulls and every other type
        return python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)
    codes, uniques = pd.factorize(array.to_numpy(zero_copy_only=False))  # one proto per distinct value
    protos = [Value(**{scalar: v.item() if isinstance(v, np.generic) else v}) for v in uniques]
    return [protos[c] for c in codes]


def _float_lists(array: pa.Array) -> list | None:
    """``Value(float_list_val=...)`` for every row, parsed from bytes laid out as protobuf encodes them; None when
    the rows are not all non-null vectors of one length (Feast's converter then takes them)."""
    from feast.protos.feast.types.Value_pb2 import Value

    if not pa.types.is_list(array.type) and not pa.types.is_large_list(array.type) or array.null_count:
        return None
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets)
    if len(lengths) == 0 or (lengths != lengths[0]).any() or lengths[0] == 0:
        return None
    dim = int(lengths[0])
    flat = array.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
    rows = np.ascontiguousarray(flat, dtype="<f4").reshape(-1, dim).view(np.uint8)
    field = Value.DESCRIPTOR.fields_by_name["float_list_val"].number
    inner = _varint(1 << 3 | 2) + _varint(4 * dim)  # FloatList.val: field 1, packed
    prefix = np.frombuffer(_varint(field << 3 | 2) + _varint(len(inner) + 4 * dim) + inner, np.uint8)
    blob = np.concatenate([np.broadcast_to(prefix, (len(rows), len(prefix))), rows], axis=1).tobytes()
    width = len(prefix) + 4 * dim
    return [Value.FromString(blob[i : i + width]) for i in range(0, len(blob), width)]


def _varint(x: int) -> bytes:
    if x < 0x80:
        return _BYTES[x]
    out = bytearray()
    while True:
        low, x = x & 0x7F, x >> 7
        out.append(low | (0x80 if x else 0))
        if not x:
            return bytes(out)


_BYTES = [bytes([i]) for i in range(0x80)]
