"""Small column helpers shared by the transformers and enrichers (Spark functions only)."""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F


def blank_to_null(col: Column) -> Column:
    return F.when(F.trim(col) == "", None).otherwise(col)


def variant_string(v: Column) -> Column:
    """A variant as text: strings unquoted, numbers/booleans as written, objects as JSON."""
    return F.when(F.is_variant_null(v), None).otherwise(F.try_variant_get(v, "$", "string"))


def variant_type(v: Column) -> Column:
    """The reference's value type of a custom parameter: string, number, boolean or object."""
    kind = F.schema_of_variant(v)
    return (
        F.when(kind == "STRING", F.lit("string"))
        .when(kind == "BOOLEAN", F.lit("boolean"))
        .when(kind.rlike("^(BIGINT|INT|SMALLINT|TINYINT|DOUBLE|FLOAT|DECIMAL)"), F.lit("number"))
        .when(kind == "VOID", F.lit(None))
        .otherwise(F.lit("object"))
    )


def typed_value(v: Column) -> Column:
    return F.struct(variant_string(v).alias("value"), variant_type(v).alias("type"))


def url_decoded(col: Column) -> Column:
    decoded = F.try_url_decode(col)
    return F.coalesce(decoded, col)


def as_long(col: Column) -> Column:
    """A number sent as a number or a numeric string; 12.0 becomes 12."""
    return F.coalesce(col.try_cast("bigint"), col.try_cast("double").try_cast("bigint"))


def as_bool(col: Column) -> Column:
    text = F.lower(F.trim(col))
    return F.when(text.isin("true", "1", "yes"), True).when(text.isin("false", "0", "no"), False)
