"""user_v2 as the reference's incremental snapshot.

Each run stores its per-user facts (model.user_batch) under `<state>/user_history/window=<w>/`
(replaced when the window is rerun), then merges the history of the last `user_keep_days` and
emits only the users seen in this run, each with its full merged state: newest user id and
properties, first touch from the earliest first-touch event ever seen.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .storage import Storage, join

HISTORY = "user_history"


def history_dirs(storage: Storage, state: str, oldest_end_ms: int) -> list[str]:
    found = []
    for path in storage.list_dirs(join(state, HISTORY)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        try:
            end = int(name.removeprefix("window=").split("-")[1])
        except (IndexError, ValueError):
            continue
        if end >= oldest_end_ms:
            found.append(path)
    return found


def save_batch(batch: DataFrame, storage: Storage, state: str, window: str) -> str:
    target = join(state, HISTORY, f"window={window}")
    batch.write.mode("overwrite").parquet(target)
    return target


def merged(spark: SparkSession, batch: DataFrame, paths: list[str], process_info, created_time) -> DataFrame:
    history = spark.read.parquet(*paths) if paths else batch
    touched = batch.select("app_id", "user_pseudo_id").distinct()
    rows = history.join(touched, ["app_id", "user_pseudo_id"], "left_semi")
    agg = rows.groupBy("app_id", "user_pseudo_id").agg(
        F.max("event_timestamp").alias("event_timestamp"),
        F.max_by("user_id", "user_id_time").alias("user_id"),
        F.max_by("user_properties", "properties_time").alias("user_properties"),
        F.min_by("first_touch", "first_touch_time").alias("first_touch"),
        F.min("first_event_time").alias("first_event_time"),
    )
    first_touch_ms = F.coalesce(F.col("first_touch.first_touch_time_msec"), F.col("first_event_time"))
    first = lambda name: F.col(f"first_touch.{name}").alias(name)  # noqa: E731
    return agg.select(
        "app_id",
        "event_timestamp",
        "user_pseudo_id",
        "user_id",
        "user_properties",
        F.when(F.size("user_properties") > 0, F.to_json("user_properties")).alias("user_properties_json_str"),
        first_touch_ms.alias("first_touch_time_msec"),
        F.to_date(F.timestamp_millis(first_touch_ms)).alias("first_visit_date"),
        first("first_referrer"),
        *(
            first(f"first_traffic_{t}")
            for t in (
                "source medium campaign content term campaign_id clid_platform clid channel_group category".split()
            )
        ),
        first("first_app_install_source"),
        process_info.alias("process_info"),
        created_time.alias("created_time"),
    )
