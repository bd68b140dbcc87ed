"""`clickstream-loader`: load the ETL's Parquet tables into the warehouse.

  clickstream-loader run [--source URI] [--engine duckdb|postgres] [--postgres-dsn DSN] [--json]
  clickstream-loader ddl [--engine postgres|redshift|duckdb] APP_ID    print an app's table DDL

Flags override the environment variables of config.LoaderConfig (docs/configuration.md). Exit status of run:
0 succeeded (or another run was busy), 1 the run failed, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import sys

from clickstream_core.appconfig import AppConfig, AppConfigError
from clickstream_core.logs import setup as setup_logging
from clickstream_core.settings import ConfigError, load

from .config import LoaderConfig

FLAGS = {
    "source": "source",
    "engine": "engine",
    "postgres_dsn": "postgres-dsn",
    "state_dir": "state-dir",
    "app_config": "app-config",
    "max_files": "max-files",
    "retention_days": "retention-days",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clickstream-loader", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one pass: discover new files, load them, apply retention")
    for field, flag in FLAGS.items():
        run.add_argument(f"--{flag}", dest=field, type=int if field in ("max_files", "retention_days") else str)
    run.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    ddl = sub.add_parser("ddl", help="print the DDL of an app's schema and tables")
    ddl.add_argument("--engine", default="postgres", choices=["postgres", "redshift", "duckdb"])
    ddl.add_argument("app_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("clickstream-loader")
    if args.command == "ddl":
        from .schema import create_tables_sql

        try:
            print(";\n\n".join(create_tables_sql(args.app_id, args.engine)) + ";")
        except ValueError as exc:
            print(f"clickstream-loader: {exc}", file=sys.stderr)
            return 2
        return 0
    overrides = {f: getattr(args, f) for f in FLAGS if getattr(args, f) is not None}
    problems = []
    config = apps = None
    try:
        config = load(LoaderConfig, **overrides)
    except ConfigError as exc:
        problems += exc.problems
    if config is not None:
        try:
            apps = AppConfig.load(config.app_config or None)
        except AppConfigError as exc:
            problems.append(str(exc))
    if problems:
        print("clickstream-loader: invalid configuration:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    from .runner import run_once

    report = run_once(config, apps=apps)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        rows = ", ".join(f"{k} {v}" for k, v in sorted(report.rows_loaded.items())) or "none"
        print(
            f"{report.status}: {report.discovered} files listed, {report.registered} new, {report.manifests} "
            f"manifests, rows: {rows}; {report.pending_files} pending; {report.duration_s:.1f} s"
        )
        for error in report.errors:
            print(f"  error: {error}", file=sys.stderr)
    return 1 if report.status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
