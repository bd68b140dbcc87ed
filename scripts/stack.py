"""Start the local stack (worker + proxy, and later the rest) as processes, the way `make up` does.

    python -m scripts.stack up [--port 8080] [--data-dir ./data] [--processes N]

Runs in the foreground; Ctrl-C or SIGTERM drains the proxy first (in-flight requests finish),
then the worker (flushes and uploads its WAL), then exits. Tests use `LocalStack` directly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _wait_http(url: str, timeout_s: float, expect: int = 200, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == expect:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout_s}s ({last})")


def read_lake(root: Path) -> list[dict]:
    """Every raw record in every object under `root`."""
    from clickstream_core.raw_record import read_object

    records = []
    for path in sorted(Path(root).rglob("*.gz")):
        records.extend(read_object(path.read_bytes()))
    return records


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` (optionally matching labels) in Prometheus exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalStack:
    """proxy + worker on 127.0.0.1 with the S3 sink, every file under `data_dir`."""

    data_dir: Path
    port: int = 8080
    worker_http_port: int = 8686
    processes: int = 2
    sink_uri: str = ""
    roll_seconds: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    proxy_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    worker: subprocess.Popen | None = None
    proxy: subprocess.Popen | None = None

    @classmethod
    def isolated(cls, data_dir: Path, **overrides) -> LocalStack:
        """A stack on free ports with its logs under `data_dir` (what tests want); objects roll every second."""
        settings = {
            "port": free_port(),
            "worker_http_port": free_port(),
            "processes": 2,
            "roll_seconds": 1.0,
            "log_dir": Path(data_dir) / "logs",
        }
        settings.update(overrides)
        return cls(data_dir=Path(data_dir), **settings)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.worker_http_port}"

    @property
    def lake(self) -> Path:
        return self.data_dir / "lake"

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "run" / "handoff.sock"

    def common_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "HANDOFF_ADDRESS": f"unix:{self.socket_path}",
                "PROMETHEUS_MULTIPROC_DIR": str(self.data_dir / "run" / "proxy-metrics"),
            }
        )
        env.update(self.env)
        return env

    def worker_environment(self) -> dict[str, str]:
        env = self.common_env()
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(
            {
                "SINK": "s3",
                "SINK_S3_URI": self.sink_uri or self.lake.as_uri(),
                "SINK_S3_MAX_AGE_S": str(self.roll_seconds),
                "WAL_DIR": str(self.data_dir / "wal"),
                "WORKER_HTTP_PORT": str(self.worker_http_port),
                "WORKER_HTTP_HOST": "127.0.0.1",
            }
        )
        env.update(self.worker_env)
        return env

    def proxy_environment(self) -> dict[str, str]:
        env = self.common_env()
        env.setdefault("CLICKSTREAM_MODE", "dev")
        env.update({"HOST": "127.0.0.1", "PORT": str(self.port), "PROXY_PROCESSES": str(self.processes)})
        env.update(self.proxy_env)
        return env

    def _log(self, name: str):
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{name}.log", "ab")

    def start_worker(self, wait: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.worker = subprocess.Popen(
            [str(BIN / "ingest-worker")], env=self.worker_environment(), stderr=self._log("worker")
        )
        if wait:
            _wait_http(self.worker_url + "/ready", 20, proc=self.worker)

    def start_proxy(self, wait: bool = True) -> None:
        self.proxy = subprocess.Popen(
            [str(BIN / "ingest-proxy")], env=self.proxy_environment(), stderr=self._log("proxy")
        )
        if wait:
            _wait_http(self.url + "/ready", 30, proc=self.proxy)

    def start(self) -> LocalStack:
        self.start_worker()
        self.start_proxy()
        return self

    @staticmethod
    def _terminate(proc: subprocess.Popen | None, timeout_s: float) -> int | None:
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop(self, timeout_s: float = 40) -> None:
        self._terminate(self.proxy, timeout_s)
        self._terminate(self.worker, timeout_s)

    def kill_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    stack = LocalStack(
        data_dir=data_dir,
        port=args.port,
        worker_http_port=args.worker_port,
        processes=args.processes,
        roll_seconds=args.roll_seconds,
    )
    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
    except (RuntimeError, TimeoutError):
        stack.stop()
        if stopping:  # Ctrl-C while starting: the children got it too
            return 0
        raise
    print(
        f"clickstream local stack is up\n"
        f"  collect:  POST {stack.url}/collect?appId=<your app>&platform=Web\n"
        f"  proxy:    {stack.url}/ready  {stack.url}/metrics\n"
        f"  worker:   {stack.worker_url}/ready  {stack.worker_url}/metrics\n"
        f"  raw data: {stack.lake}/clickstream/default/data/buffer/ (objects every {args.roll_seconds:g} s)\n"
        f"Ctrl-C drains and stops.",
        flush=True,
    )
    while not stopping:
        time.sleep(0.2)
        for name, proc in (("worker", stack.worker), ("proxy", stack.proxy)):
            if proc is not None and proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                stopping = True
    stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="run the local stack in the foreground")
    up_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    up_parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    up_parser.add_argument("--worker-port", type=int, default=int(os.environ.get("WORKER_HTTP_PORT", "8686")))
    up_parser.add_argument("--processes", type=int, default=int(os.environ.get("PROXY_PROCESSES", "0") or 0))
    up_parser.add_argument("--roll-seconds", type=float, default=float(os.environ.get("SINK_S3_MAX_AGE_S", "10")))
    args = parser.parse_args(argv)
    return up(args)


if __name__ == "__main__":
    sys.exit(main())


def start_moto(port: int, log_path: Path | None = None) -> subprocess.Popen:
    """A local S3/DynamoDB/Kinesis API server (moto) on 127.0.0.1."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    _wait_http(f"http://127.0.0.1:{port}/moto-api/", 30, proc=proc)
    return proc
