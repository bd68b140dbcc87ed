"""The reporting layer as part of a loader pass: `run_once` on PostgreSQL creates and refreshes the reporting
objects of the apps it loaded (the touched days only) and runs the metadata scan by interval; on DuckDB the
published definitions carry the reporting views, and both give the same rows for the same files."""

from __future__ import annotations

from datetime import date, timedelta

import psycopg
import pytest
from clickstream_core.appconfig import AppConfig
from clickstream_loader import reporting
from clickstream_loader.runner import run_once
from clickstream_loader.warehouse import connect_duckdb

from scripts.parquetgen import write_table

from . import dataset
from .dataset import D1, D2, D3, D4
from .helpers import duck_config
from .helpers import pg_config as _pg_config
from .reportkit import Warehouses, sort_key

OBJECTS = [a.name for a in reporting.AGGREGATES + reporting.METADATA]
APP = dataset.APP_ID


def pg_config(root, dsn, **extra):
    return _pg_config(root, dsn, retention_days=0, **extra)  # the dataset's days are in 2024


def duck_state(root, tmp_path):
    return duck_config(root, state_dir=str(tmp_path / "state"), retention_days=0)


def apps(timezone: str = "UTC") -> AppConfig:
    return AppConfig.from_mapping(
        {"project_id": dataset.PROJECT_ID, "apps": [{"app_id": APP, "timezone": timezone}]}, "test"
    )


def write_days(root, keep, tag: str) -> None:
    """The hand-made dataset in the ETL's layout, only the rows whose UTC day passes `keep`."""
    for table, rows in dataset.ROWS.items():
        chosen = [
            {k: dataset._arrow_value(v) for k, v in r.items()} for r in rows() if keep(r["event_timestamp"].date())
        ]
        if chosen:
            write_table(root, table, chosen, tag=tag)


def pg_rows(dsn: str, name: str, where: str = "", params: dict | None = None) -> list[dict]:
    with psycopg.connect(dsn) as conn:
        sql = f'SELECT * FROM "{APP}"."{name}"' + (f" WHERE {where}" if where else "")
        return sorted(Warehouses.query_on(conn, "postgres", sql, params), key=sort_key)


def duck_rows(con, name: str, where: str = "", params: dict | None = None) -> list[dict]:
    sql = f'SELECT * FROM "{APP}"."{name}"' + (f" WHERE {where}" if where else "")
    return sorted(Warehouses.query_on(con, "duckdb", sql, params), key=sort_key)


def status_ranges(dsn: str) -> set[tuple[date, date]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f'SELECT DISTINCT start_date, refresh_date FROM "{APP}"."refresh_status" WHERE status = %s', ("SUCCEEDED",)
        ).fetchall()
    return set(rows)


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Shanghai"])
def test_postgres_run_equals_published_duckdb_views(pg_dsn, tmp_path, timezone):
    root = tmp_path / "ods"
    write_days(root, lambda d: True, "all")
    report = run_once(pg_config(root, pg_dsn), apps=apps(timezone))
    assert report.status == "succeeded", report.errors
    done = report.reporting[APP]
    assert done["created"] and done["metadata"], done
    duck = run_once(duck_state(root, tmp_path), apps=apps(timezone))
    assert duck.status == "succeeded" and duck.reporting == {APP: {"published": True}}
    con = connect_duckdb(tmp_path / "state")  # a reader: nothing but the published definitions
    try:
        days = {r["event_date"] for r in pg_rows(pg_dsn, "clickstream_engagement_day_event_view")}
        assert {D1, D2, D3, D4} <= days  # the loaded days (a first creation back-fills every day of data)
        for name in OBJECTS:
            pg = pg_rows(pg_dsn, name)
            assert pg, f"{name} has no rows after the run"
            assert pg == duck_rows(con, name), name
    finally:
        con.close()


def test_second_run_refreshes_only_touched_days(pg_dsn, tmp_path):
    root = tmp_path / "ods"
    write_days(root, lambda d: d < D4, "first")
    config = pg_config(root, pg_dsn)  # metadata interval: the default hour
    first = run_once(config, apps=apps())
    assert first.status == "succeeded", first.errors
    assert first.reporting[APP]["created"]
    assert pg_rows(pg_dsn, "clickstream_engagement_day_event_view", "event_date = :d", {"d": D4}) == []
    scanned = pg_rows(pg_dsn, "event_metadata")
    assert {r["event_date"] for r in scanned} == {D1, D2, D3}
    # a marker on a day the second run does not touch: recomputing that day would remove it
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        n = conn.execute(
            f'UPDATE "{APP}"."clickstream_engagement_day_event_view" SET event_count = -1 WHERE event_date = %s', (D1,)
        ).rowcount
        assert n > 0
        conn.execute(f'DELETE FROM "{APP}"."refresh_status"')

    write_days(root, lambda d: d == D4, "second")
    second = run_once(config, apps=apps())
    assert second.status == "succeeded", second.errors
    done = second.reporting[APP]
    today = reporting.materialize.today_in("UTC")
    window = (today - timedelta(days=1), today)
    assert not done["created"]  # definitions unchanged: the objects are kept
    assert done["refreshed"] == [(window[0].isoformat(), window[1].isoformat()), (D4.isoformat(), D4.isoformat())]
    assert status_ranges(pg_dsn) == {window, (D4, D4)}
    marked = pg_rows(pg_dsn, "clickstream_engagement_day_event_view", "event_date = :d", {"d": D1})
    assert marked and all(r["event_count"] == -1 for r in marked)
    # the touched day now holds what a reader of the DuckDB views computes over the same files
    run_once(duck_state(root, tmp_path), apps=apps())
    con = connect_duckdb(tmp_path / "state")
    try:
        for name in ("clickstream_engagement_day_event_view", "clickstream_acquisition_day_user_view_cnt"):
            pg = pg_rows(pg_dsn, name, "event_date = :d", {"d": D4})
            assert pg and pg == duck_rows(con, name, "event_date = $d", {"d": D4}), name
    finally:
        con.close()

    # the metadata scan ran less than an hour ago: D4 waits, pending
    assert done["metadata"] == [] and done["metadata_pending"] == (D4.isoformat(), D4.isoformat())
    assert D4 not in {r["event_date"] for r in pg_rows(pg_dsn, "event_metadata")}
    # a pass with nothing new to load, once the interval has passed (0 here), scans what waits
    third = run_once(pg_config(root, pg_dsn, metadata_interval_s=0), apps=apps())
    assert third.status == "succeeded" and third.rows_loaded == {}
    assert third.reporting[APP]["metadata"] == [
        (window[0].isoformat(), window[1].isoformat()),
        (D4.isoformat(), D4.isoformat()),
    ]
    assert third.reporting[APP]["refreshed"] == []
    assert {r["event_date"] for r in pg_rows(pg_dsn, "event_metadata")} == {D1, D2, D3, D4}
    # and nothing waits any more: the next pass does no reporting at all
    assert run_once(pg_config(root, pg_dsn, metadata_interval_s=0), apps=apps()).reporting == {}


def test_changed_definitions_recreate_and_backfill(pg_dsn, tmp_path):
    root = tmp_path / "ods"
    write_days(root, lambda d: d <= D2, "first")
    assert run_once(pg_config(root, pg_dsn), apps=apps()).reporting[APP]["created"]
    write_days(root, lambda d: d == D3, "second")
    # the app's time zone changed: every view's text changes, so the objects are recreated and back-filled
    report = run_once(pg_config(root, pg_dsn), apps=apps("Asia/Shanghai"))
    assert report.status == "succeeded", report.errors
    assert report.reporting[APP]["created"]
    # B1 starts at 23:30 UTC on D1, which is D2 in Shanghai: after the rebuild its view counts on D2 only
    rows = pg_rows(pg_dsn, "clickstream_engagement_day_event_view", "platform = :p", {"p": "Android"})
    assert {r["event_date"] for r in rows} == {D2}


def test_reporting_off(pg_dsn, tmp_path):
    root = tmp_path / "ods"
    write_days(root, lambda d: d == D1, "first")
    report = run_once(pg_config(root, pg_dsn, reporting=False), apps=apps())
    assert report.status == "succeeded" and report.reporting == {}
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f'"{APP}"."refresh_status"',)).fetchone()[0] is None
