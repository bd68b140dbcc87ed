"""The one place that builds a SparkSession for the job, the benchmark and the tests.

Local mode is the embedded default; on EMR Serverless or any cluster `spark-submit` has already
configured the master, so only the settings the job relies on are applied. `s3://` and `s3a://`
go through Hadoop's S3A connector: its jars (hadoop-aws of pyspark's Hadoop version plus the AWS
SDK v2 modules it needs) are fetched from Maven Central by `scripts/spark_jars.py` into a cache
outside the repo; a local S3 API server is reached through `AWS_ENDPOINT_URL_S3`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pyspark.sql import SparkSession

JARS_DIR_ENV = "CLICKSTREAM_SPARK_JARS"
DEFAULT_JARS_DIR = Path.home() / ".cache" / "clickstream" / "spark-jars"


def s3a_jars(jars_dir: Path | None = None) -> list[str]:
    folder = Path(os.environ.get(JARS_DIR_ENV) or jars_dir or DEFAULT_JARS_DIR)
    return sorted(str(p) for p in folder.glob("*.jar")) if folder.is_dir() else []


# S3A's default "disk" buffer asks Hadoop for the local FileSystem and casts it to LocalFileSystem, which fails when
# fs.file.impl is RawLocalFileSystem (set below so local output has no .crc files); off-heap buffers need no disk.
S3A_UPLOAD_BUFFER = "bytebuffer"


def _s3a_settings() -> dict[str, str]:
    prefix = "spark.hadoop.fs.s3a."
    settings = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        prefix + "aws.credentials.provider": (
            "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider,"
            "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
        ),
        # The job's output is committed by renames of its own (see output.py), so the classic
        # committer's temporary files never reach the final layout.
        prefix + "fast.upload": "true",
        prefix + "fast.upload.buffer": S3A_UPLOAD_BUFFER,
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        settings[prefix + "endpoint"] = endpoint
        settings[prefix + "path.style.access"] = "true"
        settings[prefix + "connection.ssl.enabled"] = str(endpoint.startswith("https")).lower()
        settings[prefix + "endpoint.region"] = os.environ.get("AWS_REGION", "us-east-1")
    for env_name, key in (("AWS_ACCESS_KEY_ID", "access.key"), ("AWS_SECRET_ACCESS_KEY", "secret.key")):
        if os.environ.get(env_name):
            settings[prefix + key] = os.environ[env_name]
    return settings


def configure_s3a_endpoint(
    spark: SparkSession,
    endpoint: str,
    bucket: str | None = None,
    region: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> None:
    """Point S3A at an S3 API server on a session that is already running.

    `spark.hadoop.*` settings only count when the session starts, and a test run shares one session that may
    predate the endpoint (a moto server started later, or AWS_ENDPOINT_URL_S3 set after start-up). The live Hadoop
    configuration can still be changed, and with `bucket` only that bucket's per-bucket options
    (`fs.s3a.bucket.<bucket>.*`) are set, leaving real S3 for the others. S3A caches one FileSystem per bucket, so
    call this before the first access to the bucket: an instance already created keeps its endpoint.
    Keys default to AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; when there are any, they are used directly rather
    than through the default provider chain, which would look for instance credentials a local server lacks.
    """
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    prefix = f"fs.s3a.bucket.{bucket}." if bucket else "fs.s3a."
    conf.set(prefix + "endpoint", endpoint)
    # Local servers serve buckets under the path, not as virtual hosts (no wildcard DNS for 127.0.0.1).
    conf.set(prefix + "path.style.access", "true")
    conf.set(prefix + "connection.ssl.enabled", str(endpoint.startswith("https")).lower())
    conf.set(prefix + "endpoint.region", region or os.environ.get("AWS_REGION") or "us-east-1")
    conf.set(prefix + "fast.upload.buffer", S3A_UPLOAD_BUFFER)
    access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        conf.set(prefix + "access.key", access_key)
        conf.set(prefix + "secret.key", secret_key)
        conf.set(prefix + "aws.credentials.provider", "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider")


def build_session(
    master: str | None = None,
    app_name: str = "clickstream-etl",
    shuffle_partitions: int | None = None,
    driver_memory: str | None = None,
    extra: dict[str, str] | None = None,
) -> SparkSession:
    """A session configured for the job; an already running session is reused and adjusted."""
    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit (EMR, a cluster) the launcher already chose the master.
    chosen = master
    if master or not os.environ.get("PYSPARK_GATEWAY_PORT"):
        chosen = master or os.environ.get("SPARK_MASTER", "local[*]")
        builder = builder.master(chosen)
    cores = os.cpu_count() or 2
    settings = {
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.mapKeyDedupPolicy": "LAST_WIN",
        # Input is whatever clients sent: a bad value becomes null (and maybe a bad row), never a
        # failed job, so the SQL functions run with Spark 3's lenient semantics.
        "spark.sql.ansi.enabled": "false",
        "spark.sql.shuffle.partitions": str(shuffle_partitions or max(4, cores * 2)),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # No .crc side files next to local output: readers such as DuckDB glob the folders.
        "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
        "spark.hadoop.fs.file.impl.disable.cache": "true",
        "spark.sql.adaptive.autoBroadcastJoinThreshold": "64MB",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    }
    if chosen and chosen.startswith("local"):
        # Local mode talks to itself only: bind the driver to the loopback interface.
        settings["spark.driver.host"] = os.environ.get("SPARK_DRIVER_HOST", "127.0.0.1")
        settings["spark.driver.bindAddress"] = os.environ.get("SPARK_DRIVER_BIND_ADDRESS", "127.0.0.1")
    if driver_memory:
        settings["spark.driver.memory"] = driver_memory
    jars = s3a_jars()
    if jars:
        settings["spark.jars"] = ",".join(jars)
        settings.update(_s3a_settings())
    settings.update(extra or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return session


def to_hadoop_uri(uri: str) -> str:
    """`s3://` is read through S3A; a plain path becomes `file://`."""
    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://") :]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        return uri
    # Not Path.as_uri(): it would percent-encode the '=' of partition folders.
    return "file://" + str(Path(uri).resolve())
