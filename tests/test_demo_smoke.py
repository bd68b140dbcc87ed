"""A bounded run of `make demo`, the README's first command, so it cannot rot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from scripts.stack import free_port, read_lake

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
def test_make_demo_runs_and_every_acknowledged_request_lands(tmp_path, warehouse):
    env = dict(os.environ)
    env.update(
        {
            "PORT": str(free_port()),
            "WORKER_HTTP_PORT": str(free_port()),
            "DATA_DIR": str(tmp_path / "data"),
            "DEMO_SECONDS": "3",
            "DEMO_VISITORS": "8",
            "WAREHOUSE": warehouse,
        }
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    accepted = int(re.search(r"requests accepted \(200\): (\d+)", result.stdout).group(1))
    assert accepted > 0
    assert "acknowledged requests missing from the data: 0" in result.stdout
    records = read_lake(tmp_path / "data" / "lake")
    assert len({r["rid"] for r in records}) >= accepted
    assert {r["appId"] for r in records} == {"shop", "news_app"}
    # ... and through the ETL and the loader into the warehouse, every accepted event once
    events = int(re.search(r"events in them: (\d+)", result.stdout).group(1))
    in_warehouse = sum(int(n) for n in re.findall(r"  \w+: (\d+) events, ", result.stdout))
    assert in_warehouse == events > 0
    assert "bad rows: 0" in result.stdout
    assert f"warehouse: {'DuckDB' if warehouse == 'duckdb' else 'PostgreSQL'} " in result.stdout
    if warehouse == "postgres":  # the demo's own cluster holds the tables and is stopped with it
        cluster = Path(re.search(r"data in (\S+)\)", result.stdout).group(1))
        try:
            assert (cluster / "data" / "PG_VERSION").exists()
            assert not (cluster / "data" / "postmaster.pid").exists()
        finally:
            if cluster.is_relative_to("/var/tmp"):  # as root, beside a data dir other users cannot enter
                shutil.rmtree(cluster, ignore_errors=True)


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
        now_ms = int(time.time() * 1000)
        event = {"event_type": "_page_view", "event_id": "up-1", "app_id": "any_app", "unique_id": "u1"}
        body = json.dumps([{**event, "timestamp": now_ms}]).encode()
        browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/collect?appId=any_app", data=body, headers={"User-Agent": browser}
        )  # urllib's own user agent is a bot to the ETL
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
            rid = answer.headers["X-Request-ID"]
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.communicate(timeout=300)
    assert "clickstream local stack is up" in banner
    # Objects roll every 10 s in make up; this one was uploaded by the drain on Ctrl-C.
    assert [r["rid"] for r in read_lake(tmp_path / "data" / "lake")] == [rid]
    # The pipeline's last cycle took it through the ETL into the warehouse.
    from clickstream_loader.warehouse import connect_duckdb

    ods = tmp_path / "data" / "lake" / "clickstream" / "default" / "data" / "ods"
    con = connect_duckdb(ods / "_loader")
    assert con.execute('SELECT event_id, event_name FROM "any_app"."event_v2"').fetchall() == [("up-1", "_page_view")]
