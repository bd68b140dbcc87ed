"""Helpers shared by the cross-service tests."""

from __future__ import annotations

import time
from pathlib import Path

from scripts.stack import metric_value, read_lake

__all__ = ["metric_value", "read_lake", "wait_for", "wait_for_rids"]


def wait_for(predicate, timeout_s: float = 20.0, interval_s: float = 0.1, message: str = "condition"):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")


def wait_for_rids(root: Path, rids: set[str], timeout_s: float = 20.0) -> list[dict]:
    def landed():
        records = read_lake(root)
        return records if rids <= {r["rid"] for r in records} else None

    return wait_for(landed, timeout_s, 0.2, f"{len(rids)} request ids in {root}")
