"""Create the reporting objects of an app and keep the daily aggregates fresh.

PostgreSQL (and Redshift): the aggregates are tables with an `event_date` column. `refresh` deletes
and recomputes the last N days (plus today) of every aggregate in one transaction, the days taken in
the app's time zone; `backfill` does the same over any date range, and `recompute` over several ranges
at once (the loader's refresh after a pass). Aggregates whose rows depend on earlier days
(`Aggregate.carries_forward`: cohorts, new vs returning, first-touch dimensions, the weekly lifecycle) are
recomputed from the first changed day through the newest day, whatever the ranges (`plan`). Every refresh
writes one row per object and range to `refresh_status`.

DuckDB: the aggregates are plain views over the base views by default (`mode="views"`): nothing is
ever stored, so a DuckDB process only needs the base tables (views over the Parquet files) and never
holds a write lock that would shut readers out; refresh has nothing to recompute and only records its
status. `mode="tables"` materialises them exactly as on PostgreSQL, each refresh being one short write
transaction, for a DuckDB file that one process owns. The SELECT is the same text in every mode, so
the numbers are the same on every engine.
"""

# ruff: noqa: S608 -- SQL text built from our own templates: identifiers are quoted (db.ident), values are
# bound parameters, and the few literals a view's text needs (time zone, ids, N) are validated and quoted

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from . import views
from .aggregates import AGGREGATES, Aggregate
from .db import Runner, ident, literal, tz_literal

log = logging.getLogger(__name__)

STATUS_TABLE = "refresh_status"
MODES = ("tables", "views")


@dataclass(frozen=True)
class Target:
    """Where one app's reporting objects live, and how its days are counted."""

    schema: str
    timezone: str = "UTC"
    app_id: str = ""
    project_id: str = "default"

    @classmethod
    def of(cls, app: Any, project_id: str = "default", schema: str | None = None) -> Target:
        """From a `clickstream_core.appconfig.App` (or an app id string, whose days are UTC)."""
        app_id = app if isinstance(app, str) else app.app_id
        timezone = "UTC" if isinstance(app, str) else app.timezone
        return cls(schema or default_schema(app_id), timezone, app_id, project_id)


def default_schema(app_id: str) -> str:
    """The app's schema: the loader's `schema_name` when it is there, else the app id (the reference's rule)."""
    try:
        from ..schema import schema_name  # type: ignore[attr-defined]
    except ImportError:
        return app_id
    return schema_name(app_id)


def default_mode(engine: str) -> str:
    return "views" if engine == "duckdb" else "tables"


def aggregate_select(agg: Aggregate, target: Target, scan: str = "1 = 1", top_n: int = 20) -> str:
    """The object's SELECT for this app: schema, time zone, ids and N filled in, days limited by `scan`.

    These few values are literals because a view's text cannot bind parameters; each is checked or quoted.
    """
    return (
        views.sql(agg.select, target.schema, tz_literal(target.timezone))
        .replace("{scan}", scan)
        .replace("{top_n}", str(int(top_n)))
        .replace("{project_id}", literal(target.project_id))
        .replace("{app_id}", literal(target.app_id or target.schema))
    )


def _objects() -> tuple[Aggregate, ...]:
    from .metadata import METADATA

    return AGGREGATES + METADATA


def create_objects(
    conn: Any,
    engine: str,
    target: Target,
    *,
    mode: str | None = None,
    rebuild: bool = False,
    top_n: int = 20,
) -> None:
    """The base views, the aggregates and metadata objects (tables or views) and the status table, idempotently.

    The base tables must exist (the loader creates them; on DuckDB they may be views over Parquet).

    Views are always dropped and created again (their text may have changed); aggregate tables are
    kept unless `rebuild`, which drops them (a back-fill then fills them again).
    """
    mode = mode or default_mode(engine)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    run = Runner(conn, engine)
    s = ident(target.schema)
    with run.transaction():
        run.run(f"CREATE SCHEMA IF NOT EXISTS {s}")
        # drop dependants first: aggregates (views or, on rebuild, tables), then the base views
        for agg in _objects():
            kind = _existing_kind(run, target.schema, agg.name)
            if kind == "VIEW":
                run.run(f"DROP VIEW {s}.{ident(agg.name)}")
            elif kind is not None and (rebuild or mode == "views"):
                run.run(f"DROP TABLE {s}.{ident(agg.name)}")
        for name in [*reversed(list(views.VIEWS)), *views.NATIVE_VIEWS]:
            run.run(f"DROP VIEW IF EXISTS {s}.{ident(name)}")
        for template in views.VIEWS.values():
            run.run(views.sql(template, target.schema, tz_literal(target.timezone)))
        for per_engine in views.NATIVE_VIEWS.values():
            run.native(views.sql(per_engine[engine], target.schema, ""))
        for agg in _objects():
            select = aggregate_select(agg, target, top_n=top_n)
            if mode == "views":
                run.run(f"CREATE VIEW {s}.{ident(agg.name)} AS {select}")
            else:
                run.run(f"CREATE TABLE IF NOT EXISTS {s}.{ident(agg.name)} AS SELECT * FROM ({select}) AS q LIMIT 0")
        run.run(status_table_sql(target))


def status_table_sql(target: Target) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {ident(target.schema)}.{ident(STATUS_TABLE)} ("
        '"refresh_name" VARCHAR(255) NOT NULL, "refresh_type" VARCHAR(16) NOT NULL, '
        '"start_date" DATE, "refresh_date" DATE, "status" VARCHAR(16) NOT NULL, '
        '"triggered_by" VARCHAR(32) NOT NULL, "message" VARCHAR(2048), "log_time" TIMESTAMP NOT NULL)'
    )


def object_sql(engine: str, target: Target, *, mode: str | None = None, top_n: int = 20) -> list[str]:
    """The statements that create an app's reporting objects on `engine`, rendered, without the drops.

    `create_objects` runs the same definitions; the loader publishes this text for DuckDB (views) and keeps a
    digest of it on PostgreSQL to recreate the objects only when a definition changed."""
    mode = mode or default_mode(engine)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    run = Runner(None, engine)
    s = ident(target.schema)
    out = [run.text(views.sql(t, target.schema, tz_literal(target.timezone))) for t in views.VIEWS.values()]
    out += [views.sql(per_engine[engine], target.schema, "") for per_engine in views.NATIVE_VIEWS.values()]
    for agg in _objects():
        select = aggregate_select(agg, target, top_n=top_n)
        if mode == "views":
            out.append(run.text(f"CREATE VIEW {s}.{ident(agg.name)} AS {select}"))
        else:
            table = f"{s}.{ident(agg.name)}"
            out.append(run.text(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM ({select}) AS q LIMIT 0"))
    out.append(run.text(status_table_sql(target)))
    return out


def _existing_kind(run: Runner, schema: str, name: str) -> str | None:
    rows = run.rows(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = :schema AND table_name = :name",
        {"schema": schema, "name": name},
    )
    if not rows:
        return None
    return "VIEW" if rows[0][0] == "VIEW" else "TABLE"


def today_in(timezone: str, now: datetime | None = None) -> date:
    return (now or datetime.now(tz=ZoneInfo("UTC"))).astimezone(ZoneInfo(timezone)).date()


def refresh(
    conn: Any,
    engine: str,
    target: Target,
    days: int = 1,
    *,
    today: date | None = None,
    mode: str | None = None,
    triggered_by: str = "WORK_FLOW",
) -> tuple[date, date]:
    """Recompute the last `days` days before today plus today (app time zone); returns the range."""
    end = today or today_in(target.timezone)
    start = end - timedelta(days=max(days, 0))
    recompute(conn, engine, target, [(start, end)], through=end, mode=mode, triggered_by=triggered_by)
    return start, end


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


DayRange = tuple[date, date]


def merge_ranges(ranges: Iterable[DayRange]) -> list[DayRange]:
    """Sorted ranges, overlapping or adjacent ones joined."""
    out: list[DayRange] = []
    for start, end in sorted(ranges):
        if end < start:
            raise ValueError(f"back-fill range ends ({end}) before it starts ({start})")
        if out and start <= out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def plan(
    ranges: Iterable[DayRange], through: date, objects: tuple[Aggregate, ...] = AGGREGATES
) -> list[tuple[Aggregate, DayRange]]:
    """What recomputing the days of `ranges` has to recompute, per aggregate.

    An aggregate whose rows hold only their own day's facts: those ranges. One that `carries_forward` (a change
    on day X changes its rows of later days): one range from the first day of `ranges` through `through` (the
    newest day) or the last day of `ranges`, whichever is later.
    """
    merged = merge_ranges(ranges)
    if not merged:
        return []
    newest = max(through, merged[-1][1])
    out: list[tuple[Aggregate, DayRange]] = []
    for agg in objects:
        if agg.carries_forward:
            out.append((agg, (merged[0][0], newest)))
        else:
            out.extend((agg, r) for r in merged)
    return out


def backfill(
    conn: Any,
    engine: str,
    target: Target,
    start: date,
    end: date,
    *,
    through: date | None = None,
    mode: str | None = None,
    triggered_by: str = "MANUAL",
    objects: tuple[Aggregate, ...] = AGGREGATES,
    top_n: int = 20,
) -> None:
    """Delete and recompute every aggregate for the days start..end (inclusive), in one transaction; the
    aggregates that carry forward from `start` through `through` (default: today in the app's time zone, or
    `end` when later), so that a back-fill after a late load leaves no later day stale.

    On failure nothing changes and a FAILED status row per aggregate is written in a transaction of its own.
    """
    if end < start:
        raise ValueError(f"back-fill range ends ({end}) before it starts ({start})")
    newest = through if through is not None else max(end, today_in(target.timezone))
    recompute(
        conn,
        engine,
        target,
        [(start, end)],
        through=newest,
        mode=mode,
        triggered_by=triggered_by,
        objects=objects,
        top_n=top_n,
    )


def recompute(
    conn: Any,
    engine: str,
    target: Target,
    ranges: Iterable[DayRange],
    *,
    through: date,
    mode: str | None = None,
    triggered_by: str = "MANUAL",
    objects: tuple[Aggregate, ...] = AGGREGATES,
    top_n: int = 20,
) -> list[tuple[str, DayRange]]:
    """Delete and recompute what `plan(ranges, through)` says, every aggregate and range in one transaction;
    returns the (aggregate name, range) pairs recomputed.

    On failure nothing changes and a FAILED status row per aggregate and range is written in a transaction of its
    own.
    """
    mode = mode or default_mode(engine)
    work = plan(ranges, through, objects)
    run = Runner(conn, engine)
    s = ident(target.schema)
    if mode == "tables":
        work = [(agg, _from_newest_week(run, target, agg, r)) for agg, r in work]
    try:
        with run.transaction():
            for agg, (start, end) in work:
                if mode == "tables":
                    _recompute(run, target, agg, start, end, top_n)
                _status(run, s, agg.name, mode, start, end, "SUCCEEDED", triggered_by, None)
    except Exception as exc:
        log.exception("refresh of %s (%s) failed", target.schema, merge_ranges(ranges))
        with run.transaction():
            for agg, (start, end) in work:
                _status(run, s, agg.name, mode, start, end, "FAILED", triggered_by, str(exc)[:2000])
        raise
    return [(agg.name, r) for agg, r in work]


def _recompute(run: Runner, target: Target, agg: Aggregate, start: date, end: date, top_n: int) -> None:
    table = f"{ident(target.schema)}.{ident(agg.name)}"
    first, last = start, end
    if agg.grain == "week":
        first = _week_start(start)
        last = _week_start(end) + timedelta(days=6)  # a week's rows need the whole week, even when end is mid-week
    params = {
        "start_date": first,
        "end_date": end,
        "scan_start": first - timedelta(days=agg.lookback_days),
        "scan_end": last + timedelta(days=agg.lookahead_days),
    }
    select = aggregate_select(agg, target, 'v."event_date" BETWEEN :scan_start AND :scan_end', top_n)
    run.run(f'DELETE FROM {table} WHERE "event_date" BETWEEN :start_date AND :end_date', params)
    run.run(
        f'INSERT INTO {table} SELECT * FROM ({select}) AS q WHERE q."event_date" BETWEEN :start_date AND :end_date',
        params,
    )


def _from_newest_week(run: Runner, target: Target, agg: Aggregate, days: DayRange) -> DayRange:
    """A weekly aggregate's range, started no later than its newest stored week: churned rows run up to the last
    active week, so activity after a week without any adds churned rows to the week after the newest stored one.
    Read before the refresh's transaction (on Redshift the transaction is one batch that returns no rows)."""
    if agg.grain != "week":
        return days
    rows = run.rows(f'SELECT MAX("event_date") FROM {ident(target.schema)}.{ident(agg.name)}')
    newest = rows[0][0] if rows else None
    if newest is None:
        return days
    newest = newest.date() if isinstance(newest, datetime) else newest
    return (min(days[0], newest), days[1])


def _status(
    run: Runner,
    s: str,
    name: str,
    mode: str,
    start: date,
    end: date,
    status: str,
    triggered_by: str,
    message: str | None,
) -> None:
    run.run(
        f"INSERT INTO {s}.{ident(STATUS_TABLE)} "
        '("refresh_name", "refresh_type", "start_date", "refresh_date", "status", "triggered_by", "message", '
        '"log_time") '
        "VALUES (:name, :kind, :start_date, :end_date, :status, :triggered_by, :message, CURRENT_TIMESTAMP)",
        {
            "name": name,
            "kind": "table" if mode == "tables" else "view",
            "start_date": start,
            "end_date": end,
            "status": status,
            "triggered_by": triggered_by,
            "message": message,
        },
    )


def last_refresh_date(conn: Any, engine: str, target: Target) -> date | None:
    """The dashboards' Last_Refresh_Date: the newest day a scheduled refresh completed."""
    rows = Runner(conn, engine).rows(
        f'SELECT MAX("refresh_date") FROM {ident(target.schema)}.{ident(STATUS_TABLE)} '
        "WHERE \"status\" = 'SUCCEEDED' AND \"triggered_by\" = 'WORK_FLOW'"
    )
    return rows[0][0] if rows else None
