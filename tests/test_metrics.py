"""Metrics describe the whole proxy (contract §7), and bad configuration stops the services at start.

With two proxy processes on one port, /metrics must show the totals of both, whichever process
answers; the worker's /metrics counts what it committed and uploaded.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict

from scripts import sdkgen
from scripts.stack import LocalStack, free_port
from tests.support import metric_value, wait_for, wait_for_rids

BIN = Path(sys.executable).parent
REQUESTS = 200


def fetch(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def two_process_stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("metrics-stack")
    stack = LocalStack.isolated(
        data_dir,
    )
    stack.start()
    yield stack
    stack.stop(timeout_s=15)


def per_process_collect_200(metrics_dir: Path) -> dict[str, float]:
    """proxy_requests_total{path="collect",status="200"} as each process's own file holds it."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        for key, value, *_rest in MmapedDict.read_all_values_from_file(str(path)):
            if '"proxy_requests_total"' in key and '"collect"' in key and '"200"' in key:
                counts[path.stem] = counts.get(path.stem, 0) + value
    return counts


def test_metrics_sum_every_proxy_process(two_process_stack):
    stack = two_process_stack
    bodies = [sdkgen.body_text(sdkgen.sample_batch(1 + i % 4, seed=i)) for i in range(REQUESTS)]

    def send(index: int) -> str:
        body = bodies[index]
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)  # a new connection
        try:
            connection.request("POST", sdkgen.collect_target("shop", body, index), body=body.encode())
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            return response.getheader("X-Request-ID")
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rids = set(pool.map(send, range(REQUESTS)))
    assert len(rids) == REQUESTS
    sent_bytes = sum(len(body.encode()) for body in bodies)

    # SO_REUSEPORT spread the connections: both processes answered some. Each process flushes its
    # counts into its metric file every 100 ms (metrics.FLUSH_INTERVAL_S), so allow for that.
    metric_dir = stack.data_dir / "run" / "proxy-metrics"
    wait_for(lambda: sum(per_process_collect_200(metric_dir).values()) >= REQUESTS, 2, 0.02, "metric flush")
    served = per_process_collect_200(metric_dir)
    assert len(served) == 2 and all(count > 0 for count in served.values()), served
    assert sum(served.values()) == REQUESTS

    # Every answer of /metrics, from either process, shows the whole proxy.
    for _ in range(8):
        text = fetch(stack.port, "/metrics")
        assert metric_value(text, "proxy_requests_total", {"path": "collect", "status": "200"}) == REQUESTS
        assert metric_value(text, "proxy_collect_seconds_count") == REQUESTS
        assert metric_value(text, "proxy_collect_seconds_bucket", {"le": "+Inf"}) == REQUESTS
        assert metric_value(text, "proxy_request_bytes_total") == sent_bytes
        assert metric_value(text, "proxy_accepted_records_total") == REQUESTS
        assert metric_value(text, "proxy_rejections_total") == 0

    wait_for_rids(stack.lake, rids, timeout_s=15)

    def worker_uploaded_all():
        text = fetch(stack.worker_http_port, "/metrics")
        return text if metric_value(text, "worker_s3_records_uploaded_total") == REQUESTS else None

    text = wait_for(worker_uploaded_all, 10, message="the worker's upload counter")
    assert metric_value(text, "worker_wal_committed_records_total") == REQUESTS
    assert metric_value(text, "worker_s3_objects_uploaded_total") >= 1
    assert metric_value(text, "worker_records_total", {"outcome": "accepted"}) == REQUESTS


def clean_environment(**variables: str) -> dict[str, str]:
    """Only what a process needs to run, plus the variables under test (no inherited config)."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    env.update(variables)
    return env


def run_service(name: str, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name)], env=clean_environment(**variables), capture_output=True, text=True, timeout=30
    )


def problem_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.strip().startswith("- ")]


def assert_one_line_each(lines: list[str], *mistakes: str) -> None:
    """One problem line per mistake, each naming its variable."""
    assert len(lines) == len(mistakes), lines
    for mistake in mistakes:
        assert sum(mistake in line for line in lines) == 1, (mistake, lines)


def test_proxy_reports_every_configuration_mistake_at_once():
    result = run_service(
        "ingest-proxy",
        PORT="abc",
        ACK_MODE="bogus",
        CLICKSTREAM_MODE="production",
        MAX_INFLIGHT_REQUESTS="0",
        AUTH_OIDC_ISSUER="https://issuer.example.com",
    )
    assert result.returncode == 2, result
    lines = problem_lines(result.stderr)
    assert_one_line_each(
        lines,
        "PORT='abc': expected an integer",
        "ACK_MODE='bogus': expected one of durable",
        "APP_CONFIG is required in production mode",
        "MAX_INFLIGHT_REQUESTS",
        "AUTH_OIDC_AUDIENCE",
    )


def test_proxy_refuses_an_empty_app_list_in_production(tmp_path):
    app_config = tmp_path / "apps.yaml"
    app_config.write_text("project_id: shop_project\napps: []\n")
    result = run_service(
        "ingest-proxy", CLICKSTREAM_MODE="production", APP_CONFIG=str(app_config), PORT=str(free_port())
    )
    assert result.returncode == 2, result
    assert str(app_config) in result.stderr and "no apps registered" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    app_config.write_text("project_id: shop_project\napps: [{app_id: shop, timezone: Mars/Olympus}]\n")
    result = run_service(
        "ingest-proxy", CLICKSTREAM_MODE="production", APP_CONFIG=str(app_config), PORT=str(free_port())
    )
    assert result.returncode == 2, result
    assert "Mars/Olympus" in result.stderr and "time zone" in result.stderr


def test_worker_reports_every_configuration_mistake_at_once(tmp_path):
    result = run_service("ingest-worker", SINK_S3_GZIP_LEVEL="abc", WORKER_HTTP_PORT="70000", WAL_DIR=str(tmp_path))
    assert result.returncode == 2, result
    lines = problem_lines(result.stderr)
    assert_one_line_each(lines, "WORKER_HTTP_PORT=70000", "SINK_S3_GZIP_LEVEL='abc'", "SINK_S3_URI is required")

    result = run_service("ingest-worker", SINK_S3_GZIP_LEVEL="12", SINK_S3_URI=tmp_path.as_uri(), WAL_DIR=str(tmp_path))
    assert result.returncode == 2, result
    assert problem_lines(result.stderr) == ["- SINK_S3_GZIP_LEVEL=12: must be 0-3"]

    result = run_service("ingest-worker", SINK="kafkaa")
    assert result.returncode == 2, result
    assert "SINK='kafkaa'" in result.stderr
