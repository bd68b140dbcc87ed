"""The job with its default chain of enrichers (user agent, IP geo with a test database, traffic
source): enrichment lands in event_v2 and session, bots become bad rows, counts add up. The same
input also goes through the enrichers' Spark path (nothing fused into the SDK transformer's pass)
and must give the same rows."""

from __future__ import annotations

import json

from clickstream_etl.config import EtlConfig
from clickstream_etl.job import run
from clickstream_etl.plugins import Enricher
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.etl.rawfiles import UA_CHROME, line, read_bad_rows, write_object
from tests.etl.test_job import T0, table

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Mobile/15E148 Safari/604.1"
)


def _mmdb(path) -> str:
    writer = MMDBWriter(ip_version=4, database_type="job-test-city")
    record = {"city": "London", "country_code": "GB", "state1": "England", "latitude": 0.0, "longitude": 0.0}
    writer.insert_network(IPSet(["81.2.69.128/25"]), record)
    writer.to_db_file(str(path))
    return str(path)


def _event(event_id: str, ts: int, name: str, session: str, **attributes) -> dict:
    return {
        "event_type": name, "event_id": event_id, "app_id": "shop", "unique_id": f"user-{session}",
        "device_id": "d", "timestamp": ts, "platform": "Web",
        "attributes": {"_session_id": session, "_session_start_timestamp": T0 - 60_000, **attributes},
    }  # fmt: skip


class PassThrough(Enricher):
    """First in a chain, it keeps the transformer from fusing the enrichers after it."""

    reads_input_twice = False

    def transform(self, df):
        return df


def _comparable(sink) -> dict[str, dict]:
    rows = {}
    for row in table(sink, "event_v2"):
        row.pop("created_time")
        info = row.pop("process_info")
        rows[row["event_id"]] = {**row, "process_info": {k: v for k, v in info.items() if not k.startswith("process")}}
    return rows


def test_default_chain_enriches_events_and_sessions(spark, tmp_path):
    database = _mmdb(tmp_path / "job-test-geo-ipv4.mmdb")
    landing = "https://shop.example.com/?utm_source=newsletter&utm_medium=email&utm_campaign=autumn"
    lines = [
        # Session a: lands directly, then a page view with a campaign URL: the session is Email.
        line(
            [
                _event("a1", T0 - 50_000, "_session_start", "a", _page_url="https://shop.example.com/"),
                _event("a2", T0 - 40_000, "_page_view", "a", _page_url=landing),
            ],
            ingest_ms=T0, ua=UA_CHROME, ip="81.2.69.130",
        ),
        # Session b: from Google search results on an iPhone.
        line(
            [_event("b1", T0 - 30_000, "_page_view", "b", _page_url="https://shop.example.com/p",
                    _latest_referrer="https://www.bing.com/search?q=red+shoes",
                    _latest_referrer_host="www.bing.com")],
            ingest_ms=T0, ua=IPHONE, ip="198.51.100.4",
        ),
        line([_event("bot1", T0 - 20_000, "_page_view", "c")], ingest_ms=T0, ua=GOOGLEBOT),
    ]  # fmt: skip
    write_object(tmp_path / "raw", lines, T0)
    plugins = {
        "transformer": "clickstream_sdk",
        "enrichers": ["user_agent", {"name": "ip_geo", "params": {"database": database}}, "traffic_source"],
    }
    config = EtlConfig(source=str(tmp_path / "raw"), sink=str(tmp_path / "ods"), plugins=json.dumps(plugins))
    report = run(config, start="0", end=str(T0 + 1), spark=spark)
    assert report.good == 3 and report.bad == {"bot": 1} and report.events == 4
    assert report.fused_enrichers == ["user_agent", "ip_geo"]

    unfused = {**plugins, "enrichers": [f"{__name__}:PassThrough", *plugins["enrichers"]]}
    config = EtlConfig(source=str(tmp_path / "raw"), sink=str(tmp_path / "joined"), plugins=json.dumps(unfused))
    joined = run(config, start="0", end=str(T0 + 1), spark=spark)
    assert joined.fused_enrichers == [] and (joined.good, joined.bad) == (report.good, report.bad)
    assert _comparable(tmp_path / "joined") == _comparable(tmp_path / "ods")

    rows = {r["event_id"]: r for r in table(tmp_path / "ods", "event_v2")}
    a1, a2, b1 = rows["a1"], rows["a2"], rows["b1"]
    assert (a1["device_ua_browser"], a1["device_ua_os"], a1["device_ua_browser_version"]) == (
        "Chrome",
        "Windows",
        "126.0.0",
    )
    assert a1["device_ua"]["string"] == UA_CHROME
    assert (b1["device_ua_browser"], b1["device_ua_os"], b1["device_ua_device"]) == ("Mobile Safari", "iOS", "iPhone")
    assert b1["device_ua_device_category"] == "Mobile"
    assert (a1["geo_city"], a1["geo_country"], a1["geo_continent"], a1["geo_region"]) == (
        "London", "United Kingdom", "Europe", "England",
    )  # fmt: skip
    assert b1["geo_country"] is None  # not in the test database
    assert a1["traffic_source_channel_group"] == "Direct"
    assert (a2["traffic_source_source"], a2["traffic_source_medium"], a2["traffic_source_campaign"]) == (
        "newsletter", "email", "autumn",
    )  # fmt: skip
    assert a2["traffic_source_channel_group"] == "Email"
    assert b1["traffic_source_category"] == "Search" and b1["traffic_source_channel_group"] == "Organic Search"
    assert b1["traffic_source_term"] in ("red shoes", "red+shoes")

    sessions = {s["session_id"]: s for s in table(tmp_path / "ods", "session")}
    # The earliest event of session a is Direct; its campaign page view wins.
    assert sessions["a"]["event_timestamp"].timestamp() * 1000 == T0 - 50_000
    assert (sessions["a"]["session_source"], sessions["a"]["session_channel_group"]) == ("newsletter", "Email")
    assert sessions["b"]["session_source_category"] == "Search"
    assert "c" not in sessions

    (bot,) = read_bad_rows(tmp_path / "ods")
    assert bot["reason"] == "bot" and bot["event_id"] == "bot1" and "Googlebot" in bot["detail"]
    assert json.loads(bot["payload"])["event_id"] == "bot1"
