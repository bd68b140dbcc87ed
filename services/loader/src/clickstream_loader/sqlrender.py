"""SQL is written once, in PostgreSQL's dialect, and rendered per warehouse engine with sqlglot.

Every statement the loader and the reporting layer issue goes through `render`, so a new engine
is one entry in ENGINES (and whatever sqlglot cannot express is fixed here, in one place).
"""

from __future__ import annotations

from functools import lru_cache

import sqlglot

# our engine name -> sqlglot dialect
ENGINES = {
    "postgres": "postgres",
    "redshift": "redshift",
    "duckdb": "duckdb",
    "athena": "athena",
}


@lru_cache(maxsize=1024)
def render(sql: str, engine: str) -> str:
    """One or more `;`-separated statements (PostgreSQL dialect) as `engine` spells them."""
    if engine not in ENGINES:
        raise ValueError(f"unknown SQL engine {engine!r}; expected one of {sorted(ENGINES)}")
    if engine == "postgres":
        return sql
    statements = sqlglot.transpile(sql, read="postgres", write=ENGINES[engine], pretty=True)
    return ";\n".join(statements)
