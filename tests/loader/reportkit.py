"""The hand-made dataset in both warehouses, with the reporting objects created and refreshed, and a way
to read any object the same way from both (the shared setup of test_reporting*.py and test_metadata*.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import psycopg
from clickstream_core.appconfig import App
from clickstream_loader import reporting
from clickstream_loader.reporting import Target

from . import dataset


@dataclass
class Warehouses:
    pg: psycopg.Connection
    duck: duckdb.DuckDBPyConnection
    target: Target
    root: Path
    duck_mode: str = "views"

    def mode(self, engine: str) -> str:
        return "tables" if engine == "postgres" else self.duck_mode

    def conn(self, engine: str):
        return self.pg if engine == "postgres" else self.duck

    def query(self, engine: str, sql: str, params: dict | None = None) -> list[dict]:
        """Rows as dicts, values normalised (Decimal -> float, aware datetimes -> naive UTC)."""
        return self.query_on(self.conn(engine), engine, sql, params)

    @staticmethod
    def query_on(conn, engine: str, sql: str, params: dict | None = None) -> list[dict]:
        from clickstream_loader.reporting.db import Runner

        names, rows = Runner(conn, engine).columns(sql, params)
        return [dict(zip(names, (normalise(v) for v in row), strict=True)) for row in rows]

    def rows(
        self, engine: str, name: str, where: str = "", params: dict | None = None, columns: str = "*"
    ) -> list[dict]:
        sql = f'SELECT {columns} FROM "{self.target.schema}"."{name}"' + (f" WHERE {where}" if where else "")
        return sorted(self.query(engine, sql, params), key=sort_key)


def normalise(value):
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, float):
        return float(f"{value:.12g}") if math.isfinite(value) else value
    return value


def sort_key(row: dict) -> tuple:
    return tuple((v is None, str(type(v).__name__), v if v is not None else 0) for v in row.values())


def build(pg_cluster, tmp: Path, name: str, timezone: str = "UTC", duck_mode: str = "views") -> Warehouses:
    root = dataset.write_parquet(tmp / "ods")
    pg = psycopg.connect(pg_cluster.create_database(name), autocommit=True)
    dataset.load_postgres(pg, root)
    duck = duckdb.connect()
    dataset.duckdb_views(duck, root)
    target = Target.of(App(dataset.APP_ID, timezone), project_id=dataset.PROJECT_ID)
    reporting.create_objects(pg, "postgres", target)
    reporting.create_objects(duck, "duckdb", target, mode=duck_mode)
    return Warehouses(pg, duck, target, root, duck_mode)


def backfill_all(wh: Warehouses, start: date = date(2024, 3, 1), end: date = date(2024, 3, 31)) -> None:
    """Every day of the dataset into the PostgreSQL tables (the DuckDB views need nothing)."""
    for engine in ("postgres", "duckdb"):
        reporting.backfill(wh.conn(engine), engine, wh.target, start, end, mode=wh.mode(engine))
        reporting.scan_metadata(wh.conn(engine), engine, wh.target, start, end, mode=wh.mode(engine))
