"""End to end with the official web SDK: `@aws/clickstream-web` 0.12.6 in headless Chromium.

The page (tests/browser/src, bundled by `bash tests/browser/setup.sh`) is served from its own port,
so every upload is a credentialed cross-origin request with a CORS preflight. The driver
(tests/browser/driver.mjs, playwright-core) runs the same shop scenario in Immediate and in Batch
send mode, each in a fresh browser context, and reports every request the page made (URL, exact
body, status seen by the page), the preflights (from the DevTools protocol), and the SDK's
localStorage queues. The stack is then stopped (which drains everything to the lake) and the raw
records are checked against what the browser sent.

The whole module runs once per buffer: the worker's own S3 sink, and through Kafka (a real broker)
and Kinesis (the emulators), where kinesis-s3-sink lands the stream in the same lake.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from scripts.stack import LocalStack
from tests.support import read_lake, wait_for

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
DIST = BROWSER_DIR / "dist"
DRIVER = BROWSER_DIR / "driver.mjs"
CHROMIUM = Path("/usr/bin/chromium")
MODES = ("Immediate", "Batch")
URI_PREFIX = "/collect?platform=Web&appId=shop&event_bundle_sequence_id="
RID = re.compile(r"[0-9a-f]{32}")
SINKS = ("s3", "kafka", "kinesis")


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (Debian package `chromium`)"
    if not (DIST / "page.js").exists() or not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        return "the web SDK test bundle is not built: run `bash tests/browser/setup.sh`"
    return None


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(_missing() is not None, reason=_missing() or ""),
    pytest.mark.timeout(180),
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def page_server():
    """The test page on its own port: a different origin from the proxy."""
    handler = functools.partial(_QuietHandler, directory=str(DIST))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="page-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _buffer(request: pytest.FixtureRequest, sink: str) -> dict:
    """LocalStack settings of a fresh topic (2 partitions) or stream (2 shards) for `sink`."""
    name = f"web-sdk-{uuid.uuid4().hex[:8]}"
    if sink == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        broker.start()  # no-op when running
        broker.create_topic(name, partitions=2)
        return {"kafka_bootstrap": broker.bootstrap, "topic": name, "lander_env": {"SOURCE_KAFKA_GROUP": name}}
    if sink == "kinesis":
        emulators = request.getfixturevalue("emulators")
        emulators.create_stream(name, 2)
        return {"stream": name, "stream_env": emulators.env()}
    return {}


@pytest.fixture(scope="module", params=SINKS)
def run(request, tmp_path_factory, page_server) -> dict:
    """Both scenarios against a fresh stack, then the drained lake: everything the tests check."""
    sink = request.param
    data_dir = tmp_path_factory.mktemp(f"web-sdk-stack-{sink}")
    stack = LocalStack.isolated(data_dir, processes=1, sink=sink, **_buffer(request, sink))
    lake = stack.lake / "clickstream" / "default" / "data" / "buffer"
    out = data_dir / "browser-result.json"
    began_ms = time.time_ns() // 1_000_000
    stack.start()
    try:
        driver = subprocess.run(
            [
                "node",
                str(DRIVER),
                "--page-url",
                f"{page_server}/index.html",
                "--endpoint",
                f"{stack.url}/collect",
                "--out",
                str(out),
                "--modes",
                ",".join(MODES),
            ],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if driver.returncode == 0 and sink != "s3":
            # kinesis-s3-sink lands what it has read when it stops; what is still in the stream waits for its next
            # start. So first let it read (and land) every upload the page made.
            scenarios = json.loads(out.read_text())["scenarios"]
            accepted = [r for scenario in scenarios for r in scenario["requests"] if r["status"] == 200]
            uris = {_uri(r["url"]) for r in accepted if r["method"] == "POST"}
            wait_for(lambda: uris <= {r["uri"] for r in read_lake(lake)}, 30, 0.2, f"{len(uris)} uploads in {lake}")
    finally:
        stack.stop()  # drains: every accepted record is in the lake once this returns
    ended_ms = time.time_ns() // 1_000_000
    if driver.returncode != 0:
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted((data_dir / "logs").glob("*")))
        pytest.fail(
            f"browser driver exited with {driver.returncode}\nstdout:\n{driver.stdout[-3000:]}\n"
            f"stderr:\n{driver.stderr[-5000:]}\nstack logs:\n{logs}"
        )
    result = json.loads(out.read_text())
    return {
        "scenarios": {s["mode"]: s for s in result["scenarios"]},
        "records": read_lake(lake),
        "began_ms": began_ms,
        "ended_ms": ended_ms,
        "browser_version": result["browser_version"],
    }


def _posts(scenario: dict) -> list[dict]:
    return [r for r in scenario["requests"] if r["method"] == "POST"]


def _uri(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _events(scenario: dict) -> list[dict]:
    return [event for post in _posts(scenario) for event in json.loads(post["body"])]


def _records_by_uri(records: list[dict]) -> dict[str, dict]:
    by_uri = {}
    for record in records:
        assert record["uri"] not in by_uri, f"two raw records for one request: {record['uri']}"
        by_uri[record["uri"]] = record
    return by_uri


def _explain(scenario: dict) -> str:
    lines = [f"{r['method']} {r['url']} -> {r['status']} {r['error'] or ''}" for r in scenario["requests"]]
    return "\n".join(lines + scenario["console"][-20:])


@pytest.mark.parametrize("mode", MODES)
def test_every_upload_got_200_and_nothing_is_left_in_the_browser(run, mode):
    scenario = run["scenarios"][mode]
    assert scenario["settled"] == [True, True, True], _explain(scenario)
    posts = _posts(scenario)
    assert posts, _explain(scenario)
    assert len(posts) == len(scenario["requests"]), "the page fetched something other than the SDK uploads"
    for post in posts:
        assert post["error"] is None, _explain(scenario)
        assert post["status"] == 200 and post["ok"] is True, _explain(scenario)
        # what NetRequest.ts passes to fetch(): a credentialed CORS request, keepalive under 64 KiB
        assert (post["mode"], post["credentials"], post["keepalive"]) == ("cors", "include", True)
        assert post["url"].startswith(f"http://127.0.0.1:{urlsplit(post['url']).port}{URI_PREFIX}")
    assert scenario["inflight"] == 0
    # StorageUtil.failedEventsKey and StorageUtil.eventsKey (the Batch queue) are both gone
    assert scenario["failed_events"] is None, scenario["failed_events"][:500]
    assert scenario["queued_events"] is None, scenario["queued_events"][:500]
    assert not any(key.endswith(("/failedEventsKey", "/eventsKey")) for key in scenario["storage_keys"])
    assert "HeadlessChrome" in scenario["user_agent"]
    sequence_ids = sorted(int(parse_qs(urlsplit(p["url"]).query)["event_bundle_sequence_id"][0]) for p in posts)
    assert sequence_ids == list(range(1, len(posts) + 1))


@pytest.mark.parametrize("mode", MODES)
def test_the_sdk_recorded_the_scenario(run, mode):
    scenario = run["scenarios"][mode]
    events = _events(scenario)
    counts = Counter(event["event_type"] for event in events)
    for name, expected in {
        "_first_open": 1,
        "_session_start": 1,
        "_page_view": 2,
        "add_to_cart": 1,
        "_profile_set": 2,
        "begin_checkout": 1,
        "_click": 2,
    }.items():
        assert counts[name] == expected, (name, counts)
    ids = [event["event_id"] for event in events]
    assert len(set(ids)) == len(ids), "an event was uploaded twice"
    assert {event["app_id"] for event in events} == {"shop"}
    assert {event["platform"] for event in events} == {"Web"}
    assert {event["sdk_version"] for event in events} == {"0.12.6"}
    assert len({event["device_id"] for event in events}) == 1

    by_name = {event["event_type"]: event for event in events}
    cart = by_name["add_to_cart"]
    assert cart["attributes"]["product_id"] == "p-1"
    assert cart["attributes"]["price"] == 9.99
    assert cart["attributes"]["note"] == "ünïcödé ✓"
    assert cart["items"][0]["id"] == "p-1" and cart["items"][0]["quantity"] == 2
    assert by_name["begin_checkout"]["user"]["_user_id"]["value"] == "user-42"
    profile = [e for e in events if e["event_type"] == "_profile_set"][-1]
    assert {k: profile["user"][k]["value"] for k in ("_user_id", "plan", "age", "newsletter")} == {
        "_user_id": "user-42",
        "plan": "gold",
        "age": 30,
        "newsletter": True,
    }
    pages = [e["attributes"] for e in events if e["event_type"] == "_page_view"]
    assert [p["_page_title"] for p in pages] == ["Shop - Home", "Shop - Cart"]
    assert pages[1]["_page_url"].endswith("/cart")
    clicks = {e["attributes"]["_link_url"]: e["attributes"] for e in events if e["event_type"] == "_click"}
    origin = scenario["origin"]
    assert clicks[f"{origin}/products/p-1?ref=home"]["_outbound"] is False
    assert clicks[f"{origin}/products/p-1?ref=home"]["_link_id"] == "product-link"
    assert clicks["http://127.0.0.1:9/partner"]["_outbound"] is True

    bodies = [json.loads(post["body"]) for post in _posts(scenario)]
    if mode == "Immediate":
        assert all(len(body) == 1 for body in bodies), [len(b) for b in bodies]
    else:
        # one flush per step at least (the driver waits for the queue to empty between steps)
        assert len(bodies) >= 3 and max(len(body) for body in bodies) >= 5, [len(b) for b in bodies]
        shop_flush = next(b for b in bodies if any(e["event_type"] == "add_to_cart" for e in b))
        assert {"add_to_cart", "_profile_set", "_page_view", "begin_checkout"} <= {e["event_type"] for e in shop_flush}


@pytest.mark.parametrize("mode", MODES)
def test_preflights_carried_what_the_sdk_needs(run, mode):
    scenario = run["scenarios"][mode]
    preflights = scenario["preflights"]
    assert preflights, "Chromium reported no CORS preflight"
    post_urls = {post["url"] for post in _posts(scenario)}
    for preflight in preflights:
        assert preflight["url"] in post_urls
        assert preflight.get("error") is None, preflight
        assert preflight["status"] in (200, 204), preflight
        sent = {k.lower(): v for k, v in preflight["request_headers"].items()}
        assert sent["origin"] == scenario["origin"]
        assert sent["access-control-request-method"] == "POST"
        headers = {k.lower(): v for k, v in preflight["response_headers"].items()}
        assert headers["access-control-allow-origin"] == scenario["origin"]
        assert headers["access-control-allow-credentials"] == "true"
        assert "POST" in [m.strip() for m in headers["access-control-allow-methods"].split(",")]
        allowed = {h.strip().lower() for h in headers.get("access-control-allow-headers", "").split(",")}
        requested = {h.strip().lower() for h in sent["access-control-request-headers"].split(",")}
        assert "content-type" in requested and requested <= allowed


def test_every_upload_landed_in_the_lake_byte_for_byte(run):
    by_uri = _records_by_uri(run["records"])
    sent_uris = set()
    for mode in MODES:
        scenario = run["scenarios"][mode]
        for post in _posts(scenario):
            uri = _uri(post["url"])
            sent_uris.add(uri)
            assert uri in by_uri, f"{mode} upload missing from the lake: {uri}"
            record = by_uri[uri]
            assert record["data"] == post["body"]
            query = parse_qs(urlsplit(post["url"]).query)
            assert hashlib.sha256(record["data"].encode()).hexdigest()[:8] == query["hashCode"][0]
            assert record["client_timestamp"] == int(query["upload_timestamp"][0])
            assert record["ua"] == scenario["user_agent"]
            assert post["started_at"] - 1000 <= record["ingest_time"] <= post["ended_at"] + 1000
    # nothing else reached the lake: no phantom or duplicate records
    assert set(by_uri) == sent_uris

    sent_ids = {e["event_id"] for mode in MODES for e in _events(run["scenarios"][mode])}
    landed_ids = {event["event_id"] for record in run["records"] for event in json.loads(record["data"])}
    assert sent_ids == landed_ids


def test_raw_records_have_the_contract_fields(run):
    records = run["records"]
    assert records
    for record in records:
        assert record["appId"] == "shop"
        assert record["platform"] == "Web"
        assert record["method"] == "POST"
        assert record["path"] == "/collect"
        assert record["uri"].startswith(URI_PREFIX)
        assert "HeadlessChrome" in record["ua"]
        assert RID.fullmatch(record["rid"]), record["rid"]
        assert record["source_type"] == "http_server"
        assert record["ip"] == "127.0.0.1"
        assert record["compression"] is None
        assert isinstance(record["ingest_time"], int) and not isinstance(record["ingest_time"], bool)
        assert run["began_ms"] <= record["ingest_time"] <= run["ended_ms"]
        assert record["server_ingest_time"] == record["ingest_time"]
    assert len({record["rid"] for record in records}) == len(records)
