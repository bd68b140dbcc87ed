"""Kafka source: a consumer group member; checkpoints are the group's committed offsets, and a
batch's intent travels in the commit's metadata (so a self-hosted Kafka needs nothing else, no
Kafka Connect and no extra store).

Several instances share the topic's partitions through the group. On a rebalance, a revoked
partition's in-flight landing finishes before the partition is released, and its unlanded batch is
dropped: the next owner reads those records again from the committed offset.
"""

from __future__ import annotations

import asyncio
import logging
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
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=config.brokers,
            group_id=config.group,
            client_id="clickstream-kinesis-s3-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            security_protocol=config.security_protocol,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        self.lander = lander_factory(CommittedOffsets(self.consumer, config.topic))
        self.batches: dict[int, Batch] = {}
        self._landing: dict[int, asyncio.Task] = {}
        self._stop = asyncio.Event()
        self._healthy = False
        self._last_error = "not started"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], lander_factory, limits: Limits) -> KafkaSource:
        return cls(load(KafkaSourceConfig, environ), lander_factory, limits)

    def _new_batch(self, partition: int) -> Batch:
        return Batch(str(partition), f"{self.config.topic}-{partition}")

    async def acquire(self, partitions: list[int]) -> None:
        for partition in partitions:
            position = await self.lander.resume_position(str(partition))
            tp = TopicPartition(self.config.topic, partition)
            if position is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, int(position) + 1)
            self.batches[partition] = self._new_batch(partition)
        log.info("partitions assigned", extra={"partitions": partitions})

    async def release(self, partitions: list[int]) -> None:
        # Finish a landing in progress while we still own the partition; drop the rest.
        pending = [self._landing[p] for p in partitions if p in self._landing]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for partition in partitions:
            self.batches.pop(partition, None)
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
        finally:
            self._landing.pop(partition, None)

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
                await asyncio.sleep(1)
        self._healthy = True
        try:
            while not self._stop.is_set():
                try:
                    fetched = await self.consumer.getmany(timeout_ms=200, max_records=10_000)
                except KafkaError as exc:
                    self._healthy, self._last_error = False, f"fetch failed: {exc!r}"
                    await asyncio.sleep(0.5)
                    continue
                self._healthy = True
                for tp, messages in fetched.items():
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
        return (True, "ok") if self._healthy else (False, self._last_error)
