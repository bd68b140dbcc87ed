"""The proxy's configuration: one object, read from the environment at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from clickstream_core.settings import env, one_of, parse_list, parse_size

ACK_MODES = ("durable", "after-handoff-may-lose-data")


@dataclass(frozen=True)
class ProxyConfig:
    mode: str = env(
        "CLICKSTREAM_MODE",
        "production",
        "production: strict (app config required, explicit CORS origins); dev: any appId and Origin, fakeIp honoured",
        one_of("production", "dev"),
    )
    host: str = env("HOST", "0.0.0.0", "Listen address")
    port: int = env("PORT", 8088, "Listen port (shared by every proxy process through SO_REUSEPORT)")
    processes: int = env("PROXY_PROCESSES", 0, "Proxy processes on the port; 0 = one per CPU core")
    collect_path: str = env("COLLECT_PATH", "/collect", "Path the SDKs post to")
    app_config: str = env("APP_CONFIG", "", "App configuration YAML (allow-list, per-app origins)")
    cors_origins: list[str] = env(
        "CORS_ALLOWED_ORIGINS",
        [],
        "Origins allowed for every app: exact origins, *.domain wildcards, or * (echo any; the default in dev mode)",
        parse_list,
    )
    cors_max_age_s: int = env("CORS_MAX_AGE_S", 600, "Access-Control-Max-Age of preflight answers")
    max_body_bytes: int = env("MAX_BODY_BYTES", 1024 * 1024, "Largest accepted body (413 beyond)", parse_size)
    max_decompressed_bytes: int = env(
        "MAX_DECOMPRESSED_BYTES",
        10 * 1024 * 1024,
        "Largest body after undoing Content-Encoding: gzip (413 beyond)",
        parse_size,
    )
    strict_json: bool = env("STRICT_JSON", False, "Parse JSON bodies at the edge and answer 400 when invalid")
    verify_hash_code: bool = env(
        "VERIFY_HASH_CODE", False, "Answer 400 when the hashCode query value does not match the body"
    )
    trusted_proxies: int = env(
        "TRUSTED_PROXIES", 0, "Proxies in front of us that append to X-Forwarded-For (1 behind an ALB)"
    )
    handoff_address: str = env("HANDOFF_ADDRESS", "unix:/var/run/clickstream/handoff.sock", "Worker hand-off address")
    ack_mode: str = env(
        "ACK_MODE",
        "durable",
        "durable: 200 only after the worker's sink has the records; after-handoff-may-lose-data: 200 once "
        "written to the worker connection (a crash can lose acknowledged requests)",
        one_of(*ACK_MODES),
    )
    ack_timeout_s: float = env("ACK_TIMEOUT_S", 3.0, "Longest wait for the worker's ack, then 503")
    retry_after_s: int = env("RETRY_AFTER_S", 1, "Retry-After of 503 answers")
    max_inflight: int = env("MAX_INFLIGHT_REQUESTS", 4096, "Requests per process waiting for the worker before 503s")
    body_timeout_s: float = env("BODY_TIMEOUT_S", 10.0, "Longest time to receive a request body (408)")
    keepalive_timeout_s: float = env("KEEPALIVE_TIMEOUT_S", 75.0, "Idle keep-alive connection lifetime")
    drain_deadline_s: float = env("DRAIN_DEADLINE_S", 30.0, "On SIGTERM: time to finish in-flight requests")
    auth_issuer: str = env("AUTH_OIDC_ISSUER", "", "Require Bearer JWTs from this OIDC issuer (off if empty)")
    auth_audience: str = env("AUTH_OIDC_AUDIENCE", "", "Audience the JWTs must carry")
    auth_jwks_url: str = env("AUTH_JWKS_URL", "", "JWKS URL; default: discovered from the issuer")
    access_log: bool = env("ACCESS_LOG", False, "Log every request as a JSON line (costs throughput)")

    @property
    def dev(self) -> bool:
        return self.mode == "dev"

    @property
    def process_count(self) -> int:
        return self.processes or os.cpu_count() or 1

    def problems(self):
        if not 0 < self.port < 65536:
            yield f"PORT={self.port}: not a TCP port"
        if self.processes < 0:
            yield "PROXY_PROCESSES must be 0 (one per core) or more"
        if not self.collect_path.startswith("/"):
            yield f"COLLECT_PATH={self.collect_path!r}: must start with /"
        if self.collect_path in ("/ping", "/health", "/ready", "/metrics"):
            yield f"COLLECT_PATH={self.collect_path!r}: collides with a service endpoint"
        if self.max_body_bytes < 1024:
            yield "MAX_BODY_BYTES must be at least 1 KiB"
        if self.max_decompressed_bytes < self.max_body_bytes:
            yield "MAX_DECOMPRESSED_BYTES must be at least MAX_BODY_BYTES"
        if self.ack_timeout_s <= 0:
            yield "ACK_TIMEOUT_S must be positive"
        if self.retry_after_s < 0:
            yield "RETRY_AFTER_S must not be negative"
        if self.max_inflight < 1:
            yield "MAX_INFLIGHT_REQUESTS must be at least 1"
        if self.trusted_proxies < 0:
            yield "TRUSTED_PROXIES must not be negative"
        if bool(self.auth_issuer) != bool(self.auth_audience):
            yield "AUTH_OIDC_ISSUER and AUTH_OIDC_AUDIENCE go together"
        if self.mode == "production":
            if not self.app_config:
                yield "APP_CONFIG is required in production mode (or set CLICKSTREAM_MODE=dev)"
            if "*" in self.cors_origins:
                yield "CORS_ALLOWED_ORIGINS=* echoes every Origin: allowed only with CLICKSTREAM_MODE=dev"
        try:
            from clickstream_core.handoff import parse_address

            parse_address(self.handoff_address)
        except ValueError as exc:
            yield f"HANDOFF_ADDRESS: {exc}"
