"""Arrow record batches as PostgreSQL's binary COPY stream, column at a time (no Python loop over rows).

Each column becomes an Arrow binary array of its COPY fields (4-byte big-endian length, -1 for NULL, then the
value in PostgreSQL's binary send format) built with numpy and Arrow kernels; `binary_join_element_wise`
then glues the fields of a row together after the 2-byte field count, and the joined array's data buffer is
the COPY body, handed to psycopg's `Copy.write` as it is. Maps and structs arrive as JSON text (DuckDB's
`to_json`) and go out as `jsonb` (version byte 1, then the text). Timestamps are UTC; naive ones (Spark's
INT96) are taken as UTC too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
PG_EPOCH_DAYS = 10_957
_NULL = pa.scalar(b"\xff\xff\xff\xff", pa.binary())
_VERSION = pa.scalar(b"\x01", pa.binary())
_UNIT_TO_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}

# our column kinds (schema.sql_type) -> numpy big-endian dtype of the binary send format
_FIXED = {
    "bigint": ">i8",
    "integer": ">i4",
    "double precision": ">f8",
    "boolean": "u1",
    "timestamp": ">i8",
    "date": ">i4",
}


def _binary_from(data: np.ndarray, width: int, n: int) -> pa.Array:
    """`n` values of `width` bytes each, back to back in `data`, as a binary array (zero copy)."""
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _fixed_fields(values: np.ndarray, dtype: str, valid: np.ndarray | None) -> pa.Array:
    """Fields of a fixed-width type: length + value, or just -1 for a null (no value bytes)."""
    n = len(values)
    width = np.dtype(dtype).itemsize
    rec = np.empty(n, dtype=[("n", ">i4"), ("v", dtype)])
    rec["n"] = width
    rec["v"] = values
    if valid is None:
        return _binary_from(rec.view(np.uint8), 4 + width, n)
    rec["n"][~valid] = -1
    keep = np.ones((n, 4 + width), dtype=bool)
    keep[~valid, 4:] = False
    data = rec.view(np.uint8).reshape(n, 4 + width)[keep]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(valid, 4 + width, 4), out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _integers(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(arr, 0).to_numpy(zero_copy_only=False)


def _timestamps_us(arr: pa.Array) -> np.ndarray:
    unit = arr.type.unit
    raw = pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    factor = _UNIT_TO_US[unit]
    us = raw // 1000 if factor is None else raw * factor
    return us - PG_EPOCH_US


def _text_fields(arr: pa.Array, json: bool) -> list:
    """[length prefixes, payloads]: joined later with the row's other fields in one pass."""
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.string())
    n = len(arr)
    # a null's length is -1 and its payload empty, so its field is just ff ff ff ff
    lengths = pc.fill_null(pc.binary_length(arr), -1 - int(json)).to_numpy(zero_copy_only=False).astype(np.int32)
    payload = arr.cast(pa.binary())
    parts = [_binary_from(_be32(lengths + int(json)), 4, n)]
    if json:  # the jsonb version byte
        parts.append(pc.if_else(arr.is_valid(), b"\x01", b"") if arr.null_count else _VERSION)
    parts.append(pc.fill_null(payload, b"") if arr.null_count else payload)
    return parts


def _be32(values: np.ndarray) -> np.ndarray:
    return values.astype(">i4").view(np.uint8)


def column_fields(arr: pa.Array, pg_type: str) -> list:
    """One column's COPY fields (length + value) as binary arrays (or scalars) to concatenate row-wise."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count == len(arr):
        return [_NULL]
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    if pg_type == "jsonb":
        return _text_fields(arr, json=True)
    if pg_type == "text" or pg_type.startswith("varchar"):
        return _text_fields(arr if pa.types.is_string(arr.type) else arr.cast(pa.string()), json=False)
    if pg_type == "timestamp":
        if not pa.types.is_timestamp(arr.type):
            arr = arr.cast(pa.timestamp("us", tz="UTC"))
        return [_fixed_fields(_timestamps_us(arr), ">i8", valid)]
    if pg_type == "date":
        days = _integers(arr.cast(pa.date32()).cast(pa.int32())) - PG_EPOCH_DAYS
        return [_fixed_fields(days, ">i4", valid)]
    if pg_type == "boolean":
        return [_fixed_fields(_integers(arr.cast(pa.uint8())), "u1", valid)]
    if pg_type == "double precision":
        values = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        return [_fixed_fields(values, ">f8", valid)]
    if pg_type in ("bigint", "integer"):
        target = pa.int64() if pg_type == "bigint" else pa.int32()
        return [_fixed_fields(_integers(arr.cast(target)), _FIXED[pg_type], valid)]
    raise ValueError(f"no binary COPY encoder for {pg_type}")


def encode_batch(columns: list[pa.Array], pg_types: list[str]) -> memoryview:
    """The COPY tuples of one batch (no header or trailer): every column must have the same length."""
    n = len(columns[0])
    if n == 0:
        return memoryview(b"")
    parts: list = [pa.scalar(len(columns).to_bytes(2, "big"), pa.binary())]
    for arr, pg_type in zip(columns, pg_types, strict=True):
        parts += column_fields(arr, pg_type)
    if not any(isinstance(p, pa.Array) for p in parts):  # every column null: one array to fix the length
        parts[0] = pa.array([parts[0].as_py()] * n, pa.binary())
    rows = pc.binary_join_element_wise(*parts, b"")
    if pa.types.is_binary(rows.type) and rows.offset == 0:
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32, count=n + 1)
        return memoryview(rows.buffers()[2])[offsets[0] : offsets[-1]]
    return memoryview(b"".join(v.as_py() for v in rows))


def encode(batches: Iterable[tuple[list[pa.Array], list[str]]]) -> Iterator[memoryview | bytes]:
    """A whole COPY stream: header, the batches' tuples, trailer."""
    yield HEADER
    for columns, pg_types in batches:
        body = encode_batch(columns, pg_types)
        if len(body):
            yield body
    yield TRAILER
