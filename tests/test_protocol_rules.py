"""The request rules of ingestion-contract.md §2 and the CORS rules, as pure functions.

Hand-checked cases pin the behaviour the contract names; Hypothesis properties check the same rules
over generated input (every JSON text and every Base64(gzip) accepted, everything else a 400, the
gzip cap never exceeded, the X-Forwarded-For walk, the origin matching).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import zlib

import pytest
from clickstream_core.appconfig import App, AppConfig
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ingest_proxy.cors import PREFLIGHT_METHODS, CorsPolicy, _matches
from ingest_proxy.protocol import (
    GZIP_MAGIC,
    Limits,
    Rejection,
    check_app_id,
    check_body,
    check_declared_length,
    check_hash_code,
    client_address,
    decode_content,
    gunzip_capped,
    hash_code,
)

from scripts import sdkgen

LIMITS = Limits()
JSON_WHITESPACE = " \t\r\n"
BASE64_SHAPE = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def rejected(call, *args) -> Rejection:
    with pytest.raises(Rejection) as info:
        call(*args)
    return info.value


def b64gzip(data: bytes) -> bytes:
    return base64.b64encode(gzip.compress(data))


# ---- check_body: hand-checked ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"{}",
        b'[{"event_type":"_page_view"}]',
        b'  \r\n\t[{"a": 1}]  \n',
        b"[not even json",  # the edge does not parse events (non-strict mode)
        '["caf\u00e9 \u2603 \U0001f600"]'.encode(),
        b64gzip(b'[{"event_type":"_session_start"}]'),
        b"\n" + b64gzip(b"") + b"\r\n",  # Base64 of an empty gzip stream still starts with 1f8b
    ],
)
def test_check_body_accepts(body):
    assert check_body(body, LIMITS) == body.decode("utf-8")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty_body"),
        (b" \r\n\t ", "empty_body"),
        (b"\xff[]", "not_utf8"),
        (b"[\xed\xa0\x80]", "not_utf8"),  # an encoded surrogate is not UTF-8
        (b'["caf\xe9"]', "not_utf8"),  # Latin-1
        (b"\xef\xbb\xbf[]", "not_base64"),  # a BOM is not JSON whitespace
        (b"hello world", "not_base64"),
        (b"eyJhIjoxfQ", "not_base64"),  # Base64 without its padding
        (b"QUJD\nREVG", "not_base64"),  # line-wrapped Base64
        (b"H4sI!!!!", "not_base64"),
        (b"null", "not_gzip"),  # four Base64 characters, decoding to 9e e9 65
        (b"123", "not_base64"),
        (base64.b64encode(b'[{"a":1}]'), "not_gzip"),  # Base64 of plain JSON
        (base64.b64encode(zlib.compress(b"[]")), "not_gzip"),  # zlib, not gzip
        (base64.b64encode(b"\x1f"), "not_gzip"),
    ],
)
def test_check_body_rejects(body, reason):
    rejection = rejected(check_body, body, LIMITS)
    assert (rejection.status, rejection.reason) == (400, reason)


def test_strict_json_mode_parses_json_but_never_base64():
    strict = Limits(strict_json=True)
    assert check_body(b' [{"a": 1}] ', strict)
    assert rejected(check_body, b"[not json", strict).reason == "invalid_json"
    assert rejected(check_body, b"{} {}", strict).status == 400
    assert check_body(b64gzip(b"not json either"), strict)  # gzip bodies are the ETL's business
    assert check_body(b"[not json", LIMITS)  # the default mode does not parse


# ---- check_body: properties ------------------------------------------------------------------------

json_text = st.builds(
    lambda ws, opener, rest: ws + opener + rest,
    st.text(alphabet=JSON_WHITESPACE, max_size=5),
    st.sampled_from("[{"),
    st.text(max_size=200),
)


@given(json_text)
def test_any_text_opening_like_json_is_accepted(text):
    data = text.encode("utf-8", "surrogatepass")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:  # a lone surrogate in the generated text: that is the not-UTF-8 case
        assert rejected(check_body, data, LIMITS).status == 400
        return
    assert check_body(data, LIMITS) == text


@given(st.binary(max_size=2000), st.text(alphabet=JSON_WHITESPACE, max_size=3))
def test_any_base64_of_gzip_is_accepted(payload, padding):
    body = padding.encode() + b64gzip(payload) + padding.encode()
    assert check_body(body, LIMITS) == body.decode()


@given(
    st.binary(max_size=300), st.integers(min_value=0, max_value=300), st.sampled_from(b"\x80\xbf\xc0\xc1\xf5\xfe\xff")
)
def test_every_non_utf8_body_is_a_400(data, where, bad_byte):
    # 0x80-0xbf cannot start a character; c0, c1, f5-ff never occur in UTF-8. A lone one placed at a
    # character boundary (here: in ASCII data) is always invalid.
    ascii_data = bytes(b & 0x7F for b in data)
    where = min(where, len(ascii_data))
    body = ascii_data[:where] + bytes([bad_byte]) + ascii_data[where:]
    rejection = rejected(check_body, body, LIMITS)
    assert (rejection.status, rejection.reason) == (400, "not_utf8")


@given(st.binary())
def test_arbitrary_bytes_are_rejected_exactly_when_not_utf8(data):
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert rejected(check_body, data, LIMITS).reason == "not_utf8"
    else:
        try:
            check_body(data, LIMITS)
        except Rejection as rejection:
            assert rejection.status == 400
            assert rejection.reason != "not_utf8"


@given(st.binary(min_size=1, max_size=500).filter(lambda raw: raw[:2] != GZIP_MAGIC))
@example(b"\x1f\x8a")
@example(b"\x8b\x1f")
def test_base64_of_anything_but_gzip_is_a_400(raw):
    rejection = rejected(check_body, base64.b64encode(raw), LIMITS)
    assert (rejection.status, rejection.reason) == (400, "not_gzip")


def expected_acceptance(data: bytes) -> bool:
    """An independent statement of the §2 rules: UTF-8, and JSON-looking or Base64 of gzip."""
    if not data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    stripped = data.strip(JSON_WHITESPACE.encode())
    if not stripped:
        return False
    if stripped[:1] in (b"[", b"{"):
        return True
    if not BASE64_SHAPE.fullmatch(stripped) or len(stripped) % 4:
        return False
    return base64.b64decode(stripped)[:2] == GZIP_MAGIC


def outcome(data: bytes) -> int:
    try:
        check_body(data, LIMITS)
    except Rejection as rejection:
        return rejection.status
    return 200


base64ish = st.text(alphabet="ABCDH4sIgw+/=0189 \t\r\n[{}", max_size=40).map(str.encode)


@given(st.one_of(st.text().map(lambda t: t.encode("utf-8", "surrogatepass")), base64ish, st.binary()))
@example(b64gzip(b"x"))
@example(b"H4sI")
@example(b"====")
@example(b"H4sIAA==")
def test_check_body_matches_the_contract_for_any_input(data):
    status = outcome(data)
    assert status in (200, 400)
    assert (status == 200) == expected_acceptance(data)


@given(st.text(max_size=100).filter(lambda t: not t.strip(JSON_WHITESPACE).startswith(("[", "{"))))
def test_text_that_is_neither_json_nor_base64_is_a_400(text):
    body = (text + "!").encode("utf-8", "surrogatepass")  # "!" is in no Base64 alphabet
    assert outcome(body) == 400


# ---- gzip Content-Encoding ------------------------------------------------------------------------


def test_gunzip_hand_cases():
    assert gunzip_capped(gzip.compress(b"[1,2,3]"), 100) == b"[1,2,3]"
    assert gunzip_capped(zlib.compress(b"[]"), 100) == b"[]"  # Content-Encoding: deflate (zlib)
    assert gunzip_capped(gzip.compress(b"x" * 100), 100) == b"x" * 100  # exactly at the cap
    assert rejected(gunzip_capped, gzip.compress(b"x" * 101), 100).status == 413
    assert rejected(gunzip_capped, b"[]", 100).reason == "bad_content_encoding"
    truncated = gzip.compress(b"hello world" * 10)[:-12]
    assert rejected(gunzip_capped, truncated, 1000).status == 400
    assert rejected(gunzip_capped, b"", 100).status == 400


def test_gunzip_stops_a_bomb_at_the_cap():
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)  # 64 MiB of zeros in ~64 KB
    assert len(bomb) < 100_000
    rejection = rejected(gunzip_capped, bomb, 10 * 1024 * 1024)
    assert (rejection.status, rejection.reason) == (413, "too_large_decompressed")


@settings(max_examples=60)
@given(st.binary(max_size=4000), st.integers(min_value=0, max_value=5000), st.sampled_from([gzip, zlib]))
def test_gunzip_never_returns_more_than_the_cap(payload, cap, codec):
    packed = codec.compress(payload)
    if len(payload) <= cap:
        assert gunzip_capped(packed, cap) == payload
    else:
        rejection = rejected(gunzip_capped, packed, cap)
        assert rejection.status == 413


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=1000))
def test_gunzip_of_garbage_is_a_4xx_never_an_exception(data, cap):
    try:
        out = gunzip_capped(data, cap)
    except Rejection as rejection:
        assert rejection.status in (400, 413)
    else:
        assert len(out) <= cap


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
def test_decode_content_identity(encoding):
    assert decode_content(b"[]", encoding, LIMITS) == b"[]"


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "x-gzip", " gzip ", "deflate"])
def test_decode_content_gzip(encoding):
    assert decode_content(gzip.compress(b'[{"a":1}]'), encoding, LIMITS) == b'[{"a":1}]'


def test_decode_content_unknown_encoding_is_415():
    assert rejected(decode_content, b"[]", "br", LIMITS).status == 415


def test_decode_content_caps_at_the_decompressed_limit():
    limits = Limits(max_body_bytes=1024, max_decompressed_bytes=4096)
    assert decode_content(gzip.compress(b"x" * 4096), "gzip", limits) == b"x" * 4096
    assert rejected(decode_content, gzip.compress(b"x" * 4097), "gzip", limits).status == 413


# ---- appId, declared length ------------------------------------------------------------------------


@pytest.mark.parametrize("app_id", [None, ""])
def test_missing_or_empty_app_id_is_400(app_id):
    rejection = rejected(check_app_id, app_id)
    assert (rejection.status, rejection.reason) == (400, "missing_app_id")


def test_app_id_present():
    assert check_app_id("shop") == "shop"


def test_declared_length():
    check_declared_length(None, LIMITS)  # chunked: counted while read
    check_declared_length(0, LIMITS)
    check_declared_length(LIMITS.max_body_bytes, LIMITS)
    assert rejected(check_declared_length, LIMITS.max_body_bytes + 1, LIMITS).status == 413
    assert rejected(check_declared_length, 10**12, LIMITS).status == 413


# ---- hashCode --------------------------------------------------------------------------------------


def test_hash_code_hand_checked():
    # SHA-256("abc") = ba7816bf 8f01cfea ..., SHA-256("") = e3b0c442 98fc1c14 ...
    assert hash_code("abc") == "ba7816bf"
    assert hash_code("") == "e3b0c442"
    assert hash_code("\u00e9") == hashlib.sha256(b"\xc3\xa9").hexdigest()[:8]  # over the UTF-8 bytes


def test_check_hash_code():
    on = Limits(verify_hash_code=True)
    body = '[{"event_type":"_page_view"}]'
    good = hash_code(body)
    check_hash_code(body, good, on)
    check_hash_code(body, good.upper(), on)
    check_hash_code(body, hashlib.sha256(body.encode()).hexdigest(), on)  # the full digest: its prefix
    check_hash_code(body, None, on)  # absent: nothing to verify
    check_hash_code(body, "", on)
    rejection = rejected(check_hash_code, body, "00000000", on)
    assert (rejection.status, rejection.reason) == (400, "hash_mismatch")
    check_hash_code(body, "00000000", LIMITS)  # verification off


@given(st.text(max_size=300))
def test_hash_code_is_what_the_sdk_sends(body):
    body = body.encode("utf-8", "replace").decode("utf-8")
    assert hash_code(body) == sdkgen.hash_code(body)
    check_hash_code(body, sdkgen.hash_code(body), Limits(verify_hash_code=True))


# ---- client address --------------------------------------------------------------------------------


def test_client_address_hand_cases():
    assert client_address("10.0.0.9", None, 0) == "10.0.0.9"
    assert client_address("10.0.0.9", "1.2.3.4", 0) == "10.0.0.9"  # no trusted proxy: XFF is forgeable
    assert client_address("10.0.0.9", "1.2.3.4", 1) == "1.2.3.4"
    assert client_address("10.0.0.9", "6.6.6.6, 1.2.3.4", 1) == "1.2.3.4"
    assert client_address("10.0.0.9", "6.6.6.6, 1.2.3.4, 10.0.0.2", 2) == "1.2.3.4"
    assert client_address("10.0.0.9", " 1.2.3.4 ,, 10.0.0.2 ", 2) == "1.2.3.4"  # blanks skipped
    assert client_address("10.0.0.9", "1.2.3.4", 3) == "1.2.3.4"  # fewer hops than proxies
    assert client_address("10.0.0.9", "", 1) == "10.0.0.9"
    assert client_address("10.0.0.9", " , ", 1) == "10.0.0.9"
    assert client_address(None, None, 1) == ""


hop = st.text(alphabet="0123456789abcdef.:", min_size=1, max_size=39)


@given(
    forged=st.lists(hop, max_size=5),
    client=hop,
    proxies=st.lists(hop, max_size=4),
    peer=hop,
    spacing=st.sampled_from([",", ", ", " , "]),
)
def test_client_address_walks_past_the_trusted_proxies(forged, client, proxies, peer, spacing):
    # The client may send any X-Forwarded-For; our first proxy appends the client's address, each
    # further proxy the address of the one before: N trusted proxies append N hops.
    trusted = len(proxies) + 1
    appended = [client, *proxies]
    header = spacing.join(forged + appended)
    assert client_address(peer, header, trusted) == client


@given(st.lists(hop, max_size=5), hop)
def test_client_address_ignores_xff_without_trusted_proxies(hops, peer):
    assert client_address(peer, ", ".join(hops), 0) == peer


# ---- CORS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "pattern", "matches"),
    [
        ("https://shop.example.com", "https://shop.example.com", True),
        ("https://SHOP.example.com", "https://shop.example.com/", True),
        ("http://shop.example.com", "https://shop.example.com", False),
        ("https://shop.example.com:8443", "https://shop.example.com", False),
        ("https://shop.example.com.evil.net", "https://shop.example.com", False),
        ("https://a.example.com", "*.example.com", True),
        ("http://a.b.example.com:8080", "*.example.com", True),
        ("https://example.com", "*.example.com", False),
        ("https://evilexample.com", "*.example.com", False),
        ("https://example.com.evil.net", "*.example.com", False),
        ("https://a.example.co", "*.example.com", False),
        ("https://.example.com", "*.example.com", False),
        ("a.example.com", "*.example.com", False),  # no scheme: not an origin
        ("null", "*.example.com", False),
        ("null", "https://shop.example.com", False),
        ("https://anything.test", "*", True),
        ("null", "*", True),
    ],
)
def test_origin_matching(origin, pattern, matches):
    assert _matches(origin, pattern) is matches


label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
host = st.lists(label, min_size=1, max_size=4).map(".".join)
scheme = st.sampled_from(["http", "https"])
port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))


@given(scheme, host, port)
def test_wildcard_matches_exactly_the_subdomains(scheme_, host_, port_):
    origin = f"{scheme_}://{host_}{port_}"
    assert _matches(origin, "*.example.com") == host_.endswith(".example.com")
    assert _matches(f"{scheme_}://{host_}.example.com{port_}", "*.example.com")
    assert not _matches(f"{scheme_}://{host_}example.com{port_}", "*.example.com")
    assert _matches(origin, "*")
    assert _matches(origin, origin.upper())
    assert not _matches(origin + "x", origin)


def policy(global_origins=(), apps=()) -> CorsPolicy:
    config = AppConfig(apps={app.app_id: app for app in apps}, open_to_all=not apps)
    return CorsPolicy(list(global_origins), config, 600)


def test_policy_per_app_and_global_origins():
    cors = policy(
        ["https://admin.example.net"],
        [App("shop", allowed_origins=("https://shop.example.com", "*.example.org")), App("blog")],
    )
    assert cors.allowed("https://shop.example.com", "shop")
    assert cors.allowed("https://m.example.org", "shop")
    assert not cors.allowed("https://example.org", "shop")
    assert not cors.allowed("https://shop.example.com", "blog")  # another app's origin
    assert not cors.allowed("https://shop.example.com", None)
    assert cors.allowed("https://admin.example.net", "blog")  # global origins hold for every app
    assert cors.allowed("https://admin.example.net", None)
    assert not cors.allowed(None, "shop")
    assert not cors.allowed("", "shop")


def test_policy_dev_echoes_any_origin_but_not_absurd_ones():
    cors = policy(["*"])
    assert cors.allowed("https://anything.test:1234", "x")
    assert cors.allowed("null", None)
    assert not cors.allowed(None, "x")
    assert not cors.allowed("https://" + "a" * 600, "x")  # over 512 characters


def test_policy_without_origins_allows_nothing():
    cors = policy([], [App("shop")])
    assert not cors.allowed("https://shop.example.com", "shop")


def test_cors_headers():
    cors = policy(["*"])
    origin = "https://shop.example.com"
    assert cors.headers(origin) == {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    pre = cors.preflight_headers(origin, "content-type, x-custom")
    assert pre["Access-Control-Allow-Origin"] == origin
    assert pre["Access-Control-Allow-Credentials"] == "true"
    assert pre["Vary"] == "Origin"
    assert pre["Access-Control-Allow-Methods"] == PREFLIGHT_METHODS == "POST, OPTIONS"
    assert pre["Access-Control-Allow-Headers"] == "content-type, x-custom"
    assert pre["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Headers" not in cors.preflight_headers(origin, None)
    assert len(cors.preflight_headers(origin, "x" * 5000)["Access-Control-Allow-Headers"]) == 1024
    assert "*" not in cors.headers(origin).values()  # credentialed requests: never a literal *
