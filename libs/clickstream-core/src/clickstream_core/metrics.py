"""Prometheus helpers shared by the services (multiprocess-aware)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as _multiprocess


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """The exposition text of this process, or of every process sharing PROMETHEUS_MULTIPROC_DIR."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    if multiprocess_dir():
        _multiprocess.mark_process_dead(pid)


def service_app(ready):
    """/health, /ready and /metrics of a service, as an aiohttp application.

    `ready()` returns (ready, reason); /ready answers 503 with the reason when not ready."""
    import time

    from aiohttp import web

    started = time.time()

    async def health(_request):
        return web.json_response({"status": "alive", "uptime_s": round(time.time() - started, 1)})

    async def readiness(_request):
        ok, reason = ready()
        return web.json_response({"ready": ok, "reason": reason}, status=200 if ok else 503)

    async def exposition(_request):
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", readiness)
    app.router.add_get("/metrics", exposition)
    return app
