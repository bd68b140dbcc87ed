"""Column builders shared by the transformers that parse each event as map<string,variant>.

The GTM server-side (gtm_server.py) and Sensors Data (sensors_data.py) transformers keep every value
with its JSON type and build from it exactly the columns of ClickstreamSdkTransformer, in its order, so
every transformer's output has one schema and the enrichers and writers need not know which ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from clickstream_core.tables import CUSTOM_PARAMETERS, EVENT_V2, USER_PROPERTIES
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .. import columns as C
from ..badrows import Reason
from ..plugins import PluginError
from ..sparkutil import blank_to_null, typed_value, url_decoded, variant_string, variant_type

# event_v2 columns no transformer fills: the user-agent and geo enrichers own them, the writer adds
# process_info and created_time.
_ENRICHED_LATER = frozenset(
    """device_ua_browser device_ua_browser_version device_ua_os device_ua_os_version device_ua_device
    device_ua_device_category device_ua geo_continent geo_sub_continent geo_country geo_region geo_metro
    geo_city process_info created_time""".split()
)
ITEM_TYPE = (
    "struct<"
    + ",".join(f"{f}:{'double' if f in ('price', 'quantity') else 'string'}" for f in C.ITEM_FIELDS)
    + f",custom_parameters:{CUSTOM_PARAMETERS},custom_parameters_json_str:string>"
)
# (name, Spark DDL type) of a transformer's output, in ClickstreamSdkTransformer's order.
OUTPUT_COLUMNS: tuple[tuple[str, str], ...] = (
    *((c.name, c.type) for c in EVENT_V2.columns if c.name not in _ENRICHED_LATER),
    (C.ITEMS, f"array<{ITEM_TYPE}>"),
    (C.USER_PROPERTIES, USER_PROPERTIES),
    (C.BAD_REASON, "string"),
    (C.BAD_DETAIL, "string"),
    (C.RID, "string"),
    (C.INPUT_FILE, "string"),
    (C.UPLOAD_TIME, "bigint"),
    (C.EVENT_INDEX, "int"),
    (C.PAYLOAD, "string"),
    (C.UA, "string"),
    (C.IP, "string"),
)


def output_columns(values: Mapping[str, Column]) -> list[Column]:
    """The output select list: `values` where given, typed nulls elsewhere.

    Given columns are not cast: a cast would silently rename struct fields given in another order.
    A name outside the output set is a programming error, caught here rather than lost.
    """
    unknown = sorted(set(values) - {name for name, _ in OUTPUT_COLUMNS})
    if unknown:
        raise ValueError(f"not output columns: {', '.join(unknown)}")
    return [(values[name] if name in values else F.lit(None).cast(type_)).alias(name) for name, type_ in OUTPUT_COLUMNS]


def request_columns() -> dict[str, Column]:
    """What every event row carries from its request."""
    return {
        "ingest_time_msec": F.col("ingest_time_msec"),
        "app_id": blank_to_null(F.col("app_id")),
        C.RID: F.col("rid"),
        C.INPUT_FILE: F.col("input_file"),
        C.UPLOAD_TIME: F.col("upload_time_msec"),
        C.EVENT_INDEX: F.col(C.EVENT_INDEX),
        C.PAYLOAD: F.coalesce(F.col(C.PAYLOAD), F.col("body")),
    }


def explode_events(requests: DataFrame, text: Column) -> DataFrame:
    """One row per element of the JSON array (or the single object) `text`, its text in _payload.

    A request whose text is not a non-empty JSON array keeps one row with a null _payload, so it
    reaches the bad rows instead of vanishing.
    """
    wrapped = F.when(F.ltrim(text).startswith("{"), F.concat(F.lit("["), text, F.lit("]"))).otherwise(text)
    texts = F.from_json(wrapped, "array<string>")
    one_null = F.array(F.lit(None).cast("string"))
    return requests.select(
        "*",
        F.posexplode(F.when(F.size(texts) > 0, texts).otherwise(one_null)).alias(C.EVENT_INDEX, C.PAYLOAD),
    )


def vget(v: Column, path: str, type_: str = "string") -> Column:
    return F.try_variant_get(v, path, type_)


def map_of(v: Column) -> Column:
    """A JSON object value as map<string,variant> (null when it is no object)."""
    return vget(v, "$", "map<string,variant>")


def without(m: Column, keys: Iterable[str]) -> Column:
    """The entries of a map<string,variant> not named in `keys` and not JSON null."""
    names = F.array(*(F.lit(k) for k in sorted(set(keys))))
    return F.map_filter(m, lambda k, v: ~F.array_contains(names, k) & v.isNotNull() & ~F.is_variant_null(v))


def merged(*maps: Column) -> Column:
    """map_concat where an earlier map wins a repeated key (null maps are skipped)."""
    empty = F.create_map().cast("map<string,variant>")

    def unseen(m: Column, seen: Column) -> Column:
        return F.coalesce(F.map_filter(m, lambda k, _v: ~F.map_contains_key(seen, k)), empty)

    acc = F.coalesce(maps[0], empty)
    for m in maps[1:]:
        acc = F.map_concat(acc, unseen(m, acc))
    return acc


def custom_columns(custom: Column) -> dict[str, Column]:
    return {
        "custom_parameters": F.transform_values(custom, lambda _k, v: typed_value(v)),
        "custom_parameters_json_str": F.when(F.size(custom) > 0, F.to_json(custom)),
    }


def items_column(
    items: Column, fields: Mapping[str, tuple[str, ...]], fallback: Mapping[str, Column] | None = None
) -> Column:
    """array<map<string,variant>> -> the _items structs (ClickstreamSdkTransformer's shape).

    `fields` names the keys an item field may come from (first present wins); `fallback` gives a
    value from outside the item (the event's currency, say). Keys not bound to a field become the
    item's custom parameters. An item without an id is skipped, as the reference does.
    """
    fallback = fallback or {}
    id_keys = fields["item_id"]
    known = [k for keys in fields.values() for k in keys]

    def item(m: Column) -> Column:
        out = []
        for name in C.ITEM_FIELDS:
            value = F.coalesce(*(variant_string(m[k]) for k in fields.get(name, ())), F.lit(None).cast("string"))
            if name in fallback:
                value = F.coalesce(value, fallback[name])
            if name in ("price", "quantity"):
                value = value.try_cast("double")
            out.append(value.alias(name))
        custom = without(m, known)
        out.extend(col.alias(name) for name, col in custom_columns(custom).items())
        return F.struct(*out)

    def has_id(m: Column) -> Column:
        return F.coalesce(*(blank_to_null(variant_string(m[k])) for k in id_keys)).isNotNull()

    return F.transform(F.filter(items, has_id), item)


def user_properties_column(props: Column) -> Column:
    """map<string,variant> -> map<name, struct<value, type, set_time_msec>>; null when empty."""
    kept = F.map_filter(props, lambda _k, v: v.isNotNull() & ~F.is_variant_null(v))
    typed = F.transform_values(
        kept,
        lambda _k, v: F.struct(
            variant_string(v).alias("value"),
            variant_type(v).alias("type"),
            F.lit(None).cast("bigint").alias("set_time_msec"),
        ),
    )
    return F.when(F.size(kept) > 0, typed)


def page_columns(raw_url: Column) -> dict[str, Column]:
    """page_view url columns. The URL is parsed before decoding: a decoded one may hold spaces."""
    query = F.try_parse_url(raw_url, F.lit("QUERY"))
    params = F.str_to_map(query, F.lit("&"), F.lit("="))
    return {
        "page_view_page_url": url_decoded(raw_url),
        "page_view_page_url_path": url_decoded(F.try_parse_url(raw_url, F.lit("PATH"))),
        "page_view_page_url_query_parameters": F.when(
            query.isNotNull() & (query != ""), F.transform_values(params, lambda _k, v: url_decoded(v))
        ),
        "page_view_hostname": F.try_parse_url(raw_url, F.lit("HOST")),
    }


def name_mapper(defaults: Mapping[str, str], overrides: object, plugin: str) -> dict[str, str]:
    if not isinstance(overrides, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in overrides.items()
    ):
        raise PluginError(f"{plugin}: event_names must map source event names to event names")
    return {**defaults, **overrides}


def mapped_name(raw: Column, names: Mapping[str, str]) -> Column:
    lookup = F.create_map(*(F.lit(x) for pair in sorted(names.items()) for x in pair))
    return F.coalesce(lookup[raw], raw)


def bad_row(checks: list[tuple[Column, Reason, Column]]) -> tuple[Column, Column]:
    """(_bad_reason, _bad_detail) of the first check that holds."""
    (cond, why, text), *rest = checks
    reason, detail = F.when(cond, F.lit(why.value)), F.when(cond, text)
    for cond, why, text in rest:
        reason, detail = reason.when(cond, F.lit(why.value)), detail.when(cond, text)
    return reason, detail


def missing(fields: Mapping[str, Column]) -> Column:
    """The names of the fields that are null or blank, comma separated ("" when none)."""
    return F.concat_ws(", ", *(F.when(blank_to_null(col).isNull(), F.lit(name)) for name, col in fields.items()))


def derived_rows(df: DataFrame, copies: list[tuple[Column, str, str]]) -> DataFrame:
    """Each row, then one copy per (condition, event name, id suffix) that holds for it.

    The copies are the reference's synthetic events (_first_open, _session_start); the column
    `_derived` holds (name, suffix) of a copy and is null on the original row.
    """
    kind = "struct<name:string,suffix:string>"
    variants = [F.lit(None).cast(kind)] + [
        F.when(cond, F.struct(F.lit(name).alias("name"), F.lit(suffix).alias("suffix")))
        for cond, name, suffix in copies
    ]
    # The original (position 0, a null struct) always stays, and stays first.
    extra = F.filter(F.array(*variants), lambda x, i: (i == 0) | x.isNotNull())
    return df.select("*", F.explode(extra).alias("_derived"))
