"""Entry point of `ingest-worker`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web
from clickstream_core import logs
from clickstream_core.appconfig import AppConfig, AppConfigError
from clickstream_core.handoff import parse_address
from clickstream_core.settings import ConfigError, load_all

from .config import WorkerConfig
from .server import HandoffServer, http_app
from .sinks import SINKS, load_sink_class
from .sinks.base import SinkContext

log = logging.getLogger("ingest_worker")


def _prepare_socket_path(address: str) -> None:
    family, target = parse_address(address)
    if family == "unix":
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()  # a stale socket from a previous run; only one worker owns an address


async def serve(config: WorkerConfig, environ=os.environ) -> None:
    app_config = AppConfig.load(config.app_config or None)
    context = SinkContext(app_config.project_id, config.max_pending_bytes, config.ack_trace)
    sink = load_sink_class(config.sink).from_env(environ, context)
    await sink.start()

    server = HandoffServer(sink, config.handoff_address)
    _prepare_socket_path(config.handoff_address)
    await server.start()
    runner = web.AppRunner(http_app(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.http_host, config.http_port)
    await site.start()
    log.info("worker started", extra={"sink": config.sink, "http_port": config.http_port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

    log.info("draining", extra={"deadline_s": config.drain_deadline_s})
    await server.stop_accepting()
    await sink.stop(config.drain_deadline_s)
    await server.close()
    await runner.cleanup()
    log.info("worker stopped")


def main() -> None:
    logs.setup("ingest-worker")
    try:
        # The sink's own variables are validated now too, so every mistake shows at start-up.
        sink_name = os.environ.get("SINK", "s3").strip()
        sink_config = [load_sink_class(sink_name).config_class] if sink_name in SINKS else []
        config, *_ = load_all(WorkerConfig, *sink_config)
        AppConfig.load(config.app_config or None)
    except (ConfigError, AppConfigError) as exc:
        print(f"ingest-worker: {exc}", file=sys.stderr)
        sys.exit(2)
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
