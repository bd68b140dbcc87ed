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
from datetime import date

import numpy as np
import psycopg
import pyarrow as pa
from clickstream_core.tables import TABLES
from psycopg import sql

from . import pgcopy
from .schema import (
    LOADER_SCHEMA,
    MERGE_KEYS,
    REPLACE_WHEN,
    SURVIVOR_ORDER,
    TABLE_NAMES,
    create_tables_sql,
    qualified,
    quote,
    schema_name,
    sql_type,
)
from .source import ParquetReader
from .sqlrender import render
from .state import FileRecord, ManifestResult, PostgresStateStore

log = logging.getLogger("clickstream_loader.pg")

Hook = Callable[[str, dict], None]
STEPS = ("claimed", "copied", "merged", "marked", "committed")
_LOCK_CLASS = "clickstream_loader"
TEMP_BUFFERS = "256MB"
WORK_MEM = "256MB"


# Tables whose manifests are COPYed straight into the target without a keys-only check first (see _copy_straight).
OPTIMISTIC_TABLES = frozenset({"event_v2", "item_v2"})


def merge_index_name(app_id: str, table: str) -> str:
    """The merge-key index of an app's table as `to_regclass` reads it (schema.merge_index_sql creates it)."""
    return f"{quote(schema_name(app_id))}.{quote(table + '_merge_key')}"


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


class PostgresLoader:
    def __init__(self, dsn: str, hook: Hook | None = None, lock_timeout_s: float = 30.0, straight: bool = True):
        self.conn = psycopg.connect(dsn, autocommit=True, application_name="clickstream-loader")
        self.store = PostgresStateStore(self.conn)
        self.hook = hook or (lambda step, info: None)
        self.straight = straight  # COPY straight into the target when no key of the manifest collides
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
        apps = set(apps)
        todo = sorted(apps - self._ready_apps)
        first = not self._ready_apps
        if not todo and not first:
            return
        # DDL on what already exists is skipped: CREATE INDEX IF NOT EXISTS still takes a SHARE lock on its table,
        # which would deadlock with another loader's manifest writing that table and then the file states
        if first and self._exists([f"{quote(LOADER_SCHEMA)}.{quote('files_pending')}"]):
            first = False
            self._ready_apps.add("")
        todo = [a for a in todo if not self._exists([merge_index_name(a, t) for t in TABLE_NAMES])]
        if not todo and not first:
            self._ready_apps.update(apps)
            return
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s), 0)", (_LOCK_CLASS,))
            # checked again under the lock: another loader may have created them meanwhile
            if first and not self._exists([f"{quote(LOADER_SCHEMA)}.{quote('files_pending')}"]):
                self.store.create()
            for app in todo:
                if self._exists([merge_index_name(app, t) for t in TABLE_NAMES]):
                    continue
                for statement in create_tables_sql(app, "postgres"):
                    self.conn.execute(statement)
        self._ready_apps.update(apps)
        self._ready_apps.add("")

    def _exists(self, names: list[str]) -> bool:
        row = self.conn.execute(
            "SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest(%s::text[]) AS n", (names,)
        ).fetchone()
        return bool(row[0])

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
        gone: list[str] = []
        timings: dict[str, float] = {}
        with self.conn.transaction():
            uris = [u for u in self.store.lock_manifest(manifest_id) if u in by_uri]
            if not uris:
                return ManifestResult(manifest_id, app_id, table, 0, 0, 0, [], time.monotonic() - started)
            straight = None
            if self.straight:
                straight = self._copy_straight(app_id, table, uris, info, timings)
            if straight is not None:
                (staged, gone), merged = straight, straight[0]
            else:
                staged, merged, gone = self._stage_and_merge(app_id, table, uris, info, timings)
            loaded = [u for u in uris if u not in gone]
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
            days=frozenset(by_uri[u].event_day for u in loaded),
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
                "path": "straight" if straight is not None else "merge",
                **{k: round(v, 3) for k, v in timings.items()},
            },
        )
        return result

    def _copy_straight(self, app_id: str, table: str, uris: list[str], info: dict, timings: dict):
        """When none of the manifest's keys is loaded yet and none repeats inside it, the MERGE would insert every
        row as it is: COPY the files straight into the target instead (created_time = now(), its default).

        The straight COPY runs in a savepoint and the target's unique index on the merge key is the check: a key
        loaded before or twice in the manifest fails the COPY at that row, the savepoint is rolled back and the
        caller takes the staging + MERGE path. For events and items a colliding key is the exception (an SDK retry
        that reached two ETL windows, a rewritten file), so they try the COPY at once. Users and sessions recur
        in every window, so they first COPY only the keys into a temp table and look for a repeated or loaded key
        (a hash aggregate and a semi-join on the unique index), and skip the doomed COPY when one is found.
        Everything stays inside the manifest's transaction (rows and file states). Returns (rows, gone), or None
        for "use the MERGE path"."""
        target = qualified(app_id, table)
        if table not in OPTIMISTIC_TABLES and self._keys_collide(table, target, uris, timings):
            return None
        names = tuple(c for c in TABLES[table].names if c != "created_time")
        clock = time.monotonic()
        try:
            with self.conn.transaction():  # a savepoint
                rows, gone = self._copy(table, target, uris, only=names, file_no=False)
        except psycopg.errors.UniqueViolation:
            timings["collided_s"] = time.monotonic() - clock
            log.info("straight COPY collided on a key: staging + MERGE instead", extra=info)
            return None
        timings["copy_s"] = time.monotonic() - clock
        self.hook("copied", {**info, "rows": rows})
        return rows, gone

    def _keys_collide(self, table: str, target: str, uris: list[str], timings: dict) -> bool:
        """A keys-only COPY into a temp table: does a key repeat in the manifest, or is one loaded already?"""
        keys = MERGE_KEYS[table]
        keys_table = quote(f"_keys_{table}")
        key_list = ", ".join(quote(k) for k in keys)
        clock = time.monotonic()
        self.conn.execute(
            f"CREATE TEMP TABLE {keys_table} ON COMMIT DROP AS SELECT {key_list} FROM {target} WITH NO DATA"  # noqa: S608
        )
        n, _ = self._copy(table, keys_table, uris, only=tuple(keys), file_no=False)
        conflict = (
            n == 0
            or self.conn.execute(
                f"SELECT 1 FROM {keys_table} GROUP BY {key_list} HAVING count(*) > 1 LIMIT 1"  # noqa: S608
            ).fetchone()
        )
        if not conflict and self.conn.execute(f"SELECT 1 FROM {target} LIMIT 1").fetchone():  # noqa: S608
            on = " AND ".join(f"t.{quote(k)} = k.{quote(k)}" for k in keys)
            self.conn.execute(f"ANALYZE {keys_table}")
            conflict = self.conn.execute(
                f"SELECT 1 FROM {keys_table} AS k WHERE EXISTS (SELECT 1 FROM {target} AS t WHERE {on}) LIMIT 1"  # noqa: S608
            ).fetchone()
        timings["keys_s"] = time.monotonic() - clock
        return bool(conflict)

    def _stage_and_merge(self, app_id: str, table: str, uris: list[str], info: dict, timings: dict):
        """The general path: staging COPY, dedup in the batch, MERGE; returns (staged, merged, gone)."""
        target = qualified(app_id, table)
        stage = quote(stage_name(table))
        self.conn.execute(
            f"CREATE TEMP TABLE {stage} (LIKE {target} INCLUDING DEFAULTS, _file_no integer) ON COMMIT DROP"
        )
        clock = time.monotonic()
        staged, gone = self._copy(table, stage, uris)
        timings["copy_s"] = time.monotonic() - clock
        self.hook("copied", {**info, "rows": staged})
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
        return staged, merged, gone

    def _copy(
        self, table: str, stage: str, uris: list[str], only: tuple[str, ...] | None = None, file_no: bool = True
    ) -> tuple[int, list[str]]:
        """COPY every file into the staging table; files that no longer exist are returned as gone.

        `only`: just these columns (the keys-only COPY, or the target's columns without created_time);
        `file_no`: add the file's number in the manifest (staging's `_file_no`, the in-batch tie-break).
        The Parquet reading and encoding run on a thread of their own, a few batches ahead of the COPY, so
        the encoding of one batch overlaps the server's parsing of the previous one."""
        columns = [c for c in TABLES[table].columns if only is None or c.name in only]
        pg_types = [sql_type(c) for c in columns] + (["integer"] if file_no else [])
        cols = ", ".join(quote(c) for c in [*(c.name for c in columns), *(["_file_no"] if file_no else [])])
        chunks: queue.Queue = queue.Queue(maxsize=4)
        gone: list[str] = []
        rows = 0
        stop = threading.Event()

        def produce():
            nonlocal rows

            try:
                for number, uri in enumerate(uris):
                    try:
                        for columns in self.reader.batches(uri, table, only=only):
                            if stop.is_set():
                                return
                            n = len(columns[0])
                            if file_no:
                                columns.append(pa.array(np.full(n, number, dtype=np.int32)))
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
