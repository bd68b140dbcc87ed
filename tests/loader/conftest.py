"""Loader test inputs: the real ETL's output (made once per test session), and small hand-made Parquet files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

T0 = 1_795_811_600_000  # near the web SDK recordings' times


@pytest.fixture(scope="session")
def etl_ods(spark, tmp_path_factory) -> Path:
    """The four tables from two ETL windows over the web SDK recordings. The second window re-sends events of
    the first (SDK retries after a lost acknowledgement) and runs without the ETL's cross-run dedup, so the same
    event ids reach two windows' files: the loader has to count them once."""
    from clickstream_etl.config import EtlConfig
    from clickstream_etl.job import run

    from tests.etl.rawfiles import fixtures_dir, line, recorded_lines, write_object

    base = tmp_path_factory.mktemp("etl")
    posts = [json.loads(t) for t in (fixtures_dir() / "web-sdk" / "immediate.jsonl").read_text().splitlines()]
    resent = [e for req in posts if req["method"] == "POST" for e in req["decoded"]][:4]
    write_object(base / "raw", recorded_lines("immediate.jsonl"), T0, name="a")
    # the same four events again in a later request (a retry after a lost acknowledgement), in the next window
    retry = line(resent, ingest_ms=T0 + 400, app_id="shop")
    write_object(base / "raw", [retry, *recorded_lines("batch.jsonl")], T0 + 500, name="b")
    plain = '{"enrichers": []}'
    first = run(
        EtlConfig(source=str(base / "raw"), sink=str(base / "ods"), plugins=plain), end=str(T0 + 1), spark=spark
    )
    second = run(
        EtlConfig(source=str(base / "raw"), sink=str(base / "ods"), plugins=plain, dedup_lookback_days=0),
        end=str(T0 + 1000),
        spark=spark,
    )
    assert first.status == second.status == "succeeded"
    return base / "ods"


@pytest.fixture
def ods(etl_ods, tmp_path) -> Path:
    """A private copy of the ETL output (tests may add, rewrite or delete files)."""
    target = tmp_path / "ods"
    shutil.copytree(etl_ods, target, ignore=shutil.ignore_patterns("_etl", "bad_rows"))
    return target
