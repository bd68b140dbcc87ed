"""File states: each discovered Parquet file moves NEW -> ENQUEUED -> LOADED (or GONE when it vanished unloaded).

- NEW: discovered (or rewritten since its last load: an ETL rerun replaces a window's files under the same
  names, so a changed size or mtime sends a LOADED file back to NEW; the merge's replace rules make the
  reload harmless).
- ENQUEUED: taken into a manifest (`manifest_id`) by a loader run. A run that dies leaves its files ENQUEUED;
  the next run that holds the (app, table) takes them again, like the reference re-picks `#ENQUEUE` items.
- LOADED: its rows are in the warehouse. On PostgreSQL this update commits in the same transaction as the
  rows (`PostgresStateStore` works on the loader's connection), which is the exactly-once argument.
- GONE: listed once, deleted before it was loaded (an ETL rerun replaced it); never retried.

Implementations: `PostgresStateStore` (a table in the warehouse), `LocalStateStore` (SQLite, for the duckdb
engine). A DynamoDB store (the reference's status table, for Redshift) would implement the same methods; it
cannot share the warehouse's transaction, so with it a crash between MERGE and `mark_loaded` means one
reload of the same files, which the merge keys make idempotent.
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from psycopg import sql

from .discovery import DataFile
from .schema import LOADER_SCHEMA

NEW, ENQUEUED, LOADED, GONE = "NEW", "ENQUEUED", "LOADED", "GONE"
STATES = (NEW, ENQUEUED, LOADED, GONE)
PENDING = (NEW, ENQUEUED)


@dataclass(frozen=True, slots=True)
class FileRecord:
    uri: str
    table: str
    app_id: str
    event_day: date
    size: int
    mtime: float
    state: str
    manifest_id: str | None = None


@dataclass
class ManifestResult:
    """What loading one manifest did, whichever warehouse took it."""

    manifest_id: str
    app_id: str
    table: str
    files: int
    staged_rows: int
    merged_rows: int
    gone: list[str]
    seconds: float
    manifest_uri: str = ""  # the manifest object a Redshift COPY read; PostgreSQL has none
    days: frozenset = frozenset()  # the (UTC) event days of the loaded files


@dataclass
class Summary:
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (table, state) -> files
    oldest_pending_mtime: float | None = None

    def oldest_pending_age_s(self, now: float | None = None) -> float:
        if self.oldest_pending_mtime is None:
            return 0.0
        return max(0.0, (now or time.time()) - self.oldest_pending_mtime)


class StateStore(ABC):
    @abstractmethod
    def register(self, files: Iterable[DataFile]) -> int:
        """Record new files (and files changed since they were recorded) as NEW; returns how many."""

    @abstractmethod
    def pending_groups(self) -> list[tuple[str, str]]:
        """(app id, table) pairs with NEW or ENQUEUED files."""

    @abstractmethod
    def claim(self, app_id: str, table: str, limit: int, manifest_id: str) -> list[FileRecord]:
        """Up to `limit` pending files of one app and table, oldest first, marked ENQUEUED under `manifest_id`."""

    @abstractmethod
    def mark_loaded(self, uris: list[str], manifest_id: str) -> int:
        """ENQUEUED files of this manifest -> LOADED; returns how many changed."""

    @abstractmethod
    def mark_gone(self, uris: list[str]) -> None: ...

    @abstractmethod
    def summary(self) -> Summary: ...

    @abstractmethod
    def forget_before(self, day: date) -> int:
        """Drop the records of LOADED/GONE files whose event day is before `day` (retention)."""


# ---------------------------------------------------------------------------------------------- PostgreSQL

_FILES = sql.SQL("{}.{}").format(sql.Identifier(LOADER_SCHEMA), sql.Identifier("files"))

PG_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(LOADER_SCHEMA)),
    sql.SQL(
        """CREATE TABLE IF NOT EXISTS {files} (
  uri text PRIMARY KEY,
  table_name text NOT NULL,
  app_id text NOT NULL,
  event_day date NOT NULL,
  size bigint NOT NULL,
  mtime double precision NOT NULL,
  state text NOT NULL CHECK (state IN ('NEW', 'ENQUEUED', 'LOADED', 'GONE')),
  manifest_id text,
  attempts integer NOT NULL DEFAULT 0,
  discovered_at timestamptz NOT NULL DEFAULT now(),
  enqueued_at timestamptz,
  loaded_at timestamptz
)"""
    ).format(files=_FILES),
    sql.SQL("CREATE INDEX IF NOT EXISTS files_pending ON {} (app_id, table_name, state, mtime)").format(_FILES),
]


class PostgresStateStore(StateStore):
    """The `clickstream_loader.files` table on the loader's own connection.

    `register`, `claim`, `mark_gone` and `forget_before` commit; `mark_loaded` does not: the caller commits it
    together with the merged rows."""

    def __init__(self, conn):
        self.conn = conn

    def create(self) -> None:
        with self.conn.transaction():
            for statement in PG_DDL:
                self.conn.execute(statement)

    def known(self) -> dict[str, tuple[int, float]]:
        rows = self.conn.execute(sql.SQL("SELECT uri, size, mtime FROM {}").format(_FILES)).fetchall()
        self.conn.commit()
        return {uri: (size, mtime) for uri, size, mtime in rows}

    def register(self, files: Iterable[DataFile]) -> int:
        known = self.known()
        fresh = [f for f in files if known.get(f.uri) != (f.size, f.mtime)]
        if not fresh:
            return 0
        statement = sql.SQL(
            """INSERT INTO {files} AS f (uri, table_name, app_id, event_day, size, mtime, state)
VALUES (%s, %s, %s, %s, %s, %s, 'NEW')
ON CONFLICT (uri) DO UPDATE SET size = excluded.size, mtime = excluded.mtime, state = 'NEW', manifest_id = NULL
WHERE f.size <> excluded.size OR f.mtime <> excluded.mtime"""
        ).format(files=_FILES)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(statement, [(f.uri, f.table, f.app_id, f.event_day, f.size, f.mtime) for f in fresh])
        return len(fresh)

    def pending_groups(self) -> list[tuple[str, str]]:
        rows = self.conn.execute(
            sql.SQL(
                "SELECT DISTINCT app_id, table_name FROM {} WHERE state IN ('NEW', 'ENQUEUED') ORDER BY 1, 2"
            ).format(_FILES)
        ).fetchall()
        self.conn.commit()
        return [(a, t) for a, t in rows]

    def claim(self, app_id: str, table: str, limit: int, manifest_id: str) -> list[FileRecord]:
        statement = sql.SQL(
            """UPDATE {files} SET state = 'ENQUEUED', manifest_id = %s, enqueued_at = now(), attempts = attempts + 1
WHERE uri IN (
  SELECT uri FROM {files} WHERE app_id = %s AND table_name = %s AND state IN ('NEW', 'ENQUEUED')
  ORDER BY mtime, uri LIMIT %s FOR UPDATE SKIP LOCKED
)
RETURNING uri, table_name, app_id, event_day, size, mtime, state, manifest_id"""
        ).format(files=_FILES)
        with self.conn.transaction():
            rows = self.conn.execute(statement, (manifest_id, app_id, table, limit)).fetchall()
        return sorted((FileRecord(*row) for row in rows), key=lambda r: (r.mtime, r.uri))

    def lock_manifest(self, manifest_id: str) -> list[str]:
        """Inside the load transaction: lock this manifest's files that are still ENQUEUED under it."""
        rows = self.conn.execute(
            sql.SQL(
                "SELECT uri FROM {} WHERE manifest_id = %s AND state = 'ENQUEUED' ORDER BY mtime, uri FOR UPDATE"
            ).format(_FILES),
            (manifest_id,),
        ).fetchall()
        return [r[0] for r in rows]

    def mark_loaded(self, uris: list[str], manifest_id: str) -> int:
        cur = self.conn.execute(
            sql.SQL(
                "UPDATE {} SET state = 'LOADED', loaded_at = now() "
                "WHERE uri = ANY(%s) AND manifest_id = %s AND state = 'ENQUEUED'"
            ).format(_FILES),
            (uris, manifest_id),
        )
        return cur.rowcount

    def mark_gone(self, uris: list[str]) -> None:
        if uris:
            with self.conn.transaction():
                self.conn.execute(sql.SQL("UPDATE {} SET state = 'GONE' WHERE uri = ANY(%s)").format(_FILES), (uris,))

    def summary(self) -> Summary:
        rows = self.conn.execute(
            sql.SQL("SELECT table_name, state, count(*) FROM {} GROUP BY 1, 2").format(_FILES)
        ).fetchall()
        oldest = self.conn.execute(
            sql.SQL("SELECT min(mtime) FROM {} WHERE state IN ('NEW', 'ENQUEUED')").format(_FILES)
        ).fetchone()[0]
        self.conn.commit()
        return Summary({(t, s): n for t, s, n in rows}, oldest)

    def forget_before(self, day: date) -> int:
        with self.conn.transaction():
            cur = self.conn.execute(
                sql.SQL("DELETE FROM {} WHERE event_day < %s AND state IN ('LOADED', 'GONE')").format(_FILES), (day,)
            )
        return cur.rowcount


# -------------------------------------------------------------------------------------------- local (SQLite)

_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS files (
  uri TEXT PRIMARY KEY,
  table_name TEXT NOT NULL,
  app_id TEXT NOT NULL,
  event_day TEXT NOT NULL,
  size INTEGER NOT NULL,
  mtime REAL NOT NULL,
  state TEXT NOT NULL,
  manifest_id TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  discovered_at REAL NOT NULL,
  enqueued_at REAL,
  loaded_at REAL
);
CREATE INDEX IF NOT EXISTS files_pending ON files (app_id, table_name, state, mtime);
"""


class LocalStateStore(StateStore):
    """SQLite in WAL mode (readers such as a metrics scrape never block the loader); every call commits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SQLITE_DDL)

    def close(self) -> None:
        self.db.close()

    def register(self, files: Iterable[DataFile]) -> int:
        known = {u: (s, m) for u, s, m in self.db.execute("SELECT uri, size, mtime FROM files")}
        fresh = [f for f in files if known.get(f.uri) != (f.size, f.mtime)]
        if not fresh:
            return 0
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                """INSERT INTO files (uri, table_name, app_id, event_day, size, mtime, state, discovered_at)
VALUES (?, ?, ?, ?, ?, ?, 'NEW', ?)
ON CONFLICT (uri) DO UPDATE SET size = excluded.size, mtime = excluded.mtime, state = 'NEW', manifest_id = NULL
WHERE files.size <> excluded.size OR files.mtime <> excluded.mtime""",
                [(f.uri, f.table, f.app_id, f.event_day.isoformat(), f.size, f.mtime, now) for f in fresh],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(fresh)

    def pending_groups(self) -> list[tuple[str, str]]:
        rows = self.db.execute(
            "SELECT DISTINCT app_id, table_name FROM files WHERE state IN ('NEW', 'ENQUEUED') ORDER BY 1, 2"
        ).fetchall()
        return [(a, t) for a, t in rows]

    def claim(self, app_id: str, table: str, limit: int, manifest_id: str) -> list[FileRecord]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            rows = self.db.execute(
                """UPDATE files SET state = 'ENQUEUED', manifest_id = ?, enqueued_at = ?, attempts = attempts + 1
WHERE uri IN (SELECT uri FROM files WHERE app_id = ? AND table_name = ? AND state IN ('NEW', 'ENQUEUED')
              ORDER BY mtime, uri LIMIT ?)
RETURNING uri, table_name, app_id, event_day, size, mtime, state, manifest_id""",
                (manifest_id, time.time(), app_id, table, limit),
            ).fetchall()
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        records = [FileRecord(u, t, a, date.fromisoformat(d), s, m, st, mid) for u, t, a, d, s, m, st, mid in rows]
        return sorted(records, key=lambda r: (r.mtime, r.uri))

    def mark_loaded(self, uris: list[str], manifest_id: str) -> int:
        marks = ",".join("?" * len(uris))
        cur = self.db.execute(
            f"UPDATE files SET state = 'LOADED', loaded_at = ? WHERE manifest_id = ? AND state = 'ENQUEUED' "  # noqa: S608
            f"AND uri IN ({marks})",
            (time.time(), manifest_id, *uris),
        )
        return cur.rowcount

    def mark_gone(self, uris: list[str]) -> None:
        for uri in uris:
            self.db.execute("UPDATE files SET state = 'GONE' WHERE uri = ?", (uri,))

    def summary(self) -> Summary:
        rows = self.db.execute("SELECT table_name, state, count(*) FROM files GROUP BY 1, 2").fetchall()
        oldest = self.db.execute("SELECT min(mtime) FROM files WHERE state IN ('NEW', 'ENQUEUED')").fetchone()[0]
        return Summary({(t, s): n for t, s, n in rows}, oldest)

    def forget_before(self, day: date) -> int:
        cur = self.db.execute(
            "DELETE FROM files WHERE event_day < ? AND state IN ('LOADED', 'GONE')", (day.isoformat(),)
        )
        return cur.rowcount
