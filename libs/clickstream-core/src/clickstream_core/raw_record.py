"""The raw record: one accepted HTTP request, one NDJSON line (ingestion-contract.md §1).

This module is the only place that knows the field set. Writers call `build_line`; readers call
`parse_line` / `client_ip`, which also accept the reference system's older variants.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

SOURCE_TYPE = "http_server"

# Field order follows the contract's table; readers must not depend on it.
FIELDS = (
    "date",
    "data",
    "ip",
    "source_type",
    "rid",
    "ua",
    "method",
    "uri",
    "path",
    "platform",
    "appId",
    "compression",
    "ingest_time",
    "server_ingest_time",
    "client_timestamp",
    "timestamp",
    "fakeIp",
)


def new_request_id() -> str:
    """32 lowercase hex characters, like nginx's $request_id."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class Arrival:
    """The arrival time of a request, rendered once in the three forms the record carries."""

    epoch_ms: int
    date: str
    timestamp: str

    @classmethod
    def now(cls) -> Arrival:
        return cls.at(time.time_ns() // 1_000_000)

    @classmethod
    def at(cls, epoch_ms: int) -> Arrival:
        seconds, millis = divmod(epoch_ms, 1000)
        base = _second_text(seconds)
        return cls(epoch_ms, f"{base}+00:00", f"{base}.{millis:03d}Z")


@functools.lru_cache(maxsize=4)
def _second_text(seconds: int) -> str:
    # Thousands of requests share each second; formatting it once is most of Arrival's cost.
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def integer_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith("-"):
        return -integer_or_none(text[1:]) if text[1:].isdigit() else None
    if not text or len(text) > 19 or not (text.isascii() and text.isdigit()):
        return None
    return int(text, 10)


def build_line(
    *,
    body: str,
    ip: str,
    rid: str,
    ua: str | None,
    uri: str,
    path: str,
    platform: str | None,
    app_id: str | None,
    compression: str | None,
    upload_timestamp: str | None,
    fake_ip: str | None,
    arrival: Arrival,
    method: str = "POST",
) -> bytes:
    """Encode one raw record as a JSON line (with the trailing newline)."""
    record = {
        "date": arrival.date,
        "data": body,
        "ip": ip,
        "source_type": SOURCE_TYPE,
        "rid": rid,
        "ua": ua,
        "method": method,
        "uri": uri,
        "path": path,
        "platform": platform,
        "appId": app_id,
        "compression": compression,
        "ingest_time": arrival.epoch_ms,
        "server_ingest_time": arrival.epoch_ms,
        "client_timestamp": integer_or_none(upload_timestamp),
        "timestamp": arrival.timestamp,
        "fakeIp": fake_ip,
    }
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def parse_line(line: bytes | str) -> dict:
    """Decode one raw record, normalising the reference's older variants.

    - `m` (old) is read as `method`;
    - `upload_timestamp` is an alias of `client_timestamp`, and a numeric string becomes an int;
    - missing fields are None.
    """
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise ValueError("raw record is not a JSON object")
    if "method" not in record and "m" in record:
        record["method"] = record.pop("m")
    if record.get("client_timestamp") is None and "upload_timestamp" in record:
        record["client_timestamp"] = record.pop("upload_timestamp")
    ts = record.get("client_timestamp")
    if isinstance(ts, str):
        record["client_timestamp"] = integer_or_none(ts)
    for field in FIELDS:
        record.setdefault(field, None)
    return record


def read_object(body: bytes) -> list[dict]:
    """The raw records of one object (gzip NDJSON, or plain NDJSON)."""
    import gzip

    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return [parse_line(line) for line in body.splitlines() if line.strip()]


def client_ip(record: dict) -> str | None:
    """The client address of a record; the reference stored the raw XFF comma list."""
    ip = record.get("ip")
    if not ip:
        return None
    return ip.split(",", 1)[0].strip() or None


# Raw objects in S3 or a local folder (ingestion-contract.md §4).

RAW_CONTENT_TYPE = "application/x-gzip"


def default_raw_prefix(project_id: str) -> str:
    return f"clickstream/{project_id}/data/buffer/"


def raw_object_key(prefix: str, written_at_epoch_s: float, name: str) -> str:
    """Key of a raw object; the time partition is the time the object is written (UTC)."""
    when = datetime.fromtimestamp(written_at_epoch_s, UTC)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}year={when:%Y}/month={when:%m}/day={when:%d}/hour={when:%H}/{name}.gz"
