"""Entry point of `ingest-proxy`: a supervisor that runs N processes on one port (SO_REUSEPORT).

The supervisor validates the configuration once, prepares the shared metrics directory and the
shared readiness state, starts the processes, restarts one that dies, and on SIGTERM/SIGINT
marks the proxy as draining (so /ready turns 503 everywhere) and gives the processes the drain
deadline to finish their in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from clickstream_core import logs
from clickstream_core.appconfig import AppConfig, AppConfigError
from clickstream_core.settings import ConfigError, load

from .config import ProxyConfig
from .state import SharedState

log = logging.getLogger("ingest_proxy")


def load_app_config(config: ProxyConfig) -> AppConfig:
    app_config = AppConfig.load(config.app_config or None)
    if config.mode == "production" and not app_config.apps:
        raise AppConfigError(f"{config.app_config}: no apps registered; production mode would refuse everyone")
    return app_config


async def serve_process(config: ProxyConfig, shared: SharedState, index: int) -> None:
    from aiohttp import web

    from .app import CollectHandler
    from .handoff_client import HandoffClient

    app_config = load_app_config(config)
    client = HandoffClient(config.handoff_address, ack_timeout_s=config.ack_timeout_s, max_inflight=config.max_inflight)
    await client.start()
    handler = CollectHandler(config, app_config, client, shared, index)
    server = web.Server(
        handler,
        access_log=None,
        keepalive_timeout=config.keepalive_timeout_s,
        max_headers=100,
        max_line_size=8190,
        max_field_size=8190,
        auto_decompress=False,
        lingering_time=1.0,
    )
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, config.host, config.port, reuse_port=True, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def publish_state() -> None:
        from .metrics import FLUSH_INTERVAL_S

        while True:
            handler.publish_handoff_state()
            handler.tally.flush()
            await asyncio.sleep(FLUSH_INTERVAL_S)

    publisher = asyncio.create_task(publish_state())
    log.info("proxy process serving", extra={"port": config.port, "index": index})
    await stop.wait()

    # Drain: answer 503 to new work, let in-flight requests finish, then close.
    handler.draining = True
    deadline = loop.time() + config.drain_deadline_s
    while handler.active and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if handler.active:
        # Deadline reached with requests still waiting for the worker's ack: answer them (503)
        # instead of closing their connections without an answer.
        client.abandon()
        settle = loop.time() + 1.0
        while handler.active and loop.time() < settle:
            await asyncio.sleep(0.01)
    listener.close()
    await server.shutdown(timeout=max(0.1, min(5.0, deadline - loop.time())))
    publisher.cancel()
    handler.tally.flush()  # the last counts, before the process's metric file is final
    await client.close()
    log.info("proxy process stopped", extra={"index": index})


def process_main(config: ProxyConfig, shared: SharedState, index: int) -> None:
    import uvloop

    logs.setup("ingest-proxy")
    from .metrics import MalformedHttpFilter

    logging.getLogger("aiohttp.server").addFilter(MalformedHttpFilter())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; SIGTERM drains
    uvloop.run(serve_process(config, shared, index))


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def supervise(config: ProxyConfig) -> int:
    own_metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="ingest-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    else:
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        os.makedirs(metrics_dir, exist_ok=True)
        for name in os.listdir(metrics_dir):
            if name.endswith(".db"):
                os.unlink(os.path.join(metrics_dir, name))

    ctx = multiprocessing.get_context("spawn")
    count = config.process_count
    shared = SharedState.create(count, ctx)
    processes: dict[int, multiprocessing.Process] = {}

    def start(index: int) -> None:
        process = ctx.Process(target=process_main, args=(config, shared, index), name=f"proxy-{index}")
        process.start()
        processes[index] = process

    stopping = False

    def on_signal(signum, _frame) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            shared.draining.value = 1
            log.info("draining", extra={"signal": signal.Signals(signum).name})
            for process in processes.values():
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(count):
        start(index)
    log.info("proxy started", extra={"processes": count, "port": config.port, "mode": config.mode})

    from clickstream_core.metrics import mark_process_dead

    while not stopping:
        time.sleep(0.2)
        for index, process in list(processes.items()):
            if not process.is_alive() and not stopping:
                log.error("proxy process died; restarting", extra={"index": index, "exitcode": process.exitcode})
                mark_process_dead(process.pid)
                shared.handoff_ok[index] = 0
                start(index)

    deadline = time.monotonic() + config.drain_deadline_s + 5
    for process in processes.values():
        process.join(timeout=max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    if own_metrics_dir:
        shutil.rmtree(own_metrics_dir, ignore_errors=True)
    log.info("proxy stopped")
    return 0


def main() -> None:
    logs.setup("ingest-proxy")
    try:
        config = load(ProxyConfig)
        load_app_config(config)
    except (ConfigError, AppConfigError) as exc:
        print(f"ingest-proxy: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        check_port_free(config.host, config.port)
    except OSError as exc:
        print(f"ingest-proxy: cannot listen on {config.host}:{config.port}: {exc.strerror}", file=sys.stderr)
        sys.exit(2)
    sys.exit(supervise(config))


if __name__ == "__main__":
    main()
