"""The loader's Prometheus metrics (prometheus-client's default registry; a scheduler exposes them on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from .state import STATES, Summary

FILES = Gauge("loader_files", "Discovered Parquet files by table and state", ["table", "state"])
OLDEST_PENDING_AGE = Gauge(
    "loader_oldest_unloaded_file_age_seconds",
    "Age (since the object was written) of the oldest NEW or ENQUEUED file; 0 when none (the reference alarms on it)",
)
ROWS_LOADED = Counter("loader_rows_loaded_total", "Rows merged into the warehouse, by table", ["table"])
FILES_LOADED = Counter("loader_files_loaded_total", "Files loaded, by table", ["table"])
RUNS = Counter("loader_runs_total", "Loader runs by outcome", ["status"])
LAST_RUN_SECONDS = Gauge("loader_last_run_duration_seconds", "Duration of the last loader run")


def observe_summary(summary: Summary) -> None:
    from .schema import TABLE_NAMES

    for table in TABLE_NAMES:
        for state in STATES:
            FILES.labels(table, state).set(summary.counts.get((table, state), 0))
    OLDEST_PENDING_AGE.set(summary.oldest_pending_age_s())
