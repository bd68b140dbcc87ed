"""The sink's configuration: one object, read from the environment at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from clickstream_core.settings import env, one_of, parse_size

from .sources import SOURCES


@dataclass(frozen=True)
class SinkConfig:
    source: str = env("SOURCE", "kinesis", "Stream to land: " + ", ".join(SOURCES), one_of(*SOURCES))
    uri: str = env("SINK_S3_URI", "", "Destination: s3://bucket[/prefix] or file:///path (required)")
    prefix: str = env("SINK_S3_PREFIX", "", "Key prefix of raw objects; default clickstream/{project_id}/data/buffer/")
    invalid_prefix: str = env(
        "SINK_S3_INVALID_PREFIX",
        "",
        "Key prefix of records that are not JSON objects; default clickstream/{project_id}/data/buffer-invalid/",
    )
    app_config: str = env("APP_CONFIG", "", "App configuration YAML (project id); empty = dev")
    max_records: int = env("BATCH_MAX_RECORDS", 10_000, "Write an object at this many records")
    max_bytes: int = env("BATCH_MAX_BYTES", 64 * 1024 * 1024, "Write an object at this many bytes", parse_size)
    max_age_s: float = env("BATCH_MAX_AGE_S", 300.0, "Write an object at this age (10 s in make up)")
    gzip_level: int = env("SINK_S3_GZIP_LEVEL", 2, "Compression level of objects, 0-3 (ISA-L igzip)")
    http_host: str = env("SINK_HTTP_HOST", "127.0.0.1", "Address of /health, /ready and /metrics")
    http_port: int = env("SINK_HTTP_PORT", 8687, "Port of /health, /ready and /metrics")
    drain_deadline_s: float = env("DRAIN_DEADLINE_S", 30.0, "On SIGTERM: time to land what is batched")

    def problems(self):
        if not self.uri:
            yield "SINK_S3_URI is required (s3://bucket/prefix or file:///path)"
        if self.max_records < 1:
            yield "BATCH_MAX_RECORDS must be at least 1"
        if self.max_age_s <= 0:
            yield "BATCH_MAX_AGE_S must be positive"
        if not 0 <= self.gzip_level <= 3:
            yield f"SINK_S3_GZIP_LEVEL={self.gzip_level}: must be 0-3"
        if not 0 < self.http_port < 65536:
            yield f"SINK_HTTP_PORT={self.http_port}: not a TCP port"
