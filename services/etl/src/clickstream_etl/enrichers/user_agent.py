"""The `user_agent` enricher: the request's User-Agent -> device_ua_* columns (reference-system.md §4.5).

The parse is ua-parser 1.x over the uap-core rules (`ua-parser-builtins`), resolved by the Rust
extractor of `ua-parser-rs` (about 25x faster than the pure-Python resolver). Families that no rule
matches are "Other", as in the Java uap parser the reference used. Values the reference derives:

- versions are `major.minor.patch`, or as much of it as the parse has (`major.minor`, `major`);
- the device category comes from the device family alone: "bot" in it, or exactly Spider/Crawler,
  is Bot; then mobile/phone -> Mobile; tablet/pad/kindle -> Tablet; pc/mac/linux -> PC; else Other.
  So a desktop browser (device family "Other") is in category Other, as in the reference;
- `device_ua` holds the parse as JSON texts under `userAgent`, `os` and `device`, and the raw
  header under `string`.

A row without a User-Agent keeps whatever the transformer put in these columns. A Bot row is not
dropped (the job routes every rejected row to the bad rows): with `filter_bots` on it gets the
reason `bot`, unless an earlier stage rejected it already.

Headers are parsed in Arrow batches, each distinct header of a batch once (a per-worker LRU cache
keeps results across batches). Behind the Clickstream SDK transformer this runs inside its split
pass, once per request (`request_enrichment`); behind any other transformer only the distinct
headers of the run go through Python and the table of parses, a few thousand rows a day for a
site, is broadcast and joined back to the events by header.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import ua_parser
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from .. import columns as C
from ..badrows import Reason
from ..plugins import Enricher, PluginError, RequestEnrichment

log = logging.getLogger(__name__)

BOT = "Bot"
CACHE_SIZE = 65_536
OUTPUT_COLUMNS = (
    "device_ua_browser",
    "device_ua_browser_version",
    "device_ua_os",
    "device_ua_os_version",
    "device_ua_device",
    "device_ua_device_category",
)
_MAP = "device_ua"
_ARROW_TYPE = pa.struct(
    [pa.field(name, pa.string()) for name in OUTPUT_COLUMNS] + [pa.field(_MAP, pa.map_(pa.string(), pa.string()))]
)
_SPARK_TYPE = ", ".join(f"{name} string" for name in OUTPUT_COLUMNS) + f", {_MAP} map<string,string>"
_PARSED = "_ua_parsed"
# One row per distinct header: the header (the join key) and its parse.
_TABLE_TYPE = f"`{C.UA}` string, {_PARSED} struct<{_SPARK_TYPE}>"


@functools.cache
def _parser() -> ua_parser.Parser:
    if ua_parser.RegexResolver is None:
        log.warning("ua-parser-rs is not installed: user agents are parsed by the slow pure-Python resolver")
        return ua_parser.Parser(ua_parser.BestAvailableResolver(ua_parser.load_builtins()))
    # No CachingResolver: parse() below caches the finished row instead of the raw parse.
    return ua_parser.Parser(ua_parser.RegexResolver(ua_parser.load_lazy_builtins()))


def resolver_name() -> str:
    """The module of the resolver in use (`ua_parser.regex` is the Rust one)."""
    return type(_parser().resolver).__module__


def device_category(family: str | None) -> str | None:
    if family is None:
        return None
    lower = family.lower()
    if "bot" in lower or family in ("Spider", "Crawler"):
        return BOT
    if "mobile" in lower or "phone" in lower:
        return "Mobile"
    if "tablet" in lower or "pad" in lower or "kindle" in lower:
        return "Tablet"
    if "pc" in lower or "mac" in lower or "linux" in lower:
        return "PC"
    return "Other"


def version(major: str | None, minor: str | None, patch: str | None) -> str | None:
    if major is None:
        return None
    if minor is None:
        return major
    if patch is None:
        return f"{major}.{minor}"
    return f"{major}.{minor}.{patch}"


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


@functools.lru_cache(maxsize=CACHE_SIZE)
def parse(user_agent: str | None) -> dict[str, Any] | None:
    """The output columns for one header; None for a missing or blank header."""
    if user_agent is None or not user_agent.strip():
        return None
    result = _parser().parse(user_agent).with_defaults()
    agent, os, device = result.user_agent, result.os, result.device
    return {
        "device_ua_browser": agent.family,
        "device_ua_browser_version": version(agent.major, agent.minor, agent.patch),
        "device_ua_os": os.family,
        "device_ua_os_version": version(os.major, os.minor, os.patch),
        "device_ua_device": device.family,
        "device_ua_device_category": device_category(device.family),
        _MAP: {
            "userAgent": _json(
                {
                    "family": agent.family,
                    "major": agent.major,
                    "minor": agent.minor,
                    "patch": agent.patch,
                    "patchMinor": agent.patch_minor,
                }
            ),
            "os": _json(
                {
                    "family": os.family,
                    "major": os.major,
                    "minor": os.minor,
                    "patch": os.patch,
                    "patchMinor": os.patch_minor,
                }
            ),
            "device": _json({"family": device.family, "brand": device.brand, "model": device.model}),
            "string": user_agent,
        },
    }


def parse_batch(user_agents: pa.Array) -> pa.Array:
    """One struct per row; each distinct header of the batch is parsed (or found in the cache) once."""
    encoded = pc.dictionary_encode(user_agents)
    distinct = pa.array([parse(ua) for ua in encoded.dictionary.to_pylist()], type=_ARROW_TYPE)
    return distinct.take(encoded.indices)


def parse_columns(user_agents: pa.Array) -> list[pa.Array]:
    """parse_batch as one array per output column (the fused form)."""
    return parse_batch(user_agents).flatten()


def _parse_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over the distinct headers: each batch comes back with its parses beside it."""
    for batch in batches:
        headers = batch.column(0)
        yield pa.RecordBatch.from_arrays([headers, parse_batch(headers)], names=[C.UA, _PARSED])


class UserAgentEnricher(Enricher):
    """Browser, OS and device of the request's User-Agent; flags bots."""

    parameters = {"filter_bots": True}

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        if not isinstance(self.params["filter_bots"], bool):
            raise PluginError(f"user_agent: filter_bots must be true or false, got {self.params['filter_bots']!r}")

    def request_enrichment(self) -> RequestEnrichment:
        return RequestEnrichment(C.UA, tuple((f.name, f.type) for f in _ARROW_TYPE), parse_columns)

    def after_fused(self, df: DataFrame) -> DataFrame:
        if not self.params["filter_bots"]:
            return df
        return df.withColumns(self._bot_flags({name: F.col(name) for name in OUTPUT_COLUMNS}))

    def transform(self, df: DataFrame) -> DataFrame:
        headers = df.select(C.UA).where(F.col(C.UA).isNotNull()).distinct()
        table = headers.mapInArrow(_parse_batches, _TABLE_TYPE)
        # A left join on distinct keys keeps every event exactly once; a null header matches nothing
        # and so behaves like a header without a parse. The table is small whatever the event count.
        parsed = df.join(F.broadcast(table), on=C.UA, how="left")
        # A row without a header keeps the transformer's values; otherwise the parse wins.
        filled = {name: F.coalesce(F.col(f"{_PARSED}.{name}"), F.col(name)) for name in (*OUTPUT_COLUMNS, _MAP)}
        if self.params["filter_bots"]:
            # In the same projection as the values: a second one would copy every wide row again.
            filled.update(self._bot_flags(filled))
        # The join put the key first; the select restores the input's column order.
        return parsed.select(*(filled[name].alias(name) if name in filled else F.col(name) for name in df.columns))

    @staticmethod
    def _bot_flags(values: dict[str, Column]) -> dict[str, Column]:
        bot = F.coalesce(values["device_ua_device_category"] == BOT, F.lit(False)) & F.col(C.BAD_REASON).isNull()
        detail = F.format_string(
            "user agent of a bot: %s (device %s)", values["device_ua_browser"], values["device_ua_device"]
        )
        return {
            C.BAD_REASON: F.when(bot, F.lit(Reason.BOT.value)).otherwise(F.col(C.BAD_REASON)),
            C.BAD_DETAIL: F.when(bot, detail).otherwise(F.col(C.BAD_DETAIL)),
        }
