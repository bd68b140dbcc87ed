"""The proxy's side of the hand-off: a persistent connection to the worker that pipelines frames.

Requests that arrive in the same event-loop turn share one RECORDS frame; frames are written
without waiting for earlier acks, and each frame gets one timer. Everything is bounded: records
in flight per process, bytes per frame, and the wait for an ack (then the request gets a 503).
"""

from __future__ import annotations

import asyncio
import logging
from enum import IntEnum

from clickstream_core.handoff import (
    AckStatus,
    Kind,
    ProtocolError,
    decode_status,
    encode_records,
    open_connection,
    read_frame,
)

log = logging.getLogger("ingest_proxy.handoff")


class Outcome(IntEnum):
    DURABLE = AckStatus.DURABLE
    UNAVAILABLE = AckStatus.UNAVAILABLE
    FULL = AckStatus.FULL
    ERROR = AckStatus.ERROR
    TOO_LARGE = AckStatus.TOO_LARGE
    TIMEOUT = 100  # no ack within the deadline
    LOST = 101  # the connection broke before the ack


HEARTBEAT_TIMEOUT_S = 2.0  # the worker sends its status every 0.5 s


class HandoffClient:
    def __init__(
        self,
        address: str,
        *,
        ack_timeout_s: float,
        max_inflight: int,
        max_frame_records: int = 1024,
        max_frame_bytes: int = 4 * 1024 * 1024,
        max_buffered_bytes: int = 16 * 1024 * 1024,
    ):
        self.address = address
        self.ack_timeout_s = ack_timeout_s
        self.max_inflight = max_inflight
        self.max_frame_records = max_frame_records
        self.max_frame_bytes = max_frame_bytes
        self.max_buffered_bytes = max_buffered_bytes
        self._worker_ready = False
        self._last_status = 0.0
        self.max_record_bytes = 0  # announced by the worker for its sink; 0 = no limit
        self.inflight = 0
        self._writer: asyncio.StreamWriter | None = None
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._pending_sent: asyncio.Future | None = None
        self._flush_scheduled = False
        self._next_id = 1
        self._waiting: dict[int, tuple[list[asyncio.Future], asyncio.TimerHandle]] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def worker_ready(self) -> bool:
        """The worker said it takes work, and said so recently (a stopped worker goes silent)."""
        return self._worker_ready and self._loop.time() - self._last_status < HEARTBEAT_TIMEOUT_S

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def available(self) -> bool:
        writer = self._writer
        return (
            writer is not None
            and self.worker_ready
            and self.inflight < self.max_inflight
            and writer.transport.get_write_buffer_size() < self.max_buffered_bytes
        )

    def unavailable_reason(self) -> str:
        if self._writer is None:
            return "worker_unreachable"
        if not self.worker_ready:
            return "worker_not_ready"
        if self.inflight >= self.max_inflight:
            return "inflight_limit"
        return "handoff_backlog"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._maintain(), name="handoff-client")

    async def _maintain(self) -> None:
        delay = 0.05
        while not self._closed:
            try:
                reader, writer = await asyncio.wait_for(open_connection(self.address), timeout=2)
            except (OSError, TimeoutError) as exc:
                log.debug("worker unreachable", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self._writer = writer
            log.info("connected to worker", extra={"address": self.address})
            try:
                await self._read_acks(reader)
            except (asyncio.IncompleteReadError, ConnectionError, ProtocolError) as exc:
                if not self._closed:
                    log.warning("worker connection lost", extra={"error": str(exc)})
            finally:
                self._writer = None
                self._worker_ready = False
                writer.close()
                self._fail_all(Outcome.LOST)

    async def _read_acks(self, reader: asyncio.StreamReader) -> None:
        while True:
            kind, frame_id, payload = await read_frame(reader)
            if kind is Kind.ACK:
                entry = self._waiting.pop(frame_id, None)
                if entry is None:
                    continue  # already timed out
                futures, timer = entry
                timer.cancel()
                self._settle(futures, Outcome(payload[0]) if payload else Outcome.ERROR)
            elif kind is Kind.STATUS:
                self._worker_ready, self.max_record_bytes = decode_status(payload)
                self._last_status = self._loop.time()
            else:
                raise ProtocolError(f"unexpected frame kind {kind.name} from the worker")

    def _settle(self, futures: list[asyncio.Future], outcome: Outcome) -> None:
        self.inflight -= len(futures)
        for future in futures:
            if not future.done():
                future.set_result(outcome)

    def _expire(self, frame_id: int) -> None:
        entry = self._waiting.pop(frame_id, None)
        if entry is not None:
            self._settle(entry[0], Outcome.TIMEOUT)

    def _fail_all(self, outcome: Outcome) -> None:
        waiting, self._waiting = self._waiting, {}
        for futures, timer in waiting.values():
            timer.cancel()
            self._settle(futures, outcome)
        pending, self._pending = self._pending, []
        self._settle([future for _, future in pending], outcome)
        if self._pending_sent is not None and not self._pending_sent.done():
            self._pending_sent.set_result(False)
        self._pending_sent = None

    def abandon(self) -> None:
        """Stop waiting for the worker: every record not yet acknowledged times out now."""
        self._fail_all(Outcome.TIMEOUT)

    def submit(self, record: bytes) -> asyncio.Future:
        """Queue one record for the next frame; the future resolves with an Outcome."""
        future = self._loop.create_future()
        self._pending.append((record, future))
        self.inflight += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def sent(self) -> asyncio.Future:
        """Resolves True once the current batch is written to the worker connection."""
        if self._pending_sent is None:
            self._pending_sent = self._loop.create_future()
        return self._pending_sent

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        sent, self._pending_sent = self._pending_sent, None
        writer = self._writer
        if writer is None:
            self._settle([future for _, future in pending], Outcome.LOST)
            if sent is not None and not sent.done():
                sent.set_result(False)
            return
        start = 0
        while start < len(pending):
            end = start
            size = 0
            while end < len(pending) and end - start < self.max_frame_records:
                size += len(pending[end][0]) + 4
                end += 1
                if size >= self.max_frame_bytes:
                    break
            chunk = pending[start:end]
            frame_id = self._next_id
            self._next_id += 1
            timer = self._loop.call_later(self.ack_timeout_s, self._expire, frame_id)
            self._waiting[frame_id] = ([future for _, future in chunk], timer)
            writer.write(encode_records(frame_id, [record for record, _ in chunk]))
            start = end
        if sent is not None and not sent.done():
            sent.set_result(True)

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
