"""S3 sink: records are durable once in the local WAL (fsync); sealed segments become gzip NDJSON
objects in any S3 API or a local folder, keyed as ingestion-contract.md §4 says.

Upload protocol, so that neither a retry nor a crash adds a duplicate object:
1. choose the key (current UTC hour + `{writer}-{segment}`), write it to `{segment}.key`, fsync;
2. put the gzip object under that key (in-process retries reuse the same key: an overwrite);
3. delete the segment and its key file.
After a crash, a segment with a key file whose object exists is only deleted; one whose object is
missing gets a fresh key in the current hour, so it is never hidden behind a processed window.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from clickstream_core import raw_record
from clickstream_core.handoff import AckStatus
from clickstream_core.objectstore import ObjectStore, open_store
from clickstream_core.settings import env, load, parse_size
from prometheus_client import Counter, Gauge, Histogram

from ..wal import Segment, WalFull, WriteAheadLog
from .base import Health, Sink, SinkContext, SinkRefused

try:
    from isal import igzip as _igzip
except ImportError:  # no wheel for this platform: plain zlib, same format
    _igzip = None

log = logging.getLogger("ingest_worker.sinks.s3")

UPLOADED_OBJECTS = Counter("worker_s3_objects_uploaded", "Raw objects written to the object store")
UPLOADED_RECORDS = Counter("worker_s3_records_uploaded", "Raw records written to the object store")
UPLOADED_BYTES = Counter("worker_s3_bytes_uploaded", "Compressed bytes written to the object store")
UPLOAD_ERRORS = Counter("worker_s3_upload_errors", "Failed upload attempts (retried)")
UPLOAD_SECONDS = Histogram("worker_s3_upload_seconds", "Time to compress and upload one segment")
SKIPPED_EXISTING = Counter(
    "worker_s3_recovered_already_uploaded", "Recovered segments whose object was already in the store"
)
UPLOAD_BACKLOG = Gauge("worker_s3_upload_backlog_segments", "Sealed segments waiting for upload")


@dataclass(frozen=True)
class S3SinkConfig:
    uri: str = env("SINK_S3_URI", "", "Destination: s3://bucket[/prefix] or file:///path (required)")
    prefix: str = env("SINK_S3_PREFIX", "", "Key prefix of raw objects; default clickstream/{project_id}/data/buffer/")
    wal_dir: str = env("WAL_DIR", "/var/lib/clickstream/wal", "Write-ahead log directory (persistent disk)")
    segment_max_bytes: int = env(
        "SINK_S3_MAX_BYTES", 30_000_000, "Roll an object at this many uncompressed bytes", parse_size
    )
    segment_max_age_s: float = env("SINK_S3_MAX_AGE_S", 300.0, "Roll an object at this age (seconds)")
    wal_max_bytes: int = env(
        "WAL_MAX_BYTES",
        4 * 1024**3,
        "Disk budget of un-uploaded segments; beyond it the worker refuses work",
        parse_size,
    )
    gzip_level: int = env(
        "SINK_S3_GZIP_LEVEL", 2, "Compression level of raw objects, 0-3 (ISA-L igzip; 3 is the smallest)"
    )
    upload_concurrency: int = env("SINK_S3_UPLOAD_CONCURRENCY", 2, "Segments uploaded at once")
    writer_id: str = env("WORKER_ID", "", "Stable writer id in object names; default: generated once per WAL")

    def problems(self):
        if not self.uri:
            yield "SINK_S3_URI is required with SINK=s3 (s3://bucket/prefix or file:///path)"
        elif not self.uri.startswith(("s3://", "s3a://", "file://", "/", ".")):
            yield f"SINK_S3_URI={self.uri!r}: use s3://bucket/prefix or file:///path"
        if not 0 <= self.gzip_level <= 3:
            yield f"SINK_S3_GZIP_LEVEL={self.gzip_level}: must be 0-3"
        if self.segment_max_bytes < 1024:
            yield "SINK_S3_MAX_BYTES must be at least 1 KiB"
        if self.segment_max_age_s <= 0:
            yield "SINK_S3_MAX_AGE_S must be positive"
        if self.upload_concurrency < 1:
            yield "SINK_S3_UPLOAD_CONCURRENCY must be at least 1"
        if self.writer_id and not all(c.isalnum() or c in "-_" for c in self.writer_id):
            yield f"WORKER_ID={self.writer_id!r}: letters, digits, - and _ only"


def encode_object(data: bytes, level: int) -> bytes:
    """The encoder: a segment is already NDJSON raw records; the object is its gzip.

    ISA-L's igzip writes standard gzip about five times faster than zlib at the same ratio
    (measured on raw records: 1.4 GB/s at level 2 vs 0.25 GB/s for zlib level 3, both 0.18), which
    on a 2-core ingestion box is CPU given back to the proxies."""
    if _igzip is not None:
        return _igzip.compress(data, compresslevel=level, mtime=0)
    return gzip.compress(data, compresslevel=(1, 2, 4, 6)[level], mtime=0)


class S3Sink(Sink):
    name = "s3"
    config_class = S3SinkConfig

    def __init__(self, config: S3SinkConfig, context: SinkContext, store: ObjectStore | None = None):
        self.config = config
        self.store = store or open_store(config.uri)
        self.prefix = config.prefix or raw_record.default_raw_prefix(context.project_id)
        self.wal = WriteAheadLog(
            config.wal_dir,
            segment_max_bytes=config.segment_max_bytes,
            segment_max_age_s=config.segment_max_age_s,
            max_pending_bytes=context.max_pending_bytes,
            max_disk_bytes=config.wal_max_bytes,
            writer_id=config.writer_id,
            ack_trace=context.ack_trace,
        )
        self._uploaders: list[asyncio.Task] = []
        self._store_ok = True
        self._store_error = ""
        self._stopping = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], context: SinkContext) -> S3Sink:
        return cls(load(S3SinkConfig, environ), context)

    async def start(self) -> None:
        await self.wal.open()
        for index in range(self.config.upload_concurrency):
            self._uploaders.append(asyncio.create_task(self._upload_loop(), name=f"s3-upload-{index}"))

    def submit(self, records: list[bytes]):
        try:
            return self.wal.append(records)
        except WalFull as exc:
            raise SinkRefused(AckStatus.FULL, str(exc)) from None

    def health(self) -> Health:
        if not self.wal.healthy:
            return Health(False, self.wal.last_error)
        if self.wal.over_budget:
            return Health(False, "WAL disk budget exhausted; object store uploads are behind")
        return Health(True, "ok" if self._store_ok else f"buffering locally: {self._store_error}")

    # ---- uploads ---------------------------------------------------------------------------

    async def _upload_loop(self) -> None:
        while True:
            segment = await self.wal.sealed.get()
            UPLOAD_BACKLOG.set(self.wal.sealed.qsize())
            await self._upload_with_retry(segment)
            self.wal.sealed.task_done()

    async def _upload_with_retry(self, segment: Segment) -> None:
        delay = 0.2
        while True:
            try:
                await self._upload(segment)
                self._store_ok = True
                return
            except Exception as exc:  # network, credentials, disk: keep the segment, retry
                UPLOAD_ERRORS.inc()
                self._store_ok = False
                self._store_error = f"{type(exc).__name__}: {exc}"
                log.warning("upload failed, will retry", extra={"segment": segment.name, "error": str(exc)})
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)

    def _read_key_sync(self, segment: Segment) -> str | None:
        try:
            return segment.key_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _write_key_sync(self, segment: Segment, key: str) -> None:
        tmp = segment.key_path.with_suffix(".key-tmp")
        with open(tmp, "w") as handle:
            handle.write(key)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, segment.key_path)

    async def _upload(self, segment: Segment) -> None:
        started = time.perf_counter()
        key = await asyncio.to_thread(self._read_key_sync, segment)
        if key is not None and segment.replayed:
            # Written by a process that died: did its put land before the crash?
            if await self.store.head(key) is not None:
                SKIPPED_EXISTING.inc()
                self.wal.forget(segment)
                return
            key = None
        if key is None:
            key = raw_record.raw_object_key(self.prefix, time.time(), segment.name)
            await asyncio.to_thread(self._write_key_sync, segment, key)
            segment.replayed = False
        data = await asyncio.to_thread(segment.path.read_bytes)
        body = await asyncio.to_thread(encode_object, data, self.config.gzip_level)
        await self.store.put(key, body, raw_record.RAW_CONTENT_TYPE)
        self.wal.forget(segment)
        UPLOADED_OBJECTS.inc()
        UPLOADED_RECORDS.inc(segment.records)
        UPLOADED_BYTES.inc(len(body))
        UPLOAD_SECONDS.observe(time.perf_counter() - started)
        log.info("object written", extra={"key": key, "records": segment.records, "bytes": len(body)})

    async def stop(self, deadline_s: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        await self.wal.close()
        try:
            await asyncio.wait_for(self.wal.sealed.join(), timeout=max(0.1, end - loop.time()))
        except TimeoutError:
            log.warning(
                "drain deadline reached; segments stay in the WAL for the next start",
                extra={"segments": self.wal.sealed.qsize()},
            )
        for task in self._uploaders:
            task.cancel()
        await asyncio.gather(*self._uploaders, return_exceptions=True)
        await self.store.close()
