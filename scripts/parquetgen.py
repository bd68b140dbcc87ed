"""Parquet files of the four tables with realistic values, made with pyarrow (no Spark): the loader's benchmark
and unit-level tests. Schemas come from clickstream_core.tables; files land in the ETL's layout
(`<root>/<table>/partition_app=…/partition_year=…/partition_month=…/partition_day=…/part-….snappy.parquet`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from clickstream_loader.arrowtypes import arrow_schema

EVENT_NAMES = ["_page_view", "_user_engagement", "_click", "_search", "_scroll", "add_to_cart", "purchase"]
COUNTRIES = ["US", "DE", "CN", "BR", "IN", "FR", "JP"]
SOURCES = [None, "Direct", "google", "bing", "newsletter"]


@dataclass
class Dataset:
    event_v2: list[dict]
    item_v2: list[dict]
    user_v2: list[dict]
    session: list[dict]

    def tables(self) -> dict[str, list[dict]]:
        return {"event_v2": self.event_v2, "item_v2": self.item_v2, "user_v2": self.user_v2, "session": self.session}


def generate(events: int, app_id: str = "shop", start: datetime | None = None, seed: int = 7, days: int = 1) -> Dataset:
    """`events` event rows over `days` days, with items, one session row per session and one user row per user."""
    rnd = random.Random(seed)
    start = start or datetime(2026, 3, 1, tzinfo=UTC)
    span_ms = days * 86_400_000
    users = max(1, events // 30)
    out = Dataset([], [], [], [])
    seen_sessions: set[tuple[str, str]] = set()
    seen_users: set[str] = set()
    created = datetime.now(UTC)
    for i in range(events):
        user = f"u{rnd.randrange(users):07d}"
        session = f"{user}-s{rnd.randrange(3)}"
        ts = start + timedelta(milliseconds=rnd.randrange(span_ms))
        ms = int(ts.timestamp() * 1000)
        name = rnd.choice(EVENT_NAMES)
        source = rnd.choice(SOURCES)
        event = {
            "event_timestamp": ts,
            "event_id": f"e{seed}-{i:09d}",
            "event_time_msec": ms,
            "event_name": name,
            "event_value": rnd.random() * 100 if name == "purchase" else None,
            "event_value_currency": "USD" if name == "purchase" else None,
            "event_bundle_sequence_id": i % 50,
            "ingest_time_msec": ms + 250,
            "device_mobile_brand_name": "Apple" if i % 3 else "Samsung",
            "device_mobile_model_name": "iPhone 15",
            "device_system_language": "en",
            "device_time_zone_offset_seconds": 3600,
            "device_ua_browser": "Chrome",
            "device_ua_browser_version": "131.0",
            "device_ua_os": "Mac OS X",
            "device_ua_device": "Mac",
            "device_ua_device_category": "desktop",
            "device_ua": {"string": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Chrome/131.0"},
            "device_screen_width": 1920,
            "device_screen_height": 1080,
            "device_viewport_width": 1400,
            "device_viewport_height": 900,
            "geo_continent": "Europe",
            "geo_country": rnd.choice(COUNTRIES),
            "geo_city": "Berlin",
            "geo_locale": "en_US",
            "traffic_source_source": source,
            "traffic_source_medium": "organic" if source else None,
            "traffic_source_channel_group": "Organic Search" if source else "Direct",
            "platform": "Web",
            "project_id": "default",
            "app_id": app_id,
            "page_view_page_referrer": "https://www.google.com/",
            "page_view_page_title": "Product page",
            "page_view_page_url": f"https://shop.example.com/product/{rnd.randrange(500)}?ref=home",
            "page_view_page_url_path": f"/product/{rnd.randrange(500)}",
            "page_view_page_url_query_parameters": {"ref": "home"},
            "page_view_hostname": "shop.example.com",
            "page_view_entrances": i % 10 == 0,
            "user_engagement_time_msec": rnd.randrange(60_000),
            "user_pseudo_id": user,
            "session_id": session,
            "session_start_time_msec": ms - 1000,
            "session_number": 1,
            "sdk_version": "0.12.6",
            "sdk_name": "aws-solution-clickstream-sdk",
            "custom_parameters_json_str": '{"category":"shoes","price":"42"}',
            "custom_parameters": {
                "category": {"value": "shoes", "type": "STRING"},
                "price": {"value": "42", "type": "DOUBLE"},
            },
            "process_info": {"rid": f"r{i:09d}", "ingest_time": str(ms + 250)},
            "created_time": created,
        }
        out.event_v2.append(event)
        if name in ("add_to_cart", "purchase"):
            out.item_v2.append(
                {
                    "event_timestamp": ts,
                    "event_id": event["event_id"],
                    "event_name": name,
                    "platform": "Web",
                    "user_pseudo_id": user,
                    "item_id": f"item{rnd.randrange(500)}",
                    "name": "Running shoe",
                    "brand": "Acme",
                    "currency": "USD",
                    "price": 42.0,
                    "quantity": 1.0,
                    "category": "shoes",
                    "process_info": {"rid": f"r{i:09d}"},
                    "created_time": created,
                }
            )
        if (user, session) not in seen_sessions:
            seen_sessions.add((user, session))
            out.session.append(
                {
                    "event_timestamp": ts,
                    "user_pseudo_id": user,
                    "session_id": session,
                    "session_number": 1,
                    "session_start_time_msec": ms - 1000,
                    "session_source": source,
                    "session_medium": "organic" if source else None,
                    "session_channel_group": "Organic Search" if source else "Direct",
                    "process_info": {"rid": f"r{i:09d}"},
                    "created_time": created,
                }
            )
        if user not in seen_users:
            seen_users.add(user)
            out.user_v2.append(
                {
                    "event_timestamp": ts,
                    "user_pseudo_id": user,
                    "user_properties": {"plan": {"value": "pro", "type": "STRING", "set_time_msec": ms}},
                    "user_properties_json_str": '{"plan":"pro"}',
                    "first_touch_time_msec": ms,
                    "first_visit_date": ts.date(),
                    "first_traffic_source": source,
                    "process_info": {"rid": f"r{i:09d}"},
                    "created_time": created,
                }
            )
    return out


def write_table(root: Path, table: str, rows: list[dict], rows_per_file: int = 100_000, tag: str = "gen") -> list[Path]:
    """Rows into the ETL's layout under `root`, split by app and day, at most `rows_per_file` a file."""
    schema = arrow_schema(table)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        ts = row["event_timestamp"].astimezone(UTC)
        app = row.get("app_id") or row.get("_app", "shop")
        groups.setdefault((app, ts.strftime("%Y/%m/%d")), []).append(row)
    written = []
    for (app, day), group in sorted(groups.items()):
        year, month, dom = day.split("/")
        folder = root / table / f"partition_app={app}" / f"partition_year={year}"
        folder = folder / f"partition_month={month}" / f"partition_day={dom}"
        folder.mkdir(parents=True, exist_ok=True)
        for n, offset in enumerate(range(0, len(group), rows_per_file)):
            chunk = [{k: v for k, v in r.items() if k != "_app"} for r in group[offset : offset + rows_per_file]]
            path = folder / f"part-{tag}-{n:05d}.snappy.parquet"
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), path, compression="snappy")
            written.append(path)
    return written


def write_dataset(root: Path, data: Dataset, rows_per_file: int = 100_000, tag: str = "gen") -> dict[str, list[Path]]:
    app_of = {}
    for event in data.event_v2:
        app_of[event["user_pseudo_id"]] = event["app_id"]
    out = {}
    for table, rows in data.tables().items():
        if table != "event_v2":
            rows = [{**r, "_app": app_of.get(r["user_pseudo_id"], "shop")} for r in rows]
        out[table] = write_table(root, table, rows, rows_per_file, tag)
    return out
