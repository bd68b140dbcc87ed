"""One way to run the reporting SQL on any engine: render (sqlglot), bind named parameters, transactions.

SQL is written in PostgreSQL's dialect with `:name` placeholders. On PostgreSQL they become psycopg's
`%(name)s`; sqlglot renders them as `$name` for DuckDB, which its Python client binds from a dict; on Redshift
they stay `:name`, which the Redshift Data API binds. A Redshift "connection" is the loader's Data API adapter
(`redshift_reports.DataApiConnection`): `execute(text, params)` and `transaction()` (one Data API batch).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfo

from ..sqlrender import render

_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_DUCKDB_PARAM = re.compile(r"\$([A-Za-z_]\w*)")


def ident(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted string literal, for the few values DDL cannot bind (a view's time zone)."""
    return "'" + text.replace("'", "''") + "'"


def tz_literal(timezone: str) -> str:
    ZoneInfo(timezone)  # raises on anything that is not an IANA name
    return literal(timezone)


def _postgres_style(sql: str) -> str:
    return _PLACEHOLDER.sub(r"%(\1)s", sql.replace("%", "%%"))


class Runner:
    """Executes PostgreSQL-dialect SQL on a psycopg (postgres), duckdb or Data API (redshift) connection."""

    def __init__(self, conn: Any, engine: str) -> None:
        if engine not in ("postgres", "duckdb", "redshift"):
            raise ValueError(f"the reporting layer runs on postgres, duckdb or redshift, not {engine!r}")
        self.conn = conn
        self.engine = engine

    def text(self, sql: str) -> str:
        rendered = render(sql, self.engine)
        return _postgres_style(rendered) if self.engine == "postgres" else rendered

    def _execute(self, sql: str, params: Mapping[str, Any] | None):
        text = self.text(sql)
        if not params:
            return self.conn.execute(text)
        if self.engine == "duckdb":  # DuckDB refuses parameters the statement does not use
            used = set(_DUCKDB_PARAM.findall(text))
            return self.conn.execute(text, {k: v for k, v in params.items() if k in used})
        return self.conn.execute(text, dict(params))  # psycopg; the Data API adapter keeps the ones used

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self._execute(sql, params)

    def native(self, sql: str) -> None:
        """A statement already in the engine's own dialect (the few that sqlglot cannot translate)."""
        self.conn.execute(sql)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        return self.columns(sql, params)[1]

    def columns(self, sql: str, params: Mapping[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        cur = self._execute(sql, params)
        names = [d[0] for d in cur.description]
        return names, [tuple(r) for r in cur.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: everything inside commits together or not at all (on Redshift: one Data API batch)."""
        if self.engine in ("postgres", "redshift"):
            with self.conn.transaction():
                yield
            return
        self.conn.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
