"""`clickstream-etl`: run the job on a window, locally or under spark-submit.

  clickstream-etl run --source URI --sink URI [--start T] [--end T] [--state URI] [--plugins FILE]
  clickstream-etl plugins          list the registered plug-ins

Flags override the environment variables of config.EtlConfig (docs/configuration.md); times are
ISO-8601 or epoch milliseconds. Exit status: 0 succeeded, 1 the run failed, 2 bad configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from clickstream_core.appconfig import AppConfigError
from clickstream_core.logs import setup as setup_logging
from clickstream_core.settings import ConfigError, load

from .config import EtlConfig
from .plugins import PluginError, load_chain, registered
from .window import parse_time

FLAGS = {
    "source": "source",
    "sink": "sink",
    "state": "state",
    "bad_rows": "bad-rows",
    "app_config": "app-config",
    "plugins": "plugins",
    "rules_dir": "rules-dir",
    "freshness_hours": "freshness-hours",
    "dedup_lookback_days": "dedup-lookback-days",
    "spark_master": "master",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clickstream-etl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="process one window of raw records")
    for field, flag in FLAGS.items():
        kind = float if field == "freshness_hours" else int if field == "dedup_lookback_days" else str
        run.add_argument(f"--{flag}", dest=field, type=kind, default=None)
    run.add_argument("--start", help="window start (ISO-8601 or epoch ms); default: the watermark")
    run.add_argument("--end", help="window end (ISO-8601 or epoch ms); default: now minus the buffer")
    run.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    sub.add_parser("plugins", help="list the registered plug-ins")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("clickstream-etl")
    if args.command == "plugins":
        for name, target in sorted(registered().items()):
            print(f"{name:16} {target}")
        return 0
    overrides = {f: getattr(args, f) for f in FLAGS if getattr(args, f) is not None}
    problems = []
    try:
        config = load(EtlConfig, **overrides)
    except ConfigError as exc:
        problems += exc.problems
        config = None
    for label, value in (("--start", args.start), ("--end", args.end)):
        if value:
            try:
                parse_time(value)
            except ValueError as exc:
                problems.append(f"{label}: {exc}")
    if config is not None:
        try:
            load_chain(config.plugins)
        except PluginError as exc:
            problems.append(str(exc))
    if problems:
        print("clickstream-etl: invalid configuration:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    from .job import run  # pyspark is imported only for a real run

    try:
        report = run(config, start=args.start, end=args.end)
    except AppConfigError as exc:
        print(f"clickstream-etl: {exc}", file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger("clickstream_etl").exception("etl run failed")
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        bad = ", ".join(f"{k} {v}" for k, v in sorted(report.bad.items())) or "none"
        tables = ", ".join(f"{k} {v}" for k, v in sorted(report.tables.items()))
        print(
            f"window {report.window['start']} .. {report.window['end']}: {report.input_files} objects, "
            f"{report.requests} requests, {report.events} events -> {report.good} good, bad: {bad}; "
            f"rows: {tables}; {report.duration_s:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
