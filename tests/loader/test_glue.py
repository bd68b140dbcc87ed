"""The Athena side (glue.py) against the local AWS API server's Glue (moto): the database, the four tables and the
partitions are really created and listed back; the named queries are rendered for Athena and parse."""

from __future__ import annotations

import uuid
from datetime import date

import botocore.session
import pytest
import sqlglot
from clickstream_core.tables import PARTITION_COLUMNS, TABLES
from clickstream_loader.config import LoaderConfig
from clickstream_loader.discovery import DataFile
from clickstream_loader.glue import named_queries, sync_catalog
from clickstream_loader.runner import run_once
from clickstream_loader.schema import TABLE_NAMES


@pytest.fixture
def glue(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return botocore.session.get_session().create_client("glue", region_name="us-east-1", endpoint_url=moto_endpoint)


def data_file(table: str, app: str, day: date, n: int = 0) -> DataFile:
    key = (
        f"partition_app={app}/partition_year={day.year}/partition_month={day.month:02d}/partition_day={day.day:02d}"
        f"/p{n}.snappy.parquet"
    )
    return DataFile(f"s3://lake/ods/{table}/{key}", table, app, day, 10, 1.0)


def partitions(glue, database: str, table: str) -> list[tuple[list[str], str]]:
    found = []
    for page in glue.get_paginator("get_partitions").paginate(DatabaseName=database, TableName=table):
        found += [(p["Values"], p["StorageDescriptor"]["Location"]) for p in page["Partitions"]]
    return sorted(found)


def test_database_tables_and_partitions(glue):
    database = f"clickstream_{uuid.uuid4().hex[:8]}"
    files = [
        data_file("event_v2", "shop", date(2026, 3, 1), 0),
        data_file("event_v2", "shop", date(2026, 3, 1), 1),  # same partition
        data_file("event_v2", "shop", date(2026, 3, 2)),
        data_file("event_v2", "news", date(2026, 3, 1)),
        data_file("session", "shop", date(2026, 3, 1)),
    ]
    assert sync_catalog(database, "s3://lake/ods", files) == 4

    assert glue.get_database(Name=database)["Database"]["Name"] == database
    tables = {t["Name"]: t for t in glue.get_tables(DatabaseName=database)["TableList"]}
    assert sorted(tables) == sorted(TABLE_NAMES)
    event = tables["event_v2"]
    descriptor = event["StorageDescriptor"]
    assert descriptor["Location"] == "s3://lake/ods/event_v2/"
    assert (
        descriptor["SerdeInfo"]["SerializationLibrary"] == "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    )
    assert [c["Name"] for c in descriptor["Columns"]] == TABLES["event_v2"].names
    types = {c["Name"]: c["Type"] for c in descriptor["Columns"]}
    assert types["event_timestamp"] == "timestamp" and types["event_id"] == "string"
    assert types["custom_parameters"] == "map<string,struct<value:string,type:string>>"
    assert [(k["Name"], k["Type"]) for k in event["PartitionKeys"]] == [(c, "string") for c in PARTITION_COLUMNS]

    assert partitions(glue, database, "event_v2") == [
        (
            ["news", "2026", "03", "01"],
            "s3://lake/ods/event_v2/partition_app=news/partition_year=2026/partition_month=03/partition_day=01/",
        ),
        (
            ["shop", "2026", "03", "01"],
            "s3://lake/ods/event_v2/partition_app=shop/partition_year=2026/partition_month=03/partition_day=01/",
        ),
        (
            ["shop", "2026", "03", "02"],
            "s3://lake/ods/event_v2/partition_app=shop/partition_year=2026/partition_month=03/partition_day=02/",
        ),
    ]
    assert [v for v, _ in partitions(glue, database, "session")] == [["shop", "2026", "03", "01"]]
    assert partitions(glue, database, "user_v2") == []

    # the next pass: existing database, tables and partitions are not errors; only the new day is created
    more = [*files, data_file("event_v2", "shop", date(2026, 3, 3))]
    assert sync_catalog(database, "s3://lake/ods", more) == 1
    assert len(partitions(glue, database, "event_v2")) == 4


def test_run_once_adds_partitions_alongside_the_engine(glue, moto_endpoint, tmp_path):
    """LOADER_GLUE_DATABASE: run_once creates the catalog and the listed files' partitions before the engine's step
    (whatever that step does: here duckdb, which the configuration would refuse on an S3 source)."""
    session = botocore.session.get_session()
    s3 = session.create_client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    key = "ods/item_v2/partition_app=shop/partition_year=2026/partition_month=03/partition_day=05/p.snappy.parquet"
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    database = f"clickstream_{uuid.uuid4().hex[:8]}"
    config = LoaderConfig(
        engine="duckdb", source=f"s3://{bucket}/ods", state_dir=str(tmp_path), glue_database=database, reporting=False
    )
    problems = list(config.problems())
    assert problems and all("duckdb" in p for p in problems)  # duckdb reads local folders; glue itself is fine
    report = run_once(config)
    assert [v for v, _ in partitions(glue, database, "item_v2")] == [["shop", "2026", "03", "05"]]
    assert report.glue_partitions == 1


def test_glue_config_problems():
    assert "lower-case" in "\n".join(LoaderConfig(source="/x", glue_database="Bad-Name").problems())
    assert "needs LOADER_SOURCE_URI on S3" in "\n".join(LoaderConfig(source="/x", glue_database="db").problems())


def test_named_queries_render_for_athena():
    queries = named_queries("clickstream_db")
    assert sorted(queries) == [
        "Clickstream - All Data Query",
        "Clickstream - Event Query",
        "Clickstream - Item Query",
        "Clickstream - Session Query",
        "Clickstream - User Query",
    ]
    for name, text in queries.items():
        tree = sqlglot.parse_one(text, read="athena")
        assert text.count("?") == 3, name  # app id, first day, last day
        assert "partition_app = ?" in text and "BETWEEN ? AND ?" in text
        names = [s.alias_or_name for s in tree.selects]
        assert len(names) == len(set(names)), name  # no ambiguous output column
    assert '"clickstream_db"."event_v2"' in queries["Clickstream - All Data Query"]
    assert "LEFT JOIN" in queries["Clickstream - All Data Query"]
