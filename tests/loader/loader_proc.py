"""A loader run in a process of its own, for the kill and concurrency tests.

python -m tests.loader.loader_proc DSN SOURCE MAX_FILES [kill-at:STEP | sleep-at:STEP:SECONDS]
prints the run report as JSON (unless killed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from clickstream_loader.config import LoaderConfig
from clickstream_loader.runner import run_once


def main(argv: list[str]) -> int:
    dsn, source, max_files = argv[0], argv[1], int(argv[2])
    action = argv[3] if len(argv) > 3 else ""

    def hook(step, info):
        kind, _, rest = action.partition(":")
        if kind == "kill-at" and step == rest:
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sleep-at" and step == rest.split(":")[0]:
            time.sleep(float(rest.split(":")[1]))

    config = LoaderConfig(engine="postgres", source=source, postgres_dsn=dsn, max_files=max_files)
    report = run_once(config, hook=hook)
    print(json.dumps(report.to_dict()))
    return 0 if report.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
