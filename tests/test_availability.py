"""Availability and back-pressure of the edge (ingestion-contract.md §2 503 rules, §3, §5, §7).

Each test starts its own stack on free ports in a tmp dir, because it stops, freezes or kills a
component. A frozen worker is a SIGSTOPped one: its hand-off connection stays open but nothing
answers, the worst case for the proxy.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import signal
import socket
import time
from dataclasses import dataclass

import orjson
import pytest
from ingest_proxy.metrics import FLUSH_INTERVAL_S
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from scripts import sdkgen
from scripts.stack import LocalStack
from tests.support import metric_value, wait_for, wait_for_rids

BODY = sdkgen.body_text(sdkgen.sample_batch(3, seed=11))
TARGET = sdkgen.collect_target("shop", BODY, 1)
UNAVAILABLE_REASONS = {"worker_unreachable", "worker_not_ready", "worker_connection_lost"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    elapsed: float

    @property
    def rid(self) -> str:
        return self.headers["x-request-id"]


class Edge:
    """A client of one stack's proxy that remembers every collect answer (to match the metrics)."""

    def __init__(self, stack: LocalStack):
        self.stack = stack
        self.answers: list[Answer] = []

    def post(self, timeout_s: float = 15.0) -> Answer:
        """One POST on a fresh connection; the body is always sent in full with the headers."""
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=timeout_s)
        try:
            connection.request("POST", TARGET, body=BODY.encode(), headers={"Content-Type": "text/plain"})
            response = connection.getresponse()
            response.read()
            answer = Answer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, time.monotonic() - started
            )
        finally:
            connection.close()
        self.answers.append(answer)
        return answer

    def headers_only(self, timeout_s: float = 5.0) -> Answer:
        """Announce a body with Content-Length but never send it: a 503 must still come back."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.stack.port), timeout=timeout_s) as sock:
            sock.sendall(
                f"POST {TARGET} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        assert head[0].startswith("HTTP/1.1 "), data
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        answer = Answer(int(head[0].split()[1]), headers, time.monotonic() - started)
        self.answers.append(answer)
        return answer

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.stack.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def ready(self) -> tuple[int, str]:
        status, body = self.get("/ready")
        return status, orjson.loads(body)["reason"]

    def rejections(self) -> dict[str, float]:
        # Each proxy process publishes its counts every FLUSH_INTERVAL_S; another may answer.
        time.sleep(2.5 * FLUSH_INTERVAL_S)
        status, body = self.get("/metrics")
        assert status == 200
        counts: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line.startswith('proxy_rejections_total{reason="'):
                reason = line.split('"')[1]
                counts[reason] = counts.get(reason, 0) + float(line.rpartition(" ")[2])
        return {reason: count for reason, count in counts.items() if count}

    def count(self, status: int) -> int:
        return sum(1 for answer in self.answers if answer.status == status)

    def acked(self) -> set[str]:
        return {answer.rid for answer in self.answers if answer.status == 200}


def assert_503(answer: Answer, within_s: float = 1.0) -> None:
    assert answer.status == 503, answer
    assert answer.headers.get("retry-after") == "1"
    assert answer.elapsed < within_s, answer


@pytest.fixture
def make_stack(tmp_path):
    stacks: list[LocalStack] = []

    def make(name: str = "stack", processes: int = 1, roll_seconds: float = 1.0, **proxy_env: str):
        data_dir = tmp_path / name
        stack = LocalStack.isolated(
            data_dir,
            processes=processes,
            roll_seconds=roll_seconds,
            proxy_env={"CLICKSTREAM_MODE": "dev", **proxy_env},
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        if stack.worker is not None and stack.worker.poll() is None:
            os.kill(stack.worker.pid, signal.SIGCONT)
        stack.stop(timeout_s=15)


def test_worker_down_at_start_then_killed_recovers_by_itself(make_stack):
    stack = make_stack(processes=2)
    edge = Edge(stack)
    stack.start_proxy(wait=False)

    def proxy_answers():
        try:
            return edge.ready()
        except OSError:
            return None

    assert wait_for(proxy_answers, 20, message="the proxy to listen")[0] == 503
    for _ in range(3):
        assert_503(edge.post())
    assert_503(edge.headers_only())  # decided before reading the body

    stack.start_worker()
    wait_for(lambda: edge.ready()[0] == 200, 5, message="/ready 200 once the worker is up")
    for _ in range(5):
        assert edge.post().status == 200

    stack.kill_worker()
    wait_for(lambda: edge.ready()[0] == 503, 5, message="/ready 503 after the worker died")
    for _ in range(3):
        assert_503(edge.post())
    assert_503(edge.headers_only())

    stack.start_worker()
    wait_for(lambda: edge.ready()[0] == 200, 5, message="/ready 200 after the worker restarted")
    for _ in range(5):
        assert edge.post().status == 200

    rejections = edge.rejections()
    assert set(rejections) <= UNAVAILABLE_REASONS, rejections
    assert sum(rejections.values()) == edge.count(503) >= 8
    wait_for_rids(stack.lake, edge.acked(), timeout_s=10)


def test_frozen_worker_times_out_and_inflight_limit_rejects_at_once(make_stack):
    stack = make_stack(ACK_TIMEOUT_S="1", MAX_INFLIGHT_REQUESTS="1")
    stack.start()
    edge = Edge(stack)
    assert edge.post().status == 200

    os.kill(stack.worker.pid, signal.SIGSTOP)
    answer = edge.post()
    assert_503(answer, within_s=2.0)
    assert answer.elapsed >= 0.9  # it waited for the ack, up to ACK_TIMEOUT_S

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(edge.post)
        time.sleep(0.3)  # the first request now holds the only in-flight slot
        assert not first.done()
        second = edge.headers_only()
        assert_503(second, within_s=0.5)
        assert_503(first.result(), within_s=2.0)

    # The stopped worker sends no heartbeat: readiness turns 503 and new requests fail fast.
    wait_for(lambda: edge.ready()[0] == 503, 4, message="/ready 503 for a silent worker")
    assert_503(edge.post(), within_s=0.5)

    os.kill(stack.worker.pid, signal.SIGCONT)
    wait_for(lambda: edge.post().status == 200, 5, message="200 after the worker resumed")
    assert edge.post().status == 200

    rejections = edge.rejections()
    assert sum(rejections.values()) == edge.count(503)
    assert rejections.pop("ack_timeout") == 2, rejections
    assert rejections.pop("inflight_limit") == 1, rejections
    assert rejections.pop("worker_not_ready") >= 1, rejections
    assert not rejections, rejections
    wait_for_rids(stack.lake, edge.acked(), timeout_s=10)


def test_proxy_drains_inflight_requests_and_worker_uploads_everything_on_sigterm(make_stack):
    # Objects roll only every 300 s: whatever reaches the lake was uploaded by the worker's drain.
    stack = make_stack(processes=2, roll_seconds=300, DRAIN_DEADLINE_S="10", ACK_TIMEOUT_S="8")
    stack.start()
    edge = Edge(stack)
    for _ in range(3):
        assert edge.post().status == 200

    os.kill(stack.worker.pid, signal.SIGSTOP)
    pool = concurrent.futures.ThreadPoolExecutor(6)
    inflight = [pool.submit(edge.post) for _ in range(6)]
    time.sleep(0.5)
    assert not any(future.done() for future in inflight)

    stopped_at = time.monotonic()
    stack.proxy.send_signal(signal.SIGTERM)
    # Every process (whichever answers) says draining, and new work is refused at once.
    wait_for(lambda: edge.ready() == (503, "draining"), 3, message="/ready 503 while draining")
    for _ in range(4):
        assert edge.ready() == (503, "draining")
    assert_503(edge.post())
    assert edge.rejections() == {"draining": 1}
    assert stack.proxy.poll() is None

    os.kill(stack.worker.pid, signal.SIGCONT)
    results = [future.result(timeout=15) for future in inflight]
    pool.shutdown()
    assert [answer.status for answer in results] == [200] * 6
    assert stack.proxy.wait(timeout=15) == 0
    assert time.monotonic() - stopped_at < 10

    acked = edge.acked()
    assert len(acked) == 9
    stack.worker.send_signal(signal.SIGTERM)
    assert stack.worker.wait(timeout=20) == 0
    wait_for_rids(stack.lake, acked, timeout_s=1)
    wal = stack.data_dir / "wal"
    assert not list(wal.glob("*.wal")) and not list(wal.glob("*.sealed"))


def test_drain_deadline_answers_requests_still_waiting_for_the_worker(make_stack):
    stack = make_stack(DRAIN_DEADLINE_S="1", ACK_TIMEOUT_S="20")
    stack.start()
    edge = Edge(stack)
    os.kill(stack.worker.pid, signal.SIGSTOP)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        inflight = [pool.submit(edge.post) for _ in range(3)]
        time.sleep(0.5)
        stopped_at = time.monotonic()
        stack.proxy.send_signal(signal.SIGTERM)
        # The worker never answers: at the deadline each request still gets an answer (503).
        for future in inflight:
            assert_503(future.result(timeout=10), within_s=5.0)
    assert stack.proxy.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 4
    # The proxy is gone; its metric files (multiprocess mode) still tell what it counted.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(stack.data_dir / "run" / "proxy-metrics"))
    text = generate_latest(registry).decode()
    assert metric_value(text, "proxy_rejections_total", {"reason": "ack_timeout"}) == 3
    assert metric_value(text, "proxy_requests_total", {"path": "collect", "status": "503"}) == 3


def test_ack_after_handoff_mode_answers_200_and_lands(make_stack):
    stack = make_stack(ACK_MODE="after-handoff-may-lose-data")
    stack.start()
    edge = Edge(stack)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: edge.post(), range(20)))
    assert [answer.status for answer in answers] == [200] * 20
    wait_for_rids(stack.lake, edge.acked(), timeout_s=10)
    _status, text = edge.get("/metrics")
    assert metric_value(text.decode(), "proxy_accepted_records_total") == 20
