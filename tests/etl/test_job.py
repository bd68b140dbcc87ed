"""The ETL job end to end on local files: fixtures in, four tables + bad rows out.

Every run goes through `clickstream_etl.job.run` on the shared SparkSession, with explicit
windows so the tests do not depend on the clock.
"""

from __future__ import annotations

import json

import duckdb
import pytest
from clickstream_etl.config import EtlConfig
from clickstream_etl.job import run

from tests.etl.rawfiles import fixtures_dir, line, read_bad_rows, recorded_lines, write_object

NO_ENRICHERS = '{"enrichers": []}'
T0 = 1_795_811_600_000  # 2026-11-27T15:13:20Z, near the web SDK recordings


def table(sink, name: str) -> list[dict]:
    files = list((sink / name).rglob("*.parquet"))
    if not files:
        return []
    con = duckdb.connect()
    rel = con.sql(f"select * from read_parquet('{sink / name}/**/*.parquet', hive_partitioning=true)")
    return [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()]


def etl(spark, tmp_path, start=None, end=None, **overrides):
    config = EtlConfig(
        source=str(tmp_path / "raw"), sink=str(tmp_path / "ods"), plugins=overrides.pop("plugins", NO_ENRICHERS),
        **overrides,
    )  # fmt: skip
    return run(config, start=start, end=end, spark=spark)


def test_web_sdk_recordings_map_every_event(spark, tmp_path):
    lines = recorded_lines("immediate.jsonl") + recorded_lines("batch.jsonl")
    write_object(tmp_path / "raw", lines, T0)
    report = etl(spark, tmp_path, start="0", end=str(T0 + 1))
    assert report.status == "succeeded"
    sent = {}
    for name in ("immediate.jsonl", "batch.jsonl"):
        for text in (fixtures_dir() / "web-sdk" / name).read_text().splitlines():
            req = json.loads(text)
            if req["method"] == "POST":
                for event in req["decoded"]:
                    sent[event["event_id"]] = (event, req)
    rows = {r["event_id"]: r for r in table(tmp_path / "ods", "event_v2")}
    assert report.events == len(sent) == report.good == len(rows) == 30
    for event_id, (event, req) in sent.items():
        row = rows[event_id]
        attrs = event["attributes"]
        assert row["event_name"] == event["event_type"]
        assert row["event_time_msec"] == event["timestamp"]
        assert row["event_timestamp"].timestamp() * 1000 == event["timestamp"]
        assert row["ingest_time_msec"] == req["t"]
        assert row["app_id"] == "shop" and row["partition_app"] == "shop"
        assert row["project_id"] == "default"
        assert row["platform"] == "Web"
        assert row["device_operating_system"] is None  # only Android/iOS/WeChatMP
        assert row["user_pseudo_id"] == event["unique_id"]
        assert row["device_vendor_id"] == event["device_id"]
        assert row["device_manufacturer"] == event["make"]
        assert row["device_screen_width"] == event["screen_width"]
        assert row["device_screen_height"] == event["screen_height"]
        assert row["device_viewport_width"] == event["viewport_width"]
        assert row["device_time_zone_offset_seconds"] == event["zone_offset"] // 1000
        assert row["device_system_language"] == event["system_language"]
        assert row["geo_locale"] == event["locale"]
        assert row["sdk_name"] == event["sdk_name"] and row["sdk_version"] == event["sdk_version"]
        assert row["session_id"] == attrs["_session_id"]
        assert row["session_start_time_msec"] == attrs["_session_start_timestamp"]
        assert row["session_duration"] == attrs["_session_duration"]
        assert row["session_number"] == attrs["_session_number"]
        assert row["page_view_page_url"] == attrs["_page_url"]
        assert row["page_view_page_title"] == attrs["_page_title"]
        assert row["page_view_hostname"] == "127.0.0.1"
        assert row["page_view_page_url_path"] == "/" + attrs["_page_url"].split("/", 3)[3].split("?")[0]
        assert row["event_bundle_sequence_id"] == int(req["query"]["event_bundle_sequence_id"][0])
        assert row["user_first_touch_time_msec"] == event["user"]["_user_first_touch_timestamp"]["value"]
        expected_user_id = event["user"].get("_user_id", {}).get("value")
        assert row["user_id"] == expected_user_id
        if event["event_type"] == "_page_view":
            assert row["page_view_entrances"] == bool(attrs["_entrances"])
            assert row["page_view_previous_time_msec"] == attrs.get("_previous_timestamp")
            assert row["page_view_engagement_time_msec"] == attrs.get("_engagement_time_msec")
        if event["event_type"] == "_user_engagement":
            assert row["user_engagement_time_msec"] == attrs["_engagement_time_msec"]
        custom = {k: v for k, v in attrs.items() if not k.startswith("_")}
        if custom:
            assert json.loads(row["custom_parameters_json_str"]) == custom
            for key, value in custom.items():
                kind = "number" if isinstance(value, int | float) and not isinstance(value, bool) else "string"
                kind = "boolean" if isinstance(value, bool) else kind
                assert row["custom_parameters"][key] == {
                    "value": str(value).lower() if kind == "boolean" else str(value),
                    "type": kind,
                }
        info = row["process_info"]
        assert info["rid"] == f"{req['seq']:032x}"
        assert info["source_ip"] == "203.0.113.7"
        assert info["upload_time"] == req["query"]["upload_timestamp"][0]
        assert info["process_job_id"] == report.job_id
        assert "ua" not in row and "ip" not in row
    # Sessions: one per (user, session id) from the earliest of its session events.
    sessions = table(tmp_path / "ods", "session")
    expected_sessions = {
        (e["unique_id"], e["attributes"]["_session_id"])
        for e, _ in sent.values()
        if e["event_type"] in ("_session_start", "_page_view", "_user_engagement", "_screen_view", "_app_end")
    }
    assert {(s["user_pseudo_id"], s["session_id"]) for s in sessions} == expected_sessions
    for s in sessions:
        evs = [e for e, _ in sent.values() if e["attributes"]["_session_id"] == s["session_id"]]
        first = min((e for e in evs if e["event_type"] != "_first_open"), key=lambda e: e["timestamp"])
        assert s["event_timestamp"].timestamp() * 1000 == first["timestamp"]
        assert s["session_start_time_msec"] == first["attributes"]["_session_start_timestamp"]
        assert s["session_number"] == first["attributes"]["_session_number"]
    users = table(tmp_path / "ods", "user_v2")
    assert {u["user_pseudo_id"] for u in users} == {e["unique_id"] for e, _ in sent.values()}
    for u in users:
        evs = [e for e, _ in sent.values() if e["unique_id"] == u["user_pseudo_id"]]
        firsts = [e for e in evs if e["event_type"] in ("_first_open", "_first_visit", "_session_start")]
        first = min(firsts, key=lambda e: e["timestamp"])
        assert u["first_touch_time_msec"] == first["user"]["_user_first_touch_timestamp"]["value"]
        assert u["event_timestamp"].timestamp() * 1000 == max(e["timestamp"] for e in evs)


def test_reference_raw_fixtures(spark, tmp_path):
    ref = fixtures_dir() / "reference-raw"
    lines = [
        x.encode() + b"\n"
        for f in ("zip_data_app1.json", "none_zip_data_app2.json")
        for x in (ref / f).read_text().splitlines()
        if x.strip()
    ]
    write_object(tmp_path / "raw", lines, T0)
    report = etl(spark, tmp_path, start="0", end=str(T0 + 1))
    # app1's events happened seven months before they arrived: too late for the 72 h window.
    assert report.requests == 3 and report.events == 103
    assert report.bad == {"too_late": 100} and report.good == 3
    bad = read_bad_rows(tmp_path / "ods")
    assert len(bad) == 100 and {b["app_id"] for b in bad} == {"app1"}
    assert all(json.loads(b["payload"])["app_id"] == "app1" for b in bad)
    rows = {r["event_id"]: r for r in table(tmp_path / "ods", "event_v2")}
    row = rows["event_id-e1705563189478-8969"]
    assert row["event_name"] == "PageView3"
    assert row["event_time_msec"] == 1705563189478
    assert row["ingest_time_msec"] == 1705563189000
    assert row["platform"] == "ANDROID" and row["device_operating_system"] == "Android"
    assert row["device_mobile_brand_name"] == "Brand HUAWEI"
    assert row["device_mobile_model_name"] == "HUAWEI-P10"
    assert row["device_manufacturer"] == "Make HUAWEI"
    assert row["device_carrier"] == "CDMA" and row["device_network_type"] == "Mobile"
    assert row["device_operating_system_version"] == "v1.0.1-v1.0.x-202308230820-95b4cde"
    assert row["device_vendor_id"] == "device_id5"
    assert row["device_advertising_id"] == "uf24bec657ea8eff7"
    assert row["device_screen_height"] == 2259 and row["device_screen_width"] == 1080
    assert row["device_viewport_height"] == 123 and row["device_viewport_width"] == 456
    assert row["device_time_zone_offset_seconds"] == 28800
    assert row["geo_locale"] == "zh_CN_#Hans"
    assert row["user_pseudo_id"] == "USER-U1660168"
    assert row["user_id"] == "U1660134"
    assert row["user_first_touch_time_msec"] == 1705563189445
    assert row["traffic_source_source"] == "TSS-1-" and row["traffic_source_medium"] == "TSM-1-1705542178771"
    assert row["page_view_page_referrer"] == "http://test.com/test1-1705542178771"
    assert row["app_start_is_first_time"] is True
    assert row["session_id"] == "see000201912dk-23u92-1df0020"
    assert row["session_start_time_msec"] == 1667963966697 and row["session_duration"] == 690000
    assert row["app_package_id"] == "com.example.demoapplication" and row["app_version"] == "1.0"
    assert row["custom_parameters"]["_is_first_day"] == {"value": "true", "type": "boolean"}
    assert row["custom_parameters"]["_channel"] == {"value": "C0011705542178771", "type": "string"}
    assert row["event_bundle_sequence_id"] == 470690
    items = [i for i in table(tmp_path / "ods", "item_v2") if i["event_id"] == row["event_id"]]
    assert {i["item_id"] for i in items} == {"Item1-660168", "Item2-60168"}
    first = next(i for i in items if i["item_id"] == "Item1-660168")
    assert first["price"] == 123.2 and first["currency"] == "RMB" and first["brand"] == "test-brand-01705563189478"
    assert first["category5"] == "test-category5-0" and first["location_id"] == "location_id#test-0"
    users = {u["user_pseudo_id"]: u for u in table(tmp_path / "ods", "user_v2")}
    props = users["USER-U1660168"]["user_properties"]
    # The newest _profile_set of the user wins.
    assert props["_user_name"]["value"] == "Yon.L-1705563189478-470690"
    assert props["_user_age"] == {"value": "83", "type": "number", "set_time_msec": 1705563189478}


def test_reference_app1_within_a_longer_freshness(spark, tmp_path):
    ref = fixtures_dir() / "reference-raw" / "zip_data_app1.json"
    write_object(tmp_path / "raw", [x.encode() + b"\n" for x in ref.read_text().splitlines() if x.strip()], T0)
    report = etl(spark, tmp_path, start="0", end=str(T0 + 1), freshness_hours=24 * 365.0)
    assert report.good == 100 and report.bad == {}
    rows = table(tmp_path / "ods", "event_v2")
    # gzip+Base64 bodies decode to the same kind of rows.
    assert {r["partition_app"] for r in rows} == {"app1"}
    assert {r["platform"] for r in rows} == {"Android"}
    assert sum(1 for r in rows if r["event_name"] == "_screen_view") > 0


def test_rerun_of_a_window_replaces_its_output(spark, tmp_path):
    write_object(tmp_path / "raw", recorded_lines("immediate.jsonl"), T0)
    first = etl(spark, tmp_path, start="0", end=str(T0 + 1))
    files_before = sorted(
        p.relative_to(tmp_path) for p in (tmp_path / "ods").rglob("*.parquet") if "_etl" not in p.parts
    )
    second = etl(spark, tmp_path, start="0", end=str(T0 + 1))
    files_after = sorted(
        p.relative_to(tmp_path) for p in (tmp_path / "ods").rglob("*.parquet") if "_etl" not in p.parts
    )
    assert first.good == second.good == 15 and second.bad == {}  # not "duplicate": its own output
    assert files_before == files_after
    assert len(table(tmp_path / "ods", "event_v2")) == 15


def test_retried_batches_are_deduplicated_within_and_across_runs(spark, tmp_path):
    lines = recorded_lines("retry-immediate.jsonl")  # every POST, 503-answered ones included
    write_object(tmp_path / "raw", lines[:12], T0, name="a")
    first = etl(spark, tmp_path, end=str(T0 + 1))  # from the watermark (none yet: everything)
    rows = table(tmp_path / "ods", "event_v2")
    assert len(rows) == len({r["event_id"] for r in rows}) == first.good
    write_object(tmp_path / "raw", lines[12:], T0 + 500, name="b")
    second = etl(spark, tmp_path, end=str(T0 + 1000))
    rows = table(tmp_path / "ods", "event_v2")
    assert len(rows) == len({r["event_id"] for r in rows}) == 15
    assert first.events + second.events == 24
    assert first.good + second.good == 15
    assert (first.bad.get("duplicate", 0) + second.bad.get("duplicate", 0)) == 9
    dups = [b for b in read_bad_rows(tmp_path / "ods") if b["reason"] == "duplicate"]
    assert len(dups) == 9 and {b["event_id"] for b in dups} <= {r["event_id"] for r in rows}


def _event(event_id: str, ts: int, name: str = "_page_view", app_id: str = "shop", **extra) -> dict:
    event = {
        "event_type": name, "event_id": event_id, "app_id": app_id, "unique_id": "u1", "device_id": "d1",
        "timestamp": ts, "platform": "Web", "attributes": {"_session_id": "s1", "_session_start_timestamp": ts},
    }  # fmt: skip
    event.update(extra)
    return event


def test_late_future_and_skewed_events(spark, tmp_path):
    now = T0
    hour = 3_600_000
    lines = [
        line([_event("late", now - 80 * hour)], ingest_ms=now),
        line([_event("late-first-open", now - 80 * hour, name="_first_open")], ingest_ms=now),
        line([_event("fresh", now - 71 * hour)], ingest_ms=now),
        # Client clock one hour ahead, the upload time says so: shifted back by the difference.
        line([_event("skewed", now + hour - 500)], ingest_ms=now, upload_ms=now + hour),
        # In the future with no upload time: rejected.
        line([_event("future", now + hour)], ingest_ms=now),
        # A few minutes ahead (within the tolerance): clock noise, kept as sent.
        line([_event("ahead", now + 120_000)], ingest_ms=now),
    ]
    write_object(tmp_path / "raw", lines, now)
    report = etl(spark, tmp_path, start="0", end=str(now + 1))
    assert report.bad == {"too_late": 1, "in_future": 1}
    rows = {r["event_id"]: r for r in table(tmp_path / "ods", "event_v2")}
    assert set(rows) == {"late-first-open", "fresh", "skewed", "ahead"}
    assert rows["skewed"]["event_time_msec"] == now - 500
    assert rows["skewed"]["session_start_time_msec"] == now - 500  # every client time moves together
    info = rows["skewed"]["process_info"]
    assert info["event_timestamp_adjusted"] == "true" and info["event_timestamp_adjusted_from"] == str(now + hour - 500)
    assert rows["ahead"]["event_time_msec"] == now + 120_000
    assert rows["fresh"]["event_time_msec"] == now - 71 * hour
    bad = {b["event_id"]: b for b in read_bad_rows(tmp_path / "ods")}
    assert bad["late"]["reason"] == "too_late" and json.loads(bad["late"]["payload"])["event_id"] == "late"
    assert bad["future"]["reason"] == "in_future"


def test_clock_skew_shift_when_enabled(spark, tmp_path):
    now = T0
    lines = [line([_event("slow-clock", now - 20 * 60_000)], ingest_ms=now, upload_ms=now - 15 * 60_000)]
    write_object(tmp_path / "raw", lines, now)
    etl(spark, tmp_path, start="0", end=str(now + 1), time_shift=True)
    (row,) = table(tmp_path / "ods", "event_v2")
    assert row["event_time_msec"] == now - 5 * 60_000  # moved by ingest - upload = 15 min


def test_corrupt_input_and_unknown_apps_become_bad_rows(spark, tmp_path):
    apps = tmp_path / "apps.yaml"
    apps.write_text("project_id: proj1\napps:\n  - app_id: shop\n")
    now = T0
    lines = [
        line("this is neither json nor base64 gzip!", ingest_ms=now),
        line('[{"event_id": "broken", ', ingest_ms=now),  # truncated JSON
        line('[7, {"event_id": "no-time", "app_id": "shop", "event_type": "x", "unique_id": "u"}]', ingest_ms=now),
        line([_event("other-app", now - 1000, app_id="elsewhere")], ingest_ms=now, app_id="elsewhere"),
        line([_event("good", now - 1000)], ingest_ms=now, gzip_base64=True),
        b"not a raw record at all\n",
    ]
    write_object(tmp_path / "raw", lines, now)
    report = etl(spark, tmp_path, start="0", end=str(now + 1), app_config=str(apps))
    assert report.good == 1
    assert report.bad == {"corrupt": 4, "missing_field": 1, "unknown_app": 1}
    assert report.events == report.good + sum(report.bad.values())
    bad = read_bad_rows(tmp_path / "ods")
    by_payload = {b["payload"]: b for b in bad}
    assert by_payload["this is neither json nor base64 gzip!"]["reason"] == "corrupt"
    assert by_payload["not a raw record at all"]["reason"] == "corrupt"
    assert by_payload["7"]["detail"] == "event is not a JSON object"
    missing = next(b for b in bad if b["reason"] == "missing_field")
    assert missing["event_id"] == "no-time" and "timestamp" in missing["detail"]
    (row,) = table(tmp_path / "ods", "event_v2")
    assert row["event_id"] == "good" and row["project_id"] == "proj1"


def test_window_without_input_succeeds_empty(spark, tmp_path):
    (tmp_path / "raw").mkdir()
    report = etl(spark, tmp_path)
    assert report.status == "succeeded" and report.events == 0 and report.input_files == 0
    assert all(n == 0 for n in report.tables.values())
    latest = json.loads((tmp_path / "ods" / "_etl" / "job-latest.json").read_text())
    assert latest["end_ms"] == report.window["end_ms"]


def test_watermark_reads_each_object_once(spark, tmp_path):
    write_object(tmp_path / "raw", [line([_event("e1", T0)], ingest_ms=T0)], T0, name="first")
    one = etl(spark, tmp_path, end=str(T0 + 1000))
    write_object(tmp_path / "raw", [line([_event("e2", T0 + 2000)], ingest_ms=T0 + 2000)], T0 + 2000, name="second")
    two = etl(spark, tmp_path, end=str(T0 + 5000))
    three = etl(spark, tmp_path, end=str(T0 + 6000))
    assert (one.input_files, two.input_files, three.input_files) == (1, 1, 0)
    assert one.window["end_ms"] == T0 + 1000 == two.window["start_ms"]
    assert {r["event_id"] for r in table(tmp_path / "ods", "event_v2")} == {"e1", "e2"}


@pytest.mark.parametrize("bad_end", ["yesterday"])
def test_cli_rejects_bad_configuration(bad_end, capsys):
    from clickstream_etl.cli import main

    assert main(["run", "--end", bad_end]) == 2
    err = capsys.readouterr().err
    assert "ETL_SOURCE_URI (--source) is required" in err
    assert "ETL_SINK_URI (--sink) is required" in err
    assert "--end: 'yesterday' is neither epoch milliseconds nor ISO-8601" in err
