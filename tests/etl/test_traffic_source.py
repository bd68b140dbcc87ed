"""Traffic-source enricher: expected values worked out by hand from the bundled v1 rule files.

Facts the expectations rest on (category rules): google.com -> Google/Search without search-term
params; bing.com -> Bing/Search with `q`; bing.com/images/search -> Bing Images; m.facebook.com ->
Facebook/Social; www.facebook.com -> Facebook/Search with `q`; youtube.com -> youtube/Video;
amazon.com -> amazon/Shopping; search.yahoo.com -> Yahoo!/Search with `p` and `q`; the source name
"Google" is Search. Channel rules: the 16 of traffic_source_channel_rule_v1.json in their order.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
from clickstream_core.tables import EVENT_V2
from clickstream_etl.enrichers.traffic_source import OUTPUTS, TrafficSourceEnricher, url_host, url_path, url_query
from clickstream_etl.plugins import PluginError, RunContext

PAGE = "https://shop.example.com/landing"
PAGE_HOST = "shop.example.com"
TS = list(OUTPUTS)  # the columns the enricher fills, in the order of _expect
SCHEMA = EVENT_V2.ddl() + ", ua string, ip string, _bad_reason string"


def _row(event_id: str, **values) -> dict:
    row = dict.fromkeys([*EVENT_V2.names, "ua", "ip", "_bad_reason"])
    row.update(
        event_id=event_id,
        event_name="_page_view",
        event_time_msec=1_700_000_000_000,
        project_id="proj",
        app_id="app1",
        user_pseudo_id="u1",
        platform="Web",
        page_view_page_url=PAGE,
        page_view_hostname=PAGE_HOST,
    )
    row.update(values)
    return row


def _run(spark, rows: list[dict], rules_dir: str | None = None, app_ids=None, params=None) -> dict[str, dict]:
    context = RunContext(spark, "proj", "job-1", app_ids, 0, rules_dir=rules_dir)
    df = spark.createDataFrame(rows, SCHEMA)
    out = TrafficSourceEnricher(params or {}, context).transform(df)
    assert out.columns == df.columns
    got = {r["event_id"]: r.asDict() for r in out.collect()}
    assert len(got) == len(rows)
    return got


def _ts(row: dict) -> tuple:
    return tuple(row[c] for c in TS)


def _expect(source, medium, campaign, category, channel, *, content=None, term=None, cid=None, plat=None, clid=None):
    return (source, medium, campaign, content, term, cid, plat, clid, category, channel)


def test_page_url_utm_parameters(spark):
    url = (
        PAGE + "?utm_source=newsletter&utm_medium=email&utm_campaign=spring&utm_content=banner"
        "&utm_term=shoes&utm_id=c42&utm_source_platform=dv360"
    )
    got = _run(spark, [_row("e1", page_view_page_url=url)])
    assert _ts(got["e1"]) == _expect(
        "newsletter", "email", "spring", "Unassigned", "Email", content="banner", term="shoes", cid="c42", plat="dv360"
    )


def test_gclid_is_google_cpc_paid_search(spark):
    got = _run(
        spark,
        [
            _row("no-ref", page_view_page_url=PAGE + "?gclid=abc123"),
            _row(
                "google-ref",
                page_view_page_url=PAGE + "?gclid=abc123&utm_campaign=brand",
                page_view_latest_referrer="https://www.google.com/",
                page_view_latest_referrer_host="www.google.com",
            ),
        ],
    )
    clid = '{"type":"gclid","value":"abc123"}'
    # No referrer: the category comes from the source name "Google".
    assert _ts(got["no-ref"]) == _expect("Google", "(CPC)", None, "Search", "Paid Search", clid=clid)
    assert _ts(got["google-ref"]) == _expect("Google", "(CPC)", "brand", "Search", "Paid Search", clid=clid)


def test_other_click_id_names_the_source(spark):
    got = _run(spark, [_row("e1", page_view_page_url=PAGE + "?ref=x&fbclid=IwAR1&msclkid=zz")])
    # No category for the source "fbclid": medium (CPC) without a category is Paid Other.
    assert _ts(got["e1"]) == _expect(
        "fbclid", "(CPC)", None, "Unassigned", "Paid Other", clid='{"type":"fbclid","value":"IwAR1"}'
    )


def test_search_referrers_and_terms(spark):
    got = _run(
        spark,
        [
            _row("google", page_view_latest_referrer="https://www.google.com/search?q=boots"),
            _row("bing", page_view_page_referrer="https://www.bing.com/search?q=shoes&form=QBLH&q=boots&q=shoes"),
            _row("bing-images", page_view_page_referrer="https://bing.com/images/search?q=cats"),
            # host before host+path without www: www.bing.com/images/search finds bing.com first.
            _row("bing-www-images", page_view_page_referrer="https://www.bing.com/images/search?q=cats"),
            # Both of the rule's parameters are read: p and q.
            _row(
                "yahoo", page_view_latest_referrer="https://search.yahoo.com/search?p=flowers&fr=x&q=football&p=flowers"
            ),
        ],
    )
    # google.com has no term parameters in the rules, so q is not read.
    assert _ts(got["google"]) == _expect("Google", "(Organic)", None, "Search", "Organic Search")
    assert _ts(got["bing"]) == _expect("Bing", "(Organic)", None, "Search", "Organic Search", term="boots,shoes")
    assert _ts(got["bing-images"]) == _expect("Bing Images", "(Organic)", None, "Search", "Organic Search", term="cats")
    assert _ts(got["bing-www-images"]) == _expect("Bing", "(Organic)", None, "Search", "Organic Search", term="cats")
    assert _ts(got["yahoo"]) == _expect(
        "Yahoo!", "(Organic)", None, "Search", "Organic Search", term="flowers,football"
    )


def test_social_referrers(spark):
    got = _run(
        spark,
        [
            _row("organic", page_view_page_referrer="http://m.facebook.com/"),
            _row(
                "paid",
                page_view_page_url=PAGE + "?utm_source=facebook&utm_medium=paid_social",
                page_view_page_referrer="https://l.facebook.com/l.php?u=x",
            ),
            # The exact host wins over the host without www: www.facebook.com is a Search rule.
            _row("www", page_view_page_referrer="https://www.facebook.com/search/?q=shoes"),
        ],
    )
    assert _ts(got["organic"]) == _expect("Facebook", "(Referral)", None, "Social", "Organic Social")
    assert _ts(got["paid"]) == _expect("facebook", "paid_social", None, "Social", "Paid Social")
    assert _ts(got["www"]) == _expect("Facebook", "(Organic)", None, "Search", "Organic Search", term="shoes")


def test_direct_and_internal(spark):
    got = _run(
        spark,
        [
            _row("direct"),
            _row("no-url", page_view_page_url=None, page_view_hostname=None),
            _row(
                "internal",
                page_view_latest_referrer="https://shop.example.com/cart",
                page_view_latest_referrer_host="shop.example.com",
            ),
            _row("internal-page-ref", page_view_page_referrer="https://SHOP.example.com/a b/%/"),
            # An internal latest referrer is skipped and the external page referrer used instead.
            _row(
                "internal-then-external",
                page_view_latest_referrer="https://shop.example.com/",
                page_view_latest_referrer_host="shop.example.com",
                page_view_page_referrer="https://blog.example.org/post",
            ),
        ],
    )
    assert _ts(got["direct"]) == _expect("Direct", "None", "Direct", "Direct", "Direct")
    assert _ts(got["no-url"]) == _expect("Direct", "None", "Direct", "Direct", "Direct")
    assert _ts(got["internal"]) == _expect("Direct", "None", "Direct", "Direct", "Internal")
    assert _ts(got["internal-page-ref"]) == _expect("Direct", "None", "Direct", "Direct", "Internal")
    # The medium still follows the latest referrer, which was internal: None (as the reference).
    assert _ts(got["internal-then-external"]) == _expect("blog.example.org", "None", None, "Unassigned", "Referral")


def test_medium_without_source_is_dropped_like_the_reference(spark):
    # Without utm_source the reference takes the utm set of the referrers' urls instead (none
    # here), so the page's medium and campaign are lost and the visit is Direct.
    got = _run(spark, [_row("e1", page_view_page_url=PAGE + "?utm_medium=email&utm_campaign=spring")])
    assert _ts(got["e1"]) == _expect("Direct", "None", "Direct", "Direct", "Direct")


def test_each_default_channel_rule(spark):
    def utm(query: str) -> str:
        return PAGE + "?" + query

    rows = [
        _row("Direct"),
        _row("Paid Search", page_view_page_url=utm("gclid=g1")),
        _row("Organic Search", page_view_latest_referrer="https://www.google.com/"),
        _row(
            "Paid Social",
            page_view_page_url=utm("utm_source=fb&utm_medium=paid"),
            page_view_page_referrer="https://m.facebook.com/",
        ),
        _row("Organic Social", page_view_page_referrer="https://m.facebook.com/"),
        _row(
            "Paid Video",
            page_view_page_url=utm("utm_source=yt&utm_medium=cpv"),
            page_view_page_referrer="https://youtube.com/watch?v=1",
        ),
        _row("Organic Video", page_view_page_referrer="https://www.youtube.com/watch?v=1"),
        _row(
            "Paid Shopping",
            page_view_page_url=utm("utm_source=amazon&utm_medium=ppc"),
            page_view_page_referrer="https://www.amazon.com/dp/B0",
        ),
        _row("Organic Shopping", page_view_page_url=utm("utm_source=partner&utm_campaign=summer-shop")),
        _row("Paid Other", page_view_page_url=utm("utm_source=partner&utm_medium=cpc")),
        _row("Email", page_view_page_url=utm("utm_source=newsletter&utm_medium=email")),
        _row("Email by host", page_view_latest_referrer="https://mail.example.net/inbox"),
        _row("SMS", page_view_page_url=utm("utm_source=sms")),
        _row("Audio", page_view_page_url=utm("utm_source=podcast&utm_medium=audio")),
        _row("Mobile Push Notifications", page_view_page_url=utm("utm_source=app&utm_medium=push")),
        _row("Referral", page_view_page_referrer="https://blog.example.org/post"),
        _row("Internal", page_view_latest_referrer="https://wiki.internal.example.com/page"),
    ]
    got = _run(spark, rows)
    expected = {
        "Direct": ("Direct", "None", "Direct", "Direct"),
        "Paid Search": ("Google", "(CPC)", None, "Search"),
        "Organic Search": ("Google", "(Organic)", None, "Search"),
        "Paid Social": ("fb", "paid", None, "Social"),
        "Organic Social": ("Facebook", "(Referral)", None, "Social"),
        "Paid Video": ("yt", "cpv", None, "Video"),
        "Organic Video": ("youtube", "(Referral)", None, "Video"),
        "Paid Shopping": ("amazon", "ppc", None, "Shopping"),
        "Organic Shopping": ("partner", "None", "summer-shop", "Unassigned"),
        "Paid Other": ("partner", "cpc", None, "Unassigned"),
        "Email": ("newsletter", "email", None, "Unassigned"),
        "Email by host": ("mail.example.net", "(Referral)", None, "Unassigned"),
        "SMS": ("sms", "None", None, "Unassigned"),
        "Audio": ("podcast", "audio", None, "Unassigned"),
        "Mobile Push Notifications": ("app", "push", None, "Unassigned"),
        "Referral": ("blog.example.org", "(Referral)", None, "Unassigned"),
        "Internal": ("wiki.internal.example.com", "(Referral)", None, "Unassigned"),
    }
    for event_id, (source, medium, campaign, category) in expected.items():
        row = got[event_id]
        channel = "Email" if event_id == "Email by host" else event_id
        assert (
            row["traffic_source_source"],
            row["traffic_source_medium"],
            row["traffic_source_campaign"],
            row["traffic_source_category"],
            row["traffic_source_channel_group"],
        ) == (source, medium, campaign, category, channel), event_id
    bundled = resources.files("clickstream_etl").joinpath("rules", "traffic_source_channel_rule_v1.json")
    channels = [r["channel"] for r in json.loads(bundled.read_text(encoding="utf-8"))]
    assert len(channels) == 16
    assert set(channels) <= {r["traffic_source_channel_group"] for r in got.values()}


def test_client_sent_values_are_kept(spark):
    got = _run(
        spark,
        [
            # Everything sent: nothing is touched, even against the referrer.
            _row(
                "all",
                traffic_source_source="partner",
                traffic_source_medium="affiliate",
                traffic_source_campaign="c",
                traffic_source_category="Custom",
                traffic_source_channel_group="Affiliates",
                page_view_page_referrer="https://m.facebook.com/",
            ),
            # Source sent: category and channel evaluated on the client's values; the medium
            # the client sent stays, the search term comes from the referrer.
            _row(
                "source",
                traffic_source_source="newsletter",
                traffic_source_medium="email",
                page_view_page_url=PAGE + "?utm_source=ignored&utm_medium=ignored",
            ),
            _row(
                "source-search-ref",
                traffic_source_source="Google",
                traffic_source_campaign="brand",
                page_view_page_referrer="https://www.bing.com/search?q=hats",
            ),
            # No source sent: the page url fills it, the client's campaign and content stay.
            _row(
                "no-source",
                traffic_source_campaign="client-campaign",
                traffic_source_content="client-content",
                page_view_page_url=PAGE + "?utm_source=blog&utm_medium=cpc&utm_campaign=url-campaign",
            ),
        ],
    )
    assert _ts(got["all"]) == _expect("partner", "affiliate", "c", "Custom", "Affiliates")
    assert _ts(got["source"]) == _expect("newsletter", "email", None, "Unassigned", "Email")
    assert _ts(got["source-search-ref"]) == _expect(
        "Google", "(Organic)", "brand", "Search", "Organic Search", term="hats"
    )
    # "blog" is the source name of the blog.com rule, hence Social.
    assert _ts(got["no-source"]) == _expect(
        "blog", "cpc", "client-campaign", "Social", "Paid Social", content="client-content"
    )


def _write_rules(folder, app: str, category=None, channel=None) -> None:
    target = folder / app
    target.mkdir(parents=True, exist_ok=True)
    if category is not None:
        (target / "traffic_source_category_rule_v1.json").write_text(json.dumps(category))
    if channel is not None:
        (target / "traffic_source_channel_rule_v1.json").write_text(json.dumps(channel))


def test_per_app_rule_files_override_the_defaults(spark, tmp_path):
    _write_rules(
        tmp_path,
        "app-own",
        category=[{"url": "news.example.org", "source": "Example News", "category": "Social", "params": ["s"]}],
        channel=[
            {
                "id": "r1",
                "channel": "Partner News",
                "condition": {
                    "op::and": [
                        {"field": "traffic_source_source", "op": "eq", "value": "EXAMPLE NEWS"},
                        {
                            "op::or": [
                                {"field": "traffic_source_term", "op": "match", "value": "^sale.*"},
                                {"field": "traffic_source_medium", "op": "in", "values": ["Promo"]},
                            ]
                        },
                    ]
                },
            },
            {
                "channel": "Everything Else",
                "condition": {"op::or": [{"field": "traffic_source_clid", "op": "eq", "value": "__empty__"}]},
            },
        ],
    )
    # Only a channel file: the bundled categories still apply.
    _write_rules(
        tmp_path,
        "app-channel-only",
        channel=[
            {
                "channel": "Any Search",
                "condition": {"op::and": [{"field": "traffic_source_category", "op": "eq", "value": "search"}]},
            }
        ],
    )
    news = "https://news.example.org/story?s=sale-week"
    rows = [
        _row("own-news", app_id="app-own", page_view_page_referrer=news),
        _row("own-news-other-term", app_id="app-own", page_view_page_referrer="https://news.example.org/?s=hello"),
        _row("own-google", app_id="app-own", page_view_page_referrer="https://www.google.com/"),
        _row("channel-only-google", app_id="app-channel-only", page_view_page_referrer="https://www.google.com/"),
        _row("channel-only-blog", app_id="app-channel-only", page_view_page_referrer="https://blog.example.org/"),
        _row("default-news", app_id="app1", page_view_page_referrer=news),
    ]
    got = _run(spark, rows, rules_dir=str(tmp_path))
    assert _ts(got["own-news"]) == _expect(
        "Example News", "(Referral)", None, "Social", "Partner News", term="sale-week"
    )
    assert _ts(got["own-news-other-term"]) == _expect(
        "Example News", "(Referral)", None, "Social", "Everything Else", term="hello"
    )
    # The app's category list replaces the bundled one: google.com is unknown there.
    assert _ts(got["own-google"]) == _expect("www.google.com", "(Referral)", None, "Unassigned", "Everything Else")
    assert _ts(got["channel-only-google"]) == _expect("Google", "(Organic)", None, "Search", "Any Search")
    assert _ts(got["channel-only-blog"]) == _expect("blog.example.org", "(Referral)", None, "Unassigned", "Unassigned")
    assert _ts(got["default-news"]) == _expect("news.example.org", "(Referral)", None, "Unassigned", "Referral")

    # The parameter overrides the run's folder; listed app ids limit which folders are read.
    got = _run(spark, rows[:1], rules_dir="/nonexistent", params={"rules_dir": str(tmp_path)})
    assert got["own-news"]["traffic_source_channel_group"] == "Partner News"
    got = _run(spark, rows[:1], rules_dir=str(tmp_path), app_ids=("app1",))
    assert got["own-news"]["traffic_source_channel_group"] == "Referral"


def test_channel_rule_operators(spark, tmp_path):
    def rule(channel: str, medium: str, op: str, value) -> dict:
        test = {"field": "traffic_source_source", "op": op}
        test["values" if op in ("in", "not_in") else "value"] = value
        return {
            "channel": channel,
            "condition": {"op::and": [{"field": "traffic_source_medium", "op": "eq", "value": medium}, test]},
        }

    channel = [
        rule("contain", "m1", "contain", "ZZ"),  # both sides compared in lower case
        rule("not_contain", "m2", "not_contain", "zz"),
        rule("start_with", "m3", "start_with", "pre"),
        rule("not_start_with", "m4", "not_start_with", "pre"),
        rule("end_with", "m5", "end_with", "fix"),
        rule("not_end_with", "m6", "not_end_with", "fix"),
        rule("not_match", "m7", "not_match", "[0-9]+"),  # whole-value match, as Java's matches()
        rule("not_in", "m8", "not_in", ["a", "B"]),
        {
            "channel": "not_eq",
            "condition": {
                "op::and": [
                    {"field": "traffic_source_medium", "op": "not_eq", "value": "__empty__"},
                    {"field": "traffic_source_campaign", "op": "eq", "value": "__empty__"},
                    {"field": "traffic_source_source", "op": "eq", "value": "Plain"},
                ]
            },
        },
    ]
    # A url ending in / is only found in its whole form (here: without the scheme).
    category = [{"url": "partner.example.com/landing/", "source": "Partner LP", "category": "Shopping"}]
    _write_rules(tmp_path, "ops", category=category, channel=channel)
    cases = {
        "contain": ("aaZZb", "m1"),
        "not_contain": ("abc", "m2"),
        "start_with": ("PREfix", "m3"),
        "not_start_with": ("xpre", "m4"),
        "end_with": ("suffix", "m5"),
        "not_end_with": ("fixes", "m6"),
        "not_match": ("abc12", "m7"),
        "not_in": ("c", "m8"),
        "not_eq": ("plain", "m9"),
        "contain-miss": ("abc", "m1"),
        "not_in-miss": ("b", "m8"),
        "not_match-miss": ("123", "m7"),
    }
    rows = [
        _row(k, app_id="ops", page_view_page_url=f"{PAGE}?utm_source={src}&utm_medium={med}")
        for k, (src, med) in cases.items()
    ]
    rows.append(_row("whole", app_id="ops", page_view_page_referrer="https://partner.example.com/landing/"))
    rows.append(_row("whole-deeper", app_id="ops", page_view_page_referrer="https://partner.example.com/landing/x"))
    got = _run(spark, rows, rules_dir=str(tmp_path))
    for event_id in cases:
        expected = "Unassigned" if event_id.endswith("-miss") else event_id
        assert got[event_id]["traffic_source_channel_group"] == expected, event_id
    assert _ts(got["whole"]) == _expect("Partner LP", "(Referral)", None, "Shopping", "Unassigned")
    assert _ts(got["whole-deeper"]) == _expect("partner.example.com", "(Referral)", None, "Unassigned", "Unassigned")


def test_url_parts():
    urls = {
        "https://www.google.com/": ("www.google.com", "/", None),
        "http://m.facebook.com": ("m.facebook.com", "", None),
        "www.example.com/dining/%/": ("www.example.com", "/dining/%/", None),
        "https://SHOP.example.com/a b/?x=1": ("SHOP.example.com", "/a b/", "x=1"),
        "https://user:pw@host.io:8080/p/q?x=1&y=2#f": ("host.io", "/p/q", "x=1&y=2"),
        "https://a.com/p#frag?not-a-query": ("a.com", "/p", None),
        "https://a.com/r?u=https://b.com/x": ("a.com", "/r", "u=https://b.com/x"),
        "/relative/path?x=1": (None, "/relative/path", "x=1"),
        "a.com/x?": ("a.com", "/x", None),
    }
    assert {u: (url_host(u), url_path(u), url_query(u)) for u in urls} == urls
    assert (url_host(None), url_path(None), url_query(None)) == (None, None, None)


def test_rows_are_kept_and_other_columns_untouched(spark):
    rows = [
        _row("bad", _bad_reason="corrupt", app_id=None, page_view_page_url=None, ua="UA", ip="10.0.0.1"),
        _row("ok", geo_country="DE", ua="UA2"),
    ]
    got = _run(spark, rows)
    assert got["bad"]["_bad_reason"] == "corrupt"
    assert (got["bad"]["ua"], got["bad"]["ip"]) == ("UA", "10.0.0.1")
    assert (got["ok"]["geo_country"], got["ok"]["page_view_page_url"]) == ("DE", PAGE)


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ([{"channel": "X", "condition": {"op::and": [{"field": "nope", "op": "eq", "value": "a"}]}}], "unknown field"),
        (
            [
                {
                    "channel": "X",
                    "condition": {"op::and": [{"field": "traffic_source_source", "op": "like", "value": "a"}]},
                }
            ],
            "unknown op",
        ),
        (
            [
                {
                    "channel": "X",
                    "condition": {"op::and": [{"field": "traffic_source_source", "op": "in", "values": []}]},
                }
            ],
            "non-empty list",
        ),
        (
            [
                {
                    "channel": "X",
                    "condition": {"op::and": [{"field": "traffic_source_source", "op": "match", "value": "(a"}]},
                }
            ],
            "regular expression",
        ),
        ([{"channel": "X", "condition": {"op::and": [], "op::or": []}}], "exactly one"),
        ({"channel": "X"}, "JSON array"),
    ],
)
def test_invalid_channel_rules_are_rejected(spark, tmp_path, channel, message):
    _write_rules(tmp_path, "app1", channel=channel)
    context = RunContext(spark, "proj", "job-1", None, 0, rules_dir=str(tmp_path))
    with pytest.raises(PluginError, match=message):
        TrafficSourceEnricher({}, context).rule_sets()


@pytest.mark.parametrize(
    ("params", "message"), [({"disable": True}, "unknown parameter"), ({"rules_dir": 5}, "rules_dir must be")]
)
def test_bad_parameters_are_rejected(params, message):
    with pytest.raises(PluginError, match=message):
        TrafficSourceEnricher(params)
