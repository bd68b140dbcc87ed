"""The Redshift path. No Redshift runs here: the rendered SQL is parsed back with sqlglot's redshift dialect, and the
statements are issued through aiobotocore's Data API client to a stub endpoint on 127.0.0.1 (this file's
`DataApiStub`: it records every request and answers with scripted statuses; it runs no SQL). S3 (the manifests,
the listed files) and DynamoDB (the file states) are the local AWS API server (moto)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.session
import pytest
import sqlglot
from clickstream_core.tables import TABLES
from clickstream_loader.config import LoaderConfig
from clickstream_loader.redshift import DataApi, RedshiftError, RedshiftTarget, load_statements, setup_statements
from clickstream_loader.runner import run_once
from clickstream_loader.schema import MERGE_KEYS, TABLE_NAMES
from clickstream_loader.state_dynamodb import DynamoStateStore

ROLE = "arn:aws:iam::123456789012:role/clickstream-copy"


class DataApiStub:
    """A Redshift Data API endpoint that records requests. `plans` (consumed per submission) script the statuses
    describe_statement reports; the default is one STARTED poll, then FINISHED with `rows` affected rows."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.statements: dict[str, dict] = {}
        self.plans: list[list] = []
        self.rows = 7
        self.ids = itertools.count(1)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                action = self.headers["X-Amz-Target"].split(".", 1)[1]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                stub.requests.append((action, body))
                status, answer = stub.answer(action, body)
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

    def answer(self, action: str, body: dict):
        if action in ("ExecuteStatement", "BatchExecuteStatement"):
            plan = self.plans.pop(0) if self.plans else ["STARTED", "FINISHED"]
            if plan == ["REFUSE"]:
                body["refused"] = True
                return 400, {"__type": "ActiveStatementsExceededException", "message": "too many"}
            sid = f"stmt-{next(self.ids)}"
            sqls = body.get("Sqls") or [body["Sql"]]
            self.statements[sid] = {"sqls": sqls, "plan": list(plan), "body": body}
            return 200, {"Id": sid, "CreatedAt": 1.0, "Database": body["Database"]}
        if action == "DescribeStatement":
            record = self.statements[body["Id"]]
            step = record["plan"].pop(0) if len(record["plan"]) > 1 else record["plan"][0]
            status, error = (step, None) if isinstance(step, str) else step
            answer = {"Id": body["Id"], "Status": status, "HasResultSet": False}
            if error:
                answer["Error"] = error
            answer["SubStatements"] = [
                {"Id": f"{body['Id']}:{n}", "Status": status, "QueryString": sql, "ResultRows": self.rows}
                for n, sql in enumerate(record["sqls"], 1)
            ]
            return 200, answer
        return 400, {"__type": "ValidationException", "message": action}

    def submissions(self) -> list[dict]:
        return [
            b for a, b in self.requests if a in ("ExecuteStatement", "BatchExecuteStatement") and "refused" not in b
        ]

    def close(self):
        self.server.shutdown()


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


def put_file(aws, table: str, app: str, n: int, size: int = 100) -> str:
    key = f"ods/{table}/partition_app={app}/partition_year=2026/partition_month=03/partition_day=01/p{n}.snappy.parquet"
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
