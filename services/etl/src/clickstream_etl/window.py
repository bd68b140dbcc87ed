"""Which raw objects a run reads: selection by arrival (object write time), like the reference.

A run covers [start, end): start is the previous run's end (the watermark in
`<state>/job-latest.json`; everything there is on the first run), end is now minus a buffer, both
overridable (a run given its start is a rerun: it does not move the watermark).
Objects are taken from the `year=/month=/day=` folders of the days in the window (and
`input_day_margin` days before, for objects uploaded late under an earlier key) whose modification
time falls in the window. So late-arriving objects are read by the next run, whatever the time of
their events. A rerun of a window (explicit start/end) does not move the watermark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .storage import FileEntry, Storage, join

LATEST = "job-latest.json"


@dataclass(frozen=True)
class Window:
    start_ms: int
    end_ms: int
    explicit: bool

    @property
    def key(self) -> str:
        return f"{self.start_ms}-{self.end_ms}"

    def describe(self) -> dict:
        iso = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")  # noqa: E731
        return {"start_ms": self.start_ms, "end_ms": self.end_ms, "start": iso(self.start_ms), "end": iso(self.end_ms)}


def parse_time(text: str) -> int:
    """Epoch milliseconds from epoch ms/s digits or ISO-8601 (UTC when no offset)."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        number = int(value)
        return number * 1000 if abs(number) < 100_000_000_000 else number
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor ISO-8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def choose(storage: Storage, state: str, start: str | None, end: str | None, now_ms: int, buffer_s: int) -> Window:
    end_ms = parse_time(end) if end else now_ms - buffer_s * 1000
    if start:
        start_ms = parse_time(start)
    else:
        latest = storage.read_json(join(state, LATEST)) or {}
        start_ms = int(latest.get("end_ms", 0))
    if end_ms < start_ms:
        raise ValueError(f"window end {end_ms} is before its start {start_ms}")
    return Window(start_ms, end_ms, explicit=bool(start))


def _day_folders(source: str, window: Window, margin_days: int) -> list[str] | None:
    if window.start_ms <= 0:
        return None  # first run: the whole source
    first = datetime.fromtimestamp(window.start_ms / 1000, UTC).date() - timedelta(days=margin_days)
    last = datetime.fromtimestamp(window.end_ms / 1000, UTC).date()
    days, day = [], first
    while day <= last:
        days.append(join(source, f"year={day:%Y}/month={day:%m}/day={day:%d}"))
        day += timedelta(days=1)
    return days


def select_inputs(storage: Storage, source: str, window: Window, margin_days: int) -> list[FileEntry]:
    folders = _day_folders(source, window, margin_days)
    entries: list[FileEntry] = []
    for folder in folders if folders is not None else [source]:
        entries.extend(storage.list_files(folder))
    return sorted(
        (e for e in entries if window.start_ms <= e.mtime_ms < window.end_ms and not e.path.endswith("/_.json")),
        key=lambda e: e.path,
    )


def advance(storage: Storage, state: str, window: Window, job_id: str) -> None:
    storage.write_json(join(state, LATEST), {**window.describe(), "job_id": job_id})
