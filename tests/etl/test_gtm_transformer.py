"""GtmServerTransformer over the reference's GTM server-side fixtures; expected values read off the fixture files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from clickstream_etl import decode
from clickstream_etl.plugins import PluginError
from clickstream_etl.transformers.clickstream_sdk import ClickstreamSdkTransformer
from clickstream_etl.transformers.gtm_server import GtmServerTransformer

from tests.etl.rawfiles import record, write_records
from tests.etl.transformed import collect, context, custom

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "third-party" / "gtm-server"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures/third-party/gtm-server")
PROJECT = "gtm_project"

SINGLE_RID = "7da14049fe2aca7ea98c9f4b2b3c6f4a"  # first record of server-single.json
ITEMS_RID = "25aefd4cb653fd0fcbac33e24fd3f0ba"
PROPS_RID = "42cc3b89d7dfccbc2c906eb125ea25db"
SESSION_RID = "55384aaeda62c5b20a462076ec59f3f5"


@pytest.fixture(scope="module")
def requests(spark):
    return decode.read_requests(spark, [str(p) for p in sorted(FIXTURES.glob("*.json"))])


@pytest.fixture(scope="module")
def events(spark, requests) -> dict[str, dict]:
    rows = collect(GtmServerTransformer({}, context(spark, PROJECT)).transform(requests))
    by_id = {r["event_id"]: r for r in rows}
    assert len(by_id) == len(rows)
    return by_id


def test_output_columns_and_types_equal_the_sdk_transformers(spark, requests):
    ctx = context(spark, PROJECT)
    gtm = GtmServerTransformer({}, ctx).transform(requests).schema
    sdk = ClickstreamSdkTransformer({}, ctx).transform(requests).schema
    assert [(f.name, f.dataType.simpleString()) for f in gtm] == [(f.name, f.dataType.simpleString()) for f in sdk]


def test_events_per_fixture_and_no_bad_rows(events):
    per_file = Counter(Path(r["_input_file"]).name for r in events.values())
    # server-session-start carries ss=1, so its user_engagement event gets a _session_start copy.
    assert per_file == {
        "server-items.json": 1,
        "server-session-start.json": 2,
        "server-single.json": 3,
        "server-user-props.json": 1,
    }
    assert [r["_bad_reason"] for r in events.values() if r["_bad_reason"]] == []


def test_page_view(events):
    row = events[f"{SINGLE_RID}-0-1691480516-2"]
    assert row["event_name"] == "_page_view"
    # No client time in GTM events: the request's ingest time is the event time.
    assert row["event_time_msec"] == row["ingest_time_msec"] == row["_ts_ms"] == 1691481796000
    assert row["project_id"] == PROJECT
    assert row["app_id"] == "GMTServer1"
    assert row["user_pseudo_id"] == "rzKifeYdYvmoWzeYcdcv9CyGY9NAPpL4vm7QxoxTPnM=.1690769179"
    assert row["user_id"] is None
    assert (row["session_id"], row["session_number"]) == ("1691480516", 2)
    assert row["session_start_time_msec"] is None  # this record has no request_start_time_ms
    assert row["page_view_page_url"] == "http://d3mpqdtjegq8im.cloudfront.net/?gtm_debug=1691481790745"
    assert row["page_view_page_url_path"] == "/"
    assert row["page_view_page_url_query_parameters"] == {"gtm_debug": "1691481790745"}
    assert row["page_view_hostname"] == "d3mpqdtjegq8im.cloudfront.net"
    assert row["page_view_page_referrer"] == "https://tagassistant.google.com/"
    assert row["page_view_page_title"] == "Retail Demo Store"
    # client_hints.platform is "\"macOS\"": the reference strips non-word characters for the platform.
    assert row["platform"] == "macOS"
    assert row["device_operating_system"] == "macOS"
    assert row["device_mobile_brand_name"] == "Not/A)Brand"
    assert row["device_system_language"] == "en-us"
    assert (row["device_screen_width"], row["device_screen_height"]) == (3440, 1440)
    # ua/ip of the payload win over the request's (its ua is null, its ip 52.44.165.253).
    assert row["ua"].endswith("Chrome/115.0.0.0 Safari/537.36 Edg/115.0.1901.200")
    assert row["ip"] == "52.94.133.137"
    assert custom(row, "x-ga-page_id") == ("616150298", "number")
    assert custom(row, "x-ga-measurement_id") == ("G-000000001", "string")
    assert custom(row, "x-ga-system_properties") == ('{"dbg":"1"}', "object")
    assert custom(row, "client_id") == ("rzKifeYdYvmoWzeYcdcv9CyGY9NAPpL4vm7QxoxTPnM=.1690769179", "string")
    assert "page_location" not in row["custom_parameters"]
    assert json.loads(row["custom_parameters_json_str"])["x-ga-request_count"] == 1
    assert row["_items"] is None  # no items field, as the SDK transformer leaves it
    assert row["_user_properties"] is None
    assert row["_rid"] == SINGLE_RID
    assert row["_event_index"] == 0
    assert json.loads(row["_payload"])["ga_session_id"] == "1691480516"


def test_second_page_view_keeps_its_own_ids(events):
    row = events["2585c47cb39634aced4d29cb1a6d7aa7-0-1691649584-5"]
    assert row["event_time_msec"] == 1691649844000
    assert row["session_start_time_msec"] == 1691649844774
    assert row["user_first_touch_time_msec"] == 1691649844774
    assert (row["device_screen_width"], row["device_screen_height"]) == (3008, 1692)
    assert custom(row, "Channel") == ("Server", "string")
    assert row["ip"] == "72.21.198.64"


def test_items_url_decoding_and_client_hints(events):
    row = events[f"{ITEMS_RID}-0-1695261065-1"]
    assert row["event_name"] == "select_item"  # not in the name map: kept
    assert row["event_time_msec"] == 1695261266828
    assert row["user_engagement_time_msec"] == 7549
    assert row["session_start_time_msec"] == 1695261261382
    assert row["page_view_page_url"] == (
        "https://www.example.com/gadgets/apple-watch-case?DG=Accessories&D_Accessories=Apple Watch Case"
    )
    assert row["page_view_page_url_path"] == "/gadgets/apple-watch-case"
    assert row["page_view_page_url_query_parameters"] == {"DG": "Accessories", "D_Accessories": "Apple Watch Case"}
    assert row["page_view_page_referrer"] == "https://www.example.com/iphone-cases/iphone-15-pro-max-cases?page=2"
    assert row["page_view_page_title"] == "Apple Watch保護殼 \u2013 example"
    assert row["platform"] == "Windows"
    assert row["device_operating_system_version"] == "10.0.0"
    assert row["device_mobile_brand_name"] == "Chromium"
    assert row["device_mobile_model_name"] is None  # "" in the client hints
    assert row["device_system_language"] == "zh-tw"
    assert custom(row, "x-ga-ur") == ("HK", "string")
    assert "item_id" not in row["custom_parameters"]
    [item] = row["_items"]
    assert item["item_id"] == "CTF-28015231-16005642"
    assert item["name"] == "Apple Watch Metallic Impact Case with Screen Protector 49mm - Orange"
    assert item["price"] == pytest.approx(35.6638714628)
    assert item["currency"] is None
    assert item["quantity"] is None
    assert item["custom_parameters"] == {
        "region": {"value": "US", "type": "string"},
        "item_list_name": {"value": "", "type": "string"},
    }
    assert json.loads(item["custom_parameters_json_str"]) == {"region": "US", "item_list_name": ""}


def test_login_is_profile_set_with_user_properties(events):
    row = events[f"{PROPS_RID}-0-1693281535-11"]
    assert row["event_name"] == "_profile_set"
    assert row["user_id"] == "0eb41e46-2373-4883-8daf-e1975ccb3821"
    assert (row["session_id"], row["session_number"]) == ("1693281535", 11)
    assert row["user_engagement_time_msec"] == 8129
    props = {k: (v["value"], v["type"], v["set_time_msec"]) for k, v in row["_user_properties"].items()}
    assert props == {
        "user_id": ("0eb41e46-2373-4883-8daf-e1975ccb3821", "string", None),
        "username": ("NameL2", "string", None),
        "email": ("yxxxxn@example.com", "string", None),
        "firstName": ("firstName 007", "string", None),
        "lastName": ("lastName 007", "string", None),
        "gender": ("F", "string", None),
        "age": ("25", "number", None),
        "persona": ("persona 007", "string", None),
        "f_value": ("25.1", "number", None),
        "b_value": ("true", "boolean", None),
    }
    # The event's own fields of the same names are custom parameters with their own values.
    assert custom(row, "age") == ("0", "number")
    assert custom(row, "firstName") == ("FN", "string")
    assert custom(row, "persona") == ("", "string")
    # fv is "0" and ss is "ss1" in this record: no _first_open or _session_start copy.
    assert [k for k in events if k.startswith(PROPS_RID)] == [f"{PROPS_RID}-0-1693281535-11"]


def test_session_start_flag_adds_a_session_start_copy(events):
    base = events[f"{SESSION_RID}-0-1704867229-9"]
    copy = events[f"{SESSION_RID}-0-1704867229-9-session-start"]
    assert base["event_name"] == "_user_engagement"
    assert copy["event_name"] == "_session_start"
    for row in (base, copy):
        assert row["event_time_msec"] == 1704867230000
        assert (row["session_id"], row["session_number"]) == ("1704867229", 9)
        assert row["session_start_time_msec"] == 1704867230837
        assert row["app_id"] == "sessionStartAppId1"
        assert row["device_mobile_brand_name"] == "Not_A Brand"
        assert row["device_operating_system_version"] == "13.6.3"
        assert row["ip"] == "52.94.133.141"
        assert custom(row, "event_location") == ('{"country":"US","region":"CA"}', "object")
    assert base["_payload"] == copy["_payload"]


def test_first_visit_flag_and_name_overrides(spark, tmp_path):
    event = {
        "event_name": "scroll",
        "client_id": "c1",
        "ga_session_id": "77",
        "x-ga-system_properties": {"fv": "2", "ss": "1"},
    }
    path = write_records(tmp_path / "fv.json", [record("r1", event)])
    transformer = GtmServerTransformer({"event_names": {"scroll": "_scroll"}}, context(spark, PROJECT))
    rows = collect(transformer.transform(decode.read_requests(spark, [path])))
    assert sorted((r["event_id"], r["event_name"]) for r in rows) == [
        ("r1-0-77-x", "_scroll"),
        ("r1-0-77-x-first-open", "_first_open"),
        ("r1-0-77-x-session-start", "_session_start"),
    ]
    # No ua/ip in the payload: the request's.
    assert {(r["ua"], r["ip"], r["platform"]) for r in rows} == {("request-ua", "10.1.2.3", "Web")}


def test_event_names_parameter_is_checked(spark):
    with pytest.raises(PluginError):
        GtmServerTransformer({"event_names": ["scroll"]}, context(spark, PROJECT))


def test_unusable_input_becomes_bad_rows_with_its_payload(spark, tmp_path):
    good = {"event_name": "page_view", "client_id": "c1", "ga_session_id": "5", "ga_session_number": 3}
    no_client = {"event_name": "page_view", "ga_session_id": "5"}
    no_name = {"client_id": "c9", "event_name": " "}
    path = write_records(
        tmp_path / "bad.json",
        [
            record("truncated", '{"event_name":"page_view","client_id":'),
            record("mixed", [good, no_client, 42, no_name]),
            record("no-app", good, appId=""),
            record("other", "definitely not an event"),
            "this line is no raw record",
        ],
    )
    rows = collect(GtmServerTransformer({}, context(spark, PROJECT)).transform(decode.read_requests(spark, [path])))
    by_key = {(r["_rid"], r["_event_index"]): r for r in rows}
    assert len(rows) == 8

    def bad(key):
        row = by_key[key]
        return row["_bad_reason"], row["_bad_detail"], row["_payload"]

    assert bad(("truncated", 0)) == (
        "corrupt",
        "body is not a JSON array of events",
        '{"event_name":"page_view","client_id":',
    )
    assert by_key[("mixed", 0)]["_bad_reason"] is None
    assert by_key[("mixed", 0)]["event_id"] == "mixed-0-5-3"
    assert bad(("mixed", 1)) == ("missing_field", "missing client_id", json.dumps(no_client, separators=(",", ":")))
    assert bad(("mixed", 2)) == ("corrupt", "event is not a JSON object", "42")
    assert bad(("mixed", 3))[:2] == ("missing_field", "missing event_name")
    assert bad(("no-app", 0))[:2] == ("missing_field", "missing appId")
    assert bad(("other", 0)) == ("corrupt", "body is neither JSON nor Base64 of gzip", "definitely not an event")
    [garbage] = [r for r in rows if r["_rid"] is None]
    assert garbage["_bad_reason"] == "corrupt"
    assert garbage["_bad_detail"].startswith("not a raw record")
    assert garbage["_payload"] == "this line is no raw record"
    # A bad row never gets the synthetic copies.
    assert all(not r["event_id"] or not r["event_id"].endswith(("first-open", "session-start")) for r in rows)
