"""Kinesis source: every shard of a stream, with leases and checkpoints in a DynamoDB table.

Leases (one item per shard) let several instances share a stream without double work: an
instance takes unowned or expired leases up to its fair share, renews them, and loses a shard the
moment a renewal or a checkpoint write fails its condition (another instance took it). Every
write is conditioned on the owner and the lease counter, so a paused, zombie instance cannot
move a checkpoint it no longer owns.

The fair share counts every live instance, including one that holds no lease yet: each instance
keeps a presence item (`worker#{owner}`) in the table alive. An instance over its share hands the
extra shards back the graceful way (lands its batch, then releases the lease), and the newcomer
takes them; leases are never stolen from a live owner, so no object is written by two instances.

Shards are processed parent before child: a shard created by resharding starts only once all its
parents are read to their end (checkpoint SHARD_END), so records of one partition key stay in
order across a reshard. New shards start at TRIM_HORIZON, so nothing written before the first
start is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from botocore.exceptions import ClientError
from clickstream_core.settings import env, load
from prometheus_client import Counter, Gauge

from ..checkpoint import Checkpoint, CheckpointStore, Intent
from ..landing import RECORDS_IN, Batch, Limits
from .base import Source

log = logging.getLogger("kinesis_s3_sink.kinesis")

SHARD_END = "SHARD_END"
PRESENCE_PREFIX = "worker#"  # items that announce an instance, beside the shards' lease items
OWNED = Gauge("sink_kinesis_owned_shards", "Shards this instance holds a lease on")
BEHIND = Gauge("sink_kinesis_millis_behind_latest", "MillisBehindLatest of the last read, per shard", ["shard"])
LEASES = Counter("sink_kinesis_lease_events", "Lease events, by kind", ["event"])


@dataclass(frozen=True)
class KinesisSourceConfig:
    stream: str = env("SOURCE_KINESIS_STREAM", "", "Stream to land (required)")
    lease_table: str = env(
        "SOURCE_KINESIS_LEASE_TABLE",
        "",
        "DynamoDB table of shard leases and checkpoints; default clickstream-s3-sink-{stream} (created when missing)",
    )
    worker_id: str = env("SOURCE_KINESIS_WORKER_ID", "", "This instance's lease owner id; default host-pid")
    lease_duration_s: float = env("SOURCE_KINESIS_LEASE_DURATION_S", 20.0, "A lease not renewed for this long is free")
    poll_interval_s: float = env("SOURCE_KINESIS_POLL_INTERVAL_S", 1.0, "Pause between GetRecords calls of a shard")
    discovery_interval_s: float = env(
        "SOURCE_KINESIS_DISCOVERY_INTERVAL_S", 10.0, "How often shards and leases are re-examined"
    )

    def problems(self):
        if not self.stream:
            yield "SOURCE_KINESIS_STREAM is required with SOURCE=kinesis"
        if self.lease_duration_s < 3:
            yield "SOURCE_KINESIS_LEASE_DURATION_S must be at least 3"


class LeaseLost(Exception):
    pass


@dataclass
class Lease:
    shard: str
    counter: int
    checkpoint: str | None
    parents: list[str] = field(default_factory=list)


def _s(value: str) -> dict:
    return {"S": value}


def _n(value: float) -> dict:
    return {"N": str(value)}


class LeaseTable(CheckpointStore):
    """Leases and checkpoints in DynamoDB; every write is conditioned on our ownership."""

    def __init__(self, client, table: str, owner: str, duration_s: float):
        self.client = client
        self.table = table
        self.owner = owner
        self.duration_s = duration_s
        self.counters: dict[str, int] = {}  # shard -> our lease counter

    async def ensure_table(self) -> None:
        try:
            await self.client.describe_table(TableName=self.table)
            return
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        try:
            await self.client.create_table(
                TableName=self.table,
                KeySchema=[{"AttributeName": "shard_id", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "shard_id", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":  # another instance created it
                raise
        waiter = self.client.get_waiter("table_exists")
        await waiter.wait(TableName=self.table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150})

    async def register(self, shard: str, parents: list[str]) -> None:
        item = {"shard_id": _s(shard), "lease_counter": _n(0), "expires_at": _n(0)}
        if parents:
            item["parents"] = {"SS": parents}
        try:
            await self.client.put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(shard_id)"
            )
            LEASES.labels("registered").inc()
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    async def scan(self) -> list[dict]:
        items, start = [], None
        while True:
            kwargs = {"TableName": self.table, "ConsistentRead": True}
            if start:
                kwargs["ExclusiveStartKey"] = start
            page = await self.client.scan(**kwargs)
            items.extend(page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                return items

    async def take(self, item: dict) -> Lease | None:
        shard = item["shard_id"]["S"]
        counter = int(item["lease_counter"]["N"])
        try:
            await self.client.update_item(
                TableName=self.table,
                Key={"shard_id": _s(shard)},
                UpdateExpression="SET #o = :me, lease_counter = :next, expires_at = :exp",
                ConditionExpression="lease_counter = :seen",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={
                    ":me": _s(self.owner),
                    ":next": _n(counter + 1),
                    ":seen": _n(counter),
                    ":exp": _n(time.time() + self.duration_s),
                },
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return None  # someone else was quicker
            raise
        self.counters[shard] = counter + 1
        LEASES.labels("taken").inc()
        checkpoint = item.get("checkpoint", {}).get("S")
        return Lease(shard, counter + 1, checkpoint, list(item.get("parents", {}).get("SS", [])))

    async def _owned_update(self, shard: str, expression: str, values: dict, names: dict | None = None) -> None:
        counter = self.counters.get(shard)
        if counter is None:
            raise LeaseLost(shard)
        values = {**values, ":me": _s(self.owner), ":c": _n(counter)}
        kwargs = {
            "TableName": self.table,
            "Key": {"shard_id": _s(shard)},
            "UpdateExpression": expression,
            "ConditionExpression": "#o = :me AND lease_counter = :c",
            "ExpressionAttributeNames": {"#o": "owner", **(names or {})},
            "ExpressionAttributeValues": values,
        }
        try:
            await self.client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                self.counters.pop(shard, None)
                LEASES.labels("lost").inc()
                raise LeaseLost(shard) from None
            raise

    async def renew(self, shard: str) -> None:
        await self._owned_update(shard, "SET expires_at = :exp", {":exp": _n(time.time() + self.duration_s)})

    async def announce(self) -> dict:
        """Keep this instance's presence item alive, so that the others count it in the fair share."""
        item = {
            "shard_id": _s(PRESENCE_PREFIX + self.owner),
            "owner": _s(self.owner),
            "expires_at": _n(time.time() + self.duration_s),
        }
        await self.client.put_item(TableName=self.table, Item=item)
        return item

    async def forget(self, item: dict) -> None:
        """Delete a presence item, unless it was refreshed since it was read."""
        try:
            await self.client.delete_item(
                TableName=self.table,
                Key={"shard_id": item["shard_id"]},
                ConditionExpression="expires_at = :seen",
                ExpressionAttributeValues={":seen": item["expires_at"]},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    async def release(self, shard: str) -> None:
        await self._owned_update(shard, "SET expires_at = :zero REMOVE #o", {":zero": _n(0)})
        self.counters.pop(shard, None)
        LEASES.labels("released").inc()

    # ---- CheckpointStore ------------------------------------------------------------------------

    async def load(self, partition: str) -> Checkpoint:
        answer = await self.client.get_item(TableName=self.table, Key={"shard_id": _s(partition)}, ConsistentRead=True)
        item = answer.get("Item", {})
        intent = None
        if "pending_key" in item:
            intent = Intent(item["pending_key"]["S"], item["pending_first"]["S"], item["pending_last"]["S"])
        return Checkpoint(item.get("checkpoint", {}).get("S"), intent)

    async def save_intent(self, partition: str, intent: Intent) -> None:
        await self._owned_update(
            partition,
            "SET pending_key = :k, pending_first = :f, pending_last = :l, expires_at = :exp",
            {
                ":k": _s(intent.key),
                ":f": _s(intent.first),
                ":l": _s(intent.last),
                ":exp": _n(time.time() + self.duration_s),
            },
        )

    async def commit(self, partition: str, position: str) -> None:
        await self._owned_update(
            partition,
            "SET checkpoint = :p, expires_at = :exp REMOVE pending_key, pending_first, pending_last",
            {":p": _s(position), ":exp": _n(time.time() + self.duration_s)},
        )


class KinesisSource(Source):
    name = "kinesis"
    config_class = KinesisSourceConfig

    def __init__(self, config: KinesisSourceConfig, lander_factory, limits: Limits):
        self.config = config
        self.limits = limits
        self.owner = config.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.table_name = config.lease_table or f"clickstream-s3-sink-{config.stream}"
        self._lander_factory = lander_factory
        self.lander = None
        self.leases: LeaseTable | None = None
        self.readers: dict[str, asyncio.Task] = {}
        self.handing_back: set[str] = set()  # shards over our fair share: land, release, stop reading
        self._stop = asyncio.Event()
        self._healthy = False
        self._last_error = "not started"
        self._stack = AsyncExitStack()
        self._presence: dict | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], lander_factory, limits: Limits) -> KinesisSource:
        return cls(load(KinesisSourceConfig, environ), lander_factory, limits)

    async def _clients(self):
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        session = get_session()
        config = AioConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)
        kinesis = await self._stack.enter_async_context(session.create_client("kinesis", region, config=config))
        dynamodb = await self._stack.enter_async_context(session.create_client("dynamodb", region, config=config))
        return kinesis, dynamodb

    async def run(self) -> None:
        self.kinesis, dynamodb = await self._clients()
        self.leases = LeaseTable(dynamodb, self.table_name, self.owner, self.config.lease_duration_s)
        self.lander = self._lander_factory(self.leases)
        try:
            while not self._stop.is_set():
                try:
                    await self.leases.ensure_table()
                    break
                except Exception as exc:
                    self._last_error = f"lease table unavailable: {exc!r}"
                    log.warning("lease table unavailable; retrying", extra={"error": repr(exc)})
                    await asyncio.sleep(1)
            renewer = asyncio.create_task(self._renew_loop())
            while not self._stop.is_set():
                try:
                    await self._rebalance()
                    self._healthy, self._last_error = True, "ok"
                except Exception as exc:
                    self._healthy, self._last_error = False, f"shard discovery failed: {exc!r}"
                    log.warning("shard discovery failed", extra={"error": repr(exc)})
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=self.config.discovery_interval_s)
                except TimeoutError:
                    pass
            renewer.cancel()
            if self.readers:
                await asyncio.gather(*self.readers.values(), return_exceptions=True)
            if self._presence is not None:
                try:  # gone: the others count without us and take the released shards at once
                    await self.leases.forget(self._presence)
                except Exception as exc:
                    log.warning("could not remove the presence item", extra={"error": repr(exc)})
        finally:
            await self._stack.aclose()

    async def _list_shards(self) -> list[dict]:
        shards, token = [], None
        while True:
            kwargs = {"NextToken": token} if token else {"StreamName": self.config.stream}
            page = await self.kinesis.list_shards(**kwargs)
            shards.extend(page["Shards"])
            token = page.get("NextToken")
            if not token:
                return shards

    async def _rebalance(self) -> None:
        self._presence = await self.leases.announce()
        shards = await self._list_shards()
        for shard in shards:
            parents = [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]
            await self.leases.register(shard["ShardId"], parents)
        items = {item["shard_id"]["S"]: item for item in await self.leases.scan()}
        now = time.time()
        live_shards = {shard["ShardId"] for shard in shards}

        def finished(shard_id: str) -> bool:
            item = items.get(shard_id)
            # A parent no longer listed (aged out of retention) counts as read.
            return item is None or item.get("checkpoint", {}).get("S") == SHARD_END or shard_id not in live_shards

        eligible = [
            shard_id
            for shard_id, item in items.items()
            if item.get("checkpoint", {}).get("S") != SHARD_END
            and shard_id in live_shards
            and all(finished(parent) for parent in item.get("parents", {}).get("SS", []))
        ]
        owners = {
            item["owner"]["S"] for item in items.values() if "owner" in item and float(item["expires_at"]["N"]) > now
        } | {self.owner}
        for shard_id, item in items.items():  # instances gone without a word (kill -9) long ago
            if (
                shard_id.startswith(PRESENCE_PREFIX)
                and float(item["expires_at"]["N"]) < now - 10 * self.leases.duration_s
            ):
                await self.leases.forget(item)
        target = math.ceil(len(eligible) / len(owners)) if eligible else 0
        mine = [
            shard_id for shard_id, task in self.readers.items() if not task.done() and shard_id not in self.handing_back
        ]
        # Over our share (another instance joined): hand the extra shards back; their readers land
        # what they batched and release the leases, which the others then take.
        for shard_id in sorted(mine)[target:]:
            self.handing_back.add(shard_id)
            mine.remove(shard_id)
            LEASES.labels("handed_back").inc()
            log.info("handing a lease back for balance", extra={"shard": shard_id, "share": target})
        for shard_id in sorted(eligible):
            if len(mine) >= target or (shard_id in self.readers and not self.readers[shard_id].done()):
                continue
            item = items[shard_id]
            free = "owner" not in item or float(item["expires_at"]["N"]) <= now or item["owner"]["S"] == self.owner
            if not free:
                continue
            lease = await self.leases.take(item)
            if lease is None:
                continue
            mine.append(shard_id)
            self.readers[shard_id] = asyncio.create_task(self._read_shard(lease), name=f"shard-{shard_id}")
            log.info("lease taken", extra={"shard": shard_id, "counter": lease.counter})
        OWNED.set(len(mine))

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_duration_s / 3)
            try:
                self._presence = await self.leases.announce()
            except Exception as exc:
                log.warning("presence renewal failed", extra={"error": repr(exc)})
            for shard_id, task in list(self.readers.items()):
                if task.done():
                    self.readers.pop(shard_id, None)
                    continue
                try:
                    await self.leases.renew(shard_id)
                except LeaseLost:
                    log.warning("lease lost; stopping the shard's reader", extra={"shard": shard_id})
                    task.cancel()
                except Exception as exc:
                    log.warning("lease renewal failed", extra={"shard": shard_id, "error": repr(exc)})

    async def _iterator(self, shard_id: str, after: str | None) -> str:
        kwargs = {"StreamName": self.config.stream, "ShardId": shard_id}
        if after:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        else:
            kwargs.update(ShardIteratorType="TRIM_HORIZON")
        return (await self.kinesis.get_shard_iterator(**kwargs))["ShardIterator"]

    async def _read_shard(self, lease: Lease) -> None:
        shard_id = lease.shard
        try:
            position = await self.lander.resume_position(shard_id)
            iterator = await self._iterator(shard_id, position)
            batch = Batch(shard_id, shard_id)
            while not self._stop.is_set() and shard_id not in self.handing_back:
                try:
                    answer = await self.kinesis.get_records(ShardIterator=iterator, Limit=10_000)
                except ClientError as exc:
                    code = exc.response["Error"]["Code"]
                    if code == "ExpiredIteratorException":
                        iterator = await self._iterator(shard_id, batch.last or position)
                        continue
                    if code in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                        await asyncio.sleep(1.0)
                        continue
                    raise
                records = answer["Records"]
                for record in records:
                    batch.add(record["SequenceNumber"], record["Data"])
                RECORDS_IN.inc(len(records))
                BEHIND.labels(shard_id).set(answer.get("MillisBehindLatest", 0))
                iterator = answer.get("NextShardIterator")
                if iterator is None:  # a closed parent, read to its end
                    await self.lander.land(batch)
                    await self.leases.commit(shard_id, SHARD_END)
                    await self.leases.release(shard_id)
                    log.info("shard finished", extra={"shard": shard_id})
                    return
                if batch.due(self.limits):
                    await self.lander.land(batch)
                    position = batch.last
                    batch = Batch(shard_id, shard_id)
                if not records:
                    await asyncio.sleep(self.config.poll_interval_s)
            await self.lander.land(batch)  # draining or handing back: land what is batched, then let the lease go
            await self.leases.release(shard_id)
        except LeaseLost:
            log.warning("lease lost while reading; the new owner reads from the checkpoint", extra={"shard": shard_id})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._last_error = f"shard {shard_id}: {exc!r}"
            log.exception("shard reader failed; the lease will be retaken", extra={"shard": shard_id})
        finally:
            self.handing_back.discard(shard_id)

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> tuple[bool, str]:
        return (True, "ok") if self._healthy else (False, self._last_error)
