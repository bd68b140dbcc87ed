"""The Clickstream SDK transformer (default): requests of the official SDKs -> event rows.

Bodies are JSON arrays of events (web, or Android/Swift after Base64+gzip). A pass over Arrow
batches (sdk_split) splits each body into events, keeps each event's JSON as the bad-row payload
and builds what needs each value's JSON type (custom parameters, user properties, items). Spark
then parses every event with an explicit schema: scalars and reserved attributes as text (the
SDKs are not consistent about "12" vs 12), cast afterwards. Field mapping: reference-system.md
§1.9 and §4.6.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .. import columns as C
from ..badrows import Reason
from ..decode import raw_lines, read_requests
from ..plugins import Enricher, RequestEnrichment, Transformer
from ..sparkutil import as_bool, as_long, url_decoded
from . import sdk_split

_SCALARS = (
    "event_id app_id unique_id device_id device_unique_id event_type timestamp platform os_version make brand "
    "model carrier network_type screen_height screen_width zone_offset locale system_language host_name "
    "app_version app_package_name app_title sdk_version sdk_name event_value event_value_currency currency "
    "event_previous_timestamp viewport_width viewport_height"
).split()

# Attributes bound to columns; everything else is a custom parameter.
RESERVED_ATTRIBUTES = frozenset(
    """_session_id _session_start_timestamp _session_start_time_msec _session_duration _session_number
    _screen_name _screen_id _screen_unique_id _previous_screen_name _previous_screen_id
    _previous_screen_unique_id _entrances _previous_timestamp _engagement_time_msec _page_referrer
    _page_referrer_title _page_title _page_url _latest_referrer _latest_referrer_host _is_first_time
    _exception_message _exception_stack _previous_app_version _previous_os_version _error_code
    _error_message _search_key _search_term _link_classes _link_domain _link_id _link_url _outbound
    _app_install_channel _app_install_source _install_channel _traffic_source_source
    _traffic_source_medium _traffic_source_campaign _traffic_source_content _traffic_source_term
    _traffic_source_campaign_id _traffic_source_clid_platform _traffic_source_clid
    _traffic_source_channel_group _traffic_source_category _utm_id _utm_source _utm_medium _utm_content
    _utm_term _utm_campaign _utm_source_platform _gclid""".split()
)
RESERVED_USER = ("_user_id", "_user_first_touch_timestamp")

# The main parse binds reserved attributes by name (a struct field is found by hashing while the
# JSON is read; map lookups or VARIANT paths per attribute cost several times more). Values are
# read as text whatever their JSON type, then cast.
EVENT_SCHEMA = T.StructType(
    [T.StructField(name, T.StringType()) for name in _SCALARS]
    + [
        T.StructField(
            "attributes", T.StructType([T.StructField(k, T.StringType()) for k in sorted(RESERVED_ATTRIBUTES)])
        ),
        T.StructField(
            "user",
            T.StructType(
                [T.StructField(k, T.StructType([T.StructField("value", T.StringType())])) for k in RESERVED_USER]
            ),
        ),
    ]
)
MOBILE_PLATFORMS = {"ANDROID": "Android", "IOS": "iOS", "WECHATMP": "WeChatMP"}


def _attr(name: str) -> Column:
    return F.col(f"e.attributes.{name}")


def _first_attr(*names: str) -> Column:
    return F.coalesce(*(_attr(n) for n in names))


def _user_value(name: str) -> Column:
    return F.col(f"e.user.{name}.value")


def _when_event(name: str, value: Column) -> Column:
    return F.when(F.col("e.event_type") == name, value)


def _query_param(key: str) -> Column:
    return F.regexp_extract(F.col("uri"), rf"[?&]{key}=([^&]*)", 1)


class ClickstreamSdkTransformer(Transformer):
    """Official Clickstream SDK bodies (web, Android, Swift, Flutter, React Native, WeChat)."""

    parameters = {}

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self.enrichments: tuple[RequestEnrichment, ...] = ()

    def fuse(self, enrichers: Sequence[Enricher]) -> int:
        """The request enrichments of the leading enrichers run in the split pass (user agent, geo)."""
        taken = []
        for enricher in enrichers:
            enrichment = enricher.request_enrichment()
            if enrichment is None:
                break
            taken.append(enrichment)
        self.enrichments = tuple(taken)
        return len(taken)

    def read(self, spark: SparkSession, paths: list[str]) -> DataFrame:
        """Raw objects straight to event rows: one Python pass decodes each request and splits
        its body (decode.read_requests + transform would cross into Python twice)."""
        if not paths:
            return read_requests(spark, paths)
        split = functools.partial(sdk_split.split_lines, **self._split_args())
        return raw_lines(spark, paths).mapInArrow(split, sdk_split.out_schema(self.enrichments))

    def _split_args(self) -> dict:
        return {
            "reserved_attributes": RESERVED_ATTRIBUTES,
            "reserved_user": frozenset(RESERVED_USER),
            "enrichments": self.enrichments,
        }

    def transform(self, requests: DataFrame) -> DataFrame:
        if "split_error" in requests.columns:
            events = requests  # already split by read()
        else:
            split = functools.partial(sdk_split.split_requests, **self._split_args())
            events = requests.mapInArrow(split, sdk_split.out_schema(self.enrichments))
        parsed = events.withColumn("e", F.when(F.col("split_error").isNull(), F.from_json(C.PAYLOAD, EVENT_SCHEMA)))
        fused = [F.col(name) for enrichment in self.enrichments for name, _type in enrichment.fields]
        return parsed.select(*self._columns(self.context.project_id), *fused)

    @staticmethod
    def _bad_reason() -> tuple[Column, Column]:
        missing = F.concat_ws(
            ", ",
            *(
                F.when(F.col(f"e.{f}").isNull() | (F.trim(F.col(f"e.{f}")) == ""), F.lit(f))
                for f in ("event_id", "app_id", "timestamp", "event_type", "unique_id")
            ),
        )
        bad_time = as_long(F.col("e.timestamp")).isNull() & F.col("e.timestamp").isNotNull()
        split_error = F.col("split_error")
        reason = (
            F.when(split_error.isNotNull(), F.lit(Reason.CORRUPT.value))
            .when(missing != "", F.lit(Reason.MISSING_FIELD.value))
            .when(bad_time, F.lit(Reason.CORRUPT.value))
        )
        detail = (
            F.when(split_error.isNotNull(), split_error)
            .when(missing != "", F.concat(F.lit("missing "), missing))
            .when(bad_time, F.lit("timestamp is not a number"))
        )
        return reason, detail

    def _columns(self, project_id: str) -> list[Column]:
        e = lambda name: F.col(f"e.{name}")  # noqa: E731
        name = e("event_type")
        event_time = as_long(e("timestamp"))
        page_url = url_decoded(_attr("_page_url"))
        platform_raw = e("platform")
        platform_upper = F.upper(platform_raw)
        mobile_os = F.coalesce(*(F.when(platform_upper == k, F.lit(v)) for k, v in MOBILE_PLATFORMS.items()))
        engagement = as_long(_attr("_engagement_time_msec"))
        previous = as_long(_attr("_previous_timestamp"))
        entrances = as_bool(_attr("_entrances"))
        event_value = e("event_value").try_cast("double")
        reason, detail = self._bad_reason()
        query = F.try_parse_url(page_url, F.lit("QUERY"))
        return [
            F.timestamp_millis(event_time).alias("event_timestamp"),
            e("event_id").alias("event_id"),
            event_time.alias("event_time_msec"),
            name.alias("event_name"),
            event_value.alias("event_value"),
            F.when(event_value.isNotNull(), F.coalesce(e("event_value_currency"), e("currency"), F.lit("USD")))
            .otherwise(F.coalesce(e("event_value_currency"), e("currency")))
            .alias("event_value_currency"),
            as_long(_query_param("event_bundle_sequence_id")).alias("event_bundle_sequence_id"),
            F.col("ingest_time_msec"),
            e("brand").alias("device_mobile_brand_name"),
            e("model").alias("device_mobile_model_name"),
            e("make").alias("device_manufacturer"),
            e("carrier").alias("device_carrier"),
            e("network_type").alias("device_network_type"),
            mobile_os.alias("device_operating_system"),
            e("os_version").alias("device_operating_system_version"),
            e("device_id").alias("device_vendor_id"),
            e("device_unique_id").alias("device_advertising_id"),
            e("system_language").alias("device_system_language"),
            (as_long(e("zone_offset")) / 1000).cast("int").alias("device_time_zone_offset_seconds"),
            as_long(e("screen_width")).cast("int").alias("device_screen_width"),
            as_long(e("screen_height")).cast("int").alias("device_screen_height"),
            as_long(e("viewport_width")).cast("int").alias("device_viewport_width"),
            as_long(e("viewport_height")).cast("int").alias("device_viewport_height"),
            e("locale").alias("geo_locale"),
            F.coalesce(_attr("_traffic_source_source"), _attr("_utm_source")).alias("traffic_source_source"),
            F.coalesce(_attr("_traffic_source_medium"), _attr("_utm_medium")).alias("traffic_source_medium"),
            F.coalesce(_attr("_traffic_source_campaign"), _attr("_utm_campaign")).alias("traffic_source_campaign"),
            F.coalesce(_attr("_traffic_source_content"), _attr("_utm_content")).alias("traffic_source_content"),
            F.coalesce(_attr("_traffic_source_term"), _attr("_utm_term")).alias("traffic_source_term"),
            F.coalesce(_attr("_traffic_source_campaign_id"), _attr("_utm_id")).alias("traffic_source_campaign_id"),
            F.coalesce(_attr("_traffic_source_clid_platform"), _attr("_utm_source_platform")).alias(
                "traffic_source_clid_platform"
            ),
            F.coalesce(
                _attr("_traffic_source_clid"),
                F.when(
                    _attr("_gclid").isNotNull(),
                    F.to_json(F.struct(F.lit("gclid").alias("type"), _attr("_gclid").alias("value"))),
                ),
            ).alias("traffic_source_clid"),
            _attr("_traffic_source_channel_group").alias("traffic_source_channel_group"),
            _attr("_traffic_source_category").alias("traffic_source_category"),
            as_long(_user_value("_user_first_touch_timestamp")).alias("user_first_touch_time_msec"),
            e("app_package_name").alias("app_package_id"),
            e("app_version").alias("app_version"),
            e("app_title").alias("app_title"),
            _first_attr("_app_install_channel", "_app_install_source", "_install_channel").alias("app_install_source"),
            F.coalesce(F.when(F.trim(platform_raw) != "", platform_raw), F.lit("Web")).alias("platform"),
            F.lit(project_id).alias("project_id"),
            e("app_id").alias("app_id"),
            _attr("_screen_name").alias("screen_view_screen_name"),
            _attr("_screen_id").alias("screen_view_screen_id"),
            _attr("_screen_unique_id").alias("screen_view_screen_unique_id"),
            _attr("_previous_screen_name").alias("screen_view_previous_screen_name"),
            _attr("_previous_screen_id").alias("screen_view_previous_screen_id"),
            _attr("_previous_screen_unique_id").alias("screen_view_previous_screen_unique_id"),
            _when_event("_screen_view", previous).alias("screen_view_previous_time_msec"),
            _when_event("_screen_view", engagement).alias("screen_view_engagement_time_msec"),
            _when_event("_screen_view", entrances).alias("screen_view_entrances"),
            url_decoded(_attr("_page_referrer")).alias("page_view_page_referrer"),
            url_decoded(_attr("_page_referrer_title")).alias("page_view_page_referrer_title"),
            _when_event("_page_view", previous).alias("page_view_previous_time_msec"),
            _when_event("_page_view", engagement).alias("page_view_engagement_time_msec"),
            url_decoded(_attr("_page_title")).alias("page_view_page_title"),
            page_url.alias("page_view_page_url"),
            F.try_parse_url(page_url, F.lit("PATH")).alias("page_view_page_url_path"),
            F.when(query.isNotNull() & (query != ""), F.str_to_map(query, F.lit("&"), F.lit("="))).alias(
                "page_view_page_url_query_parameters"
            ),
            F.coalesce(F.try_parse_url(page_url, F.lit("HOST")), e("host_name")).alias("page_view_hostname"),
            url_decoded(_attr("_latest_referrer")).alias("page_view_latest_referrer"),
            F.coalesce(
                _attr("_latest_referrer_host"), F.try_parse_url(url_decoded(_attr("_latest_referrer")), F.lit("HOST"))
            ).alias("page_view_latest_referrer_host"),
            _when_event("_page_view", entrances).alias("page_view_entrances"),
            as_bool(_attr("_is_first_time")).alias("app_start_is_first_time"),
            _attr("_previous_app_version").alias("upgrade_previous_app_version"),
            _attr("_previous_os_version").alias("upgrade_previous_os_version"),
            _attr("_search_key").alias("search_key"),
            _attr("_search_term").alias("search_term"),
            _attr("_link_classes").alias("outbound_link_classes"),
            _attr("_link_domain").alias("outbound_link_domain"),
            _attr("_link_id").alias("outbound_link_id"),
            _attr("_link_url").alias("outbound_link_url"),
            as_bool(_attr("_outbound")).alias("outbound_link"),
            _when_event("_user_engagement", engagement).alias("user_engagement_time_msec"),
            _user_value("_user_id").alias("user_id"),
            e("unique_id").alias("user_pseudo_id"),
            _attr("_session_id").alias("session_id"),
            as_long(_first_attr("_session_start_timestamp", "_session_start_time_msec")).alias(
                "session_start_time_msec"
            ),
            as_long(_attr("_session_duration")).alias("session_duration"),
            as_long(_attr("_session_number")).alias("session_number"),
            _when_event("_scroll", engagement).alias("scroll_engagement_time_msec"),
            _attr("_error_code").alias("sdk_error_code"),
            _attr("_error_message").alias("sdk_error_message"),
            e("sdk_version").alias("sdk_version"),
            e("sdk_name").alias("sdk_name"),
            _attr("_exception_message").alias("app_exception_message"),
            _attr("_exception_stack").alias("app_exception_stack"),
            F.col("custom_parameters_json_str"),
            F.col("custom_parameters"),
            F.col(C.ITEMS),
            F.col(C.USER_PROPERTIES),
            reason.alias(C.BAD_REASON),
            detail.alias(C.BAD_DETAIL),
            F.col("rid").alias(C.RID),
            F.col("input_file").alias(C.INPUT_FILE),
            F.col("upload_time_msec").alias(C.UPLOAD_TIME),
            F.col(C.EVENT_INDEX),
            F.col(C.PAYLOAD),
            F.col("ua").alias(C.UA),
            F.col("ip").alias(C.IP),
        ]
