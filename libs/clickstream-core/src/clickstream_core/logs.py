"""JSON-lines logging for every service (one object per line on stderr)."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "pid": self.pid,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class RateLimit(logging.Filter):
    """At most `per_second` records per (logger, message template) each second; the rest are
    counted and the count is reported on the next record that passes. Client libraries retrying
    a dead peer in a tight loop (aiokafka logs thousands of lines a second) cannot flood the logs."""

    def __init__(self, per_second: int = 5):
        super().__init__()
        self.per_second = per_second
        self._window = 0
        self._seen: dict[tuple[str, object], int] = {}
        self._dropped: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = int(record.created)
        if now != self._window:
            self._window = now
            self._seen.clear()
        key = (record.name, record.msg)
        seen = self._seen.get(key, 0) + 1
        self._seen[key] = seen
        if seen > self.per_second:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.suppressed_repeats = dropped
        return True


def setup(service: str, level: str | None = None) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("LOG_LEVEL", "INFO")).upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return logging.getLogger(service)
