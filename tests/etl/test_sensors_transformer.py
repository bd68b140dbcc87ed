"""SensorsDataTransformer over the reference's Sensors Data fixtures; expected values read off the fixture files
(the gzip bodies were inflated by hand to read them)."""

from __future__ import annotations

import base64
import gzip
import json
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from clickstream_etl import decode
from clickstream_etl.transformers import sensors_data
from clickstream_etl.transformers.clickstream_sdk import ClickstreamSdkTransformer
from clickstream_etl.transformers.sensors_data import SensorsDataTransformer, inflate

from tests.etl.rawfiles import record, write_records
from tests.etl.transformed import collect, context, custom

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "third-party" / "sensors-data"
if not FIXTURES.exists():
    FIXTURES = Path("/work/shared/fixtures/third-party/sensors-data")
PROJECT = "sensors_project"

GZIP_RID = "d612c941112ddb8a0f186bb0725be01a"  # gzip-raw-data.json: crc=…&gzip=1&data_list=…
WEB_RID = "efffb319dd330d245578652724a0f0dd"  # web-sdk-data.json: data=…&ext=crc%3D…, same 9 records
DEVICE = "9113946abd821d52"
# The 9 records of both gzip bodies, in order (two are profile_set records without an event).
GZIP_NAMES = [
    "$AppViewScreen",
    "$AppViewScreen",
    "_profile_set",
    "_profile_set",
    "user_login",
    "$AppViewScreen",
    "$AppEnd",
    "$AppStart",
    "$AppViewScreen",
]


@pytest.fixture(scope="module")
def requests(spark):
    return decode.read_requests(spark, [str(p) for p in sorted(FIXTURES.glob("*.json"))])


@pytest.fixture(scope="module")
def rows(spark, requests) -> list[dict]:
    return collect(SensorsDataTransformer({}, context(spark, PROJECT)).transform(requests))


def of_file(rows: list[dict], name: str) -> list[dict]:
    return sorted((r for r in rows if Path(r["_input_file"]).name == name), key=lambda r: r["event_id"])


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows}


def form_body(records, field: str = "data_list") -> str:
    packed = base64.b64encode(gzip.compress(json.dumps(records).encode())).decode()
    return f"crc=1&gzip=1&{field}={quote(packed, safe='')}"


def test_output_columns_and_types_equal_the_sdk_transformers(spark, requests):
    ctx = context(spark, PROJECT)
    sensors = SensorsDataTransformer({}, ctx).transform(requests).schema
    sdk = ClickstreamSdkTransformer({}, ctx).transform(requests).schema
    assert [(f.name, f.dataType.simpleString()) for f in sensors] == [(f.name, f.dataType.simpleString()) for f in sdk]


def test_events_per_fixture_and_no_bad_rows(rows):
    per_file = Counter(Path(r["_input_file"]).name for r in rows)
    assert per_file == {
        "gzip-raw-data.json": 9,
        "web-sdk-data.json": 9,
        "track-signup-data.json": 2,  # $is_first_time adds a _first_open copy
        "unzip-data.json": 1,
        "unzip-item-data.json": 1,
    }
    assert [r["_bad_reason"] for r in rows if r["_bad_reason"]] == []


def test_gzip_form_body_is_inflated_and_mapped(rows):
    events = by_id(of_file(rows, "gzip-raw-data.json"))
    assert [events[f"{GZIP_RID}-{i}-{DEVICE}"]["event_name"] for i in range(9)] == GZIP_NAMES
    row = events[f"{GZIP_RID}-0-{DEVICE}"]
    # The reference's event time is the request's ingest time; the record's own time is the session start.
    assert row["event_time_msec"] == row["ingest_time_msec"] == row["_ts_ms"] == 1689819527411
    assert row["session_start_time_msec"] == 1689819428756
    assert row["user_first_touch_time_msec"] == 1689819428756
    assert row["project_id"] == PROJECT
    assert row["app_id"] == "sensorTest"
    assert row["user_pseudo_id"] == DEVICE
    assert row["user_id"] == DEVICE  # no login id: anonymous_id, as the reference does
    assert row["platform"] == "Android"
    assert (row["device_operating_system"], row["device_operating_system_version"]) == ("Android", "12")
    assert row["device_mobile_brand_name"] == "GOOGLE"
    assert row["device_mobile_model_name"] == "sdk_gphone64_arm64"
    assert row["device_manufacturer"] == "GOOGLE"
    assert row["device_carrier"] == "T-Mobile"
    assert row["device_network_type"] == "WIFI"
    assert row["device_vendor_id"] == DEVICE
    assert row["device_time_zone_offset_seconds"] == 8 * 3600  # $timezone_offset -480: minutes west of UTC
    assert (row["device_screen_width"], row["device_screen_height"]) == (1080, 2400)
    assert row["app_package_id"] == "com.farmerbb.notepad"
    assert row["app_title"] == "Notepad"
    assert row["app_version"] == "3.0.3"
    assert (row["sdk_name"], row["sdk_version"]) == ("Android", "6.7.2")
    assert row["page_view_page_url"] == "com.farmerbb.notepad.android.NotepadActivity"
    assert row["page_view_page_title"] == "Notepad"
    assert row["page_view_page_referrer"] is None
    assert row["screen_view_screen_name"] == "com.farmerbb.notepad.android.NotepadActivity"
    # No $ip/$user_agent in the properties: the request's.
    assert row["ua"] == "Dalvik/2.1.0 (Linux; U; Android 12; sdk_gphone64_arm64 Build/SE1A.220630.001)"
    assert row["ip"] == "54.222.45.3"
    assert custom(row, "$time") == ("1689819428756", "number")
    assert custom(row, "$distinct_id") == (DEVICE, "string")
    assert custom(row, "$identity_android_id") == (DEVICE, "string")
    assert custom(row, "_track_id") == ("-1231263868", "number")
    assert custom(row, "$lib_method") == ("autoTrack", "string")
    assert custom(row, "$lib_plugin_version") == ('["android:3.5.3"]', "object")
    assert "$os" not in row["custom_parameters"]
    assert row["_user_properties"] is None
    assert json.loads(row["_payload"])["_track_id"] == -1231263868

    referred = events[f"{GZIP_RID}-5-{DEVICE}"]
    assert referred["page_view_page_referrer"] == "com.farmerbb.notepad.android.LoginActivity"
    assert referred["page_view_page_referrer_title"] == "Notepad"
    assert referred["session_start_time_msec"] == 1689819439535
    # event_duration is seconds: 568.059 s.
    assert events[f"{GZIP_RID}-6-{DEVICE}"]["user_engagement_time_msec"] == 568059
    assert events[f"{GZIP_RID}-7-{DEVICE}"]["app_start_is_first_time"] is False


def test_profile_set_records_carry_user_properties(rows):
    events = by_id(of_file(rows, "gzip-raw-data.json"))
    first, second = events[f"{GZIP_RID}-2-{DEVICE}"], events[f"{GZIP_RID}-3-{DEVICE}"]
    assert first["_user_properties"] == {
        "_user_id": {"value": "007160b9-fe02-4dbc-ad37-6e380584ef2a", "type": "string", "set_time_msec": None}
    }
    assert second["_user_properties"] == {"_user_name": {"value": "adfd", "type": "string", "set_time_msec": None}}
    assert first["session_start_time_msec"] == 1689819439439
    assert first["platform"] == "Android"  # from lib.$lib: a profile record has no $os
    assert "_user_id" not in first["custom_parameters"]


def test_web_sdk_data_form_body_decodes_the_same_records(rows):
    events = by_id(of_file(rows, "web-sdk-data.json"))
    assert [events[f"{WEB_RID}-{i}-{DEVICE}"]["event_name"] for i in range(9)] == GZIP_NAMES
    row = events[f"{WEB_RID}-8-{DEVICE}"]
    assert row["event_time_msec"] == 1690779794000
    assert row["session_start_time_msec"] == 1689819493554
    assert row["ua"].startswith("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)")
    assert row["ip"] == "205.251.233.179"


def test_plain_json_record_with_login_id_and_first_time(rows):
    events = by_id(of_file(rows, "track-signup-data.json"))
    rid = "07157da84281bb7234ba6f8613df7d32"
    row, first_open = events[f"{rid}-0-x1234567"], events[f"{rid}-0-x1234567-first-open"]
    assert (row["event_name"], first_open["event_name"]) == ("ViewProduct", "_first_open")
    for r in (row, first_open):
        assert r["event_time_msec"] == 1682319109403
        assert r["session_start_time_msec"] == 1689731540000
        assert r["user_pseudo_id"] == "x1234567"
        assert r["user_id"] == "130xxxx1234"  # identities.$identity_login_id
        assert r["app_id"] == "uba-app"  # the envelope's appId, as the reference reads it
        # $ip and $user_agent of the payload win over the request's 13.212.229.59 / Apache-HttpClient.
        assert r["ip"] == "180.79.35.65"
        assert r["ua"].startswith("Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_2")
    assert row["platform"] == "Web"  # no $os
    assert row["app_start_is_first_time"] is True
    assert (row["device_screen_width"], row["device_screen_height"]) == (320, 568)
    assert row["device_network_type"] == "WIFI"  # from $wifi
    assert (row["app_package_id"], row["app_title"], row["app_version"]) == ("testAppId", "testApp", "1.3")
    assert custom(row, "product_id") == ("12345", "number")
    assert custom(row, "product_name") == ("Apple", "string")
    assert custom(row, "item_price") == ("1123.8", "number")
    assert custom(row, "$city") == ("Xi'an", "string")
    assert custom(row, "$identity_login_id") == ("130xxxx1234", "string")
    assert custom(row, "project") == ("ebiz_test", "string")
    assert row["_items"] is None


def test_items(rows):
    [row] = of_file(rows, "unzip-item-data.json")
    assert row["event_id"] == "07157da84281bb7234ba6f8613df7d32-0-123456"
    [item] = row["_items"]
    assert item["item_id"] == "123456"
    assert (item["name"], item["price"], item["currency"]) == (None, None, None)
    assert item["custom_parameters"] == {}


def test_inflate_limits_and_errors(monkeypatch):
    text = '[{"event":"e"}]'
    packed = gzip.compress(text.encode())
    assert inflate(packed) == (text, None)
    assert inflate(text.encode()) == (text, None)  # gzip=0: Base64 of the JSON itself
    assert inflate(None) == (None, None)
    assert inflate(packed[:-6]) == (None, "gzip data is truncated")
    assert inflate(b"plain words") == (None, "data is neither gzip nor JSON")
    assert inflate(gzip.compress(b"\xff\xfe[")) == (None, "data is not UTF-8")
    assert inflate(b"\x1f\x8b" + b"\x00" * 20)[1].startswith("gzip data does not inflate")
    monkeypatch.setattr(sensors_data, "MAX_INFLATED_BYTES", 10)
    assert inflate(packed) == (None, "inflated data over 10 bytes")


def test_unusable_input_becomes_bad_rows_with_its_payload(spark, tmp_path):
    good = {"distinct_id": "d1", "type": "track", "event": "$pageview", "properties": {"$url": "https://a.example/p"}}
    no_distinct = {"type": "track", "event": "$pageview"}
    no_event = {"distinct_id": "d2", "type": "track"}
    unset = {"distinct_id": "d3", "type": "profile_unset", "properties": {"x": None}}
    not_base64 = "crc=1&gzip=1&data_list=%21%21%21"
    cut = "gzip=1&data_list=" + quote(base64.b64encode(gzip.compress(json.dumps([good]).encode())[:-6]).decode())
    path = write_records(
        tmp_path / "bad.json",
        [
            record("form", form_body([good, no_distinct, no_event, unset])),
            record("web", form_body([good], field="data")),
            record("no-data", "crc=1&gzip=1"),
            record("not-base64", not_base64),
            record("truncated", cut),
            record("words", "crc=1&data_list=" + base64.b64encode(b"plain words").decode()),
            record("no-app", [good], appId=None),
        ],
    )
    out = collect(SensorsDataTransformer({}, context(spark, PROJECT)).transform(decode.read_requests(spark, [path])))
    got = {(r["_rid"], r["_event_index"]): (r["_bad_reason"], r["_bad_detail"]) for r in out}
    assert got == {
        ("form", 0): (None, None),
        ("form", 1): ("missing_field", "missing distinct_id"),
        ("form", 2): ("missing_field", "missing event"),
        ("form", 3): ("missing_field", "missing event"),
        ("web", 0): (None, None),
        ("no-data", 0): ("corrupt", "body is neither JSON nor a form with data_list/data"),
        ("not-base64", 0): ("corrupt", "data is not Base64"),
        ("truncated", 0): ("corrupt", "gzip data is truncated"),
        ("words", 0): ("corrupt", "data is neither gzip nor JSON"),
        ("no-app", 0): ("missing_field", "missing appId"),
    }
    by_key = {(r["_rid"], r["_event_index"]): r for r in out}
    # An event's payload is its own (inflated) JSON text; an undecodable request keeps its body.
    assert json.loads(by_key[("form", 1)]["_payload"]) == no_distinct
    assert by_key[("not-base64", 0)]["_payload"] == not_base64
    good_row = by_key[("form", 0)]
    assert good_row["event_id"] == "form-0-d1"
    assert good_row["page_view_page_url"] == "https://a.example/p"
    assert good_row["page_view_hostname"] == "a.example"
    assert (good_row["ua"], good_row["ip"], good_row["platform"]) == ("request-ua", "10.1.2.3", "Web")
