"""The metadata scan (reference-system.md §5.4): what events, parameters and user attributes an app has.

Per app and day (app time zone):
- `event_metadata`: every event name with its count, per platform, SDK name and SDK version;
- `event_parameter_metadata`: per event name, the preset columns marked for value scanning and every key of
  `custom_parameters`, each with its value type and its top-N values (N default 20; values cut to 100
  characters) with their counts, plus how often the parameter occurred at all;
- `user_attribute_metadata`: the user attributes (`user_properties` keys, and the first-touch columns) of
  the users last seen that day, with types and top-N values.

They are kept like the aggregates (created by `refresh.create_objects`, `event_date` first): tables
refreshed by day on PostgreSQL, views on DuckDB by default (N is then fixed when the views are created).
"""

# ruff: noqa: S608 -- SQL text built from our own templates: identifiers are quoted (db.ident), values are
# bound parameters, and the few literals a view's text needs (time zone, ids, N) are validated and quoted

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from .aggregates import Aggregate
from .materialize import Target, backfill, today_in
from .views import EVENT_PARAMETER_VIEW, USER_ATTRIBUTE_VIEW, local_date

DEFAULT_TOP_N = 20
VALUE_CHARS = 100

# preset event_v2 columns whose values are worth offering in the console (the reference marks them
# `scanValue` in its DDL comments), with the category the console groups them by
SCANNED_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event", "event_value_currency"),
    ("app_info", "app_package_id"),
    ("app_info", "app_version"),
    ("app_info", "app_title"),
    ("app_info", "app_install_source"),
    ("device", "device_mobile_brand_name"),
    ("device", "device_mobile_model_name"),
    ("device", "device_manufacturer"),
    ("device", "device_carrier"),
    ("device", "device_network_type"),
    ("device", "device_operating_system"),
    ("device", "device_operating_system_version"),
    ("device", "device_system_language"),
    ("device", "device_ua_browser"),
    ("device", "device_ua_browser_version"),
    ("device", "device_ua_os"),
    ("device", "device_ua_os_version"),
    ("device", "device_ua_device"),
    ("device", "device_ua_device_category"),
    ("geo", "geo_continent"),
    ("geo", "geo_sub_continent"),
    ("geo", "geo_country"),
    ("geo", "geo_region"),
    ("geo", "geo_metro"),
    ("geo", "geo_city"),
    ("geo", "geo_locale"),
    ("traffic_source", "traffic_source_source"),
    ("traffic_source", "traffic_source_medium"),
    ("traffic_source", "traffic_source_campaign"),
    ("traffic_source", "traffic_source_clid_platform"),
    ("traffic_source", "traffic_source_channel_group"),
    ("traffic_source", "traffic_source_category"),
    ("screen_view", "screen_view_screen_name"),
    ("screen_view", "screen_view_screen_id"),
    ("screen_view", "screen_view_previous_screen_name"),
    ("page_view", "page_view_page_title"),
    ("page_view", "page_view_page_url_path"),
    ("page_view", "page_view_hostname"),
    ("page_view", "page_view_latest_referrer_host"),
    ("search", "search_key"),
    ("search", "search_term"),
    ("outbound", "outbound_link_domain"),
    ("sdk", "sdk_name"),
    ("sdk", "sdk_version"),
)

SCANNED_USER_COLUMNS: tuple[str, ...] = (
    "first_traffic_source",
    "first_traffic_medium",
    "first_traffic_campaign",
    "first_traffic_channel_group",
    "first_traffic_category",
    "first_traffic_clid_platform",
    "first_app_install_source",
)

EVENT_METADATA = "event_metadata"
EVENT_PARAMETER_METADATA = "event_parameter_metadata"
USER_ATTRIBUTE_METADATA = "user_attribute_metadata"

_IDS = '{project_id} AS "project_id", {app_id} AS "app_id"'
_EVENT_DATE = local_date('e."event_time_msec"')

# event_v2 with each event's day (app time zone), as `v`
_EVENTS_V = f'(SELECT e.*, {_EVENT_DATE} AS "event_date" FROM {{s}}."event_v2" AS e) AS v'

_EVENTS = f"""
SELECT v."event_date", {_IDS}, v."event_name", v."platform", v."sdk_name", v."sdk_version",
  COUNT(*) AS "event_count"
FROM {_EVENTS_V}
WHERE {{scan}}
GROUP BY v."event_date", v."event_name", v."platform", v."sdk_name", v."sdk_version"
"""


def _unpivot(source: str, names: tuple[str, ...], columns: Sequence[tuple[tuple[str, ...], str]]) -> str:
    """`<value> AS "property_value" FROM <source> CROSS JOIN (...) AS p`: one row per row `v` of `source` and
    column. `p` is a constant table with a row number "n" and the labels `names` of each of `columns` (pairs of
    labels and a column of `v`); the value is that column of `v`, picked by a CASE on "n".

    Written so that every engine reads it (PostgreSQL, DuckDB, Redshift, Athena): a lateral VALUES list over the
    row's columns would be shorter, but Redshift has neither LATERAL nor a VALUES list outside INSERT."""
    rows = []
    for n, (labels, _) in enumerate(columns, 1):
        values = [str(n), *(f"'{label}'" for label in labels)]
        if n == 1:  # the first row names the columns
            values = [f'{value} AS "{name}"' for value, name in zip(values, ("n", *names), strict=True)]
        rows.append("SELECT " + ", ".join(values))
    cases = " ".join(f'WHEN {n} THEN v."{column}"' for n, (_, column) in enumerate(columns, 1))
    table = "\n      UNION ALL ".join(rows)
    return f'CASE p."n" {cases} END AS "property_value"\n    FROM {source}\n    CROSS JOIN (\n      {table}\n    ) AS p'


def _top_values(source: str, partition: str) -> str:
    """Count each value in `source` (a CTE with `partition` columns + property_value) and keep the top N."""
    return f"""
"counted" AS (
  SELECT {partition}, "property_value", COUNT(*) AS "value_count"
  FROM {source}
  GROUP BY {partition}, "property_value"
),
"ranked" AS (
  SELECT "counted".*,
    SUM("value_count") OVER (PARTITION BY {partition}) AS "property_count",
    ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY "value_count" DESC, "property_value") AS "value_rank"
  FROM "counted"
)
SELECT "event_date", {_IDS}, {partition.replace('"event_date", ', "")}, "property_value", "value_count",
  CAST("property_count" AS BIGINT) AS "property_count", "value_rank"
FROM "ranked"
WHERE "value_rank" <= {{top_n}}
"""


_PARAMETER_PARTITION = '"event_date", "event_name", "category", "property_name", "value_type"'

_PARAMETERS = f"""
WITH "params" AS (
  SELECT x."event_date", x."event_name", x."category", x."property_name", 'string' AS "value_type",
    LEFT(x."property_value", {VALUE_CHARS}) AS "property_value"
  FROM (
    SELECT v."event_date", v."event_name", p."category", p."property_name",
    {_unpivot(_EVENTS_V, ("category", "property_name"), [((cat, col), col) for cat, col in SCANNED_EVENT_COLUMNS])}
    WHERE {{scan}}
  ) AS x
  WHERE x."property_value" IS NOT NULL
  UNION ALL
  SELECT v."event_date", v."event_name", 'custom' AS "category", v."parameter_name" AS "property_name",
    COALESCE(v."parameter_type", 'string') AS "value_type",
    LEFT(v."parameter_value", {VALUE_CHARS}) AS "property_value"
  FROM (SELECT e.*, {_EVENT_DATE} AS "event_date" FROM {{s}}."{EVENT_PARAMETER_VIEW}" AS e) AS v
  WHERE {{scan}} AND v."parameter_value" IS NOT NULL
),""" + _top_values('"params"', _PARAMETER_PARTITION)

_USER_DATE = local_date('EXTRACT(EPOCH FROM u."event_timestamp") * 1000')
_USER_PARTITION = '"event_date", "category", "property_name", "value_type"'

# one row per user: the newest user_v2 row (the table's merge rule)
_ONE_USER = """(
    SELECT * FROM (
      SELECT u.*, ROW_NUMBER() OVER (
        PARTITION BY u."user_pseudo_id" ORDER BY u."event_timestamp" DESC, u."created_time" DESC) AS "pick"
      FROM {s}."user_v2" AS u
    ) AS "ranked" WHERE "pick" = 1
  )"""

_USERS = f"""
WITH "latest" AS (
  SELECT u.*, {_USER_DATE} AS "event_date" FROM {_ONE_USER} AS u
),
"attrs" AS (
  SELECT v."event_date", 'user' AS "category", a."attribute_name" AS "property_name",
    COALESCE(a."attribute_type", 'string') AS "value_type", LEFT(a."attribute_value", {VALUE_CHARS}) AS "property_value"
  FROM {{s}}."{USER_ATTRIBUTE_VIEW}" AS a
  JOIN "latest" AS v ON v."user_pseudo_id" = a."user_pseudo_id" AND v."event_timestamp" = a."event_timestamp"
  WHERE {{scan}} AND a."attribute_value" IS NOT NULL
  UNION ALL
  SELECT x."event_date", 'user_outer' AS "category", x."property_name", 'string' AS "value_type",
    LEFT(x."property_value", {VALUE_CHARS}) AS "property_value"
  FROM (
    SELECT v."event_date", p."property_name",
    {_unpivot('"latest" AS v', ("property_name",), [((col,), col) for col in SCANNED_USER_COLUMNS])}
    WHERE {{scan}}
  ) AS x
  WHERE x."property_value" IS NOT NULL
),""" + _top_values('"attrs"', _USER_PARTITION)

METADATA = (
    Aggregate(EVENT_METADATA, _EVENTS),
    Aggregate(EVENT_PARAMETER_METADATA, _PARAMETERS),
    Aggregate(USER_ATTRIBUTE_METADATA, _USERS),
)


def scan(
    conn: Any,
    engine: str,
    target: Target,
    start: date | None = None,
    end: date | None = None,
    *,
    days: int = 1,
    top_n: int = DEFAULT_TOP_N,
    mode: str | None = None,
    triggered_by: str = "WORK_FLOW",
) -> tuple[date, date]:
    """Scan start..end (default: the last `days` days plus today, app time zone), replacing those days."""
    end = end or today_in(target.timezone)
    start = start or end - timedelta(days=days)
    backfill(conn, engine, target, start, end, mode=mode, triggered_by=triggered_by, objects=METADATA, top_n=top_n)
    return start, end
