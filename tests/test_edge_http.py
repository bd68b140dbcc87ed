"""The edge's answers to good and bad input, over real sockets (ingestion-contract.md §2 and CORS).

Well-formed requests go through http.client; malformed HTTP, slow bodies and oversized requests
through raw sockets. The module ends with a good request, the proxy processes' memory, the absence of
restarts and of server-side errors in the proxy log: nothing in the battery may crash or leak.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ingest_proxy.protocol import Limits, Rejection, check_app_id, check_body, check_declared_length

from scripts import sdkgen
from scripts.stack import LocalStack
from tests.support import wait_for_rids

MiB = 1024 * 1024
LIMITS = Limits()
ORIGIN = "https://shop.example.com"
GOOD_BODY = b'[{"event_type":"_page_view","event_id":"e1"}]'
RID = re.compile(r"[0-9a-f]{32}")


# ---- clients ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    first_byte_s: float = 0.0


def request(port: int, method: str, target: str, body: bytes | None = None, headers: dict | None = None) -> Answer:
    """One well-formed request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def post(port: int, target: str, body: bytes, headers: dict | None = None) -> Answer:
    return request(port, "POST", target, body, headers)


def _read_answer(sock: socket.socket, started: float) -> Answer:
    buf = b""
    first = None
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed without a complete answer: {buf[:200]!r}")
        first = first if first is not None else time.monotonic() - started
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Answer(status, headers, rest[:length], first)


def exchange(port: int, *parts: bytes, pause_s: float = 0.0, timeout_s: float = 10.0) -> Answer:
    """Send raw bytes (in parts, `pause_s` apart; the socket stays open afterwards) while reading the
    answer: a server that answers before it has read everything must still be heard."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    stop = threading.Event()

    def send() -> None:
        try:
            for index, part in enumerate(parts):
                if index and pause_s and stop.wait(pause_s):
                    return
                sock.sendall(part)
        except OSError:
            pass  # the server answered and closed: the reader has (or reports) the answer

    sender = threading.Thread(target=send, daemon=True)
    started = time.monotonic()
    sender.start()
    try:
        return _read_answer(sock, started)
    finally:
        stop.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes a sender blocked in sendall
        except OSError:
            pass
        sock.close()
        sender.join(timeout_s)


def head(method: str, target: str, *lines: str | bytes) -> bytes:
    """A request head; header lines as text, or as raw bytes for what no client library would send."""
    raw = [line.encode() if isinstance(line, str) else line for line in lines]
    return b"\r\n".join([f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", *raw]) + b"\r\n\r\n"


def chunked(*pieces: bytes, end: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return body + (b"0\r\n\r\n" if end else b"")


def b64gzip(data: bytes) -> bytes:
    return base64.b64encode(gzip.compress(data))


def gzip_bomb(wire_bytes: int = MiB - 4096) -> tuple[bytes, int]:
    """A valid gzip stream of zeros about `wire_bytes` long that inflates about 1000-fold. Blocks
    compressed after a full flush are identical, so the stream is built by repetition in a blink."""
    block = bytes(MiB)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    count = wire_bytes // len(unit)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = deflate.flush(zlib.Z_FINISH) + struct.pack("<II", crc, (count * MiB) & 0xFFFFFFFF)
    return header + unit * count + trailer, count * MiB


def assert_cors(answer: Answer, origin: str = ORIGIN) -> None:
    assert answer.headers.get("access-control-allow-origin") == origin, answer.headers
    assert answer.headers.get("access-control-allow-credentials") == "true"
    assert "Origin" in answer.headers.get("vary", "")


def assert_no_cors(answer: Answer) -> None:
    assert "access-control-allow-origin" not in answer.headers, answer.headers
    assert "access-control-allow-credentials" not in answer.headers


# ---- stacks ----------------------------------------------------------------------------------------


def own_stack(tmp_path_factory, name: str, proxy_env: dict[str, str]) -> LocalStack:
    data_dir = tmp_path_factory.mktemp(name)
    return LocalStack.isolated(
        data_dir,
        processes=1,
        proxy_env=proxy_env,
    )


@pytest.fixture(scope="module")
def tuned_stack(tmp_path_factory):
    """Dev mode with a 2 s body timeout, hashCode verification and one trusted proxy."""
    env = {"BODY_TIMEOUT_S": "2", "VERIFY_HASH_CODE": "true", "TRUSTED_PROXIES": "1"}
    with own_stack(tmp_path_factory, "tuned", env) as local:
        yield local


@pytest.fixture(scope="module")
def prod_stack(tmp_path_factory):
    """Production mode: one registered app with an exact and a wildcard origin."""
    local = own_stack(tmp_path_factory, "prod", {})
    config = local.data_dir / "apps.yaml"
    config.write_text(
        "project_id: test\n"
        "apps:\n"
        "  - app_id: shop\n"
        '    allowed_origins: ["https://shop.example.com", "*.example.org"]\n'
    )
    local.proxy_env = {"CLICKSTREAM_MODE": "production", "APP_CONFIG": str(config)}
    with local:
        yield local


def proxy_processes(local: LocalStack) -> list[psutil.Process]:
    """The supervisor and everything it started (serving processes, multiprocessing's tracker)."""
    supervisor = psutil.Process(local.proxy.pid)
    return [supervisor, *supervisor.children(recursive=True)]


def serving_pids(local: LocalStack) -> list[int]:
    return sorted(p.pid for p in proxy_processes(local) if "spawn_main" in " ".join(p.cmdline()))


def proxy_log(local: LocalStack) -> Path:
    return local.log_dir / "proxy.log"


@pytest.fixture(scope="module")
def baseline(stack):
    """What the end-of-module checks compare with: the proxy's processes and its log so far."""
    log = proxy_log(stack)
    return {
        "pids": serving_pids(stack),
        "log_offset": log.stat().st_size if log.exists() else 0,
    }


@pytest.fixture
def port(stack, baseline) -> int:
    return stack.port


# ---- service endpoints, routing, methods -----------------------------------------------------------


def test_ping_returns_a_timestamp(port):
    before = time.time()
    answer = request(port, "GET", "/ping")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/json")
    stamp = orjson.loads(answer.body)["timestamp"]
    assert before - 1 <= stamp <= time.time() + 1


@pytest.mark.parametrize(("path", "check"), [("/health", {"status": "alive"}), ("/ready", {"ready": True})])
def test_health_and_ready(port, path, check):
    answer = request(port, "GET", path)
    assert answer.status == 200
    body = orjson.loads(answer.body)
    assert check.items() <= body.items()


def test_metrics(port):
    answer = request(port, "GET", "/metrics")
    assert answer.status == 200
    assert b"proxy_" in answer.body


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/"),
        ("POST", "/"),
        ("POST", "/collect/"),
        ("POST", "/Collect?appId=shop"),
        ("POST", "/collectx?appId=shop"),
        ("GET", "/ping/x"),
        ("GET", "/favicon.ico"),
        ("OPTIONS", "/other"),
        ("DELETE", "/metrics/x"),
    ],
)
def test_unknown_paths_are_404(port, method, target):
    answer = request(port, method, target, body=b"[]" if method == "POST" else None)
    assert answer.status == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD", "TRACE", "PROPFIND"])
def test_other_methods_on_the_collect_path_are_405(port, method):
    answer = request(port, method, "/collect?appId=shop", headers={"Origin": ORIGIN})
    assert answer.status == 405
    assert_cors(answer)


# ---- CORS ------------------------------------------------------------------------------------------


def test_preflight_is_204_with_the_cors_headers(port):
    answer = request(
        port,
        "OPTIONS",
        "/collect?appId=shop&platform=Web",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,cookie",
        },
    )
    assert answer.status == 204
    assert answer.body == b""
    assert_cors(answer)
    assert answer.headers["access-control-allow-methods"] == "POST, OPTIONS"
    assert answer.headers["access-control-allow-headers"] == "content-type,cookie"
    assert answer.headers["access-control-max-age"] == "600"


def test_preflight_without_request_headers(port):
    answer = request(port, "OPTIONS", "/collect?appId=shop", headers={"Origin": "http://localhost:5173"})
    assert answer.status == 204
    assert_cors(answer, "http://localhost:5173")
    assert "access-control-allow-headers" not in answer.headers


def test_preflight_without_origin_is_refused(port):
    answer = request(port, "OPTIONS", "/collect?appId=shop")
    assert answer.status == 403
    assert_no_cors(answer)


def test_accepted_post_carries_cors_headers_and_an_empty_200(port):
    answer = post(port, "/collect?appId=shop&platform=Web", GOOD_BODY, {"Origin": ORIGIN})
    assert answer.status == 200
    assert answer.body == b""
    assert RID.fullmatch(answer.headers["x-request-id"])
    assert_cors(answer)


def test_no_origin_no_cors_headers(port):
    answer = post(port, "/collect?appId=shop", GOOD_BODY)
    assert answer.status == 200
    assert_no_cors(answer)


@pytest.mark.parametrize(
    ("target", "body", "extra", "status"),
    [
        ("/collect", GOOD_BODY, {}, 400),
        ("/collect?appId=shop", b"", {}, 400),
        ("/collect?appId=shop", b"\xff\xfe", {}, 400),
        ("/collect?appId=shop", b"hello", {}, 400),
        ("/collect?appId=shop", b"[]", {"Content-Encoding": "gzip"}, 400),
        ("/collect?appId=shop", b"[]", {"Content-Encoding": "br"}, 415),
        ("/collect?appId=shop", gzip.compress(bytes(11 * MiB)), {"Content-Encoding": "gzip"}, 413),
    ],
    ids=["no-appId", "empty", "not-utf8", "neither", "bad-gzip", "unknown-encoding", "too-large-inflated"],
)
def test_rejections_carry_cors_headers(port, target, body, extra, status):
    answer = post(port, target, body, {"Origin": ORIGIN, **extra})
    assert answer.status == status
    assert_cors(answer)
    assert RID.fullmatch(answer.headers["x-request-id"])


def test_413_for_declared_length_carries_cors_headers(port):
    answer = exchange(port, head("POST", "/collect?appId=shop", f"Origin: {ORIGIN}", f"Content-Length: {2 * MiB}"))
    assert answer.status == 413
    assert_cors(answer)


# ---- appId -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/collect", "/collect?appId=", "/collect?appId", "/collect?platform=Web", "/collect?appid=shop", "/collect?"],
)
def test_missing_or_empty_app_id_is_400(port, target):
    assert post(port, target, GOOD_BODY).status == 400


# ---- body size -------------------------------------------------------------------------------------


def test_declared_length_over_the_limit_is_413_before_any_body_byte(port):
    for length in (MiB + 1, 10**12):
        answer = exchange(port, head("POST", "/collect?appId=shop", f"Content-Length: {length}"))
        assert answer.status == 413
        assert answer.first_byte_s < 1.0  # answered at once: the server did not wait for the body
        assert answer.headers.get("connection", "").lower() == "close"


def test_chunked_body_crossing_the_limit_is_413(port):
    piece = b" " * 65536
    parts = [head("POST", "/collect?appId=shop", "Transfer-Encoding: chunked") + b"1\r\n[\r\n"]
    parts += [chunked(piece, end=False)] * 17  # 1 MiB + 64 KiB + 1 byte, never terminated
    answer = exchange(port, *parts)
    assert answer.status == 413


def test_body_of_exactly_the_limit_is_accepted(port):
    body = b"[" + b" " * (MiB - 2) + b"]"
    assert post(port, "/collect?appId=shop", body).status == 200
    answer = exchange(
        port, head("POST", "/collect?appId=shop", "Transfer-Encoding: chunked") + chunked(body[:1000], body[1000:])
    )
    assert answer.status == 200


def test_chunked_body_is_accepted(port):
    answer = exchange(
        port,
        head("POST", "/collect?appId=shop", "Transfer-Encoding: chunked"),
        chunked(GOOD_BODY[:5], GOOD_BODY[5:20], GOOD_BODY[20:]),
    )
    assert answer.status == 200


# ---- body content ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        GOOD_BODY,
        b'  \n{"single": "object"}',
        '[{"title":"caf\u00e9 \u2603"}]'.encode(),
        b64gzip(GOOD_BODY),
        b64gzip(GOOD_BODY) + b"\n",
    ],
    ids=["json-array", "json-object-ws", "json-utf8", "b64-gzip", "b64-gzip-newline"],
)
def test_acceptable_bodies_are_200(port, body):
    answer = post(port, "/collect?appId=shop&platform=Web&compression=gzip", body)
    assert answer.status == 200
    assert answer.body == b""


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   \r\n",
        b"\xff\xfe[\x00]",
        b'[{"name":"caf\xe9"}]',
        b"[\xed\xa0\x80]",
        b"hello world",
        b"\xef\xbb\xbf[]",
        b"eyJhIjoxfQ",
        base64.b64encode(GOOD_BODY),
        base64.b64encode(zlib.compress(GOOD_BODY)),
    ],
    ids=[
        "empty",
        "blank",
        "binary",
        "latin1",
        "surrogate",
        "neither",
        "bom",
        "b64-unpadded",
        "b64-of-json",
        "b64-of-zlib",
    ],
)
def test_unusable_bodies_are_400(port, body):
    assert post(port, "/collect?appId=shop", body).status == 400


def test_empty_bodies_every_way_are_400(port):
    assert exchange(port, head("POST", "/collect?appId=shop", "Content-Length: 0")).status == 400
    chunked_empty = head("POST", "/collect?appId=shop", "Transfer-Encoding: chunked") + b"0\r\n\r\n"
    assert exchange(port, chunked_empty).status == 400


def test_content_encoding_gzip_is_decoded_before_the_checks(stack, port):
    answer = post(port, "/collect?appId=shop", gzip.compress(GOOD_BODY), {"Content-Encoding": "gzip"})
    assert answer.status == 200
    inner = b64gzip(GOOD_BODY)
    assert post(port, "/collect?appId=shop", gzip.compress(inner), {"Content-Encoding": "gzip"}).status == 200
    not_utf8 = gzip.compress(b"\xff\xff")
    assert post(port, "/collect?appId=shop", not_utf8, {"Content-Encoding": "gzip"}).status == 400
    # The body limit counts wire bytes: 2 MiB that arrive as a few KB are fine.
    big = b"[" + b" " * (2 * MiB) + b"]"
    assert post(port, "/collect?appId=shop", gzip.compress(big), {"Content-Encoding": "gzip"}).status == 200
    # The raw record holds the decoded text.
    (record,) = [
        r
        for r in wait_for_rids(stack.lake, {answer.headers["x-request-id"]})
        if r["rid"] == answer.headers["x-request-id"]
    ]
    assert record["data"] == GOOD_BODY.decode()


def test_decompression_bomb_is_413(port):
    bomb, inflated = gzip_bomb()
    assert len(bomb) < MiB and inflated > 900 * MiB
    started = time.monotonic()
    answer = post(port, "/collect?appId=shop", bomb, {"Content-Encoding": "gzip", "Origin": ORIGIN})
    assert answer.status == 413
    assert_cors(answer)
    assert time.monotonic() - started < 2.0  # inflated to the cap, not to 1 GB


# ---- malformed HTTP --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n",
        b"GET /ping HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /ping HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST /collect?appId=a&x=\xff\xfe HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]",
        b"POST /collect?appId=a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /collect?appId=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[] ",
        b"POST /collect?appId=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
        b"POST /collect?appId=a HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\nContent-Length: 2\r\n\r\n[]",
    ],
    ids=[
        "garbage",
        "binary",
        "bad-version",
        "extra-token",
        "http2-preface",
        "raw-non-ascii-query",
        "negative-length",
        "two-lengths",
        "length-and-chunked",
        "space-in-header-name",
    ],
)
def test_malformed_requests_are_400(port, raw):
    assert exchange(port, raw).status == 400


@pytest.mark.parametrize(
    "framing",
    [
        b"zz\r\n[]\r\n0\r\n\r\n",  # not hex
        b"-2\r\n[]\r\n0\r\n\r\n",
        b"FFFFFFFFFFFFFFFFFFFFFF\r\n[]\r\n0\r\n\r\n",  # overflows
        b"2\r\n[]]]]\r\n0\r\n\r\n",  # more data than the chunk size
        b"2 2\r\n[]\r\n0\r\n\r\n",
    ],
    ids=["not-hex", "negative", "overflow", "overlong-chunk", "space-in-size"],
)
def test_bad_chunked_framing_is_400(port, framing):
    raw = head("POST", "/collect?appId=shop", "Transfer-Encoding: chunked") + framing
    assert exchange(port, raw).status == 400


def test_header_floods_are_4xx(port):
    many = [f"X-Flood-{i}: {i}" for i in range(250)]
    answers = [
        exchange(port, head("POST", "/collect?appId=shop", *many, "Content-Length: 2") + b"[]"),
        exchange(port, head("POST", "/collect?appId=shop", "X-Big: " + "a" * 65536, "Content-Length: 2") + b"[]"),
        exchange(port, head("POST", "/collect?appId=shop", "Cookie: " + "c=1; " * 20000, "Content-Length: 2") + b"[]"),
        exchange(port, head("GET", "/ping?" + "a" * 65536)),
        exchange(port, head("POST", "/collect?appId=" + "a" * 9000, "Content-Length: 2") + b"[]"),
    ]
    for answer in answers:
        assert 400 <= answer.status < 500, answer


def test_truncated_body_and_vanishing_clients_do_no_harm(port):
    # The client announces 100 bytes, sends 10 and half-closes; then one that drops mid-body.
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head("POST", "/collect?appId=shop", "Content-Length: 100") + b"[" + b" " * 9)
    sock.shutdown(socket.SHUT_WR)
    data = sock.recv(4096)
    sock.close()
    assert data == b"" or data.startswith(b"HTTP/1.1 4"), data  # the connection is gone: nothing, or a 4xx
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(head("POST", "/collect?appId=shop", "Content-Length: 1000") + b"[1,2")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    assert post(port, "/collect?appId=shop", GOOD_BODY).status == 200


def test_keep_alive_connection_survives_rejections(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for body, status in [(GOOD_BODY, 200), (b"nope", 400), (b"", 400), (b64gzip(b"[]"), 200), (b"\xff", 400)]:
            conn.request("POST", "/collect?appId=shop", body=body)
            response = conn.getresponse()
            response.read()
            assert response.status == status
    finally:
        conn.close()


def test_non_utf8_header_bytes_are_recorded_not_a_500(stack, port):
    raw = head("POST", "/collect?appId=shop", b"User-Agent: Mozilla/5.0 (caf\xe9; \xff)", "Content-Length: 2")
    answer = exchange(port, raw + b"[]")
    assert answer.status == 200
    rid = answer.headers["x-request-id"]
    (record,) = [r for r in wait_for_rids(stack.lake, {rid}) if r["rid"] == rid]
    assert record["ua"] == "Mozilla/5.0 (caf\ufffd; \ufffd)"
    utf8 = head("POST", "/collect?appId=shop", "User-Agent: caf\u00e9", "Content-Length: 2")
    assert exchange(port, utf8 + b"[]").status == 200


# ---- slow clients, hashCode, X-Forwarded-For (a stack with BODY_TIMEOUT_S=2) ----------------------


def test_slow_bodies_are_408_after_the_body_timeout(tuned_stack):
    p = tuned_stack.port
    cases = {
        "headers-only": (head("POST", "/collect?appId=shop", "Content-Length: 10"),),
        "partial-body": (head("POST", "/collect?appId=shop", f"Origin: {ORIGIN}", "Content-Length: 10") + b"[1",),
        "partial-chunked": (head("POST", "/collect?appId=shop", "Transfer-Encoding: chunked") + b"2\r\n[1\r\n",),
        "unterminated-chunked": (
            head("POST", "/collect?appId=shop", "Transfer-Encoding: chunked") + chunked(b"[1]", end=False),
        ),
        "trickle": (head("POST", "/collect?appId=shop", "Content-Length: 40"), *[b" "] * 39),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(exchange, p, *parts, pause_s=0.3) for name, parts in cases.items()}
        answers = {name: future.result() for name, future in futures.items()}
    for name, answer in answers.items():
        assert answer.status == 408, name
        assert 1.8 <= answer.first_byte_s <= 3.5, (name, answer.first_byte_s)
        assert answer.headers.get("connection", "").lower() == "close"
    assert_cors(answers["partial-body"])
    assert post(p, "/collect?appId=shop", GOOD_BODY).status == 200


def test_hash_code_verification(tuned_stack):
    p = tuned_stack.port
    body = GOOD_BODY.decode()
    good = hashlib.sha256(GOOD_BODY).hexdigest()[:8]
    assert post(p, f"/collect?appId=shop&hashCode={good}", GOOD_BODY).status == 200
    assert post(p, f"/collect?appId=shop&hashCode={good.upper()}", GOOD_BODY).status == 200
    assert post(p, "/collect?appId=shop", GOOD_BODY).status == 200  # absent
    assert post(p, "/collect?appId=shop&hashCode=", GOOD_BODY).status == 200  # empty = absent
    mismatch = post(p, "/collect?appId=shop&hashCode=00000000", GOOD_BODY, {"Origin": ORIGIN})
    assert mismatch.status == 400
    assert_cors(mismatch)
    assert post(p, f"/collect?appId=shop&hashCode={good}", (body + " ").encode()).status == 400
    packed = b64gzip(GOOD_BODY)
    assert post(p, f"/collect?appId=shop&hashCode={sdkgen.hash_code(packed.decode())}", packed).status == 200
    assert post(p, f"/collect?appId=shop&hashCode={good}", packed).status == 400


def test_client_address_behind_one_trusted_proxy(tuned_stack):
    p = tuned_stack.port
    plain = post(p, "/collect?appId=shop", GOOD_BODY, {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"})
    junk = exchange(
        p, head("POST", "/collect?appId=shop", b"X-Forwarded-For: 6.6.6.6, \xff\xfe", "Content-Length: 2") + b"[]"
    )
    assert (plain.status, junk.status) == (200, 200)
    rids = {plain.headers["x-request-id"], junk.headers["x-request-id"]}
    records = {r["rid"]: r for r in wait_for_rids(tuned_stack.lake, rids)}
    assert records[plain.headers["x-request-id"]]["ip"] == "203.0.113.7"
    assert records[junk.headers["x-request-id"]]["ip"] == "\ufffd\ufffd"


# ---- production mode: registered apps, per-app origins ---------------------------------------------


def test_production_mode_app_allow_list_and_origins(prod_stack):
    p = prod_stack.port
    assert post(p, "/collect?appId=unknown", GOOD_BODY).status == 403
    unknown = post(p, "/collect?appId=unknown", GOOD_BODY, {"Origin": ORIGIN})
    assert unknown.status == 403
    assert_no_cors(unknown)  # the origin belongs to another app
    assert post(p, "/collect", GOOD_BODY).status == 400  # missing appId is still a 400

    exact = post(p, "/collect?appId=shop", GOOD_BODY, {"Origin": ORIGIN})
    assert exact.status == 200
    assert_cors(exact)
    wildcard = post(p, "/collect?appId=shop", GOOD_BODY, {"Origin": "https://m.example.org"})
    assert wildcard.status == 200
    assert_cors(wildcard, "https://m.example.org")
    for origin in ("https://evil.test", "https://example.org", "https://evilexample.org", "http://shop.example.com"):
        answer = post(p, "/collect?appId=shop", GOOD_BODY, {"Origin": origin})
        assert answer.status == 200  # §2 has no origin check for POST; the browser enforces CORS
        assert_no_cors(answer)
    rejected = post(p, "/collect?appId=shop", b"nope", {"Origin": "https://m.example.org"})
    assert rejected.status == 400
    assert_cors(rejected, "https://m.example.org")


def test_production_mode_preflights(prod_stack):
    p = prod_stack.port
    allowed = request(p, "OPTIONS", "/collect?appId=shop", headers={"Origin": "https://a.b.example.org"})
    assert allowed.status == 204
    assert_cors(allowed, "https://a.b.example.org")
    assert allowed.headers["access-control-max-age"] == "600"
    for origin in ("https://evil.test", "https://example.org", "null"):
        refused = request(p, "OPTIONS", "/collect?appId=shop", headers={"Origin": origin})
        assert refused.status == 403
        assert_no_cors(refused)
    other_app = request(p, "OPTIONS", "/collect?appId=unknown", headers={"Origin": ORIGIN})
    assert other_app.status == 403
    assert_no_cors(other_app)


def test_production_mode_ignores_fake_ip(prod_stack):
    answer = post(prod_stack.port, "/collect?appId=shop&fakeIp=1.2.3.4", GOOD_BODY)
    assert answer.status == 200
    rid = answer.headers["x-request-id"]
    (record,) = [r for r in wait_for_rids(prod_stack.lake, {rid}) if r["rid"] == rid]
    assert record["fakeIp"] is None
    assert record["ip"] == "127.0.0.1"
    assert record["appId"] == "shop"


# ---- random requests: the status is what the rules predict -----------------------------------------


def predict(app_id: str | None, body: bytes, registered: set[str] | None) -> int:
    """The status §2 prescribes, in the proxy's order of checks (`registered` None: any app)."""
    try:
        check_app_id(app_id)
        if registered is not None and app_id not in registered:
            return 403
        check_declared_length(len(body), LIMITS)
        check_body(body, LIMITS)
    except Rejection as rejection:
        return rejection.status
    return 200


header_text = st.binary(min_size=1, max_size=40).map(
    lambda raw: bytes(b for b in raw if 0x20 <= b != 0x7F).strip(b" ") or b"x"
)
json_bodies = st.builds(
    lambda ws, opener, rest: (ws + opener + rest).encode(),
    st.text(alphabet=" \t\r\n", max_size=3),
    st.sampled_from("[{"),
    st.text(max_size=300),
)
other_bodies = st.one_of(
    st.binary(max_size=300).map(base64.b64encode),
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.just(b""),
    st.just(b"[" + b" " * MiB + b"]"),
)
bodies = st.one_of(json_bodies, st.binary(max_size=300).map(b64gzip), other_bodies)
queries = st.dictionaries(
    st.text(min_size=1, max_size=10).filter(lambda k: k != "appId"), st.text(max_size=20), max_size=4
)


random_request = {
    "app_id": st.one_of(st.just("shop"), st.text(min_size=1, max_size=20), st.sampled_from([None, ""])),
    "body": bodies,
    "extra": queries,
    "user_agent": header_text,
    "origin": st.one_of(st.none(), st.just(ORIGIN)),
}
random_settings = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_random_request(local, registered, app_id, body, extra, user_agent, origin) -> None:
    query = dict(extra)
    if app_id is not None:
        query["appId"] = app_id
    target = "/collect?" + urllib.parse.urlencode(query)
    headers = {"User-Agent": user_agent}
    if origin:
        headers["Origin"] = origin
    answer = post(local.port, target, body, headers)
    event(f"status {answer.status}")
    assert answer.status in (200, 400, 403, 413)
    assert answer.status == predict(app_id, body, registered), (answer, target, body[:80])
    if origin and (registered is None or app_id in registered):
        assert_cors(answer)
    else:
        assert_no_cors(answer)


@settings(random_settings, max_examples=60)
@given(**random_request)
def test_random_requests_get_the_predicted_status(stack, baseline, app_id, body, extra, user_agent, origin):
    check_random_request(stack, None, app_id, body, extra, user_agent, origin)


@settings(random_settings, max_examples=30)
@given(**random_request)
def test_random_requests_in_production_mode(prod_stack, app_id, body, extra, user_agent, origin):
    check_random_request(prod_stack, {"shop"}, app_id, body, extra, user_agent, origin)


# ---- after the battery: still serving, no restarts, no server errors, bounded memory ---------------


def server_faults(local: LocalStack, offset: int = 0) -> list[str]:
    """Error-level proxy log lines from `offset` on, but aiohttp's own 400s for unparsable requests
    (logged with an aiohttp.http_exceptions traceback): an exception in our handler shows up here."""
    with proxy_log(local).open("rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode("utf-8", "replace").splitlines()
    faults = []
    for line in lines:
        entry = orjson.loads(line) if line.startswith("{") else {"level": "error", "msg": line}
        if entry.get("level") in ("error", "critical") and "aiohttp.http_exceptions" not in entry.get("exc", ""):
            faults.append(line[:2000])
    return faults


def test_after_the_battery_the_proxy_is_healthy_and_small(stack, baseline, tuned_stack, prod_stack):
    assert post(stack.port, "/collect?appId=shop", GOOD_BODY).status == 200
    assert request(stack.port, "GET", "/ready").status == 200
    assert len(baseline["pids"]) == stack.processes
    assert serving_pids(stack) == baseline["pids"], "a proxy process died and was restarted"
    for process in proxy_processes(stack):
        rss_mb = process.memory_info().rss / MiB
        assert rss_mb < 150, f"proxy process {process.pid}: {rss_mb:.0f} MB resident"
    faults = server_faults(stack, baseline["log_offset"]) + server_faults(tuned_stack) + server_faults(prod_stack)
    assert not faults, "\n".join(faults)


def test_expect_100_continue_gets_its_interim_answer_at_once(port):
    """A client that asks first hears 100 Continue without waiting, then 200 for the body."""
    body = b'[{"event_type":"e"}]'
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head("POST", "/collect?appId=shop", "Expect: 100-continue", f"Content-Length: {len(body)}"))
        sock.settimeout(0.5)  # curl would give up waiting after 1 s and send the body anyway
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.settimeout(5)
        sock.sendall(body)
        final = sock.recv(4096)
        assert final.startswith(b"HTTP/1.1 200 "), final
