"""What every source's checkpoint store provides, and the batch/intent model they share.

A partition (Kinesis shard, Kafka topic-partition) is written in batches. Before a batch's object
is put, the store records an *intent* (the object key and the batch's last position) next to the
checkpoint; after the put, the checkpoint moves to the last position and the intent is cleared.
Whoever takes the partition over (after a crash, a rebalance or a lease steal) first looks at a
left-over intent: if its object exists, the checkpoint simply moves past it; if not, the records
are read again from the checkpoint and written under a fresh key in the current hour. Object names
derive from the partition and the batch's first position, so nothing is written twice and
nothing acknowledged by the stream is skipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Intent:
    key: str
    first: str  # positions of the batch's first and last records (Kinesis sequence numbers, Kafka offsets)
    last: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: str | None  # last record durably written; None = start of what is retained
    intent: Intent | None = None


class CheckpointStore(ABC):
    @abstractmethod
    async def load(self, partition: str) -> Checkpoint: ...

    @abstractmethod
    async def save_intent(self, partition: str, intent: Intent) -> None: ...

    @abstractmethod
    async def commit(self, partition: str, position: str) -> None:
        """Move the checkpoint to `position` (inclusive) and clear any intent."""
