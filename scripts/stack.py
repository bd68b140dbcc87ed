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
    """Every raw record in every object under `root` (the pipeline's own output under `ods/` aside)."""
    from clickstream_core.raw_record import read_object

    records = []
    for path in sorted(Path(root).rglob("*.gz")):
        if "ods" not in path.relative_to(root).parts:
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


def terminate(proc: subprocess.Popen | None, timeout_s: float) -> int | None:
    """SIGTERM (the services drain on it), then SIGKILL after `timeout_s`; the exit status."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def kill(proc: subprocess.Popen | None) -> None:
    """SIGKILL, as a crash would."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


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
    # The buffer: "s3" (the worker writes objects itself), or "kafka"/"kinesis", where the worker
    # produces to the stream and kinesis-s3-sink lands it in the same lake.
    sink: str = "s3"
    kafka_bootstrap: str = ""
    topic: str = "clickstream-raw"
    stream: str = "clickstream-raw"
    stream_env: dict[str, str] = field(default_factory=dict)  # AWS_* endpoints of the Kinesis/DynamoDB emulators
    lander_http_port: int = 8687
    lander_env: dict[str, str] = field(default_factory=dict)
    worker: subprocess.Popen | None = None
    proxy: subprocess.Popen | None = None
    lander: subprocess.Popen | None = None

    @classmethod
    def isolated(cls, data_dir: Path, **overrides) -> LocalStack:
        """A stack on free ports with its logs under `data_dir` (what tests want); objects roll every second."""
        settings = {
            "port": free_port(),
            "worker_http_port": free_port(),
            "lander_http_port": free_port(),
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

    @property
    def lander_url(self) -> str:
        return f"http://127.0.0.1:{self.lander_http_port}"

    def worker_environment(self) -> dict[str, str]:
        env = self.common_env()
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(
            {
                "SINK": self.sink,
                "SINK_S3_URI": self.sink_uri or self.lake.as_uri(),
                "SINK_S3_MAX_AGE_S": str(self.roll_seconds),
                "WAL_DIR": str(self.data_dir / "wal"),
                "WORKER_HTTP_PORT": str(self.worker_http_port),
                "WORKER_HTTP_HOST": "127.0.0.1",
            }
        )
        if self.sink == "kafka":
            env.update({"SINK_KAFKA_BROKERS": self.kafka_bootstrap, "SINK_KAFKA_TOPIC": self.topic})
        elif self.sink == "kinesis":
            env.update({"SINK_KINESIS_STREAM": self.stream, **self.stream_env})
        env.update(self.worker_env)
        return env

    def lander_environment(self) -> dict[str, str]:
        env = self.common_env()
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(
            {
                "SOURCE": self.sink,
                "SINK_S3_URI": self.sink_uri or self.lake.as_uri(),
                "BATCH_MAX_AGE_S": str(self.roll_seconds),
                "SINK_HTTP_PORT": str(self.lander_http_port),
            }
        )
        if self.sink == "kafka":
            env.update({"SOURCE_KAFKA_BROKERS": self.kafka_bootstrap, "SOURCE_KAFKA_TOPIC": self.topic})
        elif self.sink == "kinesis":
            env.update(
                {
                    "SOURCE_KINESIS_STREAM": self.stream,
                    "SOURCE_KINESIS_DISCOVERY_INTERVAL_S": "2",
                    "SOURCE_KINESIS_POLL_INTERVAL_S": "0.2",
                    **self.stream_env,
                }
            )
        env.update(self.lander_env)
        return env

    def start_lander(self, wait: bool = True) -> None:
        self.lander = subprocess.Popen(
            [str(BIN / "kinesis-s3-sink")], env=self.lander_environment(), stderr=self._log("kinesis-s3-sink")
        )
        if wait:
            _wait_http(self.lander_url + "/ready", 60, proc=self.lander)

    def kill_lander(self) -> None:
        kill(self.lander)

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
        if self.sink != "s3":
            self.start_lander()
        self.start_proxy()
        return self

    def stop(self, timeout_s: float = 40) -> None:
        terminate(self.proxy, timeout_s)
        terminate(self.worker, timeout_s)
        terminate(self.lander, timeout_s)

    def kill_worker(self) -> None:
        kill(self.worker)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def start_buffer(sink: str, data_dir: Path, stack: LocalStack) -> object | None:
    """The stream between worker and lake for SINK=kafka|kinesis: a real broker, or the emulators."""
    if sink == "kafka":
        from scripts.kafka import KafkaBroker

        broker = KafkaBroker(
            data_dir=data_dir / "kafka", port=int(os.environ.get("KAFKA_PORT", "9092")), log_dir=data_dir / "logs"
        ).start()
        if stack.topic not in broker.topics():
            broker.create_topic(stack.topic, partitions=2)
        stack.kafka_bootstrap = broker.bootstrap
        return broker
    if sink == "kinesis":
        from scripts.kinesis import Emulators

        emulators = Emulators(
            kinesis_port=int(os.environ.get("KINESIS_PORT", "4567")),
            dynamodb_port=int(os.environ.get("DYNAMODB_PORT", "4568")),
            data_dir=data_dir / "emulators",
            log_path=data_dir / "logs" / "emulators.log",
        ).start()
        if stack.stream not in emulators.kinesis.list_streams()["StreamNames"]:
            emulators.create_stream(stack.stream, 2)
        stack.stream_env = emulators.env()
        return emulators
    return None


ODS = "clickstream/default/data/ods"  # under the lake: the ETL's tables and the loader's state


def up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    stack = LocalStack(
        data_dir=data_dir,
        port=args.port,
        worker_http_port=args.worker_port,
        processes=args.processes,
        roll_seconds=args.roll_seconds,
        sink=args.sink,
        lander_http_port=args.lander_port,
        log_dir=data_dir / "logs",
    )
    stopping = False

    def on_signal(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    buffer = None
    try:
        buffer = start_buffer(args.sink, data_dir, stack)
        stack.start()
    except (RuntimeError, TimeoutError):
        stack.stop()
        if buffer is not None:
            buffer.stop()
        if stopping:  # Ctrl-C while starting: the children got it too
            return 0
        raise
    scheduler = warehouse = None
    try:
        if args.pipeline_interval > 0:
            from scripts import pipeline

            warehouse = pipeline.LocalWarehouse(args.warehouse, data_dir)
            loader_env = warehouse.start()
            scheduler = pipeline.start_process(data_dir, args.pipeline_interval, data_dir / "logs", **loader_env)
        via = {
            "s3": "the worker's S3 sink",
            "kafka": f"Kafka {stack.kafka_bootstrap} topic {stack.topic} and kinesis-s3-sink",
            "kinesis": f"Kinesis stream {stack.stream} (emulator) and kinesis-s3-sink",
        }[args.sink]
        print(
            f"clickstream local stack is up\n"
            f"  collect:  POST {stack.url}/collect?appId=<your app>&platform=Web\n"
            f"  proxy:    {stack.url}/ready  {stack.url}/metrics\n"
            f"  worker:   {stack.worker_url}/ready  {stack.worker_url}/metrics\n"
            f"  raw data: {stack.lake}/clickstream/default/data/buffer/\n"
            f"            objects every {args.roll_seconds:g} s, via {via}\n"
            f"  pipeline: ETL + loader every {args.pipeline_interval:g} s into {stack.lake / ODS}\n"
            f"  warehouse: {warehouse.describe() if warehouse else 'none (no pipeline)'}\n"
            f"  logs:     {data_dir / 'logs'}\n"
            f"Ctrl-C drains and stops.",
            flush=True,
        )
        while not stopping:
            time.sleep(0.2)
            children = (("worker", stack.worker), ("proxy", stack.proxy), ("kinesis-s3-sink", stack.lander))
            for name, proc in (*children, ("pipeline", scheduler)):
                if proc is not None and proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    stopping = True
    finally:
        stack.stop()
        if scheduler is not None:
            print("last pipeline cycle (ETL + load of everything that arrived)", flush=True)
            pipeline.stop_process(scheduler)
        if warehouse is not None:
            warehouse.stop()
        if buffer is not None:
            buffer.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    from scripts import pipeline

    parser = argparse.ArgumentParser(prog="python -m scripts.stack")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="run the local stack in the foreground")
    up_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    up_parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    up_parser.add_argument("--lander-port", type=int, default=int(os.environ.get("SINK_HTTP_PORT", "8687")))
    up_parser.add_argument("--sink", choices=("s3", "kafka", "kinesis"), default=os.environ.get("SINK", "s3") or "s3")
    up_parser.add_argument("--worker-port", type=int, default=int(os.environ.get("WORKER_HTTP_PORT", "8686")))
    up_parser.add_argument("--processes", type=int, default=int(os.environ.get("PROXY_PROCESSES", "0") or 0))
    up_parser.add_argument("--roll-seconds", type=float, default=float(os.environ.get("SINK_S3_MAX_AGE_S", "10")))
    up_parser.add_argument(
        "--pipeline-interval",
        type=float,
        default=float(os.environ.get("PIPELINE_INTERVAL_S", "30")),
        help="seconds between ETL + loader cycles (0 = no pipeline, ingestion only)",
    )
    up_parser.add_argument(
        "--warehouse",
        choices=pipeline.LocalWarehouse.KINDS,
        default=os.environ.get("WAREHOUSE") or "duckdb",
        help="where the loader puts the tables: DuckDB views, or a PostgreSQL cluster under <data dir>/postgres",
    )
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
