"""The daily aggregates behind the dashboards (reference-system.md §5.3 and §6).

Each is one SELECT in PostgreSQL's dialect over `clickstream_event_view_v3`, whose first column is
`event_date` (the day in the app's time zone; for the weekly lifecycle, the Monday of the week). The
SELECT reads the view through `{scan}`, a condition on `v."event_date"` that refresh fills with the
days it recomputes (widened by the aggregate's lookback/lookahead) and a plain view fills with `1 = 1`.
Ratios are double precision divisions of integers, so every engine gives the same bits.

What a day's rows depend on (the refresh relies on it, materialize.recompute):

- every aggregate: that day's events, their sessions (a session's duration, views and traffic source are the
  whole session's, and a session running past midnight has events on the next or the previous day; exits look
  one day ahead for that reason) and their users' rows (`user_v2`: merged id, first touch);
- `carries_forward`: also facts older than the day. The user's first day and first-touch traffic decide the
  cohort (`first_date`, `day_diff`), new vs returning and the first-touch dimensions of every later day of that
  user; the weekly lifecycle labels a week from the week before and from the user's first week, and emits
  churned rows up to the last active week. A change on day X (a late load) can therefore change these rows on
  any day after X, so they are recomputed from X through the newest day. Counts of new users (`_first_open`
  events: `new_user_indicator`) are not among them: they depend on the day's own events.
"""

# ruff: noqa: S608 -- SQL text built from our own templates: identifiers are quoted (db.ident), values are
# bound parameters, and the few literals a view's text needs (time zone, ids, N) are validated and quoted

from __future__ import annotations

from dataclasses import dataclass

V = '{s}."clickstream_event_view_v3" AS v'

# the reference's engaged session: > 1 page/screen views, or longer than 10 s, or engagement time over
# 10,000,000 ms (clickstream_acquisition_day_user_acquisition_sp)
ENGAGED = '("views" > 1 OR "duration" > 10000 OR "engagement_msec" > 10000000)'


@dataclass(frozen=True)
class Aggregate:
    name: str
    select: str
    grain: str = "day"  # "week": rows are keyed by the Monday of the week
    lookback_days: int = 0  # scan this many days before the first refreshed day
    lookahead_days: int = 0  # and after the last one
    carries_forward: bool = False  # a day's rows depend on earlier days: recompute from a change through the newest


def _dims(source: str, dims: list[tuple[str, str]], select: str) -> str:
    """UNION ALL of `select` once per (aggregation_type, column) pair, over the CTE `source`."""
    return "\nUNION ALL\n".join(
        select.replace("{type}", f"'{label}'").replace("{dim}", f'"{column}"') for label, column in dims
    ).replace("{from}", source)


_DAY_USER_VIEW_CNT = f"""
SELECT v."event_date", v."platform",
  COUNT(DISTINCT v."merged_user_id") AS "active_users",
  COUNT(DISTINCT v."new_user_indicator") AS "new_users",
  CAST(SUM(v."view_event_indicator") AS BIGINT) AS "view_count"
FROM {V}
WHERE {{scan}}
GROUP BY v."event_date", v."platform"
"""

_INTRA_DAY_USER = f"""
SELECT v."event_date", CAST(EXTRACT(HOUR FROM v."event_local_time") AS INT) AS "event_hour", v."platform",
  COUNT(DISTINCT v."merged_user_id") AS "active_users",
  COUNT(DISTINCT v."new_user_indicator") AS "new_users"
FROM {V}
WHERE {{scan}}
GROUP BY v."event_date", CAST(EXTRACT(HOUR FROM v."event_local_time") AS INT), v."platform"
"""

_FIRST_TOUCH_DIMS = [
    ("Traffic source", "first_traffic_source"),
    ("Traffic medium", "first_traffic_medium"),
    ("Traffic campaign", "first_traffic_campaign"),
    ("Traffic channel group", "first_traffic_channel_group"),
    ("App install source", "first_app_install_source"),
]

_TRAFFIC_SOURCE_USER = f"""
WITH "users" AS (
  SELECT DISTINCT v."event_date", v."platform", v."merged_user_id",
    v."first_traffic_source", v."first_traffic_medium", v."first_traffic_campaign",
    v."first_traffic_channel_group", v."first_app_install_source"
  FROM {V}
  WHERE {{scan}}
)
""" + _dims(
    '"users"',
    _FIRST_TOUCH_DIMS,
    'SELECT DISTINCT "event_date", "platform", {type} AS "aggregation_type", {dim} AS "aggregation_dim", '
    '"merged_user_id" AS "user_id" FROM {from}',
)

# one row per (day, platform, session) with the session's traffic and engagement facts
_SESSIONS_CTE = f"""
"sessions" AS (
  SELECT v."event_date", v."platform", v."user_pseudo_id", v."session_id",
    MAX(v."merged_user_id") AS "merged_user_id",
    MAX(v."new_user_indicator") AS "new_user",
    MAX(v."session_source") AS "session_source",
    MAX(v."session_medium") AS "session_medium",
    MAX(v."session_campaign") AS "session_campaign",
    MAX(v."session_channel_group") AS "session_channel_group",
    MAX(v."session_source_category") AS "session_source_category",
    COUNT(*) AS "event_count",
    SUM(v."view_event_indicator") AS "views",
    MAX(v."session_duration") AS "duration",
    COALESCE(SUM(v."user_engagement_time_msec"), 0) AS "engagement_msec"
  FROM {V}
  WHERE {{scan}}
  GROUP BY v."event_date", v."platform", v."user_pseudo_id", v."session_id"
),
"flagged" AS (
  SELECT "sessions".*,
    CASE WHEN "session_id" IS NOT NULL THEN "user_pseudo_id" || '#' || "session_id" END AS "session_key",
    CASE WHEN "session_id" IS NOT NULL AND {ENGAGED} THEN 1 ELSE 0 END AS "engaged"
  FROM "sessions"
)
"""

_SESSION_DIMS = [
    ("Session source", "session_source"),
    ("Session medium", "session_medium"),
    ("Session campaign", "session_campaign"),
    ("Session channel group", "session_channel_group"),
    ("Session source category", "session_source_category"),
]

_USER_ACQUISITION = (
    "WITH "
    + _SESSIONS_CTE
    + _dims(
        '"flagged"',
        _SESSION_DIMS,
        """SELECT "event_date", "platform", {type} AS "aggregation_type", {dim} AS "aggregation_dim",
  COUNT(DISTINCT "merged_user_id") AS "user_count",
  COUNT(DISTINCT "new_user") AS "new_user_count",
  COUNT(DISTINCT "session_key") AS "session_count",
  COUNT(DISTINCT CASE WHEN "engaged" = 1 THEN "session_key" END) AS "engaged_session_count",
  CAST(COUNT(DISTINCT CASE WHEN "engaged" = 1 THEN "session_key" END) AS DOUBLE PRECISION)
    / NULLIF(COUNT(DISTINCT "session_key"), 0) AS "engagement_rate",
  CAST(SUM("engagement_msec") AS DOUBLE PRECISION) / 1000 AS "total_user_engagement_time_seconds",
  CAST(SUM("engagement_msec") AS DOUBLE PRECISION) / 1000
    / NULLIF(COUNT(DISTINCT "merged_user_id"), 0) AS "avg_user_engagement_time_seconds",
  CAST(SUM("event_count") AS BIGINT) AS "event_count"
FROM {from}
GROUP BY "event_date", "platform", {dim}""",
    )
)

_COUNTRY_NEW_USER = f"""
SELECT v."event_date", v."platform", v."geo_country", v."geo_city",
  COUNT(DISTINCT v."new_user_indicator") AS "user_count"
FROM {V}
WHERE {{scan}} AND v."new_user_indicator" IS NOT NULL
GROUP BY v."event_date", v."platform", v."geo_country", v."geo_city"
"""

_DAY_EVENT_VIEW = f"""
SELECT v."event_date", v."platform",
  COUNT(*) AS "event_count",
  CAST(SUM(v."view_event_indicator") AS BIGINT) AS "view_count"
FROM {V}
WHERE {{scan}}
GROUP BY v."event_date", v."platform"
"""

_ENGAGEMENT_KPI = (
    "WITH "
    + _SESSIONS_CTE
    + """
SELECT "event_date", "platform",
  COUNT(DISTINCT "merged_user_id") AS "active_users",
  COUNT(DISTINCT "session_key") AS "session_count",
  COUNT(DISTINCT CASE WHEN "engaged" = 1 THEN "session_key" END) AS "engaged_session_count",
  CAST(SUM("engagement_msec") AS DOUBLE PRECISION) / 1000 AS "total_engagement_time_seconds",
  CAST(COUNT(DISTINCT CASE WHEN "engaged" = 1 THEN "session_key" END) AS DOUBLE PRECISION)
    / NULLIF(COUNT(DISTINCT "merged_user_id"), 0) AS "avg_engaged_session_per_user",
  CAST(SUM("engagement_msec") AS DOUBLE PRECISION) / 1000
    / NULLIF(COUNT(DISTINCT "session_key"), 0) AS "avg_engagement_time_per_session_seconds",
  CAST(SUM("engagement_msec") AS DOUBLE PRECISION) / 1000
    / NULLIF(COUNT(DISTINCT "merged_user_id"), 0) AS "avg_engagement_time_per_user_seconds"
FROM "flagged"
GROUP BY "event_date", "platform"
"""
)

_PAGE_SCREEN_DIMS = [
    ("Page title", "page_view_page_title"),
    ("Page URL path", "page_view_page_url_path"),
    ("Screen name", "screen_view_screen_name"),
    ("Screen ID", "screen_view_screen_id"),
]

_VIEW_EVENTS_CTE = f"""
WITH "views" AS (
  SELECT v."event_date", v."platform", v."merged_user_id", v."user_pseudo_id", v."session_id",
    v."page_view_page_title", v."page_view_page_url_path", v."screen_view_screen_name", v."screen_view_screen_id",
    COALESCE(v."page_view_engagement_time_msec", v."screen_view_engagement_time_msec", 0) AS "engagement_msec"
  FROM {V}
  WHERE {{scan}} AND v."view_event_indicator" = 1
)
"""

_PAGE_SCREEN_VIEW = _VIEW_EVENTS_CTE + _dims(
    '"views"',
    _PAGE_SCREEN_DIMS,
    """SELECT "event_date", "platform", {type} AS "aggregation_type", {dim} AS "aggregation_dim",
  COUNT(*) AS "view_count",
  COUNT(DISTINCT "merged_user_id") AS "user_count",
  COUNT(DISTINCT "user_pseudo_id" || '#' || "session_id") AS "session_count",
  CAST(SUM("engagement_msec") AS DOUBLE PRECISION) / 1000 AS "engagement_time_seconds"
FROM {from}
WHERE {dim} IS NOT NULL
GROUP BY "event_date", "platform", {dim}""",
)

_ENTRANCE = f"""
WITH "entrances" AS (
  SELECT v."event_date", v."platform",
    v."page_view_page_title", v."page_view_page_url_path", v."screen_view_screen_name", v."screen_view_screen_id"
  FROM {V}
  WHERE {{scan}} AND v."view_event_indicator" = 1
    AND (v."page_view_entrances" = 'true' OR v."screen_view_entrances" = 'true')
)
""" + _dims(
    '"entrances"',
    _PAGE_SCREEN_DIMS,
    """SELECT "event_date", "platform", {type} AS "aggregation_type", {dim} AS "aggregation_dim",
  COUNT(*) AS "entrance_count"
FROM {from}
WHERE {dim} IS NOT NULL
GROUP BY "event_date", "platform", {dim}""",
)

# the last page/screen view of each session is its exit; a session may run past midnight, so the scan
# looks one day ahead to find the true last view of a session that started on the last refreshed day
_EXIT = f"""
WITH "ordered" AS (
  SELECT v."event_date", v."platform",
    v."page_view_page_title", v."page_view_page_url_path", v."screen_view_screen_name", v."screen_view_screen_id",
    ROW_NUMBER() OVER (
      PARTITION BY v."user_pseudo_id", v."session_id" ORDER BY v."event_time_msec" DESC, v."event_id" DESC
    ) AS "from_end"
  FROM {V}
  WHERE {{scan}} AND v."view_event_indicator" = 1 AND v."session_id" IS NOT NULL
),
"exits" AS (SELECT * FROM "ordered" WHERE "from_end" = 1)
""" + _dims(
    '"exits"',
    _PAGE_SCREEN_DIMS,
    """SELECT "event_date", "platform", {type} AS "aggregation_type", {dim} AS "aggregation_dim",
  COUNT(*) AS "exit_count"
FROM {from}
WHERE {dim} IS NOT NULL
GROUP BY "event_date", "platform", {dim}""",
)

_EVENT_NAME = f"""
SELECT v."event_date", v."platform", v."event_name",
  COUNT(DISTINCT v."merged_user_id") AS "user_count",
  COUNT(*) AS "event_count",
  SUM(v."event_value") AS "event_value"
FROM {V}
WHERE {{scan}}
GROUP BY v."event_date", v."platform", v."event_name"
"""

_USER_NEW_RETURN = f"""
WITH "users" AS (
  SELECT v."event_date", v."platform", v."merged_user_id", MAX(v."is_first_day_event") AS "first_day"
  FROM {V}
  WHERE {{scan}}
  GROUP BY v."event_date", v."platform", v."merged_user_id"
)
SELECT "event_date", "platform", CASE WHEN "first_day" = 1 THEN 'new' ELSE 'returning' END AS "user_type",
  COUNT(*) AS "user_count"
FROM "users"
GROUP BY "event_date", "platform", CASE WHEN "first_day" = 1 THEN 'new' ELSE 'returning' END
"""

_DAU_WAU = f"""
SELECT DISTINCT v."event_date", v."platform", v."merged_user_id"
FROM {V}
WHERE {{scan}}
"""

_EVENT_OVERTIME = f"""
SELECT v."event_date", v."platform", COUNT(*) AS "event_count"
FROM {V}
WHERE {{scan}}
GROUP BY v."event_date", v."platform"
"""

# cohorts: users whose first visit (app time zone) was first_date, active again day_diff days later
_RETENTION = f"""
WITH "active" AS (
  SELECT DISTINCT v."event_date", v."first_date", v."merged_user_id"
  FROM {V}
  WHERE {{scan}} AND v."first_date" IS NOT NULL AND v."event_date" >= v."first_date"
)
SELECT "event_date", "first_date", "event_date" - "first_date" AS "day_diff", COUNT(*) AS "user_count"
FROM "active"
GROUP BY "event_date", "first_date"
"""

# weekly lifecycle from _session_start activity: new (first active week), retained (active the week
# before too), returning (active before, but not the week before), churned (active the week before,
# not this week); churned rows stop at the last week that has any activity. "weeks" reads the refreshed
# weeks and the one before (lookback); "users" reads every day, so that a user's first week, first active
# week and the last active week are the same whatever range a refresh recomputes
_LIFECYCLE_WEEKLY = f"""
WITH "weeks" AS (
  SELECT DISTINCT v."merged_user_id", CAST(DATE_TRUNC('week', v."event_date") AS DATE) AS "week"
  FROM {V}
  WHERE {{scan}} AND v."event_name" = '_session_start'
),
"users" AS (
  SELECT v."merged_user_id",
    CAST(DATE_TRUNC('week', MIN(v."first_date")) AS DATE) AS "first_week",
    CAST(DATE_TRUNC('week', MIN(v."event_date")) AS DATE) AS "first_active_week",
    CAST(DATE_TRUNC('week', MAX(v."event_date")) AS DATE) AS "last_active_week"
  FROM {V}
  WHERE v."event_name" = '_session_start'
  GROUP BY v."merged_user_id"
),
"linked" AS (
  SELECT "weeks"."merged_user_id", "weeks"."week", "users"."first_week", "users"."first_active_week",
    LAG("weeks"."week") OVER (PARTITION BY "weeks"."merged_user_id" ORDER BY "weeks"."week") AS "previous",
    LEAD("weeks"."week") OVER (PARTITION BY "weeks"."merged_user_id" ORDER BY "weeks"."week") AS "next"
  FROM "weeks" JOIN "users" ON "users"."merged_user_id" = "weeks"."merged_user_id"
),
"labelled" AS (
  SELECT "week" AS "event_date",
    CASE
      WHEN "week" = "first_week" OR ("first_week" IS NULL AND "week" = "first_active_week") THEN 'new'
      WHEN "previous" = "week" - 7 THEN 'retained'
      ELSE 'returning'
    END AS "lifecycle",
    "merged_user_id"
  FROM "linked"
  UNION ALL
  SELECT "week" + 7 AS "event_date", 'churned' AS "lifecycle", "merged_user_id"
  FROM "linked"
  WHERE ("next" IS NULL OR "next" > "week" + 7) AND "week" + 7 <= (SELECT MAX("last_active_week") FROM "users")
)
SELECT "event_date", "lifecycle", COUNT(*) AS "user_count"
FROM "labelled"
GROUP BY "event_date", "lifecycle"
"""

_CRASH_RATE = f"""
SELECT v."event_date", v."platform", v."app_version",
  COUNT(DISTINCT v."merged_user_id") AS "active_users",
  COUNT(DISTINCT CASE WHEN v."event_name" = '_app_exception' THEN v."merged_user_id" END) AS "crashed_users",
  CAST(COUNT(DISTINCT CASE WHEN v."event_name" = '_app_exception' THEN v."merged_user_id" END) AS DOUBLE PRECISION)
    / NULLIF(COUNT(DISTINCT v."merged_user_id"), 0) AS "crash_rate"
FROM {V}
WHERE {{scan}}
GROUP BY v."event_date", v."platform", v."app_version"
"""

_DEVICE_COLUMNS = (
    '"device_mobile_brand_name", "device_mobile_model_name", "device_operating_system", '
    '"device_operating_system_version", "device_ua_browser", "device_ua_browser_version", "device_ua_os", '
    '"device_ua_device", "device_ua_device_category", "app_version"'
)

_USER_DEVICE = f"""
SELECT v."event_date", v."platform", {_DEVICE_COLUMNS},
  CAST(v."device_screen_width" AS VARCHAR) || 'x' || CAST(v."device_screen_height" AS VARCHAR) AS "screen_resolution",
  COUNT(DISTINCT v."merged_user_id") AS "user_count",
  COUNT(*) AS "event_count"
FROM {V}
WHERE {{scan}}
GROUP BY v."event_date", v."platform", {_DEVICE_COLUMNS},
  CAST(v."device_screen_width" AS VARCHAR) || 'x' || CAST(v."device_screen_height" AS VARCHAR)
"""

AGGREGATES = (
    Aggregate("clickstream_acquisition_day_user_view_cnt", _DAY_USER_VIEW_CNT),
    Aggregate("clickstream_acquisition_intra_day_user", _INTRA_DAY_USER),
    Aggregate("clickstream_acquisition_day_traffic_source_user", _TRAFFIC_SOURCE_USER, carries_forward=True),
    Aggregate("clickstream_acquisition_day_user_acquisition", _USER_ACQUISITION),
    Aggregate("clickstream_acquisition_country_new_user", _COUNTRY_NEW_USER),
    Aggregate("clickstream_engagement_day_event_view", _DAY_EVENT_VIEW),
    Aggregate("clickstream_engagement_kpi", _ENGAGEMENT_KPI),
    Aggregate("clickstream_engagement_page_screen_view", _PAGE_SCREEN_VIEW),
    Aggregate("clickstream_engagement_entrance", _ENTRANCE),
    Aggregate("clickstream_engagement_exit", _EXIT, lookahead_days=1),
    Aggregate("clickstream_engagement_event_name", _EVENT_NAME),
    Aggregate("clickstream_retention_user_new_return", _USER_NEW_RETURN, carries_forward=True),
    Aggregate("clickstream_retention_dau_wau", _DAU_WAU),
    Aggregate("clickstream_retention_event_overtime", _EVENT_OVERTIME),
    Aggregate("clickstream_retention_view", _RETENTION, carries_forward=True),
    Aggregate(
        "clickstream_lifecycle_weekly_view", _LIFECYCLE_WEEKLY, grain="week", lookback_days=7, carries_forward=True
    ),
    Aggregate("clickstream_device_crash_rate", _CRASH_RATE),
    Aggregate("clickstream_device_user_device", _USER_DEVICE),
)

BY_NAME = {a.name: a for a in AGGREGATES}
