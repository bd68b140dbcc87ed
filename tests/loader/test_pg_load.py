"""The PostgreSQL path on a real PostgreSQL 15: load, merge rules, file states, rewrites, retention, metrics."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
from clickstream_loader import metrics
from clickstream_loader.runner import run_once
from prometheus_client import REGISTRY

from tests.loader.helpers import count, event, item, pg_config, query, session, states, user, write


def test_loads_the_four_tables_and_keeps_values_faithful(tmp_path, pg_dsn):
    write(tmp_path, "event_v2", [event(f"e{i}", minute=i, event_value=i / 2) for i in range(10)], tag="a")
    write(tmp_path, "item_v2", [item("e1", "i1", price=9.5), item("e1", "i2")], tag="a")
    write(tmp_path, "user_v2", [user("u1")], tag="a")
    write(tmp_path, "session", [session("u1", "s1", "google")], tag="a")
    report = run_once(pg_config(tmp_path, pg_dsn))
    assert report.status == "succeeded", report.errors
    assert report.rows_loaded == {"event_v2": 10, "item_v2": 2, "user_v2": 1, "session": 1}
    assert [count(pg_dsn, t) for t in ("event_v2", "item_v2", "user_v2", "session")] == [10, 2, 1, 1]
    row = query(
        pg_dsn,
        "SELECT event_timestamp, event_time_msec, event_value, custom_parameters, process_info, created_time "
        'FROM "shop"."event_v2" WHERE event_id = %s',
        ("e3",),
    )[0]
    assert row[0] == datetime(2026, 3, 1, 12, 3)  # UTC, no zone
    assert row[1] == int(datetime(2026, 3, 1, 12, 3, tzinfo=UTC).timestamp() * 1000)
    assert row[2] == 1.5
    assert row[3] == {"k": {"value": "v", "type": "STRING"}} and row[4] == {"rid": "r1"}
    assert abs(row[5] - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=5)  # load time
    assert query(pg_dsn, 'SELECT user_properties FROM "shop"."user_v2"')[0][0] == {
        "plan": {"value": "free", "type": "STRING", "set_time_msec": 1}
    }
    assert states(pg_dsn) == {"LOADED": 4}
    again = run_once(pg_config(tmp_path, pg_dsn))
    assert again.status == "succeeded" and again.manifests == 0 and count(pg_dsn, "event_v2") == 10


def test_same_keys_in_one_batch_and_across_batches_count_once(tmp_path, pg_dsn):
    # an SDK retry that reached two ETL windows: the same event in two files of one load, then a third later
    write(tmp_path, "event_v2", [event("e1", event_name="first"), event("e2")], tag="w1")
    write(tmp_path, "event_v2", [event("e1", event_name="again"), event("e3")], tag="w2")
    write(tmp_path, "item_v2", [item("e1", "i1"), item("e1", "i1", price=2.0), item("e1", "i2")], tag="w1")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    assert count(pg_dsn, "event_v2") == 3 and count(pg_dsn, "item_v2") == 2
    write(tmp_path, "event_v2", [event("e1", event_name="third"), event("e1", minute=1)], tag="w3")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    rows = query(pg_dsn, 'SELECT event_id, event_timestamp, event_name FROM "shop"."event_v2" ORDER BY 1, 2')
    # the key is (event_id, event_timestamp): e1 at another time is another row; a repeated key is replaced
    assert [(r[0], r[2]) for r in rows] == [("e1", "third"), ("e1", "_page_view"), ("e2", "_page_view"),
                                            ("e3", "_page_view")]  # fmt: skip


def test_new_keys_copy_straight_and_a_collision_falls_back_to_the_merge(tmp_path, pg_dsn, caplog):
    def paths() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for record in caplog.records:
            if record.getMessage() == "manifest loaded":
                out.setdefault(record.table, []).append(record.path)
        caplog.clear()
        return out

    caplog.set_level("INFO", logger="clickstream_loader")
    write(tmp_path, "event_v2", [event("e1"), event("e2")], tag="w1")
    write(tmp_path, "session", [session("u1", "s1", "google")], tag="w1")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    assert paths() == {"event_v2": ["straight"], "session": ["straight"]}
    # an event loaded before (tried straight, refused by the unique index) and a session seen again (keys checked)
    write(tmp_path, "event_v2", [event("e3"), event("e1", event_name="again")], tag="w2")
    write(tmp_path, "session", [session("u1", "s1", "bing")], tag="w2")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    assert paths() == {"event_v2": ["merge"], "session": ["merge"]}
    rows = query(pg_dsn, 'SELECT event_id, event_name FROM "shop"."event_v2" ORDER BY 1')
    assert rows == [("e1", "again"), ("e2", "_page_view"), ("e3", "_page_view")]
    assert count(pg_dsn, "session") == 1


def test_session_keeps_a_real_traffic_source_over_direct(tmp_path, pg_dsn):
    write(tmp_path, "session", [session("u1", "s1", "Direct"), session("u2", "s2", "google")], tag="w1")
    write(tmp_path, "session", [session("u3", "s3", None), session("u3", "s3", "bing", minute=5)], tag="w2")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    # later loads: a real source replaces Direct; Direct or null never replaces a real source
    write(tmp_path, "session", [session("u1", "s1", "newsletter", minute=9), session("u2", "s2", "Direct")], tag="w3")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    write(tmp_path, "session", [session("u1", "s1", None, minute=20)], tag="w4")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    rows = dict(query(pg_dsn, 'SELECT user_pseudo_id, session_source FROM "shop"."session"'))
    assert rows == {"u1": "newsletter", "u2": "google", "u3": "bing"}


def test_user_keeps_the_newest_row_whatever_the_load_order(tmp_path, pg_dsn):
    write(tmp_path, "user_v2", [user("u1", minute=10, plan="pro"), user("u1", minute=5, plan="free")], tag="w1")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    write(tmp_path, "user_v2", [user("u1", minute=1, plan="trial")], tag="w0")  # an older file arrives late
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    assert query(pg_dsn, "SELECT user_properties->'plan'->>'value' FROM \"shop\".\"user_v2\"") == [("pro",)]
    write(tmp_path, "user_v2", [user("u1", minute=30, plan="team")], tag="w9")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    assert query(pg_dsn, "SELECT user_properties->'plan'->>'value' FROM \"shop\".\"user_v2\"") == [("team",)]


def test_manifests_hold_at_most_max_files_and_apps_get_their_own_schema(tmp_path, pg_dsn):
    for n in range(5):
        write(tmp_path, "event_v2", [event(f"e{n}"), event(f"x{n}", app="Other_App")], tag=f"w{n}")
    report = run_once(pg_config(tmp_path, pg_dsn, max_files=2))
    assert report.status == "succeeded"
    assert report.manifests == 6  # 3 per app: 2 + 2 + 1
    assert count(pg_dsn, "event_v2") == 5 and count(pg_dsn, "event_v2", app="Other_App") == 5
    manifests = query(pg_dsn, "SELECT manifest_id, count(*) FROM clickstream_loader.files GROUP BY 1")
    assert sorted(n for _, n in manifests) == [1, 1, 2, 2, 2, 2]


def test_groups_load_at_once_on_their_own_connections(tmp_path, pg_dsn):
    for app in ("a1", "a2"):
        for n in range(3):
            write(tmp_path, "event_v2", [event(f"{app}-e{n}", app=app), event(f"{app}-dup", app=app)], tag=f"w{n}")
        write(tmp_path, "session", [session("u1", "s1", "google", app=app)], tag="w0")
    # the first two copies wait for each other: only groups loading at the same time get past the barrier
    barrier, arrivals, guard = threading.Barrier(2, timeout=20), [], threading.Lock()

    def meet(step, info):
        if step != "copied":
            return
        with guard:
            arrivals.append((threading.get_ident(), info["app_id"], info["table"]))
            first_two = len(arrivals) <= 2
        if first_two:
            barrier.wait()

    report = run_once(pg_config(tmp_path, pg_dsn, max_files=2, connections=2), hook=meet)
    assert report.status == "succeeded", report.errors
    assert len({thread for thread, _, _ in arrivals[:2]}) == 2
    assert [count(pg_dsn, "event_v2", app) for app in ("a1", "a2")] == [4, 4]
    assert [count(pg_dsn, "session", app) for app in ("a1", "a2")] == [1, 1]
    assert report.files_loaded == {"event_v2": 6, "session": 2} and report.manifests == 6
    assert states(pg_dsn) == {"LOADED": 8}
    assert query(pg_dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'clickstream-loader'") == [
        (0,)
    ]


def test_a_rewritten_file_is_reloaded_without_duplicates(tmp_path, pg_dsn):
    [path] = write(tmp_path, "event_v2", [event("e1"), event("e2")], tag="w1")
    assert run_once(pg_config(tmp_path, pg_dsn)).status == "succeeded"
    time.sleep(0.01)
    write(tmp_path, "event_v2", [event("e1", event_name="rerun"), event("e2"), event("e4")], tag="w1")  # same name
    report = run_once(pg_config(tmp_path, pg_dsn))
    assert report.registered == 1 and report.rows_loaded == {"event_v2": 3}
    assert dict(query(pg_dsn, 'SELECT event_id, event_name FROM "shop"."event_v2"')) == {
        "e1": "rerun", "e2": "_page_view", "e4": "_page_view"
    }  # fmt: skip
    assert query(pg_dsn, "SELECT state, size FROM clickstream_loader.files") == [("LOADED", path.stat().st_size)]


def test_a_file_deleted_before_its_load_is_gone_not_an_error(tmp_path, pg_dsn):
    [keep] = write(tmp_path, "event_v2", [event("e1")], tag="a")
    [lost] = write(tmp_path, "event_v2", [event("e2")], tag="b")

    def delete_after_claim(step, info):
        if step == "claimed":
            lost.unlink(missing_ok=True)

    report = run_once(pg_config(tmp_path, pg_dsn), hook=delete_after_claim)
    assert report.status == "succeeded" and report.gone == 1
    assert dict(query(pg_dsn, "SELECT uri, state FROM clickstream_loader.files")) == {
        str(keep): "LOADED", str(lost): "GONE"
    }  # fmt: skip
    assert count(pg_dsn, "event_v2") == 1


def test_retention_deletes_rows_older_than_n_days_before_the_newest(tmp_path, pg_dsn):
    rows = [event("old", minute=-3 * 24 * 60), event("edge", minute=-2 * 24 * 60 + 1), event("new")]
    write(tmp_path, "event_v2", rows, tag="a")
    write(tmp_path, "item_v2", [item("old", "i", minute=-3 * 24 * 60), item("new", "i")], tag="a")
    write(tmp_path, "user_v2", [user("u9", minute=-3 * 24 * 60)], tag="a")
    # discovery uses today's date for its cutoff: keep it far enough back that these 2026 files are listed
    days = 2 + (datetime.now(UTC).date() - datetime(2026, 3, 1).date()).days
    report = run_once(pg_config(tmp_path, pg_dsn, retention_days=max(days, 400)))
    assert report.status == "succeeded" and report.deleted_rows.get("event_v2", 0) == 0
    from clickstream_loader.pg import PostgresLoader

    loader = PostgresLoader(pg_dsn)
    loader.setup(["shop"])
    deleted = loader.delete_expired(["shop"], 2)
    loader.close()
    assert deleted == {"event_v2": 1, "item_v2": 1, "session": 0}
    assert sorted(r[0] for r in query(pg_dsn, 'SELECT event_id FROM "shop"."event_v2"')) == ["edge", "new"]
    assert count(pg_dsn, "user_v2") == 1  # users are kept, as in the reference


def test_metrics_files_by_state_oldest_age_and_rows(tmp_path, pg_dsn):
    [a] = write(tmp_path, "event_v2", [event("e1"), event("e2")], tag="a", mtime=time.time() - 120)
    before = REGISTRY.get_sample_value("loader_rows_loaded_total", {"table": "event_v2"}) or 0

    def stop_after_claim(step, info):
        if step == "claimed":
            raise KeyboardInterrupt  # the run dies with the file ENQUEUED

    try:
        run_once(pg_config(tmp_path, pg_dsn), hook=stop_after_claim)
    except KeyboardInterrupt:
        pass
    from clickstream_loader.pg import PostgresLoader

    loader = PostgresLoader(pg_dsn)
    summary = loader.store.summary()
    loader.close()
    metrics.observe_summary(summary)
    assert REGISTRY.get_sample_value("loader_files", {"table": "event_v2", "state": "ENQUEUED"}) == 1
    assert 100 < REGISTRY.get_sample_value("loader_oldest_unloaded_file_age_seconds") < 3600
    report = run_once(pg_config(tmp_path, pg_dsn))
    assert report.status == "succeeded" and report.pending_files == 0
    assert REGISTRY.get_sample_value("loader_files", {"table": "event_v2", "state": "LOADED"}) == 1
    assert REGISTRY.get_sample_value("loader_files", {"table": "event_v2", "state": "ENQUEUED"}) == 0
    assert REGISTRY.get_sample_value("loader_oldest_unloaded_file_age_seconds") == 0
    assert REGISTRY.get_sample_value("loader_rows_loaded_total", {"table": "event_v2"}) == before + 2
    assert pq.read_metadata(a).num_rows == 2
