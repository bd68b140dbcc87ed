"""The worker's configuration: one object, read from the environment at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from clickstream_core.settings import env, one_of, parse_size

from .sinks import SINKS


@dataclass(frozen=True)
class WorkerConfig:
    handoff_address: str = env(
        "HANDOFF_ADDRESS",
        "unix:/var/run/clickstream/handoff.sock",
        "Where the worker listens for proxies: unix:/path or tcp:HOST:PORT",
    )
    sink: str = env("SINK", "s3", "Sink that makes records durable: " + ", ".join(SINKS), one_of(*SINKS))
    http_host: str = env("WORKER_HTTP_HOST", "127.0.0.1", "Address of /health, /ready and /metrics")
    http_port: int = env("WORKER_HTTP_PORT", 8686, "Port of /health, /ready and /metrics")
    app_config: str = env("APP_CONFIG", "", "Path of the app configuration YAML (project id); empty = dev")
    max_pending_bytes: int = env(
        "WORKER_MAX_PENDING_BYTES",
        64 * 1024 * 1024,
        "Bytes accepted but not yet durable before frames are refused (FULL -> proxy 503)",
        parse_size,
    )
    drain_deadline_s: float = env(
        "DRAIN_DEADLINE_S",
        30.0,
        "On SIGTERM: seconds to flush and upload before exiting (ECS stopTimeout)",
    )
    ack_trace: str = env(
        "WORKER_ACK_TRACE",
        "",
        "Test instrumentation: append 'F commit' after each fsync and 'A commit frame' before each ack to this file",
    )

    def problems(self):
        if not 0 < self.http_port < 65536:
            yield f"WORKER_HTTP_PORT={self.http_port}: not a TCP port"
        if self.max_pending_bytes < 1024 * 1024:
            yield "WORKER_MAX_PENDING_BYTES must be at least 1 MiB"
        if self.drain_deadline_s <= 0:
            yield "DRAIN_DEADLINE_S must be positive"
        try:
            from clickstream_core.handoff import parse_address

            parse_address(self.handoff_address)
        except ValueError as exc:
            yield f"HANDOFF_ADDRESS: {exc}"
