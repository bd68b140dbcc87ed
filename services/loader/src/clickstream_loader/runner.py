"""One loader pass: discover, register, load (manifest by manifest, app by app, table by table), retention.

`run_once(config)` is what the CLI's `clickstream-loader run` and an in-process scheduler call; it returns a
`RunReport` and updates the Prometheus metrics. A failing manifest fails the run (status "failed") but not
the other apps and tables of the same pass; its files stay ENQUEUED for the next pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from clickstream_core.appconfig import AppConfig

from . import metrics
from .config import LoaderConfig, local_path
from .discovery import DataFile, discover
from .schema import TABLE_NAMES
from .state import LocalStateStore

log = logging.getLogger("clickstream_loader")

STATE_DB = "files.sqlite"
LOCK_FILE = "loader.lock"


@dataclass
class RunReport:
    engine: str
    status: str = "succeeded"  # succeeded | failed | busy (another run holds the local state)
    discovered: int = 0
    registered: int = 0
    manifests: int = 0
    files_loaded: dict[str, int] = field(default_factory=dict)
    rows_loaded: dict[str, int] = field(default_factory=dict)
    busy_groups: list[str] = field(default_factory=list)
    gone: int = 0
    deleted_rows: dict[str, int] = field(default_factory=dict)
    deleted_partitions: int = 0
    pending_files: int = 0
    oldest_pending_age_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    glue_partitions: int = 0  # Glue partitions created (LOADER_GLUE_DATABASE)
    athena_queries: dict[str, list[str]] = field(default_factory=dict)  # named queries {"created", "updated"}
    duration_s: float = 0.0
    # per app: postgres {"created", "refreshed": [[start, end]], "carried_forward": [start, end], "metadata": [...],
    # "metadata_pending"};
    # duckdb {"published": bool} (the reporting views are part of the published definitions)
    reporting: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def manifest(self, table: str, files: int, rows: int, gone: int) -> None:
        """One loaded manifest: its files, the rows it merged and the files gone before it ran."""
        self.manifests += 1
        self.gone += gone
        self.files_loaded[table] = self.files_loaded.get(table, 0) + files
        self.rows_loaded[table] = self.rows_loaded.get(table, 0) + rows
        metrics.FILES_LOADED.labels(table).inc(files)
        metrics.ROWS_LOADED.labels(table).inc(rows)


def new_manifest_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


def _retention_start(config: LoaderConfig) -> date | None:
    if not config.retention_days:
        return None
    return datetime.now(UTC).date() - timedelta(days=config.retention_days)


def run_once(config: LoaderConfig, hook=None, apps: AppConfig | None = None) -> RunReport:
    """One pass of the loader. `hook(step, info)` is called at each step of a load (tests inject crashes); with
    LOADER_CONNECTIONS > 1 it is called from the groups' threads at once, and a crash in one group does not stop
    the groups already loading (each commits or rolls back on its own)."""
    started = time.monotonic()
    report = RunReport(engine=config.engine)
    apps = apps if apps is not None else AppConfig.load(config.app_config or None)
    try:
        files = discover(config.source, apps, config.file_suffix, _retention_start(config))
        report.discovered = len(files)
        if config.glue_database:  # the Athena side, alongside any engine
            from .glue import sync_catalog

            synced = sync_catalog(config.glue_database, config.source, files, config.athena_workgroup)
            report.glue_partitions = synced.partitions
            report.athena_queries = {"created": synced.queries_created, "updated": synced.queries_updated}
        if config.engine == "postgres":
            _run_postgres(config, apps, files, report, hook)
        elif config.engine == "duckdb":
            _run_duckdb(config, files, report, hook, apps)
        elif config.engine == "redshift":
            from .redshift import run_redshift

            run_redshift(config, apps, files, report, hook)
        else:
            raise ValueError(f"engine {config.engine!r} is not implemented")
    except Exception as exc:
        log.exception("loader run failed")
        report.errors.append(f"{type(exc).__name__}: {exc}")
    if report.errors:
        report.status = "failed"
    report.duration_s = time.monotonic() - started
    metrics.RUNS.labels(report.status).inc()
    metrics.LAST_RUN_SECONDS.set(report.duration_s)
    log.info(
        "loader run",
        extra={
            "status": report.status,
            "engine": report.engine,
            "discovered": report.discovered,
            "registered": report.registered,
            "manifests": report.manifests,
            "rows_loaded": report.rows_loaded,
            "pending_files": report.pending_files,
            "oldest_pending_age_s": round(report.oldest_pending_age_s, 1),
            "seconds": round(report.duration_s, 3),
        },
    )
    return report


def _finish(store, report: RunReport) -> None:
    summary = store.summary()
    metrics.observe_summary(summary)
    report.pending_files = sum(n for (_, state), n in summary.counts.items() if state in ("NEW", "ENQUEUED"))
    report.oldest_pending_age_s = summary.oldest_pending_age_s()


# ---------------------------------------------------------------------------------------------- PostgreSQL


def _run_postgres(config: LoaderConfig, apps: AppConfig, files: list[DataFile], report: RunReport, hook) -> None:
    from .pg import PostgresLoader

    loader = PostgresLoader(config.postgres_dsn, hook=hook, lock_timeout_s=config.lock_timeout_s)
    try:
        loader.setup({f.app_id for f in files} | set(apps.apps))
        report.registered = loader.store.register(files)
        touched = _load_groups(config, loader, loader.store.pending_groups(), report, hook)
        if config.reporting:
            _refresh_reporting(config, apps, loader, touched, report)
        start = _retention_start(config)
        if start is not None:
            report.deleted_rows = loader.delete_expired(loader._ready_apps - {""}, config.retention_days)
            loader.forget_before(start)
        _finish(loader.store, report)
    finally:
        loader.close()


def _load_groups(config: LoaderConfig, loader, groups: list[tuple[str, str]], report: RunReport, hook) -> dict:
    """Every pending (app, table) group, up to LOADER_CONNECTIONS at once, each on a connection of its own
    (a group's manifests stay one after the other: its advisory lock is per app and table). Returns app ->
    UTC event days of the files whose rows were merged. Each manifest commits on its own, so the groups'
    outcomes are independent; the report is written from this thread only."""
    from .pg import PostgresLoader

    touched: dict[str, set[date]] = {}

    def record(group: tuple[str, str], outcome: tuple[list | None, str | None]) -> None:
        results, error = outcome
        if error:
            report.errors.append(error)
        elif results is None:
            report.busy_groups.append("/".join(group))
        for result in results or ():
            report.manifest(group[1], result.files, result.merged_rows, len(result.gone))
            if result.merged_rows:
                touched.setdefault(group[0], set()).update(result.days)

    workers = min(config.connections, len(groups))
    if workers <= 1:
        for group in groups:
            record(group, _load_group(loader, group, config.max_files))
        return touched
    # one thread works on the pass's own loader (idle meanwhile), each other thread opens one of its own
    local, spare, opened, guard = threading.local(), [loader], [], threading.Lock()

    def work(group: tuple[str, str]):
        own = getattr(local, "loader", None)
        if own is None:
            with guard:
                own = spare.pop() if spare else None
            if own is None:
                own = PostgresLoader(config.postgres_dsn, hook=hook, lock_timeout_s=config.lock_timeout_s)
                with guard:
                    opened.append(own)
            local.loader = own
        return _load_group(own, group, config.max_files)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loader")
    try:
        futures = [(group, pool.submit(work, group)) for group in groups]
        for group, future in futures:
            record(group, future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a crash stops the groups not started yet
        for own in opened:
            own.close()
    return touched


def _load_group(loader, group: tuple[str, str], max_files: int) -> tuple[list | None, str | None]:
    """(manifest results, None), (None, None) when another run holds the group, or (None, error)."""
    app_id, table = group
    try:
        loader.setup([app_id])
        return loader.load_group(app_id, table, max_files, new_manifest_id), None
    except Exception as exc:
        log.exception("load failed", extra={"app_id": app_id, "table": table})
        if loader.conn.broken:
            raise
        return None, f"{app_id}/{table}: {type(exc).__name__}: {exc}"


def _refresh_reporting(config: LoaderConfig, apps: AppConfig, loader, touched: dict, report: RunReport) -> None:
    from . import reports

    for app_id in sorted(set(touched) | reports.apps_with_pending_metadata(loader.conn)):
        try:
            report.reporting[app_id] = reports.refresh_app(
                loader.conn,
                reports.target_of(apps, app_id),
                touched.get(app_id, set()),
                refresh_days=config.refresh_days,
                metadata_interval_s=config.metadata_interval_s,
            )
        except Exception as exc:
            log.exception("reporting refresh failed", extra={"app_id": app_id})
            report.errors.append(f"{app_id}/reporting: {type(exc).__name__}: {exc}")
            if loader.conn.broken:
                raise


# ------------------------------------------------------------------------------------------ DuckDB (local)


@contextlib.contextmanager
def _exclusive(path: Path):
    """A non-blocking lock on a file next to the local state: yields False when another run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_duckdb(config: LoaderConfig, files: list[DataFile], report: RunReport, hook, apps: AppConfig) -> None:
    from .reports import target_of
    from .warehouse import publish, views_sql

    hook = hook or (lambda step, info: None)
    state_dir = Path(config.state_path)
    with _exclusive(state_dir / LOCK_FILE) as held:
        if not held:
            report.status = "busy"
            return
        store = LocalStateStore(state_dir / STATE_DB)
        try:
            report.registered = store.register(files)
            app_tables: dict[str, set[str]] = {}
            for f in files:
                app_tables.setdefault(f.app_id, set()).add(f.table)
            targets = {a: target_of(apps, a) for a in app_tables} if config.reporting else None
            published = publish(state_dir, views_sql(config.source, app_tables, config.file_suffix, targets))
            if targets:
                report.reporting = {a: {"published": published} for a in sorted(targets)}
            # the views read every file at query time: "loading" a file is recording that it is visible
            for app_id, table in store.pending_groups():
                while True:
                    manifest_id = new_manifest_id()
                    claimed = store.claim(app_id, table, config.max_files, manifest_id)
                    if not claimed:
                        break
                    info = {"app_id": app_id, "table": table, "manifest_id": manifest_id}
                    hook("claimed", info)
                    rows, gone = 0, []
                    for record in claimed:
                        try:
                            rows += pq.read_metadata(record.uri).num_rows
                        except FileNotFoundError:
                            gone.append(record.uri)
                    store.mark_gone(gone)
                    loaded = [r.uri for r in claimed if r.uri not in gone]
                    store.mark_loaded(loaded, manifest_id)
                    hook("marked", info)
                    report.manifest(table, len(loaded), rows, len(gone))
            start = _retention_start(config)
            if start is not None:
                if config.retention_delete_files:
                    report.deleted_partitions = delete_partitions_before(local_path(config.source), start)
                store.forget_before(start)
            _finish(store, report)
        finally:
            store.close()


def delete_partitions_before(root: str, day: date) -> int:
    """Delete the day folders (`partition_day=`) of the four tables whose day is before `day`; returns how many."""
    deleted = 0
    for table in TABLE_NAMES:
        base = Path(root) / table
        for folder in base.glob("partition_app=*/partition_year=*/partition_month=*/partition_day=*"):
            try:
                y = int(folder.parent.parent.name.split("=", 1)[1])
                m = int(folder.parent.name.split("=", 1)[1])
                d = int(folder.name.split("=", 1)[1])
                folder_day = date(y, m, d)
            except ValueError:
                continue
            if folder_day < day:
                shutil.rmtree(folder, ignore_errors=True)
                deleted += 1
                with contextlib.suppress(OSError):
                    os.rmdir(folder.parent)  # an emptied month, then year
                    os.rmdir(folder.parent.parent)
    return deleted
