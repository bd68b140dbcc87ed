"""The Sensors Data transformer: requests of the Sensors Analytics SDKs (Android, iOS, JS) -> event rows.

Bodies come in two shapes. Plain JSON (one record or an array) is already text after decode.py.
The SDKs' own form encoding, `crc=…&gzip=1&data_list=<url-encoded Base64 of gzip>` (the JS SDK
sends `data=…&ext=…`), reaches us as body_kind `other`: the value is cut out, URL-decoded and
Base64-decoded with Spark functions, and only the gzip inflation runs in Python, over Arrow
batches (a pandas UDF). Each record is then parsed as map<string,variant>.

Mapping facts are the reference's Sensors parser (reference-system.md §4.3, BUILT-IN-5):
- event time = the request's ingest time (the record's `time` goes to session_start_time_msec and
  the user's first touch); event_id = <rid>-<index in the body>-<distinct_id>;
- user_pseudo_id = distinct_id; user_id = the login id, else anonymous_id (the reference's choice);
- event names as in the GTM transformer (page_view, login, user_engagement, click mapped, others
  kept, so `$AppViewScreen` stays `$AppViewScreen`); `properties.$is_first_time` adds a copy
  named _first_open (id + "-first-open");
- platform = properties.$os, else Web; device, page and lib fields from properties.$… and lib.$…;
- custom parameters: the record's, properties' and lib's keys not bound to a column, the identities,
  and $time/$distinct_id/$anonymous_id; user properties: the property keys containing "user".

Where this differs from the reference, on purpose:
- a `profile_set`/`profile_set_once` record (no `event`) becomes a `_profile_set` event whose
  properties are the user properties; the reference dropped those records silently;
- $timezone_offset is minutes west of UTC (JS convention): seconds east = -60 * it;
  event_duration (seconds) becomes user_engagement_time_msec in ms; the reference copied both raw;
- $app_id, $screen_name, $latest_referrer, $viewport_*, $is_first_time fill their columns.
"""

from __future__ import annotations

import pandas as pd
from isal import isal_zlib
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .. import columns as C
from ..badrows import Reason
from ..decode import MAX_INFLATED_BYTES
from ..plugins import Transformer
from ..sparkutil import as_bool, as_long, blank_to_null, url_decoded, variant_string
from .gtm_server import GTM_EVENT_NAMES
from .variant_columns import (
    bad_row,
    custom_columns,
    derived_rows,
    explode_events,
    items_column,
    map_of,
    mapped_name,
    merged,
    missing,
    name_mapper,
    output_columns,
    page_columns,
    request_columns,
    user_properties_column,
    without,
)

GZIP_MAGIC = b"\x1f\x8b"
PROFILE_TYPES = ("profile_set", "profile_set_once")

# Record keys bound to columns (or handled below); the others are custom parameters.
RECORD_BOUND = frozenset("time type distinct_id anonymous_id login_id identities event lib properties items".split())
PROPERTIES_BOUND = frozenset(
    """$ip $user_agent $url $title $referrer $referrer_title $latest_referrer $screen_name $os $os_version
    $manufacturer $model $brand $app_version $app_id $app_name $screen_width $screen_height $viewport_width
    $viewport_height $carrier $timezone_offset $wifi $network_type $device_id $event_duration event_duration
    $is_first_time $browser_language $lib $lib_version""".split()
)
LIB_BOUND = frozenset({"$lib", "$lib_version", "$app_version"})
ITEM_FIELDS = {"item_id": ("$item_id", "item_id"), "name": ("$item_name", "item_name"), "price": ("$price", "price")}


def inflate(packed: bytes | None) -> tuple[str | None, str | None]:
    """(text, error) of a decoded data_list value: gzip (the usual case) or plain JSON (gzip=0)."""
    if packed is None:
        return None, None
    if packed[:2] == GZIP_MAGIC:
        inflater = isal_zlib.decompressobj(wbits=31)
        try:
            raw = inflater.decompress(packed, MAX_INFLATED_BYTES + 1)
        except (isal_zlib.error, ValueError) as exc:
            return None, f"gzip data does not inflate: {exc}"
        if len(raw) > MAX_INFLATED_BYTES:
            return None, f"inflated data over {MAX_INFLATED_BYTES} bytes"
        if not inflater.eof:
            return None, "gzip data is truncated"
    elif packed.lstrip()[:1] in (b"[", b"{"):
        raw = packed
    else:
        return None, "data is neither gzip nor JSON"
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "data is not UTF-8"


# A StructType, not DDL text: parsing DDL needs a running session and this runs at import.
@F.pandas_udf(T.StructType([T.StructField("text", T.StringType()), T.StructField("error", T.StringType())]))
def _inflate_batch(values: pd.Series) -> pd.DataFrame:
    pairs = [inflate(None if v is None else bytes(v)) for v in values]
    return pd.DataFrame(pairs, columns=["text", "error"], dtype=object)


def _form_value(body: Column) -> Column:
    """The URL-decoded data_list (Android/iOS) or data (JS) value of a form-encoded body."""

    def field(name: str) -> Column:
        return blank_to_null(F.regexp_extract(body, rf"(?:^|&){name}=([^&]*)", 1))

    return url_decoded(F.coalesce(field("data_list"), field("data")))


class SensorsDataTransformer(Transformer):
    """Sensors Analytics SDK requests (reference: SensorsDataTransformerV2)."""

    parameters = {"event_names": {}}  # extra or overriding source name -> event name entries

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self.event_names = name_mapper(GTM_EVENT_NAMES, self.params["event_names"], type(self).__name__)

    def transform(self, requests: DataFrame) -> DataFrame:
        is_form = F.col("error").isNull() & (F.col("body_kind") == "other")
        value = F.when(is_form, _form_value(F.col("body")))
        value_json = F.when(F.ltrim(value).startswith("[") | F.ltrim(value).startswith("{"), value)
        # A '+' of Base64 that was not percent-encoded arrives as a space after URL decoding.
        packed = F.when(value_json.isNull(), F.try_to_binary(F.translate(value, " ", "+"), F.lit("base64")))
        decoded = requests.withColumns({"_packed": packed, "_value": value, "_value_json": value_json})
        decoded = decoded.withColumn("_inflated", _inflate_batch("_packed"))
        text = F.coalesce(
            F.when(F.col("error").isNull() & (F.col("body_kind") != "other"), F.col("body")),
            F.col("_value_json"),
            F.col("_inflated.text"),
        )
        decode_error = F.coalesce(
            F.col("error"),
            F.when(is_form & F.col("_value").isNull(), F.lit("body is neither JSON nor a form with data_list/data")),
            F.when(is_form & F.col("_value_json").isNull() & F.col("_packed").isNull(), F.lit("data is not Base64")),
            F.col("_inflated.error"),
        )
        exploded = explode_events(decoded.withColumn("_decode_error", decode_error), text)
        e = F.from_json(C.PAYLOAD, "map<string,variant>")
        parsed = exploded.withColumn("e", e).withColumns(
            {"p": map_of(F.col("e")["properties"]), "lib": map_of(F.col("e")["lib"])}
        )
        reason, detail = self._bad_reason()
        checked = parsed.withColumns({C.BAD_REASON: reason, C.BAD_DETAIL: detail})
        first_time = as_bool(variant_string(F.col("p")["$is_first_time"]))
        rows = derived_rows(checked, [(F.col(C.BAD_REASON).isNull() & first_time, "_first_open", "-first-open")])
        return rows.select(*output_columns(self._columns()))

    @staticmethod
    def _is_profile() -> Column:
        record_type = variant_string(F.col("e")["type"])
        return record_type.isin(*PROFILE_TYPES) & blank_to_null(variant_string(F.col("e")["event"])).isNull()

    def _bad_reason(self) -> tuple[Column, Column]:
        e = F.col("e")
        absent = missing(
            {
                "distinct_id": variant_string(e["distinct_id"]),
                "event": F.when(self._is_profile(), F.lit("profile")).otherwise(variant_string(e["event"])),
                "appId": F.col("app_id"),
            }
        )
        return bad_row(
            [
                (F.col("_decode_error").isNotNull(), Reason.CORRUPT, F.col("_decode_error")),
                (F.col(C.PAYLOAD).isNull(), Reason.CORRUPT, F.lit("body is not a JSON array of events")),
                (e.isNull(), Reason.CORRUPT, F.lit("event is not a JSON object")),
                (absent != "", Reason.MISSING_FIELD, F.concat(F.lit("missing "), absent)),
            ]
        )

    def _columns(self) -> dict[str, Column]:
        e, p, lib = F.col("e"), F.col("p"), F.col("lib")

        def s(key: str) -> Column:
            return variant_string(e[key])

        def prop(key: str) -> Column:
            return variant_string(p[key])

        def lib_prop(key: str) -> Column:
            return variant_string(lib[key])

        derived = F.col("_derived")
        ingest = F.col("ingest_time_msec")
        is_profile = self._is_profile()
        client_time = as_long(s("time"))
        identities = map_of(e["identities"])
        login_id = F.coalesce(blank_to_null(s("login_id")), variant_string(identities["$identity_login_id"]))
        event_id = F.concat_ws(
            "-", F.coalesce(F.col("rid"), F.lit("null")), F.col(C.EVENT_INDEX).cast("string"), s("distinct_id")
        )
        name = F.when(is_profile, F.lit("_profile_set")).otherwise(mapped_name(s("event"), self.event_names))
        wifi = as_bool(prop("$wifi"))
        duration_s = F.coalesce(prop("$event_duration"), prop("event_duration")).try_cast("double")
        latest_referrer = blank_to_null(url_decoded(prop("$latest_referrer")))
        named_ids = {"$time": e["time"], "$distinct_id": e["distinct_id"], "$anonymous_id": e["anonymous_id"]}
        custom = merged(
            without(e, RECORD_BOUND),
            F.when(~is_profile, without(p, PROPERTIES_BOUND)),
            without(lib, LIB_BOUND),
            without(identities, ()),
            without(F.create_map(*(x for k, v in named_ids.items() for x in (F.lit(k), v))), ()),
        )
        user_keys = F.when(is_profile, p).otherwise(
            F.map_filter(without(p, PROPERTIES_BOUND), lambda k, _v: F.contains(k, F.lit("user")))
        )
        return {
            **request_columns(),
            "event_timestamp": F.timestamp_millis(ingest),
            "event_id": F.concat(event_id, F.coalesce(derived["suffix"], F.lit(""))),
            "event_time_msec": ingest,
            "event_name": F.coalesce(derived["name"], name),
            "device_mobile_brand_name": prop("$brand"),
            "device_mobile_model_name": prop("$model"),
            "device_manufacturer": prop("$manufacturer"),
            "device_carrier": prop("$carrier"),
            "device_network_type": F.coalesce(
                prop("$network_type"), F.when(wifi, F.lit("WIFI")).when(~wifi, F.lit("CELLULAR"))
            ),
            "device_operating_system": prop("$os"),
            "device_operating_system_version": prop("$os_version"),
            "device_vendor_id": prop("$device_id"),
            "device_system_language": prop("$browser_language"),
            "device_time_zone_offset_seconds": (-as_long(prop("$timezone_offset")) * 60).try_cast("int"),
            "device_screen_width": as_long(prop("$screen_width")).try_cast("int"),
            "device_screen_height": as_long(prop("$screen_height")).try_cast("int"),
            "device_viewport_width": as_long(prop("$viewport_width")).try_cast("int"),
            "device_viewport_height": as_long(prop("$viewport_height")).try_cast("int"),
            "user_first_touch_time_msec": client_time,
            "app_package_id": prop("$app_id"),
            "app_version": F.coalesce(lib_prop("$app_version"), prop("$app_version")),
            "app_title": prop("$app_name"),
            # A profile record carries no $os; its lib still names the SDK.
            "platform": F.coalesce(
                blank_to_null(prop("$os")),
                F.when(lib_prop("$lib").isin("Android", "iOS"), lib_prop("$lib")),
                F.lit("Web"),
            ),
            "project_id": F.lit(self.context.project_id),
            "screen_view_screen_name": prop("$screen_name"),
            "page_view_page_referrer": url_decoded(prop("$referrer")),
            "page_view_page_referrer_title": url_decoded(prop("$referrer_title")),
            "page_view_page_title": url_decoded(prop("$title")),
            **page_columns(prop("$url")),
            "page_view_latest_referrer": latest_referrer,
            "page_view_latest_referrer_host": F.try_parse_url(latest_referrer, F.lit("HOST")),
            "app_start_is_first_time": as_bool(prop("$is_first_time")),
            "user_engagement_time_msec": F.round(duration_s * 1000).try_cast("bigint"),
            "user_id": F.coalesce(login_id, s("anonymous_id")),
            "user_pseudo_id": s("distinct_id"),
            "session_start_time_msec": client_time,
            "sdk_version": F.coalesce(lib_prop("$lib_version"), prop("$lib_version")),
            "sdk_name": F.coalesce(lib_prop("$lib"), prop("$lib")),
            **custom_columns(custom),
            C.ITEMS: items_column(F.try_variant_get(e["items"], "$", "array<map<string,variant>>"), ITEM_FIELDS),
            C.USER_PROPERTIES: user_properties_column(user_keys),
            C.BAD_REASON: F.col(C.BAD_REASON),
            C.BAD_DETAIL: F.col(C.BAD_DETAIL),
            C.UA: F.coalesce(blank_to_null(prop("$user_agent")), F.col("ua")),
            C.IP: F.coalesce(blank_to_null(prop("$ip")), F.col("ip")),
        }
