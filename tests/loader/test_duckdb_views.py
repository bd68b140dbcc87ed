"""The embedded warehouse: views over the Parquet with the merge's dedup rules, readers never locked out."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
from clickstream_loader.runner import run_once
from clickstream_loader.warehouse import DATABASE_FILE, connect_duckdb

from tests.loader.helpers import duck_config, event, item, session, user, write

ROOT = Path(__file__).resolve().parents[2]


def test_views_dedup_on_the_merge_keys_and_expose_the_postgres_columns(tmp_path):
    write(tmp_path, "event_v2", [event("e1", event_name="first"), event("e2")], tag="w1")
    write(tmp_path, "event_v2", [event("e1", event_name="again"), event("e3")], tag="w2")
    write(tmp_path, "item_v2", [item("e1", "i1"), item("e1", "i1", price=2.0)], tag="w1")
    write(tmp_path, "session", [session("u1", "s1", "Direct"), session("u2", "s2", None)], tag="w1")
    write(tmp_path, "session", [session("u1", "s1", "google", minute=3), session("u2", "s2", None, minute=1)], tag="w2")
    write(tmp_path, "user_v2", [user("u1", minute=10, plan="pro"), user("u1", minute=1, plan="old")], tag="w1")
    report = run_once(duck_config(tmp_path))
    assert report.status == "succeeded", report.errors
    assert report.files_loaded == {"event_v2": 2, "item_v2": 1, "session": 2, "user_v2": 1}
    con = connect_duckdb(tmp_path / "_loader")
    assert con.execute('SELECT count(*) FROM "shop"."event_v2"').fetchone() == (3,)
    assert con.execute('SELECT count(*) FROM "shop"."item_v2"').fetchone() == (1,)
    assert dict(con.execute('SELECT user_pseudo_id, session_source FROM "shop"."session"').fetchall()) == {
        "u1": "google", "u2": None
    }  # fmt: skip
    # u2 had no real source: the earliest row stays
    assert con.execute("SELECT minute(event_timestamp) FROM shop.session WHERE user_pseudo_id = 'u2'").fetchone() == (
        0,
    )
    assert con.execute("SELECT user_properties->>'$.plan.value' FROM shop.user_v2").fetchall() == [("pro",)]
    described = {r[0]: r[1] for r in con.execute('DESCRIBE "shop"."event_v2"').fetchall()}
    assert described["event_timestamp"] == "TIMESTAMP" and described["custom_parameters"] == "JSON"
    assert described["event_time_msec"] == "BIGINT" and "partition_app" not in described
    assert con.execute("SELECT event_timestamp FROM shop.event_v2 WHERE event_id = 'e2'").fetchone()[0].hour == 12


def test_tables_without_files_are_empty_views_and_new_files_show_up(tmp_path):
    write(tmp_path, "event_v2", [event("e1")], tag="w1")
    assert run_once(duck_config(tmp_path)).status == "succeeded"
    con = connect_duckdb(tmp_path / "_loader")
    assert con.execute("SELECT count(*) FROM shop.item_v2").fetchone() == (0,)
    assert [r[0] for r in con.execute("DESCRIBE shop.item_v2").fetchall()][:3] == ["event_timestamp", "event_id",
                                                                               "event_name"]  # fmt: skip
    write(tmp_path, "event_v2", [event("e2")], tag="w2")
    # the glob view sees a new file of a known table at once; the state catches up on the next run
    assert con.execute("SELECT count(*) FROM shop.event_v2").fetchone() == (2,)
    report = run_once(duck_config(tmp_path))
    assert report.registered == 1 and report.files_loaded == {"event_v2": 1} and report.pending_files == 0


def test_readers_are_never_locked_out(tmp_path):
    write(tmp_path, "event_v2", [event("e1")], tag="w1")
    assert run_once(duck_config(tmp_path)).status == "succeeded"
    database = tmp_path / "_loader" / DATABASE_FILE
    # another process holds the published database open read-only for the whole time the loader runs
    reader = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print(c.execute('select count(*) from shop.event_v2').fetchone()[0], flush=True); time.sleep(8)",
         str(database)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert reader.stdout.readline().strip() == "1"
    write(tmp_path, "event_v2", [event("e2")], tag="w2", mtime=time.time())
    write(tmp_path, "item_v2", [item("e2", "i1")], tag="w2")  # a first item file changes the view definitions
    assert run_once(duck_config(tmp_path)).status == "succeeded"
    # and a new reader opens the new definitions read-only while the old reader still holds the old file
    con = duckdb.connect(str(database), read_only=True)
    assert con.execute("SELECT count(*) FROM shop.item_v2").fetchone() == (1,)
    con.close()
    assert connect_duckdb(tmp_path / "_loader").execute("SELECT count(*) FROM shop.event_v2").fetchone() == (2,)
    reader.kill()
    reader.wait()


def test_a_second_run_while_one_holds_the_local_state_is_busy(tmp_path):
    write(tmp_path, "event_v2", [event("e1")], tag="w1")
    results = []

    def nested(step, info):
        if step == "claimed" and not results:
            results.append(run_once(duck_config(tmp_path)))

    assert run_once(duck_config(tmp_path), hook=nested).status == "succeeded"
    assert results[0].status == "busy"


def test_retention_may_delete_old_partitions(tmp_path):
    write(tmp_path, "event_v2", [event("old", minute=0)], tag="w1")
    report = run_once(duck_config(tmp_path, retention_days=1, retention_delete_files=False))
    assert report.discovered == 0 and report.deleted_partitions == 0  # too old to be listed, but kept
    assert any((tmp_path / "event_v2").rglob("*.parquet"))
    report = run_once(duck_config(tmp_path, retention_days=1, retention_delete_files=True))
    assert report.deleted_partitions == 1 and not any((tmp_path / "event_v2").rglob("*.parquet"))
