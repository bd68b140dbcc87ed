"""The user_agent enricher on hand-built event rows (expected values checked against the headers by hand)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
from clickstream_core.tables import EVENT_V2
from clickstream_etl.enrichers import user_agent
from clickstream_etl.enrichers.user_agent import UserAgentEnricher, device_category, parse, parse_batch, version
from clickstream_etl.plugins import PluginError, load_class
from pyspark.sql import functions as F

CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.6099.130 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1.2 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"

INTERNAL = ("ua", "ip", "_bad_reason", "_bad_detail")
SCHEMA = EVENT_V2.ddl() + ", " + ", ".join(f"`{name}` string" for name in INTERNAL)
UA_COLUMNS = (
    "device_ua_browser",
    "device_ua_browser_version",
    "device_ua_os",
    "device_ua_os_version",
    "device_ua_device",
    "device_ua_device_category",
)


def events(spark, rows: list[dict]):
    """Event rows with the given columns; every other event_v2 column and internal column null."""
    names = [*EVENT_V2.names, *INTERNAL]
    full = [{"event_id": f"e{i}", "process_info": {"rid": f"r{i}"}, **row} for i, row in enumerate(rows)]
    return spark.createDataFrame([tuple(row.get(n) for n in names) for row in full], SCHEMA)


def enrich(spark, rows: list[dict], **params) -> dict[str, dict]:
    out = UserAgentEnricher(params).transform(events(spark, rows)).collect()
    return {row["event_id"]: row.asDict() for row in out}


def ua_values(row: dict) -> tuple:
    return tuple(row[c] for c in UA_COLUMNS)


def test_the_rust_resolver_parses():
    assert user_agent.resolver_name() == "ua_parser.regex"


def test_browsers_and_device_categories(spark):
    rows = enrich(spark, [{"ua": CHROME_WINDOWS}, {"ua": SAFARI_IPHONE}, {"ua": SAFARI_IPAD}])
    # A desktop browser has no device family in uap-core ("Other"), so its category is Other, as in the reference.
    assert ua_values(rows["e0"]) == ("Chrome", "120.0.6099", "Windows", "10", "Other", "Other")
    assert ua_values(rows["e1"]) == ("Mobile Safari", "17.1.2", "iOS", "17.1.2", "iPhone", "Mobile")
    assert ua_values(rows["e2"]) == ("Mobile Safari", "16.6", "iOS", "16.6", "iPad", "Tablet")
    assert all(row["_bad_reason"] is None for row in rows.values())


def test_device_ua_map_holds_the_parse_and_the_header(spark):
    ua_map = enrich(spark, [{"ua": CHROME_WINDOWS}])["e0"]["device_ua"]
    assert set(ua_map) == {"userAgent", "os", "device", "string"}
    assert ua_map["string"] == CHROME_WINDOWS
    assert json.loads(ua_map["userAgent"]) == {
        "family": "Chrome",
        "major": "120",
        "minor": "0",
        "patch": "6099",
        "patchMinor": "130",
    }
    assert json.loads(ua_map["os"]) == {"family": "Windows", "major": "10", "minor": None, "patch": None,
                                        "patchMinor": None}  # fmt: skip
    assert json.loads(ua_map["device"]) == {"family": "Other", "brand": None, "model": None}


def test_a_bot_is_flagged_not_dropped(spark):
    rows = enrich(spark, [{"ua": GOOGLEBOT}, {"ua": CHROME_WINDOWS}])
    assert len(rows) == 2
    bot = rows["e0"]
    assert ua_values(bot) == ("Googlebot", "2.1", "Other", None, "Spider", "Bot")
    assert bot["_bad_reason"] == "bot"
    assert bot["_bad_detail"] == "user agent of a bot: Googlebot (device Spider)"
    assert rows["e1"]["_bad_reason"] is None


def test_a_bot_is_kept_when_filter_bots_is_off(spark):
    bot = enrich(spark, [{"ua": GOOGLEBOT}], filter_bots=False)["e0"]
    assert bot["device_ua_device_category"] == "Bot"
    assert bot["_bad_reason"] is None
    assert bot["_bad_detail"] is None


def test_an_earlier_rejection_is_not_overwritten(spark):
    row = enrich(spark, [{"ua": GOOGLEBOT, "_bad_reason": "too_late", "_bad_detail": "3 days old"}])["e0"]
    assert (row["_bad_reason"], row["_bad_detail"]) == ("too_late", "3 days old")


def test_no_user_agent_keeps_the_transformers_values(spark):
    rows = enrich(
        spark,
        [
            {"ua": None},
            {"ua": "   "},
            {"ua": None, "device_ua_browser": "Sensors", "device_ua_os": "Android"},
        ],
    )
    assert ua_values(rows["e0"]) == (None,) * 6
    assert rows["e0"]["device_ua"] is None
    assert ua_values(rows["e1"]) == (None,) * 6
    assert ua_values(rows["e2"]) == ("Sensors", None, "Android", None, None, None)
    assert all(row["_bad_reason"] is None for row in rows.values())


def test_other_columns_pass_through(spark):
    df = events(spark, [{"ua": SAFARI_IPHONE, "app_id": "shop", "ip": "203.0.113.9"}])
    out = UserAgentEnricher().transform(df)
    assert out.columns == df.columns
    row = out.collect()[0]
    assert (row["app_id"], row["ip"], row["process_info"]) == ("shop", "203.0.113.9", {"rid": "r0"})


# Repeated headers, a bot, headers no rule knows, missing and blank headers, transformer values, an earlier rejection.
MIXED = [
    {"ua": CHROME_WINDOWS},
    {"ua": GOOGLEBOT},
    {"ua": CHROME_WINDOWS, "device_ua_browser": "From the transformer"},
    {"ua": None, "device_ua_browser": "Sensors", "device_ua_os": "Android"},
    {"ua": GOOGLEBOT, "_bad_reason": "too_late", "_bad_detail": "3 days old"},
    {"ua": SAFARI_IPHONE},
    {"ua": None},
    {"ua": "   "},
    {"ua": "   ", "device_ua_device": "Kept"},
    {"ua": "curl/8.4.0"},
    {"ua": CHROME_WINDOWS},
    {"ua": GOOGLEBOT},
    {"ua": SAFARI_IPHONE, "event_id": "twice"},
    {"ua": SAFARI_IPHONE, "event_id": "twice"},
    {"ua": None, "event_id": "twice"},
]


def row_wise(df, filter_bots: bool):
    """The enricher as it was before the join: the parse as an Arrow UDF on every row."""
    parsed = df.withColumn("_p", F.arrow_udf(parse_batch, user_agent._SPARK_TYPE)(F.col("ua")))
    filled = {name: F.coalesce(F.col(f"_p.{name}"), F.col(name)) for name in (*UA_COLUMNS, "device_ua")}
    if filter_bots:
        bot = F.coalesce(filled["device_ua_device_category"] == "Bot", F.lit(False)) & F.col("_bad_reason").isNull()
        detail = F.format_string("user agent of a bot: %s (device %s)", filled["device_ua_browser"],
                                 filled["device_ua_device"])  # fmt: skip
        filled["_bad_reason"] = F.when(bot, F.lit("bot")).otherwise(F.col("_bad_reason"))
        filled["_bad_detail"] = F.when(bot, detail).otherwise(F.col("_bad_detail"))
    return parsed.withColumns(filled).drop("_p")


def in_order(df) -> list:
    return sorted(df.collect(), key=lambda row: (row["event_id"], row["ua"] or "", row["device_ua_browser"] or ""))


@pytest.mark.parametrize("filter_bots", [True, False])
def test_same_rows_as_the_row_wise_parse(spark, filter_bots):
    df = events(spark, MIXED)
    out = UserAgentEnricher({"filter_bots": filter_bots}).transform(df)
    assert out.schema == df.schema
    assert in_order(out) == in_order(row_wise(df, filter_bots))


def test_every_event_comes_out_once(spark):
    # Duplicate headers, null headers and whole duplicate rows: the join must neither drop nor multiply events.
    df = events(spark, MIXED)
    out = UserAgentEnricher().transform(df)
    assert out.count() == df.count() == len(MIXED)
    assert sorted(row["event_id"] for row in out.collect()) == sorted(row["event_id"] for row in df.collect())


def subtree(plan: str, node: str) -> list[str]:
    """The line of the first `node` in a plan printed by explain(), and the lines of the nodes under it."""

    def depth(line: str) -> int:  # where the node's name starts: children are printed further right
        name = re.search(r"[\w*]", line)
        return name.start() if name else -1

    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if node in line)
    under = [lines[start]]
    for line in lines[start + 1 :]:
        if depth(line) <= depth(lines[start]):
            break
        under.append(line)
    return under


def python_runs_on_the_distinct_keys_only(plan: str) -> None:
    """Python sees the distinct keys (an aggregate below it), joined back under the join; no UDF on every row."""
    physical = plan.split("== Physical Plan ==")[-1]
    assert "ArrowEvalPython" not in physical
    assert "BatchEvalPython" not in physical
    assert physical.count("MapInArrow") == 1
    assert any("HashAggregate" in line for line in subtree(physical, "MapInArrow")[1:])
    assert any("MapInArrow" in line for line in subtree(physical, "Join ")[1:])


def test_headers_are_parsed_once_each_then_joined(spark, capsys):
    UserAgentEnricher().transform(events(spark, MIXED)).explain()
    python_runs_on_the_distinct_keys_only(capsys.readouterr().out)


def test_each_distinct_header_is_parsed_once_per_batch():
    parse.cache_clear()
    batch = pa.array([CHROME_WINDOWS, None, CHROME_WINDOWS, SAFARI_IPAD, CHROME_WINDOWS])
    out = parse_batch(batch).to_pylist()
    assert parse.cache_info().misses == 2
    assert parse.cache_info().hits == 0
    assert [r and r["device_ua_device"] for r in out] == ["Other", None, "Other", "iPad", "Other"]
    parse_batch(pa.array([SAFARI_IPAD]))
    assert parse.cache_info().hits == 1


@pytest.mark.parametrize(
    ("family", "category"),
    [
        ("Spider", "Bot"),
        ("Crawler", "Bot"),
        ("AhrefsBot", "Bot"),
        ("Generic Smartphone", "Mobile"),
        ("iPhone", "Mobile"),
        ("Generic Tablet", "Tablet"),
        ("Kindle", "Tablet"),
        ("Mac", "PC"),
        ("Samsung SM-S918B", "Other"),
        ("Other", "Other"),
        (None, None),
    ],
)
def test_device_category_rules(family, category):
    assert device_category(family) == category


def test_version_joins_what_the_parse_has():
    assert version("1", "2", "3") == "1.2.3"
    assert version("1", "2", None) == "1.2"
    assert version("1", None, None) == "1"
    assert version(None, None, None) is None


def test_entry_point_and_parameters():
    assert load_class("user_agent") is UserAgentEnricher
    with pytest.raises(PluginError, match="filter_bots"):
        UserAgentEnricher({"filter_bots": "no"})
    with pytest.raises(PluginError, match="unknown parameter"):
        UserAgentEnricher({"bots": False})
