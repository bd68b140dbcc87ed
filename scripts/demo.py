"""`make demo`: the whole pipeline on one machine, fed a realistic stream of SDK traffic.

    python -m scripts.demo [--seconds 60] [--visitors 20] [--interval 30] [--port 8080] [--data-dir ./data]
                           [--warehouse duckdb|postgres]

The local stack (proxy + worker writing raw objects to a local folder) and the pipeline scheduler
(scripts/pipeline.py: the ETL and then the loader every `--interval` seconds, DuckDB views as the
warehouse, or a PostgreSQL cluster of the demo's own with `--warehouse postgres`) run while visitors
from several countries, devices and traffic sources play sessions
(page views, scrolls, clicks, searches, carts, purchases); web visitors post JSON arrays like the
web SDK, app visitors post gzip+Base64 bodies like the mobile SDKs. At the end the stack drains,
the scheduler runs a last cycle, and the demo checks that every acknowledged request is in the raw
data and every accepted event is in the warehouse (or a bad row), then prints a few headline
numbers from the reporting views.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import sys
import time
from pathlib import Path

import aiohttp

from scripts import pipeline, sdkgen
from scripts.stack import LocalStack, read_lake

APP_IDS = ["shop", "news_app"]


async def visitor_loop(session: aiohttp.ClientSession, url: str, stop: asyncio.Event, stats: dict, app_id: str) -> None:
    while not stop.is_set():
        visitor = sdkgen.Visitor(app_id, "shop.example.com")
        mobile = random.random() < 0.3
        for visit in range(random.randint(1, 3)):
            events = sdkgen.Session(visitor).play(first_visit=visit == 0)
            for start in range(0, len(events), 8):
                batch = events[start : start + 8]
                body = sdkgen.body_text(batch, gzip_base64=mobile)
                stats["sequence"] += 1
                target = sdkgen.collect_target(app_id, body, stats["sequence"], gzip_base64=mobile, fake_ip=visitor.ip)
                try:
                    async with session.post(
                        url + target, data=body, headers={"User-Agent": visitor.user_agent}
                    ) as answer:
                        await answer.read()
                        stats[answer.status] += 1
                        if answer.status == 200:
                            stats["events"] += len(batch)
                            stats["rids"].add(answer.headers["X-Request-ID"])
                except (aiohttp.ClientError, TimeoutError):
                    stats["errors"] += 1
                await asyncio.sleep(random.uniform(0.05, 0.5))
                if stop.is_set():
                    return


async def send_traffic(url: str, seconds: float, visitors: int, app_ids: list[str]) -> dict:
    stats: dict = collections.defaultdict(int)
    stats["rids"] = set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [
            asyncio.create_task(visitor_loop(session, url, stop, stats, app_ids[n % len(app_ids)]))
            for n in range(visitors)
        ]
        started = time.monotonic()
        while not stop.is_set() and (seconds <= 0 or time.monotonic() - started < seconds):
            await asyncio.sleep(1)
            print(
                f"  sent: {stats[200]} requests accepted, {stats['events']} events, "
                f"{stats[503]} retry-later, {stats['errors']} errors",
                flush=True,
            )
        stop.set()
        await asyncio.gather(*tasks)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.demo")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("DEMO_SECONDS", "60")))
    parser.add_argument("--visitors", type=int, default=int(os.environ.get("DEMO_VISITORS", "20")))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--worker-port", type=int, default=int(os.environ.get("WORKER_HTTP_PORT", "8686")))
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    parser.add_argument("--interval", type=float, default=float(os.environ.get("PIPELINE_INTERVAL_S", "30")))
    parser.add_argument(
        "--warehouse", choices=pipeline.LocalWarehouse.KINDS, default=os.environ.get("WAREHOUSE") or "duckdb"
    )
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir).resolve()
    stack = LocalStack(
        data_dir=data_dir,
        port=args.port,
        worker_http_port=args.worker_port,
        processes=0,
        roll_seconds=10,
        log_dir=data_dir / "logs",
    )
    warehouse = pipeline.LocalWarehouse(args.warehouse, data_dir)
    loader_env = warehouse.start()
    try:
        return run(args, data_dir, stack, warehouse, loader_env)
    finally:
        warehouse.stop()


def run(args, data_dir: Path, stack: LocalStack, warehouse: pipeline.LocalWarehouse, loader_env: dict) -> int:
    print(f"starting the local stack on {stack.url} (logs in {data_dir / 'logs'})", flush=True)
    stack.start()
    print(f"starting the pipeline: ETL + loader every {args.interval:g} s (logs/pipeline.log)", flush=True)
    scheduler = pipeline.start_process(data_dir, args.interval, data_dir / "logs", **loader_env)
    try:
        duration = "until Ctrl-C" if args.seconds <= 0 else f"for {args.seconds:g} s"
        print(f"sending SDK traffic from {args.visitors} visitors {duration}", flush=True)
        stats = asyncio.run(send_traffic(stack.url, args.seconds, args.visitors, APP_IDS))
    finally:
        print("draining the stack (uploads the last objects)", flush=True)
        stack.stop()
        print("last pipeline cycle (ETL + load of everything that arrived)", flush=True)
        pipeline_rc = pipeline.stop_process(scheduler)

    records = read_lake(stack.lake)
    landed = {record["rid"] for record in records}
    missing = stats["rids"] - landed
    objects = sorted(stack.lake.rglob("*.gz"))
    layout = pipeline.Layout(data_dir)
    print(
        f"\nresults\n"
        f"  requests accepted (200): {stats[200]}   events in them: {stats['events']}\n"
        f"  retry-later (503): {stats[503]}   client errors: {stats['errors']}\n"
        f"  raw objects: {len(objects)} under {layout.raw}\n"
        f"  raw records: {len(records)}; acknowledged requests missing from the data: {len(missing)}",
        flush=True,
    )
    totals = summary(layout, warehouse) if pipeline_rc == 0 else None
    if totals is None:
        print(f"demo FAILED: the pipeline exited with {pipeline_rc} (see {data_dir / 'logs' / 'pipeline.log'})")
        return 1
    if totals["events"] + totals["bad"] != stats["events"]:
        print(
            f"demo FAILED: {stats['events']} events accepted, but {totals['events']} in event_v2 "
            f"and {totals['bad']} bad rows",
            file=sys.stderr,
        )
        return 1
    if not stats[200] or missing:
        print("demo FAILED: acknowledged requests are missing from the raw data", file=sys.stderr)
        return 1
    return 0


def summary(layout: pipeline.Layout, warehouse: pipeline.LocalWarehouse) -> dict:
    """Headline numbers from the reporting objects the loader keeps in the warehouse (the same SQL on DuckDB
    and PostgreSQL)."""
    import json

    bad = 0
    for report in sorted((layout.ods / "_etl" / "runs").glob("job-*.json")):
        bad += sum(json.loads(report.read_text()).get("bad", {}).values())
    with contextlib.closing(warehouse.connect()) as con:
        schemas = {row[0] for row in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
        events = 0
        print(f"\nwarehouse: {warehouse.describe()}")
        for app in APP_IDS:
            if app not in schemas:
                print(f"  {app}: no data")
                continue

            def q(sql: str, schema: str = app) -> list:
                return con.execute(sql.replace("{s}", f'"{schema}"')).fetchall()

            count = q('SELECT COUNT(*) FROM {s}."event_v2"')[0][0]
            events += count
            users, sessions = q('SELECT COUNT(DISTINCT user_pseudo_id), COUNT(*) FROM {s}."session"')[0]
            channels = q(
                "SELECT aggregation_dim, SUM(session_count), SUM(engaged_session_count) "
                'FROM {s}."clickstream_acquisition_day_user_acquisition" '
                "WHERE aggregation_type = 'Session channel group' GROUP BY 1 ORDER BY 2 DESC LIMIT 4"
            )
            countries = q(
                'SELECT geo_country, SUM(user_count) FROM {s}."clickstream_acquisition_country_new_user" '
                "GROUP BY 1 ORDER BY 2 DESC LIMIT 4"
            )
            views = q('SELECT SUM(view_count) FROM {s}."clickstream_engagement_day_event_view"')[0][0]
            print(f"  {app}: {count} events, {users} users, {sessions} sessions, {views or 0} page/screen views")
            print("    sessions (engaged) by channel: " + ", ".join(f"{c} {n} ({e})" for c, n, e in channels))
            print("    new users by country: " + ", ".join(f"{c} {n}" for c, n in countries))
    print(f"  bad rows: {bad} (by reason in {layout.ods / 'bad_rows'})")
    return {"events": events, "bad": bad}


if __name__ == "__main__":
    sys.exit(main())
