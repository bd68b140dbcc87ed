"""The embedded warehouse (duckdb engine): per-app views over the Parquet files, and how readers open them.

Nothing is copied: each app gets a schema (`"shop"`) whose four views read the ETL's files with hive
partitioning, expose the same columns and types as the PostgreSQL tables (maps and structs as JSON, timestamps
as UTC `timestamp`) and keep one row per merge key with the same survivor rules as the PostgreSQL MERGE
(`schema.SURVIVOR_ORDER`), so an SDK retry that reached two ETL windows still counts once.

The loader writes the definitions as a SQL file (`views.sql`) and as a small DuckDB database file
(`warehouse.duckdb`, views only), each written under a temporary name and renamed into place. A DuckDB file
opened for writing locks out every other process, so no process ever opens the published file for writing:
readers either run `views.sql` in an in-memory DuckDB of their own (`connect_duckdb`), or open
`warehouse.duckdb` read-only (many readers may); the loader never blocks either.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import duckdb
from clickstream_core.tables import TABLES

from .schema import MERGE_KEYS, SURVIVOR_ORDER, TABLE_NAMES, quote, schema_name, sql_type
from .sqlrender import render

VIEWS_FILE = "views.sql"
DATABASE_FILE = "warehouse.duckdb"


_DUCK_TYPES = {
    "bigint": "BIGINT",
    "integer": "INTEGER",
    "double precision": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _projection(table: str) -> str:
    out = []
    for column in TABLES[table].columns:
        name = quote(column.name)
        kind = sql_type(column)
        if kind == "jsonb":
            out.append(f"to_json({name}) AS {name}")
        elif kind == "timestamp":
            # INT96 (naive) and UTC-adjusted Parquet timestamps alike -> a UTC timestamp without time zone
            out.append(f"make_timestamp(epoch_us({name})) AS {name}")
        else:
            duck = "VARCHAR" if kind.startswith(("varchar", "text")) else _DUCK_TYPES[kind]
            out.append(f"CAST({name} AS {duck}) AS {name}")
    return ",\n    ".join(out)


def view_sql(source_root: str, app_id: str, table: str, has_files: bool, suffix: str = ".snappy.parquet") -> str:
    """CREATE OR REPLACE VIEW of one app's table (DuckDB)."""
    target = f"{quote(schema_name(app_id))}.{quote(table)}"
    if not has_files:
        # no file yet: an empty view of the right columns (read_parquet refuses a glob that matches nothing)
        nulls = ", ".join(f"CAST(NULL AS {sql_type(c)}) AS {quote(c.name)}" for c in TABLES[table].columns)
        return f"CREATE OR REPLACE VIEW {target} AS {render(f'SELECT {nulls} WHERE FALSE', 'duckdb')}"
    keys = ", ".join(quote(k) for k in MERGE_KEYS[table])
    order = f'{SURVIVOR_ORDER[table]}, "filename" DESC'
    ranked = render(
        f"SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {order}) AS _rank FROM __files__",  # noqa: S608
        "duckdb",
    )
    pattern = os.path.join(os.path.abspath(source_root), table, f"partition_app={app_id}", "*", "*", "*", f"*{suffix}")
    files = f"read_parquet({_literal(pattern)}, hive_partitioning = true, union_by_name = true, filename = true)"
    ranked = ranked.replace("__files__", files)
    return (
        f"CREATE OR REPLACE VIEW {target} AS\nSELECT\n    {_projection(table)}\n"
        f"FROM (\n{ranked}\n) AS ranked\nWHERE _rank = 1"
    )


def views_sql(
    source_root: str,
    app_tables: dict[str, set[str]],
    suffix: str = ".snappy.parquet",
    targets: dict | None = None,
) -> str:
    """Every app's schema and views; `app_tables` maps an app to the tables that have at least one file.

    With `targets` (app id -> `reporting.Target`: time zone, project id), each app's reporting objects follow
    its four views, as DuckDB views (`reporting.object_sql(..., mode="views")`): a reader of the published
    definitions queries `"<app>"."clickstream_acquisition_day_user_view_cnt"` and the rest with no extra step."""
    from . import reporting

    parts = []
    for app in sorted(app_tables):
        parts.append(f"CREATE SCHEMA IF NOT EXISTS {quote(schema_name(app))}")
        for table in TABLE_NAMES:
            parts.append(view_sql(source_root, app, table, table in app_tables[app], suffix))
        if targets is not None:
            target = targets.get(app) or reporting.Target.of(app)
            for statement in reporting.object_sql("duckdb", target, mode="views"):
                if statement.startswith("CREATE VIEW"):  # a reader's own database may hold an older one
                    statement = "CREATE OR REPLACE VIEW" + statement[len("CREATE VIEW") :]
                parts.append(statement)
    return ";\n\n".join(parts) + (";\n" if parts else "")


def _replace_file(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def publish(state_dir: str | Path, text: str) -> bool:
    """Write `views.sql` and `warehouse.duckdb` (temp name + rename) when the definitions changed."""
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    views = folder / VIEWS_FILE
    if views.exists() and views.read_text() == text and (folder / DATABASE_FILE).exists():
        return False

    def build_database(tmp: Path) -> None:
        tmp.unlink()
        con = duckdb.connect(str(tmp))
        try:
            if text.strip():
                con.execute(text)
        finally:
            con.close()
        Path(str(tmp) + ".wal").unlink(missing_ok=True)

    _replace_file(folder / DATABASE_FILE, build_database)
    _replace_file(views, lambda tmp: tmp.write_text(text))
    return True


def connect_duckdb(state_dir: str | Path, database: str = ":memory:", threads: int | None = None, **config):
    """A DuckDB connection of the caller's own with every app's views defined (in memory: no file lock is taken).

    `state_dir` is the loader's LOADER_STATE_DIR (default `<source>/_loader`). Before the first loader run there
    are no views yet and the connection is simply empty."""
    if threads:
        config["threads"] = threads
    con = duckdb.connect(database, config=config)
    views = Path(state_dir) / VIEWS_FILE
    if views.exists():
        text = views.read_text()
        if text.strip():
            con.execute(text)
    return con
