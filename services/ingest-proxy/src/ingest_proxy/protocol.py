"""The SDK request rules of ingestion-contract.md §2, as pure functions over bytes and strings.

The edge never parses events: it only checks what no later stage could use (empty, not UTF-8,
neither JSON text nor Base64 of gzip, a wrong hashCode) and leaves per-event problems to the ETL.
"""

from __future__ import annotations

import binascii
import hashlib
import zlib
from dataclasses import dataclass

import orjson

GZIP_MAGIC = b"\x1f\x8b"
_WHITESPACE = b" \t\r\n"


class Rejection(Exception):
    """A request the edge answers with `status`; `reason` labels the rejection metric."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 1024 * 1024
    max_decompressed_bytes: int = 10 * 1024 * 1024
    strict_json: bool = False
    verify_hash_code: bool = False


def check_app_id(app_id: str | None) -> str:
    if not app_id:
        raise Rejection(400, "missing_app_id", "appId query parameter is required")
    return app_id


def check_declared_length(content_length: int | None, limits: Limits) -> None:
    if content_length is not None and content_length > limits.max_body_bytes:
        raise Rejection(413, "too_large", f"body over {limits.max_body_bytes} bytes")


def gunzip_capped(data: bytes, cap: int) -> bytes:
    """Undo HTTP Content-Encoding: gzip, refusing to inflate past `cap` bytes (decompression bombs)."""
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, auto-detected
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error:
        raise Rejection(400, "bad_content_encoding", "body is not valid gzip") from None
    if len(out) > cap or inflater.unconsumed_tail:
        raise Rejection(413, "too_large_decompressed", f"decompressed body over {cap} bytes")
    if not inflater.eof:
        raise Rejection(400, "bad_content_encoding", "gzip body is truncated")
    return out


def decode_content(data: bytes, content_encoding: str | None, limits: Limits) -> bytes:
    if not content_encoding or content_encoding.strip().lower() == "identity":
        return data
    if content_encoding.strip().lower() in ("gzip", "x-gzip", "deflate"):
        return gunzip_capped(data, limits.max_decompressed_bytes)
    raise Rejection(415, "unsupported_content_encoding", f"Content-Encoding {content_encoding!r} not supported")


def check_body(data: bytes, limits: Limits) -> str:
    """Return the body as text when some later stage can use it, else raise a 400 Rejection."""
    if not data:
        raise Rejection(400, "empty_body", "empty body")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejection(400, "not_utf8", "body is not UTF-8") from None
    stripped = data.strip(_WHITESPACE)
    if not stripped:
        raise Rejection(400, "empty_body", "blank body")
    first = stripped[:1]
    if first in (b"[", b"{"):
        if limits.strict_json:
            try:
                orjson.loads(stripped)
            except orjson.JSONDecodeError:
                raise Rejection(400, "invalid_json", "body is not valid JSON") from None
        return text
    try:
        raw = binascii.a2b_base64(stripped, strict_mode=True)
    except (binascii.Error, ValueError):
        raise Rejection(400, "not_base64", "body is neither JSON nor Base64") from None
    if raw[:2] != GZIP_MAGIC:
        raise Rejection(400, "not_gzip", "Base64 body does not decode to gzip data")
    return text


def hash_code(body: str) -> str:
    """What the SDKs send as `hashCode`: the first 8 hex chars of SHA-256 over the body string."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:8]


def check_hash_code(body: str, sent: str | None, limits: Limits) -> None:
    if not limits.verify_hash_code or not sent:
        return
    if hash_code(body) != sent.strip().lower()[:8]:
        raise Rejection(400, "hash_mismatch", "hashCode does not match the body")


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: int) -> str:
    """Walk X-Forwarded-For from the right past `trusted_proxies` hops we put there ourselves."""
    if trusted_proxies <= 0 or not forwarded_for:
        return peer or ""
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    hops = [hop for hop in hops if hop]
    # The last trusted proxy is our peer; it appended the address it saw, and so on leftwards.
    index = len(hops) - trusted_proxies
    if index < 0:
        return hops[0] if hops else (peer or "")
    return hops[index]
