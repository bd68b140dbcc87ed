"""Small Parquet inputs for the loader tests, written with pyarrow in the ETL's layout."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from clickstream_loader.config import LoaderConfig

from scripts.parquetgen import write_table

DAY = datetime(2026, 3, 1, 12, tzinfo=UTC)


def event(event_id: str, minute: int = 0, user: str = "u1", session: str = "s1", app: str = "shop", **extra) -> dict:
    ts = DAY + timedelta(minutes=minute)
    row = {
        "event_timestamp": ts,
        "event_id": event_id,
        "event_time_msec": int(ts.timestamp() * 1000),
        "event_name": "_page_view",
        "project_id": "default",
        "app_id": app,
        "platform": "Web",
        "user_pseudo_id": user,
        "session_id": session,
        "custom_parameters": {"k": {"value": "v", "type": "STRING"}},
        "process_info": {"rid": "r1"},
        "created_time": datetime.now(UTC),
    }
    row.update(extra)
    return row


def session(user: str, sid: str, source: str | None, minute: int = 0, app: str = "shop") -> dict:
    ts = DAY + timedelta(minutes=minute)
    return {
        "event_timestamp": ts,
        "user_pseudo_id": user,
        "session_id": sid,
        "session_source": source,
        "session_start_time_msec": int(ts.timestamp() * 1000),
        "created_time": datetime.now(UTC),
        "_app": app,
    }


def user(user_id: str, minute: int = 0, plan: str = "free", app: str = "shop") -> dict:
    ts = DAY + timedelta(minutes=minute)
    return {
        "event_timestamp": ts,
        "user_pseudo_id": user_id,
        "user_properties": {"plan": {"value": plan, "type": "STRING", "set_time_msec": 1}},
        "first_visit_date": ts.date(),
        "created_time": datetime.now(UTC),
        "_app": app,
    }


def item(event_id: str, item_id: str, minute: int = 0, user: str = "u1", price: float = 1.0, app: str = "shop"):
    ts = DAY + timedelta(minutes=minute)
    return {
        "event_timestamp": ts,
        "event_id": event_id,
        "user_pseudo_id": user,
        "item_id": item_id,
        "price": price,
        "created_time": datetime.now(UTC),
        "_app": app,
    }


def write(root: Path, table: str, rows: list[dict], tag: str, mtime: float | None = None) -> list[Path]:
    paths = write_table(root, table, rows, tag=tag)
    if mtime is not None:
        for p in paths:
            os.utime(p, (mtime, mtime))
    return paths


def pg_config(root: Path, dsn: str, **extra) -> LoaderConfig:
    return LoaderConfig(engine="postgres", source=str(root), postgres_dsn=dsn, **extra)


def duck_config(root: Path, **extra) -> LoaderConfig:
    return LoaderConfig(engine="duckdb", source=str(root), **extra)


def query(dsn: str, statement: str, params=()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(statement, params).fetchall()


def count(dsn: str, table: str, app: str = "shop") -> int:
    return query(dsn, f'SELECT count(*) FROM "{app}"."{table}"')[0][0]


def states(dsn: str) -> dict[str, int]:
    return dict(query(dsn, "SELECT state, count(*) FROM clickstream_loader.files GROUP BY 1"))
