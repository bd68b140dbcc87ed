"""File states in DynamoDB: the reference's status table (reference-system.md §5.2 step 1), as a `StateStore`.

One item per file, partition key `s3_uri`; the reference's attributes `timestamp` (the object's write time, ms),
`s3_object` (the key), `s3_object_size` and `job_status = "<table>#NEW|ENQUEUED|LOADED|GONE"`, plus what the
loader needs: `table_name`, `app_id`, `event_day`, `mtime` (seconds, exact: a changed file goes back to NEW),
`manifest_id`, `attempts`, `enqueued_at`, `loaded_at`. A global secondary index on (`job_status`, `timestamp`)
gives each table's NEW / ENQUEUED files oldest first, as the reference's manifest Lambda queries them.

Claims are compare-and-swap writes: a file moves to ENQUEUED under a manifest only if it still has the status
and manifest the claimer read (`ConditionExpression`), so two loaders never claim the same file; the loser of a
race skips it. ENQUEUED files of a run that died are re-picked once their claim is older than `lease_s` (a live
loader's manifest is left alone meanwhile). `mark_loaded` only moves files still ENQUEUED under the caller's
manifest.

DynamoDB cannot share the warehouse's transaction, so the state update follows the warehouse commit: a crash
between the two leaves the files ENQUEUED and the next run loads them again, which the merge keys make
idempotent (see docs/loader.md, "Redshift").

The interface is synchronous (as `StateStore` is), so this uses botocore's synchronous client; the endpoint
comes from `endpoint_url` or the standard `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL` variables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from urllib.parse import urlparse

import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

from .discovery import DataFile
from .schema import TABLE_NAMES
from .state import ENQUEUED, GONE, LOADED, NEW, STATES, FileRecord, StateStore, Summary

STATUS_INDEX = "status_timestamp_index"


def job_status(table: str, state: str) -> str:
    return f"{table}#{state}"


def _s(value: str) -> dict:
    return {"S": value}


def _n(value) -> dict:
    return {"N": str(value)}


def _object_key(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.path.lstrip("/") if parsed.scheme in ("s3", "s3a") else uri


def _conditional_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoStateStore(StateStore):
    """The status table `table_name` (created on `create()` when it does not exist, on-demand capacity)."""

    def __init__(
        self,
        table_name: str,
        lease_s: float = 900.0,
        endpoint_url: str | None = None,
        region: str | None = None,
        client=None,
    ):
        self.table_name = table_name
        self.lease_s = lease_s
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.ddb = client or botocore.session.get_session().create_client(
            "dynamodb",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=5, read_timeout=30),
        )
        self._tables: dict[str, str] = {}  # uri -> table of files this store claimed (for the status value)

    def close(self) -> None:
        self.ddb.close()

    # ---------------------------------------------------------------------------------------------- table

    def create(self) -> None:
        """The status table with its index, unless it exists (the reference's stack creates it in AWS)."""
        try:
            self.ddb.describe_table(TableName=self.table_name)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
        try:
            self.ddb.create_table(
                TableName=self.table_name,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "s3_uri", "AttributeType": "S"},
                    {"AttributeName": "job_status", "AttributeType": "S"},
                    {"AttributeName": "timestamp", "AttributeType": "N"},
                ],
                KeySchema=[{"AttributeName": "s3_uri", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": STATUS_INDEX,
                        "KeySchema": [
                            {"AttributeName": "job_status", "KeyType": "HASH"},
                            {"AttributeName": "timestamp", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":  # another loader created it
                raise
        self.ddb.get_waiter("table_exists").wait(TableName=self.table_name, WaiterConfig={"Delay": 1})

    # ---------------------------------------------------------------------------------------------- reads

    def _scan(self, **kwargs) -> Iterable[dict]:
        for page in self.ddb.get_paginator("scan").paginate(TableName=self.table_name, **kwargs):
            yield from page.get("Items", [])

    def _by_status(self, table: str, state: str, values: dict | None = None, **kwargs) -> Iterable[dict]:
        """Items of one `<table>#<state>`, oldest `timestamp` first (the GSI)."""
        pages = self.ddb.get_paginator("query").paginate(
            TableName=self.table_name,
            IndexName=STATUS_INDEX,
            KeyConditionExpression="job_status = :status",
            ExpressionAttributeValues={":status": _s(job_status(table, state)), **(values or {})},
            ScanIndexForward=True,
            **kwargs,
        )
        for page in pages:
            yield from page.get("Items", [])

    def known(self) -> dict[str, tuple[int, float]]:
        items = self._scan(
            ProjectionExpression="s3_uri, s3_object_size, mtime", ConsistentRead=True
        )  # one paginated read per pass, like the PostgreSQL store's
        return {
            i["s3_uri"]["S"]: (int(i["s3_object_size"]["N"]), float(i["mtime"]["N"]))
            for i in items
            if "mtime" in i and "s3_object_size" in i
        }

    @staticmethod
    def _record(item: dict) -> FileRecord:
        table = item["table_name"]["S"]
        state = item["job_status"]["S"].split("#", 1)[1]
        return FileRecord(
            item["s3_uri"]["S"],
            table,
            item["app_id"]["S"],
            date.fromisoformat(item["event_day"]["S"]),
            int(item["s3_object_size"]["N"]),
            float(item["mtime"]["N"]),
            state,
            item["manifest_id"]["S"] if "manifest_id" in item else None,
        )

    # --------------------------------------------------------------------------------------------- writes

    def register(self, files: Iterable[DataFile]) -> int:
        known = self.known()
        fresh = [f for f in files if known.get(f.uri) != (f.size, f.mtime)]
        registered = 0
        now = _n(Decimal(str(time.time())))
        for f in fresh:
            try:
                self.ddb.put_item(
                    TableName=self.table_name,
                    Item={
                        "s3_uri": _s(f.uri),
                        "timestamp": _n(int(f.mtime * 1000)),
                        "s3_object": _s(_object_key(f.uri)),
                        "s3_object_size": _n(f.size),
                        "job_status": _s(job_status(f.table, NEW)),
                        "table_name": _s(f.table),
                        "app_id": _s(f.app_id),
                        "event_day": _s(f.event_day.isoformat()),
                        "mtime": _n(repr(f.mtime)),
                        "attempts": _n(0),
                        "discovered_at": now,
                    },
                    # new, or changed since it was recorded (an ETL rerun): another loader may have just done it
                    ConditionExpression="attribute_not_exists(s3_uri) OR s3_object_size <> :size OR mtime <> :mtime",
                    ExpressionAttributeValues={":size": _n(f.size), ":mtime": _n(repr(f.mtime))},
                )
                registered += 1
            except ClientError as exc:
                if not _conditional_failed(exc):
                    raise
        return registered

    def pending_groups(self) -> list[tuple[str, str]]:
        groups = set()
        for table in TABLE_NAMES:
            for state in (NEW, ENQUEUED):
                for item in self._by_status(table, state, ProjectionExpression="app_id"):
                    groups.add((item["app_id"]["S"], table))
        return sorted(groups)

    def _candidates(self, app_id: str, table: str, limit: int) -> list[dict]:
        expired = time.time() - self.lease_s
        found = []
        for state in (NEW, ENQUEUED):
            for item in self._by_status(table, state, FilterExpression="app_id = :app", values={":app": _s(app_id)}):
                if state == ENQUEUED and float(item.get("enqueued_at", {"N": "0"})["N"]) > expired:
                    continue  # a live loader's manifest (its claim is younger than the lease)
                found.append(item)
        found.sort(key=lambda i: (float(i["mtime"]["N"]), i["s3_uri"]["S"]))
        return found[: limit * 2]  # some may be lost to a concurrent claimer

    def claim(self, app_id: str, table: str, limit: int, manifest_id: str) -> list[FileRecord]:
        claimed: list[FileRecord] = []
        now = time.time()
        for item in self._candidates(app_id, table, limit):
            if len(claimed) >= limit:
                break
            seen_status = item["job_status"]["S"]
            values = {
                ":enqueued": _s(job_status(table, ENQUEUED)),
                ":manifest": _s(manifest_id),
                ":now": _n(Decimal(str(now))),
                ":one": _n(1),
                ":seen": _s(seen_status),
                ":size": item["s3_object_size"],
                ":mtime": item["mtime"],
            }
            # compare-and-swap on what was read: the same status, manifest (or none), size and mtime
            condition = "job_status = :seen AND s3_object_size = :size AND mtime = :mtime AND "
            if "manifest_id" in item:
                condition += "manifest_id = :seen_manifest"
                values[":seen_manifest"] = item["manifest_id"]
            else:
                condition += "attribute_not_exists(manifest_id)"
            try:
                answer = self.ddb.update_item(
                    TableName=self.table_name,
                    Key={"s3_uri": item["s3_uri"]},
                    UpdateExpression=(
                        "SET job_status = :enqueued, manifest_id = :manifest, enqueued_at = :now, "
                        "attempts = if_not_exists(attempts, :zero) + :one"
                    ),
                    ConditionExpression=condition,
                    ExpressionAttributeValues={**values, ":zero": _n(0)},
                    ReturnValues="ALL_NEW",
                )
            except ClientError as exc:
                if _conditional_failed(exc):
                    continue  # another loader claimed it (or it changed) since the query
                raise
            record = self._record(answer["Attributes"])
            self._tables[record.uri] = table
            claimed.append(record)
        return sorted(claimed, key=lambda r: (r.mtime, r.uri))

    def _table_of(self, uri: str) -> str | None:
        if uri in self._tables:
            return self._tables[uri]
        item = self.ddb.get_item(
            TableName=self.table_name, Key={"s3_uri": _s(uri)}, ProjectionExpression="table_name", ConsistentRead=True
        ).get("Item")
        return item["table_name"]["S"] if item else None

    def _move(self, uri: str, state: str, condition: str | None, values: dict, extra: str = "") -> bool:
        table = self._table_of(uri)
        if table is None:
            return False
        kwargs = {"ConditionExpression": condition} if condition else {}
        try:
            self.ddb.update_item(
                TableName=self.table_name,
                Key={"s3_uri": _s(uri)},
                UpdateExpression=f"SET job_status = :new{extra}",
                ExpressionAttributeValues={":new": _s(job_status(table, state)), **values},
                **kwargs,
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def mark_loaded(self, uris: list[str], manifest_id: str) -> int:
        moved = 0
        for uri in uris:
            table = self._table_of(uri)
            if table is None:
                continue
            moved += self._move(
                uri,
                LOADED,
                "job_status = :enqueued AND manifest_id = :manifest",
                {
                    ":enqueued": _s(job_status(table, ENQUEUED)),
                    ":manifest": _s(manifest_id),
                    ":now": _n(Decimal(str(time.time()))),
                },
                extra=", loaded_at = :now",
            )
        return moved

    def mark_gone(self, uris: list[str]) -> None:
        for uri in uris:
            self._move(uri, GONE, "attribute_exists(s3_uri)", {})

    # ---------------------------------------------------------------------------------------- bookkeeping

    def summary(self) -> Summary:
        counts: dict[tuple[str, str], int] = {}
        oldest: float | None = None
        for table in TABLE_NAMES:
            for state in STATES:
                pages = self.ddb.get_paginator("query").paginate(
                    TableName=self.table_name,
                    IndexName=STATUS_INDEX,
                    KeyConditionExpression="job_status = :status",
                    ExpressionAttributeValues={":status": _s(job_status(table, state))},
                    Select="COUNT",
                )
                n = sum(page.get("Count", 0) for page in pages)
                if n:
                    counts[(table, state)] = n
                if state in (NEW, ENQUEUED) and n:
                    first = self.ddb.query(
                        TableName=self.table_name,
                        IndexName=STATUS_INDEX,
                        KeyConditionExpression="job_status = :status",
                        ExpressionAttributeValues={":status": _s(job_status(table, state))},
                        ScanIndexForward=True,
                        Limit=1,
                    ).get("Items", [])
                    if first:
                        mtime = float(first[0]["mtime"]["N"])
                        oldest = mtime if oldest is None else min(oldest, mtime)
        return Summary(counts, oldest)

    def forget_before(self, day: date) -> int:
        doomed = []
        for table in TABLE_NAMES:
            for state in (LOADED, GONE):
                doomed += [
                    item["s3_uri"]
                    for item in self._by_status(
                        table,
                        state,
                        FilterExpression="event_day < :day",
                        values={":day": _s(day.isoformat())},
                        ProjectionExpression="s3_uri",
                    )
                ]
        for start in range(0, len(doomed), 25):
            requests = [{"DeleteRequest": {"Key": {"s3_uri": key}}} for key in doomed[start : start + 25]]
            while requests:
                answer = self.ddb.batch_write_item(RequestItems={self.table_name: requests})
                requests = answer.get("UnprocessedItems", {}).get(self.table_name, [])
                if requests:
                    time.sleep(0.2)
        return len(doomed)
