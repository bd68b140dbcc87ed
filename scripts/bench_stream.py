"""`make bench-stream`: the streaming buffers of issue 3, each against its ceiling in the same run.

1. Worker -> Kafka: wrk (1 thread, 64 connections) posting the gzip+Base64 shape of 10 SDK events
   through proxy -> worker (SINK=kafka, acks=all) -> a real Kafka broker; req/s (= raw records/s)
   and p99, against the broker's own `kafka-producer-perf-test` with the same record size and
   acks=all as the ceiling.
2. Worker -> Kinesis: the same against the kinesalite emulator, with a direct PutRecords loop
   (500 records per call, 4 calls in flight, same record size) as the ceiling. An emulator figure:
   it says nothing about AWS, where a shard takes 1,000 records/s or 1 MiB/s.
3. kinesis-s3-sink: records/s landing a backlog (from each stream) into the lake.

    python -m scripts.bench_stream [--seconds 10] [--backlog 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from clickstream_core import raw_record

from scripts import sdkgen
from scripts.bench_http import run_wrk
from scripts.stack import LocalStack, metric_value


def raw_line(body: str, target: str) -> bytes:
    """The raw record the worker would produce for this request (without the newline)."""
    return raw_record.build_line(
        body=body,
        ip="203.0.113.9",
        rid="0" * 32,
        ua="Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
        uri=target,
        path="/collect",
        platform="Android",
        app_id="shop",
        compression="gzip",
        upload_timestamp="1",
        fake_ip=None,
        arrival=raw_record.Arrival.now(),
    )[:-1]


def landed(stack: LocalStack) -> float:
    with urllib.request.urlopen(stack.lander_url + "/metrics", timeout=5) as answer:
        return metric_value(answer.read().decode(), "sink_records_written_total")


def measure_landing(stack: LocalStack, expected: int, timeout_s: float = 600) -> tuple[float, float]:
    """Start kinesis-s3-sink on a backlog of `expected` records; (records/s, seconds)."""
    stack.start_lander()
    started = time.monotonic()
    while landed(stack) < expected and time.monotonic() - started < timeout_s:
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    return landed(stack) / elapsed, elapsed


def fill_kinesis(emulators, stream: str, data: bytes, count: int) -> None:
    client = emulators.kinesis
    for start in range(0, count, 500):
        records = [{"Data": data, "PartitionKey": os.urandom(8).hex()} for _ in range(min(500, count - start))]
        client.put_records(StreamName=stream, Records=records)


async def kinesis_ceiling(endpoint: str, stream: str, data: bytes, seconds: float) -> float:
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client(
        "kinesis",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 (a local emulator takes any key)
    ) as client:
        done = 0
        end = time.monotonic() + seconds

        async def putter() -> None:
            nonlocal done
            while time.monotonic() < end:
                records = [{"Data": data, "PartitionKey": os.urandom(16).hex()} for _ in range(500)]
                await client.put_records(StreamName=stream, Records=records)
                done += 500

        started = time.monotonic()
        await asyncio.gather(*(putter() for _ in range(4)))
        return done / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_stream")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--data-dir", default=os.environ.get("BENCH_DATA_DIR", "./data/bench-stream"))
    args = parser.parse_args(argv)
    from scripts.kafka import KafkaBroker, producer_perf_test
    from scripts.kinesis import Emulators

    data_dir = Path(args.data_dir).resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    body = sdkgen.body_text(sdkgen.sample_batch(10, seed=42), gzip_base64=True)
    target = sdkgen.collect_target("shop", body, 1, gzip_base64=True)
    body_file = work / "gzip.body"
    body_file.write_text(body)
    size = len(raw_line(body, target))
    lines = []

    # 1. Kafka
    broker = KafkaBroker.isolated(data_dir / "kafka").start()
    try:
        broker.create_topic("perf", partitions=2)
        ceiling = producer_perf_test(broker.bootstrap, "perf", num_records=200_000, record_size=size)
        broker.create_topic("clickstream-raw", partitions=2)
        stack = LocalStack.isolated(data_dir / "kafka-stack", sink="kafka", kafka_bootstrap=broker.bootstrap)
        stack.start_worker()
        stack.start_proxy()
        try:
            run_wrk(stack.url, target, body_file, 2, 64)  # warm-up
            ours = run_wrk(stack.url, target, body_file, args.seconds, 64)
            with urllib.request.urlopen(stack.worker_url + "/metrics", timeout=5) as answer:
                backlog = int(metric_value(answer.read().decode(), "worker_kafka_records_delivered_total"))
            rate, took = measure_landing(stack, backlog)
        finally:
            stack.stop()
        lines.append(
            f"worker -> Kafka 4.4 (acks=all): {ours['rps']:.0f} req/s = raw records/s, p50 {ours['p50_ms']:.2f} ms, "
            f"p99 {ours['p99_ms']:.2f} ms, non-200 {ours['non2xx']}\n"
            f"  kafka-producer-perf-test, {size}-byte records, acks=all: {ceiling.records_per_s:.0f} records/s "
            f"(p99 {ceiling.p99_ms:.0f} ms); ratio {ours['rps'] / ceiling.records_per_s:.2f}\n"
            f"  kinesis-s3-sink (SOURCE=kafka) landing the {backlog} records: {rate:.0f} records/s ({took:.1f} s)"
        )
    finally:
        broker.stop()

    # 2. Kinesis (emulator)
    emulators = Emulators.isolated(log_path=data_dir / "emulators.log").start()
    try:
        data = b"x" * size
        emulators.create_stream("perf", 2)
        ceiling_rate = asyncio.run(kinesis_ceiling(emulators.kinesis_endpoint, "perf", data, args.seconds))
        emulators.create_stream("clickstream-raw", 2)
        stack = LocalStack.isolated(
            data_dir / "kinesis-stack", sink="kinesis", stream="clickstream-raw", stream_env=emulators.env()
        )
        stack.start_worker()
        stack.start_proxy()
        try:
            run_wrk(stack.url, target, body_file, 2, 64)
            ours = run_wrk(stack.url, target, body_file, args.seconds, 64)
            emulators.create_stream("backlog", 2)
            fill_kinesis(emulators, "backlog", raw_line(body, target), args.backlog)
            stack.stream = "backlog"
            rate, took = measure_landing(stack, args.backlog)
        finally:
            stack.stop()
        lines.append(
            f"worker -> Kinesis (kinesalite emulator): {ours['rps']:.0f} req/s, p50 {ours['p50_ms']:.2f} ms, "
            f"p99 {ours['p99_ms']:.2f} ms, non-200 {ours['non2xx']}\n"
            f"  direct PutRecords to the emulator (500/call, 4 in flight, {size} bytes): {ceiling_rate:.0f} records/s; "
            f"ratio {ours['rps'] / ceiling_rate:.2f}\n"
            f"  kinesis-s3-sink (SOURCE=kinesis) landing {args.backlog} records: {rate:.0f} records/s ({took:.1f} s)"
        )
    finally:
        emulators.stop()

    print(
        f"\nstreaming benchmark: {os.cpu_count()} cores, wrk -t1 -c64 -d{args.seconds:g}s, gzip+Base64 bodies of "
        f"10 SDK events (raw record {size} bytes), ack mode"
    )
    print("\n".join(lines))
    print(f"run at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
