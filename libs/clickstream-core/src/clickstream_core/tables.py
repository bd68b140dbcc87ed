"""The data model v2: the four tables the ETL writes and the loader reads.

One definition serves every engine: a column is a name, a type in Spark's DDL spelling (the ETL
builds its output schema from it, the loader renders it per warehouse) and, for strings, the most
bytes the warehouse keeps (the ETL truncates to it so a load never fails on a long value).
Column order is the reference's (reference-system.md §4.7).
"""

from __future__ import annotations

from dataclasses import dataclass

PARTITION_COLUMNS = ("partition_app", "partition_year", "partition_month", "partition_day")

PARAM_VALUE = "struct<value:string,type:string>"
USER_PROP_VALUE = "struct<value:string,type:string,set_time_msec:bigint>"
STRING_MAP = "map<string,string>"
CUSTOM_PARAMETERS = f"map<string,{PARAM_VALUE}>"
USER_PROPERTIES = f"map<string,{USER_PROP_VALUE}>"

SHORT = 255
MEDIUM = 2048
LONG = 65535


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    max_bytes: int | None = None
    not_null: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def ddl(self) -> str:
        """Spark DDL of the columns, e.g. for `spark.createDataFrame(rows, table.ddl())`."""
        return ", ".join(f"`{c.name}` {c.type}" for c in self.columns)


def _columns(spec: str, not_null: frozenset[str] = frozenset()) -> tuple[Column, ...]:
    """`name type[:bytes]` per line; strings without a size are SHORT."""
    out = []
    for line in spec.strip().splitlines():
        name, type_ = line.split()
        max_bytes = None
        if type_.startswith("string"):
            max_bytes = int(type_.split(":")[1]) if ":" in type_ else SHORT
            type_ = "string"
        out.append(Column(name, type_, max_bytes, name in not_null))
    return tuple(out)


_M, _L = f"string:{MEDIUM}", f"string:{LONG}"

EVENT_V2 = Table(
    "event_v2",
    _columns(
        f"""
        event_timestamp timestamp
        event_id string
        event_time_msec bigint
        event_name string
        event_value double
        event_value_currency string:32
        event_bundle_sequence_id bigint
        ingest_time_msec bigint
        device_mobile_brand_name string
        device_mobile_model_name string
        device_manufacturer string
        device_carrier string
        device_network_type string
        device_operating_system string
        device_operating_system_version string
        device_vendor_id string
        device_advertising_id string
        device_system_language string
        device_time_zone_offset_seconds int
        device_ua_browser string
        device_ua_browser_version string
        device_ua_os string
        device_ua_os_version string
        device_ua_device string
        device_ua_device_category string
        device_ua {STRING_MAP}
        device_screen_width int
        device_screen_height int
        device_viewport_width int
        device_viewport_height int
        geo_continent string
        geo_sub_continent string
        geo_country string
        geo_region string
        geo_metro string
        geo_city string
        geo_locale string
        traffic_source_source string
        traffic_source_medium string
        traffic_source_campaign string
        traffic_source_content {_M}
        traffic_source_term {_M}
        traffic_source_campaign_id string
        traffic_source_clid_platform string
        traffic_source_clid {_M}
        traffic_source_channel_group string
        traffic_source_category string
        user_first_touch_time_msec bigint
        app_package_id string
        app_version string
        app_title string
        app_install_source string
        platform string
        project_id string
        app_id string
        screen_view_screen_name string
        screen_view_screen_id string
        screen_view_screen_unique_id string
        screen_view_previous_screen_name string
        screen_view_previous_screen_id string
        screen_view_previous_screen_unique_id string
        screen_view_previous_time_msec bigint
        screen_view_engagement_time_msec bigint
        screen_view_entrances boolean
        page_view_page_referrer {_L}
        page_view_page_referrer_title {_M}
        page_view_previous_time_msec bigint
        page_view_engagement_time_msec bigint
        page_view_page_title {_M}
        page_view_page_url {_L}
        page_view_page_url_path {_M}
        page_view_page_url_query_parameters {STRING_MAP}
        page_view_hostname {_M}
        page_view_latest_referrer {_L}
        page_view_latest_referrer_host {_M}
        page_view_entrances boolean
        app_start_is_first_time boolean
        upgrade_previous_app_version string
        upgrade_previous_os_version string
        search_key {_M}
        search_term {_M}
        outbound_link_classes {_M}
        outbound_link_domain {_M}
        outbound_link_id {_M}
        outbound_link_url {_L}
        outbound_link boolean
        user_engagement_time_msec bigint
        user_id string
        user_pseudo_id string
        session_id string
        session_start_time_msec bigint
        session_duration bigint
        session_number bigint
        scroll_engagement_time_msec bigint
        sdk_error_code string
        sdk_error_message {_M}
        sdk_version string
        sdk_name string
        app_exception_message {_M}
        app_exception_stack {_L}
        custom_parameters_json_str {_L}
        custom_parameters {CUSTOM_PARAMETERS}
        process_info {STRING_MAP}
        created_time timestamp
        """,
        frozenset(
            {"event_timestamp", "event_id", "event_time_msec", "event_name", "project_id", "app_id", "user_pseudo_id"}
        ),
    ),
)

ITEM_V2 = Table(
    "item_v2",
    _columns(
        f"""
        event_timestamp timestamp
        event_id string
        event_name string
        platform string
        user_pseudo_id string
        user_id string
        item_id string
        name string
        brand string
        currency string:32
        price double
        quantity double
        creative_name string
        creative_slot string
        location_id string
        category string
        category2 string
        category3 string
        category4 string
        category5 string
        custom_parameters_json_str {_L}
        custom_parameters {CUSTOM_PARAMETERS}
        process_info {STRING_MAP}
        created_time timestamp
        """,
        frozenset({"event_timestamp", "event_id", "item_id"}),
    ),
)

USER_V2 = Table(
    "user_v2",
    _columns(
        f"""
        event_timestamp timestamp
        user_pseudo_id string
        user_id string
        user_properties {USER_PROPERTIES}
        user_properties_json_str {_L}
        first_touch_time_msec bigint
        first_visit_date date
        first_referrer {_L}
        first_traffic_source string
        first_traffic_medium string
        first_traffic_campaign string
        first_traffic_content {_M}
        first_traffic_term {_M}
        first_traffic_campaign_id string
        first_traffic_clid_platform string
        first_traffic_clid {_M}
        first_traffic_channel_group string
        first_traffic_category string
        first_app_install_source string
        process_info {STRING_MAP}
        created_time timestamp
        """,
        frozenset({"event_timestamp", "user_pseudo_id"}),
    ),
)

SESSION = Table(
    "session",
    _columns(
        f"""
        event_timestamp timestamp
        user_pseudo_id string
        session_id string
        user_id string
        session_number bigint
        session_start_time_msec bigint
        session_source string
        session_medium string
        session_campaign string
        session_content {_M}
        session_term {_M}
        session_campaign_id string
        session_clid_platform string
        session_clid {_M}
        session_channel_group string
        session_source_category string
        process_info {STRING_MAP}
        created_time timestamp
        """,
        frozenset({"event_timestamp", "user_pseudo_id", "session_id"}),
    ),
)

TABLES = {t.name: t for t in (EVENT_V2, ITEM_V2, USER_V2, SESSION)}

# Bad rows: one per raw event (or per undecodable request) that did not become a good row.
BAD_ROWS = Table(
    "bad_rows",
    _columns(
        f"""
        reason string
        detail {_L}
        app_id string
        event_id string
        rid string
        ingest_time_msec bigint
        input_file_name {_L}
        payload {_L}
        process_info {STRING_MAP}
        created_time timestamp
        """
    ),
)
