"""The reporting layer as part of a loader pass: `run_once` on PostgreSQL creates and refreshes the reporting
objects of the apps it loaded (the touched days only) and runs the metadata scan by interval; on DuckDB the
published definitions carry the reporting views, and both give the same rows for the same files."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from clickstream_core.appconfig import AppConfig
from clickstream_loader import reporting, reports
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
    # D4 and its neighbours (a session may run past midnight), and the window, in one transaction; the aggregates
    # that depend on earlier days from D4's day before through today
    around = (D4 - timedelta(days=1), D4 + timedelta(days=1))
    assert done["refreshed"] == [(around[0].isoformat(), around[1].isoformat()), tuple(d.isoformat() for d in window)]
    assert done["carried_forward"] == (around[0].isoformat(), today.isoformat())
    # the weekly lifecycle starts at its newest stored week (D3's): churned rows run up to the last active week
    week = D3 - timedelta(days=D3.weekday())
    assert status_ranges(pg_dsn) == {window, around, (around[0], today), (week, today)}
    with psycopg.connect(pg_dsn) as conn:
        carried = conn.execute(
            f'SELECT refresh_name, start_date FROM "{APP}"."refresh_status" '
            "WHERE refresh_date = %s AND start_date < %s",
            (today, window[0]),
        ).fetchall()
    assert sorted(carried) == sorted(
        (a.name, week if a.grain == "week" else around[0]) for a in reporting.AGGREGATES if a.carries_forward
    )
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


# ---- late loads: the aggregates that depend on earlier days ----------------------------------------------

X = D1 - timedelta(days=6)  # Tue 2024-02-27, the week before the dataset's first: pc's late first session
AGGREGATE_NAMES = [a.name for a in reporting.AGGREGATES]


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def pc_session(sid: str, start: datetime, source: str, created_hours: int) -> tuple[list[dict], dict]:
    """A session of user pc (a _session_start and a page view) and its session row, shaped like C1's."""
    templates = {r["event_id"]: r for r in dataset.event_rows()}
    events = []
    for n, (offset, template) in enumerate(((0, "C1-1"), (1, "C1-2"))):
        ts = start + timedelta(seconds=offset)
        ms = int(ts.timestamp() * 1000)
        events.append(
            {
                **templates[template],
                "event_id": f"{sid}-{n}",
                "event_timestamp": ts,
                "event_time_msec": ms,
                "ingest_time_msec": ms + 500,
                "session_id": sid,
                "session_start_time_msec": int(start.timestamp() * 1000),
            }
        )
    row = next(r for r in dataset.session_rows() if r["session_id"] == "C1")
    session = {
        **row,
        "session_id": sid,
        "event_timestamp": start,
        "session_start_time_msec": int(start.timestamp() * 1000),
        "session_source": source,
        "created_time": dataset.CREATED + timedelta(hours=created_hours),
    }
    return events, session


class Lake:
    """The ETL's output arriving in passes: dataset rows by UTC day plus extra sessions, and per pass a user_v2
    row for each user seen in it, as the ETL writes them (the merged state, `event_timestamp` = the newest event
    seen so far, so that the loader's MERGE and the DuckDB views both keep it)."""

    def __init__(self, root):
        self.root = root
        self.newest: dict[str, datetime] = {}
        self.passes = 0

    def write(self, keep, extra_events=(), extra_sessions=(), user_changes: dict | None = None) -> None:
        self.passes += 1
        tag = f"pass{self.passes}"
        events = [r for r in dataset.event_rows() if keep(r["event_timestamp"].date())] + list(extra_events)
        sessions = [r for r in dataset.session_rows() if keep(r["event_timestamp"].date())] + list(extra_sessions)
        items = [r for r in dataset.item_rows() if keep(r["event_timestamp"].date())]
        for e in events:
            pseudo = e["user_pseudo_id"]
            self.newest[pseudo] = max(self.newest.get(pseudo, e["event_timestamp"]), e["event_timestamp"])
        seen = {e["user_pseudo_id"] for e in events}
        users = []
        for row in dataset.user_rows():
            if row["user_pseudo_id"] in seen:
                changed = (user_changes or {}).get(row["user_pseudo_id"], {})
                users.append(
                    {
                        **row,
                        "event_timestamp": self.newest[row["user_pseudo_id"]],
                        "created_time": dataset.CREATED + timedelta(hours=self.passes),
                        **changed,
                    }
                )
        for table, rows in (("event_v2", events), ("session", sessions), ("item_v2", items), ("user_v2", users)):
            if rows:
                arrow = [{k: dataset._arrow_value(v) for k, v in r.items()} for r in rows]
                write_table(self.root, table, arrow, tag=tag)


def assert_like_full_backfill(pg_dsn: str, root, tmp_path, timezone: str) -> dict[str, list[dict]]:
    """The refreshed PostgreSQL tables hold what a back-fill of every day computes, and what the DuckDB views over
    the same files compute. Leaves the tables back-filled; returns their rows."""
    refreshed = {name: pg_rows(pg_dsn, name) for name in AGGREGATE_NAMES}
    duck = run_once(duck_state(root, tmp_path), apps=apps(timezone))
    assert duck.status == "succeeded", duck.errors
    con = connect_duckdb(tmp_path / "state")
    try:
        views = {name: duck_rows(con, name) for name in AGGREGATE_NAMES}
    finally:
        con.close()
    target = reports.target_of(apps(timezone), APP)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        reporting.backfill(conn, "postgres", target, X - timedelta(days=7), D4 + timedelta(days=7))
    for name in AGGREGATE_NAMES:
        full = pg_rows(pg_dsn, name)
        assert refreshed[name] == full, f"{name}: the refresh left rows that a back-fill computes otherwise"
        assert full == views[name], name
    return refreshed


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Shanghai"])
def test_late_loads_refresh_later_days_like_a_full_backfill(pg_dsn, tmp_path, monkeypatch, timezone):
    """Passes on PostgreSQL with "today" = D4 (the refresh window D4-1..D4), each compared with a back-fill of every
    day and with the DuckDB views: a week without sessions before new activity (churned rows of the week in between),
    a late week (the next week's lifecycle), and a late first session of pc a week before its known first day, with
    the user row that moves pc's first touch there (pc's cohort, new vs returning, first-touch source and lifecycle
    on days no file of the pass holds)."""
    monkeypatch.setattr(reports, "today_in", lambda tz: D4)
    root = tmp_path / "ods"
    lake = Lake(root)
    utc = timezone == "UTC"
    w0, w1, w2, w3 = X - timedelta(days=1), D1, D1 + timedelta(days=7), D1 + timedelta(days=14)

    def lifecycle(rows):
        return {(r["event_date"], r["lifecycle"]): r["user_count"] for r in rows["clickstream_lifecycle_weekly_view"]}

    def refresh(report) -> dict:
        assert report.status == "succeeded", report.errors
        return report.reporting[APP]

    # 1. weeks 1 (D1, D2): everything created and back-filled
    lake.write(lambda d: d <= D2)
    assert refresh(run_once(pg_config(root, pg_dsn), apps=apps(timezone)))["created"]
    assert_like_full_backfill(pg_dsn, root, tmp_path, timezone)

    # 2. week 3 (D4), pc back with a session C2, nothing in week 2: the window is all this pass touches, and the
    # lifecycle's week 2 gets its churned rows (week 1's users, now that a later week has activity)
    c2_events, c2_session = pc_session("C2", _at(D4, 10), "newsletter", 2)
    lake.write(lambda d: d == D4, c2_events, [c2_session])
    done = refresh(run_once(pg_config(root, pg_dsn), apps=apps(timezone)))
    assert not done["created"]
    rows = assert_like_full_backfill(pg_dsn, root, tmp_path, timezone)
    if utc:
        assert done["refreshed"] == [((D4 - timedelta(days=1)).isoformat(), D4.isoformat())]
        assert lifecycle(rows) == {(w1, "new"): 3, (w2, "churned"): 3, (w3, "returning"): 2}

    # 3. week 2 (D3: ua's A3) arrives late: week 3's labels depend on it (ua churns in week 3, pb and pc no longer
    # churn in week 2)
    lake.write(lambda d: d == D3)
    done = refresh(run_once(pg_config(root, pg_dsn), apps=apps(timezone)))
    rows = assert_like_full_backfill(pg_dsn, root, tmp_path, timezone)
    if utc:
        assert lifecycle(rows) == {
            (w1, "new"): 3,
            (w2, "retained"): 1,
            (w2, "churned"): 2,
            (w3, "returning"): 2,
            (w3, "churned"): 1,
        }

    # 4. pc's first session, on X (a week before D2), arrives late, with pc's user row as the ETL then writes it:
    # first touch on X from a search. The files are X's and D4's (the user row's day), so D2, where pc's cohort,
    # new/returning type and first-touch source change, and week 1, where pc is now retained, are in no file
    c0_events, c0_session = pc_session("C0", _at(X, 10), "search", 3)
    first_touch = {
        "first_touch_time_msec": int(_at(X, 10).timestamp() * 1000),
        "first_visit_date": X,
        "first_traffic_source": "search",
        "first_traffic_medium": "organic",
        "first_traffic_channel_group": "Organic Search",
    }
    lake.write(lambda d: False, c0_events, [c0_session], {"pc": first_touch})
    before = {name: pg_rows(pg_dsn, name) for name in AGGREGATE_NAMES}
    done = refresh(run_once(pg_config(root, pg_dsn), apps=apps(timezone)))
    rows = assert_like_full_backfill(pg_dsn, root, tmp_path, timezone)
    assert rows["clickstream_retention_view"] != before["clickstream_retention_view"]
    if utc:
        assert done["refreshed"] == [
            ((X - timedelta(days=1)).isoformat(), (X + timedelta(days=1)).isoformat()),
            ((D4 - timedelta(days=1)).isoformat(), D4.isoformat()),
        ]
        assert done["carried_forward"] == ((X - timedelta(days=1)).isoformat(), D4.isoformat())
        retention = {(r["first_date"], r["event_date"]): r["user_count"] for r in rows["clickstream_retention_view"]}
        # pc: cohort X, back on D2 (7 days later) and D4 (21); no longer a D2 cohort of its own
        assert {k: v for k, v in retention.items() if k[0] == X} == {(X, X): 1, (X, D2): 1, (X, D4): 1}
        assert (D2, D2) not in retention
        new_return = {
            (r["event_date"], r["user_type"]): r["user_count"]
            for r in rows["clickstream_retention_user_new_return"]
            if r["platform"] == "Web"
        }
        assert new_return[(X, "new")] == 1 and new_return[(D2, "returning")] == 2 and (D2, "new") not in new_return
        sources = {
            (r["event_date"], r["user_id"]): r["aggregation_dim"]
            for r in rows["clickstream_acquisition_day_traffic_source_user"]
            if r["aggregation_type"] == "Traffic source"
        }
        assert sources[(D2, "pc")] == sources[(D4, "pc")] == "search"
        # new users are counted from _first_open events: pc's on D2 still counts there
        views = by_day(rows["clickstream_acquisition_day_user_view_cnt"])
        assert views[(D2, "Web")]["new_users"] == 1 and views[(X, "Web")]["new_users"] == 0
        assert lifecycle(rows) == {
            (w0, "new"): 1,
            (w1, "new"): 2,
            (w1, "retained"): 1,
            (w2, "retained"): 1,
            (w2, "churned"): 2,
            (w3, "returning"): 2,
            (w3, "churned"): 1,
        }


def by_day(rows: list[dict]) -> dict:
    return {(r["event_date"], r["platform"]): r for r in rows}
