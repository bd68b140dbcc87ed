"""The ip_anonymise enricher: /24 and /48 truncation, dropping, process_info['source_ip'], its place after ip_geo."""

from __future__ import annotations

import pytest
from clickstream_core.tables import EVENT_V2
from clickstream_etl.enrichers.ip_anonymise import IpAnonymiseEnricher, truncate
from clickstream_etl.enrichers.ip_geo import IpGeoEnricher
from clickstream_etl.plugins import DEFAULT_PLUGINS, PluginError, load_class

from .test_ip_geo import FLAT_V4, write_mmdb

INTERNAL = ("ua", "ip", "_bad_reason", "_bad_detail")
SCHEMA = EVENT_V2.ddl() + ", " + ", ".join(f"`{name}` string" for name in INTERNAL)


def events(spark, rows: list[dict]):
    """Rows whose process_info carries the address as the job puts it there (unless a row says otherwise)."""
    names = [*EVENT_V2.names, *INTERNAL]
    full = []
    for i, row in enumerate(rows):
        info = {"rid": f"r{i}", "source_ip": row.get("ip"), "process_job_id": "job"}
        full.append({"event_id": f"e{i}", "process_info": {k: v for k, v in info.items() if v is not None}, **row})
    return spark.createDataFrame([tuple(row.get(n) for n in names) for row in full], SCHEMA)


def anonymise(spark, rows: list[dict], mode: str) -> dict[str, tuple]:
    out = IpAnonymiseEnricher({"mode": mode}).transform(events(spark, rows)).collect()
    return {row["event_id"]: (row["ip"], row["process_info"]) for row in out}


def test_truncate_keeps_the_network(spark):
    rows = anonymise(
        spark,
        [{"ip": "203.0.113.77"}, {"ip": "2001:db8:1234:5678::1"}, {"ip": "198.51.100.7, 10.1.2.3"}],
        "truncate",
    )
    assert rows["e0"] == ("203.0.113.0", {"rid": "r0", "source_ip": "203.0.113.0", "process_job_id": "job"})
    assert rows["e1"] == ("2001:db8:1234::", {"rid": "r1", "source_ip": "2001:db8:1234::", "process_job_id": "job"})
    assert rows["e2"] == (
        "198.51.100.0, 10.1.2.0",
        {"rid": "r2", "source_ip": "198.51.100.0, 10.1.2.0", "process_job_id": "job"},
    )


def test_truncate_nulls_and_non_addresses(spark):
    rows = anonymise(
        spark,
        [{"ip": None}, {"ip": "unknown"}, {"ip": "203.0.113.77", "process_info": None}],
        "truncate",
    )
    assert rows["e0"] == (None, {"rid": "r0", "process_job_id": "job"})
    # What is not an address is not kept: its content is unknown.
    assert rows["e1"] == (None, {"rid": "r1", "process_job_id": "job"})
    assert rows["e2"] == ("203.0.113.0", None)


def test_drop_removes_the_address(spark):
    rows = anonymise(spark, [{"ip": "203.0.113.77"}, {"ip": "2001:db8::1", "process_info": None}], "drop")
    assert rows["e0"] == (None, {"rid": "r0", "process_job_id": "job"})
    assert rows["e1"] == (None, None)


def test_other_columns_pass_through(spark):
    df = events(spark, [{"ip": "203.0.113.77", "app_id": "shop", "geo_city": "Tokyo", "ua": "curl/8"}])
    for mode in ("truncate", "drop"):
        out = IpAnonymiseEnricher({"mode": mode}).transform(df)
        assert out.columns == df.columns
        row = out.collect()[0]
        assert (row["app_id"], row["geo_city"], row["ua"]) == ("shop", "Tokyo", "curl/8")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.255", "203.0.113.0"),
        ("10.0.0.1", "10.0.0.0"),
        ("2001:db8:abcd:12::1", "2001:db8:abcd::"),
        ("2001::1:2:3:4:5:6", "2001:0:1::"),  # the '::' stands for one zero group here
        ("::1", "::"),
        ("::ffff:203.0.113.77", "::ffff:203.0.113.0"),
        (" 203.0.113.77 ", "203.0.113.0"),
        ("203.0.113.77,198.51.100.7", "203.0.113.0,198.51.100.0"),
        ("203.0.113.77, junk", None),
        ("", None),
        (None, None),
    ],
)
def test_truncate_values(value, expected):
    assert truncate(value) == expected


def test_geo_must_run_before_anonymising(spark, tmp_path_factory):
    """London is known for 81.2.69.128/25 only, so the truncated 81.2.69.0 no longer locates."""
    database = str(write_mmdb(tmp_path_factory.mktemp("anon-geo") / "test-anon-geo-ipv4.mmdb", FLAT_V4, 4))
    geo, anon = IpGeoEnricher({"database": database}), IpAnonymiseEnricher()
    df = events(spark, [{"ip": "81.2.69.142"}])
    right = anon.transform(geo.transform(df)).collect()[0]
    assert (right["geo_city"], right["geo_country"], right["ip"]) == ("London", "United Kingdom", "81.2.69.0")
    wrong = geo.transform(anon.transform(df)).collect()[0]
    assert (wrong["geo_city"], wrong["geo_country"], wrong["ip"]) == (None, None, "81.2.69.0")


def test_off_by_default_and_parameters():
    assert "ip_anonymise" not in DEFAULT_PLUGINS["enrichers"]
    assert load_class("ip_anonymise") is IpAnonymiseEnricher
    assert IpAnonymiseEnricher().params == {"mode": "truncate"}
    with pytest.raises(PluginError, match="mode must be one of truncate, drop"):
        IpAnonymiseEnricher({"mode": "hash"})
