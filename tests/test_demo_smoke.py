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


@pytest.mark.slow
def test_make_up_serves_and_ctrl_c_drains(tmp_path):
    import signal
    import urllib.request

    from tests.support import wait_for

    port, worker_port = free_port(), free_port()
    env = dict(os.environ, PORT=str(port), WORKER_HTTP_PORT=str(worker_port), DATA_DIR=str(tmp_path / "data"))
    # Its own process group, as in a terminal, where Ctrl-C reaches make and the stack alike.
    up = subprocess.Popen(
        ["make", "--no-print-directory", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as answer:
                    return answer.status == 200
            except OSError:
                return False

        wait_for(ready, 60, 0.2, "make up to be ready")
        banner = ""
        while "Ctrl-C drains and stops." not in banner:  # make up has finished starting
            line = up.stdout.readline()
            assert line, "make up exited early"
            banner += line
        with urllib.request.urlopen(f"http://127.0.0.1:{worker_port}/ready", timeout=2) as answer:
            assert answer.status == 200
        body = b'[{"event_type":"_page_view","event_id":"up-1","app_id":"any_app","timestamp":1}]'
        request = urllib.request.Request(f"http://127.0.0.1:{port}/collect?appId=any_app", data=body)
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
            rid = answer.headers["X-Request-ID"]
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.communicate(timeout=60)
    assert "clickstream local stack is up" in banner
    # Objects roll every 10 s in make up; this one was uploaded by the drain on Ctrl-C.
    assert [r["rid"] for r in read_lake(tmp_path / "data" / "lake")] == [rid]
