"""Kinesis Data Streams sink: each raw record is one Kinesis record; a frame is acknowledged once
every record of it is in the stream (PutRecords success).

Records of many frames share PutRecords calls within the service limits (500 records, 5 MiB per
call, 1 MiB per record including its partition key); several calls run at once. A partial
failure retries only the failed entries, with exponential backoff on throughput errors, until
`SINK_KINESIS_RETRY_DEADLINE_S`; then the frame fails (the proxy has long answered 503, and the
SDK resends: at least once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import orjson
from clickstream_core.handoff import AckStatus
from clickstream_core.settings import env, load, one_of
from prometheus_client import Counter, Gauge, Histogram

from .base import Health, Sink, SinkContext, SinkRefused

log = logging.getLogger("ingest_worker.sinks.kinesis")

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_BYTES_PER_RECORD = 1024 * 1024  # data plus partition key
PARTITION_KEY_BYTES = 32  # UTF-8 bytes; every key is cut to this, so records up to the limit below always fit

PUT_CALLS = Counter("worker_kinesis_put_calls", "PutRecords calls, by outcome", ["outcome"])
PUT_RECORDS = Counter("worker_kinesis_records", "Kinesis record puts, by outcome", ["outcome"])
CALL_SECONDS = Histogram(
    "worker_kinesis_put_seconds",
    "PutRecords call duration",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUEUED = Gauge("worker_kinesis_queued_records", "Records waiting for a PutRecords call")


@dataclass(frozen=True)
class KinesisSinkConfig:
    stream: str = env("SINK_KINESIS_STREAM", "", "Stream name (required)")
    partition_key: str = env(
        "SINK_KINESIS_PARTITION_KEY",
        "random",
        "random (spreads load evenly over shards), ip or appId (keeps a client's records on one shard; parses "
        "each record)",
        one_of("random", "ip", "appId"),
    )
    concurrency: int = env("SINK_KINESIS_CONCURRENCY", 4, "PutRecords calls in flight at once")
    linger_ms: int = env("SINK_KINESIS_LINGER_MS", 0, "Wait this long for more records before a call (0 = none)")
    retry_deadline_s: float = env(
        "SINK_KINESIS_RETRY_DEADLINE_S", 30.0, "Give up retrying a record's throttled put after this long"
    )
    probe_interval_s: float = env("SINK_KINESIS_PROBE_INTERVAL_S", 5.0, "How often the stream's status is checked")

    def problems(self):
        if not self.stream:
            yield "SINK_KINESIS_STREAM is required with SINK=kinesis"
        if not 1 <= self.concurrency <= 64:
            yield "SINK_KINESIS_CONCURRENCY must be 1-64"


@dataclass(slots=True)
class _Frame:
    future: asyncio.Future
    remaining: int
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class _Entry:
    data: bytes
    key: str
    frame: _Frame
    first_try: float
    size: int  # as counted in pending_bytes
    attempts: int = 0


class KinesisSink(Sink):
    name = "kinesis"
    config_class = KinesisSinkConfig
    max_record_bytes = MAX_BYTES_PER_RECORD - PARTITION_KEY_BYTES

    def __init__(self, config: KinesisSinkConfig, context: SinkContext):
        self.config = config
        self.max_pending_bytes = context.max_pending_bytes
        self.pending_bytes = 0
        self._queue: deque[_Entry] = deque()
        self._inflight = 0
        self._backing_off = 0  # failed batches waiting out their backoff before going back in the queue
        self._wake = asyncio.Event()
        self._client = None
        self._stack: AsyncExitStack | None = None
        self._stream_ok = False
        self._last_error = "not connected yet"
        self._tasks: set[asyncio.Task] = set()
        self._background: list[asyncio.Task] = []
        self._stopping = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], context: SinkContext) -> KinesisSink:
        return cls(load(KinesisSinkConfig, environ), context)

    async def start(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._stack = AsyncExitStack()
        config = AioConfig(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=3,
            read_timeout=10,
            max_pool_connections=self.config.concurrency + 2,
        )
        self._client = await self._stack.enter_async_context(
            get_session().create_client("kinesis", region_name=region, config=config)
        )
        self._background = [
            asyncio.create_task(self._probe(), name="kinesis-probe"),
            asyncio.create_task(self._dispatch(), name="kinesis-dispatch"),
        ]

    async def _probe(self) -> None:
        while not self._stopping:
            try:
                answer = await self._client.describe_stream_summary(StreamName=self.config.stream)
                status = answer["StreamDescriptionSummary"]["StreamStatus"]
                ok = status in ("ACTIVE", "UPDATING")
                self._last_error = "" if ok else f"stream {self.config.stream} is {status}"
            except Exception as exc:  # credentials, network, missing stream
                ok = False
                self._last_error = f"cannot describe stream {self.config.stream}: {exc!r}"
            if ok != self._stream_ok:
                log.log(logging.INFO if ok else logging.WARNING, "kinesis stream usable" if ok else self._last_error)
            self._stream_ok = ok
            await asyncio.sleep(self.config.probe_interval_s if ok else 1.0)

    def health(self) -> Health:
        if not self._stream_ok:
            return Health(False, self._last_error or "Kinesis stream not usable")
        if self.pending_bytes >= self.max_pending_bytes:
            return Health(False, "too many bytes waiting for PutRecords")
        return Health(True)

    def _key_for(self, record: bytes) -> str:
        mode = self.config.partition_key
        if mode != "random":
            value = orjson.loads(record).get(mode)
            # Kinesis counts the key's UTF-8 bytes: cut there, not at 32 characters (whole characters only).
            key = str(value or "").encode()[:PARTITION_KEY_BYTES].decode(errors="ignore")
            if key:
                return key
        return os.urandom(PARTITION_KEY_BYTES // 2).hex()

    def submit(self, records: list[bytes]):
        if self._client is None or self._stopping:
            raise SinkRefused(AckStatus.UNAVAILABLE, "Kinesis sink not running")
        size = sum(len(record) for record in records)
        if self.pending_bytes + size > self.max_pending_bytes:
            raise SinkRefused(AckStatus.FULL, "too many bytes waiting for PutRecords")
        if any(len(record) > self.max_record_bytes for record in records):
            raise SinkRefused(AckStatus.TOO_LARGE, "record over Kinesis' 1 MiB limit")
        future = asyncio.get_running_loop().create_future()
        frame = _Frame(future, len(records))
        now = time.monotonic()
        for record in records:
            data = record[:-1] if record.endswith(b"\n") else record
            self._queue.append(_Entry(data, self._key_for(record), frame, now, len(record)))
        self.pending_bytes += size
        QUEUED.set(len(self._queue))
        self._wake.set()
        return future

    def _take_batch(self) -> list[_Entry]:
        batch: list[_Entry] = []
        size = 0
        while self._queue and len(batch) < MAX_RECORDS_PER_CALL:
            entry = self._queue[0]
            entry_size = len(entry.data) + PARTITION_KEY_BYTES  # a key's bytes, at most
            if batch and size + entry_size > MAX_BYTES_PER_CALL:
                break
            batch.append(self._queue.popleft())
            size += entry_size
        return batch

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.config.linger_ms and len(self._queue) < MAX_RECORDS_PER_CALL:
                await asyncio.sleep(self.config.linger_ms / 1000)
            while self._queue and self._inflight < self.config.concurrency:
                batch = self._take_batch()
                self._inflight += 1
                task = asyncio.create_task(self._put(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            QUEUED.set(len(self._queue))

    def _settle(self, entry: _Entry, error: BaseException | None = None) -> None:
        frame = entry.frame
        if frame.future.done():
            return
        if error is not None:
            frame.future.set_exception(error)
            return
        frame.remaining -= 1
        if frame.remaining == 0:
            frame.future.set_result(0)

    async def _put(self, batch: list[_Entry]) -> None:
        retry: list[_Entry] = []
        started = time.perf_counter()
        try:
            answer = await self._client.put_records(
                StreamName=self.config.stream,
                Records=[{"Data": entry.data, "PartitionKey": entry.key} for entry in batch],
            )
            PUT_CALLS.labels("ok" if not answer.get("FailedRecordCount") else "partial").inc()
            for entry, result in zip(batch, answer["Records"], strict=True):
                if "ErrorCode" in result:
                    retry.append(entry)
                else:
                    self._done(entry)
        except Exception as exc:  # the whole call failed (after botocore's own retries)
            PUT_CALLS.labels("error").inc()
            self._last_error = f"PutRecords failed: {exc!r}"
            retry = batch
        finally:
            CALL_SECONDS.observe(time.perf_counter() - started)
            self._inflight -= 1
        if retry:
            PUT_RECORDS.labels("retried").inc(len(retry))
            await self._requeue(retry)
        self._wake.set()

    def _done(self, entry: _Entry) -> None:
        PUT_RECORDS.labels("ok").inc()
        self.pending_bytes -= entry.size
        self._settle(entry)

    async def _requeue(self, entries: list[_Entry]) -> None:
        now = time.monotonic()
        keep = []
        for entry in entries:
            entry.attempts += 1
            if now - entry.first_try > self.config.retry_deadline_s:
                PUT_RECORDS.labels("failed").inc()
                self.pending_bytes -= entry.size
                self._settle(entry, SinkRefused(AckStatus.ERROR, "Kinesis kept refusing the record"))
            else:
                keep.append(entry)
        if keep:
            attempts = max(entry.attempts for entry in keep)
            self._backing_off += 1  # neither queued nor in flight meanwhile: stop() must wait for them
            try:
                await asyncio.sleep(min(2.0, 0.05 * 2**attempts) * (0.5 + random.random()))
            finally:
                self._queue.extendleft(reversed(keep))
                self._backing_off -= 1

    async def stop(self, deadline_s: float) -> None:
        self._stopping = True
        end = time.monotonic() + deadline_s
        while (self._queue or self._inflight or self._backing_off) and time.monotonic() < end:
            self._wake.set()
            await asyncio.sleep(0.05)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.1, end - time.monotonic()))
        if self._stack is not None:
            await self._stack.aclose()
