"""The column-wise binary COPY encoder against a real PostgreSQL: every type, nulls, edge values."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import numpy as np
import psycopg
import pyarrow as pa
import pytest
from clickstream_loader import pgcopy

TYPES = ["varchar(20)", "text", "bigint", "integer", "double precision", "boolean", "timestamp", "date", "jsonb"]


def copy_rows(dsn: str, columns: list[pa.Array], pg_types: list[str]) -> list[tuple]:
    cols = ", ".join(f"c{i} {t}" for i, t in enumerate(pg_types))
    with psycopg.connect(dsn) as conn:
        conn.execute(f"CREATE TEMP TABLE t (n serial, {cols})")
        names = ", ".join(f"c{i}" for i in range(len(pg_types)))
        with conn.cursor().copy(f"COPY t ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            for chunk in pgcopy.encode([(columns, pg_types)]):
                copy.write(chunk)
        return conn.execute(f"SELECT {names} FROM t ORDER BY n").fetchall()


def test_every_type_with_nulls_round_trips(pg_dsn):
    ts = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    columns = [
        pa.array(["héllo", None, "", "x" * 20]),
        pa.array(["a\tb\nc", "null", None, "日本語"]),
        pa.array([2**62, None, -1, 0], pa.int64()),
        pa.array([None, 2**31 - 1, -(2**31), 7], pa.int32()),
        pa.array([1.5, None, -0.0, 1e300]),
        pa.array([True, False, None, True]),
        pa.array([ts, None, datetime(1970, 1, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)]),
        pa.array([date(2026, 3, 1), date(1900, 1, 1), None, date(2000, 1, 1)]),
        pa.array(['{"k": {"value": "v", "type": "STRING"}}', None, "{}", '{"a": [1, 2]}']),
    ]
    rows = copy_rows(pg_dsn, columns, TYPES)
    assert rows[0][:6] == ("héllo", "a\tb\nc", 2**62, None, 1.5, True)
    assert rows[0][6] == ts.replace(tzinfo=None)  # timestamp holds UTC
    assert rows[0][7] == date(2026, 3, 1)
    assert rows[0][8] == {"k": {"value": "v", "type": "STRING"}}
    assert rows[1] == (None, "null", None, 2**31 - 1, None, False, None, date(1900, 1, 1), None)
    assert rows[2][:3] == ("", None, -1) and rows[2][5:8] == (None, datetime(1970, 1, 1), None)
    assert rows[2][8] == {}
    assert rows[3][6] == datetime(1999, 12, 31, 23, 59, 59) and rows[3][7] == date(2000, 1, 1)
    assert rows[3][8] == {"a": [1, 2]} and rows[3][4] == 1e300 and rows[3][1] == "日本語"


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamp_units_and_naive_int96_style_values_are_utc(pg_dsn, unit):
    moment = datetime(2026, 11, 27, 15, 13, 20, tzinfo=UTC)
    aware = pa.array([moment], pa.timestamp(unit, tz="UTC"))
    naive = pa.array([moment.replace(tzinfo=None)], pa.timestamp(unit))
    rows = copy_rows(pg_dsn, [aware, naive], ["timestamp", "timestamp"])
    assert rows == [(moment.replace(tzinfo=None), moment.replace(tzinfo=None))]


def test_all_null_and_null_typed_columns(pg_dsn):
    n = 1000
    columns = [pa.nulls(n), pa.array([None] * n, pa.string()), pa.array(np.arange(n, dtype=np.int64))]
    rows = copy_rows(pg_dsn, columns, ["text", "jsonb", "bigint"])
    assert rows == [(None, None, i) for i in range(n)]


def test_large_batch_matches_row_by_row_values(pg_dsn):
    rng = np.random.default_rng(1)
    n = 50_000
    ints = rng.integers(-(2**40), 2**40, n)
    texts = [None if i % 7 == 0 else f"value-{i}-" + "z" * (i % 13) for i in range(n)]
    docs = [None if i % 5 == 0 else json.dumps({"i": i}) for i in range(n)]
    columns = [pa.array(ints), pa.array(texts), pa.array(docs)]
    rows = copy_rows(pg_dsn, columns, ["bigint", "varchar(255)", "jsonb"])
    assert len(rows) == n
    assert [r[0] for r in rows] == ints.tolist()
    assert [r[1] for r in rows] == texts
    assert [r[2] for r in rows] == [None if d is None else json.loads(d) for d in docs]
