"""Arrow types of the data model's columns, parsed from their Spark DDL spelling in `clickstream_core.tables`."""

from __future__ import annotations

import pyarrow as pa
from clickstream_core.tables import TABLES

_SCALARS = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside <...>."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def arrow_type(spark_type: str) -> pa.DataType:
    t = spark_type.strip()
    if t in _SCALARS:
        return _SCALARS[t]
    if t.startswith("map<") and t.endswith(">"):
        key, value = _split_top(t[4:-1])
        return pa.map_(arrow_type(key), arrow_type(value))
    if t.startswith("array<") and t.endswith(">"):
        return pa.list_(arrow_type(t[6:-1]))
    if t.startswith("struct<") and t.endswith(">"):
        fields = []
        for part in _split_top(t[7:-1]):
            name, sub = part.split(":", 1)
            fields.append(pa.field(name.strip(), arrow_type(sub)))
        return pa.struct(fields)
    raise ValueError(f"unsupported Spark type {spark_type!r}")


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a table's Parquet files (the partition columns are in the path, not the file)."""
    return pa.schema([pa.field(c.name, arrow_type(c.type), nullable=not c.not_null) for c in TABLES[table].columns])
