"""The raw record module: encoding, parsing (with the reference's variants) and object keys."""

from __future__ import annotations

import orjson
import pytest
from clickstream_core import raw_record


def build(**overrides) -> dict:
    fields = dict(
        body='[{"a":1}]',
        ip="1.2.3.4",
        rid="0" * 32,
        ua="UA",
        uri="/collect?appId=a",
        path="/collect",
        platform="Web",
        app_id="a",
        compression=None,
        upload_timestamp="1700000000123",
        fake_ip=None,
        arrival=raw_record.Arrival.at(1_704_326_282_699),
    )
    fields.update(overrides)
    line = raw_record.build_line(**fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return orjson.loads(line)


def test_record_has_exactly_the_contract_fields_and_times():
    record = build()
    assert list(record) == list(raw_record.FIELDS)
    assert record["date"] == "2024-01-03T23:58:02+00:00"
    assert record["timestamp"] == "2024-01-03T23:58:02.699Z"
    assert record["ingest_time"] == record["server_ingest_time"] == 1_704_326_282_699
    assert record["client_timestamp"] == 1_700_000_000_123
    assert record["source_type"] == "http_server" and record["method"] == "POST"
    assert record["data"] == '[{"a":1}]'


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ("123", 123),
        (" 42 ", 42),
        ("-5", -5),
        ("", None),
        ("12a", None),
        ("1_000", None),
        ("١٢", None),
        ("1" * 20, None),
        (None, None),
        ("1.5", None),
    ],
)
def test_client_timestamp_only_from_an_integer(sent, expected):
    assert build(upload_timestamp=sent)["client_timestamp"] == expected


def test_parse_accepts_the_reference_variants():
    old = orjson.dumps({"m": "POST", "upload_timestamp": "1700000000000", "ip": "9.9.9.9, 10.0.0.1"})
    record = raw_record.parse_line(old)
    assert record["method"] == "POST"
    assert record["client_timestamp"] == 1_700_000_000_000
    assert raw_record.client_ip(record) == "9.9.9.9"
    assert record["rid"] is None  # missing fields read as null


def test_object_key_uses_the_write_time_in_utc():
    key = raw_record.raw_object_key("clickstream/p/data/buffer/", 1_704_326_282.0, "w1-5")
    assert key == "clickstream/p/data/buffer/year=2024/month=01/day=03/hour=23/w1-5.gz"
    assert raw_record.raw_object_key("pre", 0, "n") == "pre/year=1970/month=01/day=01/hour=00/n.gz"
