"""The local pipeline's scheduler: the ETL and then the loader, every `--interval` seconds.

    python -m scripts.pipeline --data-dir ./data [--interval 30] [--engine duckdb|postgres] [--once]

In AWS the same two steps are an EMR Serverless job on a schedule and the load workflow it triggers;
on one machine this process plays both, with one long-lived SparkSession (a fresh JVM per run would
cost seconds of start-up and JIT warm-up every cycle). Each cycle runs the ETL over the raw objects
that arrived since the last watermark, then one loader pass over the tables it wrote. SIGTERM or
Ctrl-C finishes the cycle under way, then runs one last cycle over everything that has arrived
(`buffer_seconds=0`) so a drained stack's last objects reach the warehouse, and exits.

Paths follow `make up`'s layout under DATA_DIR: raw objects in lake/clickstream/<project>/data/buffer,
the four tables in .../data/ods, the embedded warehouse (DuckDB views) in .../data/ods/_loader.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("clickstream_pipeline")


@dataclasses.dataclass(frozen=True)
class Layout:
    data_dir: Path
    project_id: str = "default"

    @property
    def data(self) -> Path:
        return self.data_dir / "lake" / "clickstream" / self.project_id / "data"

    @property
    def raw(self) -> Path:
        return self.data / "buffer"

    @property
    def ods(self) -> Path:
        return self.data / "ods"

    @property
    def warehouse(self) -> Path:
        return self.ods / "_loader"


class Pipeline:
    """ETL then loader, in this process; `cycle()` is one of each."""

    def __init__(
        self,
        layout: Layout,
        engine: str = "duckdb",
        postgres_dsn: str = "",
        app_config: str = "",
        buffer_seconds: int = 5,
        driver_memory: str = "2g",
    ):
        from clickstream_etl.config import EtlConfig
        from clickstream_loader.config import LoaderConfig

        self.layout = layout
        self.etl_config = EtlConfig(
            source=str(layout.raw),
            sink=str(layout.ods),
            app_config=app_config,
            buffer_seconds=buffer_seconds,
            driver_memory=driver_memory,
            spark_master=os.environ.get("SPARK_MASTER", "local[*]"),
        )
        self.loader_config = LoaderConfig(
            engine=engine,
            source=str(layout.ods),
            app_config=app_config,
            postgres_dsn=postgres_dsn,
            state_dir=str(layout.warehouse),
        )
        problems = [*self.etl_config.problems(), *self.loader_config.problems()]
        if problems:
            raise ValueError("; ".join(problems))
        self._spark = None

    @property
    def spark(self):
        if self._spark is None:
            from clickstream_etl.spark import build_session

            self._spark = build_session(
                master=self.etl_config.spark_master, driver_memory=self.etl_config.driver_memory
            )
        return self._spark

    def cycle(self, drain: bool = False) -> dict:
        """One ETL run and one loader pass; `drain` reads up to now (no arrival buffer)."""
        from clickstream_etl.job import run as run_etl
        from clickstream_loader.runner import run_once

        self.layout.raw.mkdir(parents=True, exist_ok=True)
        config = dataclasses.replace(self.etl_config, buffer_seconds=0) if drain else self.etl_config
        began = time.monotonic()
        etl = run_etl(config, spark=self.spark)
        etl_s = time.monotonic() - began
        load = run_once(self.loader_config)
        summary = {
            "etl_status": etl.status,
            "events": etl.events,
            "good": etl.good,
            "bad": dict(etl.bad),
            "etl_s": round(etl_s, 2),
            "load_status": load.status,
            "rows_loaded": load.rows_loaded,
            "load_s": round(load.duration_s, 2),
        }
        log.info("pipeline cycle", extra=summary)
        if load.status != "succeeded":
            raise RuntimeError(f"loader run {load.status}: {'; '.join(load.errors)}")
        return summary

    def close(self) -> None:
        if self._spark is not None:
            self._spark.stop()
            self._spark = None


class LocalWarehouse:
    """The warehouse `make up` and `make demo` load into (`--warehouse` / WAREHOUSE): DuckDB views over the
    Parquet (the default: nothing to start) or PostgreSQL, a cluster of their own under <data dir>/postgres
    (scripts/postgres.py; its data stays between runs), started before the pipeline and stopped after it."""

    KINDS = ("duckdb", "postgres")

    def __init__(self, kind: str, data_dir: Path):
        if kind not in self.KINDS:
            raise ValueError(f"warehouse {kind!r}: use one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.layout = Layout(data_dir)
        self.cluster = None
        self.dsn = ""

    def start(self) -> dict[str, str]:
        """Starts what needs starting; returns the loader's environment for the pipeline process."""
        if self.kind == "duckdb":
            return {"LOADER_ENGINE": "duckdb"}
        from scripts.postgres import PostgresCluster

        self.cluster = PostgresCluster(self.cluster_dir()).start()
        self.dsn = self.cluster.create_database("clickstream", exist_ok=True)
        return {"LOADER_ENGINE": "postgres", "LOADER_POSTGRES_DSN": self.dsn}

    def cluster_dir(self) -> Path:
        """<data dir>/postgres; as root (the server then runs as the postgres user) a folder under /var/tmp
        named after the data dir when a parent of the data dir keeps other users out."""
        wanted = self.layout.data_dir / "postgres"
        if os.geteuid() != 0:
            return wanted
        existing = next(p for p in (wanted, *wanted.parents) if p.exists())
        if all(p.stat().st_mode & stat.S_IXOTH for p in (existing, *existing.parents)):
            return wanted
        digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"clickstream-postgres-{digest}"

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def describe(self) -> str:
        if self.kind == "duckdb":
            return f"DuckDB views over {self.layout.ods} (readers: clickstream_loader.warehouse.connect_duckdb)"
        return f"PostgreSQL {self.dsn} (stopped with the stack; data in {self.cluster.dir if self.cluster else '-'})"

    def connect(self):
        """A reader: `.execute(sql).fetchall()` on DuckDB (in this process's memory, locking nothing) or
        PostgreSQL; the caller closes it."""
        if self.kind == "duckdb":
            from clickstream_loader.warehouse import connect_duckdb

            return connect_duckdb(self.layout.warehouse)
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True)


def start_process(data_dir: Path, interval: float, log_dir: Path | None = None, **env: str):
    """The scheduler as a child process (what `make up` and `make demo` run)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = open(Path(log_dir) / "pipeline.log", "ab") if log_dir else subprocess.DEVNULL
    command = [sys.executable, "-m", "scripts.pipeline", "--data-dir", str(data_dir), "--interval", str(interval)]
    # Its own session: a terminal's Ctrl-C reaches the whole foreground group, and would kill the
    # Spark JVM under the cycle that is meant to drain; the parent sends SIGTERM when it stops.
    return subprocess.Popen(
        command, cwd=root, env={**os.environ, **env}, stdout=out, stderr=out, start_new_session=True
    )


def stop_process(proc, timeout_s: float = 600) -> int | None:
    """SIGTERM: the scheduler finishes its cycle and runs the drain cycle before it exits."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except Exception:
        proc.kill()
        return proc.wait()


def serve(pipeline: Pipeline, interval: float, stop: threading.Event) -> int:
    """Cycles every `interval` seconds (from the start of one to the start of the next) until `stop`
    (or until the parent that started this process is gone)."""
    parent = os.getppid()
    failures = 0
    while not stop.is_set() and os.getppid() == parent:
        began = time.monotonic()
        try:
            pipeline.cycle()
            failures = 0
        except Exception:
            failures += 1
            log.exception("pipeline cycle failed; the next cycle retries the same window")
        pause = max(0.0, interval - (time.monotonic() - began)) if not failures else min(interval, 5 * failures)
        deadline = time.monotonic() + pause
        while not stop.is_set() and os.getppid() == parent and time.monotonic() < deadline:
            stop.wait(min(1.0, deadline - time.monotonic()))
    try:
        pipeline.cycle(drain=True)
    except Exception:
        log.exception("the final (drain) cycle failed")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    stop = threading.Event()  # before the slow imports: a stop request during start-up is kept
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    from clickstream_core.logs import setup

    parser = argparse.ArgumentParser(prog="python -m scripts.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", "./data"))
    parser.add_argument("--interval", type=float, default=float(os.environ.get("PIPELINE_INTERVAL_S", "30")))
    parser.add_argument("--engine", default=os.environ.get("LOADER_ENGINE", "duckdb"), choices=("duckdb", "postgres"))
    parser.add_argument("--postgres-dsn", default=os.environ.get("LOADER_POSTGRES_DSN", ""))
    parser.add_argument("--app-config", default=os.environ.get("APP_CONFIG", ""))
    parser.add_argument("--buffer-seconds", type=int, default=int(os.environ.get("ETL_BUFFER_SECONDS", "5")))
    parser.add_argument("--once", action="store_true", help="one drain cycle, then exit")
    args = parser.parse_args(argv)
    setup("pipeline")
    try:
        pipeline = Pipeline(
            Layout(Path(args.data_dir).resolve()),
            engine=args.engine,
            postgres_dsn=args.postgres_dsn,
            app_config=args.app_config,
            buffer_seconds=args.buffer_seconds,
        )
    except ValueError as exc:
        print(f"pipeline: {exc}", file=sys.stderr)
        return 2
    try:
        if args.once:
            pipeline.cycle(drain=True)
            return 0
        return serve(pipeline, args.interval, stop)
    finally:
        pipeline.close()


if __name__ == "__main__":
    sys.exit(main())
