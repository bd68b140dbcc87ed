"""SQL is written once, in PostgreSQL's dialect, and rendered per warehouse engine with sqlglot.

Every statement the loader and the reporting layer issue goes through `render`, so a new engine
is one entry in ENGINES (and whatever sqlglot cannot express is fixed here, in one place).
"""

from __future__ import annotations

from functools import lru_cache

import sqlglot
from sqlglot import exp

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
    trees = sqlglot.parse(sql, read="postgres")
    fix = _FIXES.get(engine)
    statements = []
    for tree in trees:
        if tree is None:
            continue
        if fix is not None:
            tree = tree.transform(fix)
        statements.append(tree.sql(dialect=ENGINES[engine], pretty=True))
    return ";\n".join(statements)


def _redshift(node: exp.Expression) -> exp.Expression:
    # jsonb/json columns are SUPER in Redshift (the reference's type for the maps)
    if isinstance(node, exp.DataType) and node.this in (exp.DataType.Type.JSONB, exp.DataType.Type.JSON):
        return exp.DataType.build("SUPER", dialect="redshift")
    return node


# per-engine AST fixes where sqlglot's own translation is not what the warehouse needs
_FIXES = {"redshift": _redshift}
