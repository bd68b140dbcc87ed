"""The Kinesis path: ingest-worker's Kinesis sink, then proxy -> worker -> Kinesis (kinesalite) ->
kinesis-s3-sink -> lake, with resharding, two sink instances sharing a stream, and kill -9 of each
process under load. Accounting is by `rid`: every acknowledged request exactly once in the lake.

The emulators never fail a PutRecords entry and never throttle (tests/test_emulators.py), so the
sink's batching and partial-failure retry are unit-tested against a stub client; everything else
runs against kinesalite and dynalite.
"""

from __future__ import annotations

import asyncio
import collections
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import aiohttp
import botocore.exceptions
import orjson
import pytest
from clickstream_core.handoff import AckStatus
from clickstream_core.raw_record import read_object
from ingest_worker.sinks.base import SinkContext, SinkRefused
from ingest_worker.sinks.kinesis import (
    MAX_BYTES_PER_CALL,
    MAX_BYTES_PER_RECORD,
    MAX_RECORDS_PER_CALL,
    PUT_RECORDS,
    KinesisSink,
    KinesisSinkConfig,
)

from scripts import sdkgen
from scripts.stack import BIN, LocalStack, free_port
from tests.support import metric_value, read_lake, wait_for, wait_for_rids

pytestmark = pytest.mark.timeout(120)

THROTTLED = "ProvisionedThroughputExceededException"


# --- the Kinesis sink against a stub client ------------------------------------------------------------


class StubKinesis:
    """Stands in for aiobotocore's Kinesis client, because the emulator can neither fail single entries
    nor throttle: a unit test of our batching and retry logic, not of the service. `plan(call, records)`
    returns one error code (or None) per entry, or an exception to raise for the whole call."""

    def __init__(self, plan=None):
        self.plan = plan or (lambda call, records: [None] * len(records))
        self.calls: list[tuple[float, list[dict]]] = []  # (monotonic time, Records)
        self.stored: list[bytes] = []  # data of every entry that succeeded, in order
        self.sequence = 0

    async def put_records(self, StreamName: str, Records: list[dict]) -> dict:
        index = len(self.calls)
        self.calls.append((time.monotonic(), list(Records)))
        outcome = self.plan(index, Records)
        if isinstance(outcome, Exception):
            raise outcome
        results = []
        for entry, code in zip(Records, outcome, strict=True):
            if code:
                results.append({"ErrorCode": code, "ErrorMessage": "Rate exceeded for shard shardId-000000000000"})
            else:
                self.sequence += 1
                self.stored.append(entry["Data"])
                results.append({"SequenceNumber": str(self.sequence), "ShardId": "shardId-000000000000"})
        return {"FailedRecordCount": sum(1 for code in outcome if code), "Records": results}


def make_sink(client: StubKinesis, **settings) -> KinesisSink:
    config = KinesisSinkConfig(**{"stream": "stub", **settings})
    sink = KinesisSink(config, SinkContext("default", max_pending_bytes=256 * 1024 * 1024))
    # start() without its AWS client: the stub, and only the dispatcher (no stream probe).
    sink._client = client
    sink._background = [asyncio.create_task(sink._dispatch(), name="kinesis-dispatch")]
    return sink


def line(n: int, size: int = 100) -> bytes:
    """An encoded raw record of exactly `size` bytes, trailing newline included."""
    head = b'{"rid":"%032x","data":"' % n
    return head + b"x" * (size - len(head) - 3) + b'"}\n'


def entry_bytes(entry: dict) -> int:
    return len(entry["Data"]) + len(entry["PartitionKey"].encode())


def throttled_error() -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": THROTTLED, "Message": "Rate exceeded"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
        "PutRecords",
    )


async def test_calls_stay_within_500_records_and_5_mib():
    stub = StubKinesis()
    sink = make_sink(stub, concurrency=2)
    small = [sink.submit([line(n) for n in range(frame * 100, frame * 100 + 100)]) for frame in range(12)]
    big_line = line(0, sink.max_record_bytes)  # the largest record the sink takes
    big = [sink.submit([big_line]) for _ in range(11)]
    await asyncio.wait_for(asyncio.gather(*small, *big), 10)
    await sink.stop(1)

    assert len(stub.stored) == 1200 + 11
    for _, records in stub.calls:
        assert 1 <= len(records) <= MAX_RECORDS_PER_CALL
        assert sum(entry_bytes(entry) for entry in records) <= MAX_BYTES_PER_CALL
        assert all(entry_bytes(entry) <= MAX_BYTES_PER_RECORD for entry in records)
    # As full as the limits allow: 1,200 small records in 500 + 500 + 200, the last call topped up with
    # the four 1 MiB records that fit under 5 MiB, then five and two 1 MiB records.
    assert [len(records) for _, records in stub.calls] == [500, 500, 204, 5, 2]
    # The largest record, newline dropped, plus its key: one byte under the 1 MiB per record.
    assert max(entry_bytes(e) for _, records in stub.calls for e in records) == MAX_BYTES_PER_RECORD - 1
    # The trailing newline is not sent: Kinesis records are the JSON objects themselves.
    assert stub.stored[0] == line(0)[:-1]
    # The default partition key is random (spreads load evenly): 32 hex characters, all different.
    keys = [entry["PartitionKey"] for _, records in stub.calls for entry in records]
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys)
    assert len(set(keys)) == len(keys)
    assert sink.pending_bytes == 0


async def test_a_record_over_the_limit_is_refused_as_too_large():
    stub = StubKinesis()
    sink = make_sink(stub)
    assert sink.max_record_bytes == MAX_BYTES_PER_RECORD - 32  # room for the 32-byte partition key
    with pytest.raises(SinkRefused) as refused:
        sink.submit([line(1), line(2, sink.max_record_bytes + 1)])
    assert refused.value.status is AckStatus.TOO_LARGE
    assert sink.pending_bytes == 0  # nothing of the refused frame was queued
    await asyncio.wait_for(sink.submit([line(3, sink.max_record_bytes)]), 5)
    await sink.stop(1)
    assert len(stub.calls) == 1 and len(stub.stored) == 1


async def test_partition_keys_by_field_stay_within_32_bytes():
    """SINK_KINESIS_PARTITION_KEY=appId (or ip) keeps a client's records on one shard; the key is cut to
    32 UTF-8 bytes, which the per-record limit leaves room for, whatever the characters."""
    stub = StubKinesis()
    sink = make_sink(stub, partition_key="appId")
    wide = "店" * 40  # 3 bytes each in UTF-8

    def record(app_id, rid: str, size: int = 0) -> bytes:
        encoded = orjson.dumps({"appId": app_id, "rid": rid, "data": ""}, option=orjson.OPT_APPEND_NEWLINE)
        pad = "x" * max(0, size - len(encoded))
        return orjson.dumps({"appId": app_id, "rid": rid, "data": pad}, option=orjson.OPT_APPEND_NEWLINE)

    records = [record("shop", "1"), record(wide, "2", sink.max_record_bytes), record(None, "3")]
    assert len(records[1]) == sink.max_record_bytes
    await asyncio.wait_for(sink.submit(records), 5)
    await sink.stop(1)
    ((_, sent),) = stub.calls
    keys = [entry["PartitionKey"] for entry in sent]
    assert keys[0] == "shop"
    assert keys[1] == "店" * 10 and len(keys[1].encode()) == 30  # whole characters only
    assert re.fullmatch(r"[0-9a-f]{32}", keys[2])  # no value: a random key
    assert all(entry_bytes(entry) <= MAX_BYTES_PER_RECORD for entry in sent)


async def test_a_partial_failure_retries_only_the_failed_entries_with_backoff():
    failing = {3, 7, 250, 499}  # indexes in the first call that the "service" throttles twice

    def plan(call: int, records: list[dict]):
        if call in (0, 1, 2):
            return [THROTTLED if int(orjson.loads(r["Data"])["rid"], 16) in failing else None for r in records]
        return [None] * len(records)

    stub = StubKinesis(plan)
    sink = make_sink(stub, concurrency=1)
    retried_before = PUT_RECORDS.labels("retried")._value.get()
    frames = [sink.submit([line(n) for n in range(start, start + 50)]) for start in range(0, 600, 50)]
    done_at: dict[int, float] = {}
    for index, frame in enumerate(frames):
        frame.add_done_callback(lambda _f, i=index: done_at.setdefault(i, time.monotonic()))
    await asyncio.wait_for(asyncio.gather(*frames), 10)
    await sink.stop(1)

    rids = [[int(orjson.loads(e["Data"])["rid"], 16) for e in records] for _, records in stub.calls]
    assert rids[0] == list(range(500))
    # The second call carries the first call's failed entries, in order, ahead of the 100 not yet sent.
    assert rids[1] == sorted(failing) + list(range(500, 600))
    assert rids[2] == sorted(failing)  # throttled again: only those four, again
    assert rids[3] == sorted(failing)
    assert len(stub.calls) == 4
    # Every record stored exactly once.
    assert sorted(int(orjson.loads(d)["rid"], 16) for d in stub.stored) == list(range(600))
    assert PUT_RECORDS.labels("retried")._value.get() - retried_before == 12
    # Backoff: 50 ms * 2^attempt with +-50% jitter, growing with the entries' attempts.
    gaps = [b[0] - a[0] for a, b in zip(stub.calls[1:], stub.calls[2:], strict=False)]
    assert gaps[0] >= 0.05 * 2**2 * 0.5 * 0.9 and gaps[1] >= 0.05 * 2**3 * 0.5 * 0.9
    # A frame resolves only when all its records are in: the frames holding a throttled entry last.
    waiting = {n // 50 for n in failing}
    last_call = stub.calls[-1][0]
    assert all(done_at[i] >= last_call for i in waiting)
    assert all(done_at[i] < last_call for i in set(range(12)) - waiting)


async def test_a_throttled_call_is_retried_whole_with_growing_backoff():
    def plan(call: int, records: list[dict]):
        return throttled_error() if call < 4 else [None] * len(records)

    stub = StubKinesis(plan)
    sink = make_sink(stub, concurrency=1)
    frame = sink.submit([line(n) for n in range(10)])
    await asyncio.wait_for(frame, 10)
    await sink.stop(1)
    assert len(stub.calls) == 5
    assert all(len(records) == 10 for _, records in stub.calls)
    assert len(stub.stored) == 10
    gaps = [b[0] - a[0] for a, b in zip(stub.calls, stub.calls[1:], strict=False)]
    for attempt, gap in enumerate(gaps, start=1):
        assert gap >= 0.05 * 2**attempt * 0.5 * 0.9, gaps


async def test_a_record_throttled_past_the_deadline_fails_its_frame():
    stub = StubKinesis(lambda call, records: [THROTTLED] * len(records))
    sink = make_sink(stub, retry_deadline_s=0.5)
    frame = sink.submit([line(1), line(2)])
    with pytest.raises(SinkRefused) as refused:
        await asyncio.wait_for(frame, 10)
    assert refused.value.status is AckStatus.ERROR
    assert sink.pending_bytes == 0
    assert not stub.stored
    await sink.stop(1)


async def test_stop_puts_entries_that_are_waiting_out_a_backoff():
    """A graceful stop must not give up on entries that are between two attempts."""
    stub = StubKinesis(lambda call, records: [THROTTLED if call < 3 else None] * len(records))
    sink = make_sink(stub)
    frame = sink.submit([line(n) for n in range(5)])
    while not stub.calls:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # the first answer (all throttled) is in: the entries are backing off
    await sink.stop(5)
    assert frame.done() and frame.exception() is None
    assert len(stub.stored) == 5


# --- the Kinesis sink against kinesalite ---------------------------------------------------------------------


def read_stream(emulators, stream: str) -> list[dict]:
    """Every record of every shard (parents included), each with its ShardId."""
    kinesis = emulators.kinesis
    records = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        closed = "EndingSequenceNumber" in shard["SequenceNumberRange"]
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            records += [{**record, "ShardId": shard["ShardId"]} for record in page["Records"]]
            iterator = page.get("NextShardIterator")
            if not closed and not page["Records"] and page.get("MillisBehindLatest", 0) == 0:
                break
    return records


async def wait_until(predicate, timeout_s: float, message: str):
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(0.05)


async def test_frames_resolve_only_once_their_records_are_in_the_stream(use_emulators, emulators, new_stream):
    stream = new_stream(shards=2)
    sink = KinesisSink.from_env({"SINK_KINESIS_STREAM": stream}, SinkContext("default", 64 * 1024 * 1024))
    await sink.start()
    try:
        await wait_until(lambda: sink.health().ready, 10, "the sink to see its stream")
        real_put = sink._client.put_records
        returned: list[tuple[float, set[bytes]]] = []

        async def spy(**kwargs):
            answer = await real_put(**kwargs)
            returned.append((time.monotonic(), {entry["Data"] for entry in kwargs["Records"]}))
            return answer

        sink._client.put_records = spy
        frames = {start: [line(n, 300) for n in range(start, start + 40)] for start in range(0, 2000, 40)}
        resolved: dict[int, float] = {}
        futures = []
        for start, records in frames.items():
            future = sink.submit(records)
            future.add_done_callback(lambda _f, s=start: resolved.setdefault(s, time.monotonic()))
            futures.append(future)
            if start % 400 == 0:
                await asyncio.sleep(0)  # let some calls start while frames keep coming
        await asyncio.wait_for(asyncio.gather(*futures), 30)

        # No frame resolved before the PutRecords answer carrying the last of its records came back.
        for start, records in frames.items():
            wanted = {record[:-1] for record in records}
            answered = [at for at, data in returned if data & wanted]
            assert sum(len(data & wanted) for _, data in returned) == len(wanted)
            assert resolved[start] >= max(answered)

        # A resolved frame can be read back: one frame, then its records from the stream at once.
        last = [line(n, 300) for n in range(5000, 5010)]
        await asyncio.wait_for(sink.submit(last), 10)
        stored = await asyncio.to_thread(read_stream, emulators, stream)
        data = collections.Counter(record["Data"] for record in stored)
        everything = [record[:-1] for records in [*frames.values(), last] for record in records]
        assert all(data[record] == 1 for record in everything)
        assert len(stored) == len(everything)
        # The random partition key spreads them over both shards.
        per_shard = collections.Counter(record["ShardId"] for record in stored)
        assert len(per_shard) == 2 and min(per_shard.values()) > len(stored) / 4, per_shard
    finally:
        await sink.stop(5)


async def test_readiness_is_false_while_the_stream_is_missing(use_emulators, emulators, stream_name):
    sink = KinesisSink.from_env(
        {"SINK_KINESIS_STREAM": stream_name, "SINK_KINESIS_PROBE_INTERVAL_S": "1"},
        SinkContext("default", 64 * 1024 * 1024),
    )
    await sink.start()
    try:
        await wait_until(lambda: "cannot describe" in sink.health().reason, 10, "the first probe")
        health = sink.health()
        assert not health.ready and "ResourceNotFoundException" in health.reason
        await asyncio.to_thread(emulators.create_stream, stream_name, 1)
        await wait_until(lambda: sink.health().ready, 5, "readiness once the stream exists")
    finally:
        await sink.stop(1)


# --- through the stack: proxy -> worker -> kinesalite -> kinesis-s3-sink -> lake ---------------------------

CONCURRENCY = 256
OBJECT_KEY = re.compile(
    r"clickstream/default/data/buffer/year=(\d{4})/month=(\d\d)/day=(\d\d)/hour=(\d\d)/(shardId-\d{12})-(\d+)\.gz"
)


def kinesis_stack(tmp_path, emulators, stream: str, **overrides) -> LocalStack:
    return LocalStack.isolated(tmp_path, sink="kinesis", stream=stream, stream_env=emulators.env(), **overrides)


def fresh_stream(emulators, shards: int) -> str:
    name = f"stream-path-{uuid.uuid4().hex[:12]}"
    emulators.create_stream(name, shards)
    return name


def lease_table(emulators, stream: str) -> dict[str, dict]:
    items = emulators.dynamodb.scan(TableName=f"clickstream-s3-sink-{stream}", ConsistentRead=True)["Items"]
    return {item["shard_id"]["S"]: item for item in items}


def live_owners(emulators, stream: str) -> collections.Counter:
    """How many shard leases each instance holds (unexpired, not finished)."""
    now = time.time()
    return collections.Counter(
        item["owner"]["S"]
        for shard, item in lease_table(emulators, stream).items()
        if shard.startswith("shardId-")
        and "owner" in item
        and float(item["expires_at"]["N"]) > now
        and item.get("checkpoint", {}).get("S") != "SHARD_END"
    )


def landed_to_the_end(emulators, stream: str) -> bool:
    """Every shard's checkpoint is at its last record (SHARD_END for a closed shard that was read)."""
    stored = read_stream(emulators, stream)
    last: dict[str, str] = {}
    for record in stored:
        last[record["ShardId"]] = record["SequenceNumber"]
    table = lease_table(emulators, stream)
    closed = {
        shard["ShardId"]
        for shard in emulators.kinesis.list_shards(StreamName=stream)["Shards"]
        if "EndingSequenceNumber" in shard["SequenceNumberRange"]
    }
    for shard, sequence in last.items():
        checkpoint = table.get(shard, {}).get("checkpoint", {}).get("S")
        if checkpoint != ("SHARD_END" if shard in closed else sequence):
            return False
    return True


def check_exactly_once(stack: LocalStack, emulators, acked: set[str], timeout_s: float = 40) -> list[dict]:
    """Once the sink has landed the whole stream: every acknowledged rid present, no rid twice, and the
    lake holds exactly the stream's records."""
    wait_for(lambda: landed_to_the_end(emulators, stack.stream), timeout_s, 0.5, "the sink to land the stream")
    records = read_lake(stack.lake)
    counts = collections.Counter(record["rid"] for record in records)
    duplicated = [rid for rid, count in counts.items() if count > 1]
    assert not duplicated, f"{len(duplicated)} rids written twice"
    missing = acked - set(counts)
    assert not missing, f"{len(missing)} acknowledged requests lost"
    in_stream = collections.Counter(orjson.loads(r["Data"])["rid"] for r in read_stream(emulators, stack.stream))
    assert counts == in_stream
    return records


def request() -> tuple[str, str]:
    body = sdkgen.body_text(sdkgen.sample_batch(10, seed=3), gzip_base64=True)
    return sdkgen.collect_target("shop", body, 1, gzip_base64=True), body


class Traffic:
    """`concurrency` clients posting an SDK batch in a loop until stopped: answers by status, rids of 200s."""

    def __init__(self, stack: LocalStack, concurrency: int = CONCURRENCY):
        self.stack = stack
        self.concurrency = concurrency
        self.outcomes: dict = collections.defaultdict(list)
        self.inflight = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def acked(self) -> set[str]:
        return set(self.outcomes[200])

    def start(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        await self._task

    async def until_acked(self, count: int, timeout_s: float = 30) -> None:
        await wait_until(lambda: len(self.outcomes[200]) >= count, timeout_s, f"{count} acknowledged requests")

    async def _run(self) -> None:
        target, body = request()
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def client() -> None:
                while not self._stop.is_set():
                    self.inflight += 1
                    try:
                        async with session.post(self.stack.url + target, data=body) as answer:
                            await answer.read()
                            self.outcomes[answer.status].append(answer.headers.get("X-Request-ID"))
                            if answer.status != 200:
                                await asyncio.sleep(0.05)
                    except (aiohttp.ClientError, TimeoutError):
                        self.outcomes["error"].append(None)
                        await asyncio.sleep(0.05)
                    finally:
                        self.inflight -= 1

            await asyncio.gather(*(client() for _ in range(self.concurrency)))


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        return answer.read().decode()


@pytest.fixture(scope="module")
def two_shard_stack(emulators, tmp_path_factory):
    """A stack with SINK=kinesis on a 2-shard stream; the proxy takes bodies up to 2 MiB."""
    stack = kinesis_stack(
        tmp_path_factory.mktemp("kinesis-stack"),
        emulators,
        fresh_stream(emulators, 2),
        proxy_env={"MAX_BODY_BYTES": "2MiB", "MAX_DECOMPRESSED_BYTES": "4MiB"},
    )
    stack.start()
    yield stack
    stack.stop()


def test_proxy_answers_413_for_a_record_over_kinesis_limit(two_shard_stack: LocalStack):
    stack = two_shard_stack
    big = '[{"event_id":"big","pad":"' + "x" * (1536 * 1024) + '"}]'  # a 1.5 MiB body, under MAX_BODY_BYTES
    post = urllib.request.Request(stack.url + "/collect?appId=shop&platform=Web", data=big.encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 413
    wait_for(
        lambda: metric_value(metrics(stack.url), "proxy_rejections_total", {"reason": "too_large_for_sink"}) >= 1,
        10,
        message="the too_large_for_sink rejection in the proxy's metrics",
    )
    # A body that leaves room for the record's other fields (under 1 KiB here) still goes through.
    fits = '[{"event_id":"fits","pad":"' + "x" * (1024 * 1024 - 2048) + '"}]'
    post = urllib.request.Request(stack.url + "/collect?appId=shop&platform=Web", data=fits.encode(), method="POST")
    with urllib.request.urlopen(post, timeout=10) as answer:
        assert answer.status == 200
        rid = answer.headers["X-Request-ID"]
    (landed,) = [r for r in wait_for_rids(stack.lake, {rid}, 20) if r["rid"] == rid]
    assert landed["data"] == fits


async def test_end_to_end_every_acknowledged_request_lands_once(two_shard_stack: LocalStack, emulators):
    stack = two_shard_stack
    target, body = request()
    acked: list[str] = []
    statuses = collections.Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as session:

        async def post() -> None:
            async with session.post(stack.url + target, data=body) as answer:
                statuses[answer.status] += 1
                if answer.status == 200:
                    acked.append(answer.headers["X-Request-ID"])

        await asyncio.gather(*(post() for _ in range(400)))
    assert statuses == {200: 400}
    records = await asyncio.to_thread(check_exactly_once, stack, emulators, set(acked))
    assert {r["data"] for r in records if r["rid"] in set(acked)} == {body}

    # Keys: .../hour=HH/shardId-...-{first sequence number}.gz, the hour being the object's write time.
    first_record = {
        orjson.loads(r["Data"])["rid"]: (r["ShardId"], r["SequenceNumber"])
        for r in read_stream(emulators, stack.stream)
    }
    shards = set()
    objects = sorted(stack.lake.rglob("*.gz"))
    assert objects
    for path in objects:
        key = path.relative_to(stack.lake).as_posix()
        match = OBJECT_KEY.fullmatch(key)
        assert match, key
        year, month, day, hour, shard, sequence = match.groups()
        assert time.strftime("%Y %m %d %H", time.gmtime(path.stat().st_mtime)) == f"{year} {month} {day} {hour}"
        first = read_object(path.read_bytes())[0]["rid"]
        assert first_record[first] == (shard, sequence), key
        shards.add(shard)
    assert shards == {"shardId-000000000000", "shardId-000000000001"}


def landed_objects(stack: LocalStack) -> dict[str, list[tuple[int, str]]]:
    """Objects by shard: (mtime ns, key), oldest first."""
    by_shard: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for path in stack.lake.rglob("*.gz"):
        key = path.relative_to(stack.lake).as_posix()
        match = OBJECT_KEY.fullmatch(key)
        assert match, key
        by_shard[match.group(5)].append((path.stat().st_mtime_ns, key))
    return {shard: sorted(objects) for shard, objects in by_shard.items()}


def log_events(path, message: str) -> list[dict]:
    events = []
    for text in path.read_text().splitlines():
        try:
            entry = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == message:
            events.append(entry)
    return events


@pytest.mark.slow
async def test_resharding_under_traffic_lands_parents_before_children(tmp_path, emulators):
    stream = fresh_stream(emulators, 2)
    stack = kinesis_stack(tmp_path, emulators, stream, lander_env={"SOURCE_KINESIS_DISCOVERY_INTERVAL_S": "1"})
    await asyncio.to_thread(stack.start)
    try:
        traffic = Traffic(stack, concurrency=64).start()
        await traffic.until_acked(300)
        children = await asyncio.to_thread(emulators.split_all_shards, stream)
        split_at = len(traffic.outcomes[200])
        await traffic.until_acked(split_at + 600)
        await traffic.stop()
        await asyncio.to_thread(check_exactly_once, stack, emulators, traffic.acked)
    finally:
        await asyncio.to_thread(stack.stop)

    parents = {"shardId-000000000000", "shardId-000000000001"}
    assert {c["ParentShardId"] for c in children} == parents and len(children) == 4
    table = lease_table(emulators, stream)
    assert {shard for shard, item in table.items() if item.get("checkpoint", {}).get("S") == "SHARD_END"} == parents
    for child in children:
        assert table[child["ShardId"]]["parents"]["SS"] == [child["ParentShardId"]]
    # Stopped gracefully: its presence item is gone with it (the leases released).
    assert not [shard for shard in table if not shard.startswith("shardId-")]
    assert not any("owner" in item for item in table.values())

    # Parent before child: a child's first object was written after its parent's last one, in the
    # objects' modification times and in the order of the sink's log lines.
    objects = landed_objects(stack)
    assert set(objects) == parents | {c["ShardId"] for c in children}, "traffic reached every shard"
    landed = [e["partition"] for e in log_events(stack.log_dir / "kinesis-s3-sink.log", "batch landed")]
    for child in children:
        shard, parent = child["ShardId"], child["ParentShardId"]
        assert objects[shard][0][0] >= objects[parent][-1][0]
        assert landed.index(shard) > len(landed) - 1 - landed[::-1].index(parent)
    print(f"acked={len(traffic.acked)} before_split={split_at} objects={sum(map(len, objects.values()))}")


def start_second_lander(stack: LocalStack, worker_id: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**stack.lander_environment(), "SINK_HTTP_PORT": str(port), "SOURCE_KINESIS_WORKER_ID": worker_id}
    log = open(stack.log_dir / f"kinesis-s3-sink-{worker_id}.log", "ab")
    proc = subprocess.Popen([str(BIN / "kinesis-s3-sink")], env=env, stderr=log)
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: ready(url), 30, message=f"{worker_id} ready")
    return proc, url


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.mark.slow
async def test_two_sink_instances_share_the_shards_and_take_over_a_killed_one(tmp_path, emulators):
    stream = fresh_stream(emulators, 4)
    lease_settings = {"SOURCE_KINESIS_LEASE_DURATION_S": "4", "SOURCE_KINESIS_DISCOVERY_INTERVAL_S": "1"}
    stack = kinesis_stack(
        tmp_path, emulators, stream, lander_env={**lease_settings, "SOURCE_KINESIS_WORKER_ID": "lander-a"}
    )
    await asyncio.to_thread(stack.start)
    second = None
    try:
        traffic = Traffic(stack, concurrency=64).start()
        second, second_url = await asyncio.to_thread(start_second_lander, stack, "lander-b")
        # The shards are split between the two, two each.
        await wait_until(
            lambda: live_owners(emulators, stream) == {"lander-a": 2, "lander-b": 2}, 20, "two leases each"
        )
        await traffic.until_acked(len(traffic.acked) + 400)
        for url in (stack.lander_url, second_url):  # both land records
            await wait_until(lambda u=url: metric_value(metrics(u), "sink_records_written_total") > 0, 10, url)
        before_kill = len(traffic.acked)

        second.kill()  # kill -9, leases held
        second.wait()
        killed_at = time.time()
        await wait_until(lambda: live_owners(emulators, stream) == {"lander-a": 4}, 20, "lander-a to take all four")
        taken_over_after = time.time() - killed_at
        await traffic.until_acked(len(traffic.acked) + 400)
        await traffic.stop()
        await asyncio.to_thread(check_exactly_once, stack, emulators, traffic.acked)
    finally:
        if second is not None and second.poll() is None:
            second.kill()
            second.wait()
        await asyncio.to_thread(stack.stop)
    # Not before the killed instance's leases expired (4 s after their last renewal).
    assert taken_over_after >= 4 - 4 / 3 - 0.5
    print(f"acked={len(traffic.acked)} before_kill={before_kill} taken_over_after={taken_over_after:.1f}s")


@pytest.mark.slow
async def test_kill_9_sink_mid_batch_under_load_then_restart(tmp_path, emulators):
    stream = fresh_stream(emulators, 2)
    stack = kinesis_stack(tmp_path, emulators, stream, lander_env={"SOURCE_KINESIS_LEASE_DURATION_S": "4"})
    await asyncio.to_thread(stack.start)
    try:
        traffic = Traffic(stack).start()
        await traffic.until_acked(1000)

        def mid_batch() -> bool:  # records read from the stream that are not in an object yet
            text = metrics(stack.lander_url)
            written = metric_value(text, "sink_records_written_total")
            return written > 0 and metric_value(text, "sink_records_in_total") > written

        await asyncio.to_thread(wait_for, mid_batch, 10, 0.01, "records batched but not landed")
        stack.kill_lander()
        acked_at_kill = traffic.acked
        unlanded_at_kill = acked_at_kill - {r["rid"] for r in read_lake(stack.lake)}
        await asyncio.sleep(1)
        # A new process (a new owner id): it takes the shards once the dead one's leases expire.
        await asyncio.to_thread(stack.start_lander)
        await traffic.until_acked(len(acked_at_kill) + 1000)
        await traffic.stop()
        records = await asyncio.to_thread(check_exactly_once, stack, emulators, traffic.acked)
    finally:
        await asyncio.to_thread(stack.stop)
    # Acknowledged but not in the lake when the sink died (read and batched, or not read yet): landed
    # by the restarted sink from the checkpoint, once.
    assert unlanded_at_kill
    assert unlanded_at_kill <= {r["rid"] for r in records}
    print(f"acked={len(traffic.acked)} at_kill={len(acked_at_kill)} unlanded_at_kill={len(unlanded_at_kill)}")


@pytest.mark.slow
async def test_kill_9_worker_under_load_loses_nothing_acknowledged(tmp_path, emulators):
    stream = fresh_stream(emulators, 2)
    stack = kinesis_stack(tmp_path, emulators, stream)
    await asyncio.to_thread(stack.start)
    try:
        traffic = Traffic(stack).start()
        await traffic.until_acked(1000)
        await wait_until(lambda: traffic.inflight >= 200, 5, "200 requests in flight")
        inflight_at_kill = traffic.inflight
        stack.kill_worker()
        await asyncio.sleep(1)
        await asyncio.to_thread(stack.start_worker)
        restarted_at = len(traffic.acked)
        await traffic.until_acked(restarted_at + 1000)
        await traffic.stop()
        await asyncio.to_thread(check_exactly_once, stack, emulators, traffic.acked)
    finally:
        await asyncio.to_thread(stack.stop)
    assert inflight_at_kill >= 200
    assert traffic.outcomes[503], "no 503 while the worker was down"
    print(f"acked={len(traffic.acked)} 503={len(traffic.outcomes[503])} inflight_at_kill={inflight_at_kill}")
