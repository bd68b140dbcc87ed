"""kinesis-s3-sink's landing protocol (intent -> put -> commit) with an in-memory checkpoint store."""

from __future__ import annotations

import gzip
import time

import orjson
from clickstream_core.objectstore import LocalStore
from kinesis_s3_sink.checkpoint import Checkpoint, CheckpointStore, Intent
from kinesis_s3_sink.landing import Batch, Lander, Limits


class MemoryCheckpoints(CheckpointStore):
    def __init__(self):
        self.state: dict[str, Checkpoint] = {}
        self.calls: list[tuple] = []

    async def load(self, partition):
        return self.state.get(partition, Checkpoint(None))

    async def save_intent(self, partition, intent):
        self.calls.append(("intent", partition, intent))
        self.state[partition] = Checkpoint(self.state.get(partition, Checkpoint(None)).position, intent)

    async def commit(self, partition, position):
        self.calls.append(("commit", partition, position))
        self.state[partition] = Checkpoint(position, None)


def record(n: int) -> bytes:
    return orjson.dumps({"rid": f"{n:032x}", "data": "[]"})


def objects(root) -> dict[str, list[bytes]]:
    return {
        p.relative_to(root).as_posix(): gzip.decompress(p.read_bytes()).splitlines() for p in sorted(root.rglob("*.gz"))
    }


def make(tmp_path):
    checkpoints = MemoryCheckpoints()
    lander = Lander(LocalStore(tmp_path), checkpoints, "raw/", "invalid/")
    return lander, checkpoints


async def test_a_batch_lands_after_its_intent_and_before_its_commit(tmp_path):
    lander, checkpoints = make(tmp_path)
    batch = Batch("shard-1", "shardId-1")
    for n in range(5):
        batch.add(str(100 + n), record(n))
    await lander.land(batch)
    ((key, lines),) = objects(tmp_path).items()
    hour = time.strftime("year=%Y/month=%m/day=%d/hour=%H", time.gmtime())
    assert key == f"raw/{hour}/shardId-1-100.gz"
    assert lines == [record(n) for n in range(5)]
    assert [c[0] for c in checkpoints.calls] == ["intent", "commit"]
    assert checkpoints.calls[0][2] == Intent(key, "100", "104")
    assert checkpoints.state["shard-1"] == Checkpoint("104", None)


async def test_records_that_are_not_json_objects_are_kept_under_the_invalid_prefix(tmp_path):
    lander, _ = make(tmp_path)
    batch = Batch("p", "topic-0")
    batch.add("1", record(1))
    batch.add("2", b"not json")
    batch.add("3", b'{\n "pretty": true\n}')  # a JSON object over several lines becomes one line
    batch.add("4", b"[1, 2]")
    await lander.land(batch)
    found = objects(tmp_path)
    raw = next(lines for key, lines in found.items() if key.startswith("raw/"))
    invalid = next(lines for key, lines in found.items() if key.startswith("invalid/"))
    assert raw == [record(1), b'{"pretty":true}']
    assert invalid == [b"not json", b"[1, 2]"]


async def test_a_left_over_intent_whose_object_exists_moves_the_checkpoint_past_it(tmp_path):
    lander, checkpoints = make(tmp_path)
    batch = Batch("s", "s")
    batch.add("7", record(7))
    await lander.land(batch)
    key = checkpoints.calls[0][2].key
    # Simulate a crash between the put and the commit: the intent is still there.
    checkpoints.state["s"] = Checkpoint("6", Intent(key, "7", "7"))
    assert await lander.resume_position("s") == "7"
    assert checkpoints.state["s"] == Checkpoint("7", None)
    assert len(objects(tmp_path)) == 1


async def test_a_left_over_intent_whose_object_is_missing_reads_again_from_the_checkpoint(tmp_path):
    lander, checkpoints = make(tmp_path)
    checkpoints.state["s"] = Checkpoint("6", Intent("raw/year=2020/month=01/day=01/hour=00/s-7.gz", "7", "9"))
    assert await lander.resume_position("s") == "6"
    assert not objects(tmp_path)


def test_batches_are_due_by_count_size_and_age():
    limits = Limits(max_records=3, max_bytes=10_000, max_age_s=60)
    batch = Batch("p", "p")
    assert not batch.due(limits)
    for n in range(3):
        batch.add(str(n), record(n))
    assert batch.due(limits)
    big = Batch("p", "p")
    big.add("1", b'{"x":"' + b"a" * 10_000 + b'"}')
    assert big.due(limits)
    old = Batch("p", "p")
    old.add("1", record(1))
    assert not old.due(limits)
    assert old.due(limits, now=old.opened_at + 61)
