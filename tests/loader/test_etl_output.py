"""The real ETL's output (web SDK recordings, SDK retries across two windows) through both engines."""

from __future__ import annotations

import json

import duckdb
from clickstream_core.tables import TABLES
from clickstream_loader.runner import run_once
from clickstream_loader.schema import MERGE_KEYS, TABLE_NAMES, is_json
from clickstream_loader.warehouse import connect_duckdb

from tests.loader.helpers import duck_config, pg_config, query


def _parquet(ods, table: str, select: str) -> list[tuple]:
    con = duckdb.connect()
    return con.execute(f"SELECT {select} FROM read_parquet('{ods}/{table}/**/*.snappy.parquet')").fetchall()


def _normal(row: tuple, json_at: set[int]) -> tuple:
    """DuckDB hands JSON columns over as text; PostgreSQL's jsonb as parsed values."""
    return tuple(json.loads(v) if i in json_at and v is not None else v for i, v in enumerate(row))


def test_postgres_and_duckdb_hold_the_same_rows_once(ods, pg_dsn):
    raw = _parquet(ods, "event_v2", "count(*), count(DISTINCT (event_id, event_timestamp))")[0]
    assert raw[0] > raw[1] > 0  # the retried events reached two windows' files
    report = run_once(pg_config(ods, pg_dsn))
    assert report.status == "succeeded", report.errors
    assert run_once(duck_config(ods)).status == "succeeded"
    duck = connect_duckdb(ods / "_loader")
    for table in TABLE_NAMES:
        keys = ", ".join(MERGE_KEYS[table])
        distinct = _parquet(ods, table, f"count(DISTINCT ({keys}))")[0][0]
        columns = [c for c in TABLES[table].columns if c.name != "created_time"]
        cols = ", ".join(f'"{c.name}"' for c in columns)
        json_at = {i for i, c in enumerate(columns) if is_json(c)}
        pg_rows = query(pg_dsn, f'SELECT {cols} FROM "shop"."{table}" ORDER BY {keys}')
        duck_rows = duck.execute(f'SELECT {cols} FROM "shop"."{table}" ORDER BY {keys}').fetchall()
        assert len(pg_rows) == len(duck_rows) == distinct, table
        for pg_row, duck_row in zip(pg_rows, duck_rows, strict=True):
            assert pg_row == _normal(duck_row, json_at), table
    # spot checks against the ETL's own columns
    sample = query(pg_dsn, 'SELECT event_name, platform, page_view_page_url, sdk_name FROM "shop"."event_v2" LIMIT 1')
    assert sample[0][1] == "Web" and sample[0][2].startswith("http")
    assert report.rows_loaded["event_v2"] == raw[1]
