"""The GTM server-side transformer: GA4 events forwarded by a Google Tag Manager server container.

A body is one event object or a JSON array of them, with the fields the GTM server's GA4 client
writes (event_name, client_id, ga_session_id, page_location, items, x-ga-*, x-sst-*, ...). Each
event is parsed as map<string,variant> (an explicit schema: every value keeps its JSON type, so a
custom parameter is typed the way it was sent). Mapping facts are the reference's GTM parser
(reference-system.md §4.3, BUILT-IN-4):

- there is no client event time: event time = the request's ingest time, and
  event_id = <rid>-<index in the body>-<ga_session_id>-<ga_session_number or x>;
- names: page_view -> _page_view, login -> _profile_set, user_engagement -> _user_engagement,
  click -> _click, any other name unchanged (the `event_names` parameter adds or overrides entries);
- x-ga-system_properties.fv set (and not 0/false) adds a copy named _first_open (id + "-first-open"),
  x-ga-system_properties.ss = "1" a copy named _session_start (id + "-session-start");
- platform = client_hints.platform without non-word characters, else Mobile for a mobile client
  hint, else Web;
- user properties come from x-ga-mp2-user_properties (_user_id is stored as user_id).

The column builders come from variant_columns.py, shared with the Sensors Data transformer.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .. import columns as C
from ..badrows import Reason
from ..plugins import Transformer
from ..sparkutil import as_long, blank_to_null, url_decoded, variant_string
from .variant_columns import (
    bad_row,
    custom_columns,
    derived_rows,
    explode_events,
    items_column,
    map_of,
    mapped_name,
    missing,
    name_mapper,
    output_columns,
    page_columns,
    request_columns,
    user_properties_column,
    vget,
    without,
)

GTM_EVENT_NAMES = {
    "page_view": "_page_view",
    "login": "_profile_set",
    "user_engagement": "_user_engagement",
    "click": "_click",
}
# Fields bound to columns; every other field of the event is a custom parameter. The reference
# keeps client_id, ip_override, screen_resolution, user_agent and the x-* objects as custom
# parameters too, so they are not listed.
GTM_BOUND = frozenset(
    """currency engagement_time_msec event_name ga_session_id ga_session_number item_id items language
    page_location page_referrer page_title user_id value""".split()
)
# GA4 item keys per item field (the reference reads item_id, item_name and price; the other keys
# are GA4's names for the same fields).
GTM_ITEM_FIELDS = {
    "item_id": ("item_id",),
    "name": ("item_name",),
    "brand": ("item_brand",),
    "currency": ("currency",),
    "price": ("price",),
    "quantity": ("quantity",),
    "creative_name": ("creative_name",),
    "creative_slot": ("creative_slot",),
    "location_id": ("location_id",),
    "category": ("item_category",),
    "category2": ("item_category2",),
    "category3": ("item_category3",),
    "category4": ("item_category4",),
    "category5": ("item_category5",),
}


class GtmServerTransformer(Transformer):
    """GA4 events of a Google Tag Manager server container (reference: GTMServerDataTransformerV2)."""

    parameters = {"event_names": {}}  # extra or overriding source name -> event name entries

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self.event_names = name_mapper(GTM_EVENT_NAMES, self.params["event_names"], type(self).__name__)

    def transform(self, requests: DataFrame) -> DataFrame:
        usable = F.col("error").isNull() & (F.col("body_kind") != "other")
        exploded = explode_events(requests, F.when(usable, F.col("body")))
        parsed = exploded.withColumn("e", F.from_json(C.PAYLOAD, "map<string,variant>"))
        reason, detail = self._bad_reason()
        checked = parsed.withColumns({C.BAD_REASON: reason, C.BAD_DETAIL: detail})
        sysprops = F.col("e")["x-ga-system_properties"]
        fv = F.lower(F.trim(vget(sysprops, "$.fv")))
        good = F.col(C.BAD_REASON).isNull()
        rows = derived_rows(
            checked,
            [
                (good & fv.isNotNull() & ~fv.isin("0", "false"), "_first_open", "-first-open"),
                (good & (vget(sysprops, "$.ss") == "1"), "_session_start", "-session-start"),
            ],
        )
        return rows.select(*output_columns(self._columns()))

    @staticmethod
    def _bad_reason() -> tuple[Column, Column]:
        e = F.col("e")
        absent = missing(
            {
                "event_name": variant_string(e["event_name"]),
                "client_id": variant_string(e["client_id"]),
                "appId": F.col("app_id"),
            }
        )
        return bad_row(
            [
                (F.col("error").isNotNull(), Reason.CORRUPT, F.col("error")),
                (F.col("body_kind") == "other", Reason.CORRUPT, F.lit("body is neither JSON nor Base64 of gzip")),
                (F.col(C.PAYLOAD).isNull(), Reason.CORRUPT, F.lit("body is not a JSON array of events")),
                (e.isNull(), Reason.CORRUPT, F.lit("event is not a JSON object")),
                (absent != "", Reason.MISSING_FIELD, F.concat(F.lit("missing "), absent)),
            ]
        )

    def _columns(self) -> dict[str, Column]:
        e = F.col("e")

        def s(key: str) -> Column:
            return variant_string(e[key])

        hints = e["client_hints"]
        hint_platform = blank_to_null(vget(hints, "$.platform"))
        mobile = vget(hints, "$.mobile", "boolean")
        derived = F.col("_derived")
        ingest = F.col("ingest_time_msec")
        session_id = s("ga_session_id")
        session_number = as_long(s("ga_session_number"))
        event_id = F.concat_ws(
            "-",
            F.coalesce(F.col("rid"), F.lit("null")),
            F.col(C.EVENT_INDEX).cast("string"),
            F.coalesce(session_id, F.lit("null")),
            F.coalesce(session_number.cast("string"), F.lit("x")),
        )
        name = mapped_name(s("event_name"), self.event_names)
        currency = s("currency")
        resolution = F.regexp_extract(F.coalesce(s("screen_resolution"), F.lit("")), r"^(\d+)x(\d+)$", 0)
        request_start = as_long(vget(e["x-sst-system_properties"], "$.request_start_time_ms"))
        user_props = map_of(e["x-ga-mp2-user_properties"])
        # The reference stores _user_id as user_id (an explicit user_id key then loses).
        user_props = F.transform_keys(
            F.map_filter(user_props, lambda k, _v: (k != "user_id") | ~F.map_contains_key(user_props, "_user_id")),
            lambda k, _v: F.when(k == "_user_id", F.lit("user_id")).otherwise(k),
        )
        reason, detail = F.col(C.BAD_REASON), F.col(C.BAD_DETAIL)
        return {
            **request_columns(),
            "event_timestamp": F.timestamp_millis(ingest),
            "event_id": F.concat(event_id, F.coalesce(derived["suffix"], F.lit(""))),
            "event_time_msec": ingest,
            "event_name": F.coalesce(derived["name"], name),
            "event_value": s("value").try_cast("double"),
            "event_value_currency": currency,
            "device_mobile_brand_name": vget(hints, "$.brands[0].brand"),
            "device_mobile_model_name": blank_to_null(vget(hints, "$.model")),
            "device_operating_system": F.regexp_replace(hint_platform, r'^"+|"+$', ""),
            "device_operating_system_version": vget(hints, "$.platform_version"),
            "device_system_language": s("language"),
            "device_screen_width": F.split_part(resolution, F.lit("x"), F.lit(1)).try_cast("int"),
            "device_screen_height": F.split_part(resolution, F.lit("x"), F.lit(2)).try_cast("int"),
            "user_first_touch_time_msec": F.when(request_start > 0, request_start),
            "platform": F.coalesce(
                blank_to_null(F.regexp_replace(hint_platform, r"\W", "")),
                F.when(mobile, F.lit("Mobile")),
                F.lit("Web"),
            ),
            "project_id": F.lit(self.context.project_id),
            "page_view_page_referrer": url_decoded(s("page_referrer")),
            "page_view_page_title": url_decoded(s("page_title")),
            **page_columns(s("page_location")),
            "user_engagement_time_msec": as_long(s("engagement_time_msec")),
            "user_id": s("user_id"),
            "user_pseudo_id": s("client_id"),
            "session_id": session_id,
            "session_start_time_msec": request_start,
            "session_number": session_number,
            **custom_columns(without(e, GTM_BOUND)),
            C.ITEMS: items_column(
                vget(e["items"], "$", "array<map<string,variant>>"), GTM_ITEM_FIELDS, {"currency": currency}
            ),
            C.USER_PROPERTIES: user_properties_column(user_props),
            C.BAD_REASON: reason,
            C.BAD_DETAIL: detail,
            C.UA: F.coalesce(blank_to_null(s("user_agent")), F.col("ua")),
            C.IP: F.coalesce(blank_to_null(s("ip_override")), F.col("ip")),
        }
