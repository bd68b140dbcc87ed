"""A transformer's output as plain dicts, for the tests of the third-party transformers."""

from __future__ import annotations

from clickstream_etl.plugins import RunContext
from pyspark.sql import functions as F


def context(spark, project_id: str) -> RunContext:
    return RunContext(spark=spark, project_id=project_id, job_id="job-1", app_ids=None, process_time_ms=0)


def collect(df) -> list[dict]:
    """Every row as a dict, with the event time in epoch milliseconds as `_ts_ms`."""
    rows = df.withColumn("_ts_ms", F.unix_millis("event_timestamp")).collect()
    return [r.asDict(recursive=True) for r in rows]


def custom(row: dict, name: str) -> tuple[str, str]:
    """(value, type) of one custom parameter."""
    value = row["custom_parameters"][name]
    return value["value"], value["type"]
