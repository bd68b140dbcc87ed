"""The Kafka path end to end: ingest-worker's Kafka sink -> a real broker -> kinesis-s3-sink -> the lake.

Every test accounts by `rid`: a request answered 200 has its record in the lake exactly once, and no
record is ever there twice. The lake is also checked against the topic itself: per partition, the
objects' names (`{topic}-{partition}-{first offset}`) and record counts tile the partition's offsets
from 0 to its end without a gap or an overlap.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from clickstream_core import raw_record
from clickstream_core.handoff import AckStatus
from clickstream_core.objectstore import LocalStore
from ingest_worker.sinks.base import SinkContext, SinkRefused
from ingest_worker.sinks.kafka import KafkaSink
from kinesis_s3_sink.landing import Lander, Limits
from kinesis_s3_sink.sources.kafka import KafkaSource

from scripts import sdkgen
from scripts.kafka import KafkaBroker
from scripts.stack import BIN, LocalStack, _wait_http, free_port, terminate
from tests.support import metric_value, wait_for, wait_for_rids

CONCURRENCY = 256
KEY = re.compile(
    r"clickstream/default/data/buffer/year=\d{4}/month=\d{2}/day=\d{2}/hour=\d{2}/"
    r"(?P<topic>.+)-(?P<partition>\d+)-(?P<offset>\d{20})\.gz"
)


# --- helpers -------------------------------------------------------------------------------------------------------


def raw_line(n: int, size: int = 0) -> bytes:
    """One raw record as the proxy encodes it (with its trailing newline)."""
    body = sdkgen.body_text(sdkgen.sample_batch(2, seed=n))
    if size:
        body = (body + " " * size)[:size]
    target = sdkgen.collect_target("shop", body, n)
    return raw_record.build_line(
        body=body,
        ip="127.0.0.1",
        rid=raw_record.new_request_id(),
        ua="test",
        uri=target,
        path="/collect",
        platform="Web",
        app_id="shop",
        compression=None,
        upload_timestamp=None,
        fake_ip=None,
        arrival=raw_record.Arrival.now(),
    )


async def consume_all(bootstrap: str, topic: str, count: int, timeout_s: float = 20) -> list[bytes]:
    """Every message of `topic` from the beginning (at least `count`, then a short wait for extras)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got: list[bytes] = []
        end = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < end:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                got.extend(m.value for m in messages)
        for messages in (await consumer.getmany(timeout_ms=300)).values():
            got.extend(m.value for m in messages)
        return got
    finally:
        await consumer.stop()


def new_sink(broker: KafkaBroker, topic: str, **env: str) -> KafkaSink:
    environ = {"SINK_KAFKA_BROKERS": broker.bootstrap, "SINK_KAFKA_TOPIC": topic, **env}
    return KafkaSink.from_env(environ, SinkContext(project_id="default", max_pending_bytes=64 << 20))


async def until(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def lake_objects(lake: Path, topic: str) -> dict[int, list[tuple[int, str, list[dict]]]]:
    """Objects by partition: (first offset, key, records), sorted by offset; every key has the contract's shape."""
    by_partition: dict[int, list] = collections.defaultdict(list)
    for path in sorted(lake.rglob("*.gz")):
        key = path.relative_to(lake).as_posix()
        match = KEY.fullmatch(key)
        assert match, f"object key not of the contract's shape: {key}"
        assert match["topic"] == topic, key
        records = raw_record.read_object(path.read_bytes())
        by_partition[int(match["partition"])].append((int(match["offset"]), key, records))
    for objects in by_partition.values():
        objects.sort(key=lambda item: item[0])
    return by_partition


def check_lake(lake: Path, topic: str, end_offsets: dict[int, int]) -> list[dict]:
    """The objects tile every partition's offsets exactly; no rid twice. Returns every record."""
    by_partition = lake_objects(lake, topic)
    assert set(by_partition) <= set(end_offsets), (sorted(by_partition), end_offsets)
    for partition, end in end_offsets.items():
        expected = 0
        for offset, key, records in by_partition.get(partition, []):
            assert offset == expected, f"partition {partition}: {key} starts at {offset}, expected {expected}"
            assert records, f"empty object {key}"
            expected += len(records)
        assert expected == end, f"partition {partition}: the lake holds offsets 0..{expected}, the topic ends at {end}"
    records = [r for objects in by_partition.values() for _, _, rs in objects for r in rs]
    counts = collections.Counter(r["rid"] for r in records)
    twice = [rid for rid, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} rids in the lake more than once, e.g. {twice[:3]}"
    return records


def wait_landed(stack: LocalStack, broker: KafkaBroker, topic: str, partitions: int, timeout_s: float = 40):
    """Until the lake holds as many records as the topic; then check_lake."""
    end_offsets = broker.end_offsets(topic, partitions)
    total = sum(end_offsets.values())

    def landed() -> bool:
        by_partition = lake_objects(stack.lake, topic)
        return sum(len(rs) for objects in by_partition.values() for _, _, rs in objects) >= total

    wait_for(landed, timeout_s, 0.2, f"{total} records of {topic} in the lake")
    return check_lake(stack.lake, topic, end_offsets)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def metrics_of(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        return answer.read().decode()


class Load:
    """CONCURRENCY clients posting SDK bodies as fast as the stack answers; outcomes by status, with rids."""

    def __init__(self, url: str, concurrency: int = CONCURRENCY, bodies: int = 16):
        self.url = url
        self.concurrency = concurrency
        self.targets = []
        for n in range(bodies):
            body = sdkgen.body_text(sdkgen.sample_batch(10, seed=n), gzip_base64=True)
            self.targets.append((sdkgen.collect_target("shop", body, n + 1, gzip_base64=True), body))
        self.outcomes: dict = collections.defaultdict(list)
        self.retry_after: list[str | None] = []
        self.inflight = 0
        self.stop = asyncio.Event()

    def acked(self) -> set[str]:
        return set(self.outcomes[200])

    async def wait_inflight(self, at_least: int = 200, timeout_s: float = 5) -> int:
        end = time.monotonic() + timeout_s
        while self.inflight < at_least and time.monotonic() < end:
            await asyncio.sleep(0.005)
        return self.inflight

    async def run(self, total: int | None = None) -> None:
        """Until `stop` is set, or until `total` requests were answered."""
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=15)
        sent = [0]
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def client(index: int) -> None:
                n = index
                while not self.stop.is_set() and (total is None or sent[0] < total):
                    sent[0] += 1
                    target, body = self.targets[n % len(self.targets)]
                    n += 1
                    self.inflight += 1
                    try:
                        async with session.post(self.url + target, data=body) as answer:
                            await answer.read()
                            self.outcomes[answer.status].append(answer.headers.get("X-Request-ID"))
                            if answer.status == 503:
                                self.retry_after.append(answer.headers.get("Retry-After"))
                            if answer.status != 200:
                                await asyncio.sleep(0.1)
                    except (aiohttp.ClientError, TimeoutError):
                        self.outcomes["error"].append(None)
                        await asyncio.sleep(0.1)
                    finally:
                        self.inflight -= 1

            await asyncio.gather(*(client(i) for i in range(self.concurrency)))

    def summary(self) -> str:
        return " ".join(f"{status}={len(rids)}" for status, rids in sorted(self.outcomes.items(), key=str))


def kafka_stack(tmp_path: Path, broker: KafkaBroker, topic: str, **lander_env: str) -> LocalStack:
    """A stack with SINK=kafka on `topic`; kinesis-s3-sink in a consumer group of its own (`s3-sink-{topic}`)."""
    env = {"SOURCE_KAFKA_GROUP": f"s3-sink-{topic}", **lander_env}
    return LocalStack.isolated(tmp_path, sink="kafka", kafka_bootstrap=broker.bootstrap, topic=topic, lander_env=env)


def stack_logs(stack: LocalStack) -> str:
    if stack.log_dir is None:
        return ""
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(stack.log_dir.glob("*")))


def play(
    stack: LocalStack,
    broker: KafkaBroker,
    topic: str,
    partitions: int,
    scenario,
    load: Load,
    timeout_s: float = 30,
    cleanup=lambda: None,
) -> list[dict]:
    """Run a fault scenario on the started stack and return what landed once every acknowledged request is in
    the lake; the stack's logs are printed if anything fails, and the stack is stopped (then `cleanup`) anyway."""
    try:
        asyncio.run(scenario())
        wait_for_rids(stack.lake, load.acked(), timeout_s=timeout_s)
        return wait_landed(stack, broker, topic, partitions)
    except BaseException:
        print(stack_logs(stack))
        raise
    finally:
        stack.stop()
        cleanup()


def assert_none_lost(load: Load, landed: list[dict]) -> None:
    missing = load.acked() - {r["rid"] for r in landed}
    assert not missing, f"{len(missing)} acknowledged requests lost"


# --- the sink in-process against the real broker -------------------------------------------------------------------


async def test_sink_acknowledges_a_frame_only_once_the_broker_has_it(kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=2)
    sink = new_sink(kafka_broker, topic, SINK_KAFKA_PROBE_INTERVAL_S="0.2")
    assert not sink.health().ready  # nothing connected yet
    await sink.start()
    try:
        await until(lambda: sink.health().ready, 20, "the sink to become ready")
        frames = [[raw_line(f * 100 + i) for i in range(1 + f % 7)] for f in range(20)]
        futures = [sink.submit(frame) for frame in frames]
        assert await asyncio.gather(*futures) == [0] * len(frames)
        sent = [record for frame in frames for record in frame]
        # acknowledged = on the broker: the log-end offsets already count every record
        assert sum(kafka_broker.end_offsets(topic, 2).values()) == len(sent)
        got = await consume_all(kafka_broker.bootstrap, topic, len(sent))
        # one message per raw record: the JSON object, without the NDJSON newline
        assert sorted(got) == sorted(record[:-1] for record in sent)
        assert all(not value.endswith(b"\n") and json.loads(value)["rid"] for value in got)

        # A frame submitted while the broker answers nothing stays unacknowledged until it does.
        kafka_broker.pause()
        try:
            held = [raw_line(5000 + i) for i in range(3)]
            future = sink.submit(held)
            await asyncio.sleep(1.5)
            assert not future.done(), "acknowledged while the broker was frozen"
        finally:
            kafka_broker.resume()
        assert await asyncio.wait_for(future, 15) == 0
        assert sum(kafka_broker.end_offsets(topic, 2).values()) == len(sent) + len(held)
    finally:
        await sink.stop(5)


async def test_oversized_records_are_refused_as_too_large(kafka_broker: KafkaBroker, new_kafka_topic):
    # The topic stores at most 20 KB per message; the sink is told 50 KB.
    topic = new_kafka_topic(partitions=1, config={"max.message.bytes": "20000"})
    sink = new_sink(kafka_broker, topic, SINK_KAFKA_MAX_RECORD_BYTES="50000")
    assert sink.max_record_bytes == 50000  # announced to the proxy, which answers 413 beyond
    await sink.start()
    try:
        await until(lambda: sink.health().ready, 20, "the sink to become ready")
        # Over the sink's own limit: refused at once, nothing sent.
        with pytest.raises(SinkRefused) as refused:
            sink.submit([raw_line(1), raw_line(2, size=60_000)])
        assert refused.value.status is AckStatus.TOO_LARGE
        # Within the sink's limit but over the topic's: the broker refuses it, the frame fails as TOO_LARGE.
        with pytest.raises(SinkRefused) as refused:
            await asyncio.wait_for(sink.submit([raw_line(3, size=30_000)]), 15)
        assert refused.value.status is AckStatus.TOO_LARGE
        assert sink.pending_bytes == 0
        # and the sink still works
        assert await asyncio.wait_for(sink.submit([raw_line(4)]), 15) == 0
        assert kafka_broker.end_offsets(topic, 1) == {0: 1}
    finally:
        await sink.stop(5)


async def test_readiness_follows_the_broker(kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=1)
    sink = new_sink(kafka_broker, topic, SINK_KAFKA_PROBE_INTERVAL_S="0.2")
    await sink.start()
    try:
        await until(lambda: sink.health().ready, 20, "the sink to become ready")
        await asyncio.to_thread(kafka_broker.stop)
        await until(lambda: not sink.health().ready, 10, "readiness to turn false with the broker stopped")
        assert "Kafka" in sink.health().reason
        await asyncio.to_thread(kafka_broker.start)
        await until(lambda: sink.health().ready, 30, "readiness to come back with the broker")
        assert await asyncio.wait_for(sink.submit([raw_line(1)]), 15) == 0
    finally:
        kafka_broker.start()  # no-op when running
        await sink.stop(5)


# --- kinesis-s3-sink's Kafka source in-process, with an object store the test controls -------------------------------


class ControlledStore(LocalStore):
    """A local lake whose puts can be held (the n-th put waits for `gates[n]`) or fail (`failures` next puts)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.gates: list[asyncio.Event] = []
        self.entered: list[str] = []
        self.failures = 0

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        n = len(self.entered)
        self.entered.append(key)
        if n < len(self.gates):
            await self.gates[n].wait()
        if self.failures:
            self.failures -= 1
            raise OSError("object store unavailable")
        await super().put(key, data, content_type)


def new_source(broker: KafkaBroker, topic: str, group: str, store: ControlledStore, max_age_s: float) -> KafkaSource:
    def lander_factory(checkpoints) -> Lander:
        return Lander(store, checkpoints, "clickstream/default/data/buffer/", "clickstream/default/data/invalid/")

    environ = {"SOURCE_KAFKA_BROKERS": broker.bootstrap, "SOURCE_KAFKA_TOPIC": topic, "SOURCE_KAFKA_GROUP": group}
    return KafkaSource.from_env(environ, lander_factory, Limits(max_age_s=max_age_s))


async def produce(broker: KafkaBroker, topic: str, per_partition: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(topic, raw_line(n)[:-1], partition=partition)
            for partition, count in per_partition.items()
            for n in range(count)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def lake_total(root: Path, topic: str, total: int, task: asyncio.Task, timeout_s: float = 30) -> None:
    def landed() -> bool:
        if task.done():
            task.result()  # the source died: raise its error here
        objects = lake_objects(root, topic)
        return sum(len(rs) for o in objects.values() for _, _, rs in o) >= total

    await until(landed, timeout_s, f"{total} records in the lake")


async def test_source_survives_a_failing_object_store(tmp_path, kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=2)
    store = ControlledStore(tmp_path)
    store.failures = 3  # the first landings fail: the records must be read again and land once, later
    source = new_source(kafka_broker, topic, f"g-{topic}", store, max_age_s=0.3)
    await produce(kafka_broker, topic, {0: 40, 1: 30})
    task = asyncio.create_task(source.run())
    try:
        await until(lambda: len(store.entered) >= 3 or task.done(), 20, "three failed puts")
        assert not task.done(), f"the source died: {task.exception()!r}"
        assert not source.health()[0]  # not ready while its landings fail
        await lake_total(tmp_path, topic, 70, task)
        await produce(kafka_broker, topic, {0: 5, 1: 7})
        await lake_total(tmp_path, topic, 82, task)
        assert source.health() == (True, "ok")
    finally:
        source.stop()
        await asyncio.wait_for(task, 30)
    check_lake(tmp_path, topic, kafka_broker.end_offsets(topic, 2))


async def test_source_started_while_the_broker_is_down_lands_once_it_is_back(
    tmp_path, kafka_broker: KafkaBroker, new_kafka_topic
):
    topic = new_kafka_topic(partitions=1)
    await produce(kafka_broker, topic, {0: 25})
    source = new_source(kafka_broker, topic, f"g-{topic}", ControlledStore(tmp_path), max_age_s=0.3)
    await asyncio.to_thread(kafka_broker.stop)
    task = asyncio.create_task(source.run())
    try:
        await asyncio.sleep(2.5)  # a few failed attempts to reach the cluster
        assert not task.done(), f"the source died: {task.exception()!r}"
        assert not source.health()[0]
        await asyncio.to_thread(kafka_broker.start)
        await lake_total(tmp_path, topic, 25, task)
    finally:
        await asyncio.to_thread(kafka_broker.start)  # no-op when running
        source.stop()
        await asyncio.wait_for(task, 30)
    check_lake(tmp_path, topic, kafka_broker.end_offsets(topic, 1))


async def test_source_starts_no_landing_on_a_partition_being_revoked(
    tmp_path, kafka_broker: KafkaBroker, new_kafka_topic
):
    """A rebalance while a landing is held: the revoked partitions' other batch must not start landing (its
    commit would come after the partition went to another member)."""
    topic = new_kafka_topic(partitions=2)
    group = f"g-{topic}"
    store = ControlledStore(tmp_path)
    store.gates = [asyncio.Event(), asyncio.Event()]
    await produce(kafka_broker, topic, {0: 40, 1: 40})
    source = new_source(kafka_broker, topic, group, store, max_age_s=0.3)
    revoking, assigned = asyncio.Event(), asyncio.Event()
    release, acquire = source.release, source.acquire

    async def spy_release(partitions):
        if partitions:
            revoking.set()
        await release(partitions)

    async def spy_acquire(partitions):
        await acquire(partitions)
        if revoking.is_set():
            assigned.set()

    source.release, source.acquire = spy_release, spy_acquire
    task = asyncio.create_task(source.run())
    other = None
    try:
        await until(lambda: len(store.entered) == 1, 20, "the first landing")
        held = int(KEY.fullmatch(store.entered[0])["partition"])
        # Round robin gives the first member id (sorted) partition 0: the other member takes the partition
        # that was not held, so that this source loses it in the rebalance.
        client_id = "zzz-other" if held == 0 else "aaa-other"
        other = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,  # a member that only holds a partition for a while, committing nothing
        )
        joining = asyncio.create_task(other.start())  # returns once the group has formed again
        await asyncio.wait_for(revoking.wait(), 20)
        store.gates[0].set()  # the held landing finishes while the partitions are being revoked
        await asyncio.wait_for(assigned.wait(), 20)
        await joining
        assert {tp.partition for tp in source.consumer.assignment()} == {held}
        store.gates[1].set()
        await asyncio.sleep(1)
        assert not task.done(), f"the source died: {task.exception()!r}"
        partitions = [int(KEY.fullmatch(key)["partition"]) for key in store.entered]
        assert partitions[0] == held and set(partitions) == {held}, f"landed a partition it lost: {store.entered}"
        await other.stop()  # this source takes both partitions back and lands everything
        other = None
        await lake_total(tmp_path, topic, 80, task)
    finally:
        for gate in store.gates:
            gate.set()
        if other is not None:
            await other.stop()
        source.stop()
        await asyncio.wait_for(task, 30)
    check_lake(tmp_path, topic, kafka_broker.end_offsets(topic, 2))


# --- end to end ----------------------------------------------------------------------------------------------------


def test_every_acknowledged_request_lands_once_through_kafka(tmp_path, kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=2)
    stack = kafka_stack(tmp_path, kafka_broker, topic)
    stack.start()
    try:
        load = Load(stack.url, concurrency=32)
        asyncio.run(load.run(total=400))
        acked = load.acked()
        assert len(acked) == 400, load.summary()
        records = wait_for_rids(stack.lake, acked, timeout_s=30)
        assert {r["rid"] for r in records} == acked
        landed = wait_landed(stack, kafka_broker, topic, 2)
    finally:
        stack.stop()
    assert len(landed) == 400
    by_partition = lake_objects(stack.lake, topic)
    assert set(by_partition) == {0, 1}, "one partition got nothing"
    bodies = {body for _, body in load.targets}
    assert {r["data"] for r in landed} == bodies
    assert {r["appId"] for r in landed} == {"shop"}


# --- faults --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_broker_down_30s_under_load(tmp_path, kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=2)
    stack = kafka_stack(tmp_path, kafka_broker, topic)
    stack.start()
    load = Load(stack.url)
    ready: list[tuple[float, int]] = []  # (time, worker /ready status)
    marks: dict[str, float] = {}

    def outage() -> None:
        marks["down"] = time.monotonic()
        kafka_broker.restart(down_s=30)
        marks["up"] = time.monotonic()

    async def scenario() -> None:
        runner = asyncio.create_task(load.run())

        async def watch_ready() -> None:
            while not load.stop.is_set():
                status = await asyncio.to_thread(http_status, stack.worker_url + "/ready")
                ready.append((time.monotonic(), status))
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch_ready())
        await asyncio.sleep(2)
        marks["inflight"] = await load.wait_inflight(200)
        acked_before = len(load.outcomes[200])
        await asyncio.to_thread(outage)
        marks["acked_before"] = acked_before
        # the stack recovers by itself: 200s again within a few seconds of the broker's return
        back = len(load.outcomes[200])
        end = time.monotonic() + 30
        while len(load.outcomes[200]) < back + 500 and time.monotonic() < end:
            await asyncio.sleep(0.1)
        marks["recovered"] = time.monotonic()
        await asyncio.sleep(2)
        load.stop.set()
        await asyncio.gather(runner, watcher)

    landed = play(stack, kafka_broker, topic, 2, scenario, load, timeout_s=40, cleanup=kafka_broker.start)

    print(
        f"{load.summary()} inflight_at_stop={marks['inflight']} outage={marks['up'] - marks['down']:.1f}s "
        f"recovered_after={marks['recovered'] - marks['up']:.1f}s records={len(landed)}"
    )
    assert marks["inflight"] >= 200, f"only {marks['inflight']} requests in flight when the broker stopped"
    assert marks["acked_before"] > 500, "the load never got going"
    assert load.outcomes[503], "no 503 while the broker was down"
    assert all(value is not None and int(value) >= 1 for value in load.retry_after), "503 without Retry-After"
    assert marks["recovered"] - marks["up"] < 25, "the stack did not recover by itself"
    during = [status for at, status in ready if marks["down"] + 3 < at < marks["up"] - 1]
    after = [status for at, status in ready if at > marks["recovered"]]
    assert during and all(status == 503 for status in during), collections.Counter(during)
    assert after and all(status == 200 for status in after), collections.Counter(after)
    assert_none_lost(load, landed)


@pytest.mark.slow
def test_kill_9_worker_under_load(tmp_path, kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=2)
    stack = kafka_stack(tmp_path, kafka_broker, topic)
    stack.start()
    load = Load(stack.url)
    marks: dict[str, int] = {}

    async def scenario() -> None:
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(2)
        marks["inflight"] = await load.wait_inflight(200)
        marks["acked_before"] = len(load.outcomes[200])
        stack.kill_worker()
        await asyncio.sleep(1)
        await asyncio.to_thread(stack.start_worker)
        back = len(load.outcomes[200])
        await asyncio.sleep(3)
        marks["acked_after"] = len(load.outcomes[200]) - back
        load.stop.set()
        await runner

    landed = play(stack, kafka_broker, topic, 2, scenario, load, timeout_s=30)

    print(f"{load.summary()} marks={marks} records={len(landed)}")
    assert marks["inflight"] >= 200, f"only {marks['inflight']} requests in flight at the kill"
    assert marks["acked_before"] > 500 and marks["acked_after"] > 500, marks
    assert load.outcomes[503], "no 503 while the worker was down"
    assert_none_lost(load, landed)


async def committed_offsets(bootstrap: str, group: str) -> dict[int, tuple[int, str]]:
    """The group's committed (offset, metadata) by partition: kinesis-s3-sink keeps a batch's intent in the metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        answer = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: (meta.offset, meta.metadata) for tp, meta in answer.items()}


# Runs in its own process so that the polling never waits for this process's GIL (the load runs here).
_KILLER = r"""
import os, signal, sys, time
root, pid, suffix, timeout_s = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])

def names():
    found = set()
    now = time.time()
    for when in (now, now - 1):
        folder = os.path.join(root, time.strftime("year=%Y/month=%m/day=%d/hour=%H", time.gmtime(when)))
        try:
            found.update(os.listdir(folder))
        except FileNotFoundError:
            pass
    return found

known = names()  # objects (and litter of killed puts) from before
end = time.monotonic() + timeout_s
while time.monotonic() < end:
    new = names() - known
    if any(n.startswith(".tmp-") if suffix == ".tmp" else n.endswith(".gz") for n in new):
        os.kill(pid, signal.SIGKILL)
        print(" ".join(sorted(new)))
        sys.exit(0)
    time.sleep(0.0002)
sys.exit(1)
"""


def kill_on_object(stack: LocalStack, suffix: str, timeout_s: float = 40) -> subprocess.Popen:
    """SIGKILL the lander the moment the current hour's folder shows a new landing in progress (suffix ".tmp": the
    `.tmp-*` file of a put not yet renamed, so the intent is committed but the object is not there) or a new
    landed object (suffix ".gz": the put is done, the offsets are maybe not committed yet)."""
    root = stack.lake / "clickstream" / "default" / "data" / "buffer"
    command = [str(BIN / "python"), "-c", _KILLER, str(root), str(stack.lander.pid), suffix, str(timeout_s)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def lander_restart(stack: LocalStack, **lander_env: str) -> None:
    stack.lander.wait()
    stack.lander_env.update(lander_env)
    stack.start_lander()


@pytest.mark.slow
def test_kill_9_lander_with_a_batch_read_but_not_landed(tmp_path, kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=2)
    # Batches close only after 10 minutes: whatever the lander read is still in memory at the kill.
    stack = kafka_stack(tmp_path, kafka_broker, topic, BATCH_MAX_AGE_S="600")
    stack.start()
    load = Load(stack.url)
    marks: dict = {}

    async def scenario() -> None:
        runner = asyncio.create_task(load.run())
        end = time.monotonic() + 20
        while time.monotonic() < end:
            read = metric_value(await asyncio.to_thread(metrics_of, stack.lander_url), "sink_records_in_total")
            if read >= 3000:
                break
            await asyncio.sleep(0.2)
        marks["read"] = read
        marks["inflight"] = await load.wait_inflight(200)
        stack.kill_lander()
        marks["objects_at_kill"] = len(list(stack.lake.rglob("*.gz")))
        await asyncio.sleep(1)
        await asyncio.to_thread(lander_restart, stack, BATCH_MAX_AGE_S="1")
        await asyncio.sleep(2)
        load.stop.set()
        await runner

    landed = play(stack, kafka_broker, topic, 2, scenario, load, timeout_s=40)
    print(f"{load.summary()} marks={marks} records={len(landed)}")
    assert marks["read"] >= 3000 and marks["objects_at_kill"] == 0, marks
    assert marks["inflight"] >= 200, marks
    assert_none_lost(load, landed)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["after_intent_before_put", "after_put_before_commit"])
def test_kill_9_lander_mid_landing(tmp_path, kafka_broker: KafkaBroker, new_kafka_topic, moment):
    topic = new_kafka_topic(partitions=2)
    group = f"s3-sink-{topic}"
    # Big batches (by count): ~8 MB to compress and write, which leaves time to kill between the steps.
    stack = kafka_stack(tmp_path, kafka_broker, topic, BATCH_MAX_AGE_S="600", BATCH_MAX_RECORDS="4000")
    stack.start()
    load = Load(stack.url)
    marks: dict = {}

    async def scenario() -> None:
        runner = asyncio.create_task(load.run())
        # The kill races the lander's next step (a few ms): when it comes too late (the put or the commit already
        # done), restart the lander and try again on its next batch.
        for attempt in range(3):
            if attempt:
                await asyncio.to_thread(lander_restart, stack)
            killer = kill_on_object(stack, ".tmp" if moment == "after_intent_before_put" else ".gz")
            seen, _ = await asyncio.to_thread(killer.communicate)
            marks["inflight"] = load.inflight
            assert killer.returncode == 0, "no landing seen"
            marks["seen"] = seen.split()
            objects = {p.relative_to(stack.lake).as_posix(): p.read_bytes() for p in stack.lake.rglob("*.gz")}
            marks["objects_at_kill"] = objects
            marks["committed"] = await committed_offsets(kafka_broker.bootstrap, group)
            marks["attempts"] = attempt + 1
            keys = [json.loads(meta)["key"] for _, meta in marks["committed"].values() if meta]
            if keys and (keys[0] in objects) == (moment == "after_put_before_commit"):
                break
        await asyncio.to_thread(lander_restart, stack, BATCH_MAX_AGE_S="1")
        await asyncio.sleep(2)
        load.stop.set()
        await runner
        marks["recovered"] = await asyncio.to_thread(metrics_of, stack.lander_url)

    landed = play(stack, kafka_broker, topic, 2, scenario, load, timeout_s=40)

    intents = {p: json.loads(meta) for p, (_, meta) in marks["committed"].items() if meta}
    objects_at_kill = marks["objects_at_kill"]
    print(f"{load.summary()} attempts={marks['attempts']} seen={marks['seen']} intents={intents} n={len(landed)}")
    assert marks["inflight"] >= 200, marks["inflight"]
    assert len(intents) == 1, f"the kill did not land between intent and commit: {marks['committed']}"
    (intent,) = intents.values()
    if moment == "after_intent_before_put":
        assert intent["key"] not in objects_at_kill
        outcome = "rewritten"
    else:
        assert intent["key"] in objects_at_kill
        outcome = "already_written"
        # the restarted lander moved past it: the object is still there, unchanged, under the same name
        assert (stack.lake / intent["key"]).read_bytes() == objects_at_kill[intent["key"]]
    assert metric_value(marks["recovered"], "sink_intents_recovered_total", {"outcome": outcome}) == 1
    for key, body in objects_at_kill.items():  # objects landed before the kill are never rewritten or renamed
        assert (stack.lake / key).read_bytes() == body
    assert_none_lost(load, landed)


def start_second_lander(stack: LocalStack, port: int) -> subprocess.Popen:
    env = {**stack.lander_environment(), "SINK_HTTP_PORT": str(port)}
    with open(stack.log_dir / "kinesis-s3-sink-2.log", "ab") as log:
        lander = subprocess.Popen([str(BIN / "kinesis-s3-sink")], env=env, stderr=log)
    _wait_http(f"http://127.0.0.1:{port}/ready", 30, 200, lander)
    return lander


@pytest.mark.slow
def test_two_landers_share_the_partitions(tmp_path, kafka_broker: KafkaBroker, new_kafka_topic):
    topic = new_kafka_topic(partitions=4)
    stack = kafka_stack(tmp_path, kafka_broker, topic)
    stack.start()
    second_port = free_port()
    second_url = f"http://127.0.0.1:{second_port}"
    second: subprocess.Popen | None = None
    load = Load(stack.url)
    marks: dict = {}

    async def scenario() -> None:
        nonlocal second
        runner = asyncio.create_task(load.run())
        await asyncio.sleep(1.5)
        marks["inflight"] = await load.wait_inflight(200)
        second = await asyncio.to_thread(start_second_lander, stack, second_port)

        def both_landing() -> bool:
            texts = [metrics_of(url) for url in (stack.lander_url, second_url)]
            return all(metric_value(text, "sink_records_written_total") > 0 for text in texts)

        # both members land records once the group has settled (a rebalance takes a few seconds)
        await asyncio.to_thread(wait_for, both_landing, 30, 0.5, "both landers to write objects")
        await asyncio.sleep(2)
        load.stop.set()
        await runner
        for name, url in (("first", stack.lander_url), ("second", second_url)):
            marks[name] = metric_value(await asyncio.to_thread(metrics_of, url), "sink_records_written_total")

    landed = play(
        stack, kafka_broker, topic, 4, scenario, load, cleanup=lambda: second is not None and terminate(second, 30)
    )

    print(f"{load.summary()} marks={marks} records={len(landed)}")
    assert marks["inflight"] >= 200, marks
    assert set(lake_objects(stack.lake, topic)) == {0, 1, 2, 3}
    assert_none_lost(load, landed)
