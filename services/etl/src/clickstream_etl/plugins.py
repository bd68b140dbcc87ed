"""Plug-ins: exactly one transformer, then an ordered list of enrichers.

A plug-in is a class with `transform(DataFrame) -> DataFrame`, built with its parameters (data from
the pipeline's plug-in file) and the run's context. It is named by an entry point of the group
`clickstream.etl.plugins` (the built-ins, and any installed package) or by a dotted path
`package.module:Class` (a file shipped with the job, e.g. through spark-submit --py-files).

- A transformer gets the decoded requests (one row per raw record, see decode.py) and returns one
  row per event with the event_v2 columns it can fill plus the internal columns of `columns.py`.
  Rows it cannot use are not dropped: it sets `_bad_reason`/`_bad_detail` and the job routes them.
- An enricher gets those event rows and returns them with more columns filled. It must keep every
  row; to reject one (a bot, say) it sets `_bad_reason`.
- An enricher whose values depend on one request-level column only (the User-Agent, the client
  address) may also describe that work as a `RequestEnrichment`. A transformer that reads requests
  in Python (the Clickstream SDK one) then runs it inside its own pass, once per request instead
  of once per event and with no Spark stage of its own, and the job calls the enricher's
  `after_fused` instead of `transform`. Only a leading run of such enrichers is fused, so the
  chain's order still holds.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from pyspark.sql import DataFrame, SparkSession

ENTRY_POINT_GROUP = "clickstream.etl.plugins"

DEFAULT_PLUGINS: dict[str, Any] = {
    "transformer": "clickstream_sdk",
    "enrichers": ["user_agent", "ip_geo", "traffic_source"],
}


class PluginError(ValueError):
    pass


@dataclass(frozen=True)
class RunContext:
    """What a plug-in may know about the run."""

    spark: SparkSession
    project_id: str
    job_id: str
    app_ids: tuple[str, ...] | None  # None: any app (dev mode)
    process_time_ms: int
    rules_dir: str | None = None  # per-app traffic rule files: <rules_dir>/<app_id>/traffic_source_*.json
    settings: dict[str, Any] = field(default_factory=dict)


class Plugin:
    """Base class (optional): keeps the parameters and the context, rejects unknown parameters."""

    kind = "enricher"
    parameters: dict[str, Any] = {}  # name -> default

    def __init__(self, params: dict[str, Any] | None = None, context: RunContext | None = None):
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise PluginError(f"{type(self).__name__}: unknown parameter(s) {', '.join(unknown)}")
        self.params = {**self.parameters, **params}
        self.context = context

    def transform(self, df: DataFrame) -> DataFrame:  # pragma: no cover - interface
        raise NotImplementedError


class Transformer(Plugin):
    kind = "transformer"

    def fuse(self, enrichers: Sequence[Enricher]) -> int:
        """Take over the request enrichments of the leading enrichers; how many it took (default none)."""
        return 0

    def read(self, spark: SparkSession, paths: list[str]) -> DataFrame:
        """The transformer's input from the raw objects: by default one row per request
        (decode.read_requests). A transformer may read differently, e.g. split bodies on the way."""
        from .decode import read_requests

        return read_requests(spark, paths)


@dataclass(frozen=True)
class RequestEnrichment:
    """Columns computed from one request-level column over Arrow arrays (see the module doc)."""

    source: str  # the request column read: columns.UA or columns.IP
    fields: tuple[tuple[str, pa.DataType], ...]  # the event_v2 columns produced, in order
    # One array per field, as long as the input; runs on the executors, so it must pickle.
    compute: Callable[[pa.Array], Sequence[pa.Array]]


class Enricher(Plugin):
    kind = "enricher"
    # Whether transform() reads its input more than once (a distinct then a join, say): the job
    # then caches the rows before the enrichers instead of computing them twice.
    reads_input_twice = True

    def request_enrichment(self) -> RequestEnrichment | None:
        """This enricher's work for a transformer's own pass over the requests; None if it has none."""
        return None

    def after_fused(self, df: DataFrame) -> DataFrame:
        """What is left in Spark once a transformer has run request_enrichment() (e.g. flag bots)."""
        return df


@dataclass(frozen=True)
class PluginSpec:
    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class PluginChain:
    transformer: PluginSpec
    enrichers: tuple[PluginSpec, ...]

    def build(self, context: RunContext) -> tuple[Any, list[Any]]:
        transformer = load_class(self.transformer.name)(self.transformer.params, context)
        if getattr(transformer, "kind", "transformer") != "transformer":
            raise PluginError(f"{self.transformer.name} is not a transformer")
        enrichers = []
        for spec in self.enrichers:
            plugin = load_class(spec.name)(spec.params, context)
            if getattr(plugin, "kind", "enricher") != "enricher":
                raise PluginError(f"{spec.name} is not an enricher; only one transformer may run")
            enrichers.append(plugin)
        return transformer, enrichers


def _spec(entry: Any, where: str) -> PluginSpec:
    if isinstance(entry, str):
        return PluginSpec(entry, {})
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise PluginError(f"{where}: params of {entry['name']} must be a mapping")
        return PluginSpec(entry["name"], params)
    raise PluginError(f"{where}: expected a plug-in name or {{name, params}}, got {entry!r}")


def parse_chain(data: Any, where: str = "plug-in config") -> PluginChain:
    if not isinstance(data, dict):
        raise PluginError(f"{where}: expected a mapping with transformer and enrichers")
    unknown = sorted(set(data) - {"transformer", "enrichers"})
    if unknown:
        raise PluginError(f"{where}: unknown key(s) {', '.join(unknown)}")
    transformer = data.get("transformer", DEFAULT_PLUGINS["transformer"])
    if isinstance(transformer, list):
        raise PluginError(f"{where}: exactly one transformer is allowed")
    enrichers = data.get("enrichers", DEFAULT_PLUGINS["enrichers"]) or []
    if not isinstance(enrichers, list):
        raise PluginError(f"{where}: enrichers must be a list")
    return PluginChain(_spec(transformer, where), tuple(_spec(e, where) for e in enrichers))


def load_chain(source: str | None) -> PluginChain:
    """The chain from a YAML/JSON file, inline JSON, or the defaults when `source` is empty."""
    if not source:
        return parse_chain(DEFAULT_PLUGINS, "default plug-ins")
    text = source
    where = "inline plug-in config"
    if not source.lstrip().startswith("{"):
        path = Path(source)
        if not path.is_file():
            raise PluginError(f"plug-in config {source}: no such file")
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise PluginError(f"{where}: not valid YAML/JSON ({exc})") from None
    return parse_chain(data, where)


def registered() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_class(name: str) -> type:
    """A plug-in class by entry-point name, or by `module:Class` / `module.Class`."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    module_name, sep, attr = name.partition(":")
    if not sep:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        known = ", ".join(sorted(registered()))
        raise PluginError(f"unknown plug-in {name!r}: use one of {known} or a dotted path module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"plug-in {name!r}: cannot import {module_name} ({exc})") from None
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise PluginError(f"plug-in {name!r}: {module_name} has no {attr}") from None
    if not callable(getattr(cls, "transform", None)):
        raise PluginError(f"plug-in {name!r} has no transform(DataFrame) method")
    return cls
