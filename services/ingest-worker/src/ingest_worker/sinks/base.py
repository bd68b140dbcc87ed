"""What every sink provides: config (from env, documented defaults), an encoder, a driver that
acknowledges durable records, and a health check.

The worker hands a sink whole frames of encoded raw records (one JSON line each). `submit` returns
an awaitable that resolves once those records are durable (fsync'd WAL, broker ack, PutRecords
success) or raises `SinkRefused` with the reason the proxy turns into a 503.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from clickstream_core.handoff import AckStatus


class SinkRefused(Exception):
    def __init__(self, status: AckStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Health:
    ready: bool
    reason: str = "ok"


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What the worker gives every sink besides its own config."""

    project_id: str
    max_pending_bytes: int
    ack_trace: str = ""


class Sink(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type]
    max_record_bytes: int = 0  # the largest encoded raw record the destination stores; 0 = no limit

    @classmethod
    @abstractmethod
    def from_env(cls, environ: Mapping[str, str], context: SinkContext) -> Sink: ...

    @abstractmethod
    async def start(self) -> None:
        """Recover local state and start background work; called once before any submit."""

    @abstractmethod
    def submit(self, records: list[bytes]) -> Awaitable[int]:
        """Accept one frame of records; raise SinkRefused at once when it cannot take them."""

    @abstractmethod
    def health(self) -> Health: ...

    @abstractmethod
    async def stop(self, deadline_s: float) -> None:
        """Make everything accepted durable at the destination, within the deadline when possible."""
