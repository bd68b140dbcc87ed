"""kill -9 the worker under real load: nothing acknowledged is lost, nothing is written twice,
the WAL is replayed, and no acknowledgement ever preceded the fsync that made it durable."""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.request

import aiohttp
import pytest

from scripts import sdkgen
from scripts.stack import LocalStack
from tests.support import metric_value, read_lake

CONCURRENCY = 256


def check_trace(text: str) -> int:
    """Every `A commit frame` line must come after the `F commit` line of the same worker run."""
    fsynced: set[int] = set()
    acks = 0
    runs = 0
    for line in text.splitlines():
        kind, *rest = line.split()
        if kind == "S":
            fsynced = set()
            runs += 1
        elif kind == "F":
            fsynced.add(int(rest[0]))
        elif kind == "A":
            assert int(rest[0]) in fsynced, f"ack before fsync: {line!r}"
            acks += 1
    assert runs == 2
    return acks


async def load(stack: LocalStack, stop: asyncio.Event, outcomes: dict, inflight: list[int]) -> None:
    body = sdkgen.body_text(sdkgen.sample_batch(10, seed=3), gzip_base64=True)
    target = sdkgen.collect_target("shop", body, 1, gzip_base64=True)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while not stop.is_set():
                inflight[0] += 1
                try:
                    async with session.post(stack.url + target, data=body) as answer:
                        await answer.read()
                        outcomes[answer.status].append(answer.headers.get("X-Request-ID"))
                        if answer.status != 200:
                            await asyncio.sleep(0.05)
                except (aiohttp.ClientError, TimeoutError):
                    outcomes["error"].append(None)
                    await asyncio.sleep(0.05)
                finally:
                    inflight[0] -= 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))


@pytest.mark.slow
def test_kill_9_worker_under_load_loses_nothing_acknowledged(tmp_path):
    trace = tmp_path / "ack-trace"
    stack = LocalStack.isolated(
        tmp_path,
        roll_seconds=0.5,
        worker_env={"WORKER_ACK_TRACE": str(trace)},
    )
    stack.start()
    outcomes: dict = collections.defaultdict(list)
    inflight = [0]
    observed_inflight = []

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(load(stack, stop, outcomes, inflight))
        await asyncio.sleep(2.0)
        # Kill at a moment with at least CONCURRENCY-ish requests outstanding.
        for _ in range(100):
            if inflight[0] >= 200:
                break
            await asyncio.sleep(0.01)
        observed_inflight.append(inflight[0])
        stack.kill_worker()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.start_worker)
        await asyncio.sleep(2.0)
        stop.set()
        await runner

    try:
        asyncio.run(scenario())
        with urllib.request.urlopen(stack.worker_url + "/metrics", timeout=5) as answer:
            worker_metrics = answer.read().decode()
    finally:
        stack.stop()

    assert observed_inflight[0] >= 200, f"only {observed_inflight[0]} requests in flight at the kill"
    acked = outcomes[200]
    assert len(acked) > 1000, "the load never got going"
    assert outcomes[503], "no 503 while the worker was down"
    assert metric_value(worker_metrics, "worker_wal_replayed_segments_total") > 0
    assert metric_value(worker_metrics, "worker_wal_replayed_records_total") > 0

    records = read_lake(stack.lake)
    counts = collections.Counter(record["rid"] for record in records)
    duplicated = [rid for rid, count in counts.items() if count > 1]
    assert not duplicated, f"{len(duplicated)} records written twice"
    missing = set(acked) - set(counts)
    assert not missing, f"{len(missing)} acknowledged requests lost"
    acks_traced = check_trace(trace.read_text())
    assert acks_traced > 0
    print(
        f"acked={len(acked)} 503={len(outcomes[503])} errors={len(outcomes['error'])} "
        f"inflight_at_kill={observed_inflight[0]} records={len(records)} traced_acks={acks_traced} "
        f"t={time.strftime('%X')}"
    )
