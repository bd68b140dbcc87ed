"""`make bench-etl`: the ETL job on >= 2M realistic raw events against its I/O floor, same run.

1. Generate (once; cached in ~/.cache/clickstream/bench-etl/) raw objects as the ingest worker
   writes them: gzip NDJSON raw records (ingestion-contract.md §1), each request a batch of SDK
   events (scripts/sdkgen.py: sessions of page views, scrolls, searches, clicks, carts and
   purchases), half the bodies plain JSON (web), half Base64+gzip (mobile); 20k visitors from
   ~5k addresses with the SDKs' user agents.
2. The full job (default plug-ins: Clickstream SDK transformer, user agent, IP geo, traffic
   source; dedup, validation, four tables, bad rows) in local mode.
3. The I/O floor: the same read of the raw objects (text, gzip) plus the same Parquet writes of
   the job's four tables (read back and cached first), with no transformation.

Prints events/s, events/s per core and floor/job. Goals (issue 4): >= 50,000 events/s per core
and >= 0.5 of the floor.

    python -m scripts.bench_etl [--events 2000000] [--cores 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from clickstream_core import raw_record

from scripts import sdkgen

CACHE = Path.home() / ".cache" / "clickstream" / "bench-etl"
REQUESTS_PER_OBJECT = 5000
GEN_VERSION = 1


def _addresses(count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    out = []
    while len(out) < count:
        first = rnd.choice([8, 24, 31, 41, 49, 61, 77, 81, 85, 93, 103, 114, 133, 151, 177, 185, 200, 213])
        out.append(f"{first}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}")
    return out


def _generate_part(args: tuple[Path, int, int, int]) -> int:
    folder, part, events_wanted, seed = args
    random.seed(seed)
    addresses = _addresses(5000, seed)
    visitors = [sdkgen.Visitor("shop", "shop.example.com") for _ in range(20_000 // 2)]
    now = int(time.time() * 1000)
    written, obj, lines, sequence = 0, 0, [], 0
    while written < events_wanted:
        visitor = random.choice(visitors)
        events = sdkgen.Session(visitor, now_ms=now - random.randint(60_000, 6 * 3600_000)).play(
            first_visit=visitor.session_number == 0
        )
        mobile = random.random() < 0.5
        for start in range(0, len(events), 10):
            batch = events[start : start + 10]
            body = sdkgen.body_text(batch, gzip_base64=mobile)
            sequence += 1
            target = sdkgen.collect_target("shop", body, sequence, gzip_base64=mobile)
            lines.append(
                raw_record.build_line(
                    body=body,
                    ip=addresses[hash(visitor.device_id) % len(addresses)],
                    rid=os.urandom(16).hex(),
                    ua=visitor.user_agent,
                    uri=target,
                    path="/collect",
                    platform="Android" if mobile else "Web",
                    app_id="shop",
                    compression="gzip" if mobile else None,
                    upload_timestamp=str(batch[-1]["timestamp"] + 500),
                    fake_ip=None,
                    arrival=raw_record.Arrival.at(batch[-1]["timestamp"] + 800),
                )
            )
            written += len(batch)
        if len(lines) >= REQUESTS_PER_OBJECT or written >= events_wanted:
            key = raw_record.raw_object_key("", now / 1000, f"bench-{part:02d}-{obj:05d}")
            path = folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gzip.compress(b"".join(lines), compresslevel=1))
            obj, lines = obj + 1, []
    return written


def generate(events: int, parts: int) -> Path:
    folder = CACHE / f"v{GEN_VERSION}-{events}"
    done = folder / "_done.json"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    began = time.monotonic()
    with multiprocessing.Pool(parts) as pool:
        counts = pool.map(_generate_part, [(folder, p, events // parts, 1000 + p) for p in range(parts)])
    done.write_text(json.dumps({"events": sum(counts), "seconds": round(time.monotonic() - began, 1)}))
    print(f"generated {sum(counts):,} events in {time.monotonic() - began:.0f} s into {folder}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--plugins", default="", help="plug-in chain (file or inline JSON); default: the defaults")
    args = parser.parse_args()
    raw = generate(args.events, max(1, args.cores))
    source_events = json.loads((raw / "_done.json").read_text())["events"]

    from clickstream_etl.config import EtlConfig
    from clickstream_etl.enrichers.ip_geo import default_databases
    from clickstream_etl.job import run
    from clickstream_etl.spark import build_session
    from clickstream_etl.storage import Storage

    # Without the database the geo enricher does nothing, and the figures are not comparable with the recorded ones.
    geo = "DB-IP database" if default_databases() else "NO GeoIP database (run `python -m scripts.geoip fetch`)"

    spark = build_session(master=f"local[{args.cores}]", driver_memory="8g")
    storage = Storage(spark)
    work = Path(tempfile.mkdtemp(prefix="bench-etl-"))
    try:
        files = [e.path for e in storage.list_files(str(raw)) if e.path.endswith(".gz")]
        # JIT warm-up on one object, into a scratch sink: both figures below come from a warm JVM
        # (the floor runs after the job), so neither pays the fresh JVM's first ~20 s.
        first = sorted(raw.rglob("*.gz"))[0]
        one = work / "warmup-src" / first.relative_to(raw)
        one.parent.mkdir(parents=True)
        shutil.copyfile(first, one)
        warm_began = time.monotonic()
        run(EtlConfig(source=str(work / "warmup-src"), sink=str(work / "warmup-ods"), plugins=args.plugins),
            end=str(int(time.time() * 1000) + 60_000), spark=spark)  # fmt: skip
        warm_s = time.monotonic() - warm_began
        config = EtlConfig(source=str(raw), sink=str(work / "ods"), plugins=args.plugins)
        began = time.monotonic()
        report = run(config, end=str(int(time.time() * 1000) + 60_000), spark=spark)
        job_s = time.monotonic() - began

        # The floor: the same raw read, and the same four Parquet writes from memory.
        lines = spark.read.text(files).count()
        began = time.monotonic()
        spark.read.text(files).write.format("noop").mode("overwrite").save()  # every line read, not only counted
        read_s = time.monotonic() - began
        write_s = 0.0
        partitions = ["partition_app", "partition_year", "partition_month", "partition_day"]
        for table in ("event_v2", "item_v2", "session", "user_v2"):
            df = spark.read.parquet(str(work / "ods" / table)).cache()
            df.count()
            began = time.monotonic()
            df.write.mode("overwrite").partitionBy(*partitions).parquet(str(work / "floor" / table))
            write_s += time.monotonic() - began
            df.unpersist()
        floor_s = read_s + write_s
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)

    rate = report.events / job_s
    print(f"raw: {len(files)} objects, {lines:,} requests, {source_events:,} events generated; geo: {geo}")
    print(f"warm-up: one object in {warm_s:.1f} s (fresh JVM)")
    print(f"job: {report.events:,} events ({report.good:,} good, bad {report.bad}) in {job_s:.1f} s")
    print(f"     rows {report.tables}; stages {report.stages_s}")
    print(f"floor: read {read_s:.1f} s + writes {write_s:.1f} s = {floor_s:.1f} s")
    print(
        f"RESULT events/s {rate:,.0f}; per core {rate / args.cores:,.0f} (goal 50,000); "
        f"floor/job {floor_s / job_s:.2f} (goal 0.5)"
    )


if __name__ == "__main__":
    main()
