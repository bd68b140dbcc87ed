"""The proxy <-> worker wire format: length-prefixed frames over a Unix or TCP stream.

Every frame starts with a fixed header `kind:u8 frame_id:u64 length:u32` followed by `length` bytes.

- RECORDS (proxy -> worker): payload is a run of `len:u32 bytes` items, one encoded raw record each.
- ACK (worker -> proxy): payload is one status byte for the RECORDS frame with the same id.
- STATUS (worker -> proxy): one byte, 1 when the worker and its sink take work, then `u32` the
  largest record the sink can store (0 = no limit). Sent every 0.5 s: it is also the heartbeat.

The proxy pipelines many RECORDS frames on one connection; the worker acknowledges each frame once
its records are durable (or refuses it with a status), in any order.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable
from enum import IntEnum

HEADER = struct.Struct("!BQI")
ITEM = struct.Struct("!I")
MAX_FRAME_BYTES = 64 * 1024 * 1024


class Kind(IntEnum):
    RECORDS = 1
    ACK = 2
    STATUS = 3


class AckStatus(IntEnum):
    DURABLE = 0
    UNAVAILABLE = 1  # sink down or worker draining: retry later
    FULL = 2  # buffer limit reached: retry later
    ERROR = 3  # the worker failed on this frame
    TOO_LARGE = 4  # a record exceeds what the sink can store (e.g. Kinesis' 1 MiB): the proxy answers 413


class ProtocolError(Exception):
    pass


def encode_records(frame_id: int, records: Iterable[bytes]) -> bytes:
    parts = []
    size = 0
    pack = ITEM.pack
    for record in records:
        parts.append(pack(len(record)))
        parts.append(record)
        size += 4 + len(record)
    return HEADER.pack(Kind.RECORDS, frame_id, size) + b"".join(parts)


def decode_records(payload: bytes) -> list[bytes]:
    records = []
    view = memoryview(payload)
    offset = 0
    end = len(payload)
    unpack = ITEM.unpack_from
    while offset < end:
        if offset + 4 > end:
            raise ProtocolError("truncated record length")
        (size,) = unpack(view, offset)
        offset += 4
        if offset + size > end:
            raise ProtocolError("truncated record")
        records.append(bytes(view[offset : offset + size]))
        offset += size
    return records


def encode_ack(frame_id: int, status: AckStatus) -> bytes:
    return HEADER.pack(Kind.ACK, frame_id, 1) + bytes((status,))


def encode_status(ready: bool, max_record_bytes: int = 0) -> bytes:
    """Readiness, and the largest record the sink stores (0 = no limit) so the proxy can answer
    413 for one oversized request instead of the worker refusing a whole frame."""
    return HEADER.pack(Kind.STATUS, 0, 5) + (b"\x01" if ready else b"\x00") + ITEM.pack(max_record_bytes)


def decode_status(payload: bytes) -> tuple[bool, int]:
    ready = payload[:1] == b"\x01"
    max_record_bytes = ITEM.unpack_from(payload, 1)[0] if len(payload) >= 5 else 0
    return ready, max_record_bytes


async def read_frame(reader: asyncio.StreamReader) -> tuple[Kind, int, bytes]:
    """Read one frame; raises IncompleteReadError at a clean end of stream."""
    header = await reader.readexactly(HEADER.size)
    kind, frame_id, length = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        kind = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame kind {kind}") from None
    payload = await reader.readexactly(length) if length else b""
    return kind, frame_id, payload


def parse_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """`unix:/path/to.sock` or `tcp:host:port` (a bare path means unix)."""
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad TCP hand-off address {address!r}, expected tcp:HOST:PORT")
        return "tcp", (host, int(port))
    path = address[5:] if address.startswith("unix:") else address
    if not path:
        raise ValueError("empty Unix socket path for the hand-off address")
    return "unix", path


async def open_connection(address: str, limit: int = 1 << 20):
    family, target = parse_address(address)
    if family == "tcp":
        host, port = target
        return await asyncio.open_connection(host, port, limit=limit)
    return await asyncio.open_unix_connection(target, limit=limit)


async def start_server(handler, address: str, limit: int = 1 << 20):
    family, target = parse_address(address)
    if family == "tcp":
        host, port = target
        return await asyncio.start_server(handler, host, port, limit=limit)
    return await asyncio.start_unix_server(handler, target, limit=limit)
