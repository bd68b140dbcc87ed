"""SQL is written once, in PostgreSQL's dialect, and rendered per warehouse engine with sqlglot.

Every statement the loader and the reporting layer issue goes through `render`, so a new engine
is one entry in ENGINES (and whatever sqlglot cannot express is fixed here, in one place).

Named parameters are written `:name`. PostgreSQL keeps the text as written (the reporting layer's
Runner turns `:name` into psycopg's `%(name)s`); DuckDB gets `$name`; Redshift keeps `:name`, which
is what the Redshift Data API binds (its `Parameters` list of `{name, value}` strings).
"""

from __future__ import annotations

from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.dialects.redshift import Redshift


class RedshiftDataApi(Redshift):
    """sqlglot's Redshift, with named parameters spelled `:name` (the Data API's), not psycopg's `%(name)s`."""

    class Generator(Redshift.Generator):
        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            return f":{expression.name}" if expression.this else "?"


# our engine name -> sqlglot dialect
ENGINES = {
    "postgres": "postgres",
    "redshift": RedshiftDataApi,
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
    # `to_timestamp(epoch) AT TIME ZONE tz` is an instant (timestamptz) shown as tz's local time. sqlglot spells
    # the epoch as `TIMESTAMP 'epoch' + n * INTERVAL '1 SECOND'`, a timestamp without time zone, on which Redshift's
    # AT TIME ZONE converts the other way (from tz's local time to UTC): convert from UTC to tz explicitly
    if isinstance(node, exp.AtTimeZone) and isinstance(node.this, exp.UnixToTime):
        return exp.ConvertTimezone(
            source_tz=exp.Literal.string("UTC"), target_tz=node.args["zone"].copy(), timestamp=node.this.copy()
        )
    # Redshift's CREATE TABLE AS has no IF NOT EXISTS: the table is created unconditionally (on Redshift the
    # reporting layer creates its aggregate tables with rebuild=True, after dropping them)
    # (changed in place: a node returned anew is not descended into; transform works on a copy of the tree)
    if isinstance(node, exp.Create) and node.args.get("exists") and isinstance(node.expression, exp.Query):
        node.set("exists", False)
    return node


# per-engine AST fixes where sqlglot's own translation is not what the warehouse needs
_FIXES = {"redshift": _redshift}
