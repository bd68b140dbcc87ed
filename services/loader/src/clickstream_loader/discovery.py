"""Finding the ETL's Parquet files: list the four table prefixes and keep the keys the loader may load.

A key is loadable when it matches the layout of reference-system.md §4.8
(`<table>/partition_app=<id>/partition_year=YYYY/partition_month=MM/partition_day=DD/<name><suffix>`), its app
is registered (any app in dev mode, i.e. without an app config), and it ends with the configured suffix.
In AWS the reference learns of new objects from S3 event notifications; here (and in local mode) a listing
does, which is what a 30-second schedule needs.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from datetime import date
from urllib.parse import urlparse

from clickstream_core.appconfig import APP_ID_PATTERN, AppConfig
from clickstream_core.objectstore import open_store

from .schema import TABLE_NAMES

_PARTITIONS = re.compile(
    r"^partition_app=(?P<app>[^/]+)/partition_year=(?P<y>\d{4})/partition_month=(?P<m>\d{2})"
    r"/partition_day=(?P<d>\d{2})/(?P<name>[^/]+)$"
)


@dataclass(frozen=True, slots=True)
class DataFile:
    uri: str  # absolute path or s3://bucket/key
    table: str
    app_id: str
    event_day: date
    size: int
    mtime: float


def table_root(source: str, table: str) -> str:
    return source.rstrip("/") + "/" + table


def parse_key(table: str, key: str, suffix: str) -> tuple[str, date] | None:
    """(app id, event day) of a key relative to the table's prefix, or None when it is not loadable."""
    match = _PARTITIONS.match(key)
    if not match or not key.endswith(suffix) or match["name"].startswith((".", "_")):
        return None
    app = match["app"]
    if not APP_ID_PATTERN.match(app):
        return None
    try:
        day = date(int(match["y"]), int(match["m"]), int(match["d"]))
    except ValueError:
        return None
    return app, day


def file_uri(source: str, table: str, key: str) -> str:
    root = table_root(source, table)
    parsed = urlparse(root)
    if parsed.scheme in ("s3", "s3a"):
        return f"s3://{parsed.netloc}{parsed.path.rstrip('/')}/{key}"
    base = parsed.path if parsed.scheme == "file" else root
    return os.path.join(os.path.abspath(base), key)


async def _list_table(source: str, table: str):
    store = open_store(table_root(source, table))
    try:
        return await store.list("")
    finally:
        await store.close()


async def discover_async(source: str, apps: AppConfig, suffix: str, not_before: date | None = None) -> list[DataFile]:
    listings = await asyncio.gather(*(_list_table(source, t) for t in TABLE_NAMES))
    found = []
    for table, objects in zip(TABLE_NAMES, listings, strict=True):
        for info in objects:
            parsed = parse_key(table, info.key, suffix)
            if parsed is None:
                continue
            app, day = parsed
            if not apps.is_registered(app) or (not_before is not None and day < not_before):
                continue
            found.append(DataFile(file_uri(source, table, info.key), table, app, day, info.size, info.mtime))
    return found


def run_blocking(work):
    """The coroutine's result, from synchronous code; called from inside an event loop (an in-process
    scheduler), it runs on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def discover(source: str, apps: AppConfig, suffix: str = ".snappy.parquet", not_before: date | None = None):
    """Every loadable file under the four table prefixes (registered apps, days from `not_before` on)."""
    return run_blocking(discover_async(source, apps, suffix, not_before))
