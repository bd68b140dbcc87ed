"""A local write-ahead log of raw-record lines with group commit.

Frames accumulate while the previous batch is being written; each batch is written and
fdatasync'ed at once, then every frame in it is acknowledged at once (group commit). The write
and sync run on the event-loop thread on purpose: while the loop sits in fdatasync (the GIL is
released), new frames wait in the socket buffers and form the next batch, and there is no
thread hand-off per commit (measured: about a quarter less worker CPU than a writer thread). A
stalled disk stalls the loop, so the worker's heartbeat stops and proxies answer 503: correct,
since nothing could be acknowledged anyway.

The log is a series of segment files; a segment is sealed when it reaches its size or age limit
and handed to the sink's uploader, which deletes it once the object store holds it.

Files in the WAL directory:
  writer-id                the stable id of this writer (names its objects)
  {name}.wal               the segment being written (at most one)
  {name}.sealed            complete segments waiting for upload
  {name}.key               the object key chosen for a sealed segment's upload
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("ingest_worker.wal")

FSYNC_SECONDS = Histogram(
    "worker_wal_fsync_seconds",
    "Time to write and fsync one group commit",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
COMMIT_RECORDS = Histogram(
    "worker_wal_commit_records",
    "Records per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
)
COMMITTED_RECORDS = Counter("worker_wal_committed_records", "Records written and fsynced to the WAL")
COMMIT_ERRORS = Counter("worker_wal_commit_errors", "WAL writes or fsyncs that failed")
REPLAYED_SEGMENTS = Counter("worker_wal_replayed_segments", "Segments found on disk at start and replayed")
REPLAYED_RECORDS = Counter("worker_wal_replayed_records", "Records in segments replayed at start")
TRUNCATED_BYTES = Counter(
    "worker_wal_truncated_bytes", "Bytes of a torn last line cut at recovery (never acknowledged)"
)
SEALED_SEGMENTS = Counter("worker_wal_sealed_segments", "Segments sealed for upload")
WAL_BYTES = Gauge("worker_wal_bytes", "Bytes in WAL segments not yet uploaded", multiprocess_mode="livesum")


class WalFull(Exception):
    pass


@dataclass(slots=True)
class Segment:
    name: str
    path: Path  # the .sealed file
    size: int
    records: int
    replayed: bool = False

    @property
    def key_path(self) -> Path:
        return self.path.with_suffix(".key")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    def __init__(
        self,
        directory: str | Path,
        *,
        segment_max_bytes: int,
        segment_max_age_s: float,
        max_pending_bytes: int,
        max_disk_bytes: int,
        writer_id: str = "",
        ack_trace: str = "",
    ):
        self.dir = Path(directory)
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        self.max_pending_bytes = max_pending_bytes
        self.max_disk_bytes = max_disk_bytes
        self.writer_id = writer_id
        self.sealed: asyncio.Queue[Segment] = asyncio.Queue()
        self.disk_bytes = 0  # all segments on disk, sealed and active
        self.healthy = True
        self.over_budget = False
        self.last_error = ""
        self.commit_no = 0
        self._buffer = bytearray()
        self._buffer_records = 0
        self._waiters: list[asyncio.Future[int]] = []
        self._pending_bytes = 0  # buffered plus being written
        self._wake = asyncio.Event()
        self._closing = False
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-io")
        self._fd = -1
        self._active_name = ""
        self._active_size = 0
        self._active_records = 0
        self._active_started = 0.0
        self._last_seq = 0
        self._trace_fd = os.open(ack_trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if ack_trace else -1
        self._task: asyncio.Task | None = None

    # ---- start-up and recovery -------------------------------------------------------------

    def _load_writer_id(self) -> str:
        id_file = self.dir / "writer-id"
        if self.writer_id:
            return self.writer_id
        if id_file.exists():
            return id_file.read_text().strip()
        writer_id = "w" + os.urandom(5).hex()
        id_file.write_text(writer_id + "\n")
        _fsync_dir(self.dir)
        return writer_id

    def _recover_sync(self) -> list[Segment]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer_id = self._load_writer_id()
        found: list[Segment] = []
        for path in sorted(self.dir.glob("*.wal")):
            data = path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):
                # A torn write: its frame was never fsynced, so never acknowledged.
                TRUNCATED_BYTES.inc(len(data) - cut)
                with open(path, "r+b") as handle:
                    handle.truncate(cut)
                    os.fsync(handle.fileno())
            if cut == 0:
                path.unlink()
                continue
            sealed = path.with_suffix(".sealed")
            os.replace(path, sealed)
            found.append(Segment(path.stem, sealed, cut, data.count(b"\n", 0, cut), replayed=True))
        known = {segment.path for segment in found}
        for path in sorted(self.dir.glob("*.sealed")):
            if path in known:
                continue
            size = path.stat().st_size
            with open(path, "rb") as handle:
                records = sum(chunk.count(b"\n") for chunk in iter(lambda h=handle: h.read(1 << 20), b""))
            found.append(Segment(path.stem, path, size, records, replayed=True))
        for key_file in self.dir.glob("*.key"):
            if not key_file.with_suffix(".sealed").exists():
                key_file.unlink()
        _fsync_dir(self.dir)
        found.sort(key=lambda segment: segment.name)
        for segment in found:
            seq = segment.name.rsplit("-", 1)[-1]
            if seq.isdigit():
                self._last_seq = max(self._last_seq, int(seq))
        return found

    async def open(self) -> list[Segment]:
        """Recover segments left by an earlier run (returned, and queued for upload), then start."""
        loop = asyncio.get_running_loop()
        recovered = await loop.run_in_executor(self._io, self._recover_sync)
        for segment in recovered:
            REPLAYED_SEGMENTS.inc()
            REPLAYED_RECORDS.inc(segment.records)
            self.disk_bytes += segment.size
            self.sealed.put_nowait(segment)
        WAL_BYTES.set(self.disk_bytes)
        if recovered:
            log.info(
                "recovered WAL segments",
                extra={"segments": len(recovered), "records": sum(s.records for s in recovered)},
            )
        if self._trace_fd >= 0:
            os.write(self._trace_fd, f"S {os.getpid()}\n".encode())
        self._task = asyncio.create_task(self._run(), name="wal-commit")
        self._roll_timer = asyncio.create_task(self._age_check(), name="wal-age")
        return recovered

    # ---- the hot path ------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def append(self, records: list[bytes]) -> asyncio.Future[int]:
        """Buffer records; the future resolves with the commit number once they are fsynced."""
        if self._closing:
            raise WalFull("draining")
        size = 0
        for record in records:
            size += len(record)
        if self._pending_bytes + size > self.max_pending_bytes:
            raise WalFull("too many bytes waiting for fsync")
        if self.over_budget or self.disk_bytes + self._pending_bytes + size > self.max_disk_bytes:
            # Stay refused until uploads free a tenth of the budget, so readiness does not flap.
            self.over_budget = True
            raise WalFull("WAL disk budget exhausted (uploads are behind)")
        for record in records:
            self._buffer += record
        self._buffer_records += len(records)
        self._pending_bytes += size
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        return future

    def trace_ack(self, commit_no: int, frame_id: int) -> None:
        if self._trace_fd >= 0:
            os.write(self._trace_fd, f"A {commit_no} {frame_id}\n".encode())

    # ---- the commit loop ------------------------------------------------------------------------

    def _next_name(self) -> str:
        seq = max(self._last_seq + 1, time.time_ns() // 1000)
        self._last_seq = seq
        return f"{self.writer_id}-{seq}"

    def _open_active_sync(self) -> None:
        self._active_name = self._next_name()
        path = self.dir / f"{self._active_name}.wal"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        _fsync_dir(self.dir)
        self._active_size = 0
        self._active_records = 0
        self._active_started = time.monotonic()

    def _write_sync(self, data: bytearray, records: int) -> None:
        if self._fd < 0:
            self._open_active_sync()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fdatasync(self._fd)
        self._active_size += len(data)
        self._active_records += records

    def _seal_sync(self) -> Segment | None:
        if self._fd < 0:
            return None
        os.close(self._fd)
        self._fd = -1
        wal_path = self.dir / f"{self._active_name}.wal"
        if self._active_size == 0:
            wal_path.unlink(missing_ok=True)
            return None
        sealed = wal_path.with_suffix(".sealed")
        os.replace(wal_path, sealed)
        _fsync_dir(self.dir)
        return Segment(self._active_name, sealed, self._active_size, self._active_records)

    def _roll_due(self) -> bool:
        if self._fd < 0 or self._active_size == 0:
            return False
        return (
            self._active_size >= self.segment_max_bytes
            or time.monotonic() - self._active_started >= self.segment_max_age_s
        )

    async def _seal(self) -> None:
        loop = asyncio.get_running_loop()
        segment = await loop.run_in_executor(self._io, self._seal_sync)
        if segment is not None:
            SEALED_SEGMENTS.inc()
            self.sealed.put_nowait(segment)

    async def _age_check(self) -> None:
        interval = max(0.05, min(1.0, self.segment_max_age_s / 10))
        while True:
            await asyncio.sleep(interval)
            if self._roll_due():
                self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._buffer:
                data, waiters, records = self._buffer, self._waiters, self._buffer_records
                self._buffer, self._waiters, self._buffer_records = bytearray(), [], 0
                started = time.perf_counter()
                try:
                    self._write_sync(data, records)  # on the loop thread: see the module docstring
                except OSError as exc:
                    COMMIT_ERRORS.inc()
                    self.healthy = False
                    self.last_error = f"WAL write failed: {exc}"
                    log.error("WAL write failed", extra={"error": str(exc)})
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    # The segment's tail is uncertain after a failed fsync; never append to it again.
                    try:
                        await self._seal()
                    except OSError:
                        self._fd = -1
                    self._pending_bytes -= len(data)
                    await asyncio.sleep(0.5)
                    continue
                self.healthy = True
                self.commit_no += 1
                FSYNC_SECONDS.observe(time.perf_counter() - started)
                COMMIT_RECORDS.observe(records)
                COMMITTED_RECORDS.inc(records)
                if self._trace_fd >= 0:
                    os.write(self._trace_fd, f"F {self.commit_no}\n".encode())
                self._pending_bytes -= len(data)
                self.disk_bytes += len(data)
                WAL_BYTES.set(self.disk_bytes)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(self.commit_no)
            if self._roll_due() or (self._closing and not self._buffer):
                await self._seal()
            if self._closing and not self._buffer:
                return
            if self._buffer:
                self._wake.set()

    def forget(self, segment: Segment) -> None:
        """The segment is safely in the object store: drop it from disk."""
        segment.key_path.unlink(missing_ok=True)
        segment.path.unlink(missing_ok=True)
        self.disk_bytes -= segment.size
        WAL_BYTES.set(self.disk_bytes)
        if self.over_budget and self.disk_bytes < 0.9 * self.max_disk_bytes:
            self.over_budget = False

    async def close(self) -> None:
        """Commit what is buffered, seal the active segment and stop the commit loop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._roll_timer.cancel()
        self._io.shutdown(wait=True)
        if self._trace_fd >= 0:
            os.close(self._trace_fd)
            self._trace_fd = -1
