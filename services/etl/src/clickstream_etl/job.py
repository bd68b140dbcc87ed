"""One ETL run: raw records of a window -> event_v2, item_v2, user_v2, session + bad rows.

Stages: select the window's objects -> decode requests -> the transformer -> common columns
(process_info, created_time) -> validation (skew, freshness, app id) -> enrichers -> cache ->
dedup -> write every table to staging -> commit under the window's name -> watermark -> report.
Every event ends as one good row or one bad row; the report's counts add up (tests check it).
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

from clickstream_core.appconfig import AppConfig
from clickstream_core.tables import BAD_ROWS, EVENT_V2, ITEM_V2, SESSION, USER_V2, Table
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import columns as C
from . import dedup, model, users, validate
from .config import EtlConfig
from .decode import read_requests
from .output import WindowCommit, conform
from .plugins import RunContext, load_chain
from .report import Progress, RunReport
from .spark import build_session
from .storage import Storage, join
from .window import Window, advance, choose, select_inputs

log = logging.getLogger("clickstream_etl")

STAGES = 9


def _complete(events: DataFrame, job_id: str, process_time_ms: int) -> DataFrame:
    """Every event_v2 column present (nulls where the transformer had nothing), the run's
    process_info and created_time."""
    present = set(events.columns)
    missing = {c.name: F.lit(None).cast(c.type) for c in EVENT_V2.columns if c.name not in present}
    process_iso = datetime.fromtimestamp(process_time_ms / 1000, UTC).isoformat(timespec="milliseconds")
    info = F.create_map(
        F.lit("rid"), F.col(C.RID),
        F.lit("ingest_time"), F.date_format(F.timestamp_millis("ingest_time_msec"), "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'"),
        F.lit("input_file_name"), F.col(C.INPUT_FILE),
        F.lit("source_ip"), F.col(C.IP),
        F.lit("upload_time"), F.col(C.UPLOAD_TIME).cast("string"),
        F.lit("process_job_id"), F.lit(job_id),
        F.lit("process_time"), F.lit(process_iso),
    )  # fmt: skip
    missing["process_info"] = F.map_filter(info, lambda _k, v: v.isNotNull())
    missing["created_time"] = F.timestamp_millis(F.lit(process_time_ms))
    for name in (C.ITEMS, C.USER_PROPERTIES):
        if name not in present:
            missing[name] = F.lit(None)
    return events.withColumns(missing)


def _existing_ids(
    spark: SparkSession,
    storage: Storage,
    sink: str,
    events: DataFrame,
    owned: set[str],
    lookback_days: int,
    end_ms: int,
) -> DataFrame | None:
    """event_ids already written in the partitions this run's good events fall into."""
    if lookback_days <= 0:
        return None
    oldest = (datetime.fromtimestamp(end_ms / 1000, UTC) - timedelta(days=lookback_days)).strftime("%Y-%m-%d")
    days = (
        events.where(F.col(C.BAD_REASON).isNull())
        .select("app_id", F.date_format("event_timestamp", "yyyy-MM-dd").alias("day"))
        .where(F.col("day") >= oldest)
        .distinct()
        .collect()
    )
    files = []
    for row in days:
        year, month, day = row["day"].split("-")
        folder = join(sink, EVENT_V2.name, f"partition_app={row['app_id']}", f"partition_year={year}",
                      f"partition_month={month}", f"partition_day={day}")  # fmt: skip
        files.extend(e.path for e in storage.list_files(folder) if e.path not in owned and e.path.endswith(".parquet"))
    if not files:
        return None
    return spark.read.parquet(*files).select("event_id")


def _bad_rows(events: DataFrame) -> DataFrame:
    rows = events.where(F.col(C.BAD_REASON).isNotNull()).select(
        F.col(C.BAD_REASON).alias("reason"),
        F.col(C.BAD_DETAIL).alias("detail"),
        "app_id",
        "event_id",
        F.col(C.RID).alias("rid"),
        "ingest_time_msec",
        F.col(C.INPUT_FILE).alias("input_file_name"),
        F.col(C.PAYLOAD).alias("payload"),
        "process_info",
        "created_time",
    )
    arrival = F.timestamp_millis(F.coalesce("ingest_time_msec", F.lit(0)))
    return rows.select(
        *(F.col(c.name).cast(c.type) for c in BAD_ROWS.columns),
        F.col("reason").alias("partition_reason"),
        F.date_format(arrival, "yyyy").alias("partition_year"),
        F.date_format(arrival, "MM").alias("partition_month"),
        F.date_format(arrival, "dd").alias("partition_day"),
    )


def _recover(storage: Storage, state: str, current: Window) -> None:
    """Roll back windows whose commit was interrupted (their files may be partial)."""
    for entry in storage.list_files(join(state, "windows"), recursive=False):
        if not entry.path.endswith(".json"):
            continue
        manifest = storage.read_json(entry.path) or {}
        if manifest.get("state") != "committing" or manifest.get("window") == current.key:
            continue
        for path in set(manifest.get("files", [])) | set(manifest.get("replaces", [])):
            storage.delete(path)
        manifest["state"] = "rolled_back"
        storage.write_json(entry.path, manifest)
        log.warning(
            "rolled back an interrupted window; run it again with --start/--end if it was an explicit rerun",
            extra={"window": manifest.get("window")},
        )


def run(
    config: EtlConfig,
    start: str | None = None,
    end: str | None = None,
    spark: SparkSession | None = None,
    now_ms: int | None = None,
) -> RunReport:
    apps = AppConfig.load(config.app_config)
    chain = load_chain(config.plugins)
    spark = spark or build_session(
        master=config.spark_master,
        driver_memory=config.driver_memory,
        shuffle_partitions=config.shuffle_partitions or None,
    )
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    storage = Storage(spark)
    state = config.state_uri
    window = choose(storage, state, start, end, now_ms, config.buffer_seconds)
    job_id = f"{datetime.fromtimestamp(now_ms / 1000, UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    report = RunReport(job_id=job_id, project_id=apps.project_id, window=window.describe())
    progress = Progress(report, STAGES)
    spark.sparkContext.setJobGroup(job_id, f"clickstream ETL window {window.key}")
    cached: list[DataFrame] = []
    try:
        progress.stage("select input")
        _recover(storage, state, window)
        commit = WindowCommit(storage, config.sink, state, window.key, job_id)
        inputs = select_inputs(storage, config.source, window, config.input_day_margin)
        report.input_files, report.input_bytes = len(inputs), sum(e.size for e in inputs)
        if not inputs and not window.explicit:
            # A scheduled window with nothing new (frequent on a short schedule): no Spark job at
            # all. An explicit rerun still goes through the commit, which replaces earlier output.
            report.tables = {t.name: 0 for t in (EVENT_V2, ITEM_V2, SESSION, USER_V2)}
            advance(storage, state, window, job_id)
            report.status = "succeeded"
            return report

        progress.stage("transform and enrich")
        context = RunContext(
            spark=spark,
            project_id=apps.project_id,
            job_id=job_id,
            app_ids=None if apps.open_to_all else tuple(sorted(apps.apps)),
            process_time_ms=now_ms,
            rules_dir=config.rules_dir or None,
        )
        transformer, enrichers = chain.build(context)
        fused = transformer.fuse(enrichers) if hasattr(transformer, "fuse") else 0
        report.fused_enrichers = [spec.name for spec in chain.enrichers[:fused]]
        paths = [e.path for e in inputs]
        requests = transformer.read(spark, paths) if hasattr(transformer, "read") else read_requests(spark, paths)
        events = _complete(transformer.transform(requests), job_id, now_ms)
        checks = validate.Checks(
            freshness_hours=config.freshness_hours,
            time_shift=config.time_shift,
            app_ids=context.app_ids,
            event_allow_list=tuple(config.event_allow_list) or None,
        )
        events = validate.apply(events, checks)
        # The payload (about 1 KB an event) is kept only for rows already rejected: the cache is
        # read by every later stage. A duplicate found later names the request of the copy kept.
        # An enricher that reads its input twice (a distinct, then a join) gets cached input;
        # the fused ones (run in the transformer's own pass) leave only cheap column work here.
        unfused = enrichers[fused:]
        base = None
        if any(getattr(e, "reads_input_twice", True) for e in unfused):
            base = events = events.persist(StorageLevel.MEMORY_AND_DISK_DESER)
            cached.append(base)
        for enricher in enrichers[:fused]:
            events = enricher.after_fused(events)
        for enricher in unfused:
            events = enricher.transform(events)
        events = events.withColumn(C.PAYLOAD, F.when(F.col(C.BAD_REASON).isNotNull(), F.col(C.PAYLOAD)))
        events = events.persist(StorageLevel.MEMORY_AND_DISK_DESER)
        cached.append(events)
        events.count()  # fills the cache (and the one before the enrichers)
        if base is not None:
            base.unpersist()

        progress.stage("dedup")
        existing = _existing_ids(
            spark, storage, config.sink, events, commit.owned(), config.dedup_lookback_days, window.end_ms
        )
        flagged = dedup.flags(events, existing).persist(StorageLevel.MEMORY_AND_DISK_DESER)
        cached.append(flagged)
        events = dedup.mark(events, flagged, flagged.count())
        good = events.where(F.col(C.BAD_REASON).isNull())

        staged: dict[str, tuple[str, str]] = {}

        def stage(table: Table, df: DataFrame, fmt: str = "parquet", partition_by=None) -> None:
            kwargs = {"partition_by": partition_by} if partition_by else {}
            staged[table.name] = (commit.stage(df, table.name, fmt, **kwargs), fmt)

        progress.stage("write event_v2")
        stage(EVENT_V2, conform(good, EVENT_V2))
        progress.stage("write item_v2")
        stage(ITEM_V2, conform(model.items(good), ITEM_V2))
        progress.stage("write session")
        stage(SESSION, conform(model.sessions(good), SESSION))
        progress.stage("write user_v2")
        history = users.save_batch(model.user_batch(good), storage, state, window.key)
        oldest = now_ms - config.user_keep_days * 86_400_000
        paths = users.history_dirs(storage, state, oldest)
        if not any(p.endswith(history.rsplit("/", 1)[-1]) for p in paths):
            paths.append(history)  # a rerun of a window older than the keep days
        batch = spark.read.parquet(history)
        merged = users.merged(spark, batch, paths, F.create_map(F.lit("process_job_id"), F.lit(job_id)),
                              F.timestamp_millis(F.lit(now_ms)))  # fmt: skip
        stage(USER_V2, conform(merged, USER_V2))
        progress.stage("write bad rows")
        bad_dir = commit.stage(
            _bad_rows(events),
            "bad_rows",
            "json",
            partition_by=("partition_reason", "partition_year", "partition_month", "partition_day"),
        )

        progress.stage("count")
        counts = events.groupBy(F.col(C.BAD_REASON)).agg(
            F.count("*").alias("n"), F.sum(F.when(F.col(C.EVENT_INDEX) == 0, 1).otherwise(0)).alias("requests")
        )
        for row in counts.collect():
            report.events += row["n"]
            report.requests += row["requests"]
            if row[C.BAD_REASON] is None:
                report.good = row["n"]
            else:
                report.bad[row[C.BAD_REASON]] = row["n"]
        for name, (path, _fmt) in staged.items():
            report.tables[name] = spark.read.parquet(path).count() if storage.list_files(path) else 0

        progress.stage("commit")
        for name, (path, _fmt) in staged.items():
            report.files[name] = commit.plan(name, path, ".snappy.parquet")
        report.files["bad_rows"] = commit.plan_to(config.bad_rows_uri, bad_dir, ".json.gz")
        commit.commit()
        if not window.explicit:
            advance(storage, state, window, job_id)
        report.status = "succeeded"
    except Exception as exc:
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        for df in cached:
            df.unpersist()
        progress.close()
        try:
            storage.write_json(join(state, "runs", f"job-{job_id}.json"), report.to_dict())
        except Exception:  # the report must not hide the run's own error
            log.exception("cannot write the run report")
        log.info("etl run", extra={"report": report.to_dict()})
    return report
