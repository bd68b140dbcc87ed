"""A throwaway PostgreSQL 15 cluster from Debian's binaries, on 127.0.0.1 only (tests, benchmarks, the demo).

python -m scripts.postgres start [--dir DIR] [--port PORT]   # prints the DSN; the cluster keeps running
python -m scripts.postgres stop --dir DIR

`initdb` and `pg_ctl` refuse to run as root, so as root they run as the `postgres` user (su), in a directory
that user owns; the Debian cluster `15/main` is never touched. fsync is off: the data is disposable.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

BIN_DIRS = [Path("/usr/lib/postgresql/15/bin"), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


def bin_dir() -> Path:
    for candidate in BIN_DIRS:
        if (candidate / "initdb").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries not found: run scripts/setup.sh test (apt package postgresql-15)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    def __init__(self, directory: str | Path | None = None, port: int | None = None):
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="clickstream-pg-"))
        self.port = port or free_port()
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.as_root = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        command = [str(bin_dir() / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["su", "postgres", "-s", "/bin/bash", "-c", shlex.join(command)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")

    def start(self) -> PostgresCluster:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            os.chmod(self.dir, 0o700)
            shutil.chown(self.dir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            if not (exist_ok and conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts.postgres", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "start":
        cluster = PostgresCluster(args.dir, args.port).start()
        print(cluster.dsn())
        return 0
    if not args.dir:
        parser.error("stop needs --dir")
    PostgresCluster(args.dir).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
