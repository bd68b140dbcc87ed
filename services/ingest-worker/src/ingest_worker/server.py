"""The worker's two faces: the hand-off listener for proxies, and HTTP health/readiness/metrics."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from clickstream_core import metrics
from clickstream_core.handoff import (
    AckStatus,
    Kind,
    ProtocolError,
    decode_records,
    encode_ack,
    encode_status,
    read_frame,
    start_server,
)
from prometheus_client import Counter, Gauge

from .sinks.base import Sink, SinkRefused

log = logging.getLogger("ingest_worker.server")

FRAMES = Counter("worker_frames", "Record frames received, by outcome", ["outcome"])
RECORDS = Counter("worker_records", "Records received, by outcome", ["outcome"])
CONNECTIONS = Gauge("worker_proxy_connections", "Open proxy connections")
READY = Gauge("worker_ready", "1 when the worker and its sink take work")

STATUS_INTERVAL_S = 0.5  # proxies treat 4 missed heartbeats as not ready


class HandoffServer:
    def __init__(self, sink: Sink, address: str):
        self.sink = sink
        self.address = address
        self.draining = False
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._status_task: asyncio.Task | None = None

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        health = self.sink.health()
        return health.ready, health.reason

    async def start(self) -> None:
        self._server = await start_server(self._serve, self.address)
        self._status_task = asyncio.create_task(self._broadcast_status())
        log.info("hand-off listening", extra={"address": self.address})

    async def _broadcast_status(self) -> None:
        # Sent on every tick, not only on change: it is also the heartbeat by which a proxy
        # notices a worker that is alive on the socket but not making progress (e.g. stopped).
        while True:
            ready, _ = self.ready()
            READY.set(1 if ready else 0)
            frame = encode_status(ready, self.sink.max_record_bytes)
            for writer in list(self._writers):
                writer.write(frame)
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        CONNECTIONS.inc()
        self._writers.add(writer)
        writer.write(encode_status(self.ready()[0], self.sink.max_record_bytes))
        sink = self.sink
        frames_accepted = FRAMES.labels("accepted")
        records_accepted = RECORDS.labels("accepted")
        trace = getattr(getattr(sink, "wal", None), "trace_ack", None)

        loop = asyncio.get_running_loop()
        acks: list[bytes] = []

        def send_acks() -> None:
            # A group commit resolves many frames at once: their acks leave in one write.
            if not writer.is_closing():
                writer.write(b"".join(acks))
            acks.clear()

        def acknowledge(frame_id: int, future: asyncio.Future) -> None:
            error = None if future.cancelled() else future.exception()
            if future.cancelled() or error is not None:
                FRAMES.labels("error").inc()
                status = error.status if isinstance(error, SinkRefused) else AckStatus.ERROR
            else:
                if trace is not None:
                    trace(future.result(), frame_id)
                status = AckStatus.DURABLE
            if not acks:
                loop.call_soon(send_acks)
            acks.append(encode_ack(frame_id, status))

        try:
            while True:
                kind, frame_id, payload = await read_frame(reader)
                if kind is not Kind.RECORDS:
                    raise ProtocolError(f"unexpected frame kind {kind.name} from a proxy")
                records = decode_records(payload)
                if self.draining:
                    FRAMES.labels("draining").inc()
                    RECORDS.labels("refused").inc(len(records))
                    writer.write(encode_ack(frame_id, AckStatus.UNAVAILABLE))
                    continue
                try:
                    future = sink.submit(records)
                except SinkRefused as refused:
                    FRAMES.labels("refused").inc()
                    RECORDS.labels("refused").inc(len(records))
                    writer.write(encode_ack(frame_id, refused.status))
                    continue
                frames_accepted.inc()
                records_accepted.inc(len(records))
                future.add_done_callback(lambda f, fid=frame_id: acknowledge(fid, f))
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as exc:
            log.warning("closing hand-off connection", extra={"error": str(exc)})
        finally:
            CONNECTIONS.dec()
            self._writers.discard(writer)
            writer.close()

    async def stop_accepting(self) -> None:
        """Refuse new frames (proxies answer 503) and tell every proxy at once."""
        self.draining = True
        frame = encode_status(False, self.sink.max_record_bytes)
        for writer in list(self._writers):
            writer.write(frame)
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
        for writer in list(self._writers):
            writer.close()


def http_app(server: HandoffServer) -> web.Application:
    return metrics.service_app(server.ready)
