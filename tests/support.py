"""Helpers shared by the cross-service tests."""

from __future__ import annotations

import time
from pathlib import Path

from scripts.stack import read_lake


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


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` (optionally matching labels) in Prometheus exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total
