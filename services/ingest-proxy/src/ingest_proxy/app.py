"""The HTTP handler of one proxy process (aiohttp's low-level server: no router, no middleware)."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web
from clickstream_core import metrics as metrics_export
from clickstream_core import raw_record
from clickstream_core.appconfig import AppConfig

from .auth import AuthError, JwtVerifier
from .config import ProxyConfig
from .cors import CorsPolicy
from .handoff_client import HandoffClient, Outcome
from .metrics import Tally
from .protocol import (
    Limits,
    Rejection,
    check_app_id,
    check_body,
    check_declared_length,
    check_hash_code,
    client_address,
    decode_content,
)
from .state import SharedState

log = logging.getLogger("ingest_proxy")
access = logging.getLogger("ingest_proxy.access")

SERVICE_PATHS = ("/ping", "/health", "/ready", "/metrics")
OUTCOME_REASONS = {
    Outcome.UNAVAILABLE: "worker_unavailable",
    Outcome.FULL: "worker_full",
    Outcome.ERROR: "worker_error",
    Outcome.TIMEOUT: "ack_timeout",
    Outcome.LOST: "worker_connection_lost",
}


def _utf8(value: str | None) -> str | None:
    """A header value as valid UTF-8 text: aiohttp decodes header bytes with surrogateescape, and a
    lone surrogate (from bytes that were not UTF-8, e.g. a Latin-1 User-Agent) would make the raw
    record unencodable. Such bytes become U+FFFD."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class CollectHandler:
    def __init__(
        self,
        config: ProxyConfig,
        app_config: AppConfig,
        client: HandoffClient,
        shared: SharedState,
        index: int = 0,
    ):
        self.config = config
        self.apps = app_config
        self.client = client
        self.shared = shared
        self.index = index
        self.limits = Limits(
            config.max_body_bytes, config.max_decompressed_bytes, config.strict_json, config.verify_hash_code
        )
        origins = list(config.cors_origins) or (["*"] if config.dev else [])
        self.cors = CorsPolicy(origins, app_config, config.cors_max_age_s)
        self.verifier = (
            JwtVerifier(config.auth_issuer, config.auth_audience, config.auth_jwks_url) if config.auth_issuer else None
        )
        self.durable = config.ack_mode == "durable"
        self.retry_after = str(config.retry_after_s)
        self.tally = Tally()
        self.draining = False
        self.active = 0

    # ---- dispatch ------------------------------------------------------------------------------

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == self.config.collect_path:
            return await self.collect(request)
        if path in SERVICE_PATHS:
            response = await self.service(request, path)
            self.tally.requests[path[1:], response.status] += 1
            return response
        self.tally.requests["other", 404] += 1
        return web.Response(status=404, text="not found")

    async def service(self, request: web.BaseRequest, path: str) -> web.Response:
        if path == "/ping":
            return web.Response(
                body=orjson.dumps({"timestamp": round(time.time(), 3)}), content_type="application/json"
            )
        if path == "/health":
            return web.Response(body=b'{"status":"alive"}', content_type="application/json")
        if path == "/ready":
            self.publish_handoff_state()
            ready, reason = self.shared.ready()
            return web.Response(
                status=200 if ready else 503,
                body=orjson.dumps({"ready": ready, "reason": reason}),
                content_type="application/json",
            )
        self.tally.flush()
        body, content_type = await asyncio.to_thread(metrics_export.render)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def publish_handoff_state(self) -> None:
        self.shared.handoff_ok[self.index] = 1 if (self.client.connected and self.client.worker_ready) else 0

    # ---- the collect path ------------------------------------------------------------------------

    def _reject(self, rejection: Rejection, cors: dict | None, rid: str) -> web.Response:
        self.tally.rejections[rejection.reason] += 1
        headers = {"X-Request-ID": rid}
        if cors:
            headers.update(cors)
        if rejection.status == 503:
            headers["Retry-After"] = self.retry_after
        response = web.Response(status=rejection.status, text=rejection.message, headers=headers)
        if rejection.status in (413, 408):
            response.force_close()  # the rest of the body is not worth reading
        return response

    async def collect(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        self.active += 1
        try:
            response = await self._collect(request)
        finally:
            self.active -= 1
        tally = self.tally
        tally.requests["collect", response.status] += 1
        tally.observe_latency(time.perf_counter() - started)
        if self.config.access_log:
            access.info(
                "request",
                extra={
                    "status": response.status,
                    "uri": request.raw_path,
                    "ip": request.remote,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
        return response

    async def _collect(self, request: web.BaseRequest) -> web.StreamResponse:
        rid = raw_record.new_request_id()
        query = request.query
        app_id = query.get("appId")
        origin = request.headers.get("Origin")
        cors = self.cors.headers(origin) if self.cors.allowed(origin, app_id) else None
        method = request.method
        try:
            if method == "OPTIONS":
                if cors is None:
                    raise Rejection(403, "origin_not_allowed", "origin not allowed")
                return web.Response(
                    status=204,
                    headers=self.cors.preflight_headers(origin, request.headers.get("Access-Control-Request-Headers")),
                )
            if method != "POST":
                raise Rejection(405, "method_not_allowed", "use POST")
            check_app_id(app_id)
            if not self.apps.is_registered(app_id):
                raise Rejection(403, "unknown_app_id", "appId is not registered")
            if self.verifier is not None:
                try:
                    await self.verifier.verify(request.headers.get("Authorization"))
                except AuthError as exc:
                    raise Rejection(401, "unauthenticated", str(exc)) from None
            if self.draining or self.shared.draining.value:
                raise Rejection(503, "draining", "draining, retry later")
            if not self.client.available():
                self.publish_handoff_state()
                raise Rejection(503, self.client.unavailable_reason(), "temporarily unavailable, retry later")
            check_declared_length(request.content_length, self.limits)
            if request.headers.get("Expect", "").lower() == "100-continue":
                # Every check that needs no body has passed: ask the client for it now rather
                # than letting it wait for its own timeout (curl waits a second).
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            data = await self._read_body(request)
            self.tally.request_bytes += len(data)
            data = decode_content(data, request.headers.get("Content-Encoding"), self.limits)
            body = check_body(data, self.limits)
            check_hash_code(body, query.get("hashCode"), self.limits)
        except Rejection as rejection:
            return self._reject(rejection, cors, rid)

        headers = request.headers
        fake_ip = query.get("fakeIp") if self.config.dev else None
        ip = fake_ip or client_address(
            request.remote, _utf8(headers.get("X-Forwarded-For")), self.config.trusted_proxies
        )
        line = raw_record.build_line(
            body=body,
            ip=ip,
            rid=rid,
            ua=_utf8(headers.get("User-Agent")),
            uri=request.raw_path,
            path=request.path,
            platform=query.get("platform"),
            app_id=app_id,
            compression=query.get("compression"),
            upload_timestamp=query.get("upload_timestamp"),
            fake_ip=fake_ip,
            arrival=raw_record.Arrival.now(),
        )
        limit = self.client.max_record_bytes
        if limit and len(line) > limit:
            return self._reject(Rejection(413, "too_large_for_sink", "record too large for the sink"), cors, rid)
        if not self.client.available():  # the body took a while: check again before queueing
            return self._reject(Rejection(503, self.client.unavailable_reason(), "retry later"), cors, rid)
        durable = self.client.submit(line)
        if self.durable:
            outcome = await durable
        else:
            outcome = Outcome.DURABLE if await self.client.sent() else Outcome.LOST
        if outcome is not Outcome.DURABLE:
            if outcome is Outcome.TOO_LARGE:
                return self._reject(Rejection(413, "too_large_for_sink", "record too large for the sink"), cors, rid)
            return self._reject(Rejection(503, OUTCOME_REASONS[outcome], "retry later"), cors, rid)
        self.tally.accepted += 1
        response = web.Response(status=200, headers={"X-Request-ID": rid})
        if cors:
            response.headers.update(cors)
        return response

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.limits.max_body_bytes
        content = request.content
        if content.is_eof() and request.content_length is not None:
            # The whole body arrived with the headers (the usual case for SDK batches): nothing
            # to wait for, so no timer to arm.
            data = await content.read()
            if len(data) != request.content_length:
                raise Rejection(400, "truncated_body", "body shorter than Content-Length")
            return data
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                declared = request.content_length
                if declared is not None:
                    return await content.readexactly(declared)
                chunks = []
                size = 0
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise Rejection(413, "too_large", f"body over {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError:
            raise Rejection(408, "body_timeout", "request body too slow") from None
        except asyncio.IncompleteReadError:
            raise Rejection(400, "truncated_body", "body shorter than Content-Length") from None
        except ConnectionError:
            # The client went away mid-body (mobile networks do): nobody hears this answer, but it
            # is counted (499, as nginx does) instead of escaping as an unhandled exception.
            raise Rejection(499, "client_disconnected", "client closed the connection") from None
        except ValueError as exc:  # aiohttp flags bad chunked framing this way
            raise Rejection(400, "bad_framing", str(exc)) from None
