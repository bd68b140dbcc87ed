"""A bounded run of `make demo`, the README's first command, so it cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from scripts.stack import free_port, read_lake

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_make_demo_runs_and_every_acknowledged_request_lands(tmp_path):
    env = dict(os.environ)
    env.update(
        {
            "PORT": str(free_port()),
            "WORKER_HTTP_PORT": str(free_port()),
            "DATA_DIR": str(tmp_path / "data"),
            "DEMO_SECONDS": "3",
            "DEMO_VISITORS": "8",
        }
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    accepted = int(re.search(r"requests accepted \(200\): (\d+)", result.stdout).group(1))
    assert accepted > 0
    assert "acknowledged requests missing from the data: 0" in result.stdout
    records = read_lake(tmp_path / "data" / "lake")
    assert len({r["rid"] for r in records}) >= accepted
    assert {r["appId"] for r in records} == {"shop", "news_app"}
