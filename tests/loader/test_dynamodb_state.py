"""The DynamoDB status table (state_dynamodb.DynamoStateStore) against the local AWS API server (moto)."""

from __future__ import annotations

import time
import uuid
from datetime import date

import pytest
from clickstream_loader.discovery import DataFile
from clickstream_loader.state_dynamodb import STATUS_INDEX, DynamoStateStore


@pytest.fixture
def aws_env(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def table_name(aws_env) -> str:
    name = f"status-{uuid.uuid4().hex[:8]}"
    store = DynamoStateStore(name, endpoint_url=aws_env)
    store.create()
    store.create()  # idempotent
    store.close()
    return name


def store_of(name: str, endpoint: str, lease_s: float = 900.0) -> DynamoStateStore:
    return DynamoStateStore(name, lease_s=lease_s, endpoint_url=endpoint)


def data_file(n: int, table: str = "event_v2", app: str = "shop", size: int = 100, mtime: float | None = None):
    key = f"partition_app={app}/partition_year=2026/partition_month=03/partition_day=01/part-{n:03d}.snappy.parquet"
    mtime = 1_772_000_000.25 + n if mtime is None else mtime
    return DataFile(f"s3://bucket/ods/{table}/{key}", table, app, date(2026, 3, 1), size, mtime)


def test_item_layout_and_state_transitions(aws_env, table_name):
    store = store_of(table_name, aws_env)
    files = [data_file(i) for i in range(3)] + [data_file(9, table="session", app="news")]
    assert store.register(files) == 4
    assert store.register(files) == 0  # nothing changed

    item = store.ddb.get_item(TableName=table_name, Key={"s3_uri": {"S": files[0].uri}})["Item"]
    assert item["job_status"] == {"S": "event_v2#NEW"}
    assert item["s3_object_size"] == {"N": "100"}
    assert item["timestamp"] == {"N": str(int(files[0].mtime * 1000))}
    assert item["s3_object"]["S"].startswith("ods/event_v2/partition_app=shop/")
    index = store.ddb.describe_table(TableName=table_name)["Table"]["GlobalSecondaryIndexes"][0]
    assert index["IndexName"] == STATUS_INDEX
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["job_status", "timestamp"]

    assert store.pending_groups() == [("news", "session"), ("shop", "event_v2")]
    claimed = store.claim("shop", "event_v2", 2, "m1")
    assert [r.uri for r in claimed] == [files[0].uri, files[1].uri]  # oldest first, at most the limit
    assert {r.state for r in claimed} == {"ENQUEUED"} and {r.manifest_id for r in claimed} == {"m1"}
    assert store.mark_loaded([r.uri for r in claimed], "other-manifest") == 0  # not ours
    assert store.mark_loaded([r.uri for r in claimed], "m1") == 2
    assert store.mark_loaded([r.uri for r in claimed], "m1") == 0  # already LOADED

    rest = store.claim("shop", "event_v2", 10, "m2")
    assert [r.uri for r in rest] == [files[2].uri]
    store.mark_gone([files[2].uri])
    summary = store.summary()
    assert summary.counts == {("event_v2", "LOADED"): 2, ("event_v2", "GONE"): 1, ("session", "NEW"): 1}
    assert summary.oldest_pending_mtime == files[3].mtime
    assert store.pending_groups() == [("news", "session")]

    # an ETL rerun rewrites a loaded file: back to NEW, claimable again
    changed = data_file(0, size=150)
    assert store.register([changed, *files[1:]]) == 1
    again = store.claim("shop", "event_v2", 10, "m3")
    assert [(r.uri, r.size) for r in again] == [(changed.uri, 150)]

    # retention forgets LOADED / GONE records of old days only
    assert store.forget_before(date(2026, 3, 1)) == 0
    assert store.forget_before(date(2026, 3, 2)) == 2  # files[1] LOADED, files[2] GONE
    assert store.summary().counts == {("event_v2", "ENQUEUED"): 1, ("session", "NEW"): 1}


def test_two_stores_never_claim_the_same_file(aws_env, table_name):
    """Two loaders read the same pending files and then claim from their reads, interleaved: every file goes to
    exactly one of them. (The interleaving is made explicit: moto's threaded server does not serialise concurrent
    conditional writes the way DynamoDB does, so racing threads would test moto, not the claim.)"""
    files = [data_file(i) for i in range(40)]
    store_of(table_name, aws_env).register(files)
    a, b = store_of(table_name, aws_env), store_of(table_name, aws_env)
    claims: dict[str, list[str]] = {"a": [], "b": []}
    conflicts = 0
    for round_no in range(20):
        seen_a = a._candidates("shop", "event_v2", 5)
        seen_b = b._candidates("shop", "event_v2", 5)  # the same files, read before either claims
        if not seen_a and not seen_b:
            break
        a._candidates = lambda app, table, limit, seen=seen_a: seen
        b._candidates = lambda app, table, limit, seen=seen_b: seen
        got_a = a.claim("shop", "event_v2", 5, f"a-{round_no}")
        got_b = b.claim("shop", "event_v2", 5, f"b-{round_no}")
        conflicts += sum(1 for item in seen_b if item["s3_uri"]["S"] in {r.uri for r in got_a})
        claims["a"] += [r.uri for r in got_a]
        claims["b"] += [r.uri for r in got_b]
        del a._candidates, b._candidates
    assert conflicts >= 5  # b tried files a had just claimed, and its conditional writes lost
    assert not set(claims["a"]) & set(claims["b"])
    assert sorted(claims["a"] + claims["b"]) == sorted(f.uri for f in files)


def test_conditional_claim_conflict(aws_env, table_name):
    """Both stores read the same NEW file; only the first conditional write wins, the other skips it."""
    store_of(table_name, aws_env).register([data_file(1)])
    a, b = store_of(table_name, aws_env), store_of(table_name, aws_env)
    seen_by_b = b._candidates("shop", "event_v2", 10)  # b reads NEW ...
    assert len(a.claim("shop", "event_v2", 10, "ma")) == 1  # ... a claims it ...
    b._candidates = lambda app, table, limit: seen_by_b  # ... b acts on its stale read
    assert b.claim("shop", "event_v2", 10, "mb") == []
    item = a.ddb.get_item(TableName=table_name, Key={"s3_uri": {"S": data_file(1).uri}})["Item"]
    assert item["manifest_id"] == {"S": "ma"} and item["attempts"] == {"N": "1"}


def test_enqueued_leftovers_are_repicked_after_the_lease(aws_env, table_name):
    files = [data_file(i) for i in range(3)]
    dead = store_of(table_name, aws_env, lease_s=1.0)
    dead.register(files)
    assert len(dead.claim("shop", "event_v2", 2, "dead-run")) == 2  # the run dies here: two files ENQUEUED

    live = store_of(table_name, aws_env, lease_s=1.0)
    assert live.pending_groups() == [("shop", "event_v2")]
    fresh = live.claim("shop", "event_v2", 10, "next-run")
    assert [r.uri for r in fresh] == [files[2].uri]  # the dead run's claims are younger than the lease
    time.sleep(1.2)
    repicked = live.claim("shop", "event_v2", 10, "later-run")
    assert sorted(r.uri for r in repicked) == sorted(f.uri for f in files)  # every ENQUEUED claim has expired
    assert dead.mark_loaded([files[0].uri], "dead-run") == 0  # the old manifest no longer owns them
    assert live.mark_loaded([r.uri for r in repicked], "later-run") == 3
    assert live.summary().counts == {("event_v2", "LOADED"): 3}
