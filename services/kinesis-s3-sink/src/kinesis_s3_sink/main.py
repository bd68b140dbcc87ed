"""Entry point of `kinesis-s3-sink`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import uvloop
from aiohttp import web
from clickstream_core import logs, metrics
from clickstream_core.appconfig import AppConfig, AppConfigError
from clickstream_core.objectstore import open_store
from clickstream_core.settings import ConfigError, load_all

from .config import SinkConfig
from .landing import Lander, Limits
from .sources import SOURCES, load_source_class

log = logging.getLogger("kinesis_s3_sink")


def http_app(source, state: dict) -> web.Application:
    return metrics.service_app(lambda: (False, "draining") if state["draining"] else source.health())


async def serve(config: SinkConfig, environ=os.environ) -> None:
    app_config = AppConfig.load(config.app_config or None)
    project = app_config.project_id
    prefix = config.prefix or f"clickstream/{project}/data/buffer/"
    invalid_prefix = config.invalid_prefix or f"clickstream/{project}/data/buffer-invalid/"
    store = open_store(config.uri)
    limits = Limits(config.max_records, config.max_bytes, config.max_age_s)

    def lander_factory(checkpoints) -> Lander:
        return Lander(store, checkpoints, prefix, invalid_prefix, config.gzip_level)

    source = load_source_class(config.source).from_env(environ, lander_factory, limits)
    state = {"draining": False}
    runner = web.AppRunner(http_app(source, state), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.http_host, config.http_port).start()
    log.info("sink started", extra={"source": config.source, "destination": store.uri, "prefix": prefix})

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    running = asyncio.create_task(source.run())
    await asyncio.wait([running, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
    state["draining"] = True
    source.stop()
    try:
        await asyncio.wait_for(running, timeout=config.drain_deadline_s)
    except TimeoutError:
        log.warning("drain deadline reached; unlanded records will be read again by the next owner")
    await runner.cleanup()
    await store.close()
    log.info("sink stopped")


def main() -> None:
    logs.setup("kinesis-s3-sink")
    try:
        source_name = os.environ.get("SOURCE", "kinesis").strip()
        source_config = [load_source_class(source_name).config_class] if source_name in SOURCES else []
        config, *_ = load_all(SinkConfig, *source_config)
        AppConfig.load(config.app_config or None)
    except (ConfigError, AppConfigError) as exc:
        print(f"kinesis-s3-sink: {exc}", file=sys.stderr)
        sys.exit(2)
    uvloop.run(serve(config))


if __name__ == "__main__":
    main()
