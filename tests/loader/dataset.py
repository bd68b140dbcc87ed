"""A small hand-made dataset of one app, written as the ETL would (Parquet, clickstream_core.tables schemas),
and helpers that put it into PostgreSQL tables and DuckDB views over the files.

Three users, six sessions, two platforms, two countries, three weeks (UTC days; Monday 2024-03-04 is D1):

- A (pseudo id pa, logs in as ua during A1), Web, US / Seattle:
  A1 on D1 (Mon 03-04) 10:00 UTC: first open, 2 page views, 3 clicks, login; stored as Direct, then as google;
  A2 on D2 (Tue 03-05) 09:00: 1 page view, 5 s, 3,000 ms engagement: the one session that is not engaged;
  A3 on Tue 03-12 12:00: 2 page views.
- B (pb), Android, CN / Shanghai:
  B1 on D1 23:30 UTC (D2 in Shanghai): first open, 1 screen view, a crash, 15 s long;
  B2 on Tue 03-19 08:00: 2 screen views.
- C (pc), Web, US / New York:
  C1 on D2 14:00: first open, 1 page view, a click, 10,000,001 ms of engagement.

The tests derive their expected numbers from this table (and say how next to each assertion).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from clickstream_core.tables import TABLES

APP_ID = "shop"
PROJECT_ID = "demo_project"
D1 = date(2024, 3, 4)
D2 = date(2024, 3, 5)
D3 = date(2024, 3, 12)
D4 = date(2024, 3, 19)
LONG_NOTE = "n" * 150  # a custom parameter value longer than the 100 characters the metadata keeps

# ---- Arrow schemas from the Spark DDL spelling of clickstream_core.tables --------------------------------

_SCALARS = {
    "string": pa.string(),
    "bigint": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def _split(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def arrow_type(spark: str) -> pa.DataType:
    if spark in _SCALARS:
        return _SCALARS[spark]
    if spark.startswith("map<"):
        key, value = _split(spark[4:-1])
        return pa.map_(arrow_type(key), arrow_type(value))
    if spark.startswith("struct<"):
        return pa.struct([pa.field(n, arrow_type(t)) for n, t in (p.split(":", 1) for p in _split(spark[7:-1]))])
    raise ValueError(spark)


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([pa.field(c.name, arrow_type(c.type)) for c in TABLES[table].columns])


# ---- the events ------------------------------------------------------------------------------------------


def _ms(day: date, hh: int, mm: int, ss: int = 0) -> int:
    return int(datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC).timestamp() * 1000)


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


CREATED = datetime(2024, 3, 20, tzinfo=UTC)

USERS = {
    "pa": {
        "platform": "Web",
        "geo_country": "US",
        "geo_city": "Seattle",
        "device_ua_browser": "Chrome",
        "device_operating_system": "Mac OS X",
        "device_screen_width": 1920,
        "device_screen_height": 1080,
        "app_version": None,
        "sdk_name": "aws-solution-clickstream-sdk",
        "sdk_version": "0.12.0",
    },
    "pb": {
        "platform": "Android",
        "geo_country": "CN",
        "geo_city": "Shanghai",
        "device_mobile_brand_name": "Google",
        "device_mobile_model_name": "Pixel 8",
        "device_operating_system": "Android",
        "device_operating_system_version": "14",
        "device_screen_width": 1080,
        "device_screen_height": 2400,
        "app_version": "1.0.0",
        "sdk_name": "aws-solution-clickstream-sdk",
        "sdk_version": "0.14.0",
    },
    "pc": {
        "platform": "Web",
        "geo_country": "US",
        "geo_city": "New York",
        "device_ua_browser": "Firefox",
        "device_operating_system": "Windows",
        "device_screen_width": 1366,
        "device_screen_height": 768,
        "app_version": None,
        "sdk_name": "aws-solution-clickstream-sdk",
        "sdk_version": "0.12.0",
    },
}


def _params(**values) -> dict:
    return {
        k: {"value": str(v), "type": "number" if isinstance(v, int | float) else "string"} for k, v in values.items()
    }


# (session id, user pseudo id, user id, start (ms), [(seconds after start, event name, extra columns)])
SESSIONS = [
    (
        "A1",
        "pa",
        None,
        _ms(D1, 10, 0),
        [
            (0, "_first_open", {}),
            (0, "_session_start", {}),
            (
                1,
                "_page_view",
                {"page_view_page_url_path": "/home", "page_view_page_title": "Home", "page_view_entrances": True},
            ),
            (2, "click", {"custom_parameters": _params(button="buy", price=9.99)}),
            (3, "click", {"custom_parameters": _params(button="buy", note=LONG_NOTE)}),
            (
                4,
                "_page_view",
                {"page_view_page_url_path": "/product", "page_view_page_title": "Product", "user_id": "ua"},
            ),
            (5, "click", {"custom_parameters": _params(button="share"), "user_id": "ua"}),
            (6, "_user_engagement", {"user_engagement_time_msec": 5000, "user_id": "ua"}),
        ],
    ),
    (
        "A2",
        "pa",
        "ua",
        _ms(D2, 9, 0),
        [
            (0, "_session_start", {}),
            (
                1,
                "_page_view",
                {"page_view_page_url_path": "/home", "page_view_page_title": "Home", "page_view_entrances": True},
            ),
            (5, "_user_engagement", {"user_engagement_time_msec": 3000}),
        ],
    ),
    (
        "A3",
        "pa",
        "ua",
        _ms(D3, 12, 0),
        [
            (0, "_session_start", {}),
            (
                1,
                "_page_view",
                {"page_view_page_url_path": "/home", "page_view_page_title": "Home", "page_view_entrances": True},
            ),
            (3, "_page_view", {"page_view_page_url_path": "/cart", "page_view_page_title": "Cart"}),
        ],
    ),
    (
        "B1",
        "pb",
        None,
        _ms(D1, 23, 30),
        [
            (0, "_first_open", {}),
            (0, "_session_start", {}),
            (2, "_screen_view", {"screen_view_screen_name": "Main", "screen_view_entrances": True}),
            (9, "_app_exception", {"app_exception_message": "NullPointerException"}),
            (15, "_user_engagement", {"user_engagement_time_msec": 20000}),
        ],
    ),
    (
        "B2",
        "pb",
        None,
        _ms(D4, 8, 0),
        [
            (0, "_session_start", {}),
            (1, "_screen_view", {"screen_view_screen_name": "Main", "screen_view_entrances": True}),
            (4, "_screen_view", {"screen_view_screen_name": "Cart"}),
        ],
    ),
    (
        "C1",
        "pc",
        None,
        _ms(D2, 14, 0),
        [
            (0, "_first_open", {}),
            (0, "_session_start", {}),
            (
                1,
                "_page_view",
                {"page_view_page_url_path": "/home", "page_view_page_title": "Home", "page_view_entrances": True},
            ),
            (2, "click", {"custom_parameters": _params(button="subscribe")}),
            (2, "_user_engagement", {"user_engagement_time_msec": 10_000_001}),
        ],
    ),
]

# session traffic: A1 was first written as Direct (an early ETL run), then with its real source (a later one)
SESSION_ROWS = [
    ("A1", {"session_source": "Direct", "session_channel_group": "Direct"}, 0),
    ("A1", {"session_source": "google", "session_medium": "cpc", "session_channel_group": "Paid Search"}, 1),
    ("A2", {"session_source": "Direct", "session_channel_group": "Direct"}, 0),
    ("A3", {"session_source": "google", "session_medium": "organic", "session_channel_group": "Organic Search"}, 0),
    ("B1", {}, 0),
    ("B2", {}, 0),
    ("C1", {"session_source": "newsletter", "session_medium": "email", "session_channel_group": "Email"}, 0),
]

USER_ROWS = {
    "pa": {
        "user_id": "ua",
        "first_touch_time_msec": _ms(D1, 10, 0),
        "first_traffic_source": "google",
        "first_traffic_medium": "cpc",
        "first_traffic_channel_group": "Paid Search",
        "user_properties": {"level": {"value": "gold", "type": "string", "set_time_msec": _ms(D1, 10, 0)}},
    },
    "pb": {"first_touch_time_msec": _ms(D1, 23, 30), "first_app_install_source": "Google Play"},
    "pc": {
        "first_touch_time_msec": _ms(D2, 14, 0),
        "first_traffic_source": "newsletter",
        "first_traffic_medium": "email",
        "first_traffic_channel_group": "Email",
        "user_properties": {"level": {"value": "silver", "type": "string", "set_time_msec": _ms(D2, 14, 0)}},
    },
}


def _session_starts() -> dict[str, tuple[str, int, int]]:
    """session id -> (user pseudo id, start ms, number within the user)"""
    numbers: dict[str, int] = {}
    out = {}
    for sid, pseudo, _uid, start, _events in SESSIONS:
        numbers[pseudo] = numbers.get(pseudo, 0) + 1
        out[sid] = (pseudo, start, numbers[pseudo])
    return out


def event_rows() -> list[dict]:
    rows = []
    starts = _session_starts()
    for sid, pseudo, uid, start, events in SESSIONS:
        for i, (offset, name, extra) in enumerate(events):
            ms = start + offset * 1000
            row = dict.fromkeys(TABLES["event_v2"].names)
            row.update({k: v for k, v in USERS[pseudo].items()})
            row.update(
                event_timestamp=_ts(ms),
                event_id=f"{sid}-{i}",
                event_time_msec=ms,
                event_name=name,
                ingest_time_msec=ms + 500,
                project_id=PROJECT_ID,
                app_id=APP_ID,
                user_pseudo_id=pseudo,
                user_id=uid,
                session_id=sid,
                session_number=starts[sid][2],
                session_start_time_msec=start,
                user_first_touch_time_msec=USER_ROWS[pseudo]["first_touch_time_msec"],
                created_time=CREATED,
            )
            if pseudo == "pb":  # the Android SDK sends the session's running duration
                row["session_duration"] = offset * 1000
            if "custom_parameters" in extra:
                extra = dict(extra)
                params = extra.pop("custom_parameters")
                row["custom_parameters"] = params
                row["custom_parameters_json_str"] = json.dumps({k: v["value"] for k, v in params.items()})
            row.update(extra)
            rows.append(row)
    return rows


def session_rows() -> list[dict]:
    rows = []
    starts = _session_starts()
    for sid, traffic, run in SESSION_ROWS:
        pseudo, start, number = starts[sid]
        row = dict.fromkeys(TABLES["session"].names)
        row.update(
            event_timestamp=_ts(start),
            user_pseudo_id=pseudo,
            session_id=sid,
            user_id="ua" if sid in ("A2", "A3") else None,
            session_number=number,
            session_start_time_msec=start,
            created_time=CREATED + timedelta(hours=run),
        )
        row.update(traffic)
        rows.append(row)
    return rows


def user_rows() -> list[dict]:
    last_seen: dict[str, int] = {}
    for row in event_rows():
        last_seen[row["user_pseudo_id"]] = max(last_seen.get(row["user_pseudo_id"], 0), row["event_time_msec"])
    rows = []
    for pseudo, facts in USER_ROWS.items():
        row = dict.fromkeys(TABLES["user_v2"].names)
        row.update(facts)
        first = datetime.fromtimestamp(facts["first_touch_time_msec"] / 1000, tz=UTC).date()
        row.update(
            event_timestamp=_ts(last_seen[pseudo]),
            user_pseudo_id=pseudo,
            first_visit_date=first,
            created_time=CREATED,
        )
        if row["user_properties"]:
            row["user_properties_json_str"] = json.dumps(row["user_properties"])
        rows.append(row)
    return rows


def item_rows() -> list[dict]:
    row = dict.fromkeys(TABLES["item_v2"].names)
    row.update(
        event_timestamp=_ts(_ms(D1, 10, 0, 2)),
        event_id="A1-3",
        event_name="click",
        platform="Web",
        user_pseudo_id="pa",
        item_id="sku-1",
        name="Shoe",
        price=9.99,
        quantity=1.0,
        created_time=CREATED,
    )
    return [row]


ROWS = {"event_v2": event_rows, "item_v2": item_rows, "user_v2": user_rows, "session": session_rows}


def _arrow_value(value):
    """Python dict maps become Arrow map entries (lists of key/value pairs)."""
    if isinstance(value, dict):
        return [(k, v) for k, v in value.items()]
    return value


def write_parquet(root: Path) -> Path:
    """The four tables as Parquet files under root/<table>/part-0.snappy.parquet."""
    for table, rows in ROWS.items():
        schema = arrow_schema(table)
        data = [{k: _arrow_value(v) for k, v in row.items()} for row in rows()]
        out = root / table
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(data, schema=schema), out / "part-0.snappy.parquet", compression="snappy")
    return root


# ---- loading ---------------------------------------------------------------------------------------------


def duckdb_views(conn, root: Path, schema: str = APP_ID, json_maps: bool = False) -> None:
    """The app's base tables as DuckDB views over the Parquet files (what the DuckDB warehouse does); with
    `json_maps` the map columns are exposed as JSON (`to_json`), as the loader's warehouse views do."""
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    for table in ROWS:
        path = str(root / table / "*.parquet").replace("'", "''")
        columns = ", ".join(
            f'to_json("{c.name}") AS "{c.name}"' if json_maps and c.type.startswith("map<") else f'"{c.name}"'
            for c in TABLES[table].columns
        )
        conn.execute(f'CREATE OR REPLACE VIEW "{schema}"."{table}" AS SELECT {columns} FROM read_parquet(\'{path}\')')


def _pg_value(value, pg_type: str):
    from psycopg.types.json import Jsonb

    if pg_type == "jsonb":
        return None if value is None else Jsonb(dict(value))
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)  # `timestamp` columns hold UTC
    return value


def load_postgres(conn, root: Path, app_id: str = APP_ID) -> None:
    """The same Parquet rows into the loader's PostgreSQL tables (schema.create_table_sql), without the
    merge indexes, so that the duplicate session row of A1 is there as the DuckDB views see it."""
    from clickstream_loader import schema as ddl

    with conn.transaction():
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{ddl.schema_name(app_id)}"')
        for table in ROWS:
            conn.execute(ddl.create_table_sql(app_id, table))
            columns = TABLES[table].columns
            types = [ddl.sql_type(c) for c in columns]
            names = ", ".join(f'"{c.name}"' for c in columns)
            rows = pq.read_table(root / table).to_pylist(maps_as_pydicts="strict")
            with conn.cursor().copy(f"COPY {ddl.qualified(app_id, table)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row([_pg_value(row[c.name], t) for c, t in zip(columns, types, strict=True)])
