"""make bench-load: the PostgreSQL loader's rows/s against a raw binary COPY of the same rows (the ceiling).

1. pyarrow writes Parquet files of the four tables in the ETL's layout (cached between runs; no Spark);
2. a throwaway PostgreSQL 15 cluster starts on 127.0.0.1 (scripts/postgres.py);
3. ceiling: the same files read and encoded the same way, binary-COPYed into unindexed tables, one COPY per
   table; loader: one `run_once` pass (discovery, file states, staging COPY, in-batch dedup, MERGE into the
   indexed tables, state commit); each measured on a fresh database, best of --repeat;
4. prints rows/s of both and the ratio (goal >= 0.8).

python -m scripts.bench_load [--events 1000000] [--repeat 2] [--data DIR] [--connections N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
from clickstream_core.tables import TABLES
from clickstream_loader.config import LoaderConfig
from clickstream_loader.pg import PostgresLoader
from clickstream_loader.runner import run_once
from clickstream_loader.schema import MERGE_KEYS, TABLE_NAMES, quote, sql_type

from scripts.parquetgen import generate, write_dataset
from scripts.postgres import PostgresCluster

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clickstream" / "bench-load"


def dataset(events: int, root: Path) -> dict[str, list[Path]]:
    marker = root / f".complete-{events}"
    if not marker.exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        started = time.monotonic()
        print(f"generating {events:,} events of Parquet under {root} ...", file=sys.stderr)
        parts = []
        chunk = 250_000
        for n, offset in enumerate(range(0, events, chunk)):
            data = generate(min(chunk, events - offset), seed=n + 1, days=2)
            parts.append(write_dataset(root, data, rows_per_file=100_000, tag=f"g{n:03d}"))
        marker.write_text("")
        print(f"generated in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return {t: sorted((root / t).rglob("*.snappy.parquet")) for t in TABLE_NAMES}


def distinct_keys(root: Path, table: str) -> int:
    import duckdb

    keys = ", ".join(MERGE_KEYS[table])
    files = f"{root}/{table}/*/*/*/*/*.snappy.parquet"
    statement = f"SELECT count(DISTINCT ({keys})) FROM read_parquet('{files}')"  # noqa: S608 (our own names)
    return duckdb.connect().execute(statement).fetchone()[0]


def ceiling(dsn: str, files: dict[str, list[Path]]) -> float:
    """Seconds to binary-COPY every file into unindexed tables (the same reader and encoder as the loader)."""
    loader = PostgresLoader(dsn)  # for its reader and COPY pipeline only
    try:
        started = time.monotonic()
        with loader.conn.transaction():
            for table in TABLE_NAMES:
                cols = ", ".join(f"{quote(c.name)} {sql_type(c)}" for c in TABLES[table].columns)
                loader.conn.execute(f"CREATE TABLE {quote('ceiling_' + table)} ({cols}, _file_no integer)")
                loader._copy(table, quote("ceiling_" + table), [str(p) for p in files[table]])
        return time.monotonic() - started
    finally:
        loader.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts.bench_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--max-files", type=int, default=50)
    parser.add_argument(
        "--connections", type=int, default=LoaderConfig().connections, help="groups loaded at once (LOADER_CONNECTIONS)"
    )
    args = parser.parse_args(argv)
    root = args.data or CACHE / f"events-{args.events}"
    files = dataset(args.events, root)
    rows = {t: sum(pq.read_metadata(p).num_rows for p in files[t]) for t in TABLE_NAMES}
    total = sum(rows.values())
    # users and sessions recur across the generator's chunks (as across ETL windows): the merge keeps one each
    expected = {t: distinct_keys(root, t) for t in TABLE_NAMES}
    print(f"rows: {json.dumps(rows)} total {total:,}; files: {sum(len(v) for v in files.values())}", file=sys.stderr)
    print(f"distinct merge keys: {json.dumps(expected)}", file=sys.stderr)
    cluster = PostgresCluster().start()
    try:
        best_ceiling = best_loader = float("inf")
        for attempt in range(args.repeat):
            dsn = cluster.create_database(f"ceiling_{attempt}")
            took = ceiling(dsn, files)
            best_ceiling = min(best_ceiling, took)
            print(f"ceiling run {attempt + 1}: {took:.2f} s, {total / took:,.0f} rows/s", file=sys.stderr)
            dsn = cluster.create_database(f"loader_{attempt}")
            config = LoaderConfig(
                engine="postgres",
                source=str(root),
                postgres_dsn=dsn,
                max_files=args.max_files,
                reporting=False,
                connections=args.connections,
            )
            started = time.monotonic()
            report = run_once(config)
            took = time.monotonic() - started
            if report.status != "succeeded":
                print(f"loader failed: {report.errors}", file=sys.stderr)
                return 1
            with psycopg.connect(dsn) as conn:
                loaded = {t: conn.execute(f'SELECT count(*) FROM "shop".{quote(t)}').fetchone()[0] for t in TABLE_NAMES}  # noqa: S608
            if loaded != expected:
                print(f"loader row counts {loaded} differ from the files' distinct keys {expected}", file=sys.stderr)
                return 1
            best_loader = min(best_loader, took)
            print(
                f"loader run {attempt + 1}: {took:.2f} s, {total / took:,.0f} rows/s ({report.manifests} manifests)",
                file=sys.stderr,
            )
        ratio = best_ceiling / best_loader
        n_files = sum(len(v) for v in files.values())
        print(
            f"bench-load: {total:,} rows ({rows['event_v2']:,} events) in {n_files} files — "
            f"loader {total / best_loader:,.0f} rows/s, raw binary COPY ceiling {total / best_ceiling:,.0f} rows/s, "
            f"ratio {ratio:.2f} (goal >= 0.8)"
        )
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
