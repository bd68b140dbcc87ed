"""The warehouse's names and table definitions, rendered from `clickstream_core.tables` (never a second column list).

One schema per app (reference-system.md §5.1): `schema_name(app_id)` is the app id itself, always quoted, so the
PostgreSQL schema of app `Shop` is `"Shop"`. Each schema holds `event_v2`, `item_v2`, `user_v2` and `session`
with the data model's columns in order; strings keep their byte limits as `varchar(n)`, maps and structs become
`jsonb` (Redshift `super`, DuckDB `JSON`), timestamps are `timestamp` holding UTC, and `created_time` is the
load time (`default now()`).

`MERGE_KEYS` and the ranking rules say which row of one key survives; the PostgreSQL MERGE and the DuckDB views
both use them, so the two engines keep the same rows.

Everything here is SQL in PostgreSQL's dialect; `sqlrender.render(sql, engine)` spells it for another engine.
"""

from __future__ import annotations

from clickstream_core.appconfig import APP_ID_PATTERN
from clickstream_core.tables import TABLES, Column, Table
from psycopg import sql as _pgsql

from .sqlrender import render

TABLE_NAMES = ("event_v2", "item_v2", "user_v2", "session")

# The loader's own bookkeeping (file states) lives in this schema of the warehouse database.
LOADER_SCHEMA = "clickstream_loader"

# Which columns make a row unique in each table (reference-system.md §5.2 step 5).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "event_v2": ("event_id", "event_timestamp"),
    "item_v2": ("user_pseudo_id", "event_id", "item_id", "event_timestamp"),
    "user_v2": ("user_pseudo_id",),
    "session": ("user_pseudo_id", "session_id"),
}

_DIRECT = "(({p}session_source IS NULL OR {p}session_source = 'Direct') :: int)"

# Among rows of one key, the row that sorts first survives (inside a load batch and in the DuckDB views).
# `created_time` here is the ETL's write time of the row; a last tie-break (file order) is added per engine.
SURVIVOR_ORDER: dict[str, str] = {
    "event_v2": "created_time DESC",
    "item_v2": "created_time DESC",
    "user_v2": "event_timestamp DESC, created_time DESC",
    # a real traffic source beats Direct/none, then the earliest row of the session
    "session": f"{_DIRECT.format(p='')} ASC, event_timestamp ASC, created_time DESC",
}

# When a loaded row already holds the key: does the incoming row `s` replace the existing row `t`?
# Event and item rows are replaced (the newest load wins, as the reference's MERGE does); a user row only by a
# row at least as new; a session row only by a better-ranked one (a real source over Direct/none, then an
# earlier row), which makes the result independent of the order files are loaded in.
REPLACE_WHEN: dict[str, str | None] = {
    "event_v2": None,
    "item_v2": None,
    "user_v2": "s.event_timestamp >= t.event_timestamp",
    "session": (
        f"{_DIRECT.format(p='s.')} < {_DIRECT.format(p='t.')} OR ({_DIRECT.format(p='s.')} = {_DIRECT.format(p='t.')}"
        " AND s.event_timestamp < t.event_timestamp)"
    ),
}


def quote(name: str) -> str:
    """A double-quoted SQL identifier."""
    return _pgsql.Identifier(name).as_string()


def schema_name(app_id: str) -> str:
    """The warehouse schema of an app (unquoted); raises ValueError for an id the app config would refuse."""
    if not APP_ID_PATTERN.match(app_id):
        raise ValueError(f"app id {app_id!r} must match {APP_ID_PATTERN.pattern}")
    return app_id


def qualified(app_id: str, table: str) -> str:
    """`"app"."table"`, quoted."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return f"{quote(schema_name(app_id))}.{quote(table)}"


def table_def(table: str) -> Table:
    return TABLES[table]


def sql_type(column: Column) -> str:
    """The column's PostgreSQL type (the dialect every statement is written in)."""
    t = column.type
    if t == "string":
        return f"varchar({column.max_bytes})" if column.max_bytes else "text"
    if t.startswith(("map<", "struct<", "array<")):
        return "jsonb"
    return {
        "bigint": "bigint",
        "int": "integer",
        "double": "double precision",
        "boolean": "boolean",
        "timestamp": "timestamp",
        "date": "date",
    }[t]


def is_json(column: Column) -> bool:
    return sql_type(column) == "jsonb"


def create_table_sql(app_id: str, table: str, engine: str = "postgres") -> str:
    cols = []
    for column in TABLES[table].columns:
        spec = f"{quote(column.name)} {sql_type(column)}"
        if column.name == "created_time":
            spec += " DEFAULT now()"
        elif column.not_null:
            spec += " NOT NULL"
        cols.append(spec)
    body = ",\n  ".join(cols)
    return render(f"CREATE TABLE IF NOT EXISTS {qualified(app_id, table)} (\n  {body}\n)", engine)


def merge_index_sql(app_id: str, table: str) -> str:
    """PostgreSQL only: the unique index on the merge key (the MERGE's lookup, and a guard against duplicates)."""
    keys = ", ".join(quote(k) for k in MERGE_KEYS[table])
    return f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(table + '_merge_key')} ON {qualified(app_id, table)} ({keys})"


def create_tables_sql(app_id: str, engine: str = "postgres") -> list[str]:
    """The statements that create an app's schema and its four tables (idempotent), as `engine` spells them."""
    statements = [render(f"CREATE SCHEMA IF NOT EXISTS {quote(schema_name(app_id))}", engine)]
    for table in TABLE_NAMES:
        statements.append(create_table_sql(app_id, table, engine))
        if engine == "postgres":
            statements.append(merge_index_sql(app_id, table))
    return statements
