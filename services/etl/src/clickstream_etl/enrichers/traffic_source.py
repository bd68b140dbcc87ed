"""Traffic source: source, medium, campaign, clid, category and channel group of every event.

Behaviour follows the reference's rule-based traffic-source helper (reference-system.md §4.5):

1. The utm parameters are what the client sent (`_traffic_source_*`, `_utm_*`, `_gclid`, already
   in the traffic_source_* columns). Without a sent source they come from the page url, a field
   the client did send still winning. A click id without `utm_source` implies the source (`gclid`
   -> Google, any other `*clid` key -> its own name) and the medium `(CPC)`.
2. Still no source: the utm parameters of the latest referrer's url replace them, else those of
   the page referrer (all of them, as the reference does, even when only the source was missing).
3. The referrer to classify is the latest referrer, else the page referrer; one on the page's own
   host is internal and skipped. Its url is looked up in the category rules, most specific form
   first: the whole url, without the scheme, host+path, host, host without `www.`, that + path.
   A hit gives source, category and the search term (values of the rule's query parameters,
   distinct, sorted, comma-joined); a miss gives the host as source and category `Unassigned`.
4. A source without a category takes the category of that source name in the rules.
5. The channel group is the first channel rule whose condition holds (`Unassigned` if none).
6. No source at all: source, category `Direct`, campaign `Direct`, channel `Direct` (`Internal`
   when the referrer was internal). A missing medium is inferred: `(CPC)` with a click id,
   `(Organic)` for Search, `(Referral)` for Social/Video/Shopping/Referral, else `(Referral)` when
   there was an external referrer and `None` otherwise.

Values the client sent are never replaced; the computed ones only fill the gaps (the reference
leaves gaps beside a sent source empty and overwrites a sent category or channel).

One deliberate difference: the channel rules see the medium before step 6's inference. The
reference evaluates them after it; with the v1 rule files (Organic Search wants a blank or
`organic` medium) that would put every search referrer in `Unassigned`, while the reference's own
tests expect `(Organic)` / Organic Search.

The rules run in Python over Arrow batches (one Arrow UDF; Spark sends it only the 16 input
columns, not the event rows): the result depends on a handful of values that repeat from event to
event (the page's host, a utm query if the page url has one, the referrers, what the client sent),
so each distinct combination is worked out once per task and looked up after that. The same rules
as Spark expressions (887 category urls as constant maps, the channel rules as CASE WHEN chains)
cost about five times more on wide event rows (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..plugins import Enricher, PluginError
from ..storage import Storage
from ..storage import join as path_join

CATEGORY_FILE = "traffic_source_category_rule_v1.json"
CHANNEL_FILE = "traffic_source_channel_rule_v1.json"
DEFAULT_SET = ""  # rule-set key of the bundled rules (an app id never is empty)

DIRECT = "Direct"
UNASSIGNED = "Unassigned"
INTERNAL = "Internal"
NONE_MEDIUM = "None"
EMPTY_FLAG = "__empty__"

FIELDS = ("source", "medium", "campaign", "content", "term", "campaign_id", "clid_platform", "clid")
OUTPUTS = tuple(f"traffic_source_{f}" for f in (*FIELDS, "category", "channel_group"))
# The event columns the rules read besides OUTPUTS (what the client sent), in the UDF's argument order.
INPUTS = (
    "app_id",
    "page_view_page_url",
    "page_view_hostname",
    "page_view_page_referrer",
    "page_view_latest_referrer",
    "page_view_latest_referrer_host",
)
# The fields a channel rule may test (the values after steps 1-4: see Classifier.classify).
RULE_FIELDS = (
    "traffic_source_source",
    "traffic_source_medium",
    "traffic_source_campaign",
    "traffic_source_content",
    "traffic_source_term",
    "traffic_source_campaign_id",
    "traffic_source_clid_platform",
    "traffic_source_clid",
    "traffic_source_category",
    "page_view_latest_referrer",
    "page_view_latest_referrer_host",
)
VALUE_OPS: dict[str, Callable[[str, Any], bool]] = {
    "eq": lambda a, v: a == v,
    "not_eq": lambda a, v: a != v,
    "contain": lambda a, v: v in a,
    "not_contain": lambda a, v: v not in a,
    "start_with": lambda a, v: a.startswith(v),
    "not_start_with": lambda a, v: not a.startswith(v),
    "end_with": lambda a, v: a.endswith(v),
    "not_end_with": lambda a, v: not a.endswith(v),
    # The reference uses Java's String.matches: the whole value must match.
    "match": lambda a, v: v.fullmatch(a) is not None,
    "not_match": lambda a, v: v.fullmatch(a) is None,
}
LIST_OPS = ("in", "not_in")
REFERRAL_CATEGORIES = ("Social", "Video", "Shopping", "Referral")
CACHE_LIMIT = 200_000  # distinct input combinations kept per task
# Arrow groups rows by their inputs joined with _SEP (nulls as _NULL); a batch holding either
# character in a value is classified row by row instead.
_SEP, _NULL = "\x1f", "\x1e"
_MARKERS = "[\x1e\x1f]"


# ---------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class CategoryRule:
    url: str
    source: str
    category: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class ChannelRule:
    channel: str
    condition: dict[str, Any]


def parse_category_rules(data: Any, where: str) -> list[CategoryRule]:
    if not isinstance(data, list):
        raise PluginError(f"{where}: expected a JSON array of category rules")
    rules = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("url", "source", "category")):
            raise PluginError(f"{where}: rule {i} needs string url, source and category")
        params = item.get("params") or []
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            raise PluginError(f"{where}: rule {i} ({item['url']}): params must be a list of strings")
        rules.append(CategoryRule(item["url"], item["source"], item["category"], tuple(params)))
    return rules


def parse_channel_rules(data: Any, where: str) -> list[ChannelRule]:
    if not isinstance(data, list):
        raise PluginError(f"{where}: expected a JSON array of channel rules")
    rules = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("channel"), str):
            raise PluginError(f"{where}: rule {i} needs a string channel")
        name = f"{where}: rule {item.get('id', i)} ({item['channel']})"
        _validate_condition(item.get("condition"), name)
        rules.append(ChannelRule(item["channel"], item["condition"]))
    return rules


def _validate_condition(node: Any, where: str) -> None:
    if not isinstance(node, dict):
        raise PluginError(f"{where}: a condition must be an object")
    groups = [k for k in ("op::and", "op::or") if k in node]
    if "field" in node:
        if groups:
            raise PluginError(f"{where}: a condition has either a field or op::and/op::or, not both")
        field, op = node.get("field"), node.get("op")
        if field not in RULE_FIELDS:
            raise PluginError(f"{where}: unknown field {field!r} (known: {', '.join(RULE_FIELDS)})")
        if op in LIST_OPS:
            values = node.get("values")
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise PluginError(f"{where}: {field} {op} needs a non-empty list of strings in values")
        elif op in VALUE_OPS:
            if not isinstance(node.get("value"), str):
                raise PluginError(f"{where}: {field} {op} needs a string value")
            if op.endswith("match"):
                try:
                    re.compile(_rule_value(node["value"]))
                except re.error as exc:
                    raise PluginError(f"{where}: {node['value']!r} is not a valid regular expression ({exc})") from None
        else:
            raise PluginError(f"{where}: unknown op {op!r}")
        return
    if len(groups) != 1:
        raise PluginError(f"{where}: a condition needs exactly one of field, op::and, op::or")
    items = node[groups[0]]
    if not isinstance(items, list) or not items:
        raise PluginError(f"{where}: {groups[0]} needs a non-empty list")
    for item in items:
        _validate_condition(item, where)


def _rule_value(value: str) -> str:
    # Both sides are compared in lower case; the empty flag stands for null or "".
    return "" if value == EMPTY_FLAG else value.lower()


def _empty_test(node: dict[str, Any]) -> bool:
    """A leaf that only asks whether the field is empty (no lower-casing needed)."""
    if node["op"] in LIST_OPS:
        return all(_rule_value(v) == "" for v in node["values"])
    return node["op"] in ("eq", "not_eq") and _rule_value(node["value"]) == ""


Condition = Callable[[dict[str, str | None]], bool]


def compile_condition(node: dict[str, Any]) -> Condition:
    """A validated condition tree as a test of the rule fields' values (None for no value).

    Values are compared in lower case, a missing value as ""; the empty flag stands for null or ""."""
    if "field" in node:
        field, op = node["field"], node["op"]
        if _empty_test(node):
            wants_empty = op in ("eq", "in")
            return lambda values: (not values[field]) == wants_empty
        if op in LIST_OPS:
            options = frozenset(_rule_value(v) for v in node["values"])
            inside = op == "in"
            return lambda values: ((values[field] or "").lower() in options) == inside
        test = VALUE_OPS[op]
        expected = _rule_value(node["value"])
        if op.endswith("match"):
            expected = re.compile(expected)
        return lambda values: test((values[field] or "").lower(), expected)
    parts = [compile_condition(n) for n in node.get("op::and", node.get("op::or"))]
    if "op::and" in node:
        return lambda values: all(part(values) for part in parts)
    return lambda values: any(part(values) for part in parts)


def _bundled(name: str) -> Any:
    return json.loads(resources.files("clickstream_etl").joinpath("rules", name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RuleSets:
    """Rules by rule-set key: DEFAULT_SET for the bundled files, an app id for that app's own files."""

    category: dict[str, list[CategoryRule]]
    channel: dict[str, list[ChannelRule]]


# ---------------------------------------------------------------------------------- url helpers
# Urls are cut with plain string operations, not a url parser: lenient where java.net.URI (and
# Spark's parse_url) give up on a space, and cheap.
def _blank_null(value: str | None) -> str | None:
    return value if value != "" else None


def _after_scheme(url: str) -> str:
    pos = url.find("://")
    if pos > 0 and not any(c in url[:pos] for c in "/?#"):
        return url[pos + 3 :]
    return url


def _authority(after_scheme: str) -> str:
    return after_scheme.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]


def url_host(url: str | None) -> str | None:
    """Host of an absolute or scheme-less url, without user info and port."""
    if url is None:
        return None
    return _blank_null(_authority(_after_scheme(url)).rsplit("@", 1)[-1].split(":", 1)[0])


def url_path(url: str | None) -> str | None:
    if url is None:
        return None
    after = _after_scheme(url)
    return after[len(_authority(after)) :].split("?", 1)[0].split("#", 1)[0]


def url_query(url: str | None) -> str | None:
    """Text between the first `?` and the fragment; None when none."""
    if url is None:
        return None
    q, h = url.find("?"), url.find("#")
    if q < 0 or 0 <= h < q:
        return None
    return _blank_null(url[q + 1 :].split("#", 1)[0])


def utm_query(url: str | None) -> str | None:
    """The query of a url that can carry utm parameters or a click id, else None (most urls)."""
    return url_query(url) if url is not None and ("utm_" in url or "clid" in url) else None


UTM_PARAMS = {
    "source": "utm_source",
    "medium": "utm_medium",
    "campaign": "utm_campaign",
    "content": "utm_content",
    "term": "utm_term",
    "campaign_id": "utm_id",
    "clid_platform": "utm_source_platform",
}
_KEYS = re.compile(r"(?:^|&)(" + "|".join([*UTM_PARAMS.values(), "gclid"]) + r")=([^&]*)")
_CLID = re.compile(r"(?:^|&)([^&=]*clid)=([^&]+)")  # the first key ending in clid that has a value
_NO_UTM = dict.fromkeys(FIELDS)


def utm_fields(query: str | None) -> dict[str, str | None]:
    """The reference's utm reading of one url's query: FIELDS -> value.

    The first value of a key counts. A click id without utm_source gives the source (gclid:
    Google, else the key's name) and the medium (CPC)."""
    if query is None:
        return _NO_UTM
    found: dict[str, str] = {}
    for key, value in _KEYS.findall(query):
        found.setdefault(key, value)
    out = {name: _blank_null(found.get(key)) for name, key in UTM_PARAMS.items()}
    gclid = _blank_null(found.get("gclid"))
    clid_type = clid_value = None
    if gclid is not None:
        clid_type, clid_value = "gclid", gclid
    elif "clid" in query and (other := _CLID.search(query)):
        clid_type, clid_value = _blank_null(other.group(1)), other.group(2)
    if out["source"] is None and clid_type is not None:
        out["source"] = "Google" if gclid is not None else clid_type
        if out["medium"] is None:
            out["medium"] = "(CPC)"
    out["clid"] = _clid_json(clid_type, clid_value) if clid_type is not None else None
    return out


def _clid_json(kind: str, value: str) -> str:
    return orjson.dumps({"type": kind, "value": value}).decode()


def normalised(name: str, value: str | None) -> str | None:
    """Blank -> None; `Direct` (any case) is no source/medium/campaign and `{}` no clid, as in the reference."""
    if value is None:
        return None
    if name in ("source", "medium", "campaign"):
        keep = value != "" and value.lower() != DIRECT.lower()
    elif name == "clid":
        keep = value.strip(" ") not in ("", "{}")
    else:
        keep = value != ""
    return value if keep else None


def _terms_regex(params: tuple[str, ...]) -> re.Pattern | None:
    if not params:
        return None
    return re.compile(r"(?:^|&)(?:" + "|".join(re.escape(p) for p in params) + r")=([^&]*)")


def _whole_url_rule(url: str) -> bool:
    """A rule url only the reference's first two forms (whole url, url without scheme) can match.

    Other urls are found by host+path or host whenever those two forms find them, so looking up
    the whole url is only needed for rule sets that have such urls."""
    return any(s in url for s in ("://", "?", "#", "@", ":")) or url.endswith("/")


@dataclass(frozen=True)
class Match:
    source: str
    category: str
    terms: re.Pattern | None
    exact: bool  # False for a `www.` alias


@dataclass(frozen=True)
class UrlLookups:
    """One rule set's lookup keys -> Match."""

    host: dict[str, Match]  # rule urls without a path, plus www. aliases
    path: dict[str, Match]  # rule urls with a path, plus www. aliases
    whole: dict[str, Match]  # rule urls of _whole_url_rule, exact only


def url_lookups(rules: list[CategoryRule]) -> UrlLookups:
    """The reference's six url forms as three exact lookups.

    An alias `www.<url>` stands for the "host without www." forms: host `www.x.com` finds rule
    `x.com` through it unless a rule `www.x.com` exists. Aliases are flagged so that a host match
    can outrank an alias path match, as in the reference's order."""
    by_url = {}
    for r in rules:  # the reference keeps the last rule of a url
        by_url[r.url.lower()] = r
    out = UrlLookups({}, {}, {})
    for url, r in by_url.items():
        terms = _terms_regex(r.params)
        target = out.path if "/" in url else out.host
        target[url] = Match(r.source, r.category, terms, True)
        if "www." + url not in by_url:
            target["www." + url] = Match(r.source, r.category, terms, False)
        if _whole_url_rule(url):
            out.whole[url] = Match(r.source, r.category, terms, True)
    return out


class Classifier:
    """The traffic source of events; built on the driver, pickled to the Python workers."""

    def __init__(self, rules: RuleSets):
        self.category = {
            key: (url_lookups(items), {r.source: r.category for r in items}) for key, items in rules.category.items()
        }
        self.channel = {
            key: tuple((r.channel, compile_condition(r.condition)) for r in items)
            for key, items in rules.channel.items()
        }
        self.cache: dict[tuple, tuple] = {}
        self.rules = rules

    def __getstate__(self) -> dict:
        # The conditions are closures: the rules travel, the workers compile them.
        return {"rules": self.rules}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["rules"])

    # -- Arrow ---------------------------------------------------------------------------------
    def arrays(self, *columns: pa.Array) -> pa.Array:
        """The UDF: OUTPUTS then INPUTS as arrays -> struct of the final OUTPUTS.

        Rows are grouped by their inputs with Arrow kernels (joined into one text, dictionary
        encoded); Python sees each distinct combination of a batch once, and the cache keeps the
        results across batches."""
        sent = columns[: len(OUTPUTS)]
        app, page_url, hostname, page_ref, latest_ref, latest_host = columns[len(OUTPUTS) :]
        # The page url counts only through its host (when no hostname was sent) and a utm query;
        # other urls stay out of the key so that views of different pages share one entry.
        no_host = pc.fill_null(pc.equal(hostname, ""), True)
        utm = pc.fill_null(pc.or_(pc.match_substring(page_url, "utm_"), pc.match_substring(page_url, "clid")), False)
        url = pc.if_else(pc.or_(no_host, utm), page_url, pa.nulls(len(page_url), pa.string()))
        keys = [app, url, hostname, page_ref, latest_ref, latest_host, *sent]
        if len(self.cache) > CACHE_LIMIT:
            self.cache.clear()
        indices = None
        if not any(pc.any(pc.match_substring_regex(k, _MARKERS)).as_py() for k in keys):
            joined = pc.binary_join_element_wise(*keys, _SEP, null_handling="replace", null_replacement=_NULL)
            encoded = pc.dictionary_encode(joined)
            indices = encoded.indices
            combos = [
                tuple(None if v == _NULL else v for v in text.split(_SEP)) for text in encoded.dictionary.to_pylist()
            ]
        else:  # a value holds a marker character: one combination per row
            combos = list(zip(*(k.to_pylist() for k in keys), strict=True))
        results = [self._cached(combo) for combo in combos]
        out = [pa.array(values, type=pa.string()) for values in zip(*results, strict=True)]
        if not results:
            out = [pa.array([], type=pa.string()) for _ in OUTPUTS]
        if indices is not None:
            out = [values.take(indices) for values in out]
        return pa.StructArray.from_arrays(out, names=list(OUTPUTS))

    def _cached(self, combo: tuple) -> tuple:
        found = self.cache.get(combo)
        if found is None:
            app, url, hostname, page_ref, latest_ref, latest_host, *sent = combo
            host = _blank_null(hostname)
            if host is None:
                host = url_host(url)
            page_host = host.lower() if host is not None else None
            found = self.cache[combo] = self.classify(
                app, page_host, utm_query(url), page_ref, latest_ref, latest_host, *sent
            )
        return found

    # -- one combination -------------------------------------------------------------------------
    def classify(self, app, page_host, q_page, page_ref, latest_ref, latest_host, *sent_values) -> tuple:
        """OUTPUTS for one combination of inputs; the steps of the module doc."""
        sent = {f: _blank_null(v) for f, v in zip((*FIELDS, "category", "channel_group"), sent_values, strict=True)}
        urls, source_categories = self.category[app if app in self.category else DEFAULT_SET]
        channels = self.channel[app if app in self.channel else DEFAULT_SET]
        pref, lref = _blank_null(page_ref), _blank_null(latest_ref)
        pref_host, lref_host = url_host(pref), url_host(lref)
        # As the event's own column: the host the client sent, else the url's.
        lhost = _blank_null(latest_host) or lref_host

        # Step 3: the referrer, internal ones (same host as the page) skipped.
        def same(host: str | None) -> bool:
            return page_host is not None and host is not None and page_host == host.lower()

        if lref is not None and not same(lhost):
            ref, r_host, ref_host = lref, lref_host, lhost
        elif pref is not None and not same(pref_host):
            ref, r_host, ref_host = pref, pref_host, pref_host
        else:
            ref = r_host = ref_host = None
        from_internal = same(lhost) if lref is not None else same(pref_host) if pref is not None else False

        # Steps 1-2: the utm parameters. Client values first (any field the client sent wins
        # over the page url's), then the referrers' urls when there is still no source.
        page = utm_fields(q_page) if sent["source"] is None else _NO_UTM
        seed = {f: normalised(f, sent[f] if sent[f] is not None else page[f]) for f in FIELDS}
        if seed["source"] is not None:
            utm = seed
        else:
            from_latest = utm_fields(utm_query(lref))
            utm = from_latest if from_latest["source"] is not None else utm_fields(utm_query(pref))
        utm = {f: normalised(f, utm[f]) for f in FIELDS}

        # Most specific url form first: whole url, without scheme, host+path, host, www-less forms.
        match = terms = None
        if r_host is not None:
            k_host = r_host.lower()
            path = url_path(ref)
            by_path = urls.path.get(f"{k_host}{path}".lower()) if path not in ("", "/") else None
            by_host = urls.host.get(k_host)
            match = by_path if by_path is not None and by_path.exact else by_host or by_path
            if urls.whole:
                rest = ref[ref.find("://") + 3 :].lower() if "://" in ref else None
                match = urls.whole.get(ref.lower()) or (urls.whole.get(rest) if rest is not None else None) or match
            if match is not None and match.terms is not None:
                query = url_query(ref)
                values = match.terms.findall(query) if query is not None else ()
                terms = ",".join(sorted({v for v in values if v != ""})) or None
            cat0 = match.category if match is not None else UNASSIGNED
            m_source = match.source if match is not None else r_host
        else:
            cat0 = m_source = None

        # Step 4: category of the source name when the referrer gave none.
        source1 = utm["source"] if utm["source"] is not None else m_source
        cat1 = source_categories.get(source1) if source1 is not None and cat0 in (None, UNASSIGNED) else cat0
        term1 = utm["term"] if utm["term"] is not None else terms

        # Step 5: the first channel rule that holds; it sees "no category" for Unassigned.
        values = {f"traffic_source_{f}": utm[f] for f in FIELDS}
        values.update(
            traffic_source_source=source1,
            traffic_source_term=term1,
            traffic_source_category=cat1 if cat1 != UNASSIGNED else None,
            page_view_latest_referrer=ref,
            page_view_latest_referrer_host=ref_host,
        )
        channel = next((name for name, holds in channels if holds(values)), UNASSIGNED)

        # Step 6: Direct, Unassigned and the inferred medium.
        has_ref = ref is not None
        source2 = source1 if source1 is not None else ref_host if has_ref else None
        if utm["clid"] is not None:
            inferred = "(CPC)"
        elif cat1 == "Search":
            inferred = "(Organic)"
        elif cat1 in REFERRAL_CATEGORIES:
            inferred = "(Referral)"
        else:
            inferred = None
        if utm["medium"] is not None:
            medium = utm["medium"]
        elif cat1 is not None and inferred is not None:
            medium = inferred
        else:
            medium = NONE_MEDIUM if (pref is None and lref is None) or from_internal else "(Referral)"
        computed = {
            "source": source2 if source2 is not None else DIRECT,
            "medium": medium,
            "campaign": DIRECT if source1 is None and not has_ref else utm["campaign"],
            "content": utm["content"],
            "term": term1,
            "campaign_id": utm["campaign_id"],
            "clid_platform": utm["clid_platform"],
            "clid": utm["clid"],
            "category": DIRECT if source2 is None else cat1 if cat1 is not None else UNASSIGNED,
            "channel_group": (INTERNAL if from_internal else DIRECT) if source2 is None else channel,
        }
        # What the client sent is kept; the computed values fill the rest.
        return tuple(sent[k] if sent[k] is not None else computed[k] for k in computed)


# ------------------------------------------------------------------------------------- enricher
class TrafficSourceEnricher(Enricher):
    """Fills the traffic_source_* columns the client did not send (reference-system.md §4.5)."""

    reads_input_twice = False

    parameters = {
        # Folder of per-app rule files <rules_dir>/<app_id>/traffic_source_{category,channel}_rule_v1.json
        # (local or s3://); overrides the run's rules dir. Apps without files use the bundled rules.
        "rules_dir": None,
    }

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        if self.params["rules_dir"] is not None and not isinstance(self.params["rules_dir"], str):
            raise PluginError(f"{type(self).__name__}: rules_dir must be a path or URI")
        self._rules: RuleSets | None = None

    # -- rule loading (driver, once) --------------------------------------------------------------
    def rule_sets(self) -> RuleSets:
        if self._rules is None:
            self._rules = self._load()
        return self._rules

    def _load(self) -> RuleSets:
        spark = self.context.spark if self.context else None
        category = {DEFAULT_SET: parse_category_rules(_bundled(CATEGORY_FILE), f"bundled {CATEGORY_FILE}")}
        channel = {DEFAULT_SET: parse_channel_rules(_bundled(CHANNEL_FILE), f"bundled {CHANNEL_FILE}")}
        rules_dir = self.params.get("rules_dir") or (self.context.rules_dir if self.context else None)
        if rules_dir and spark is not None:
            storage = Storage(spark)
            app_ids = self.context.app_ids
            if app_ids is None:
                app_ids = sorted(d.rstrip("/").rsplit("/", 1)[-1] for d in storage.list_dirs(rules_dir))
            for app in app_ids:
                cat_path = path_join(rules_dir, app, CATEGORY_FILE)
                data = storage.read_json(cat_path)
                if data is not None:
                    category[app] = parse_category_rules(data, cat_path)
                chan_path = path_join(rules_dir, app, CHANNEL_FILE)
                data = storage.read_json(chan_path)
                if data is not None:
                    channel[app] = parse_channel_rules(data, chan_path)
        return RuleSets(category, channel)

    # -- transform -------------------------------------------------------------------------------
    def transform(self, df: DataFrame) -> DataFrame:
        classifier = Classifier(self.rule_sets())
        udf = F.arrow_udf(classifier.arrays, ", ".join(f"{name} string" for name in OUTPUTS))
        columns = df.columns
        staged = df.withColumn("_ts", udf(*(F.col(c) for c in (*OUTPUTS, *INPUTS))))
        return staged.select(*(F.col(f"_ts.{c}").alias(c) if c in OUTPUTS else F.col(f"`{c}`") for c in columns))
