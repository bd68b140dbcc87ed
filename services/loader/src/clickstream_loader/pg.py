"""The PostgreSQL path: binary COPY into a staging table, dedup inside the batch, MERGE into the app's table.

One manifest (up to LOADER_MAX_FILES_PER_LOAD files of one app and one table) is one transaction:

    lock the manifest's file records (FOR UPDATE; still ENQUEUED under this manifest?)
    CREATE TEMP TABLE stage (LIKE target, _file_no)  ON COMMIT DROP
    COPY stage FROM STDIN (FORMAT BINARY)             every file of the manifest, encoded column-wise (pgcopy)
    MERGE INTO target USING (one row per key: row_number() over the survivor order) ...
    UPDATE clickstream_loader.files SET state = 'LOADED'
    COMMIT

so the rows and the files' LOADED state become visible together or not at all: a crash anywhere before the
commit leaves no rows and the files ENQUEUED, and the next run loads them again from scratch. Only one run
works on an (app, table) at a time (a session advisory lock, released by PostgreSQL when the run's
connection dies); a second run skips what is locked. Even without that lock, the FOR UPDATE on the file
records and the `state = 'ENQUEUED'` re-check make a second loader of the same manifest find nothing to do.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date

import numpy as np
import psycopg
import pyarrow as pa
from clickstream_core.tables import TABLES
from psycopg import sql

from . import pgcopy
from .schema import (
    MERGE_KEYS,
    REPLACE_WHEN,
    SURVIVOR_ORDER,
    create_tables_sql,
    qualified,
    quote,
    sql_type,
)
from .source import ParquetReader
from .sqlrender import render
from .state import FileRecord, PostgresStateStore

log = logging.getLogger("clickstream_loader.pg")

Hook = Callable[[str, dict], None]
STEPS = ("claimed", "copied", "merged", "marked", "committed")
_LOCK_CLASS = "clickstream_loader"
TEMP_BUFFERS = "256MB"
WORK_MEM = "256MB"


def stage_name(table: str) -> str:
    return f"_stage_{table}"


def dedup_sql(table: str) -> str:
    """Inside the batch, keep one row per merge key (the first in the survivor order, then the latest file).

    The ranking reads only the key and order columns; the losers are deleted by their ctid."""
    keys = ", ".join(quote(k) for k in MERGE_KEYS[table])
    stage = quote(stage_name(table))
    ranked = (
        f"SELECT ctid AS row_ref, row_number() OVER (PARTITION BY {keys} ORDER BY {SURVIVOR_ORDER[table]}, "  # noqa: S608
        f"_file_no DESC) AS _rank FROM {stage}"
    )
    return render(
        f"DELETE FROM {stage} WHERE ctid = ANY(ARRAY(SELECT row_ref FROM ({ranked}) AS r WHERE _rank > 1))",  # noqa: S608
        "postgres",
    )


def duplicates_sql(table: str) -> str:
    """One row when some merge key occurs twice in the staging table (a hash aggregate: cheaper than the ranking)."""
    keys = ", ".join(quote(k) for k in MERGE_KEYS[table])
    stage = quote(stage_name(table))
    return render(f"SELECT 1 FROM {stage} GROUP BY {keys} HAVING count(*) > 1 LIMIT 1", "postgres")  # noqa: S608


def merge_sql(app_id: str, table: str) -> str:
    """MERGE of the (deduplicated) staging table into the app's table (PostgreSQL dialect, rendered per engine)."""
    names = TABLES[table].names
    data_cols = [c for c in names if c != "created_time"]
    keys = MERGE_KEYS[table]
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    updates = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in data_cols if c not in keys)
    condition = REPLACE_WHEN[table]
    matched = f"WHEN MATCHED AND ({condition}) THEN" if condition else "WHEN MATCHED THEN"
    insert_cols = ", ".join(quote(c) for c in [*data_cols, "created_time"])
    insert_vals = ", ".join([*(f"s.{quote(c)}" for c in data_cols), "now()"])
    return render(  # identifiers quoted, no values in the text
        f"""MERGE INTO {qualified(app_id, table)} AS t
USING {quote(stage_name(table))} AS s
ON {on}
{matched} UPDATE SET {updates}, created_time = now()
WHEN NOT MATCHED THEN INSERT ({insert_cols}) VALUES ({insert_vals})""",  # noqa: S608
        "postgres",
    )


@dataclass
class ManifestResult:
    manifest_id: str
    app_id: str
    table: str
    files: int
    staged_rows: int
    merged_rows: int
    gone: list[str]
    seconds: float
    days: frozenset = frozenset()  # the (UTC) event days of the loaded files


class PostgresLoader:
    def __init__(self, dsn: str, hook: Hook | None = None, lock_timeout_s: float = 30.0):
        self.conn = psycopg.connect(dsn, autocommit=True, application_name="clickstream-loader")
        self.store = PostgresStateStore(self.conn)
        self.hook = hook or (lambda step, info: None)
        self.lock_timeout_ms = int(lock_timeout_s * 1000)
        self.reader = ParquetReader()
        self._ready_apps: set[str] = set()
        self.conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(self.lock_timeout_ms)))
        # staging lives in temp buffers (set before the session's first temp table); sorts and hashes in memory
        self.conn.execute(sql.SQL("SET temp_buffers = {}").format(sql.Literal(TEMP_BUFFERS)))
        self.conn.execute(sql.SQL("SET work_mem = {}").format(sql.Literal(WORK_MEM)))

    def close(self) -> None:
        self.reader.close()
        self.conn.close()

    # ------------------------------------------------------------------------------------------ schema

    def setup(self, apps: Iterable[str]) -> None:
        """The state table and every app's schema and tables (idempotent; serialised across loaders)."""
        todo = sorted(set(apps) - self._ready_apps)
        first = not self._ready_apps
        if not todo and not first:
            return
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s), 0)", (_LOCK_CLASS,))
            if first:
                self.store.create()
            for app in todo:
                for statement in create_tables_sql(app, "postgres"):
                    self.conn.execute(statement)
        self._ready_apps.update(todo)
        self._ready_apps.add("")

    # ------------------------------------------------------------------------------------------- locks

    def try_lock(self, app_id: str, table: str) -> bool:
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s))", (_LOCK_CLASS, f"{app_id}/{table}")
        ).fetchone()
        return bool(row[0])

    def unlock(self, app_id: str, table: str) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", (_LOCK_CLASS, f"{app_id}/{table}"))

    # -------------------------------------------------------------------------------------------- load

    def load_group(self, app_id: str, table: str, max_files: int, new_manifest_id: Callable[[], str]):
        """Every pending file of one app and table, manifest after manifest; None when another run holds it."""
        if not self.try_lock(app_id, table):
            return None
        results = []
        try:
            while True:
                manifest_id = new_manifest_id()
                files = self.store.claim(app_id, table, max_files, manifest_id)
                if not files:
                    break
                self.hook("claimed", {"app_id": app_id, "table": table, "manifest_id": manifest_id})
                results.append(self.load_manifest(app_id, table, manifest_id, files))
        finally:
            if not self.conn.closed and not self.conn.broken:
                self.unlock(app_id, table)
        return results

    def load_manifest(self, app_id: str, table: str, manifest_id: str, files: list[FileRecord]) -> ManifestResult:
        started = time.monotonic()
        info = {"app_id": app_id, "table": table, "manifest_id": manifest_id}
        by_uri = {f.uri: f for f in files}
        target = qualified(app_id, table)
        stage = quote(stage_name(table))
        gone: list[str] = []
        timings: dict[str, float] = {}
        with self.conn.transaction():
            uris = [u for u in self.store.lock_manifest(manifest_id) if u in by_uri]
            if not uris:
                return ManifestResult(manifest_id, app_id, table, 0, 0, 0, [], time.monotonic() - started)
            self.conn.execute(
                f"CREATE TEMP TABLE {stage} (LIKE {target} INCLUDING DEFAULTS, _file_no integer) ON COMMIT DROP"
            )
            clock = time.monotonic()
            staged, gone = self._copy(table, stage, uris)
            timings["copy_s"] = time.monotonic() - clock
            self.hook("copied", {**info, "rows": staged})
            loaded = [u for u in uris if u not in gone]
            merged = 0
            if staged:
                keys = ", ".join(quote(k) for k in MERGE_KEYS[table])
                clock = time.monotonic()
                self.conn.execute(f"ANALYZE {stage} ({keys})")  # the join's estimates; all columns cost 4x more
                if self.conn.execute(duplicates_sql(table)).fetchone() is not None:
                    self.conn.execute(dedup_sql(table))
                timings["dedup_s"] = time.monotonic() - clock
                clock = time.monotonic()
                merged = self.conn.execute(merge_sql(app_id, table)).rowcount
                timings["merge_s"] = time.monotonic() - clock
            self.hook("merged", {**info, "rows": merged})
            self.store.mark_loaded(loaded, manifest_id)
            if gone:
                self.store.mark_gone(gone)
            self.hook("marked", info)
        self.hook("committed", info)
        result = ManifestResult(
            manifest_id,
            app_id,
            table,
            len(loaded),
            staged,
            merged,
            gone,
            time.monotonic() - started,
            frozenset(by_uri[u].event_day for u in loaded),
        )
        log.info(
            "manifest loaded",
            extra={
                "app_id": app_id,
                "table": table,
                "manifest_id": manifest_id,
                "files": len(loaded),
                "staged_rows": staged,
                "merged_rows": merged,
                "gone": len(gone),
                "seconds": round(result.seconds, 3),
                **{k: round(v, 3) for k, v in timings.items()},
            },
        )
        return result

    def _copy(self, table: str, stage: str, uris: list[str]) -> tuple[int, list[str]]:
        """COPY every file into the staging table; files that no longer exist are returned as gone.

        The Parquet reading and encoding run on a thread of their own, a few batches ahead of the COPY, so
        the encoding of one batch overlaps the server's parsing of the previous one."""
        pg_types = [sql_type(c) for c in TABLES[table].columns] + ["integer"]
        cols = ", ".join(quote(c) for c in [*TABLES[table].names, "_file_no"])
        chunks: queue.Queue = queue.Queue(maxsize=4)
        gone: list[str] = []
        rows = 0
        stop = threading.Event()

        def produce():
            nonlocal rows

            try:
                for file_no, uri in enumerate(uris):
                    try:
                        for columns in self.reader.batches(uri, table):
                            if stop.is_set():
                                return
                            n = len(columns[0])
                            columns.append(pa.array(np.full(n, file_no, dtype=np.int32)))
                            chunks.put(pgcopy.encode_batch(columns, pg_types))
                            rows += n
                    except FileNotFoundError:
                        gone.append(uri)
                chunks.put(None)
            except BaseException as exc:  # handed to the COPY side
                chunks.put(exc)

        worker = threading.Thread(target=produce, name="loader-encode", daemon=True)
        worker.start()
        try:
            with self.conn.cursor() as cur, cur.copy(f"COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(pgcopy.HEADER)
                while True:
                    item = chunks.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    copy.write(item)
                copy.write(pgcopy.TRAILER)
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    chunks.get_nowait()
                except queue.Empty:
                    worker.join(0.05)
        return rows, gone

    # --------------------------------------------------------------------------------------- retention

    def delete_expired(self, apps: Iterable[str], days: int) -> dict[str, int]:
        """Rows of event_v2, item_v2 and session older than `days` before the app's newest event (the reference's
        rule; user_v2 keeps every user). Returns deleted rows per table."""
        deleted: dict[str, int] = {}
        for app in sorted(apps):
            if app not in self._ready_apps:
                continue
            with self.conn.transaction():
                events = qualified(app, "event_v2")
                newest = self.conn.execute(f"SELECT max(event_timestamp) FROM {events}").fetchone()[0]  # noqa: S608
                if newest is None:
                    continue
                for table in ("event_v2", "item_v2", "session"):
                    statement = render(
                        f"DELETE FROM {qualified(app, table)} WHERE event_timestamp < %s - make_interval(days => %s)",  # noqa: S608
                        "postgres",
                    )
                    n = self.conn.execute(statement, (newest, days)).rowcount
                    deleted[table] = deleted.get(table, 0) + n
        return deleted

    def forget_before(self, day: date) -> int:
        return self.store.forget_before(day)
