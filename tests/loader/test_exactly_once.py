"""Exactly once on PostgreSQL: crashes at every step of a load, a killed process, two loaders at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clickstream_loader.pg import PostgresLoader
from clickstream_loader.runner import run_once

from tests.loader.helpers import count, event, item, pg_config, query, session, states, write

ROOT = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """Not an Exception: nothing in the loader catches it, like a process dying."""


def four_files(root: Path) -> None:
    # e0 is in every file (an SDK retry seen by several ETL windows); e1..e4 once each
    for n in range(1, 5):
        write(root, "event_v2", [event("e0"), event(f"e{n}")], tag=f"w{n}", mtime=1_000_000 + n)
    write(root, "item_v2", [item("e1", "i1"), item("e1", "i1")], tag="w1")
    write(root, "session", [session("u1", "s1", "google")], tag="w1")


def assert_loaded_once(dsn: str) -> None:
    assert count(dsn, "event_v2") == 5
    assert query(dsn, 'SELECT count(DISTINCT event_id) FROM "shop"."event_v2"') == [(5,)]
    assert count(dsn, "item_v2") == 1 and count(dsn, "session") == 1
    assert states(dsn) == {"LOADED": 6}


@pytest.mark.parametrize("step", ["claimed", "copied", "merged", "marked", "committed"])
@pytest.mark.parametrize("manifest", [1, 2])
def test_crash_at_any_step_then_rerun_loads_each_file_once(tmp_path, pg_dsn, step, manifest):
    four_files(tmp_path)
    seen = []

    def crash(at_step, info):
        if at_step == "claimed":
            seen.append(info["manifest_id"])
        if at_step == step and len(seen) == manifest and info["table"] == "event_v2":
            raise Crash(step)

    with pytest.raises(Crash):
        run_once(pg_config(tmp_path, pg_dsn, max_files=2, connections=1), hook=crash)
    committed = (manifest - 1) + (step == "committed")
    assert count(pg_dsn, "event_v2") == (0 if committed == 0 else 3 if committed == 1 else 5)
    pending = dict(query(pg_dsn, "SELECT state, count(*) FROM clickstream_loader.files GROUP BY 1"))
    assert pending.get("LOADED", 0) == 2 * committed
    report = run_once(pg_config(tmp_path, pg_dsn, max_files=2))
    assert report.status == "succeeded", report.errors
    assert_loaded_once(pg_dsn)
    assert query(pg_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]


def test_killed_process_leaves_nothing_half_done(tmp_path, pg_dsn):
    four_files(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.loader.loader_proc", pg_dsn, str(tmp_path), "2", "kill-at:merged"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    # killed at the first merge of any group (two load at once): no manifest had committed, none is half done
    assert [count(pg_dsn, t) for t in ("event_v2", "item_v2", "session")] == [0, 0, 0]
    left = states(pg_dsn)
    assert "LOADED" not in left and left.get("ENQUEUED", 0) >= 1 and sum(left.values()) == 6, left
    report = run_once(pg_config(tmp_path, pg_dsn, max_files=2))  # the dead run's advisory lock is gone with it
    assert report.status == "succeeded" and not report.busy_groups
    assert_loaded_once(pg_dsn)


def test_two_loader_processes_at_once_load_every_file_once(tmp_path, pg_dsn):
    expected = {}
    for app in ("a1", "a2", "a3"):
        for n in range(4):
            write(tmp_path, "event_v2", [event(f"{app}-e{n}", app=app), event(f"{app}-dup", app=app)], tag=f"w{n}")
            write(tmp_path, "session", [session(f"u{n}", "s", "google", app=app)], tag=f"w{n}")
        expected[app] = (5, 4)
    cmd = [sys.executable, "-m", "tests.loader.loader_proc", pg_dsn, str(tmp_path), "1", "sleep-at:copied:0.2"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    files = sum(sum(r["files_loaded"].values()) for r in reports)
    assert files == 24  # 3 apps x (4 event + 4 session files), each loaded by exactly one process
    # they overlapped (each run sleeps 0.2 s per manifest): both loaded, or one found a group the other held
    assert all(sum(r["files_loaded"].values()) > 0 for r in reports) or any(r["busy_groups"] for r in reports)
    for app, (events, sessions) in expected.items():
        assert count(pg_dsn, "event_v2", app=app) == events
        assert count(pg_dsn, "session", app=app) == sessions
    assert states(pg_dsn) == {"LOADED": 24}
    assert query(pg_dsn, "SELECT max(attempts) FROM clickstream_loader.files") == [(1,)]


def test_row_locks_alone_stop_a_second_loader_of_the_same_files(tmp_path, pg_dsn):
    """Without the advisory lock (a loader that skipped it): the file rows' locks and state re-check still hold."""
    write(tmp_path, "event_v2", [event("e1"), event("e2")], tag="w1")
    first = PostgresLoader(pg_dsn)
    second = PostgresLoader(pg_dsn)
    try:
        first.setup(["shop"])
        from clickstream_core.appconfig import AppConfig
        from clickstream_loader.discovery import discover

        first.store.register(discover(str(tmp_path), AppConfig()))
        files = first.store.claim("shop", "event_v2", 10, "m1")
        assert len(files) == 1
        # a second loader re-claims the ENQUEUED leftover (as it would after a crash) under its own manifest
        stolen = second.store.claim("shop", "event_v2", 10, "m2")
        assert [f.uri for f in stolen] == [f.uri for f in files]
        # while its load transaction holds the rows, nobody else can claim them
        seen = {}

        def peek(step, info):
            if step == "copied":
                seen["claim"] = first.store.claim("shop", "event_v2", 10, "m3")

        second.hook = peek
        result = second.load_manifest("shop", "event_v2", "m2", stolen)
        assert seen["claim"] == [] and result.files == 1
        # the first loader's manifest was taken over: it finds nothing left to load
        assert first.load_manifest("shop", "event_v2", "m1", files).files == 0
    finally:
        first.close()
        second.close()
    assert count(pg_dsn, "event_v2") == 2 and states(pg_dsn) == {"LOADED": 1}
