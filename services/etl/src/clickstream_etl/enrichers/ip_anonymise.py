"""The `ip_anonymise` enricher (not in the default chain): coarsen or remove client addresses.

`mode: truncate` keeps the network of each address and zeroes the host part: IPv4 to its /24
(203.0.113.77 -> 203.0.113.0), IPv6 to its /48 (2001:db8:1234:5678::1 -> 2001:db8:1234::), an
IPv4-mapped IPv6 address as IPv4 (::ffff:203.0.113.0). `mode: drop` removes them. Both apply to
the `ip` column (every address of a comma list) and to `process_info['source_ip']`, where the job
copies the address before the enrichers run; a value that is not an address is dropped, since
what it holds is unknown.

List it after `ip_geo` (and after any other plug-in that reads the address): a truncated address
locates no better than its network, and a dropped one not at all.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .. import columns as C
from ..plugins import Enricher, PluginError

MODES = ("truncate", "drop")
SOURCE_IP = "source_ip"
IPV4_PREFIX = 24
IPV6_PREFIX = 48
CACHE_SIZE = 65_536
_SEPARATOR = re.compile(r"(\s*,\s*)")
_TRUNCATED_SOURCE = "_truncated_source_ip"


def _truncate_one(text: str) -> str | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        network = ipaddress.ip_network(f"{address.ipv4_mapped}/{IPV4_PREFIX}", strict=False)
        return f"::ffff:{network.network_address}"
    prefix = IPV4_PREFIX if address.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


@functools.lru_cache(maxsize=CACHE_SIZE)
def truncate(value: str | None) -> str | None:
    """Every address of a comma list truncated, separators kept; None if any part is not an address."""
    if value is None or not value.strip():
        return None
    parts = _SEPARATOR.split(value.strip())
    for i in range(0, len(parts), 2):
        parts[i] = _truncate_one(parts[i])
        if parts[i] is None:
            return None
    return "".join(parts)


def truncate_batch(values: pa.Array) -> pa.Array:
    encoded = pc.dictionary_encode(values)
    distinct = pa.array([truncate(v) for v in encoded.dictionary.to_pylist()], type=pa.string())
    return distinct.take(encoded.indices)


class IpAnonymiseEnricher(Enricher):
    """Truncates (to /24 and /48) or drops the client address; run it after ip_geo."""

    reads_input_twice = False

    parameters = {"mode": "truncate"}

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        if self.params["mode"] not in MODES:
            raise PluginError(f"ip_anonymise: mode must be one of {', '.join(MODES)}, got {self.params['mode']!r}")

    def transform(self, df: DataFrame) -> DataFrame:
        info = F.col("process_info")
        if self.params["mode"] == "drop":
            return df.withColumns(
                {
                    C.IP: F.lit(None).cast("string"),
                    "process_info": F.map_filter(info, lambda k, _v: k != SOURCE_IP),
                }
            )
        udf = F.arrow_udf(truncate_batch, "string")
        # Python UDFs cannot run inside the map lambda, so the truncated source address is a column first.
        staged = df.withColumns({C.IP: udf(F.col(C.IP)), _TRUNCATED_SOURCE: udf(info[SOURCE_IP])})
        return staged.withColumn("process_info", self._replace_source(info)).drop(_TRUNCATED_SOURCE)

    @staticmethod
    def _replace_source(info: Column) -> Column:
        replaced = F.transform_values(info, lambda k, v: F.when(k == SOURCE_IP, F.col(_TRUNCATED_SOURCE)).otherwise(v))
        # The job keeps no null values in process_info: a source that is not an address goes entirely.
        return F.map_filter(replaced, lambda k, v: (k != SOURCE_IP) | v.isNotNull())
