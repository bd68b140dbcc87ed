"""The reporting layer as part of a loader pass (PostgreSQL): objects, daily refresh, metadata scan.

After a pass that loaded rows for an app, on the loader's connection and under a per-app advisory lock (two
loaders never refresh the same app at once: the refresh is DELETE + INSERT of whole days):

1. the app's reporting objects are created when missing or when their definitions changed (a digest of the
   rendered definitions, `reporting.object_sql`, is kept in `clickstream_loader.reporting`); (re)created
   aggregate tables are back-filled over every day the app has data for;
2. one transaction recomputes the last LOADER_REFRESH_DAYS days plus today in the app's time zone and the local
   days of the loaded files' event days (UTC partition days) that fall outside that window (a late file of an
   older day), each widened by a day on both sides (a session running past midnight has facts on both days);
   the aggregates whose rows depend on earlier days (cohorts, new vs returning, first touch, weekly lifecycle:
   `Aggregate.carries_forward`) from the first of those days through today (`materialize.plan`);
3. the metadata scan runs at most every LOADER_METADATA_INTERVAL_S per app: the same window plus every day
   loaded since the last scan (kept as a pending range in the state row until a scan covers it).

A failure here fails the run (its rows stay loaded; the next pass that loads the app refreshes it again).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from clickstream_core.appconfig import App, AppConfig
from psycopg import sql

from . import reporting
from .reporting.db import Runner
from .reporting.materialize import merge_ranges, plan, recompute, today_in
from .schema import qualified
from .state import LOADER_SCHEMA

log = logging.getLogger("clickstream_loader.reports")

_STATE = sql.SQL("{}.{}").format(sql.Identifier(LOADER_SCHEMA), sql.Identifier("reporting"))
_STATE_DDL = sql.SQL(
    """CREATE TABLE IF NOT EXISTS {} (
    app_id text PRIMARY KEY,
    definitions text NOT NULL,
    created_at timestamptz NOT NULL,
    metadata_scanned_at timestamptz,
    metadata_from date,
    metadata_to date
)"""
).format(_STATE)
_LOCK_CLASS = "clickstream_loader"
DayRange = tuple[date, date]


def target_of(apps: AppConfig, app_id: str) -> reporting.Target:
    """The app's reporting target: its time zone from the app configuration (UTC when not registered)."""
    return reporting.Target.of(apps.apps.get(app_id) or App(app_id), project_id=apps.project_id)


def local_days(utc_days: Iterable[date], timezone: str) -> set[date]:
    """The app-local days that events of these UTC days fall on (a UTC day spans one or two local days)."""
    zone = ZoneInfo(timezone)
    out: set[date] = set()
    for day in utc_days:
        first = datetime.combine(day, time(0), UTC)
        last = first + timedelta(days=1) - timedelta(microseconds=1)
        a, b = first.astimezone(zone).date(), last.astimezone(zone).date()
        out.update(a + timedelta(days=i) for i in range((b - a).days + 1))
    return out


def outside(days: Iterable[date], window: DayRange) -> list[DayRange]:
    """The parts of the span of `days` before and after `window`, as at most two ranges."""
    days = sorted(days)
    before = [d for d in days if d < window[0]]
    after = [d for d in days if d > window[1]]
    return [(part[0], part[-1]) for part in (before, after) if part]


def digest(target: reporting.Target, engine: str = "postgres") -> str:
    """What the app's objects are made of: a digest of their definitions as `engine` runs them."""
    text = "\n;\n".join(reporting.object_sql(engine, target))
    return hashlib.sha256(text.encode()).hexdigest()


def data_days(run: Runner, app_id: str) -> set[date]:
    """The UTC days of the app's oldest and newest event and user rows (the span a rebuild back-fills)."""
    union = " UNION ALL ".join(f'SELECT "event_timestamp" FROM {qualified(app_id, t)}' for t in ("event_v2", "user_v2"))  # noqa: S608
    rows = run.rows(f'SELECT MIN(t."event_timestamp"), MAX(t."event_timestamp") FROM ({union}) AS t')  # noqa: S608
    return {ts.date() for ts in (rows[0] if rows else ()) if ts is not None}


def span(days: set[date]) -> set[date]:
    return {min(days), max(days)} if days else set()


def around(days: Iterable[date], newest: date) -> set[date]:
    """The days and their neighbours (a session that runs past midnight has its duration, views, traffic source
    and last view counted on both of its days), none after `newest` unless it is one of `days`."""
    days = set(days)
    if not days:
        return set()
    cap = max(newest, max(days))
    return {d + timedelta(days=k) for d in days for k in (-1, 0, 1) if d + timedelta(days=k) <= cap}


def refresh_app(
    conn,
    target: reporting.Target,
    loaded_utc_days: set[date],
    *,
    refresh_days: int = 1,
    metadata_interval_s: float = 3600.0,
    today: date | None = None,
) -> dict:
    """Steps 1-3 of the module docstring for one app; returns what was done (RunReport.reporting[app])."""
    app_id = target.app_id
    done: dict = {"created": False, "refreshed": [], "carried_forward": None, "metadata": []}
    key = (_LOCK_CLASS, f"{app_id}/reporting")
    conn.execute(_STATE_DDL)  # idempotent; the loader's setup created the schema
    conn.execute("SELECT pg_advisory_lock(hashtext(%s), hashtext(%s))", key)
    try:
        row = conn.execute(
            sql.SQL(
                "SELECT definitions, metadata_scanned_at, metadata_from, metadata_to, now() FROM {} WHERE app_id = %s"
            ).format(_STATE),
            (app_id,),
        ).fetchone()
        wanted = digest(target)
        touched = local_days(loaded_utc_days, target.timezone)
        pending = {d for d in (row[2], row[3]) if d is not None} if row else set()
        scanned_at, now = (row[1], row[4]) if row else (None, None)
        if row is None or row[0] != wanted:
            # new, or a definition changed: (re)create the tables and back-fill every day of data; the state row
            # is written only after the back-fill, so a crash before it means "recreate" again
            reporting.create_objects(conn, "postgres", target, rebuild=True)
            touched |= span(local_days(data_days(Runner(conn, "postgres"), app_id), target.timezone))
            done["created"] = True
            scanned_at = None
        window = refresh_touched(conn, "postgres", target, touched, refresh_days, today, done)
        pending |= span(touched)
        conn.execute(
            sql.SQL(
                "INSERT INTO {} AS r (app_id, definitions, created_at, metadata_from, metadata_to) "
                "VALUES (%(app)s, %(defs)s, now(), %(lo)s, %(hi)s) ON CONFLICT (app_id) DO UPDATE SET "
                "definitions = EXCLUDED.definitions, metadata_from = EXCLUDED.metadata_from, "
                "metadata_to = EXCLUDED.metadata_to, "
                "created_at = CASE WHEN r.definitions = EXCLUDED.definitions THEN r.created_at ELSE now() END, "
                "metadata_scanned_at = CASE WHEN r.definitions = EXCLUDED.definitions "
                "THEN r.metadata_scanned_at END"
            ).format(_STATE),
            {"app": app_id, "defs": wanted, "lo": min(pending, default=None), "hi": max(pending, default=None)},
        )
        due = scanned_at is None or now is None or (now - scanned_at).total_seconds() >= metadata_interval_s
        if due and pending:
            scan_pending(conn, "postgres", target, window, pending, done)
            pending = set()
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET metadata_scanned_at = now(), metadata_from = NULL, metadata_to = NULL "
                    "WHERE app_id = %s"
                ).format(_STATE),
                (app_id,),
            )
        done["metadata_pending"] = (min(pending), max(pending)) if pending else None
    finally:
        if not conn.closed and not conn.broken:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", key)
    return finished(app_id, done)


def refresh_touched(
    conn, engine: str, target: reporting.Target, touched: set[date], refresh_days: int, today: date | None, done: dict
) -> tuple[date, date]:
    """Step 2 on any engine: the window (the last `refresh_days` days and today in the app's time zone) and the
    touched days with their neighbours, recomputed in one transaction, the carried-forward aggregates through the
    newest day; records it in `done` and returns the window."""
    end = today or today_in(target.timezone)
    window = (end - timedelta(days=max(refresh_days, 0)), end)
    if touched:
        ranges = [window, *outside(around(touched, end), window)]
        done["refreshed"] = merge_ranges(ranges)
        newest = max(end, max(touched))
        carried = [days for agg, days in plan(ranges, newest) if agg.carries_forward]
        done["carried_forward"] = carried[0] if carried else None
        recompute(conn, engine, target, ranges, through=newest, triggered_by="WORK_FLOW")
    return window


def scan_pending(
    conn, engine: str, target: reporting.Target, window: tuple[date, date], pending: set[date], done: dict
) -> None:
    """Step 3's scan on any engine: the window, then each pending range outside it."""
    reporting.scan_metadata(conn, engine, target, *window)
    done["metadata"].append(window)
    for start, stop in outside(pending, window):
        reporting.scan_metadata(conn, engine, target, start, stop)
        done["metadata"].append((start, stop))


def finished(app_id: str, done: dict) -> dict:
    """`done` with its days as ISO text (the run report is JSON), logged."""
    done["refreshed"] = [(a.isoformat(), b.isoformat()) for a, b in done["refreshed"]]
    if done.get("carried_forward"):
        done["carried_forward"] = tuple(d.isoformat() for d in done["carried_forward"])
    done["metadata"] = [(a.isoformat(), b.isoformat()) for a, b in done["metadata"]]
    if done.get("metadata_pending"):
        done["metadata_pending"] = tuple(d.isoformat() for d in done["metadata_pending"])
    log.info("reporting refreshed", extra={"app_id": app_id, "reporting": done})
    return done


def apps_with_pending_metadata(conn) -> set[str]:
    """Apps whose loaded days wait for a metadata scan (the interval had not passed when they were loaded)."""
    conn.execute(_STATE_DDL)
    rows = conn.execute(sql.SQL("SELECT app_id FROM {} WHERE metadata_from IS NOT NULL").format(_STATE)).fetchall()
    return {r[0] for r in rows}
