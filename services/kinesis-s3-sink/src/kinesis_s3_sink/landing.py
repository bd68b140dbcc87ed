"""Batches of one partition become gzip NDJSON objects: intent, put, commit (see checkpoint.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import orjson
from clickstream_core import raw_record
from clickstream_core.objectstore import ObjectStore
from prometheus_client import Counter, Histogram

from .checkpoint import CheckpointStore, Intent

try:
    from isal import igzip as _gzip
except ImportError:  # no wheel for this platform: same format, slower
    import gzip as _gzip

log = logging.getLogger("kinesis_s3_sink.landing")

RECORDS_IN = Counter("sink_records_in", "Records read from the stream")
RECORDS_OUT = Counter("sink_records_written", "Records written to the object store")
INVALID = Counter("sink_invalid_records", "Records that were not one JSON object (written to the invalid prefix)")
OBJECTS = Counter("sink_objects_written", "Objects written to the object store", ["kind"])
RECOVERED = Counter("sink_intents_recovered", "Left-over intents found on taking a partition, by outcome", ["outcome"])
LAND_SECONDS = Histogram("sink_land_seconds", "Time to compress, put and commit one batch")


@dataclass(frozen=True, slots=True)
class Limits:
    max_records: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_age_s: float = 300.0


@dataclass
class Batch:
    partition: str
    name_prefix: str
    first: str | None = None
    last: str | None = None
    lines: list[bytes] = field(default_factory=list)
    invalid: list[bytes] = field(default_factory=list)
    size: int = 0
    opened_at: float = field(default_factory=time.monotonic)

    def add(self, position: str, data: bytes) -> None:
        if self.first is None:
            self.first = position
            self.opened_at = time.monotonic()
        self.last = position
        self.size += len(data) + 1
        if data.endswith(b"\n"):
            data = data[:-1]
        if data[:1] == b"{" and b"\n" not in data:
            self.lines.append(data)  # the usual case: a raw record as our worker wrote it
            return
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            self.lines.append(orjson.dumps(parsed))  # one line, whatever its producer did
        else:
            self.invalid.append(data.replace(b"\n", b" "))

    @property
    def count(self) -> int:
        return len(self.lines) + len(self.invalid)

    def due(self, limits: Limits, now: float | None = None) -> bool:
        if self.first is None:
            return False
        now = time.monotonic() if now is None else now
        return (
            self.count >= limits.max_records
            or self.size >= limits.max_bytes
            or now - self.opened_at >= limits.max_age_s
        )

    @property
    def name(self) -> str:
        return f"{self.name_prefix}-{self.first}"


class Lander:
    def __init__(
        self,
        store: ObjectStore,
        checkpoints: CheckpointStore,
        prefix: str,
        invalid_prefix: str,
        gzip_level: int = 2,
    ):
        self.store = store
        self.checkpoints = checkpoints
        self.prefix = prefix
        self.invalid_prefix = invalid_prefix
        self.gzip_level = gzip_level

    async def resume_position(self, partition: str) -> str | None:
        """Where to read from (exclusive) when taking `partition`; settles a left-over intent."""
        checkpoint = await self.checkpoints.load(partition)
        intent = checkpoint.intent
        if intent is None:
            return checkpoint.position
        if await self.store.head(intent.key) is not None:
            RECOVERED.labels("already_written").inc()
            await self.checkpoints.commit(partition, intent.last)
            log.info("left-over batch was written; moved past it", extra={"partition": partition, "key": intent.key})
            return intent.last
        RECOVERED.labels("rewritten").inc()
        log.info("left-over batch was not written; reading it again", extra={"partition": partition})
        return checkpoint.position

    def _encode(self, lines: list[bytes]) -> bytes:
        return _gzip.compress(b"\n".join(lines) + b"\n", self.gzip_level, mtime=0)

    async def land(self, batch: Batch) -> None:
        if batch.first is None:
            return
        started = time.perf_counter()
        now = time.time()
        key = raw_record.raw_object_key(self.prefix, now, batch.name)
        # Kept, not dropped: records that are not one JSON object go under the invalid prefix.
        invalid_key = raw_record.raw_object_key(self.invalid_prefix, now, batch.name)
        # The intent names the object written last, so its existence proves the whole batch landed.
        intent_key = key if batch.lines else invalid_key
        await self.checkpoints.save_intent(batch.partition, Intent(intent_key, batch.first, batch.last))
        if batch.invalid:
            body = await asyncio.to_thread(self._encode, batch.invalid)
            await self.store.put(invalid_key, body, raw_record.RAW_CONTENT_TYPE)
            OBJECTS.labels("invalid").inc()
            INVALID.inc(len(batch.invalid))
        if batch.lines:
            body = await asyncio.to_thread(self._encode, batch.lines)
            await self.store.put(key, body, raw_record.RAW_CONTENT_TYPE)
            OBJECTS.labels("raw").inc()
            RECORDS_OUT.inc(len(batch.lines))
        await self.checkpoints.commit(batch.partition, batch.last)
        LAND_SECONDS.observe(time.perf_counter() - started)
        log.info(
            "batch landed",
            extra={
                "partition": batch.partition,
                "key": key,
                "records": len(batch.lines),
                "invalid": len(batch.invalid),
            },
        )
