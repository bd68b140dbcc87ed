"""The reporting layer on PostgreSQL (tables refreshed by day) and DuckDB (views): hand-checked numbers on the
dataset of tests/loader/dataset.py, and the same rows from both engines for every object."""

from __future__ import annotations

from datetime import timedelta

import pytest
from clickstream_core.tables import TABLES
from clickstream_loader import reporting
from clickstream_loader.reporting import aggregates, materialize, views
from clickstream_loader.reporting.materialize import aggregate_select
from clickstream_loader.sqlrender import render

from . import dataset
from .dataset import D1, D2, D3, D4
from .reportkit import backfill_all, build, sort_key

ENGINES = ("postgres", "duckdb")
OBJECTS = [a.name for a in reporting.AGGREGATES + reporting.METADATA]


@pytest.fixture(scope="module")
def wh(pg_cluster, tmp_path_factory):
    warehouses = build(pg_cluster, tmp_path_factory.mktemp("reporting"), "reporting_utc")
    backfill_all(warehouses)
    yield warehouses
    warehouses.pg.close()
    warehouses.duck.close()


@pytest.fixture(scope="module")
def wh_tables(pg_cluster, tmp_path_factory):
    """DuckDB in its other mode: the aggregates materialised as tables, refreshed like PostgreSQL's."""
    warehouses = build(pg_cluster, tmp_path_factory.mktemp("reporting_t"), "reporting_tables", duck_mode="tables")
    backfill_all(warehouses)
    yield warehouses
    warehouses.pg.close()
    warehouses.duck.close()


# ---- the same numbers on both engines --------------------------------------------------------------------


@pytest.mark.parametrize("name", OBJECTS)
def test_object_identical_on_both_engines(wh, name):
    pg, duck = wh.rows("postgres", name), wh.rows("duckdb", name)
    assert pg, f"{name} is empty: the dataset should give it rows"
    assert pg == duck


@pytest.mark.parametrize("name", OBJECTS)
def test_duckdb_tables_mode_identical(wh_tables, name):
    assert wh_tables.rows("duckdb", name) == wh_tables.rows("postgres", name)


def test_duckdb_json_maps_identical(wh):
    """Base views exposing the maps as JSON (the loader's DuckDB warehouse) give the same rows too."""
    import duckdb

    conn = duckdb.connect()
    dataset.duckdb_views(conn, wh.root, json_maps=True)
    reporting.create_objects(conn, "duckdb", wh.target)
    for name in [*OBJECTS, *views.NATIVE_VIEWS]:
        got = sorted(wh.query_on(conn, "duckdb", f'SELECT * FROM "{wh.target.schema}"."{name}"'), key=sort_key)
        assert got == wh.rows("postgres", name), name


_MAPS = {c.name for t in TABLES.values() for c in t.columns if c.type.startswith("map<")}


@pytest.mark.parametrize("name", [views.BASE_VIEW, views.EVENT_VIEW, views.ITEM_VIEW, *views.NATIVE_VIEWS])
def test_base_views_identical_on_both_engines(wh, name):
    names = [r["column_name"] for r in wh.query("postgres", _columns_sql(wh, name))]
    plain = ", ".join(f'"{n}"' for n in names if n not in _MAPS)
    pg, duck = wh.rows("postgres", name, columns=plain), wh.rows("duckdb", name, columns=plain)
    assert pg and pg == duck


def _columns_sql(wh, name):
    return (
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_schema = '{wh.target.schema}' AND table_name = '{name}' ORDER BY ordinal_position"
    )


def test_every_object_renders_for_redshift_and_athena(wh):
    for agg in reporting.AGGREGATES + reporting.METADATA:
        select = aggregate_select(agg, wh.target)
        for engine in ("redshift", "athena"):
            assert "SELECT" in render(select, engine)


# ---- hand-checked numbers --------------------------------------------------------------------------------


def by(rows, *keys):
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}


@pytest.mark.parametrize("engine", ENGINES)
def test_base_view_session_facts(wh, engine):
    rows = by(
        wh.rows(
            engine,
            views.BASE_VIEW,
            columns='"event_id", "session_id", "session_source", "session_duration", '
            '"session_views", "view_event_indicator", "view_session_indicator", "page_view_entrances", '
            '"event_date"',
        ),
        "event_id",
    )
    # A1 was stored first as Direct, then as google: the real source wins for every event of the session
    assert {r["session_source"] for r in rows.values() if r["session_id"] == "A1"} == {"google"}
    # A1's events span 0..6 s and carry no SDK duration; B1's SDK durations reach 15 s
    assert rows["A1-0"]["session_duration"] == 6000
    assert rows["B1-0"]["session_duration"] == 15000
    assert rows["A1-0"]["session_views"] == 2 and rows["A1-0"]["view_session_indicator"] == 1
    assert rows["A1-2"]["view_event_indicator"] == 1 and rows["A1-3"]["view_event_indicator"] == 0
    assert rows["A1-2"]["page_view_entrances"] == "true"
    assert rows["B1-0"]["event_date"] == D1  # 23:30 UTC is still D1 in UTC


@pytest.mark.parametrize("engine", ENGINES)
def test_event_view_merges_users(wh, engine):
    rows = wh.rows(
        engine,
        views.EVENT_VIEW,
        columns='"event_id", "merged_user_id", "new_user_indicator", "is_first_day_event", "first_date"',
    )
    rows = by(rows, "event_id")
    # A logged in as ua halfway through A1: every event of pa, before and after, is ua's
    assert {r["merged_user_id"] for k, r in rows.items() if k.startswith("A")} == {"ua"}
    assert rows["B1-0"]["merged_user_id"] == "pb"
    assert rows["A1-0"]["new_user_indicator"] == "ua" and rows["A1-1"]["new_user_indicator"] is None
    assert rows["A1-0"]["first_date"] == D1
    assert rows["A1-0"]["is_first_day_event"] == 1 and rows["A2-0"]["is_first_day_event"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_active_and_new_users_per_day(wh, engine):
    rows = by(wh.rows(engine, "clickstream_acquisition_day_user_view_cnt"), "event_date", "platform")
    got = {k: (r["active_users"], r["new_users"], r["view_count"]) for k, r in rows.items()}
    assert got == {
        (D1, "Web"): (1, 1, 2),  # ua's first open, 2 page views in A1
        (D1, "Android"): (1, 1, 1),  # pb's first open, 1 screen view
        (D2, "Web"): (2, 1, 2),  # ua again (A2) and pc new (C1); one page view each
        (D3, "Web"): (1, 0, 2),  # A3
        (D4, "Android"): (1, 0, 2),  # B2
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_engaged_sessions(wh, engine):
    kpi = by(wh.rows(engine, "clickstream_engagement_kpi"), "event_date", "platform")
    # A1: 2 views; B1: 15 s; C1: 10,000,001 ms of engagement; A2: 1 view, 5 s, 3,000 ms: not engaged
    assert (kpi[(D1, "Web")]["session_count"], kpi[(D1, "Web")]["engaged_session_count"]) == (1, 1)
    assert (kpi[(D1, "Android")]["session_count"], kpi[(D1, "Android")]["engaged_session_count"]) == (1, 1)
    assert (kpi[(D2, "Web")]["session_count"], kpi[(D2, "Web")]["engaged_session_count"]) == (2, 1)
    assert kpi[(D2, "Web")]["avg_engaged_session_per_user"] == 0.5
    assert kpi[(D2, "Web")]["total_engagement_time_seconds"] == (3000 + 10_000_001) / 1000
    acq = by(
        wh.rows(engine, "clickstream_acquisition_day_user_acquisition"),
        "event_date",
        "aggregation_type",
        "aggregation_dim",
    )
    google = acq[(D1, "Session source", "google")]
    assert (google["session_count"], google["engaged_session_count"], google["new_user_count"]) == (1, 1, 1)
    assert google["engagement_rate"] == 1.0 and google["event_count"] == 8
    assert (D1, "Session source", "Direct") not in acq  # A1's Direct row lost to its real source
    assert acq[(D2, "Session source", "Direct")]["engagement_rate"] == 0.0
    assert acq[(D2, "Session source", "newsletter")]["engaged_session_count"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_traffic_and_country(wh, engine):
    users = wh.rows(
        engine, "clickstream_acquisition_day_traffic_source_user", "\"aggregation_type\" = 'Traffic source'"
    )
    assert {(r["event_date"], r["aggregation_dim"], r["user_id"]) for r in users} == {
        (D1, "google", "ua"),
        (D1, None, "pb"),
        (D2, "google", "ua"),
        (D2, "newsletter", "pc"),
        (D3, "google", "ua"),
        (D4, None, "pb"),
    }
    country = {
        (r["event_date"], r["geo_country"], r["geo_city"]): r["user_count"]
        for r in wh.rows(engine, "clickstream_acquisition_country_new_user")
    }
    assert country == {(D1, "US", "Seattle"): 1, (D1, "CN", "Shanghai"): 1, (D2, "US", "New York"): 1}


@pytest.mark.parametrize("engine", ENGINES)
def test_retention_day_diffs(wh, engine):
    got = {(r["first_date"], r["day_diff"]): r["user_count"] for r in wh.rows(engine, "clickstream_retention_view")}
    # A and B first came on D1, C on D2; A came back D2 (1 day) and D3 (8 days), B on D4 (15 days)
    assert got == {(D1, 0): 2, (D1, 1): 1, (D2, 0): 1, (D1, 8): 1, (D1, 15): 1}
    new_return = {
        (r["event_date"], r["platform"], r["user_type"]): r["user_count"]
        for r in wh.rows(engine, "clickstream_retention_user_new_return")
    }
    assert new_return == {
        (D1, "Web", "new"): 1,
        (D1, "Android", "new"): 1,
        (D2, "Web", "new"): 1,
        (D2, "Web", "returning"): 1,
        (D3, "Web", "returning"): 1,
        (D4, "Android", "returning"): 1,
    }
    dau = {(r["event_date"], r["merged_user_id"]) for r in wh.rows(engine, "clickstream_retention_dau_wau")}
    assert dau == {(D1, "ua"), (D1, "pb"), (D2, "ua"), (D2, "pc"), (D3, "ua"), (D4, "pb")}


@pytest.mark.parametrize("engine", ENGINES)
def test_lifecycle_weekly(wh, engine):
    w1, w2, w3 = D1, D1 + timedelta(days=7), D1 + timedelta(days=14)
    got = {
        (r["event_date"], r["lifecycle"]): r["user_count"] for r in wh.rows(engine, "clickstream_lifecycle_weekly_view")
    }
    # sessions: week 1 ua, pb, pc (all new); week 2 ua only (retained; pb and pc churn); week 3 pb only
    # (returning after a week away; ua churns); no activity after week 3, so no churn row for week 4
    assert got == {
        (w1, "new"): 3,
        (w2, "retained"): 1,
        (w2, "churned"): 2,
        (w3, "returning"): 1,
        (w3, "churned"): 1,
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_pages_entrances_exits(wh, engine):
    def counts(name, column):
        return {
            (r["event_date"], r["aggregation_dim"]): r[column]
            for r in wh.rows(engine, name, "\"aggregation_type\" IN ('Page URL path', 'Screen name')")
        }

    assert counts("clickstream_engagement_page_screen_view", "view_count") == {
        (D1, "/home"): 1,
        (D1, "/product"): 1,
        (D1, "Main"): 1,
        (D2, "/home"): 2,
        (D3, "/home"): 1,
        (D3, "/cart"): 1,
        (D4, "Main"): 1,
        (D4, "Cart"): 1,
    }
    # every session enters on its first view
    assert counts("clickstream_engagement_entrance", "entrance_count") == {
        (D1, "/home"): 1,
        (D1, "Main"): 1,
        (D2, "/home"): 2,
        (D3, "/home"): 1,
        (D4, "Main"): 1,
    }
    # and leaves on its last
    assert counts("clickstream_engagement_exit", "exit_count") == {
        (D1, "/product"): 1,
        (D1, "Main"): 1,
        (D2, "/home"): 2,
        (D3, "/cart"): 1,
        (D4, "Cart"): 1,
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_events_devices_crashes(wh, engine):
    names = by(
        wh.rows(engine, "clickstream_engagement_event_name", '"event_date" = :d', {"d": D1}), "platform", "event_name"
    )
    assert names[("Web", "click")]["event_count"] == 3 and names[("Web", "_page_view")]["user_count"] == 1
    crash = by(wh.rows(engine, "clickstream_device_crash_rate"), "event_date", "platform")
    assert (crash[(D1, "Android")]["crashed_users"], crash[(D1, "Android")]["crash_rate"]) == (1, 1.0)
    assert crash[(D4, "Android")]["crash_rate"] == 0.0
    devices = wh.rows(engine, "clickstream_device_user_device", "\"platform\" = 'Android'")
    assert {(r["device_mobile_model_name"], r["screen_resolution"]) for r in devices} == {("Pixel 8", "1080x2400")}
    events = by(wh.rows(engine, "clickstream_engagement_day_event_view"), "event_date", "platform")
    assert events[(D1, "Web")]["event_count"] == 8 and events[(D1, "Android")]["event_count"] == 5


def test_time_zone_moves_days(pg_cluster, tmp_path):
    """In Asia/Shanghai (UTC+8) B1 (D1 23:30 UTC) falls on D2, and so does B's first day."""
    wh = build(pg_cluster, tmp_path, "reporting_shanghai", timezone="Asia/Shanghai")
    backfill_all(wh)
    for engine in ENGINES:
        rows = by(wh.rows(engine, "clickstream_acquisition_day_user_view_cnt"), "event_date", "platform")
        assert set(rows) == {(D1, "Web"), (D2, "Android"), (D2, "Web"), (D3, "Web"), (D4, "Android")}
        hours = {
            (r["event_date"], r["event_hour"], r["platform"])
            for r in wh.rows(engine, "clickstream_acquisition_intra_day_user")
        }
        assert (D2, 7, "Android") in hours and (D1, 18, "Web") in hours
        retention = {
            (r["first_date"], r["day_diff"]): r["user_count"] for r in wh.rows(engine, "clickstream_retention_view")
        }
        assert retention[(D2, 0)] == 2  # pb and pc
    assert wh.rows("postgres", "clickstream_retention_view") == wh.rows("duckdb", "clickstream_retention_view")


# ---- refresh ---------------------------------------------------------------------------------------------


def test_refresh_recomputes_only_its_days_and_records_status(pg_cluster, tmp_path):
    wh = build(pg_cluster, tmp_path, "reporting_refresh")
    pg, target = wh.pg, wh.target
    table = "clickstream_acquisition_day_user_view_cnt"
    # "today" is D2: the default refresh covers D1 (yesterday) and D2
    start, end = reporting.refresh(pg, "postgres", target, today=D2)
    assert (start, end) == (D1, D2)
    assert {r["event_date"] for r in wh.rows("postgres", table)} == {D1, D2}
    # a later event on D1 from pc, and all of D2's events gone: refreshing only D2 leaves D1 as it was
    pg.execute(f'UPDATE "{target.schema}"."event_v2" SET "platform" = \'iOS\' WHERE "event_id" LIKE \'A1-%\'')
    pg.execute(f'DELETE FROM "{target.schema}"."event_v2" WHERE "session_id" IN (\'A2\', \'C1\')')
    reporting.backfill(pg, "postgres", target, D2, D2)
    rows = by(wh.rows("postgres", table), "event_date", "platform")
    assert set(rows) == {(D1, "Web"), (D1, "Android")}  # D1 untouched (still Web), D2 recomputed to nothing
    reporting.backfill(pg, "postgres", target, D1, D1)
    assert set(by(wh.rows("postgres", table), "event_date", "platform")) == {(D1, "iOS"), (D1, "Android")}
    status = wh.rows("postgres", materialize.STATUS_TABLE, f"\"refresh_name\" = '{table}'")
    assert [(r["start_date"], r["refresh_date"], r["status"], r["triggered_by"]) for r in status] == [
        (D1, D1, "SUCCEEDED", "MANUAL"),
        (D1, D2, "SUCCEEDED", "WORK_FLOW"),
        (D2, D2, "SUCCEEDED", "MANUAL"),
    ]
    assert reporting.last_refresh_date(pg, "postgres", target) == D2
    # the lifecycle is weekly: refreshing one Tuesday recomputes its whole week from Monday
    reporting.backfill(pg, "postgres", target, D3, D3)
    assert {r["event_date"] for r in wh.rows("postgres", "clickstream_lifecycle_weekly_view")} >= {
        D3 - timedelta(days=1)
    }


def test_failed_refresh_changes_nothing(pg_cluster, tmp_path, monkeypatch):
    wh = build(pg_cluster, tmp_path, "reporting_failure")
    pg, target = wh.pg, wh.target
    reporting.backfill(pg, "postgres", target, D1, D4)
    before = wh.rows("postgres", "clickstream_acquisition_day_user_view_cnt")
    broken = aggregates.Aggregate(
        "clickstream_engagement_kpi", 'SELECT no_such_column AS event_date FROM {s}."event_v2" AS v WHERE {scan}'
    )
    monkeypatch.setattr(materialize, "AGGREGATES", (*reporting.AGGREGATES[:1], broken))
    with pytest.raises(Exception, match="no_such_column"):
        reporting.backfill(pg, "postgres", target, D1, D4, objects=materialize.AGGREGATES)
    # the first aggregate's delete + insert were rolled back with the failure
    assert wh.rows("postgres", "clickstream_acquisition_day_user_view_cnt") == before
    failed = wh.rows("postgres", materialize.STATUS_TABLE, "\"status\" = 'FAILED'")
    assert {r["refresh_name"] for r in failed} == {
        "clickstream_acquisition_day_user_view_cnt",
        "clickstream_engagement_kpi",
    }
    assert all("no_such_column" in r["message"] for r in failed)


def test_create_objects_is_idempotent_and_keeps_tables(wh):
    before = wh.rows("postgres", "clickstream_retention_view")
    reporting.create_objects(wh.pg, "postgres", wh.target)
    reporting.create_objects(wh.duck, "duckdb", wh.target)
    assert wh.rows("postgres", "clickstream_retention_view") == before
    assert wh.rows("duckdb", "clickstream_retention_view") == before


def test_duckdb_views_need_no_refresh(tmp_path):
    """A fresh in-memory DuckDB over the Parquet files answers at once: nothing to refresh, nothing locked."""
    import duckdb

    root = dataset.write_parquet(tmp_path / "ods")
    conn = duckdb.connect()
    dataset.duckdb_views(conn, root)
    target = reporting.Target.of(dataset.APP_ID)
    reporting.create_objects(conn, "duckdb", target)
    rows = conn.execute(
        f'SELECT SUM("active_users") FROM "{target.schema}"."clickstream_acquisition_day_user_view_cnt"'
    ).fetchone()
    assert rows[0] == 6  # the six (day, platform) user-days of test_active_and_new_users_per_day


def test_plan_carries_dependent_aggregates_forward():
    ranges = [(D3, D3), (D1, D1), (D1 + timedelta(days=1), D2)]  # D1 and D1+1..D2 join: adjacent
    work = materialize.plan(ranges, through=D4)
    for agg in reporting.AGGREGATES:
        got = [r for a, r in work if a is agg]
        assert got == ([(D1, D4)] if agg.carries_forward else [(D1, D2), (D3, D3)]), agg.name
    assert {a.name for a in reporting.AGGREGATES if a.carries_forward} == {
        "clickstream_acquisition_day_traffic_source_user",
        "clickstream_retention_user_new_return",
        "clickstream_retention_view",
        "clickstream_lifecycle_weekly_view",
    }
    # through before the ranges' end: the end wins
    assert {r for a, r in materialize.plan([(D2, D3)], through=D1) if a.carries_forward} == {(D2, D3)}
    with pytest.raises(ValueError, match="before it starts"):
        materialize.plan([(D2, D1)], through=D4)


def test_lifecycle_of_any_range_equals_the_whole_history(pg_cluster, tmp_path):
    """A back-fill of any range (through its own end) gives the weekly lifecycle rows that a back-fill of every day
    gives: the week before is scanned, a user's first and first active week and the last active week come from
    every day, a range that ends mid-week reads the whole week. Here pb has no user row (no first day: its first
    active week is its first week) and A3 has no _session_start (week 2 has no activity, week 3 has)."""
    wh = build(pg_cluster, tmp_path, "reporting_lifecycle")
    pg, target = wh.pg, wh.target
    s = f'"{target.schema}"'
    pg.execute(f'DELETE FROM {s}."user_v2" WHERE "user_pseudo_id" = \'pb\'')
    pg.execute(f'DELETE FROM {s}."event_v2" WHERE "event_id" = \'A3-0\'')
    name = "clickstream_lifecycle_weekly_view"
    reporting.backfill(pg, "postgres", target, D1 - timedelta(days=14), D4 + timedelta(days=14))
    full = wh.rows("postgres", name)
    w1, w2, w3 = D1, D1 + timedelta(days=7), D1 + timedelta(days=14)
    assert {(r["event_date"], r["lifecycle"]): r["user_count"] for r in full} == {
        (w1, "new"): 3,  # ua and pc by their first day, pb by its first active week
        (w2, "churned"): 3,  # no one in week 2, and week 3 has activity
        (w3, "returning"): 1,  # pb
    }
    for start, end in [(D1, D1), (D2, D2), (D3, D3), (D4, D4), (D3, D4), (D1, D4)]:
        pg.execute(f'DELETE FROM {s}."{name}"')
        reporting.backfill(pg, "postgres", target, start, end, through=end)
        monday = start - timedelta(days=start.weekday())
        assert wh.rows("postgres", name) == [r for r in full if monday <= r["event_date"] <= end], (start, end)
