"""Writing the tables: conform to the data model, write to staging, commit under the window's name.

A run writes each table with Spark into `<state>/staging/<job>/<table>/` and then moves every file
to its place in the layout of reference-system.md §4.8 under a name that carries the run's window:
`<sink>/<table>/partition_app=…/partition_year=…/partition_month=…/partition_day=…/part-<window>-<n>.snappy.parquet`.
Before the moves, a manifest of the window (`<state>/windows/<window>.json`) records the files it
will own and those it replaces; a rerun of the same window deletes both sets first. So a rerun
replaces its earlier output instead of adding to it, and a crash at any point is repaired by the
next run of the window. Readers never see a half-written file: each appears by one rename.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickstream_core.tables import PARTITION_COLUMNS, Table
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .storage import Storage, join

_PARTITION_DIRS = re.compile(r"((?:[a-z_]+=[^/]+/)+)[^/]+$")


def truncate_bytes(col: Column, max_bytes: int) -> Column:
    """Cut a string to `max_bytes` of UTF-8 without splitting a character (the warehouse limit)."""
    cut = F.decode(F.substring(F.encode(col, "UTF-8"), 1, max_bytes), "UTF-8")
    return F.when(F.octet_length(col) > max_bytes, F.regexp_replace(cut, "\ufffd+$", "")).otherwise(col)


def conform(df: DataFrame, table: Table, truncate: bool = True) -> DataFrame:
    """Exactly the table's columns in order and type (missing ones null), strings truncated,
    plus the partition columns from event_timestamp (UTC) and app_id."""
    present = set(df.columns)
    cols = []
    for column in table.columns:
        value = F.col(column.name) if column.name in present else F.lit(None)
        value = value.cast(column.type)
        if truncate and column.max_bytes is not None:
            value = truncate_bytes(value, column.max_bytes)
        cols.append(value.alias(column.name))
    ts = F.col("event_timestamp")
    partitions = [
        F.col("app_id").alias("partition_app"),
        F.date_format(ts, "yyyy").alias("partition_year"),
        F.date_format(ts, "MM").alias("partition_month"),
        F.date_format(ts, "dd").alias("partition_day"),
    ]
    return df.select(*cols, *partitions)


@dataclass
class TableWrite:
    table: str
    rows: int = 0
    files: int = 0


class WindowCommit:
    """The files a window owns, replaced as a whole on a rerun."""

    def __init__(self, storage: Storage, sink: str, state: str, window: str, job_id: str):
        self.storage = storage
        self.sink = storage.qualify(sink)
        self.window = window
        self.staging = join(state, "staging", job_id)
        self.manifest_uri = join(state, "windows", f"{window}.json")
        self.previous = self._previous_files()
        self.planned: list[tuple[str, str]] = []

    def _previous_files(self) -> set[str]:
        manifest = self.storage.read_json(self.manifest_uri) or {}
        return set(manifest.get("files", [])) | set(manifest.get("replaces", []))

    def stage(self, df: DataFrame, name: str, fmt: str = "parquet", partition_by=PARTITION_COLUMNS) -> str:
        target = join(self.staging, name)
        writer = df.write.mode("overwrite").partitionBy(*partition_by)
        if fmt == "parquet":
            writer.option("compression", "snappy").parquet(target)
        else:
            writer.option("compression", "gzip").json(target)
        return target

    def plan(self, name: str, staged: str, ext: str) -> int:
        """Final names for the staged files of one table; returns how many."""
        return self.plan_to(join(self.sink, name), staged, ext)

    def plan_to(self, root: str, staged: str, ext: str) -> int:
        root = self.storage.qualify(root)
        count = 0
        for entry in sorted(self.storage.list_files(staged), key=lambda e: e.path):
            match = _PARTITION_DIRS.search(entry.path)
            partition_dirs = match.group(1) if match else ""
            final = join(root, partition_dirs, f"part-{self.window}-{count:05d}{ext}")
            self.planned.append((entry.path, final))
            count += 1
        return count

    def commit(self) -> None:
        new_files = [final for _, final in self.planned]
        self.storage.write_json(
            self.manifest_uri,
            {"window": self.window, "state": "committing", "files": new_files, "replaces": sorted(self.previous)},
        )
        keep = set(new_files)
        for old in sorted(self.previous - keep):
            self.storage.delete(old)
        for staged, final in self.planned:
            self.storage.move(staged, final)
        self.storage.write_json(self.manifest_uri, {"window": self.window, "state": "committed", "files": new_files})
        self.storage.delete(self.staging, recursive=True)

    def owned(self) -> set[str]:
        """Files of earlier runs of this window (excluded from the dedup lookback)."""
        return self.previous
