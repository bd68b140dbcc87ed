"""The real Kafka broker of scripts/kafka.py works with aiokafka the way the sinks will use it."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from scripts.kafka import KafkaBroker, kafka_metadata, parse_perf_output, producer_perf_test


async def produce(bootstrap: str, topic: str, values: list[bytes], **options) -> list[int]:
    """Send every value with acks=all; the offsets the broker acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **options)
    await producer.start()
    try:
        pending = [await producer.send(topic, value, key=value) for value in values]
        return [(await ack).offset for ack in pending]
    finally:
        await producer.stop()


async def consume(consumer: AIOKafkaConsumer, count: int, timeout_s: float = 20) -> list[bytes]:
    """Exactly `count` values (fails on fewer within the timeout), then a short wait for any extra."""
    got: list[bytes] = []
    end = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < end:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            got.extend(record.value for record in records)
    extra = await consumer.getmany(timeout_ms=300)
    got.extend(record.value for records in extra.values() for record in records)
    return got


def group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


def test_broker_answers_metadata(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    meta = kafka_metadata("127.0.0.1", kafka_broker.port)
    assert meta["brokers"] == [kafka_broker.node_id]
    assert kafka_topic in meta["topics"]
    assert kafka_broker.end_offsets(kafka_topic, 1) == {0: 0}


@pytest.mark.parametrize("idempotence", [True, False])
async def test_produce_acks_all_then_consume_back_exactly(
    kafka_broker: KafkaBroker, new_kafka_topic, idempotence: bool
) -> None:
    topic = new_kafka_topic(partitions=3)
    values = [f"event-{i}".encode() for i in range(300)]
    offsets = await produce(kafka_broker.bootstrap, topic, values, enable_idempotence=idempotence, linger_ms=5)
    assert len(offsets) == 300
    assert sum(kafka_broker.end_offsets(topic, 3).values()) == 300

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got = await consume(consumer, 300)
    finally:
        await consumer.stop()
    assert sorted(got) == sorted(values)  # every record once, nothing else


async def test_group_commit_then_resume_after_reconnect(kafka_broker: KafkaBroker, new_kafka_topic) -> None:
    topic = new_kafka_topic(partitions=2)
    first, second = [f"a-{i}".encode() for i in range(50)], [f"b-{i}".encode() for i in range(30)]
    await produce(kafka_broker.bootstrap, topic, first)

    consumer = group_consumer(kafka_broker.bootstrap, topic, "sink-group")
    await consumer.start()
    try:
        assert sorted(await consume(consumer, 50)) == sorted(first)
        await consumer.commit()
    finally:
        await consumer.stop()

    await produce(kafka_broker.bootstrap, topic, second)
    again = group_consumer(kafka_broker.bootstrap, topic, "sink-group")
    await again.start()
    try:
        assert sorted(await consume(again, 30)) == sorted(second)  # resumes at the committed offsets
        committed = {tp.partition: await again.committed(tp) for tp in (TopicPartition(topic, p) for p in (0, 1))}
    finally:
        await again.stop()
    assert sum(committed.values()) == 50


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
async def test_restart_on_same_port_keeps_data_and_offsets(
    kafka_broker: KafkaBroker, new_kafka_topic, hard: bool
) -> None:
    topic = new_kafka_topic(partitions=2)
    before = [f"before-{i}".encode() for i in range(40)]
    await produce(kafka_broker.bootstrap, topic, before)
    consumer = group_consumer(kafka_broker.bootstrap, topic, "restart-group")
    await consumer.start()
    try:
        assert sorted(await consume(consumer, 40)) == sorted(before)
        await consumer.commit()
    finally:
        await consumer.stop()

    # A producer that lives through the outage, as the worker's will.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        port = kafka_broker.port
        await asyncio.to_thread(kafka_broker.restart, 1.0, hard)
        assert kafka_broker.port == port
        after = [f"after-{i}".encode() for i in range(20)]
        acks = await asyncio.wait_for(
            asyncio.gather(*[producer.send_and_wait(topic, value) for value in after]), timeout=60
        )
        assert len(acks) == 20
    finally:
        await producer.stop()

    assert sum(kafka_broker.end_offsets(topic, 2).values()) == 60
    resumed = group_consumer(kafka_broker.bootstrap, topic, "restart-group")
    await resumed.start()
    try:
        assert sorted(await consume(resumed, 20)) == sorted(after)  # committed offsets survived
    finally:
        await resumed.stop()


def test_parse_perf_output() -> None:
    text = (
        "Option --producer-props has been deprecated\n"
        "131146 records sent, 26229.2 records/sec (25.61 MB/sec), 948.9 ms avg latency, 1551.0 ms max latency.\n"
        "200000 records sent, 32441.200324 records/sec (31.68 MB/sec), 826.29 ms avg latency, 1551.00 ms max "
        "latency, 802 ms 50th, 1424 ms 95th, 1530 ms 99th, 1547 ms 99.9th.\n"
    )
    result = parse_perf_output(text)
    assert result.records == 200000
    assert result.records_per_s == pytest.approx(32441.2, rel=1e-6)
    assert (result.p50_ms, result.p95_ms, result.p99_ms, result.p999_ms) == (802, 1424, 1530, 1547)


def test_producer_perf_test_runs(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    result = producer_perf_test(kafka_broker.bootstrap, kafka_topic, num_records=5000, record_size=512)
    assert result.records == 5000
    assert result.records_per_s > 0
    assert kafka_broker.end_offsets(kafka_topic, 1) == {0: 5000}
