"""Realistic Clickstream SDK traffic: sessions of web page views, clicks, searches and purchases,
shaped exactly like the official web SDK's wire format (web-sdk-wire-format.md), plus the mobile
SDKs' gzip+Base64 body encoding. Used by the demo, the locustfile and the benchmarks.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import random
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlencode

import orjson

SDK_NAME = "aws-solution-clickstream-sdk"
SDK_VERSION = "0.12.6"

# (country, locale, zone offset ms, an address in that country for fakeIp in dev mode)
PLACES = [
    ("US", "en-US", -5 * 3600_000, "8.8.8.8"),
    ("DE", "de-DE", 1 * 3600_000, "85.214.132.117"),
    ("JP", "ja-JP", 9 * 3600_000, "133.242.0.1"),
    ("BR", "pt-BR", -3 * 3600_000, "200.160.2.3"),
    ("IN", "hi-IN", 19800_000, "49.44.0.1"),
    ("CN", "zh-CN", 8 * 3600_000, "114.114.114.114"),
    ("GB", "en-GB", 0, "81.2.69.160"),
]
DEVICES = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36",
        1080,
        1920,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Safari/605.1.15",
        900,
        1440,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        844,
        390,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.6478.71 Mobile Safari/537.36",
        915,
        412,
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0", 1080, 1920),
]
REFERRERS = [
    "",
    "",
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://www.facebook.com/",
    "https://t.co/",
    "https://news.ycombinator.com/",
    "https://duckduckgo.com/",
]
CAMPAIGN_LANDINGS = [
    "?utm_source=newsletter&utm_medium=email&utm_campaign=autumn_sale",
    "?utm_source=google&utm_medium=cpc&utm_campaign=brand&gclid=Cj0KCQjw",
    "",
    "",
    "",
]
PAGES = [
    ("/", "Shop - Home"),
    ("/category/shoes", "Shoes"),
    ("/category/bags", "Bags"),
    ("/product/p-{n}", "Product {n}"),
    ("/cart", "Cart"),
    ("/search", "Search"),
]
PRODUCTS = [
    (f"p-{n}", f"Product {n}", round(9.99 + n * 3.5, 2), random.choice(["shoes", "bags", "hats"])) for n in range(1, 41)
]


@dataclass
class Visitor:
    app_id: str
    host: str
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    unique_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    place: tuple = field(default_factory=lambda: random.choice(PLACES))
    device: tuple = field(default_factory=lambda: random.choice(DEVICES))
    first_touch: int = field(default_factory=lambda: int(time.time() * 1000))
    session_number: int = 0
    user_id: str | None = None

    @property
    def user_agent(self) -> str:
        return self.device[0]

    @property
    def ip(self) -> str:
        return self.place[3]


class Session:
    """One visit: the SDK's common fields and session attributes on every event."""

    def __init__(self, visitor: Visitor, now_ms: int | None = None):
        self.visitor = visitor
        visitor.session_number += 1
        self.start = now_ms or int(time.time() * 1000)
        self.clock = self.start
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.start / 1000)) + f"{self.start % 1000:03d}"
        self.session_id = f"{visitor.unique_id[-8:]}-{stamp}"
        landing = random.choice(CAMPAIGN_LANDINGS)
        self.referrer = random.choice(REFERRERS) if not landing else ""
        self.page_url = f"https://{visitor.host}/{landing}"
        self.page_title = "Shop - Home"
        self.previous_url = ""
        self.previous_title = ""
        self.events: list[dict] = []

    def _event(self, event_type: str, attributes: dict | None = None, items: list | None = None) -> dict:
        visitor = self.visitor
        self.clock += random.randint(200, 15_000)
        country, locale, zone_offset, _ip = visitor.place
        _ua, height, width = visitor.device
        user = {"_user_first_touch_timestamp": {"value": visitor.first_touch, "set_timestamp": visitor.first_touch}}
        if visitor.user_id:
            user["_user_id"] = {"value": visitor.user_id, "set_timestamp": self.start}
        attrs = dict(attributes or {})
        attrs.update(
            {
                "_session_id": self.session_id,
                "_session_start_timestamp": self.start,
                "_session_duration": self.clock - self.start,
                "_session_number": visitor.session_number,
                "_page_title": self.page_title,
                "_page_url": self.page_url,
                "_latest_referrer": self.referrer,
            }
        )
        if self.referrer:
            attrs["_latest_referrer_host"] = self.referrer.split("/")[2]
        event = {
            "event_type": event_type,
            "event_id": str(uuid.uuid4()),
            "device_id": visitor.device_id,
            "unique_id": visitor.unique_id,
            "app_id": visitor.app_id,
            "timestamp": self.clock,
            "host_name": visitor.host,
            "locale": locale,
            "system_language": locale.split("-")[0],
            "country_code": country,
            "zone_offset": zone_offset,
            "make": "Gecko",
            "platform": "Web",
            "screen_height": height,
            "screen_width": width,
            "viewport_height": height - 120 if height > 500 else height,
            "viewport_width": width,
            "sdk_name": SDK_NAME,
            "sdk_version": SDK_VERSION,
        }
        if items:
            event["items"] = items
        event["user"] = user
        event["attributes"] = attrs
        self.events.append(event)
        return event

    def page_view(self, path: str, title: str) -> None:
        self.previous_url, self.previous_title = self.page_url, self.page_title
        first = not self.events or all(e["event_type"] != "_page_view" for e in self.events)
        self.page_url = f"https://{self.visitor.host}{path}"
        self.page_title = title
        attrs = {
            "_page_referrer": "" if first else self.previous_url,
            "_page_referrer_title": "" if first else self.previous_title,
            "_entrances": 1 if first else 0,
        }
        if not first:
            attrs["_previous_timestamp"] = self.clock
            attrs["_engagement_time_msec"] = random.randint(1000, 60_000)
        self._event("_page_view", attrs)

    def play(self, first_visit: bool) -> list[dict]:
        """A plausible visit: landing, browsing, maybe search, cart and purchase."""
        if first_visit:
            self._event("_first_open")
        self._event("_session_start")
        self.page_view("/", "Shop - Home")
        for _ in range(random.randint(1, 6)):
            product_id, name, price, category = random.choice(PRODUCTS)
            roll = random.random()
            if roll < 0.2:
                term = random.choice(["red shoes", "leather bag", "hat", "sale"])
                self.page_view(f"/search?q={term.replace(' ', '+')}", "Search")
                self._event("_search", {"_search_key": "q", "_search_term": term})
            elif roll < 0.35:
                self._event(
                    "_click",
                    {
                        "_link_url": "https://partner.example.org/deal",
                        "_link_domain": "partner.example.org",
                        "_link_classes": "promo",
                        "_link_id": None,
                        "_outbound": True,
                    },
                )
            else:
                self.page_view(f"/product/{product_id}", name)
                self._event("_scroll", {"_engagement_time_msec": random.randint(1000, 20_000)})
                if random.random() < 0.35:
                    item = {
                        "id": product_id,
                        "name": name,
                        "category": category,
                        "price": price,
                        "quantity": 1,
                        "currency": "USD",
                        "brand": "Acme",
                    }
                    self._event("add_to_cart", {"product_id": product_id, "price": price}, [item])
                    if random.random() < 0.4:
                        self.visitor.user_id = self.visitor.user_id or f"user-{random.randint(1, 10_000)}"
                        self._event("_profile_set", {})
                        self.page_view("/cart", "Cart")
                        self._event(
                            "purchase",
                            {"_value": price, "_currency": "USD", "transaction_id": str(uuid.uuid4())[:8]},
                            [item],
                        )
        self._event("_user_engagement", {"_engagement_time_msec": random.randint(1001, 120_000)})
        return self.events


def body_text(events: list[dict], gzip_base64: bool = False) -> str:
    text = orjson.dumps(events).decode()
    if not gzip_base64:
        return text
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def hash_code(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def collect_target(
    app_id: str, body: str, sequence: int, gzip_base64: bool = False, fake_ip: str | None = None, path: str = "/collect"
) -> str:
    """The request target the SDKs build, in their parameter order."""
    params = {"platform": "Android" if gzip_base64 else "Web", "appId": app_id}
    if gzip_base64:
        params["compression"] = "gzip"
    params.update(
        {
            "event_bundle_sequence_id": str(sequence),
            "upload_timestamp": str(int(time.time() * 1000)),
            "hashCode": hash_code(body),
        }
    )
    if fake_ip:
        params["fakeIp"] = fake_ip
    return f"{path}?{urlencode(params)}"


def sample_batch(count: int = 10, app_id: str = "shop", seed: int | None = None) -> list[dict]:
    """`count` consecutive events of one realistic visit (the benchmark's request body)."""
    if seed is not None:
        random.seed(seed)
    events: list[dict] = []
    while len(events) < count:
        events.extend(Session(Visitor(app_id, "shop.example.com")).play(first_visit=True))
    return events[:count]
