"""Raw objects -> one row per request: the envelope of ingestion-contract.md §1 and the body decoded.

Runs in Python over Arrow batches (mapInArrow): the envelope is parsed by the one raw-record module
(clickstream_core.raw_record), and a body that is Base64 of gzip is inflated (ISA-L). The event
JSON itself is left to Spark (the transformer parses it with an explicit schema).

`body_kind` says what the body was: `json` (text starting with [ or {), `gzip` (Base64 of gzip,
inflated to text) or `other` (kept as received for transformers that know other formats). A line
that is not a raw record gets `error` set and its text kept in `body`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

import pyarrow as pa
from clickstream_core.raw_record import client_ip, integer_or_none, parse_line
from isal import igzip
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

MAX_INFLATED_BYTES = 64 * 1024 * 1024

REQUEST_FIELDS = [
    ("rid", pa.string()),
    ("ingest_time_msec", pa.int64()),
    ("upload_time_msec", pa.int64()),
    ("app_id", pa.string()),
    ("platform", pa.string()),
    ("compression", pa.string()),
    ("uri", pa.string()),
    ("ua", pa.string()),
    ("ip", pa.string()),
    ("body", pa.string()),
    ("body_kind", pa.string()),
    ("error", pa.string()),
    ("input_file", pa.string()),
]
REQUEST_SCHEMA = pa.schema(REQUEST_FIELDS)
REQUEST_DDL = ", ".join(f"{name} {'bigint' if type_ == pa.int64() else 'string'}" for name, type_ in REQUEST_FIELDS)


def decode_body_bytes(data: object) -> tuple[str | bytes | None, str, str | None]:
    """(body, kind, error) of a raw record's `data`; an inflated body stays bytes (orjson reads
    bytes directly, and Arrow takes them without a round trip through str)."""
    if not isinstance(data, str):
        return None, "other", "data is not a string"
    head = data.lstrip()[:1]
    if head in ("[", "{"):
        return data, "json", None
    try:
        packed = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return data, "other", None
    if packed[:2] != b"\x1f\x8b":
        return data, "other", None
    try:
        inflated = igzip.decompress(packed)
    except (OSError, EOFError, ValueError) as exc:
        return data, "other", f"gzip body does not inflate: {exc}"
    if len(inflated) > MAX_INFLATED_BYTES:
        return None, "other", f"inflated body over {MAX_INFLATED_BYTES} bytes"
    return inflated, "gzip", None


def as_text(body, kind: str, error: str | None) -> tuple[str | None, str, str | None]:
    """A decoded body as text (an inflated one arrives as bytes)."""
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8"), kind, error
        except UnicodeDecodeError:
            return None, "other", "inflated body is not UTF-8"
    return body, kind, error


def _upload_time(record: dict) -> int | None:
    value = record.get("client_timestamp")
    if isinstance(value, int):
        return value
    uri = record.get("uri") or ""
    marker = "upload_timestamp="
    at = uri.find(marker)
    if at < 0:
        return None
    return integer_or_none(uri[at + len(marker) :].split("&", 1)[0])


ENVELOPE = ("rid", "ingest_time_msec", "upload_time_msec", "app_id", "platform", "compression", "uri", "ua", "ip")


def parse_request(line: str | None) -> tuple[dict, object, str, str | None]:
    """(envelope, body, body_kind, error) of one raw line; the envelope has the ENVELOPE fields."""
    try:
        record = parse_line(line or "")
    except ValueError as exc:
        return dict.fromkeys(ENVELOPE), line, "other", f"not a raw record: {exc}"
    ingest = record.get("ingest_time")
    envelope = {
        "rid": record.get("rid"),
        "ingest_time_msec": ingest if isinstance(ingest, int) else integer_or_none(str(ingest)),
        "upload_time_msec": _upload_time(record),
        "app_id": record.get("appId"),
        "platform": record.get("platform"),
        "compression": record.get("compression"),
        "uri": record.get("uri"),
        "ua": record.get("ua"),
        "ip": client_ip(record),
    }
    body, kind, error = decode_body_bytes(record.get("data"))
    if envelope["ingest_time_msec"] is None and error is None:
        error = "raw record has no ingest_time"
    return envelope, body, kind, error


def decode_lines(lines: list[str | None], files: list[str | None]) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name, _ in REQUEST_FIELDS}
    for line, file in zip(lines, files, strict=True):
        envelope, *decoded = parse_request(line)
        body, kind, error = as_text(*decoded)
        for name in ENVELOPE:
            out[name].append(envelope[name])
        out["body"].append(body)
        out["body_kind"].append(kind)
        out["error"].append(error)
        out["input_file"].append(file)
    return out


def _decode_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        lines = batch.column("value").to_pylist()
        files = batch.column("input_file").to_pylist()
        yield pa.RecordBatch.from_pydict(decode_lines(lines, files), schema=REQUEST_SCHEMA)


def raw_lines(spark: SparkSession, paths: list[str]) -> DataFrame:
    """`value` (one raw record's text) and `input_file` of every non-empty line of the objects."""
    lines = spark.read.text(paths).where(F.length(F.trim("value")) > 0)
    return lines.select("value", F.col("_metadata.file_path").alias("input_file"))


def read_requests(spark: SparkSession, paths: list[str]) -> DataFrame:
    """One row per raw record of the given objects (gzip or plain NDJSON)."""
    if not paths:
        return spark.createDataFrame([], REQUEST_DDL)
    return raw_lines(spark, paths).mapInArrow(_decode_batches, REQUEST_DDL)
