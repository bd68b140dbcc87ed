"""Kafka sink: each raw record is one message; a frame is acknowledged once the broker has
acknowledged every message in it (`acks=all` by default). Works with any Kafka 3.x/4.x cluster and
Amazon MSK (TLS, SASL/SCRAM, or IAM through OAUTHBEARER).

There is no local WAL here: the broker is the durable store. When it is unreachable or slow,
readiness turns false (the proxies answer 503 up front) and the bytes waiting for broker
acknowledgements are bounded (`WORKER_MAX_PENDING_BYTES`, then FULL -> 503).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from clickstream_core.handoff import AckStatus
from clickstream_core.settings import env, load, one_of, parse_list, parse_size
from prometheus_client import Counter, Gauge, Histogram

from .base import Health, Sink, SinkContext, SinkRefused

log = logging.getLogger("ingest_worker.sinks.kafka")

DELIVERED = Counter("worker_kafka_records_delivered", "Records acknowledged by the Kafka broker")
FAILED = Counter("worker_kafka_delivery_failures", "Frames whose delivery failed, by error", ["error"])
DELIVERY_SECONDS = Histogram(
    "worker_kafka_delivery_seconds",
    "Time from a frame's arrival to the broker acknowledging all of it",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PENDING_BYTES = Gauge("worker_kafka_pending_bytes", "Bytes handed to the producer, not yet acknowledged")
BROKER_UP = Gauge("worker_kafka_broker_reachable", "1 when the last metadata probe of the cluster succeeded")


@dataclass(frozen=True)
class KafkaSinkConfig:
    brokers: list[str] = env("SINK_KAFKA_BROKERS", [], "Bootstrap servers, comma-separated (required)", parse_list)
    topic: str = env("SINK_KAFKA_TOPIC", "clickstream-raw", "Topic of raw records")
    acks: str = env(
        "SINK_KAFKA_ACKS", "all", "all (every in-sync replica) or 1 (leader only: can lose data)", one_of("all", "1")
    )
    linger_ms: int = env("SINK_KAFKA_LINGER_MS", 2, "Producer linger: wait this long to fill batches")
    max_batch_bytes: int = env(
        "SINK_KAFKA_MAX_BATCH_BYTES", 1024 * 1024, "Producer batch size per partition", parse_size
    )
    max_record_bytes: int = env(
        "SINK_KAFKA_MAX_RECORD_BYTES",
        1024 * 1024 + 65536,
        "Largest raw record sent (match the topic's max.message.bytes); larger requests get 413",
        parse_size,
    )
    compression: str = env(
        "SINK_KAFKA_COMPRESSION",
        "none",
        "none, gzip, snappy, lz4 or zstd",
        one_of("none", "gzip", "snappy", "lz4", "zstd"),
    )
    idempotence: bool = env("SINK_KAFKA_IDEMPOTENCE", False, "Idempotent producer (no duplicates from its own retries)")
    request_timeout_ms: int = env("SINK_KAFKA_REQUEST_TIMEOUT_MS", 10_000, "Produce request timeout")
    security_protocol: str = env(
        "SINK_KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (MSK: SASL_SSL)",
        one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    sasl_mechanism: str = env(
        "SINK_KAFKA_SASL_MECHANISM",
        "",
        "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or AWS_MSK_IAM (OAUTHBEARER signed "
        "with the task's AWS credentials; needs aws-msk-iam-sasl-signer-python)",
        one_of("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "AWS_MSK_IAM"),
    )
    sasl_username: str = env("SINK_KAFKA_SASL_USERNAME", "", "SASL user (PLAIN/SCRAM)")
    sasl_password: str = env("SINK_KAFKA_SASL_PASSWORD", "", "SASL password (PLAIN/SCRAM); never logged")
    probe_interval_s: float = env("SINK_KAFKA_PROBE_INTERVAL_S", 1.0, "How often the cluster metadata is probed")

    def problems(self):
        if not self.brokers:
            yield "SINK_KAFKA_BROKERS is required with SINK=kafka (host:port,host:port)"
        if not self.topic:
            yield "SINK_KAFKA_TOPIC must not be empty"
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL"):
            yield "SINK_KAFKA_SASL_MECHANISM needs SINK_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)"
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not self.sasl_username:
            yield f"SINK_KAFKA_SASL_USERNAME is required with SINK_KAFKA_SASL_MECHANISM={self.sasl_mechanism}"
        if self.linger_ms < 0:
            yield "SINK_KAFKA_LINGER_MS must not be negative"


class MskIamTokenProvider:
    """OAUTHBEARER tokens for MSK IAM auth, signed with the default AWS credential chain."""

    def __init__(self, region: str):
        self.region = region

    async def token(self) -> str:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

        token, _expiry_ms = await asyncio.to_thread(MSKAuthTokenProvider.generate_auth_token, self.region)
        return token

    def extensions(self) -> dict:
        return {}


def producer_options(config: KafkaSinkConfig) -> dict:
    options = {
        "bootstrap_servers": config.brokers,
        "client_id": "clickstream-ingest-worker",
        "acks": "all" if config.acks == "all" else 1,
        "linger_ms": config.linger_ms,
        "max_batch_size": config.max_batch_bytes,
        "max_request_size": max(config.max_record_bytes + 1024, 1024 * 1024),
        "compression_type": None if config.compression == "none" else config.compression,
        "enable_idempotence": config.idempotence,
        "request_timeout_ms": config.request_timeout_ms,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl.create_default_context()
    if config.sasl_mechanism == "AWS_MSK_IAM":
        import os

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        options.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=MskIamTokenProvider(region))
    elif config.sasl_mechanism:
        options.update(
            sasl_mechanism=config.sasl_mechanism,
            sasl_plain_username=config.sasl_username,
            sasl_plain_password=config.sasl_password,
        )
    return options


class KafkaSink(Sink):
    name = "kafka"
    config_class = KafkaSinkConfig

    def __init__(self, config: KafkaSinkConfig, context: SinkContext):
        self.config = config
        self.max_pending_bytes = context.max_pending_bytes
        self.max_record_bytes = config.max_record_bytes
        self.producer: AIOKafkaProducer | None = None
        self.pending_bytes = 0
        self._broker_ok = False
        self._last_error = "not connected yet"
        self._tasks: set[asyncio.Task] = set()
        self._probe: asyncio.Task | None = None
        self._stopping = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str], context: SinkContext) -> KafkaSink:
        return cls(load(KafkaSinkConfig, environ), context)

    async def start(self) -> None:
        self._probe = asyncio.create_task(self._keep_connected(), name="kafka-probe")

    async def _keep_connected(self) -> None:
        """Start the producer (retrying until the cluster answers), then probe its metadata."""
        delay = 0.2
        while self.producer is None:
            producer = AIOKafkaProducer(**producer_options(self.config))
            try:
                await asyncio.wait_for(producer.start(), timeout=10)
            except (KafkaError, OSError, TimeoutError) as exc:
                self._last_error = f"cannot reach Kafka: {exc!r}"
                log.warning("kafka unreachable; retrying", extra={"error": repr(exc)})
                await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer = producer
            log.info("kafka producer started", extra={"brokers": self.config.brokers, "topic": self.config.topic})
        while not self._stopping:
            try:
                await asyncio.wait_for(self.producer.client.fetch_all_metadata(), timeout=2)
                ok = self.producer.client.cluster.brokers() != set()
                self._last_error = "" if ok else "cluster has no live brokers"
            except (KafkaError, OSError, TimeoutError) as exc:
                ok = False
                self._last_error = f"Kafka metadata probe failed: {exc!r}"
            if ok != self._broker_ok:
                log.log(logging.INFO if ok else logging.WARNING, "kafka reachable" if ok else self._last_error)
            self._broker_ok = ok
            BROKER_UP.set(1 if ok else 0)
            await asyncio.sleep(self.config.probe_interval_s)

    def health(self) -> Health:
        if self.producer is None or not self._broker_ok:
            return Health(False, self._last_error or "Kafka unreachable")
        if self.pending_bytes >= self.max_pending_bytes:
            return Health(False, "too many bytes waiting for broker acknowledgements")
        return Health(True)

    def submit(self, records: list[bytes]):
        if self.producer is None or self._stopping:
            raise SinkRefused(AckStatus.UNAVAILABLE, "Kafka producer not running")
        size = sum(len(record) for record in records)
        if self.pending_bytes + size > self.max_pending_bytes:
            raise SinkRefused(AckStatus.FULL, "too many bytes waiting for broker acknowledgements")
        if any(len(record) > self.max_record_bytes for record in records):
            raise SinkRefused(AckStatus.TOO_LARGE, "record over SINK_KAFKA_MAX_RECORD_BYTES")
        self.pending_bytes += size
        PENDING_BYTES.set(self.pending_bytes)
        task = asyncio.create_task(self._deliver(records, size))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, records: list[bytes], size: int) -> int:
        started = time.perf_counter()
        try:
            send = self.producer.send
            topic = self.config.topic
            # Strip the NDJSON newline: a message is one JSON object.
            futures = [await send(topic, record[:-1] if record.endswith(b"\n") else record) for record in records]
            await asyncio.gather(*futures)
        except MessageSizeTooLargeError as exc:
            FAILED.labels("too_large").inc()
            raise SinkRefused(AckStatus.TOO_LARGE, str(exc)) from None
        except Exception as exc:
            FAILED.labels(type(exc).__name__).inc()
            self._last_error = f"delivery failed: {exc!r}"
            raise
        finally:
            self.pending_bytes -= size
            PENDING_BYTES.set(self.pending_bytes)
        DELIVERED.inc(len(records))
        DELIVERY_SECONDS.observe(time.perf_counter() - started)
        return 0

    async def stop(self, deadline_s: float) -> None:
        self._stopping = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=deadline_s)
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()  # flushes what is still batched
