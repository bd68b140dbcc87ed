"""Kafka source: a consumer group member; checkpoints are the group's committed offsets, and a
batch's intent travels in the commit's metadata (so a self-hosted Kafka needs nothing else, no
Kafka Connect and no extra store).

Several instances share the topic's partitions through the group. On a rebalance, no new landing
starts on a revoked partition, one in flight finishes before the partition is released, and the
unlanded batch is dropped: the next owner reads those records again from the committed offset.

A landing that fails (object store or Kafka unavailable, membership lost) costs no data and does not
stop the sink: the checkpoint has not moved past the batch, so the partition is settled again the
way a new owner would settle it (its intent tells whether the object was written) and the records
after the checkpoint are read again; until then the sink reports not ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from clickstream_core.settings import env, load, parse_list
from prometheus_client import Gauge

from ..checkpoint import Checkpoint, CheckpointStore, Intent
from ..landing import RECORDS_IN, Batch, Limits
from .base import Source

log = logging.getLogger("kinesis_s3_sink.kafka")

LAG = Gauge("sink_kafka_lag_records", "Records between the committed position and the partition end", ["partition"])
OFFSET_WIDTH = 20  # positions are zero-padded so object names sort by offset
RETRY_S = 1.0  # pause before settling a partition again after a failed landing


@dataclass(frozen=True)
class KafkaSourceConfig:
    brokers: list[str] = env("SOURCE_KAFKA_BROKERS", [], "Bootstrap servers, comma-separated (required)", parse_list)
    topic: str = env("SOURCE_KAFKA_TOPIC", "clickstream-raw", "Topic of raw records")
    group: str = env("SOURCE_KAFKA_GROUP", "clickstream-s3-sink", "Consumer group shared by every instance")
    security_protocol: str = env("SOURCE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "PLAINTEXT, SSL, SASL_SSL")

    def problems(self):
        if not self.brokers:
            yield "SOURCE_KAFKA_BROKERS is required with SOURCE=kafka"


def _position(offset: int) -> str:
    return f"{offset:0{OFFSET_WIDTH}d}"


class CommittedOffsets(CheckpointStore):
    """Checkpoints in the group's committed offsets (Kafka's next-to-read = our last + 1)."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str):
        self.consumer = consumer
        self.topic = topic

    def _tp(self, partition: str) -> TopicPartition:
        return TopicPartition(self.topic, int(partition))

    async def load(self, partition: str) -> Checkpoint:
        tp = self._tp(partition)
        # aiokafka's committed() drops the metadata; the coordinator call is what it uses inside.
        committed = (await self.consumer._coordinator.fetch_committed_offsets([tp])).get(tp)
        if committed is None or committed.offset < 0:
            return Checkpoint(None)
        intent = None
        if committed.metadata:
            data = orjson.loads(committed.metadata)
            intent = Intent(data["key"], data["first"], data["last"])
        position = _position(committed.offset - 1) if committed.offset > 0 else None
        return Checkpoint(position, intent)

    async def save_intent(self, partition: str, intent: Intent) -> None:
        metadata = orjson.dumps({"key": intent.key, "first": intent.first, "last": intent.last}).decode()
        await self.consumer.commit({self._tp(partition): OffsetAndMetadata(int(intent.first), metadata)})

    async def commit(self, partition: str, position: str) -> None:
        await self.consumer.commit({self._tp(partition): OffsetAndMetadata(int(position) + 1, "")})


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource):
        self.source = source

    async def on_partitions_revoked(self, revoked):
        await self.source.release([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned):
        await self.source.acquire([tp.partition for tp in assigned])


class KafkaSource(Source):
    name = "kafka"
    config_class = KafkaSourceConfig

    def __init__(self, config: KafkaSourceConfig, lander_factory, limits: Limits):
        self.config = config
        self.limits = limits
        self.consumer = self._new_consumer()
        self._offsets = CommittedOffsets(self.consumer, config.topic)
        self.lander = lander_factory(self._offsets)
        self.batches: dict[int, Batch] = {}
        self._landing: dict[int, asyncio.Task] = {}
        self._unsettled: set[int] = set()  # owned partitions to settle again (after a failed landing)
        self._retry_at = 0.0
        self._generation = 0  # bumped by every rebalance, which repositions every owned partition
        self._stop = asyncio.Event()
        self._healthy = False
        self._last_error = "not started"

    def _new_consumer(self) -> AIOKafkaConsumer:
        config = self.config
        return AIOKafkaConsumer(
            bootstrap_servers=config.brokers,
            group_id=config.group,
            client_id="clickstream-kinesis-s3-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            security_protocol=config.security_protocol,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], lander_factory, limits: Limits) -> KafkaSource:
        return cls(load(KafkaSourceConfig, environ), lander_factory, limits)

    def _new_batch(self, partition: int) -> Batch:
        return Batch(str(partition), f"{self.config.topic}-{partition}")

    async def acquire(self, partitions: list[int]) -> None:
        self._generation += 1
        await self._settle(partitions)
        log.info("partitions assigned", extra={"partitions": partitions})

    async def _settle(self, partitions) -> None:
        """Position each partition after its checkpoint (settling a left-over intent) with a fresh batch."""
        for partition in partitions:
            self.batches.pop(partition, None)
            try:
                position = await self.lander.resume_position(str(partition))
                tp = TopicPartition(self.config.topic, partition)
                if position is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, int(position) + 1)
            except Exception as exc:
                self._failed(partition, "cannot settle the partition", exc)
                continue
            self._unsettled.discard(partition)
            self.batches[partition] = self._new_batch(partition)

    def _failed(self, partition: int, what: str, exc: Exception) -> None:
        # Nothing is lost: the checkpoint is still before the records of the dropped batch.
        self.batches.pop(partition, None)
        self._unsettled.add(partition)
        self._retry_at = time.monotonic() + RETRY_S
        self._last_error = f"{what}: {exc!r}"
        log.warning(f"{what}; reading again from the checkpoint", extra={"partition": partition, "error": repr(exc)})

    async def release(self, partitions: list[int]) -> None:
        # Nothing new starts on a revoked partition (its commit would come after the partition went to
        # another member); a landing in progress finishes while we still own it; the rest is dropped.
        self._generation += 1
        for partition in partitions:
            self.batches.pop(partition, None)
            self._unsettled.discard(partition)
        pending = [self._landing[p] for p in partitions if p in self._landing]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        log.info("partitions revoked", extra={"partitions": partitions})

    async def _land(self, partition: int) -> None:
        batch = self.batches.get(partition)
        if batch is None or batch.first is None:
            return
        self.batches[partition] = self._new_batch(partition)
        task = asyncio.create_task(self.lander.land(batch))
        self._landing[partition] = task
        try:
            await task
        except Exception as exc:
            self._failed(partition, "landing failed", exc)
        finally:
            self._landing.pop(partition, None)

    async def _settle_again(self) -> None:
        owned = {tp.partition for tp in self.consumer.assignment()}
        self._unsettled &= owned  # a partition that went elsewhere is settled by its new owner
        await self._settle(sorted(self._unsettled))

    async def run(self) -> None:
        topic = self.config.topic
        while not self._stop.is_set():
            try:
                self.consumer.subscribe([topic], listener=_Rebalance(self))
                await self.consumer.start()
                break
            except (KafkaError, OSError) as exc:
                self._last_error = f"cannot reach Kafka: {exc!r}"
                log.warning("kafka unreachable; retrying", extra={"error": repr(exc)})
                await self.consumer.stop()
                # a stopped consumer cannot start again
                self.consumer = self._offsets.consumer = self._new_consumer()
                await asyncio.sleep(1)
        self._healthy = True
        try:
            while not self._stop.is_set():
                if self._unsettled and time.monotonic() >= self._retry_at:
                    await self._settle_again()
                try:
                    fetched = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
                except KafkaError as exc:
                    self._healthy, self._last_error = False, f"fetch failed: {exc!r}"
                    await asyncio.sleep(0.5)
                    continue
                self._healthy = True
                generation = self._generation
                for tp, messages in fetched.items():
                    if self._generation != generation:
                        # A rebalance while a batch was landing repositioned every partition at its
                        # checkpoint: the rest of these records come again.
                        break
                    batch = self.batches.get(tp.partition)
                    if batch is None:
                        continue
                    for message in messages:
                        batch.add(_position(message.offset), message.value)
                    RECORDS_IN.inc(len(messages))
                    if batch.due(self.limits):
                        await self._land(tp.partition)
                for partition, batch in list(self.batches.items()):
                    if batch.due(self.limits):
                        await self._land(partition)
                    tp = TopicPartition(topic, partition)
                    highwater = self.consumer.highwater(tp)
                    if highwater is not None and batch.last is not None:
                        LAG.labels(str(partition)).set(max(0, highwater - int(batch.last) - 1 + batch.count))
            for partition in list(self.batches):
                await self._land(partition)
        finally:
            await self.consumer.stop()

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> tuple[bool, str]:
        return (True, "ok") if self._healthy and not self._unsettled else (False, self._last_error)
