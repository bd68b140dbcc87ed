"""The WAL (group commit, rolling, recovery) and the S3 sink's upload protocol, in-process."""

from __future__ import annotations

import asyncio
import gzip
import os
import time

import pytest
from clickstream_core.objectstore import LocalStore
from ingest_worker.sinks.base import SinkContext, SinkRefused
from ingest_worker.sinks.s3 import S3Sink, S3SinkConfig
from ingest_worker.wal import WriteAheadLog


def line(n: int) -> bytes:
    return b'{"rid":"%032x","data":"x"}\n' % n


def objects(store_root) -> dict[str, list[bytes]]:
    return {
        path.relative_to(store_root).as_posix(): gzip.decompress(path.read_bytes()).splitlines()
        for path in sorted(store_root.rglob("*.gz"))
    }


def make_sink(tmp_path, **overrides) -> S3Sink:
    config = S3SinkConfig(
        uri=(tmp_path / "lake").as_uri(),
        wal_dir=str(tmp_path / "wal"),
        segment_max_age_s=overrides.pop("segment_max_age_s", 60.0),
        **overrides,
    )
    return S3Sink(config, SinkContext("proj", 8 * 1024 * 1024))


async def test_group_commit_acknowledges_after_write(tmp_path):
    wal = WriteAheadLog(
        tmp_path,
        segment_max_bytes=1 << 20,
        segment_max_age_s=60,
        max_pending_bytes=1 << 20,
        max_disk_bytes=1 << 30,
        ack_trace=str(tmp_path / "trace"),
    )
    await wal.open()
    futures = [wal.append([line(i)]) for i in range(100)]
    commits = await asyncio.gather(*futures)
    # Frames appended in one loop turn share a commit: far fewer fsyncs than frames.
    assert len(set(commits)) < 10
    await wal.close()
    sealed = list(tmp_path.glob("*.sealed"))
    assert len(sealed) == 1
    assert sealed[0].read_bytes() == b"".join(line(i) for i in range(100))
    trace = (tmp_path / "trace").read_text().split()
    assert trace.count("F") == len(set(commits))


async def test_pending_limit_refuses_instead_of_queueing(tmp_path):
    wal = WriteAheadLog(
        tmp_path,
        segment_max_bytes=1 << 20,
        segment_max_age_s=60,
        max_pending_bytes=1000,
        max_disk_bytes=1 << 30,
    )
    await wal.open()
    from ingest_worker.wal import WalFull

    wal.append([b"x" * 900])
    with pytest.raises(WalFull):
        wal.append([b"y" * 200])
    await wal.close()


async def test_segments_roll_by_size_and_upload_under_contract_keys(tmp_path):
    sink = make_sink(tmp_path, segment_max_bytes=4096)
    await sink.start()
    for start in range(0, 400, 20):
        await sink.submit([line(n) for n in range(start, start + 20)])
    await sink.stop(10)
    found = objects(tmp_path / "lake")
    assert len(found) > 3  # 400 x 45 bytes rolled at 4 KiB
    lines = [entry for body in found.values() for entry in body]
    assert sorted(lines) == sorted(line(n).rstrip(b"\n") for n in range(400))
    hour = time.strftime("year=%Y/month=%m/day=%d/hour=%H", time.gmtime())
    for key in found:
        assert key.startswith(f"clickstream/proj/data/buffer/{hour}/w")
        assert key.endswith(".gz")
    assert not list((tmp_path / "wal").glob("*.sealed")) and not list((tmp_path / "wal").glob("*.wal"))


async def test_age_roll_makes_small_objects_fresh(tmp_path):
    sink = make_sink(tmp_path, segment_max_age_s=0.3)
    await sink.start()
    await sink.submit([line(1)])
    deadline = time.monotonic() + 5
    while not objects(tmp_path / "lake") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert list(objects(tmp_path / "lake").values()) == [[line(1).rstrip(b"\n")]]
    await sink.stop(5)


async def test_recovery_truncates_a_torn_line_and_uploads_the_rest(tmp_path):
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    (wal_dir / "writer-id").write_text("wtest\n")
    (wal_dir / "wtest-100.wal").write_bytes(line(1) + line(2) + b'{"rid":"torn')
    (wal_dir / "wtest-99.sealed").write_bytes(line(3))
    sink = make_sink(tmp_path)
    await sink.start()
    await sink.stop(10)
    found = objects(tmp_path / "lake")
    names = sorted(key.rsplit("/", 1)[1] for key in found)
    assert names == ["wtest-100.gz", "wtest-99.gz"]
    assert sorted(entry for body in found.values() for entry in body) == sorted(
        line(n).rstrip(b"\n") for n in (1, 2, 3)
    )


async def test_recovered_segment_already_uploaded_is_not_duplicated(tmp_path):
    """Crash between the put and the delete: the next start must not write a second object."""
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    (wal_dir / "writer-id").write_text("wtest\n")
    old_key = "clickstream/proj/data/buffer/year=2020/month=01/day=01/hour=00/wtest-5.gz"
    (wal_dir / "wtest-5.sealed").write_bytes(line(5))
    (wal_dir / "wtest-5.key").write_text(old_key)
    store = LocalStore(tmp_path / "lake")
    await store.put(old_key, gzip.compress(line(5)))
    sink = make_sink(tmp_path)
    await sink.start()
    await sink.stop(10)
    assert list(objects(tmp_path / "lake")) == [old_key]
    assert not list(wal_dir.glob("wtest-5.*"))


async def test_recovered_segment_whose_upload_never_landed_goes_to_the_current_hour(tmp_path):
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    (wal_dir / "writer-id").write_text("wtest\n")
    (wal_dir / "wtest-6.sealed").write_bytes(line(6))
    (wal_dir / "wtest-6.key").write_text("clickstream/proj/data/buffer/year=2020/month=01/day=01/hour=00/wtest-6.gz")
    sink = make_sink(tmp_path)
    await sink.start()
    await sink.stop(10)
    (key,) = objects(tmp_path / "lake")
    assert time.strftime("year=%Y/month=%m/day=%d/hour=%H", time.gmtime()) in key
    assert key.endswith("/wtest-6.gz")


async def test_upload_failures_are_retried_without_losing_data(tmp_path):
    sink = make_sink(tmp_path, segment_max_age_s=0.1)
    real_put = sink.store.put
    failures = {"left": 3}

    async def flaky_put(key, data, content_type="application/octet-stream"):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("store unavailable")
        await real_put(key, data, content_type)

    sink.store.put = flaky_put
    await sink.start()
    await sink.submit([line(n) for n in range(10)])
    deadline = time.monotonic() + 10
    while not objects(tmp_path / "lake") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sink.health().ready  # the WAL holds the data meanwhile: still taking work
    await sink.stop(10)
    assert failures["left"] == 0
    (body,) = objects(tmp_path / "lake").values()
    assert body == [line(n).rstrip(b"\n") for n in range(10)]


async def test_wal_disk_budget_refuses_work_and_reports_not_ready(tmp_path):
    sink = make_sink(tmp_path, wal_max_bytes=2000, segment_max_age_s=0.05)

    async def down(*_args, **_kwargs):
        raise OSError("store down")

    sink.store.put = down
    await sink.start()
    refused = False
    for n in range(200):
        try:
            await sink.submit([line(n)])
        except SinkRefused:
            refused = True
            break
    assert refused
    assert not sink.health().ready
    for task in sink._uploaders:
        task.cancel()
    await sink.wal.close()
    # Everything accepted is still on disk for the next start.
    on_disk = b"".join(p.read_bytes() for p in sorted((tmp_path / "wal").glob("*.sealed")))
    assert on_disk.count(b"\n") == n


def test_wal_write_is_fdatasynced(tmp_path, monkeypatch):
    """The ack path depends on fdatasync: a WAL that skipped it must fail this test."""
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))

    async def run():
        wal = WriteAheadLog(
            tmp_path,
            segment_max_bytes=1 << 20,
            segment_max_age_s=60,
            max_pending_bytes=1 << 20,
            max_disk_bytes=1 << 30,
        )
        await wal.open()
        await wal.append([line(1)])
        assert calls, "acknowledged before any fdatasync"
        await wal.close()

    asyncio.run(run())
