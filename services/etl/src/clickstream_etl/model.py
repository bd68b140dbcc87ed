"""item_v2, user_v2 (batch part) and session from the good, enriched event rows."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from . import columns as C

FIRST_TOUCH_EVENTS = ("_first_open", "_first_visit", "_session_start", "_screen_view")
SESSION_EVENTS = ("_session_start", "_page_view", "_user_engagement", "_screen_view", "_app_end")
TRAFFIC = ("source", "medium", "campaign", "content", "term", "campaign_id", "clid_platform", "clid", "channel_group")


def items(events: DataFrame) -> DataFrame:
    exploded = events.where(F.size(C.ITEMS) > 0).select(
        "app_id",
        "event_timestamp",
        "event_id",
        "event_name",
        "platform",
        "user_pseudo_id",
        "user_id",
        "process_info",
        "created_time",
        F.explode(C.ITEMS).alias("item"),
    )
    flat = exploded.select("*", "item.*").drop("item")
    # The reference keeps the first of an item repeated within one event.
    return flat.dropDuplicates(["event_id", "user_pseudo_id", "item_id"])


def real_traffic(source: Column) -> Column:
    """A source other than none/Direct: it wins over Direct for a session (and a first touch)."""
    return source.isNotNull() & (source != "Direct")


def sessions(events: DataFrame) -> DataFrame:
    candidates = events.where(F.col("session_id").isNotNull() & F.col("event_name").isin(*SESSION_EVENTS))
    traffic = F.struct(
        *(F.col(f"traffic_source_{t}").alias(f"session_{t}") for t in TRAFFIC),
        F.col("traffic_source_category").alias("session_source_category"),
    )
    earliest = F.struct(
        "event_timestamp", "user_id", "session_number", "session_start_time_msec", "process_info", "created_time"
    )
    time = F.col("event_time_msec")
    grouped = candidates.groupBy("app_id", "user_pseudo_id", "session_id").agg(
        F.min_by(earliest, time).alias("first"),
        F.min_by(traffic, time).alias("first_traffic"),
        F.min_by(traffic, F.when(real_traffic(F.col("traffic_source_source")), time)).alias("real_traffic"),
    )
    chosen = F.coalesce(F.col("real_traffic"), F.col("first_traffic"))
    return grouped.select(
        "app_id",
        F.col("first.event_timestamp"),
        "user_pseudo_id",
        "session_id",
        F.col("first.user_id"),
        F.col("first.session_number"),
        F.col("first.session_start_time_msec"),
        *(chosen[f"session_{t}"].alias(f"session_{t}") for t in TRAFFIC),
        chosen["session_source_category"].alias("session_source_category"),
        F.col("first.process_info"),
        F.col("first.created_time"),
    )


def user_batch(events: DataFrame) -> DataFrame:
    """Per (app_id, user_pseudo_id) of this batch: the facts that user_history merges over runs."""
    time = F.col("event_time_msec")
    is_profile = F.col("event_name") == "_profile_set"
    is_first = F.col("event_name").isin(*FIRST_TOUCH_EVENTS)
    first_touch = F.struct(
        F.coalesce("user_first_touch_time_msec", "event_time_msec").alias("first_touch_time_msec"),
        F.coalesce("page_view_latest_referrer", "page_view_page_referrer").alias("first_referrer"),
        *(F.col(f"traffic_source_{t}").alias(f"first_traffic_{t}") for t in TRAFFIC),
        F.col("traffic_source_category").alias("first_traffic_category"),
        F.col("app_install_source").alias("first_app_install_source"),
    )
    has_props = is_profile & F.col(C.USER_PROPERTIES).isNotNull()
    return events.groupBy("app_id", "user_pseudo_id").agg(
        F.max("event_timestamp").alias("event_timestamp"),
        F.max_by("user_id", F.when(F.col("user_id").isNotNull(), time)).alias("user_id"),
        F.max(F.when(F.col("user_id").isNotNull(), time)).alias("user_id_time"),
        F.max_by(F.col(C.USER_PROPERTIES), F.when(has_props, time)).alias("user_properties"),
        F.max(F.when(has_props, time)).alias("properties_time"),
        F.min_by(first_touch, F.when(is_first, time)).alias("first_touch"),
        F.min(F.when(is_first, time)).alias("first_touch_time"),
        F.min(time).alias("first_event_time"),
    )
