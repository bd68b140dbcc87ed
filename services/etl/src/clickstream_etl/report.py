"""The per-run report: counts per stage, rows per table, duration; JSON next to the output."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field

log = logging.getLogger("clickstream_etl")


@dataclass
class RunReport:
    job_id: str
    project_id: str
    window: dict
    status: str = "running"
    input_files: int = 0
    input_bytes: int = 0
    requests: int = 0  # raw records read (source)
    events: int = 0  # events after flattening (one per event, or per undecodable request)
    good: int = 0
    bad: dict[str, int] = field(default_factory=dict)  # reason -> count
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows written
    files: dict[str, int] = field(default_factory=dict)  # table -> files written
    fused_enrichers: list[str] = field(default_factory=list)  # enrichers run inside the transformer's pass
    stages_s: dict[str, float] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def to_dict(self) -> dict:
        out = asdict(self)
        out["bad_total"] = self.bad_total
        out["events_per_s"] = round(self.events / self.duration_s, 1) if self.duration_s else None
        return out


class Progress:
    """Stage lines on a terminal (with Spark's own progress bar), JSON log lines otherwise."""

    def __init__(self, report: RunReport, stages: int):
        self.report = report
        self.stages = stages
        self.done = 0
        self.tty = sys.stderr.isatty()
        self._current: tuple[str, float] | None = None
        self._started = time.monotonic()

    def stage(self, name: str) -> None:
        self._finish()
        self.done += 1
        self._current = (name, time.monotonic())
        if self.tty:
            width = 24
            filled = int(width * (self.done - 1) / self.stages)
            bar = "#" * filled + "." * (width - filled)
            print(f"\r[{bar}] {self.done}/{self.stages} {name:<40}", end="", file=sys.stderr, flush=True)

    def _finish(self) -> None:
        if self._current:
            name, began = self._current
            self.report.stages_s[name] = round(time.monotonic() - began, 3)
            log.info("stage done", extra={"stage": name, "seconds": self.report.stages_s[name]})
            self._current = None

    def close(self) -> None:
        self._finish()
        self.report.duration_s = round(time.monotonic() - self._started, 3)
        if self.tty:
            print(
                f"\r[{'#' * 24}] {self.stages}/{self.stages} done in {self.report.duration_s:.1f} s" + " " * 30,
                file=sys.stderr,
            )
