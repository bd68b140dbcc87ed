"""The Redshift path. No Redshift runs here: the rendered SQL is parsed back with sqlglot's redshift dialect, and the
statements are issued through aiobotocore's Data API client to a stub endpoint on 127.0.0.1 (this file's
`DataApiStub`: it records every request, refuses what the Data API documents as invalid — more than 40 statements
in a batch, a parameter no statement uses, a placeholder without a parameter, an empty value — and answers with
scripted statuses and scripted result sets; it runs no SQL). S3 (the manifests, the listed files) and DynamoDB
(the file states) are the local AWS API server (moto)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.session
import pytest
import sqlglot
from clickstream_core.appconfig import App
from clickstream_core.tables import TABLES
from clickstream_loader import reporting
from clickstream_loader.config import LoaderConfig
from clickstream_loader.discovery import DataFile
from clickstream_loader.redshift import (
    DataApi,
    RedshiftError,
    RedshiftTarget,
    load_statements,
    retention_statements,
    setup_statements,
)
from clickstream_loader.redshift_reports import DataApiConnection
from clickstream_loader.reporting.db import Runner
from clickstream_loader.reporting.materialize import plan
from clickstream_loader.runner import run_once
from clickstream_loader.schema import MERGE_KEYS, TABLE_NAMES
from clickstream_loader.sqlrender import render
from clickstream_loader.state_dynamodb import DynamoStateStore
from sqlglot import exp

ROLE = "arn:aws:iam::123456789012:role/clickstream-copy"


PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?<![:\w]):([A-Za-z_]\w*)")
MAX_BATCH = 40  # BatchExecuteStatement's Sqls: 1 to 40 items (the API reference)


def placeholders(sql: str) -> set[str]:
    return {m[1] for m in PLACEHOLDER.finditer(sql) if m[1]}


class DataApiStub:
    """A Redshift Data API endpoint that records requests. `plans` (consumed per submission) script the statuses
    describe_statement reports; the default is one STARTED poll, then FINISHED with `rows` affected rows.
    `results(sql, parameters)` answers a SELECT: (columns as (name, Redshift type name), rows); `on_submit(sqls,
    parameters)` sees every accepted submission (a test's model of what the statements write)."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.statements: dict[str, dict] = {}
        self.plans: list[list] = []
        self.rows = 7
        self.ids = itertools.count(1)
        self.results = lambda sql, parameters: ([], [])
        self.on_submit = lambda sqls, parameters: None
        self.failures: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                action = self.headers["X-Amz-Target"].split(".", 1)[1]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                stub.requests.append((action, body))
                try:
                    status, answer = stub.answer(action, body)
                except Exception as exc:  # a test's model failed: an answer the client reports, not a dead socket
                    stub.failures.append(f"{type(exc).__name__}: {exc}")
                    status, answer = 400, {"__type": "ValidationException", "message": f"stub: {exc}"}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invalid(self, body: dict) -> str | None:
        """What the Data API refuses with a ValidationException (its API reference)."""
        sqls = body.get("Sqls") or [body["Sql"]]
        if len(sqls) > MAX_BATCH:
            return f"Sqls has {len(sqls)} items, at most {MAX_BATCH}"
        given = {p["name"]: p["value"] for p in body.get("Parameters", [])}
        used = set().union(*(placeholders(sql) for sql in sqls))
        if set(given) - used:
            return f"Parameters list contains unused parameters. Unused parameters: {sorted(set(given) - used)}"
        if used - set(given):
            return f"no value for the parameters {sorted(used - set(given))}"
        if any(not value for value in given.values()):
            return "a parameter value is empty"
        return None

    def answer(self, action: str, body: dict):
        if action in ("ExecuteStatement", "BatchExecuteStatement"):
            plan = self.plans.pop(0) if self.plans else ["STARTED", "FINISHED"]
            if plan == ["REFUSE"]:
                body["refused"] = True
                return 400, {"__type": "ActiveStatementsExceededException", "message": "too many"}
            problem = self.invalid(body)
            if problem:
                body["refused"] = True
                return 400, {"__type": "ValidationException", "message": problem}
            sid = f"stmt-{next(self.ids)}"
            sqls = body.get("Sqls") or [body["Sql"]]
            parameters = {p["name"]: p["value"] for p in body.get("Parameters", [])}
            self.statements[sid] = {"sqls": sqls, "plan": list(plan), "body": body, "parameters": parameters}
            self.on_submit(sqls, parameters)
            return 200, {"Id": sid, "CreatedAt": 1.0, "Database": body["Database"]}
        if action == "GetStatementResult":
            record = self.statements[body["Id"]]
            columns, rows = self.results(record["sqls"][0], record["parameters"])
            return 200, {
                "ColumnMetadata": [{"name": name, "label": name, "typeName": kind} for name, kind in columns],
                "Records": [[field(v) for v in row] for row in rows],
                "TotalNumRows": len(rows),
            }
        if action == "DescribeStatement":
            record = self.statements[body["Id"]]
            step = record["plan"].pop(0) if len(record["plan"]) > 1 else record["plan"][0]
            status, error = (step, None) if isinstance(step, str) else step
            query = "Sql" in record["body"] and record["sqls"][0].lstrip().upper().startswith(("SELECT", "WITH"))
            answer = {"Id": body["Id"], "Status": status, "HasResultSet": status == "FINISHED" and query}
            if error:
                answer["Error"] = error
            answer["SubStatements"] = [
                {"Id": f"{body['Id']}:{n}", "Status": status, "QueryString": sql, "ResultRows": self.rows}
                for n, sql in enumerate(record["sqls"], 1)
            ]
            return 200, answer
        return 400, {"__type": "ValidationException", "message": action}

    def sqls(self) -> list[list[str]]:
        """The statements of each accepted submission, in order."""
        return [b.get("Sqls") or [b["Sql"]] for b in self.submissions()]

    def submissions(self) -> list[dict]:
        return [
            b for a, b in self.requests if a in ("ExecuteStatement", "BatchExecuteStatement") and "refused" not in b
        ]

    def close(self):
        self.server.shutdown()


def field(value) -> dict:
    """A Data API result field."""
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    if isinstance(value, datetime):
        return {"stringValue": value.isoformat(sep=" ")}
    return {"stringValue": str(value)}


@pytest.fixture
def stub():
    server = DataApiStub()
    yield server
    server.close()


@pytest.fixture
def aws(moto_endpoint, stub, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_REDSHIFT_DATA", stub.url)
    session = botocore.session.get_session()
    s3 = session.create_client("s3", region_name="us-east-1", endpoint_url=moto_endpoint)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    return {"s3": s3, "bucket": bucket, "moto": moto_endpoint}


def put_file(aws, table: str, app: str, n: int, size: int = 100, day: date = date(2026, 3, 1)) -> str:
    partition = f"partition_app={app}/partition_year={day:%Y}/partition_month={day:%m}/partition_day={day:%d}"
    key = f"ods/{table}/{partition}/p{n}.snappy.parquet"
    aws["s3"].put_object(Bucket=aws["bucket"], Key=key, Body=b"x" * size)
    return f"s3://{aws['bucket']}/{key}"


def config(aws, **overrides) -> LoaderConfig:
    values = {
        "engine": "redshift",
        "source": f"s3://{aws['bucket']}/ods",
        "state_table": aws.get("table", "status"),
        "redshift_workgroup": "clickstream",
        "redshift_database": "project_default",
        "redshift_secret_arn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:rs",
        "redshift_iam_role": ROLE,
        "manifest_prefix": f"s3://{aws['bucket']}/load/",
        "retention_days": 0,
        "reporting": False,
    }
    values.update(overrides)
    return LoaderConfig(**{k: v for k, v in values.items() if k in LoaderConfig.__dataclass_fields__})


# ------------------------------------------------------------------------------------------- rendered SQL


@pytest.mark.parametrize("table", TABLE_NAMES)
def test_load_statements_parse_as_redshift(table):
    statements = load_statements("shop", table, "s3://b/load/x.manifest", ROLE)
    for statement in statements:
        sqlglot.parse_one(statement, read="redshift")  # raises on a syntax error
    assert statements[0].startswith(f'CREATE TEMPORARY TABLE "_stage_{table}"') and 'LIKE "shop"' in statements[0]
    assert statements[1] == (
        f"COPY \"_stage_{table}\" FROM 's3://b/load/x.manifest' IAM_ROLE '{ROLE}' "
        "FORMAT AS PARQUET SERIALIZETOJSON MANIFEST"
    )
    merge = next(s for s in statements if s.startswith("MERGE"))
    keys = MERGE_KEYS[table]
    for key in keys:
        assert f'"shop"."{table}"."{key}" = s."{key}"' in merge
    assert "WHEN MATCHED AND" not in merge  # Redshift's MERGE has no condition on WHEN MATCHED
    insert_cols = merge.split("INSERT (", 1)[1].split(")", 1)[0]
    assert [c.strip().strip('"') for c in insert_cols.split(",")] == TABLES[table].names
    assert "GETDATE()" in merge
    ranked = statements[2]
    assert "ROW_NUMBER() OVER" in ranked and "_rank = 1" in ranked
    has_rule = table in ("user_v2", "session")
    assert any(s.startswith(f'DELETE FROM "_merge_{table}" USING') for s in statements) == has_rule
    assert "AS INT" not in "\n".join(statements)  # the Direct/none rank is a CASE, not a boolean cast


def test_setup_statements_and_quoting():
    for statement in setup_statements("Shop_1"):
        sqlglot.parse_one(statement, read="redshift")
    text = "\n".join(setup_statements("Shop_1"))
    assert 'CREATE SCHEMA IF NOT EXISTS "Shop_1"' in text and "SUPER" in text
    odd = load_statements("shop", "event_v2", "s3://b/it's.manifest", ROLE)[1]
    assert "'s3://b/it''s.manifest'" in odd


def test_config_problems():
    good = LoaderConfig(
        engine="redshift",
        source="s3://lake/ods",
        state_table="status",
        redshift_workgroup="wg",
        redshift_database="db",
        redshift_iam_role=ROLE,
        manifest_prefix="s3://lake/load/",
    )
    assert list(good.problems()) == []
    bad = LoaderConfig(
        engine="redshift",
        source="/tmp/ods",
        redshift_workgroup="wg",
        redshift_cluster_id="c",
        redshift_db_user="u",
        redshift_secret_arn="arn:aws:secretsmanager:us-east-1:1:secret:x",
        redshift_iam_role="role",
        manifest_prefix="/tmp/load",
    )
    problems = "\n".join(bad.problems())
    for text in (
        "needs LOADER_SOURCE_URI on S3",
        "LOADER_STATE_TABLE (a DynamoDB table name) is required",
        "exactly one of LOADER_REDSHIFT_WORKGROUP",
        "LOADER_REDSHIFT_DATABASE is required",
        "not both",
        "LOADER_REDSHIFT_DB_USER works with a provisioned cluster only",
        "LOADER_REDSHIFT_IAM_ROLE must be an IAM role ARN",
        "LOADER_MANIFEST_PREFIX must be s3://",
    ):
        assert text in problems
    assert "LOADER_STATE_TABLE is not used" in "\n".join(
        LoaderConfig(engine="postgres", source="/x", postgres_dsn="dbname=x", state_table="t").problems()
    )


# -------------------------------------------------------------------------------------- through the Data API


def test_a_pass_writes_manifests_and_issues_the_batches(aws, stub):
    aws["table"] = f"status-{uuid.uuid4().hex[:8]}"
    uris = [put_file(aws, "event_v2", "shop", n, size=100 + n) for n in range(3)]
    session_uri = put_file(aws, "session", "shop", 9, size=55)
    report = run_once(config(aws, max_files=2))
    assert report.status == "succeeded", report.errors
    assert report.discovered == 4 and report.manifests == 3  # event_v2: 2 + 1 files; session: 1
    assert report.files_loaded == {"event_v2": 3, "session": 1}
    assert report.rows_loaded == {"event_v2": 14, "session": 7}  # the stub's 7 affected rows per MERGE

    batches = stub.submissions()
    ddl, loads = batches[0], batches[1:]
    assert ddl["Sqls"] == setup_statements("shop")
    for body in batches:
        assert body["WorkgroupName"] == "clickstream" and body["Database"] == "project_default"
        assert body["SecretArn"].endswith(":secret:rs") and "ClusterIdentifier" not in body
    assert [b["Sqls"][1].split("'")[1].split("/manifest/")[0] for b in loads] == [
        f"s3://{aws['bucket']}/load/event_v2",
        f"s3://{aws['bucket']}/load/event_v2",
        f"s3://{aws['bucket']}/load/session",
    ]
    # every manifest is on S3 with the files' exact lengths, and its batch is the rendered statements
    seen = []
    for body in loads:
        manifest = body["Sqls"][1].split("'")[1]
        table = manifest.split("/load/")[1].split("/")[0]
        key = manifest.split(f"s3://{aws['bucket']}/")[1]
        document = json.loads(aws["s3"].get_object(Bucket=aws["bucket"], Key=key)["Body"].read())
        for entry in document["entries"]:
            assert entry["mandatory"] is True
            assert entry["meta"]["content_length"] == (55 if table == "session" else 100 + uris.index(entry["url"]))
            seen.append(entry["url"])
        assert body["Sqls"] == load_statements("shop", table, manifest, ROLE)
    assert sorted(seen) == sorted([*uris, session_uri])
    # polled until FINISHED
    assert sum(1 for a, _ in stub.requests if a == "DescribeStatement") >= 2 * len(batches)

    store = DynamoStateStore(aws["table"])
    assert store.summary().counts == {("event_v2", "LOADED"): 3, ("session", "LOADED"): 1}
    again = run_once(config(aws, max_files=2))
    assert again.status == "succeeded" and again.manifests == 0  # nothing new: no batch
    assert len(stub.submissions()) == len(batches)  # nothing pending: not even the DDL


def test_crash_between_merge_and_state_update_remerges_once(aws, stub):
    aws["table"] = f"status-{uuid.uuid4().hex[:8]}"
    uris = [put_file(aws, "user_v2", "shop", n) for n in range(2)]

    def crash(step, info):
        if step == "merged":
            raise RuntimeError("killed after the MERGE committed")

    first = run_once(config(aws), hook=crash)
    assert first.status == "failed" and "killed after the MERGE" in first.errors[0]
    store = DynamoStateStore(aws["table"])
    assert store.summary().counts == {("user_v2", "ENQUEUED"): 2}

    second = run_once(config(aws, state_lease_s=0.001))  # the dead run's claim has expired
    assert second.status == "succeeded" and second.files_loaded == {"user_v2": 2}
    merges = [b for b in stub.submissions() if any(s.startswith("MERGE") for s in b.get("Sqls", []))]
    assert len(merges) == 2  # the same files merged twice, which the merge key makes harmless
    manifests = [json.loads(_manifest_body(aws, b)) for b in merges]
    assert [sorted(e["url"] for e in m["entries"]) for m in manifests] == [sorted(uris)] * 2
    assert store.summary().counts == {("user_v2", "LOADED"): 2}


def _manifest_body(aws, body) -> bytes:
    key = body["Sqls"][1].split("'")[1].split(f"s3://{aws['bucket']}/")[1]
    return aws["s3"].get_object(Bucket=aws["bucket"], Key=key)["Body"].read()


def test_data_api_retries_retriable_failures_and_fails_clearly(aws, stub):
    async def go(plans, retries=2):
        from aiobotocore.session import get_session

        stub.plans = plans
        async with get_session().create_client("redshift-data", region_name="us-east-1") as client:
            api = DataApi(
                client, RedshiftTarget("db", cluster_id="c1", db_user="loader"), retries=retries, retry_wait_s=0.01
            )
            return await api.run(["SELECT 1", "SELECT 2"], "clickstream-test")

    before = len(stub.submissions())
    conflict = ("FAILED", "ERROR: 1023 DETAIL: Serializable isolation violation on table - 123")
    answer = asyncio.run(go([["STARTED", conflict], ["REFUSE"], ["SUBMITTED", "STARTED", "FINISHED"]]))
    assert answer["Status"] == "FINISHED"
    tried = stub.submissions()[before:]
    assert len(tried) == 2  # the conflict, then the accepted resubmission (the refusal is not recorded as one)
    assert tried[0]["ClusterIdentifier"] == "c1" and tried[0]["DbUser"] == "loader" and "WorkgroupName" not in tried[0]
    assert tried[0]["ClientToken"] != tried[1]["ClientToken"]

    with pytest.raises(RedshiftError, match=r"FAILED after 1 attempt\(s\): ERROR: permission denied for schema shop"):
        asyncio.run(go([["STARTED", ("FAILED", "ERROR: permission denied for schema shop")]]))
    with pytest.raises(RedshiftError, match="after 3 attempt"):
        asyncio.run(go([[conflict]] * 3))


# ------------------------------------------------------------------------------ reporting SQL, rendered for Redshift


def flat(sql: str) -> str:
    """One line, no space inside parentheses (the rendered text is pretty-printed)."""
    return re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(sql.split())))


def assert_redshift(statements: list[str]) -> None:
    """Every statement parses as Redshift SQL, its parameters spelled `:name` (the Data API's)."""
    for statement in statements:
        sqlglot.parse_one(statement, read="redshift")  # raises on a syntax error
        assert "%(" not in statement and not re.search(r"\$[a-z_]", statement), statement


def test_render_for_redshift():
    between = 'SELECT 1 FROM t WHERE "d" BETWEEN :start_date AND :end_date'
    assert render(between, "redshift").endswith('"d" BETWEEN :start_date AND :end_date')
    assert render(between, "postgres") == between and "$start_date" in render(between, "duckdb")
    # an epoch shown in the app's time zone: converted from UTC (a timestamp without zone AT TIME ZONE would convert
    # from the zone to UTC on Redshift)
    local = "SELECT CAST((TO_TIMESTAMP(e.ms / 1000.0) AT TIME ZONE 'Asia/Shanghai') AS DATE) FROM t AS e"
    rendered = render(local, "redshift")
    assert "CONVERT_TIMEZONE('UTC', 'Asia/Shanghai', (TIMESTAMP 'epoch' + e.ms / 1000.0 * INTERVAL '1 SECOND'))" in (
        " ".join(rendered.split())
    )
    assert "AT TIME ZONE" not in rendered and "AT TIME ZONE" in render(local, "duckdb")
    # Redshift's CREATE TABLE AS has no IF NOT EXISTS; a CREATE TABLE with columns keeps it
    ctas = 'CREATE TABLE IF NOT EXISTS "s"."t" AS SELECT * FROM (SELECT 1 AS a) AS q LIMIT 0'
    assert render(ctas, "redshift").startswith('CREATE TABLE "s"."t" AS')
    assert render(ctas, "duckdb").startswith("CREATE TABLE IF NOT EXISTS")
    assert render('CREATE TABLE IF NOT EXISTS "s"."t" ("a" INT)', "redshift").startswith("CREATE TABLE IF NOT EXISTS")


def test_reporting_objects_render_as_redshift():
    target = reporting.Target.of(App("shop", "Asia/Shanghai"))
    statements = reporting.object_sql("redshift", target)
    assert_redshift(statements)
    text = "\n".join(statements)
    assert "LATERAL" not in text and "AT TIME ZONE" not in text and "UNPIVOT" in text  # the SUPER maps' views
    for agg in (*reporting.AGGREGATES, *reporting.METADATA):
        assert f'CREATE TABLE "shop"."{agg.name}" AS' in text
    assert retention_statements("shop")[0].startswith('DELETE FROM "shop"."event_v2"')
    assert_redshift(retention_statements("shop"))


# --------------------------------------------------------------------------------- the Data API adapter (unit)


class RecordingApi:
    """DataApi's two coroutines, recording what they are given (no endpoint)."""

    def __init__(self, rows=()):
        self.calls: list[tuple[str, list[str], list[dict] | None]] = []
        self.rows = list(rows)

    async def run(self, sqls, name, parameters=None):
        self.calls.append(("run", list(sqls), parameters))
        return {"Status": "FINISHED"}

    async def query(self, sql, name, parameters=None):
        self.calls.append(("query", [sql], parameters))
        return ["x"], self.rows


def test_adapter_batches_binds_and_packs():
    api = RecordingApi(rows=[(1,)])
    conn = DataApiConnection(api, asyncio.run)
    run = Runner(conn, "redshift")
    status = 'INSERT INTO "s"."refresh_status" ("refresh_name", "message") VALUES (:name, :message)'
    with run.transaction():
        run.run('DROP TABLE "s"."a"')
        run.run('DROP TABLE "s"."b"')
        run.run(status, {"name": "a", "message": None})
        run.run('DELETE FROM "s"."a" WHERE "d" BETWEEN :start AND :end', {"start": date(2026, 3, 1), "end": "x"})
        assert run.rows("SELECT 1 FROM t WHERE k = :k", {"k": "v", "unused": 1}) == [(1,)]  # a read runs at once
        run.run('INSERT INTO "s"."a" SELECT :start', {"start": date(2026, 3, 2)})
        run.run(status, {"name": "b", "message": ""})
    (read, batch) = api.calls
    assert (read[0], flat(read[1][0]), read[2]) == (
        "query",
        "SELECT 1 FROM t WHERE k = :k",
        [{"name": "k", "value": "v"}],
    )
    sqls, parameters = [flat(s) for s in batch[1]], batch[2]
    assert sqls[0] == 'DROP TABLE "s"."a", "s"."b"'  # consecutive drops: one statement
    assert sqls[1] == 'DELETE FROM "s"."a" WHERE "d" BETWEEN :start AND :end'
    assert sqls[2] == 'INSERT INTO "s"."a" SELECT :start_2'  # same name, another value: renamed
    # the status rows: one INSERT at the last of them; NULL and '' written in the text (the API takes neither)
    assert sqls[3] == (
        'INSERT INTO "s"."refresh_status" ("refresh_name", "message") VALUES (:name, NULL), (:name_2, \'\')'
    )
    assert parameters == [
        {"name": "end", "value": "x"},
        {"name": "name", "value": "a"},
        {"name": "name_2", "value": "b"},
        {"name": "start", "value": "2026-03-01"},
        {"name": "start_2", "value": "2026-03-02"},
    ]
    # a statement that names the table in between keeps the rows apart; a failed block sends nothing
    api.calls.clear()
    with run.transaction():
        run.run(status, {"name": "a", "message": "m"})
        run.run('DELETE FROM "s"."refresh_status" WHERE "refresh_name" = :name', {"name": "a"})
        run.run(status, {"name": "b", "message": "m"})
    assert len(api.calls[0][1]) == 3
    with pytest.raises(RuntimeError, match="boom"), run.transaction():
        run.run('DROP TABLE "s"."a"')
        raise RuntimeError("boom")
    assert len(api.calls) == 1
    # outside a transaction: one statement each
    run.run('DROP VIEW IF EXISTS "s"."v"')
    assert (api.calls[-1][0], flat(api.calls[-1][1][0]), api.calls[-1][2]) == (
        "run",
        'DROP VIEW IF EXISTS "s"."v"',
        None,
    )


def test_adapter_splits_what_the_api_cannot_take_in_one_batch():
    api = RecordingApi()
    conn = DataApiConnection(api, asyncio.run)
    run = Runner(conn, "redshift")
    with run.transaction():
        for n in range(15):  # 15 tables, two ranges each: 60 statements
            for day in (1, 2):
                run.run(f'DELETE FROM "s"."t{n}" WHERE "d" = :d', {"d": day})
                run.run(f'INSERT INTO "s"."t{n}" SELECT :d', {"d": day})
    batches = [[flat(sql) for sql in sqls] for _, sqls, _ in api.calls]
    assert [len(b) for b in batches] == [40, 20]  # at most 40 statements each: two transactions
    tables = [[sql.split('"')[3] for sql in batch] for batch in batches]
    assert not set(tables[0]) & set(tables[1])  # a table's four statements are never apart
    assert [sql.split(" WHERE")[0].split(" SELECT")[0] for batch in batches for sql in batch] == [
        f'{verb} "s"."t{n}"' for n in range(15) for _ in (1, 2) for verb in ("DELETE FROM", "INSERT INTO")
    ]  # in their order
    assert api.calls[0][2] == [{"name": "d", "value": "1"}, {"name": "d_2", "value": "2"}]


# --------------------------------------------------------------------------------- retention through the Data API


def test_retention_deletes_per_app_and_forgets_old_file_states(aws, stub):
    aws["table"] = f"status-{uuid.uuid4().hex[:8]}"
    put_file(aws, "event_v2", "shop", 1)
    put_file(aws, "session", "blog", 2)
    store = DynamoStateStore(aws["table"])
    store.create()
    days = 400
    old = date.today() - timedelta(days=days + 30)
    old_uri = f"s3://{aws['bucket']}/ods/event_v2/partition_app=shop/old.snappy.parquet"
    store.register([DataFile(old_uri, "event_v2", "shop", old, 1, 1.0)])
    assert store.claim("shop", "event_v2", 10, "m-old")
    assert store.mark_loaded([old_uri], "m-old") == 1

    report = run_once(config(aws, retention_days=days))
    assert report.status == "succeeded", report.errors
    issued = stub.submissions()
    retention = [b for b in issued if b.get("Sqls", [""])[0].startswith("DELETE FROM")]
    assert [b["Sqls"] for b in retention] == [retention_statements("blog"), retention_statements("shop")]
    for body in retention:
        assert body["Parameters"] == [{"name": "days", "value": str(days)}]
        assert_redshift(body["Sqls"])
    assert issued[-2:] == retention  # after every load
    assert report.deleted_rows == {"event_v2": 14, "item_v2": 14, "session": 14}  # the stub's 7 rows, two apps
    assert old_uri not in store.known() and len(store.known()) == 2
    again = run_once(config(aws, retention_days=days))  # nothing loaded: no app's rows can have expired
    assert again.status == "succeeded" and len(stub.submissions()) == len(issued)


# ------------------------------------------------------------------------------ the reporting layer on Redshift

STATE = '"clickstream_loader"."reporting"'


class ReportingWarehouse:
    """What the stub answers to the reporting's reads: no objects in information_schema, the span of the app's data,
    and the state table as the issued statements wrote it (a model of that one table, the only one whose content
    changes what the loader issues next)."""

    def __init__(self, first: datetime, last: datetime):
        self.span = (first, last)
        self.rows: dict[str, dict] = {}
        self.now = datetime.now(UTC).replace(tzinfo=None)

    def submit(self, sqls: list[str], parameters: dict) -> None:
        for sql in sqls:
            if STATE not in sql:
                continue
            tree = sqlglot.parse_one(sql, read="redshift")

            def value(node, parameters=parameters):
                found = node.find(exp.Placeholder)
                if found is not None:
                    return parameters[found.name]
                return self.now if "GETDATE" in node.sql(dialect="redshift").upper() else None

            if isinstance(tree, exp.Delete):
                self.rows.pop(value(tree.args["where"]), None)
            elif isinstance(tree, exp.Insert):
                names = [c.name for c in tree.this.expressions]
                for row in tree.expression.expressions:
                    values = dict(zip(names, (value(v) for v in row.expressions), strict=True))
                    self.rows[values["app_id"]] = values
            elif isinstance(tree, exp.Update):
                row = self.rows[value(tree.args["where"])]
                for assignment in tree.expressions:
                    row[assignment.this.name] = value(assignment.expression)

    def results(self, sql: str, parameters: dict):
        sql = flat(sql)
        if "information_schema.tables" in sql:
            return [("table_type", "varchar")], []
        if STATE in sql:
            columns = ["app_id", "definitions", "created_at", "metadata_scanned_at", "metadata_from", "metadata_to"]
            kinds = ["varchar", "varchar", "timestamp", "timestamp", "date", "date"]
            return [*zip(columns, kinds, strict=True), ("getdate", "timestamp")], [
                (*(row[c] for c in columns), self.now) for row in self.rows.values()
            ]
        if 'MIN(t."event_timestamp")' in sql:
            return [("min", "timestamp"), ("max", "timestamp")], [self.span]
        if re.match(r'SELECT MAX\("event_date"\) FROM "shop"\."clickstream_', sql):
            return [("max", "date")], [(None,)]  # an aggregate table read by the refresh: empty
        raise AssertionError(f"the reporting read something unexpected: {sql}")


def label(sqls: list[str]) -> str:
    """What a submission is, for the order of a pass."""
    first = flat(sqls[0])
    for prefix, name in (
        ('CREATE SCHEMA IF NOT EXISTS "clickstream_loader"', "state-ddl"),
        ('SELECT "app_id", "definitions"', "state-read"),
        ("SELECT table_type FROM information_schema.tables", "exists?"),
        ('SELECT MIN(t."event_timestamp")', "data-days"),
        ('SELECT MAX("event_date")', "aggregate-read"),
        (f"DELETE FROM {STATE}", "state-write"),
        (f"UPDATE {STATE}", "state-scanned"),
        ('DELETE FROM "shop"."event_metadata"', "metadata"),
        ('DELETE FROM "shop"."clickstream_', "refresh"),
        ('CREATE SCHEMA IF NOT EXISTS "shop"', "create" if len(sqls) > 10 else "ddl"),
    ):
        if first.startswith(prefix):
            return name
    return "load" if any(s.startswith("COPY") for s in sqls) else first[:40]


def delete_ranges(batches: list[list[str]], parameters: list[dict]) -> dict[str, list[tuple[date, date]]]:
    """Per table, the day ranges the refresh batches deleted (then inserted), from the statements' bound values."""
    out: dict[str, list[tuple[date, date]]] = {}
    for sqls, values in zip(batches, parameters, strict=True):
        for i, sql in enumerate(sqls):
            if not sql.startswith("DELETE FROM"):
                continue
            table = sql.split('"')[3]
            start, end = re.search(r"BETWEEN :(\w+) AND :(\w+)", sql).groups()
            days = (date.fromisoformat(values[start]), date.fromisoformat(values[end]))
            out.setdefault(table, []).append(days)
            insert = " ".join(sqls[i + 1].split())  # the INSERT of the same days follows its DELETE
            assert insert.startswith(f'INSERT INTO "shop"."{table}" SELECT')
            assert insert.endswith(f'WHERE q."event_date" BETWEEN :{start} AND :{end}')
    return out


def test_reporting_pass_on_redshift(aws, stub, monkeypatch):
    from clickstream_loader import redshift

    monkeypatch.setattr(redshift, "POLL_S", 0.01)
    aws["table"] = f"status-{uuid.uuid4().hex[:8]}"
    warehouse = ReportingWarehouse(datetime(2026, 3, 1, 12), datetime(2026, 3, 1, 13))
    stub.on_submit, stub.results = warehouse.submit, warehouse.results
    settings = {"reporting": True, "refresh_days": 1, "metadata_interval_s": 3600.0}
    today = datetime.now(UTC).date()  # the app is not registered: its days are UTC days
    window = (today - timedelta(days=1), today)
    objects = [a.name for a in (*reporting.AGGREGATES, *reporting.METADATA)]

    def run_pass(**overrides):
        before = len(stub.submissions())
        report = run_once(config(aws, **{**settings, **overrides}))
        assert report.status == "succeeded", report.errors
        bodies = stub.submissions()[before:]
        sqls = [b.get("Sqls") or [b["Sql"]] for b in bodies]
        parameters = [{p["name"]: p["value"] for p in b.get("Parameters", [])} for b in bodies]
        for statements in sqls:
            assert_redshift(statements)
            assert len(statements) <= 40
        return report, sqls, parameters

    # pass 1: a new app -> objects created, every day of its data back-filled, the window refreshed, metadata scanned
    put_file(aws, "event_v2", "shop", 1)
    report, sqls, parameters = run_pass()
    labels = [label(s) for s in sqls]
    refresh_count = labels.count("refresh")
    assert [x for x in labels if x != "aggregate-read"] == [
        "ddl",
        "load",
        "state-ddl",
        "state-read",
        *["exists?"] * len(objects),
        "create",
        "data-days",
        *["refresh"] * refresh_count,
        "state-write",
        "metadata",
        "metadata",
        "state-scanned",
    ]
    assert parameters[labels.index("exists?")] == {"schema": "shop", "name": objects[0]}
    created = sqls[labels.index("create")]
    for name in objects:
        assert sum(s.startswith(f'CREATE TABLE "shop"."{name}" AS') for s in created) == 1
    assert any(s.startswith('CREATE TABLE IF NOT EXISTS "shop"."refresh_status"') for s in created)
    assert not any(s.startswith("CREATE TABLE IF NOT EXISTS") and " AS" in s.split("(")[0] for s in created)

    done = report.reporting["shop"]
    assert done["created"] is True
    # the touched day (and its neighbours: a session may cross midnight) and the window, nothing else
    loaded = (date(2026, 2, 28), date(2026, 3, 2))
    assert done["refreshed"] == [(loaded[0].isoformat(), loaded[1].isoformat()), tuple(d.isoformat() for d in window)]
    refresh = [i for i, x in enumerate(labels) if x == "refresh"]
    ranges = delete_ranges([sqls[i] for i in refresh], [parameters[i] for i in refresh])
    planned = recompute_plan([loaded, window], today)
    assert ranges == planned
    # two ranges: more statements than a batch takes (40), so two transactions, each aggregate's in one of them
    statements = 2 * sum(len(spans) for spans in planned.values()) + 1
    assert sum(len(sqls[i]) for i in refresh) == statements and statements > 40 and len(refresh) == 2
    # one refresh_status row per aggregate and range, with the last refresh batch
    status = flat(sqls[refresh[-1]][-1])
    assert status.startswith('INSERT INTO "shop"."refresh_status"')
    rows = re.findall(r"\(:(\w+), :\w+, :(\w+), :(\w+), :(\w+), :(\w+), NULL, GETDATE\(\)\)", status)
    values = parameters[refresh[-1]]
    assert sorted((values[n], values[st], values[tb]) for n, _, _, st, tb in rows) == sorted(
        (name, "SUCCEEDED", "WORK_FLOW") for name, spans in planned.items() for _ in spans
    )
    # the metadata scan: the window, then the loaded day outside it
    scans = [i for i, x in enumerate(labels) if x == "metadata"]
    assert [delete_ranges([sqls[i]], [parameters[i]]) for i in scans] == [
        {m.name: [window] for m in reporting.METADATA},
        {m.name: [(date(2026, 3, 1), date(2026, 3, 1))] for m in reporting.METADATA},
    ]
    assert done["metadata"] == [tuple(d.isoformat() for d in window), ("2026-03-01", "2026-03-01")]
    assert warehouse.rows["shop"]["metadata_scanned_at"] == warehouse.now
    assert warehouse.rows["shop"]["metadata_from"] is None

    # pass 2: objects exist with the same definitions -> not created again; metadata not due -> the day waits
    put_file(aws, "event_v2", "shop", 2, day=date(2026, 3, 5))
    report, sqls, parameters = run_pass()
    labels = [x for x in (label(s) for s in sqls) if x != "aggregate-read"]
    assert labels == ["ddl", "load", "state-ddl", "state-read", *["refresh"] * labels.count("refresh"), "state-write"]
    done = report.reporting["shop"]
    assert done["created"] is False and done["metadata"] == [] and done["metadata_pending"] == ("2026-03-05",) * 2
    assert done["refreshed"][0] == ("2026-03-04", "2026-03-06")
    assert warehouse.rows["shop"]["metadata_from"] == "2026-03-05"

    # an idle pass issues nothing (Redshift Serverless bills every query)
    before = len(stub.submissions())
    assert run_once(config(aws, **settings)).status == "succeeded"
    assert len(stub.submissions()) == before

    # pass 3: the interval is over -> the window and every pending day are scanned
    put_file(aws, "event_v2", "shop", 3, day=date(2026, 3, 7))
    report, sqls, parameters = run_pass(metadata_interval_s=0)
    done = report.reporting["shop"]
    assert done["metadata"] == [tuple(d.isoformat() for d in window), ("2026-03-05", "2026-03-07")]
    assert [label(s) for s in sqls][-3:] == ["metadata", "metadata", "state-scanned"]

    # pass 4: a file of today: the loaded days are inside the window, so the refresh is one range of days, one batch
    put_file(aws, "event_v2", "shop", 4, day=today)
    report, sqls, parameters = run_pass()
    labels = [label(s) for s in sqls]
    assert [x for x in labels if x != "aggregate-read"] == [
        "ddl",
        "load",
        "state-ddl",
        "state-read",
        "refresh",
        "state-write",
    ]
    assert report.reporting["shop"]["refreshed"] == [tuple(d.isoformat() for d in window)]
    batch = sqls[labels.index("refresh")]
    assert len(batch) == 2 * len(reporting.AGGREGATES) + 1  # DELETE + INSERT per aggregate, the status rows
    assert delete_ranges([batch], [parameters[labels.index("refresh")]]) == recompute_plan([window], today)
    assert not stub.failures


def recompute_plan(ranges: list[tuple[date, date]], newest: date) -> dict[str, list[tuple[date, date]]]:
    """Per aggregate table, the day ranges a refresh of `ranges` deletes and recomputes (reporting.materialize's
    plan; a weekly aggregate from the Monday of its first day)."""
    out: dict[str, list[tuple[date, date]]] = {}
    for agg, (start, end) in plan(ranges, newest):
        first = start - timedelta(days=start.weekday()) if agg.grain == "week" else start
        out.setdefault(agg.name, []).append((first, end))
    return out
