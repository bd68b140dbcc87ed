"""The Kinesis (kinesalite) and DynamoDB (dynalite) emulators, through aiobotocore as our services use them.

These tests document the behaviour the Kinesis sink and kinesis-s3-sink rely on, including where the
emulators differ from AWS (look for "deviation"): what passes here is what a test against the emulators
can show, and what it cannot (partial failures, throttling) needs a stub instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import botocore.exceptions
import pytest
from aiobotocore.session import get_session

from scripts.kinesis import ROOT, Emulators
from scripts.stack import free_port

pytestmark = pytest.mark.timeout(120)

MAX_HASH_KEY = 2**128 - 1


@asynccontextmanager
async def aws(service: str, endpoint: str | None = None):
    """An aiobotocore client; without `endpoint` it takes endpoint, keys and region from the environment."""
    if endpoint is None:
        settings = {}
    else:
        settings = {"region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}
    async with get_session().create_client(service, endpoint_url=endpoint, **settings) as client:
        yield client


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response["Error"]["Code"]


async def read_shard(kinesis, stream: str, shard_id: str, closed: bool = False, **iterator_args) -> tuple[list, bool]:
    """Every record of one shard from an iterator (TRIM_HORIZON unless given). An open shard is read until an
    empty page at MillisBehindLatest 0; a closed one until NextShardIterator is None (it may answer empty
    pages before that). Returns (records, reached_end_of_closed_shard)."""
    iterator_args.setdefault("ShardIteratorType", "TRIM_HORIZON")
    answer = await kinesis.get_shard_iterator(StreamName=stream, ShardId=shard_id, **iterator_args)
    iterator = answer["ShardIterator"]
    records: list = []
    for _ in range(1000):
        page = await kinesis.get_records(ShardIterator=iterator)
        records.extend(page["Records"])
        iterator = page.get("NextShardIterator")
        if iterator is None:
            return records, True
        if not closed and not page["Records"] and page["MillisBehindLatest"] == 0:
            return records, False
    raise AssertionError(f"{shard_id} of {stream} did not end")


def payloads(n: int, size: int = 2000) -> list[bytes]:
    return [(f"{i:06d}:".encode() + os.urandom(size // 2).hex().encode())[:size] for i in range(n)]


# --- start-up and environment -------------------------------------------------------------------


def test_bound_to_loopback_only(emulators: Emulators):
    """Both listen on 127.0.0.1 only (kinesalite's own command line would bind every interface)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                address, port = local.rsplit(":", 1)
                listening.add((address, int(port, 16)))
    for port in (emulators.kinesis_port, emulators.dynamodb_port):
        assert {address for address, p in listening if p == port} == {"0100007F"}


async def test_service_specific_endpoint_variables(use_emulators, emulators: Emulators):
    """botocore honours AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL_DYNAMODB (+ dummy keys, AWS_REGION)."""
    assert use_emulators["AWS_ENDPOINT_URL_KINESIS"] == emulators.kinesis_endpoint
    async with aws("kinesis") as kinesis, aws("dynamodb") as dynamodb:
        assert kinesis.meta.endpoint_url == emulators.kinesis_endpoint
        assert kinesis.meta.region_name == "us-east-1"
        assert dynamodb.meta.endpoint_url == emulators.dynamodb_endpoint
        assert "StreamNames" in await kinesis.list_streams()
        assert "TableNames" in await dynamodb.list_tables()


def test_botocore_reads_aws_default_region_not_aws_region(use_emulators, monkeypatch):
    """The trap: botocore (unlike the other AWS SDKs) ignores AWS_REGION; aws_env sets AWS_DEFAULT_REGION too."""
    import botocore.session

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert botocore.session.get_session().get_config_variable("region") is None
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert botocore.session.get_session().get_config_variable("region") == "us-east-1"


async def test_ignore_configured_endpoints_turns_the_variables_off(use_emulators, monkeypatch):
    """The trap: AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true sends clients to the real regional endpoint."""
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    async with aws("kinesis") as kinesis:  # no request is made
        assert kinesis.meta.endpoint_url == "https://kinesis.us-east-1.amazonaws.com"


# --- Kinesis: PutRecords and reading back ------------------------------------------------------------


async def test_put_500_records_into_two_shards_and_read_them_all_back(emulators: Emulators, new_stream):
    stream = new_stream(shards=2)
    data = payloads(500)
    entries = [{"Data": d, "PartitionKey": uuid.uuid4().hex} for d in data]
    async with aws("kinesis", emulators.kinesis_endpoint) as kinesis:
        answer = await kinesis.put_records(StreamName=stream, Records=entries)
        assert answer["FailedRecordCount"] == 0
        results = answer["Records"]
        assert len(results) == 500 and all("SequenceNumber" in r and "ShardId" in r for r in results)

        shards = (await kinesis.list_shards(StreamName=stream))["Shards"]
        assert [s["ShardId"] for s in shards] == ["shardId-000000000000", "shardId-000000000001"]
        assert all("ParentShardId" not in s and "EndingSequenceNumber" not in s["SequenceNumberRange"] for s in shards)
        assert shards[0]["HashKeyRange"]["StartingHashKey"] == "0"
        assert shards[-1]["HashKeyRange"]["EndingHashKey"] == str(MAX_HASH_KEY)

        read_back = {}
        for shard in shards:
            records, ended = await read_shard(kinesis, stream, shard["ShardId"])
            assert not ended
            # In each shard: the put order, with the sequence numbers PutRecords returned, increasing.
            expected = [
                (d, r["SequenceNumber"]) for d, r in zip(data, results, strict=True) if r["ShardId"] == shard["ShardId"]
            ]
            assert [(r["Data"], r["SequenceNumber"]) for r in records] == expected
            numbers = [int(r["SequenceNumber"]) for r in records]
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
            assert all(r["PartitionKey"] and r["ApproximateArrivalTimestamp"] for r in records)
            read_back[shard["ShardId"]] = records
        assert all(len(records) > 100 for records in read_back.values())  # random keys spread over both
        assert sorted(r["Data"] for rs in read_back.values() for r in rs) == sorted(data)


async def test_iterators_at_after_sequence_number_and_latest(emulators: Emulators, new_stream):
    stream = new_stream(shards=1)
    shard = "shardId-000000000000"
    async with aws("kinesis", emulators.kinesis_endpoint) as kinesis:
        answer = await kinesis.put_records(
            StreamName=stream, Records=[{"Data": b"r%d" % i, "PartitionKey": "k"} for i in range(10)]
        )
        numbers = [r["SequenceNumber"] for r in answer["Records"]]

        at, _ = await read_shard(
            kinesis, stream, shard, ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber=numbers[4]
        )
        assert [r["Data"] for r in at] == [b"r%d" % i for i in range(4, 10)]
        after, _ = await read_shard(
            kinesis, stream, shard, ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=numbers[4]
        )
        assert [r["Data"] for r in after] == [b"r%d" % i for i in range(5, 10)]
        after_last, _ = await read_shard(
            kinesis, stream, shard, ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=numbers[-1]
        )
        assert after_last == []

        latest = await kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="LATEST")
        page = await kinesis.get_records(ShardIterator=latest["ShardIterator"])
        assert page["Records"] == [] and page["NextShardIterator"]
        await kinesis.put_record(StreamName=stream, Data=b"new", PartitionKey="k")
        page = await kinesis.get_records(ShardIterator=page["NextShardIterator"], Limit=100)
        assert [r["Data"] for r in page["Records"]] == [b"new"]

        # Limit pages through a shard; the last page's iterator continues after the last record.
        page = await kinesis.get_records(
            ShardIterator=(
                await kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
            )["ShardIterator"],
            Limit=3,
        )
        assert [r["Data"] for r in page["Records"]] == [b"r0", b"r1", b"r2"]
        assert page["MillisBehindLatest"] >= 0

        # A sequence number of another stream's shard, or a mangled iterator, is an InvalidArgumentException.
        with pytest.raises(botocore.exceptions.ClientError) as bad:
            await kinesis.get_records(ShardIterator="AAAAAAAAAAAA" + page["NextShardIterator"][12:])
        assert error_code(bad.value) == "InvalidArgumentException"


# --- Kinesis: limits, failures and what the emulator does not do --------------------------------------


async def test_put_records_limits(emulators: Emulators, new_stream):
    stream = new_stream(shards=1)
    async with aws("kinesis", emulators.kinesis_endpoint) as kinesis:
        with pytest.raises(botocore.exceptions.ClientError) as too_many:
            await kinesis.put_records(StreamName=stream, Records=[{"Data": b"x", "PartitionKey": "k"}] * 501)
        assert error_code(too_many.value) == "ValidationException"

        with pytest.raises(botocore.exceptions.ClientError) as too_big:
            await kinesis.put_records(StreamName=stream, Records=[{"Data": b"x" * (2**20 + 1), "PartitionKey": "k"}])
        assert error_code(too_big.value) == "ValidationException"

        # Deviation: the 5 MiB per request limit is not enforced (AWS counts data + partition keys and would
        # refuse this); only a JSON body over 7 MiB is refused, as a bare HTTP 413 without an error code.
        answer = await kinesis.put_records(StreamName=stream, Records=[{"Data": b"x" * 2**20, "PartitionKey": "k"}] * 5)
        assert answer["FailedRecordCount"] == 0
        with pytest.raises(botocore.exceptions.ClientError) as body_too_big:
            await kinesis.put_records(StreamName=stream, Records=[{"Data": b"x" * 2**20, "PartitionKey": "k"}] * 6)
        assert body_too_big.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413

        with pytest.raises(botocore.exceptions.ClientError) as missing:
            await kinesis.put_records(StreamName=stream + "-missing", Records=[{"Data": b"x", "PartitionKey": "k"}])
        assert error_code(missing.value) == "ResourceNotFoundException"


async def test_no_throttling_and_no_partial_failures(emulators: Emulators, new_stream):
    """Deviation: PutRecords always answers FailedRecordCount 0 and never throttles (AWS: 1 MiB/s and
    1000 records/s per shard, ProvisionedThroughputExceededException per entry). The sink's retry of failed
    entries and its backoff cannot be exercised here: stub those answers."""
    stream = new_stream(shards=1)
    batch = [{"Data": d, "PartitionKey": "k"} for d in payloads(500)]
    async with aws("kinesis", emulators.kinesis_endpoint) as kinesis:
        started = time.monotonic()
        for _ in range(6):  # 3,000 records, 6 MB into one shard
            answer = await kinesis.put_records(StreamName=stream, Records=batch)
            assert answer["FailedRecordCount"] == 0
            assert all("ErrorCode" not in r for r in answer["Records"])
        assert time.monotonic() - started < 5


async def test_operations_the_emulator_lacks(emulators: Emulators, new_stream):
    """Deviation: no UpdateShardCount (reshard with SplitShard/MergeShards, see split_all_shards), no enhanced
    fan-out, no DescribeLimits; StreamARN is not understood: address streams by StreamName."""
    stream = new_stream(shards=1)
    async with aws("kinesis", emulators.kinesis_endpoint) as kinesis:
        for call in (
            kinesis.update_shard_count(StreamName=stream, TargetShardCount=2, ScalingType="UNIFORM_SCALING"),
            kinesis.describe_limits(),
            kinesis.list_stream_consumers(StreamARN=f"arn:aws:kinesis:us-east-1:000000000000:stream/{stream}"),
        ):
            with pytest.raises(botocore.exceptions.ClientError) as unknown:
                await call
            assert error_code(unknown.value) == "UnknownOperationException"

        arn = (await kinesis.describe_stream_summary(StreamName=stream))["StreamDescriptionSummary"]["StreamARN"]
        with pytest.raises(botocore.exceptions.ClientError) as by_arn:
            await kinesis.put_record(StreamARN=arn, Data=b"x", PartitionKey="k")
        assert error_code(by_arn.value) == "ValidationException"

        # ListShards ignores MaxResults and never pages (AWS pages with NextToken).
        emulators.split_all_shards(stream)
        answer = await kinesis.list_shards(StreamName=stream, MaxResults=1)
        assert len(answer["Shards"]) == 3 and "NextToken" not in answer


# --- Kinesis: resharding ------------------------------------------------------------------------------------


async def test_resharding_closes_parents_and_children_name_them(emulators: Emulators, new_stream):
    stream = new_stream(shards=1)
    parent = "shardId-000000000000"
    async with aws("kinesis", emulators.kinesis_endpoint) as kinesis:
        before = [{"Data": b"before-%d" % i, "PartitionKey": uuid.uuid4().hex} for i in range(50)]
        assert (await kinesis.put_records(StreamName=stream, Records=before))["FailedRecordCount"] == 0

        children = emulators.split_all_shards(stream)  # SplitShard at the middle of the hash range
        shards = {s["ShardId"]: s for s in (await kinesis.list_shards(StreamName=stream))["Shards"]}
        assert "EndingSequenceNumber" in shards[parent]["SequenceNumberRange"]  # the parent is closed
        assert [c["ShardId"] for c in children] == ["shardId-000000000001", "shardId-000000000002"]
        assert all(c["ParentShardId"] == parent for c in children)
        assert children[0]["HashKeyRange"]["StartingHashKey"] == "0"
        assert children[1]["HashKeyRange"]["EndingHashKey"] == str(MAX_HASH_KEY)
        middle = int(children[1]["HashKeyRange"]["StartingHashKey"])
        assert int(children[0]["HashKeyRange"]["EndingHashKey"]) == middle - 1

        after = [{"Data": b"after-%d" % i, "PartitionKey": uuid.uuid4().hex} for i in range(100)]
        answer = await kinesis.put_records(StreamName=stream, Records=after)
        assert {r["ShardId"] for r in answer["Records"]} == {c["ShardId"] for c in children}

        # A closed parent reads to its end: NextShardIterator None after its last record.
        records, ended = await read_shard(kinesis, stream, parent, closed=True)
        assert ended and [r["Data"] for r in records] == [e["Data"] for e in before]
        # Children (read after the parent, as the sink must) hold what came after the split.
        child_data = []
        for child in children:
            records, ended = await read_shard(kinesis, stream, child["ShardId"])
            assert not ended
            child_data += [r["Data"] for r in records]
        assert sorted(child_data) == sorted(e["Data"] for e in after)

        # MergeShards: the merged shard names both parents, which are closed.
        await kinesis.merge_shards(
            StreamName=stream, ShardToMerge=children[0]["ShardId"], AdjacentShardToMerge=children[1]["ShardId"]
        )
        emulators.wait_stream_active(stream)
        shards = (await kinesis.list_shards(StreamName=stream))["Shards"]
        merged = shards[-1]
        assert merged["ParentShardId"] == children[0]["ShardId"]
        assert merged["AdjacentParentShardId"] == children[1]["ShardId"]
        assert merged["HashKeyRange"] == {"StartingHashKey": "0", "EndingHashKey": str(MAX_HASH_KEY)}
        assert [s["ShardId"] for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]] == [
            merged["ShardId"]
        ]
        for child in children:
            _, ended = await read_shard(kinesis, stream, child["ShardId"], closed=True)
            assert ended


# --- DynamoDB: the lease / checkpoint table ----------------------------------------------------------------


async def test_lease_taking_with_conditional_writes(emulators: Emulators, new_table):
    table = new_table(hash_key="leaseKey")
    key = {"leaseKey": {"S": "shardId-000000000000"}}
    async with aws("dynamodb", emulators.dynamodb_endpoint) as dynamodb:
        await dynamodb.put_item(
            TableName=table,
            Item={**key, "leaseOwner": {"S": "a"}, "leaseCounter": {"N": "1"}},
            ConditionExpression="attribute_not_exists(leaseKey)",
        )
        with pytest.raises(botocore.exceptions.ClientError) as taken:
            await dynamodb.put_item(
                TableName=table,
                Item={**key, "leaseOwner": {"S": "b"}, "leaseCounter": {"N": "1"}},
                ConditionExpression="attribute_not_exists(leaseKey)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        assert error_code(taken.value) == "ConditionalCheckFailedException"
        # Deviation: ReturnValuesOnConditionCheckFailure is ignored (AWS returns the current item as "Item").
        assert "Item" not in taken.value.response

        # Steal / renew with a version check: only the writer that saw counter 1 wins.
        won = await dynamodb.update_item(
            TableName=table,
            Key=key,
            UpdateExpression="SET leaseOwner = :me, checkpoint = :cp ADD leaseCounter :one",
            ConditionExpression="leaseCounter = :seen",
            ExpressionAttributeValues={":me": {"S": "b"}, ":cp": {"S": "49"}, ":one": {"N": "1"}, ":seen": {"N": "1"}},
            ReturnValues="ALL_NEW",
        )
        assert won["Attributes"]["leaseOwner"] == {"S": "b"} and won["Attributes"]["leaseCounter"] == {"N": "2"}
        with pytest.raises(botocore.exceptions.ClientError) as stale:
            await dynamodb.update_item(
                TableName=table,
                Key=key,
                UpdateExpression="SET leaseOwner = :me",
                ConditionExpression="leaseCounter = :seen AND leaseOwner = :owner",
                ExpressionAttributeValues={":me": {"S": "c"}, ":seen": {"N": "1"}, ":owner": {"S": "a"}},
            )
        assert error_code(stale.value) == "ConditionalCheckFailedException"

        item = (await dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True))["Item"]
        assert item["leaseOwner"] == {"S": "b"} and item["checkpoint"] == {"S": "49"}
        scanned = (await dynamodb.scan(TableName=table, ConsistentRead=True))["Items"]
        assert scanned == [item]

        # Deviation: no transactions (TransactWriteItems / TransactGetItems).
        with pytest.raises(botocore.exceptions.ClientError) as no_transactions:
            await dynamodb.transact_write_items(TransactItems=[{"Put": {"TableName": table, "Item": key}}])
        assert error_code(no_transactions.value) == "UnknownOperationException"


# --- process life cycle ---------------------------------------------------------------------------------------


async def test_data_dir_survives_restart_and_kill(tmp_path: Path):
    """With a data dir (LevelDB) streams, records and items survive a stop and a kill -9 of the emulators."""
    local = Emulators.isolated(log_path=tmp_path / "emulators.log", data_dir=tmp_path / "data")
    with local:
        local.create_stream("kept", shards=1)
        local.create_table("kept", hash_key="id")
        local.kinesis.put_record(StreamName="kept", Data=b"one", PartitionKey="k")
        local.dynamodb.put_item(TableName="kept", Item={"id": {"S": "one"}})
    local.start()
    try:
        local.kinesis.put_record(StreamName="kept", Data=b"two", PartitionKey="k")
        local.dynamodb.put_item(TableName="kept", Item={"id": {"S": "two"}})
    finally:
        local.kill()
    with local:
        async with aws("kinesis", local.kinesis_endpoint) as kinesis:
            records, _ = await read_shard(kinesis, "kept", "shardId-000000000000")
        assert [r["Data"] for r in records] == [b"one", b"two"]
        assert len(local.dynamodb.scan(TableName="kept")["Items"]) == 2


def test_cli_runs_in_the_foreground_and_stops_on_ctrl_c(tmp_path: Path):
    kinesis_port, dynamodb_port = free_port(), free_port()
    command = [sys.executable, "-m", "scripts.kinesis", "run", "--kinesis-port", str(kinesis_port)]
    proc = subprocess.Popen(
        [*command, "--dynamodb-port", str(dynamodb_port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{kinesis_port}" in output and f"http://127.0.0.1:{dynamodb_port}" in output
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
