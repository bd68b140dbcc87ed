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

Everything is Spark expressions: the channel rules compile into one CASE WHEN chain per rule set,
the url and source-name lookups are constant maps (Spark hashes them; no join, no Python).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from pyspark.sql import Column, DataFrame
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

# Channel-rule fields -> the internal column holding the value the rules are evaluated against
# (source, term and category are overridden with their final expressions in transform).
RULE_FIELDS = {
    "traffic_source_source": "_ts_source1",
    "traffic_source_medium": "_ts_u_medium",
    "traffic_source_campaign": "_ts_u_campaign",
    "traffic_source_content": "_ts_u_content",
    "traffic_source_term": "_ts_term1",
    "traffic_source_campaign_id": "_ts_u_campaign_id",
    "traffic_source_clid_platform": "_ts_u_clid_platform",
    "traffic_source_clid": "_ts_u_clid",
    "traffic_source_category": "_ts_cat1",
    "page_view_latest_referrer": "_ts_ref",
    "page_view_latest_referrer_host": "_ts_ref_host",
}
VALUE_OPS: dict[str, Callable[[Column, str], Column]] = {
    "eq": lambda c, v: c == v,
    "not_eq": lambda c, v: c != v,
    "contain": lambda c, v: c.contains(v),
    "not_contain": lambda c, v: ~c.contains(v),
    "start_with": lambda c, v: c.startswith(v),
    "not_start_with": lambda c, v: ~c.startswith(v),
    "end_with": lambda c, v: c.endswith(v),
    "not_end_with": lambda c, v: ~c.endswith(v),
    # The reference uses Java's String.matches: the whole value must match.
    "match": lambda c, v: c.rlike(f"^(?:{v})$"),
    "not_match": lambda c, v: ~c.rlike(f"^(?:{v})$"),
}
LIST_OPS = ("in", "not_in")
REFERRAL_CATEGORIES = ("Social", "Video", "Shopping", "Referral")


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


def parse_channel_rules(data: Any, where: str, check_regex: Callable[[str], None] | None = None) -> list[ChannelRule]:
    if not isinstance(data, list):
        raise PluginError(f"{where}: expected a JSON array of channel rules")
    rules = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("channel"), str):
            raise PluginError(f"{where}: rule {i} needs a string channel")
        name = f"{where}: rule {item.get('id', i)} ({item['channel']})"
        _validate_condition(item.get("condition"), name, check_regex)
        rules.append(ChannelRule(item["channel"], item["condition"]))
    return rules


def _validate_condition(node: Any, where: str, check_regex: Callable[[str], None] | None) -> None:
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
            if op.endswith("match") and check_regex:
                try:
                    check_regex(node["value"].lower())
                except Exception as exc:  # the JVM's PatternSyntaxException arrives as a Py4J error
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
        _validate_condition(item, where, check_regex)


def _rule_value(value: str) -> str:
    # Both sides are compared in lower case; the empty flag stands for null or "".
    return "" if value == EMPTY_FLAG else value.lower()


def _empty_test(node: dict[str, Any]) -> bool:
    """A leaf that only asks whether the field is empty (no lower-casing needed)."""
    if node["op"] in LIST_OPS:
        return all(_rule_value(v) == "" for v in node["values"])
    return node["op"] in ("eq", "not_eq") and _rule_value(node["value"]) == ""


def compile_condition(node: dict[str, Any], lowered: dict[str, Column], empty: dict[str, Column]) -> Column:
    """A validated condition tree as a never-null boolean Column.

    `lowered` holds the lower-cased fields with null as "" (for the fields compared by value),
    `empty` whether each field is null or ""."""
    if "field" in node:
        field, op = node["field"], node["op"]
        if _empty_test(node):
            return empty[field] if op in ("eq", "in") else ~empty[field]
        actual = lowered[field]
        if op in LIST_OPS:
            hit = actual.isin([_rule_value(v) for v in node["values"]])
            return hit if op == "in" else ~hit
        return VALUE_OPS[op](actual, _rule_value(node["value"]))
    parts = [compile_condition(n, lowered, empty) for n in node.get("op::and", node.get("op::or"))]
    if "op::and" in node:
        return functools.reduce(lambda a, b: a & b, parts)
    return functools.reduce(lambda a, b: a | b, parts)


def channel_column(rules: list[ChannelRule], lowered: dict[str, Column], empty: dict[str, Column]) -> Column:
    """The first rule whose condition holds wins."""
    expr = None
    for rule in rules:
        cond = compile_condition(rule.condition, lowered, empty)
        expr = F.when(cond, F.lit(rule.channel)) if expr is None else expr.when(cond, F.lit(rule.channel))
    return F.lit(UNASSIGNED) if expr is None else expr.otherwise(F.lit(UNASSIGNED))


def _fields_used(node: dict[str, Any]) -> set[str]:
    if "field" in node:
        return {node["field"]}
    return set().union(*(_fields_used(n) for n in node.get("op::and", node.get("op::or", []))))


def fields_to_lower(node: dict[str, Any]) -> set[str]:
    """Fields a condition compares by value (the rest it only tests for emptiness)."""
    if "field" in node:
        return set() if _empty_test(node) else {node["field"]}
    return set().union(*(fields_to_lower(n) for n in node.get("op::and", node.get("op::or", []))))


def _bundled(name: str) -> Any:
    return json.loads(resources.files("clickstream_etl").joinpath("rules", name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RuleSets:
    """Rules by rule-set key: DEFAULT_SET for the bundled files, an app id for that app's own files."""

    category: dict[str, list[CategoryRule]]
    channel: dict[str, list[ChannelRule]]


# ---------------------------------------------------------------------------------- url helpers
def _blank_null(col: Column) -> Column:
    return F.when(col != "", col)


# Urls are cut with plain string functions, not regular expressions: these run on every row with
# a referrer, and are lenient where java.net.URI (and Spark's parse_url) give up on a space.
def _after_scheme(url: Column) -> Column:
    head = F.substring_index(url, "://", 1)
    pos = F.instr(url, "://")
    scheme = (pos > 1) & (F.instr(head, "/") == 0) & (F.instr(head, "?") == 0) & (F.instr(head, "#") == 0)
    return F.when(scheme, F.substr(url, pos + 3)).otherwise(url)


def _authority(after_scheme: Column) -> Column:
    return F.substring_index(F.substring_index(F.substring_index(after_scheme, "/", 1), "?", 1), "#", 1)


def url_host(url: Column) -> Column:
    """Host of an absolute or scheme-less url, without user info and port."""
    return _blank_null(F.substring_index(F.substring_index(_authority(_after_scheme(url)), "@", -1), ":", 1))


def url_path(url: Column) -> Column:
    after = _after_scheme(url)
    rest = F.substr(after, F.length(_authority(after)) + 1)
    return F.substring_index(F.substring_index(rest, "?", 1), "#", 1)


def url_query(url: Column) -> Column:
    """Text between the first `?` and the fragment; null when none."""
    q, h = F.instr(url, "?"), F.instr(url, "#")
    return _blank_null(F.when((q > 0) & ((h == 0) | (h > q)), F.substring_index(F.substr(url, q + 1), "#", 1)))


def utm_query(url: Column) -> Column:
    """The query of a url that can carry utm parameters or a click id, else null (most urls: no regex)."""
    return F.when(url.contains("utm_") | url.contains("clid"), url_query(url))


UTM_PARAMS = {
    "source": "utm_source",
    "medium": "utm_medium",
    "campaign": "utm_campaign",
    "content": "utm_content",
    "term": "utm_term",
    "campaign_id": "utm_id",
    "clid_platform": "utm_source_platform",
}
# One pass over the query collects every parameter the utm reading needs, in url order.
_KEYS = r"(?:^|&)(" + "|".join([*UTM_PARAMS.values(), "gclid"]) + r")=([^&]*)"
_CLID = r"(?:^|&)([^&=]*clid)=([^&]+)"  # the first key ending in clid that has a value


def utm_arrays(query: Column) -> Column:
    """struct(keys, values, clid_key, clid_value) of a utm query, read once."""
    has_clid = query.contains("clid")
    return F.struct(
        F.regexp_extract_all(query, F.lit(_KEYS), F.lit(1)).alias("keys"),
        F.regexp_extract_all(query, F.lit(_KEYS), F.lit(2)).alias("values"),
        F.when(has_clid, _blank_null(F.regexp_extract(query, _CLID, 1))).alias("clid_key"),
        F.when(has_clid, _blank_null(F.regexp_extract(query, _CLID, 2))).alias("clid_value"),
    )


def utm_fields(arrays: Column) -> dict[str, Column]:
    """The reference's utm reading of one url from utm_arrays: FIELDS -> Column.

    The first value of a key counts. A click id without utm_source gives the source (gclid:
    Google, else the key's name) and the medium (CPC). Plain columns, not a struct: a struct's
    field would drag the whole struct's expression into every use."""

    def param(key: str) -> Column:
        return _blank_null(F.get(arrays["values"], (F.array_position(arrays["keys"], key) - 1).cast("int")))

    gclid = param("gclid")
    source, medium = param("utm_source"), param("utm_medium")
    clid_type = F.when(gclid.isNotNull(), F.lit("gclid")).otherwise(arrays["clid_key"])
    clid_value = F.coalesce(gclid, arrays["clid_value"])
    implied = source.isNull() & clid_type.isNotNull()
    fields = {name: param(key) for name, key in UTM_PARAMS.items()}
    fields["source"] = F.when(implied, F.when(gclid.isNotNull(), F.lit("Google")).otherwise(clid_type)).otherwise(
        source
    )
    fields["medium"] = F.when(implied & medium.isNull(), F.lit("(CPC)")).otherwise(medium)
    fields["clid"] = F.when(
        clid_type.isNotNull(), F.to_json(F.struct(clid_type.alias("type"), clid_value.alias("value")))
    )
    return fields


def normalised(name: str, value: Column) -> Column:
    """Blank -> null; `Direct` (any case) is no source/medium/campaign and `{}` no clid, as in the reference."""
    if name in ("source", "medium", "campaign"):
        # lower() goes through ICU in Spark 4: only for values as long as "Direct".
        keep = (value != "") & ~((F.length(value) == len(DIRECT)) & (F.lower(value) == DIRECT.lower()))
    elif name == "clid":
        keep = ~F.trim(value).isin("", "{}")
    else:
        keep = value != ""
    return F.when(keep, value)


def _terms_regex(params: tuple[str, ...]) -> str | None:
    if not params:
        return None
    keys = "|".join(r"\Q" + p.replace(r"\E", r"\E\\E\Q") + r"\E" for p in params)
    return rf"(?:^|&)(?:{keys})=([^&]*)"


def _whole_url_rule(url: str) -> bool:
    """A rule url only the reference's first two forms (whole url, url without scheme) can match.

    Other urls are found by host+path or host whenever those two forms find them, so looking up
    the whole url is only needed for rule sets that have such urls."""
    return any(s in url for s in ("://", "?", "#", "@", ":")) or url.endswith("/")


@dataclass(frozen=True)
class UrlLookups:
    """Per rule set: lookup key -> (source, category, terms regex, exact)."""

    host: dict[str, dict[str, tuple]]  # rule urls without a path, plus www. aliases
    path: dict[str, dict[str, tuple]]  # rule urls with a path, plus www. aliases
    whole: dict[str, dict[str, tuple]]  # rule urls of _whole_url_rule, exact only


def url_lookups(category: dict[str, list[CategoryRule]]) -> UrlLookups:
    """The reference's six url forms as three exact lookups.

    An alias `www.<url>` stands for the "host without www." forms: host `www.x.com` finds rule
    `x.com` through it unless a rule `www.x.com` exists. Aliases are flagged so that a host match
    can outrank an alias path match, as in the reference's order."""
    out = UrlLookups({}, {}, {})
    for key, items in category.items():
        by_url = {}
        for r in items:  # the reference keeps the last rule of a url
            by_url[r.url.lower()] = r
        host, path, whole = out.host.setdefault(key, {}), out.path.setdefault(key, {}), out.whole.setdefault(key, {})
        for url, r in by_url.items():
            values = (r.source, r.category, _terms_regex(r.params))
            target = path if "/" in url else host
            target[url] = (*values, True)
            if "www." + url not in by_url:
                target["www." + url] = (*values, False)
            if _whole_url_rule(url):
                whole[url] = (*values, True)
    return out


_MATCH_TYPE = "struct<source:string,category:string,terms_re:string,exact:boolean>"


def _literal_map(entries: dict[str, Any], value_type: str) -> Column:
    # One JSON literal that the optimizer folds into a constant map: Spark looks keys up in it by
    # hash, which is cheaper than a join and adds no operator. (Built from F.lit per entry, the
    # expression would take thousands of Py4J calls.)
    return F.from_json(F.lit(json.dumps(entries, sort_keys=True)), f"map<string,{value_type}>")


def lookup(rule_set: Column, key: Column, tables: dict[str, dict[str, Any]], value_type: str) -> Column:
    """tables[rule set][key] for the row's rule set; null when absent. Tuple values become
    (source, category, terms_re, exact) structs."""

    def one(entries: dict[str, Any]) -> Column:
        if not entries:
            return F.lit(None).cast(value_type)
        names = ("source", "category", "terms_re", "exact")
        data = {k: dict(zip(names, v, strict=True)) if isinstance(v, tuple) else v for k, v in entries.items()}
        return F.try_element_at(_literal_map(data, value_type), key)

    out = one(tables.get(DEFAULT_SET, {}))
    for rs, entries in sorted(tables.items(), reverse=True):
        if rs != DEFAULT_SET:
            out = F.when(rule_set == rs, one(entries)).otherwise(out)
    return out


# ------------------------------------------------------------------------------------- enricher
class TrafficSourceEnricher(Enricher):
    """Fills the traffic_source_* columns the client did not send (reference-system.md §4.5)."""

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
        # Rules are validated with the JVM's own regex engine, the one that will run them.
        jvm = getattr(getattr(spark, "sparkContext", None), "_jvm", None) if spark is not None else None
        check_regex = jvm.java.util.regex.Pattern.compile if jvm is not None else None
        category = {DEFAULT_SET: parse_category_rules(_bundled(CATEGORY_FILE), f"bundled {CATEGORY_FILE}")}
        channel = {DEFAULT_SET: parse_channel_rules(_bundled(CHANNEL_FILE), f"bundled {CHANNEL_FILE}", check_regex)}
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
                    channel[app] = parse_channel_rules(data, chan_path, check_regex)
        return RuleSets(category, channel)

    # -- transform -------------------------------------------------------------------------------
    def transform(self, df: DataFrame) -> DataFrame:
        # Event rows are wider than Spark's whole-stage codegen limit, so every projection copies
        # its whole input row. The original columns therefore travel as one struct (copied as one
        # block, unpacked once at the end) and each stage carries only the values still needed.
        rules = self.rule_sets()
        original = df.columns
        col = F.col
        sent_names = [f"_ts_cs_{f}" for f in (*FIELDS, "category", "channel_group")]

        def stage(frame: DataFrame, carry: Iterable[str], new: dict[str, Column]) -> DataFrame:
            return frame.select(col("_ts_row"), *(col(c) for c in carry), *(v.alias(k) for k, v in new.items()))

        def set_key(own: Iterable[str]) -> Column:
            apps = sorted(k for k in own if k != DEFAULT_SET)
            app = col("app_id")
            return F.when(app.isin(apps), app).otherwise(F.lit(DEFAULT_SET)) if apps else F.lit(DEFAULT_SET)

        page_url = col("page_view_page_url")
        pref, lref = _blank_null(col("page_view_page_referrer")), _blank_null(col("page_view_latest_referrer"))
        lref_host = url_host(lref)
        inputs = {
            **{f"_ts_cs_{f}": _blank_null(col(f"traffic_source_{f}")) for f in (*FIELDS, "category", "channel_group")},
            "_ts_page_host": F.lower(F.coalesce(_blank_null(col("page_view_hostname")), url_host(page_url))),
            "_ts_pref": pref,
            "_ts_lref": lref,
            "_ts_pref_host": url_host(pref),
            "_ts_lref_host": lref_host,
            # As the event's own column: the host the client sent, else the url's.
            "_ts_lhost": F.coalesce(_blank_null(col("page_view_latest_referrer_host")), lref_host),
            "_ts_q_page": utm_query(page_url),
            "_ts_q_lref": utm_query(lref),
            "_ts_q_pref": utm_query(pref),
            "_ts_cset": set_key(rules.category),
            "_ts_hset": set_key(rules.channel),
        }
        df = df.select(
            F.struct(*(col(f"`{c}`") for c in original)).alias("_ts_row"), *(v.alias(k) for k, v in inputs.items())
        )

        # Step 3: the referrer, internal ones (same host as the page) skipped; its lookup keys.
        same = lambda host: F.coalesce(col("_ts_page_host") == F.lower(host), F.lit(False))  # noqa: E731
        use_latest = col("_ts_lref").isNotNull() & ~same(col("_ts_lhost"))
        use_page = col("_ts_pref").isNotNull() & ~same(col("_ts_pref_host"))
        ref = F.when(use_latest, col("_ts_lref")).when(use_page, col("_ts_pref"))
        # The category lookup parses the referrer's own url; a host the client sent is not used there.
        r_host = F.when(use_latest, col("_ts_lref_host")).when(use_page, col("_ts_pref_host"))
        k_host = F.lower(r_host)
        path = url_path(ref)
        df = stage(
            df,
            [*sent_names, "_ts_cset", "_ts_hset"],
            {
                **{f"_ts_a_{n}": utm_arrays(col(f"_ts_q_{n}")) for n in ("page", "lref", "pref")},
                "_ts_ref": ref,
                "_ts_ref_host": F.when(use_latest, col("_ts_lhost")).when(use_page, col("_ts_pref_host")),
                "_ts_r_host": r_host,
                "_ts_k_host": k_host,
                "_ts_k_path": F.when((path != "") & (path != "/"), F.lower(F.concat(k_host, path))),
                "_ts_no_referrer": col("_ts_pref").isNull() & col("_ts_lref").isNull(),
                "_ts_from_internal": F.when(col("_ts_lref").isNotNull(), same(col("_ts_lhost")))
                .when(col("_ts_pref").isNotNull(), same(col("_ts_pref_host")))
                .otherwise(F.lit(False)),
            },
        )

        # Steps 1-2: the utm parameters. Client values first (any field the client sent wins over
        # the page url's), then the referrers' urls when there is still no source.
        page = utm_fields(col("_ts_a_page"))
        client_source = col("_ts_cs_source").isNotNull()
        utm_cols = {}
        for f in FIELDS:
            utm_cols[f"_ts_seed_{f}"] = normalised(f, F.coalesce(col(f"_ts_cs_{f}"), F.when(~client_source, page[f])))
        for n in ("lref", "pref"):
            utm_cols.update({f"_ts_{n}_{f}": v for f, v in utm_fields(col(f"_ts_a_{n}")).items()})
        # Most specific url form first: whole url, without scheme, host+path, host, www-less forms.
        found = col("_ts_r_host").isNotNull()
        ref = col("_ts_ref")
        lookups = url_lookups(rules.category)
        cset = col("_ts_cset")
        mh = lookup(cset, col("_ts_k_host"), lookups.host, _MATCH_TYPE)
        mp = lookup(cset, col("_ts_k_path"), lookups.path, _MATCH_TYPE)
        match = F.when(mp["exact"], mp).when(mh.isNotNull(), mh).otherwise(mp)
        if any(lookups.whole.values()):
            whole_url = lookup(cset, F.when(found, F.lower(ref)), lookups.whole, _MATCH_TYPE)
            rest = F.when(found & ref.contains("://"), F.lower(F.substr(ref, F.instr(ref, "://") + 3)))
            match = F.coalesce(whole_url, lookup(cset, rest, lookups.whole, _MATCH_TYPE), match)
        carry = [*sent_names, "_ts_cset", "_ts_hset", "_ts_ref", "_ts_ref_host", "_ts_r_host"]
        carry += ["_ts_no_referrer", "_ts_from_internal"]
        df = stage(df, carry, {**utm_cols, "_ts_match": match})

        m = col("_ts_match")
        values = F.regexp_extract_all(url_query(ref), m["terms_re"], F.lit(1))
        terms = _blank_null(F.array_join(F.sort_array(F.array_distinct(F.array_remove(values, ""))), ","))
        chosen = {}
        for f in FIELDS:
            value = (
                F.when(col("_ts_seed_source").isNotNull(), col(f"_ts_seed_{f}"))
                .when(col("_ts_lref_source").isNotNull(), col(f"_ts_lref_{f}"))
                .otherwise(col(f"_ts_pref_{f}"))
            )
            chosen[f"_ts_u_{f}"] = normalised(f, value)
        df = stage(
            df,
            carry,
            {
                **chosen,
                "_ts_terms": F.when(m["terms_re"].isNotNull(), terms),
                "_ts_cat0": F.when(found, F.coalesce(m["category"], F.lit(UNASSIGNED))),
                "_ts_m_source": F.when(found, F.coalesce(m["source"], col("_ts_r_host"))),
            },
        )

        # Step 4: category of the source name when the referrer gave none (last rule of a name wins).
        source1 = F.coalesce(col("_ts_u_source"), col("_ts_m_source"))
        cat0 = col("_ts_cat0")
        by_source = source1.isNotNull() & (cat0.isNull() | (cat0 == UNASSIGNED))
        sources = {k: {r.source: r.category for r in items} for k, items in rules.category.items()}
        cat1 = F.when(by_source, lookup(col("_ts_cset"), source1, sources, "string")).otherwise(cat0)
        # The values the channel rules see: lower-cased where compared, else only whether empty.
        # The rules see "no category" where the category is Unassigned.
        term1 = F.coalesce(col("_ts_u_term"), col("_ts_terms"))
        actual = {f: col(c) for f, c in RULE_FIELDS.items()} | {
            "traffic_source_source": source1,
            "traffic_source_term": term1,
            "traffic_source_category": F.when(cat1 != UNASSIGNED, cat1),
        }
        to_lower, to_test = set(), set()
        for items in rules.channel.values():
            for rule in items:
                to_lower |= fields_to_lower(rule.condition)
                to_test |= _fields_used(rule.condition)
        outputs = [f"_ts_u_{f}" for f in ("medium", "campaign", "content", "campaign_id", "clid_platform", "clid")]
        df = stage(
            df,
            [*sent_names, "_ts_hset", "_ts_ref_host", "_ts_no_referrer", "_ts_from_internal", *outputs],
            {
                "_ts_has_ref": col("_ts_ref").isNotNull(),
                "_ts_source1": source1,
                "_ts_term1": term1,
                "_ts_cat1": cat1,
                **{f"_ts_f_{f}": F.lower(F.coalesce(actual[f], F.lit(""))) for f in sorted(to_lower)},
                **{f"_ts_e_{f}": F.coalesce(actual[f] == "", F.lit(True)) for f in sorted(to_test)},
            },
        )

        # Step 5: channel group, per rule set.
        lowered = {f: col(f"_ts_f_{f}") for f in to_lower}
        empty = {f: col(f"_ts_e_{f}") for f in to_test}
        channel = channel_column(rules.channel[DEFAULT_SET], lowered, empty)
        for key, items in sorted(rules.channel.items(), reverse=True):
            if key != DEFAULT_SET:
                channel = F.when(col("_ts_hset") == key, channel_column(items, lowered, empty)).otherwise(channel)

        # Step 6: Direct, Unassigned and the inferred medium.
        source1, cat1 = col("_ts_source1"), col("_ts_cat1")
        has_ref = col("_ts_has_ref")
        source2 = F.coalesce(source1, F.when(has_ref, col("_ts_ref_host")))
        internal = col("_ts_from_internal")
        inferred = (
            F.when(col("_ts_u_clid").isNotNull(), F.lit("(CPC)"))
            .when(cat1 == "Search", F.lit("(Organic)"))
            .when(cat1.isin(*REFERRAL_CATEGORIES), F.lit("(Referral)"))
        )
        computed = {
            "source": F.coalesce(source2, F.lit(DIRECT)),
            "medium": F.coalesce(
                col("_ts_u_medium"),
                F.when(cat1.isNotNull(), inferred),
                F.when(col("_ts_no_referrer") | internal, F.lit(NONE_MEDIUM)).otherwise(F.lit("(Referral)")),
            ),
            "campaign": F.when(source1.isNull() & ~has_ref, F.lit(DIRECT)).otherwise(col("_ts_u_campaign")),
            "content": col("_ts_u_content"),
            "term": col("_ts_term1"),
            "campaign_id": col("_ts_u_campaign_id"),
            "clid_platform": col("_ts_u_clid_platform"),
            "clid": col("_ts_u_clid"),
            "category": F.when(source2.isNull(), F.lit(DIRECT)).otherwise(F.coalesce(cat1, F.lit(UNASSIGNED))),
            "channel_group": F.when(
                source2.isNull(), F.when(internal, F.lit(INTERNAL)).otherwise(F.lit(DIRECT))
            ).otherwise(channel),
        }
        # What the client sent is kept; the computed values fill the rest.
        out = {f"traffic_source_{k}": F.coalesce(col(f"_ts_cs_{k}"), v) for k, v in computed.items()}
        return df.select(*(out[c].alias(c) if c in out else col("_ts_row")[c].alias(c) for c in original))
