"""The Redshift path: COPY manifests on S3, statements through the Redshift Data API, file states in DynamoDB.

Per manifest (up to LOADER_MAX_FILES_PER_LOAD files of one app and one table, claimed in the status table):

    write  <LOADER_MANIFEST_PREFIX><table>/manifest/<app>-<manifest id>.manifest
           {"entries": [{"url": "s3://…", "mandatory": true, "meta": {"content_length": N}}, …]}
    one Data API batch (one transaction, one session, so the temp tables live through it):
      CREATE TEMP TABLE "_stage_<table>" (LIKE "<app>"."<table>")
      COPY "_stage_<table>" FROM '<manifest>' IAM_ROLE '<role>' FORMAT AS PARQUET SERIALIZETOJSON MANIFEST
      CREATE TEMP TABLE "_merge_<table>" AS <one row per merge key: row_number() over the survivor order>
      [user_v2, session] DELETE FROM "_merge_<table>" USING target WHERE <same key> AND NOT <replace rule>
      MERGE INTO "<app>"."<table>" USING "_merge_<table>" AS s ON <key> WHEN MATCHED THEN UPDATE …
            WHEN NOT MATCHED THEN INSERT …
    then, after the batch FINISHED: the files LOADED in DynamoDB (only those still ENQUEUED under this manifest).

The keys, survivor order and replace rules are schema.py's (the ones pg.py uses); the statements are written in
PostgreSQL's dialect and rendered by sqlrender for Redshift, except COPY (Redshift-only syntax, checked by
parsing it back with sqlglot's redshift dialect). Redshift's MERGE has no `WHEN MATCHED AND <condition>` and no
target alias, so the replace rule of user_v2 and session becomes a DELETE of the incoming rows that must not
replace the loaded ones, which has the same effect. Redshift keeps no file order in a COPY, so rows tied on the
whole survivor order (same key, same ETL write time) keep an arbitrary one of them, where PostgreSQL keeps the
later file's.

Exactly once: the batch is one transaction, so the merged rows of a manifest commit together or not at all. The
DynamoDB update cannot join that transaction; it follows it. A crash (or a failed state write) between the two
leaves the files ENQUEUED; once their claim's lease expires the next run loads them again. Re-merging the same
rows is harmless because the MERGE is idempotent by key: event_v2 / item_v2 rows replace themselves with
identical data, a user_v2 row replaces one at least as new (itself), a session row only a worse-ranked one
(itself is not). A batch that FAILED rolled back; one with a retriable error (serialisation conflict, lock,
throttling) is submitted again after a backoff, with a fresh client token.

After the loads (runner.run_once's order, as on PostgreSQL): the reporting layer of every app whose rows were merged
(LOADER_REPORTING; `redshift_reports.py`), then retention (LOADER_RETENTION_DAYS): per app loaded in the pass, one
batch of `DELETE FROM "<app>".<table> WHERE event_timestamp < (newest event_v2 row) - :days days` for event_v2,
item_v2 and session (user_v2 keeps every user, as in the reference), and the DynamoDB records of LOADED/GONE files
of days before the retention are forgotten.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from urllib.parse import urlparse

import sqlglot
from clickstream_core.objectstore import open_store
from clickstream_core.tables import TABLES
from sqlglot import exp

from .schema import MERGE_KEYS, REPLACE_WHEN, SURVIVOR_ORDER, create_tables_sql, qualified, quote, schema_name
from .sqlrender import render
from .state import FileRecord, ManifestResult, StateStore

log = logging.getLogger("clickstream_loader.redshift")

Hook = Callable[[str, dict], None]

TERMINAL = ("FINISHED", "FAILED", "ABORTED")
POLL_S = 0.25  # first wait between describe_statement polls (doubling up to 5 s)
# rows older than the retention are deleted from these tables (user_v2 keeps every user, as in the reference)
RETENTION_TABLES = ("event_v2", "item_v2", "session")
# API errors worth a new submission after a wait (botocore's own retries cover throttling and 5xx first)
RETRIABLE_API = ("ActiveStatementsExceededException", "ActiveSessionsExceededException", "ThrottlingException")
# SQL errors of a FAILED statement that a later attempt can get past (the failed batch rolled back)
RETRIABLE_SQL = (
    "serializable isolation violation",
    "conflict with concurrent transaction",
    "deadlock detected",
    "could not obtain lock",
    "lock wait timeout",
    "connection",
    "out of memory",
    "please retry",
    "try again",
)


class RedshiftError(RuntimeError):
    pass


@dataclass(frozen=True)
class RedshiftTarget:
    """Where the Data API sends statements: a serverless workgroup or a provisioned cluster, and who runs them."""

    database: str
    workgroup: str = ""
    cluster_id: str = ""
    secret_arn: str = ""
    db_user: str = ""

    def api_args(self) -> dict:
        args = {"Database": self.database}
        if self.workgroup:
            args["WorkgroupName"] = self.workgroup
        else:
            args["ClusterIdentifier"] = self.cluster_id
        if self.secret_arn:
            args["SecretArn"] = self.secret_arn
        elif self.db_user:
            args["DbUser"] = self.db_user
        return args


# ----------------------------------------------------------------------------------------------------- SQL


def stage_name(table: str) -> str:
    return f"_stage_{table}"


def merge_name(table: str) -> str:
    return f"_merge_{table}"


def sql_literal(value: str) -> str:
    """A single-quoted SQL string (COPY takes no parameters)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _no_bool_casts(node: exp.Expression) -> exp.Expression:
    # `(predicate) :: int` (the Direct/none rank) as CASE WHEN: no boolean-to-integer cast needed on Redshift
    if isinstance(node, exp.Cast) and node.to.this in (exp.DataType.Type.INT, exp.DataType.Type.BIGINT):
        inner = node.this.unnest()
        if isinstance(inner, exp.Predicate | exp.Connector | exp.Not | exp.Boolean):
            return exp.Case(ifs=[exp.If(this=inner, true=exp.Literal.number(1))], default=exp.Literal.number(0))
    return node


def _redshift(sql: str) -> str:
    """PostgreSQL-dialect text -> Redshift, with boolean casts spelled as CASE."""
    tree = sqlglot.parse_one(sql, read="postgres").transform(_no_bool_casts)
    return render(tree.sql(dialect="postgres"), "redshift")


def _requalify(condition: str, aliases: dict[str, exp.Expression]) -> str:
    """A schema.py rule over aliases `s` / `t` with the aliases replaced by table names (Redshift's MERGE and DELETE
    take none)."""
    tree = sqlglot.parse_one(condition, read="postgres")
    for column in tree.find_all(exp.Column):
        if column.table in aliases:
            replacement = aliases[column.table]
            column.set("table", replacement.args["this"].copy())
            if replacement.args.get("db") is not None:
                column.set("db", replacement.args["db"].copy())
    return tree.sql(dialect="postgres")


def _table(name: str, schema: str | None = None) -> exp.Table:
    return exp.Table(
        this=exp.to_identifier(name, quoted=True), db=exp.to_identifier(schema, quoted=True) if schema else None
    )


def copy_sql(table: str, manifest_uri: str, iam_role: str) -> str:
    return (
        f"COPY {quote(stage_name(table))} FROM {sql_literal(manifest_uri)} IAM_ROLE {sql_literal(iam_role)} "
        "FORMAT AS PARQUET SERIALIZETOJSON MANIFEST"
    )


def load_statements(app_id: str, table: str, manifest_uri: str, iam_role: str) -> list[str]:
    """The statements of one manifest's batch, as Redshift spells them."""
    target = qualified(app_id, table)
    stage, merged = quote(stage_name(table)), quote(merge_name(table))
    names = TABLES[table].names
    cols = ", ".join(quote(c) for c in names)
    keys = MERGE_KEYS[table]
    key_list = ", ".join(quote(k) for k in keys)
    statements = [
        _redshift(f"CREATE TEMP TABLE {stage} (LIKE {target})"),
        copy_sql(table, manifest_uri, iam_role),
        _redshift(
            f"CREATE TEMP TABLE {merged} AS SELECT {cols} FROM (SELECT *, row_number() OVER "  # noqa: S608
            f"(PARTITION BY {key_list} ORDER BY {SURVIVOR_ORDER[table]}) AS _rank FROM {stage}) AS r WHERE _rank = 1"
        ),
    ]
    target_table = _table(table, schema_name(app_id))
    target_sql = target_table.sql(dialect="postgres")
    condition = REPLACE_WHEN[table]
    if condition:
        rule = _requalify(condition, {"s": _table(merge_name(table)), "t": target_table})
        same_key = " AND ".join(f"{target_sql}.{quote(k)} = {merged}.{quote(k)}" for k in keys)
        statements.append(_redshift(f"DELETE FROM {merged} USING {target} WHERE {same_key} AND NOT ({rule})"))  # noqa: S608
    data_cols = [c for c in names if c != "created_time"]
    on = " AND ".join(f"{target_sql}.{quote(k)} = s.{quote(k)}" for k in keys)
    updates = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in data_cols if c not in keys)
    insert_cols = ", ".join(quote(c) for c in [*data_cols, "created_time"])
    insert_vals = ", ".join([*(f"s.{quote(c)}" for c in data_cols), "now()"])
    statements.append(
        _redshift(
            f"MERGE INTO {target} USING {merged} AS s ON {on} "  # noqa: S608 (identifiers only)
            f"WHEN MATCHED THEN UPDATE SET {updates}, created_time = now() "
            f"WHEN NOT MATCHED THEN INSERT ({insert_cols}) VALUES ({insert_vals})"
        )
    )
    statements += [f"DROP TABLE {merged}", f"DROP TABLE {stage}"]
    return statements


def setup_statements(app_id: str) -> list[str]:
    return create_tables_sql(app_id, "redshift")


def retention_statements(app_id: str) -> list[str]:
    """One app's retention batch: rows older than `:days` days before the app's newest event (PostgreSQL's rule,
    `pg.PostgresLoader.delete_expired`; the newest event is read by the statements themselves, and deleting older
    rows never moves it). The Data API binds `:days`."""
    newest = f'SELECT MAX("event_timestamp") FROM {qualified(app_id, "event_v2")}'  # noqa: S608
    return [
        render(
            f'DELETE FROM {qualified(app_id, table)} WHERE "event_timestamp" < '  # noqa: S608 (identifiers only)
            f"({newest}) - CAST(:days AS INTEGER) * INTERVAL '1 DAY'",
            "redshift",
        )
        for table in RETENTION_TABLES
    ]


def _param(name: str, value) -> dict:
    """A Data API parameter: a name and a non-empty string that Redshift converts to the column's type."""
    return {"name": name, "value": str(value)}


def manifest_document(entries: list[tuple[str, int]]) -> bytes:
    """A Redshift COPY manifest: every file mandatory, with its size (required for Parquet)."""
    return json.dumps(
        {"entries": [{"url": url, "mandatory": True, "meta": {"content_length": size}} for url, size in entries]},
        indent=1,
    ).encode()


def manifest_uri(prefix: str, table: str, app_id: str, manifest_id: str) -> str:
    return f"{prefix.rstrip('/')}/{table}/manifest/{app_id}-{manifest_id}.manifest"


# -------------------------------------------------------------------------------------------- Data API


class DataApi:
    """Statements through the Redshift Data API: submit, poll `describe_statement` with backoff, resubmit a batch
    that failed for a retriable reason, raise `RedshiftError` with Redshift's message otherwise."""

    def __init__(
        self,
        client,
        target: RedshiftTarget,
        timeout_s: float = 3600.0,
        retries: int = 3,
        poll_s: float = 0.25,
        max_poll_s: float = 5.0,
        retry_wait_s: float = 10.0,
    ):
        self.client = client
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self.poll_s = poll_s
        self.max_poll_s = max_poll_s
        self.retry_wait_s = retry_wait_s

    async def _submit(self, sqls: list[str], name: str, token: str, parameters: list[dict] | None) -> str:
        args = {**self.target.api_args(), "StatementName": name[:500], "ClientToken": client_token(token)}
        if parameters:
            args["Parameters"] = parameters
        if len(sqls) == 1:
            answer = await self.client.execute_statement(Sql=sqls[0], **args)
        else:
            answer = await self.client.batch_execute_statement(Sqls=sqls, **args)
        return answer["Id"]

    async def _wait(self, statement_id: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        delay = self.poll_s
        while True:
            answer = await self.client.describe_statement(Id=statement_id)
            if answer["Status"] in TERMINAL:
                return answer
            if time.monotonic() > deadline:
                raise RedshiftError(
                    f"statement {statement_id} still {answer['Status']} after {self.timeout_s:.0f} s "
                    "(left running; its files stay ENQUEUED)"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_poll_s)

    async def run(self, sqls: list[str], name: str, parameters: list[dict] | None = None) -> dict:
        """Runs the statements (several: one transaction) and returns the FINISHED `describe_statement` answer."""
        from botocore.exceptions import ClientError

        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                statement_id = await self._submit(sqls, name, f"{name}-{attempt}", parameters)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in RETRIABLE_API and not last:
                    log.warning("data api busy, retrying", extra={"statement": name, "code": code})
                    await asyncio.sleep(self.retry_wait_s * 2**attempt)
                    continue
                raise RedshiftError(f"{name}: Data API refused the statement: {code}: {exc}") from exc
            answer = await self._wait(statement_id)
            if answer["Status"] == "FINISHED":
                return answer
            error = answer.get("Error") or answer["Status"]
            failed = next((s for s in answer.get("SubStatements", []) if s.get("Status") != "FINISHED"), None)
            where = f" (statement: {failed.get('QueryString', '')[:200]!r})" if failed else ""
            if answer["Status"] == "FAILED" and _retriable(error) and not last:
                log.warning("statement failed, retrying", extra={"statement": name, "error": error})
                await asyncio.sleep(self.retry_wait_s * 2**attempt)
                continue
            raise RedshiftError(f"{name} {answer['Status']} after {attempt + 1} attempt(s): {error}{where}")
        raise AssertionError("unreachable")

    async def query(self, sql: str, name: str, parameters: list[dict] | None = None) -> tuple[list[str], list[tuple]]:
        """One statement that returns rows: its column names and rows (all pages of `get_statement_result`), values
        as Python types (dates, timestamps, Decimal for numeric; NULL is None)."""
        answer = await self.run([sql], name, parameters)
        if not answer.get("HasResultSet"):
            return [], []
        columns: list[str] = []
        rows: list[tuple] = []
        token = None
        while True:
            page = await self.client.get_statement_result(Id=answer["Id"], **({"NextToken": token} if token else {}))
            meta = page.get("ColumnMetadata", [])
            columns = [m.get("label") or m.get("name", "") for m in meta]
            types = [m.get("typeName", "") for m in meta]
            rows += [tuple(_value(f, t) for f, t in zip(record, types, strict=True)) for record in page["Records"]]
            token = page.get("NextToken")
            if not token:
                return columns, rows


def _value(field: dict, type_name: str):
    """A Data API result field as a Python value."""
    if field.get("isNull"):
        return None
    if "stringValue" in field:
        text = field["stringValue"]
        kind = type_name.lower()
        if kind == "date":
            return date.fromisoformat(text)
        if kind in ("timestamp", "timestamptz"):
            return datetime.fromisoformat(text)
        if kind in ("numeric", "decimal"):
            return Decimal(text)
        return text
    for key in ("longValue", "doubleValue", "booleanValue", "blobValue"):
        if key in field:
            return field[key]
    return None


def client_token(token: str) -> str:
    """The API's idempotency token (at most 64 characters): a longer one is hashed rather than cut, so that two
    submissions (another manifest, another attempt) never share one."""
    return token if len(token) <= 64 else hashlib.sha256(token.encode()).hexdigest()


def _retriable(error: str) -> bool:
    text = error.lower()
    return any(pattern in text for pattern in RETRIABLE_SQL)


def affected_rows(answer: dict, index: int) -> int:
    subs = answer.get("SubStatements") or []
    if len(subs) > index:
        return max(0, int(subs[index].get("ResultRows") or 0))
    return max(0, int(answer.get("ResultRows") or 0))


# ---------------------------------------------------------------------------------------------- loader


class RedshiftLoader:
    """Loads the pending files of each (app, table) manifest after manifest. `store` is the DynamoDB status table
    (any `StateStore` works); `data_api` a `DataApi`."""

    def __init__(self, store: StateStore, data_api: DataApi, iam_role: str, manifest_prefix: str, hook=None):
        self.store = store
        self.api = data_api
        self.iam_role = iam_role
        self.manifest_prefix = manifest_prefix
        self.hook: Hook = hook or (lambda step, info: None)
        self._ready: set[str] = set()

    async def setup(self, app_id: str) -> None:
        if app_id in self._ready:
            return
        await self.api.run(setup_statements(app_id), f"clickstream-ddl-{app_id}")
        self._ready.add(app_id)

    @property
    def ready_apps(self) -> set[str]:
        """The apps whose schema and tables this loader made sure of (the apps it loaded files of)."""
        return set(self._ready)

    async def delete_expired(self, apps: Iterable[str], days: int) -> dict[str, int]:
        """Retention, one batch (one transaction) per app; returns the deleted rows per table."""
        deleted: dict[str, int] = {}
        for app_id in sorted(apps):
            statements = retention_statements(app_id)
            answer = await self.api.run(
                statements, f"clickstream-retention-{uuid.uuid4().hex[:12]}-{app_id}", [_param("days", days)]
            )
            for index, table in enumerate(RETENTION_TABLES):
                deleted[table] = deleted.get(table, 0) + affected_rows(answer, index)
        if deleted:
            log.info("retention", extra={"days": days, "deleted_rows": deleted})
        return deleted

    async def _sizes(self, uris: list[str]) -> dict[str, int | None]:
        """The objects' sizes now (a manifest needs each file's exact length; None: the file is gone)."""
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            parsed = urlparse(uri)
            by_bucket.setdefault(parsed.netloc, []).append(uri)
        sizes: dict[str, int | None] = {}
        for bucket, bucket_uris in by_bucket.items():
            store = open_store(f"s3://{bucket}")
            try:
                infos = await asyncio.gather(*(store.head(urlparse(u).path.lstrip("/")) for u in bucket_uris))
            finally:
                await store.close()
            sizes.update({u: (i.size if i else None) for u, i in zip(bucket_uris, infos, strict=True)})
        return sizes

    async def _put_manifest(self, uri: str, body: bytes) -> None:
        parsed = urlparse(uri)
        store = open_store(f"s3://{parsed.netloc}")
        try:
            await store.put(parsed.path.lstrip("/"), body, "application/json")
        finally:
            await store.close()

    async def load_group(self, app_id: str, table: str, max_files: int, new_manifest_id: Callable[[], str]):
        await self.setup(app_id)
        results = []
        while True:
            manifest_id = new_manifest_id()
            files = self.store.claim(app_id, table, max_files, manifest_id)
            if not files:
                return results
            self.hook("claimed", {"app_id": app_id, "table": table, "manifest_id": manifest_id})
            results.append(await self.load_manifest(app_id, table, manifest_id, files))

    async def load_manifest(self, app_id: str, table: str, manifest_id: str, files: list[FileRecord]):
        started = time.monotonic()
        info = {"app_id": app_id, "table": table, "manifest_id": manifest_id}
        sizes = await self._sizes([f.uri for f in files])
        gone = [u for u, size in sizes.items() if size is None]
        entries = [(f.uri, sizes[f.uri]) for f in files if sizes[f.uri] is not None]
        uri = manifest_uri(self.manifest_prefix, table, app_id, manifest_id)
        staged = merged = 0
        if entries:
            await self._put_manifest(uri, manifest_document(entries))
            statements = load_statements(app_id, table, uri, self.iam_role)
            answer = await self.api.run(statements, f"clickstream-{app_id}-{table}-{manifest_id}")
            staged = affected_rows(answer, 1)
            merged = affected_rows(answer, len(statements) - 3)
        self.hook("merged", {**info, "rows": merged})
        loaded = [u for u, _ in entries]
        self.store.mark_loaded(loaded, manifest_id)
        if gone:
            self.store.mark_gone(gone)
        self.hook("marked", info)
        kept = set(loaded)
        days = frozenset(f.event_day for f in files if f.uri in kept)
        result = ManifestResult(
            manifest_id, app_id, table, len(loaded), staged, merged, gone, time.monotonic() - started, uri, days
        )
        log.info(
            "manifest loaded",
            extra={
                "app_id": app_id,
                "table": table,
                "manifest_id": manifest_id,
                "manifest": uri,
                "files": len(loaded),
                "staged_rows": staged,
                "merged_rows": merged,
                "gone": len(gone),
                "seconds": round(result.seconds, 3),
            },
        )
        return result


# ---------------------------------------------------------------------------------------------- a pass


def run_redshift(config, apps, files, report, hook=None) -> None:
    """runner.run_once's redshift branch: register, load every pending group, reporting, retention, finish."""
    from . import metrics
    from .runner import _retention_start
    from .state_dynamodb import DynamoStateStore

    store = DynamoStateStore(config.state_table, lease_s=config.state_lease_s)
    try:
        store.create()
        report.registered = store.register(files)
        asyncio.run(_pass(config, apps, store, report, hook))
        start = _retention_start(config)
        if start is not None:
            store.forget_before(start)
        summary = store.summary()
        metrics.observe_summary(summary)
        report.pending_files = sum(n for (_, state), n in summary.counts.items() if state in ("NEW", "ENQUEUED"))
        report.oldest_pending_age_s = summary.oldest_pending_age_s()
    finally:
        store.close()


async def _pass(config, apps, store: StateStore, report, hook) -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from .runner import new_manifest_id

    target = RedshiftTarget(
        config.redshift_database,
        config.redshift_workgroup,
        config.redshift_cluster_id,
        config.redshift_secret_arn,
        config.redshift_db_user,
    )
    client_config = AioConfig(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    async with get_session().create_client("redshift-data", region_name=region, config=client_config) as client:
        api = DataApi(
            client, target, timeout_s=config.redshift_timeout_s, retries=config.redshift_retries, poll_s=POLL_S
        )
        loader = RedshiftLoader(store, api, config.redshift_iam_role, config.manifest_prefix, hook)
        touched: dict[str, set[date]] = {}  # app -> UTC event days of the files whose rows were merged
        for app_id, table in store.pending_groups():
            try:
                results = await loader.load_group(app_id, table, config.max_files, new_manifest_id)
            except Exception as exc:
                log.exception("load failed", extra={"app_id": app_id, "table": table})
                report.errors.append(f"{app_id}/{table}: {type(exc).__name__}: {exc}")
                continue
            for result in results:
                report.manifest(table, result.files, result.merged_rows, len(result.gone))
                if result.merged_rows:
                    touched.setdefault(app_id, set()).update(result.days)
        if config.reporting and touched:
            await _reporting(config, apps, api, touched, report)
        if config.retention_days and loader.ready_apps:
            try:
                report.deleted_rows = await loader.delete_expired(loader.ready_apps, config.retention_days)
            except Exception as exc:
                log.exception("retention failed")
                report.errors.append(f"retention: {type(exc).__name__}: {exc}")


async def _reporting(config, apps, api: DataApi, touched: dict[str, set[date]], report) -> None:
    """The reporting refresh (synchronous code, the reporting package's) on a worker thread, its Data API calls
    run on this event loop."""
    from .redshift_reports import DataApiConnection, refresh_all

    loop = asyncio.get_running_loop()
    conn = DataApiConnection(api, lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result())
    try:
        await asyncio.to_thread(
            refresh_all,
            conn,
            apps,
            touched,
            report,
            refresh_days=config.refresh_days,
            metadata_interval_s=config.metadata_interval_s,
        )
    except Exception as exc:
        log.exception("reporting failed")
        report.errors.append(f"reporting: {type(exc).__name__}: {exc}")
