"""`make bench-freshness`: how long after an SDK sends an event it is in the warehouse, local mode.

    python -m scripts.bench_freshness [--seconds 180] [--interval 30] [--rate 20]

Starts what `make up` starts (proxy, worker rolling raw objects every 10 s, the pipeline scheduler
running the ETL and then the loader every `--interval` seconds into the DuckDB views), sends SDK
sessions at about `--rate` events/s for `--seconds`, and polls the warehouse every second from a
reader of its own (`connect_duckdb`, the way the dashboards read) for the event ids it sent. Each
event's freshness is (first poll that sees it) - (the moment its request was answered 200).
Prints p50/p95/max and how many events never showed up. Goal (issue 5): p95 <= 60 s with the
30 s schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from scripts import pipeline, sdkgen
from scripts.stack import LocalStack, free_port

APP = "shop"


async def send(url: str, seconds: float, rate: float, sent: dict[str, float]) -> None:
    """Sessions from a pool of visitors, paced to about `rate` events/s; sent[event_id] = time of the 200."""
    visitors = [sdkgen.Visitor(APP, "shop.example.com") for _ in range(50)]
    began = time.monotonic()
    count = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        while time.monotonic() - began < seconds:
            visitor = random.choice(visitors)
            events = sdkgen.Session(visitor).play(first_visit=visitor.session_number == 0)
            for start in range(0, len(events), 5):
                batch = events[start : start + 5]
                body = sdkgen.body_text(batch)
                target = sdkgen.collect_target(APP, body, count, fake_ip=visitor.ip)
                async with session.post(url + target, data=body, headers={"User-Agent": visitor.user_agent}) as r:
                    await r.read()
                    if r.status == 200:
                        answered = time.monotonic()
                        for event in batch:
                            sent[event["event_id"]] = answered
                count += len(batch)
                # pace: `count` events should have taken count / rate seconds
                await asyncio.sleep(max(0.0, began + count / rate - time.monotonic()))


def visible_ids(layout: pipeline.Layout) -> set[str]:
    from clickstream_loader.warehouse import connect_duckdb

    con = connect_duckdb(layout.warehouse)
    try:
        rows = con.execute(f'SELECT event_id FROM "{APP}"."event_v2"').fetchall()  # noqa: S608 -- APP is a constant
        return {row[0] for row in rows}
    except Exception:  # no views yet (before the first load)
        return set()
    finally:
        con.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_freshness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--interval", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20, help="events per second sent")
    parser.add_argument("--wait", type=float, default=180, help="seconds to wait for the last events after sending")
    args = parser.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    layout = pipeline.Layout(data_dir)
    stack = LocalStack(
        data_dir=data_dir,
        port=free_port(),
        worker_http_port=free_port(),
        processes=0,
        roll_seconds=10,
        log_dir=data_dir / "logs",
    )
    stack.start()
    scheduler = pipeline.start_process(data_dir, args.interval, data_dir / "logs")
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    try:

        async def run() -> None:
            sender = asyncio.create_task(send(stack.url, args.seconds, args.rate, sent))
            deadline = None
            while True:
                await asyncio.sleep(1)
                now = time.monotonic()
                for event_id in await asyncio.to_thread(visible_ids, layout):
                    seen.setdefault(event_id, now)
                if sender.done():
                    await sender
                    deadline = deadline or now + args.wait
                    if set(sent) <= set(seen) or now > deadline:
                        return

        asyncio.run(run())
    finally:
        stack.stop()
        pipeline.stop_process(scheduler, timeout_s=120)
        shutil.rmtree(data_dir, ignore_errors=True)

    delays = sorted(seen[e] - t for e, t in sent.items() if e in seen)
    missing = len(set(sent) - set(seen))
    if not delays:
        print("RESULT no event reached the warehouse", file=sys.stderr)
        return 1
    print(
        f"sent {len(sent):,} events over {args.seconds:g} s (~{args.rate:g}/s); schedule every {args.interval:g} s, "
        f"raw objects every 10 s"
    )
    print(
        f"RESULT freshness p50 {percentile(delays, 50):.1f} s, p95 {percentile(delays, 95):.1f} s, "
        f"max {delays[-1]:.1f} s; not visible after {args.wait:g} s: {missing} (goal p95 <= 60 s)"
    )
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
