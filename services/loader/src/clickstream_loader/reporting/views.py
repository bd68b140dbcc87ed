"""The two base views every report reads: events with their session, and that joined with the user.

Both are plain views on every engine (the reference keeps the first as a table refreshed by a stored
procedure; here the daily aggregates are what gets materialised). Written once in PostgreSQL's dialect
with `{s}` (the quoted app schema) and `{tz}` (the app's time zone as a literal) filled in by `sql()`.
"""

# ruff: noqa: S608 -- SQL text built from our own templates: identifiers are quoted (db.ident), values are
# bound parameters, and the few literals a view's text needs (time zone, ids, N) are validated and quoted

from __future__ import annotations

from clickstream_core.tables import EVENT_V2

from .db import ident

BASE_VIEW = "clickstream_event_base_view"
EVENT_VIEW = "clickstream_event_view_v3"
ITEM_VIEW = "clickstream_item_view_v1"

VIEW_EVENTS = ("_page_view", "_screen_view")
NEW_USER_EVENTS = ("_first_open",)
SESSION_TRAFFIC = (
    "session_source",
    "session_medium",
    "session_campaign",
    "session_content",
    "session_term",
    "session_campaign_id",
    "session_clid_platform",
    "session_clid",
    "session_channel_group",
    "session_source_category",
)
FIRST_TOUCH = (
    "first_referrer",
    "first_traffic_source",
    "first_traffic_medium",
    "first_traffic_campaign",
    "first_traffic_content",
    "first_traffic_term",
    "first_traffic_campaign_id",
    "first_traffic_clid_platform",
    "first_traffic_clid",
    "first_traffic_channel_group",
    "first_traffic_category",
    "first_app_install_source",
)
# event_v2 carries the SDK's session_duration at the time of each event; the view replaces it with the
# session's duration (below), so every event of a session reports the same value.
_REPLACED = frozenset({"session_duration"})


def local_time(epoch_ms: str) -> str:
    """Epoch milliseconds as a timestamp in the app's time zone (identical on every engine)."""
    return f"(TO_TIMESTAMP({epoch_ms} / 1000.0) AT TIME ZONE {{tz}})"


def local_date(epoch_ms: str) -> str:
    return f"CAST({local_time(epoch_ms)} AS DATE)"


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _event_columns() -> str:
    out = []
    for col in EVENT_V2.columns:
        if col.name in _REPLACED:
            continue
        ref = f"e.{ident(col.name)}"
        if col.type == "boolean":  # as the reference (and its dashboards) expect: 'true' / 'false'
            out.append(f"CASE WHEN {ref} THEN 'true' WHEN NOT {ref} THEN 'false' END AS {ident(col.name)}")
        else:
            out.append(ref)
    return ",\n    ".join(out)


_BASE = f"""
CREATE VIEW {{s}}."{BASE_VIEW}" AS
WITH "one_session" AS (
  SELECT * FROM (
    SELECT "x".*,
      ROW_NUMBER() OVER (
        PARTITION BY "x"."user_pseudo_id", "x"."session_id"
        ORDER BY CASE WHEN "x"."session_source" IS NOT NULL AND "x"."session_source" <> 'Direct' THEN 0 ELSE 1 END,
          "x"."event_timestamp", "x"."created_time" DESC
      ) AS "pick"
    FROM {{s}}."session" AS "x"
  ) AS "ranked" WHERE "pick" = 1
),
"session_stats" AS (
  SELECT "user_pseudo_id", "session_id",
    GREATEST(COALESCE(MAX("session_duration"), 0), MAX("event_time_msec") - MIN("event_time_msec")) AS "duration",
    SUM(CASE WHEN "event_name" IN ({_in(VIEW_EVENTS)}) THEN 1 ELSE 0 END) AS "views",
    COALESCE(SUM("user_engagement_time_msec"), 0) AS "engagement_msec"
  FROM {{s}}."event_v2"
  WHERE "session_id" IS NOT NULL
  GROUP BY "user_pseudo_id", "session_id"
)
SELECT
    {_event_columns()},
    {local_date('e."event_time_msec"')} AS "event_date",
    {local_time('e."event_time_msec"')} AS "event_local_time",
    {", ".join(f"ses.{ident(c)}" for c in SESSION_TRAFFIC)},
    st."duration" AS "session_duration",
    st."views" AS "session_views",
    st."engagement_msec" AS "session_engagement_time_msec",
    CASE WHEN e."event_name" IN ({_in(VIEW_EVENTS)}) THEN 1 ELSE 0 END AS "view_event_indicator",
    CASE WHEN st."views" > 0 THEN 1 ELSE 0 END AS "view_session_indicator"
FROM {{s}}."event_v2" AS e
LEFT JOIN "one_session" AS ses ON ses."user_pseudo_id" = e."user_pseudo_id" AND ses."session_id" = e."session_id"
LEFT JOIN "session_stats" AS st ON st."user_pseudo_id" = e."user_pseudo_id" AND st."session_id" = e."session_id"
"""

_EVENT_V3 = f"""
CREATE VIEW {{s}}."{EVENT_VIEW}" AS
WITH "one_user" AS (
  SELECT * FROM (
    SELECT "u".*,
      ROW_NUMBER() OVER (
        PARTITION BY "u"."user_pseudo_id" ORDER BY "u"."event_timestamp" DESC, "u"."created_time" DESC
      ) AS "pick"
    FROM {{s}}."user_v2" AS "u"
  ) AS "ranked" WHERE "pick" = 1
)
SELECT
    b.*,
    u."user_id" AS "latest_user_id",
    COALESCE(u."user_id", b."user_id", b."user_pseudo_id") AS "merged_user_id",
    CASE WHEN b."event_name" IN ({_in(NEW_USER_EVENTS)})
      THEN COALESCE(u."user_id", b."user_id", b."user_pseudo_id") END AS "new_user_indicator",
    u."first_touch_time_msec",
    u."first_visit_date",
    COALESCE({local_date('u."first_touch_time_msec"')}, u."first_visit_date") AS "first_date",
    {", ".join(f"u.{ident(c)}" for c in FIRST_TOUCH)},
    u."user_properties",
    u."user_properties_json_str",
    CASE WHEN b."event_date" = COALESCE({local_date('u."first_touch_time_msec"')}, u."first_visit_date")
      THEN 1 ELSE 0 END AS "is_first_day_event"
FROM {{s}}."{BASE_VIEW}" AS b
LEFT JOIN "one_user" AS u ON u."user_pseudo_id" = b."user_pseudo_id"
"""

_ITEM_V1 = f"""
CREATE VIEW {{s}}."{ITEM_VIEW}" AS
SELECT i.*, {local_date('EXTRACT(EPOCH FROM i."event_timestamp") * 1000')} AS "event_date"
FROM {{s}}."item_v2" AS i
"""

VIEWS = {BASE_VIEW: _BASE, EVENT_VIEW: _EVENT_V3, ITEM_VIEW: _ITEM_V1}


def sql(template: str, schema: str, tz: str) -> str:
    """A template with its schema (quoted here) and its time zone literal filled in."""
    return template.replace("{s}", ident(schema)).replace("{tz}", tz)


# Maps are the one thing sqlglot cannot bridge: jsonb objects in PostgreSQL, MAP (or JSON, cast to MAP) in
# DuckDB, SUPER in Redshift, map in Athena. These two views unnest them once, per engine, so that everything
# above them (the metadata scan, the console's parameter pickers) is written once again.
EVENT_PARAMETER_VIEW = "clickstream_event_parameter_view"
USER_ATTRIBUTE_VIEW = "clickstream_user_attribute_view"

_EVENT_PARAM_COLUMNS = 'e."event_id", e."event_time_msec", e."event_name", e."platform", e."user_pseudo_id"'
_USER_COLUMNS = 'u."user_pseudo_id", u."user_id", u."event_timestamp"'
_PARAM_TYPE = "MAP(VARCHAR, STRUCT(value VARCHAR, type VARCHAR))"
_USER_PROP_TYPE = "MAP(VARCHAR, STRUCT(value VARCHAR, type VARCHAR, set_time_msec BIGINT))"

NATIVE_VIEWS: dict[str, dict[str, str]] = {
    EVENT_PARAMETER_VIEW: {
        "postgres": f"""CREATE VIEW {{s}}."{EVENT_PARAMETER_VIEW}" AS
SELECT {_EVENT_PARAM_COLUMNS}, p."key" AS "parameter_name",
  p."value" ->> 'value' AS "parameter_value", p."value" ->> 'type' AS "parameter_type"
FROM {{s}}."event_v2" AS e CROSS JOIN LATERAL jsonb_each(e."custom_parameters") AS p""",
        "duckdb": f"""CREATE VIEW {{s}}."{EVENT_PARAMETER_VIEW}" AS
SELECT {_EVENT_PARAM_COLUMNS}, p."entry"."key" AS "parameter_name",
  p."entry"."value"."value" AS "parameter_value", p."entry"."value"."type" AS "parameter_type"
FROM {{s}}."event_v2" AS e
CROSS JOIN UNNEST(map_entries(CAST(e."custom_parameters" AS {_PARAM_TYPE}))) AS p("entry")""",
        "redshift": f"""CREATE VIEW {{s}}."{EVENT_PARAMETER_VIEW}" AS
SELECT {_EVENT_PARAM_COLUMNS}, k AS "parameter_name",
  p."value"::varchar AS "parameter_value", p."type"::varchar AS "parameter_type"
FROM {{s}}."event_v2" AS e, UNPIVOT e."custom_parameters" AS p AT k WITH NO SCHEMA BINDING""",
        "athena": f"""CREATE VIEW {{s}}."{EVENT_PARAMETER_VIEW}" AS
SELECT {_EVENT_PARAM_COLUMNS}, p."k" AS "parameter_name",
  p."v"."value" AS "parameter_value", p."v"."type" AS "parameter_type"
FROM {{s}}."event_v2" AS e CROSS JOIN UNNEST(e."custom_parameters") AS p("k", "v")""",
    },
    USER_ATTRIBUTE_VIEW: {
        "postgres": f"""CREATE VIEW {{s}}."{USER_ATTRIBUTE_VIEW}" AS
SELECT {_USER_COLUMNS}, p."key" AS "attribute_name",
  p."value" ->> 'value' AS "attribute_value", p."value" ->> 'type' AS "attribute_type"
FROM {{s}}."user_v2" AS u CROSS JOIN LATERAL jsonb_each(u."user_properties") AS p""",
        "duckdb": f"""CREATE VIEW {{s}}."{USER_ATTRIBUTE_VIEW}" AS
SELECT {_USER_COLUMNS}, p."entry"."key" AS "attribute_name",
  p."entry"."value"."value" AS "attribute_value", p."entry"."value"."type" AS "attribute_type"
FROM {{s}}."user_v2" AS u
CROSS JOIN UNNEST(map_entries(CAST(u."user_properties" AS {_USER_PROP_TYPE}))) AS p("entry")""",
        "redshift": f"""CREATE VIEW {{s}}."{USER_ATTRIBUTE_VIEW}" AS
SELECT {_USER_COLUMNS}, k AS "attribute_name",
  p."value"::varchar AS "attribute_value", p."type"::varchar AS "attribute_type"
FROM {{s}}."user_v2" AS u, UNPIVOT u."user_properties" AS p AT k WITH NO SCHEMA BINDING""",
        "athena": f"""CREATE VIEW {{s}}."{USER_ATTRIBUTE_VIEW}" AS
SELECT {_USER_COLUMNS}, p."k" AS "attribute_name",
  p."v"."value" AS "attribute_value", p."v"."type" AS "attribute_type"
FROM {{s}}."user_v2" AS u CROSS JOIN UNNEST(u."user_properties") AS p("k", "v")""",
    },
}
