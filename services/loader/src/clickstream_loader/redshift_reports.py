"""The reporting layer on Redshift, through the Redshift Data API.

The objects, the refresh and the metadata scan are the reporting package's own code (`reporting.create_objects`,
`materialize.recompute`, `scan_metadata`), its SQL written once in PostgreSQL's dialect and rendered for Redshift
by sqlrender.
They run on `DataApiConnection`, a connection-like adapter: statements inside `transaction()` are collected and
sent as one `batch_execute_statement` (one Redshift transaction) when the block ends; a statement outside a
transaction is one `execute_statement`; a statement that returns rows runs at once, also inside a transaction
(where the reporting code reads only what that transaction has not changed yet: `information_schema` before the
objects are created, an aggregate's newest day before it is recomputed), its rows from `get_statement_result`.
`:name` parameters are bound by the Data API (a list of `{name, value}` strings): each statement's parameters are
renamed where another statement of the batch uses the same name for another value, and a NULL or empty value is
written as `NULL` / `''` (the API takes non-empty strings only).

The Data API takes at most 40 statements in a batch. A transaction is packed before it is sent: consecutive
`DROP TABLE` (or `DROP VIEW`) statements become one `DROP` of several objects, and `INSERT … VALUES` rows into the
same table and columns become one multi-row INSERT, placed at the last of them when no statement between them
names that table (the rows of `refresh_status`). A refresh of the 18 aggregates over one range of days is then 37
statements: one batch. A longer transaction (a refresh of the window plus a range of late days: an aggregate that
does not carry forward has a DELETE and an INSERT per range) is sent as consecutive batches, each its own
transaction, that keep all the DELETEs and INSERTs of one aggregate table together: every aggregate moves from its
old rows to its new ones at once, and the refresh_status rows go with the last batch (a failure in between leaves
the earlier aggregates refreshed, the later ones not, and FAILED status rows). A warning is logged.

Per pass that merged rows of an app (LOADER_REPORTING), as `reports.refresh_app` does on PostgreSQL:

    batch   CREATE SCHEMA / TABLE IF NOT EXISTS "clickstream_loader"."reporting" (the state of each app)
    query   every app's state row (definitions digest, last metadata scan, pending metadata days) and GETDATE()
    per app loaded in the pass or with metadata days pending:
      when the state row is missing or its digest differs from the rendered definitions (`object_sql("redshift")`):
        queries  information_schema.tables (which objects exist), then
        batch    create the objects (drop the old ones, base views, the two SUPER views, aggregate and metadata
                 tables as CREATE TABLE … AS SELECT … LIMIT 0, refresh_status)
        query    the span of the app's event_v2 / user_v2 days (back-filled, as on PostgreSQL)
      batch   refresh (`reporting.materialize.recompute`, the ranges `reports.refresh_app` takes on PostgreSQL): the
              last LOADER_REFRESH_DAYS days plus today (app time zone) and the loaded days outside them, per
              aggregate and range DELETE of those days + INSERT … SELECT of the same days, one refresh_status row
              per aggregate and range
      batch   the state row (DELETE + INSERT)
      when the last scan is LOADER_METADATA_INTERVAL_S old (or never ran): batch(es) metadata scan of the window and
      of the pending days outside it, then batch: the state row's scan time

Concurrency: PostgreSQL serialises refreshes of an app with an advisory lock; Redshift has none, but its
serializable isolation makes two batches that refresh the same days conflict, and the Data API client resubmits the
one that failed with a serialisation error (`redshift.DataApi`). Idle passes issue no statement: an app whose
metadata scan is pending is scanned in the next pass that merges rows (of any app).
"""

# ruff: noqa: S608 -- SQL text built from our own templates: identifiers are quoted, values are bound parameters

from __future__ import annotations

import itertools
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlglot
from clickstream_core.appconfig import AppConfig
from sqlglot import exp

from . import reporting
from .redshift import DataApi
from .reporting.db import Runner
from .reports import data_days, digest, finished, local_days, refresh_touched, scan_pending, span, target_of
from .schema import LOADER_SCHEMA, quote
from .sqlrender import RedshiftDataApi

log = logging.getLogger("clickstream_loader.redshift_reports")

MAX_BATCH = 40  # the Data API's limit of statements in one batch_execute_statement
ENGINE = "redshift"
STATE = f'{quote(LOADER_SCHEMA)}."reporting"'
STATE_DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {quote(LOADER_SCHEMA)}",
    f"CREATE TABLE IF NOT EXISTS {STATE} ("
    '"app_id" VARCHAR(255) NOT NULL, "definitions" VARCHAR(64) NOT NULL, "created_at" TIMESTAMP NOT NULL, '
    '"metadata_scanned_at" TIMESTAMP, "metadata_from" DATE, "metadata_to" DATE)',
)
# what a placeholder scan skips (string literals, quoted identifiers, comments), or a `:name` placeholder
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|(?<![:\w]):([A-Za-z_]\w*)")


# ------------------------------------------------------------------------------------------- the adapter


class Result:
    """What `execute` returns: a DB-API-like cursor over the rows of a query (none for other statements)."""

    def __init__(self, columns: list[str] | None = None, rows: list[tuple] | None = None, rowcount: int = -1):
        self.description = [(name,) for name in columns or []]
        self._rows = rows or []
        self.rowcount = rowcount

    def fetchall(self) -> list[tuple]:
        return list(self._rows)

    def fetchone(self) -> tuple | None:
        return self._rows[0] if self._rows else None


@dataclass
class Bound:
    """A statement with its parameters bound to batch-wide names."""

    sql: str
    names: frozenset[str]


class _Binder:
    """Binds the `:name` parameters of a batch's statements to one Data API parameter list: the same name with the
    same value is one parameter; the same name with another value gets a new name (`name_2` …)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def bind(self, sql: str, params: Mapping[str, Any] | None) -> Bound:
        """The statement with its `:name` placeholders (outside string literals, quoted names and comments)
        renamed to the batch's names, or replaced by `NULL` / `''` for a None / empty value."""
        params = params or {}
        names: set[str] = set()

        def replace(match: re.Match) -> str:
            name = match[1]
            if name is None:  # a literal, a quoted identifier or a comment: kept as it is
                return match[0]
            if name not in params:
                raise KeyError(f"no value for the parameter :{name}")
            value = params[name]
            if value is None:
                return "NULL"
            if value == "":
                return "''"
            bound = self._name(name, _text(value))
            names.add(bound)
            return f":{bound}"

        return Bound(_TOKENS.sub(replace, sql), frozenset(names))

    def _name(self, name: str, value: str) -> str:
        for candidate in itertools.chain([name], (f"{name}_{n}" for n in itertools.count(2))):
            known = self.values.setdefault(candidate, value)
            if known == value:
                return candidate
        raise AssertionError("unreachable")

    def parameters(self, names: Iterable[str]) -> list[dict]:
        return [{"name": name, "value": self.values[name]} for name in sorted(set(names))]


def _text(value: Any) -> str:
    """A parameter value as the Data API's string (Redshift converts it to the type the statement needs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _returns_rows(sql: str) -> bool:
    head = sql.lstrip(" \n\t(").split(None, 1)
    return bool(head) and head[0].upper() in ("SELECT", "WITH")


def pack(statements: list[Bound]) -> list[Bound]:
    """Fewer statements, same effect (see the module docstring): consecutive DROPs of one kind as one DROP, and
    INSERT … VALUES rows into the same table and columns as one INSERT at the last of them, unless a statement in
    between names that table."""
    out: list[tuple[Bound, exp.Expression | None] | None] = []
    open_inserts: dict[str, int] = {}  # target table and columns -> index in out of the INSERT gathering rows
    table_of: dict[str, str] = {}
    for bound in statements:
        head = bound.sql.lstrip()[:7].upper()
        tree = sqlglot.parse_one(bound.sql, read=RedshiftDataApi) if head.startswith(("INSERT", "DROP")) else None
        if isinstance(tree, exp.Insert) and isinstance(tree.expression, exp.Values) and tree.this is not None:
            key = tree.this.sql(dialect=RedshiftDataApi)
            table_of[key] = tree.this.find(exp.Table).name.lower()
            index = open_inserts.get(key)
            if index is not None:
                earlier, earlier_tree = out[index]
                out[index] = None
                merged = earlier_tree.copy()
                for row in tree.expression.expressions:
                    merged.expression.append("expressions", row.copy())
                bound = Bound(merged.sql(dialect=RedshiftDataApi, pretty=True), earlier.names | bound.names)
                tree = merged
            out.append((bound, tree))
            open_inserts[key] = len(out) - 1
            continue
        text = bound.sql.lower()
        for key in [k for k in open_inserts if table_of[k] in text]:
            del open_inserts[key]
        last = out[-1] if out else None
        if (
            isinstance(tree, exp.Drop)
            and last is not None
            and isinstance(last[1], exp.Drop)
            and (_drop_kind(tree) == _drop_kind(last[1]))
        ):
            merged = last[1].copy()
            merged.set("tables", [*merged.args["tables"], *(t.copy() for t in tree.args["tables"])])
            out[-1] = (Bound(merged.sql(dialect=RedshiftDataApi), last[0].names | bound.names), merged)
            continue
        out.append((bound, tree if isinstance(tree, exp.Drop) else None))
    return [entry[0] for entry in out if entry is not None]


def _drop_kind(tree: exp.Drop) -> tuple:
    return tuple(tree.args.get(k) for k in ("kind", "exists", "cascade", "materialized", "temporary"))


_WRITES = re.compile(r"\s*(?:DELETE\s+FROM|INSERT\s+INTO)\s+((?:\"(?:[^\"]|\"\")*\"|[\w.])+)", re.IGNORECASE)


def _written(sql: str) -> str | None:
    """The table a DELETE or INSERT statement writes."""
    match = _WRITES.match(sql)
    return match[1] if match else None


def split(statements: list[Bound], limit: int = MAX_BATCH) -> list[list[Bound]]:
    """Batches of at most `limit` statements: one when they fit; otherwise consecutive batches that keep each run
    of DELETEs and INSERTs of one table (an aggregate's day ranges) in one batch."""
    if len(statements) <= limit:
        return [statements]
    groups: list[list[Bound]] = []
    for statement in statements:
        table = _written(statement.sql)
        if groups and table is not None and _written(groups[-1][-1].sql) == table and len(groups[-1]) < limit:
            groups[-1].append(statement)
        else:
            groups.append([statement])
    batches: list[list[Bound]] = [[]]
    for group in groups:
        if batches[-1] and len(batches[-1]) + len(group) > limit:
            batches.append([])
        batches[-1].extend(group)
    return batches


class DataApiConnection:
    """A connection-like object over the Redshift Data API for `reporting.db.Runner` (engine "redshift").

    `call(coroutine)` runs a `DataApi` coroutine to its end and returns its result (the loader runs this code on a
    worker thread and the coroutines on its event loop)."""

    def __init__(self, api: DataApi, call: Callable[[Any], Any], label: str = "clickstream-reporting"):
        self.api = api
        self._call = call
        self._label = f"{label}-{uuid.uuid4().hex[:12]}"
        self._seq = itertools.count(1)
        self._batch: list[tuple[str, Mapping[str, Any] | None]] | None = None

    def _name(self) -> str:
        return f"{self._label}-{next(self._seq)}"

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Result:
        if _returns_rows(sql):
            binder = _Binder()
            bound = binder.bind(sql, params)
            columns, rows = self._call(self.api.query(bound.sql, self._name(), binder.parameters(bound.names) or None))
            return Result(columns, rows, len(rows))
        if self._batch is not None:
            self._batch.append((sql, params))
            return Result()
        self._send([(sql, params)])
        return Result()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Statements executed inside are sent as one batch (one transaction) when the block ends; nothing is sent
        when it raises (the transaction rolls back before it began)."""
        if self._batch is not None:
            raise RuntimeError("transactions do not nest on the Data API")
        self._batch = []
        try:
            yield
        except BaseException:
            self._batch = None
            raise
        statements, self._batch = self._batch, None
        if statements:
            self._send(statements)

    def _send(self, statements: list[tuple[str, Mapping[str, Any] | None]]) -> None:
        binder = _Binder()
        packed = pack([binder.bind(sql, params) for sql, params in statements])
        batches = split(packed)
        if len(batches) > 1:
            log.warning(
                "a transaction of %d statements is sent as %d Data API batches (at most %d statements each)",
                len(packed),
                len(batches),
                MAX_BATCH,
            )
        for batch in batches:
            names = frozenset().union(*(b.names for b in batch))
            self._call(self.api.run([b.sql for b in batch], self._name(), binder.parameters(names) or None))


# ------------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class AppState:
    definitions: str
    created_at: datetime | None
    metadata_scanned_at: datetime | None
    metadata_from: date | None
    metadata_to: date | None
    now: datetime | None


def read_states(conn: DataApiConnection) -> dict[str, AppState]:
    """The state table (created when missing): every app's row."""
    run = Runner(conn, ENGINE)
    with run.transaction():
        for statement in STATE_DDL:
            run.run(statement)
    rows = run.rows(
        'SELECT "app_id", "definitions", "created_at", "metadata_scanned_at", "metadata_from", "metadata_to", '
        f"now() FROM {STATE}"
    )
    return {row[0]: AppState(*row[1:]) for row in rows}


def _write_state(run: Runner, app_id: str, definitions: str, created_at, scanned_at, pending: set[date]) -> None:
    with run.transaction():
        run.run(f'DELETE FROM {STATE} WHERE "app_id" = :app', {"app": app_id})
        run.run(
            f'INSERT INTO {STATE} ("app_id", "definitions", "created_at", "metadata_scanned_at", '
            '"metadata_from", "metadata_to") VALUES (:app, :definitions, COALESCE(CAST(:created_at AS TIMESTAMP), '
            "now()), CAST(:scanned_at AS TIMESTAMP), CAST(:pending_from AS DATE), CAST(:pending_to AS DATE))",
            {
                "app": app_id,
                "definitions": definitions,
                "created_at": created_at,
                "scanned_at": scanned_at,
                "pending_from": min(pending, default=None),
                "pending_to": max(pending, default=None),
            },
        )


# ---------------------------------------------------------------------------------------------- refresh


def refresh_app(
    conn: DataApiConnection,
    target: reporting.Target,
    loaded_utc_days: set[date],
    state: AppState | None,
    *,
    refresh_days: int = 1,
    metadata_interval_s: float = 3600.0,
    today: date | None = None,
) -> dict:
    """One app (module docstring); returns what was done, shaped like `reports.refresh_app`'s."""
    run = Runner(conn, ENGINE)
    app_id = target.app_id
    done: dict = {"created": False, "refreshed": [], "carried_forward": None, "metadata": []}
    wanted = digest(target, ENGINE)
    touched = local_days(loaded_utc_days, target.timezone)
    pending = {d for d in (state.metadata_from, state.metadata_to) if d is not None} if state else set()
    scanned_at = state.metadata_scanned_at if state else None
    now = state.now if state else None
    created_at = state.created_at if state else None
    if state is None or state.definitions != wanted:
        # new, or a definition changed: (re)create the tables and back-fill every day of data; the state row is
        # written only after the back-fill, so a failure before it means "recreate" again
        reporting.create_objects(conn, ENGINE, target, rebuild=True)
        touched |= span(local_days(data_days(run, app_id), target.timezone))
        done["created"] = True
        scanned_at = created_at = None
    window = refresh_touched(conn, ENGINE, target, touched, refresh_days, today, done)
    pending |= span(touched)
    _write_state(run, app_id, wanted, created_at, scanned_at, pending)
    due = scanned_at is None or now is None or (now - scanned_at).total_seconds() >= metadata_interval_s
    if due and pending:
        scan_pending(conn, ENGINE, target, window, pending, done)
        pending = set()
        run.run(
            f'UPDATE {STATE} SET "metadata_scanned_at" = now(), "metadata_from" = NULL, "metadata_to" = NULL '
            'WHERE "app_id" = :app',
            {"app": app_id},
        )
    done["metadata_pending"] = (min(pending), max(pending)) if pending else None
    return finished(app_id, done)


def refresh_all(
    conn: DataApiConnection,
    apps: AppConfig,
    touched: dict[str, set[date]],
    report,
    *,
    refresh_days: int = 1,
    metadata_interval_s: float = 3600.0,
    today: date | None = None,
) -> None:
    """Every app loaded in the pass (`touched`: app -> UTC event days of the merged files) and every app whose
    metadata scan is pending; fills `report.reporting` and, per failed app, `report.errors`."""
    states = read_states(conn)
    pending = {app for app, state in states.items() if state.metadata_from is not None}
    for app_id in sorted(set(touched) | pending):
        try:
            report.reporting[app_id] = refresh_app(
                conn,
                target_of(apps, app_id),
                touched.get(app_id, set()),
                states.get(app_id),
                refresh_days=refresh_days,
                metadata_interval_s=metadata_interval_s,
                today=today,
            )
        except Exception as exc:
            log.exception("reporting refresh failed", extra={"app_id": app_id})
            report.errors.append(f"{app_id}/reporting: {type(exc).__name__}: {exc}")
