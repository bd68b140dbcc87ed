"""The job's configuration: environment variables (ECS/EMR-friendly), overridable by CLI flags."""

from __future__ import annotations

from dataclasses import dataclass

from clickstream_core.settings import env


@dataclass(frozen=True)
class EtlConfig:
    source: str = env(
        "ETL_SOURCE_URI", "", "Raw records: s3://bucket/prefix, s3a://…, file:///path or a path (required)"
    )
    sink: str = env("ETL_SINK_URI", "", "Output root of the four tables (the ods location) (required)")
    state: str = env("ETL_STATE_URI", "", "Watermark, run reports, window manifests, user history; default <sink>/_etl")
    bad_rows: str = env("ETL_BAD_ROWS_URI", "", "Bad rows (gzip JSON, partitioned by reason); default <sink>/bad_rows")
    app_config: str = env("APP_CONFIG", "", "App configuration YAML (project id, registered apps); empty = any app")
    plugins: str = env("ETL_PLUGINS", "", "Plug-in chain: YAML/JSON file or inline JSON; empty = the defaults")
    rules_dir: str = env("ETL_RULES_DIR", "", "Per-app traffic rule files <dir>/<app_id>/traffic_source_*_rule_v1.json")
    freshness_hours: float = env("ETL_FRESHNESS_HOURS", 72.0, "Events that arrive later than this are too_late")
    time_shift: bool = env(
        "ETL_TIME_SHIFT", False, "Shift event times whenever client and server clocks differ > 10 min"
    )
    buffer_seconds: int = env("ETL_BUFFER_SECONDS", 30, "A run reads objects written until now minus this")
    input_day_margin: int = env(
        "ETL_INPUT_DAY_MARGIN", 1, "Raw day folders read before the window's first day (late-uploaded objects)"
    )
    dedup_lookback_days: int = env(
        "ETL_DEDUP_LOOKBACK_DAYS", 3, "Days of written event_v2 an event id is checked against (0 = this run only)"
    )
    user_keep_days: int = env("ETL_USER_KEEP_DAYS", 180, "Days of user history merged into user_v2")
    event_allow_list: list[str] = env("ETL_EVENT_ALLOW_LIST", [], "Only these event names are kept (empty = all)")
    spark_master: str = env("SPARK_MASTER", "local[*]", "Spark master when not run by spark-submit")
    driver_memory: str = env("SPARK_DRIVER_MEMORY", "4g", "Driver (and in local mode executor) memory")
    shuffle_partitions: int = env("ETL_SHUFFLE_PARTITIONS", 0, "Spark shuffle partitions (0 = 2 x cores, min 4)")

    def problems(self):
        if not self.source:
            yield "ETL_SOURCE_URI (--source) is required"
        if not self.sink:
            yield "ETL_SINK_URI (--sink) is required"
        if self.freshness_hours <= 0:
            yield "ETL_FRESHNESS_HOURS must be positive"
        if self.buffer_seconds < 0:
            yield "ETL_BUFFER_SECONDS must not be negative"
        for name, value in (
            ("ETL_INPUT_DAY_MARGIN", self.input_day_margin),
            ("ETL_DEDUP_LOOKBACK_DAYS", self.dedup_lookback_days),
            ("ETL_USER_KEEP_DAYS", self.user_keep_days),
            ("ETL_SHUFFLE_PARTITIONS", self.shuffle_partitions),
        ):
            if value < 0:
                yield f"{name} must not be negative"

    @property
    def state_uri(self) -> str:
        return self.state or self.sink.rstrip("/") + "/_etl"

    @property
    def bad_rows_uri(self) -> str:
        return self.bad_rows or self.sink.rstrip("/") + "/bad_rows"
