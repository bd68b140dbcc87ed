"""Spark reaches an S3 API server through S3A: raw objects in, partitioned Parquet out and back.

Needs the jars of `python -m scripts.spark_jars fetch` on the classpath when the shared session starts
(build_session adds them); the endpoint is set afterwards, per bucket, as the job does when it learns it late.
"""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import boto3
import orjson
import pytest
from clickstream_core import raw_record
from clickstream_etl.decode import read_requests
from clickstream_etl.spark import configure_s3a_endpoint, s3a_jars

from scripts import spark_jars

REFERENCE_RAW = Path("/work/shared/fixtures/reference-raw")
KEYS = {"access_key": "testing", "secret_key": "testing"}

pytestmark = pytest.mark.skipif(
    not any(Path(jar).name.startswith("hadoop-aws-") for jar in s3a_jars()),
    reason="no S3A jars: run `uv run python -m scripts.spark_jars fetch` (scripts/setup.sh test does)",
)


@pytest.fixture
def bucket(spark, moto_endpoint) -> str:
    # A fresh bucket per test: S3A caches a FileSystem per bucket, created with the options of its first use.
    name = f"s3a-{uuid.uuid4().hex[:12]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    configure_s3a_endpoint(spark, moto_endpoint, bucket=name, **KEYS)
    return name


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["access_key"],
        aws_secret_access_key=KEYS["secret_key"],
    )


def built_line() -> bytes:
    return raw_record.build_line(
        body='[{"event_type":"_page_view"}]',
        ip="203.0.113.9",
        rid="f" * 32,
        ua="Mozilla/5.0",
        uri="/collect?appId=app3&upload_timestamp=1704326282000",
        path="/collect",
        platform="Web",
        app_id="app3",
        compression=None,
        upload_timestamp="1704326282000",
        fake_ip=None,
        arrival=raw_record.Arrival.at(1_704_326_282_699),
    )


def reference_lines() -> list[bytes]:
    lines = []
    for path in sorted(REFERENCE_RAW.glob("*.json")):
        lines += [line.strip() + b"\n" for line in path.read_bytes().splitlines() if line.strip()]
    return lines


def test_jars_match_pyspark_hadoop_and_duplicate_none_of_its_libraries():
    names = [Path(jar).name for jar in s3a_jars()]
    pyspark_names = [p.name for p in spark_jars.pyspark_jars_dir().glob("*.jar")]
    hadoop = spark_jars.hadoop_version()

    assert f"hadoop-aws-{hadoop}.jar" in names
    spark_jars.check_jars(names, hadoop, pyspark_names)  # raises on a missing module or a second copy
    assert not [name for name in names if name.startswith("bundle-")]
    with pytest.raises(RuntimeError, match="duplicate"):
        spark_jars.check_jars([*names, "netty-common-4.1.130.Final.jar"], hadoop, pyspark_names)


def test_raw_gzip_ndjson_object_is_read_through_s3a(spark, moto_endpoint, bucket):
    lines = [*reference_lines(), built_line()]
    key = "raw/year=2024/month=01/day=04/hour=00/part-0001.gz"
    s3_client(moto_endpoint).put_object(Bucket=bucket, Key=key, Body=gzip.compress(b"".join(lines)))
    expected = {orjson.loads(line)["rid"]: orjson.loads(line) for line in lines}

    rows = {row.rid: row for row in read_requests(spark, [f"s3a://{bucket}/{key}"]).collect()}

    assert set(rows) == set(expected)
    assert all(row.error is None for row in rows.values())
    assert all(row.input_file == f"s3a://{bucket}/{key}" for row in rows.values())
    for rid, record in expected.items():
        assert rows[rid].app_id == record["appId"]
        # The reference's gzip bodies arrive inflated, i.e. the whole line crossed S3A intact.
        assert rows[rid].body_kind == ("gzip" if record["compression"] == "gzip" else "json")
        assert rows[rid].body.lstrip()[:1] in ("[", "{")
    assert rows["f" * 32].ingest_time_msec == 1_704_326_282_699
    assert rows["f" * 32].upload_time_msec == 1_704_326_282_000


def test_partitioned_parquet_round_trips_through_s3a(spark, moto_endpoint, bucket):
    data = [
        ("app1", "2024-01-04", "e1", 1),
        ("app1", "2024-01-05", "e2", 2),
        ("app2", "2024-01-04", "e3", 3),
        ("app2", "2024-01-04", "e4", 4),
    ]
    frame = spark.createDataFrame(data, "app_id string, event_date string, event_id string, n int")
    target = f"s3a://{bucket}/clickstream/event_v2"

    frame.write.mode("overwrite").partitionBy("app_id", "event_date").parquet(target)
    back = spark.read.schema(frame.schema).parquet(target)

    assert sorted(tuple(row) for row in back.select("app_id", "event_date", "event_id", "n").collect()) == data
    keys = [
        obj["Key"]
        for page in s3_client(moto_endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    folders = {key.rsplit("/", 1)[0] for key in keys if key.endswith(".parquet")}
    assert folders == {
        "clickstream/event_v2/app_id=app1/event_date=2024-01-04",
        "clickstream/event_v2/app_id=app1/event_date=2024-01-05",
        "clickstream/event_v2/app_id=app2/event_date=2024-01-04",
    }
    # The commit (dynamic partition overwrite: staged, then renamed, i.e. S3 copies) left no work files behind.
    assert not [key for key in keys if "_temporary" in key or ".spark-staging" in key]
