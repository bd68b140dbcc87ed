"""The Athena side (glue.py) against the local AWS API server (moto): the Glue database, the four tables and the
partitions are really created and listed back; the named queries are rendered for Athena, parse, and are created
in the Athena workgroup once, then updated in place when their text changes.

moto 5.2.5 lacks Athena's BatchGetNamedQuery and UpdateNamedQuery: the server these tests use adds them over moto's
own stored named queries (tests/loader/moto_athena.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import date

import botocore.session
import pytest
import sqlglot
from clickstream_core.tables import PARTITION_COLUMNS, TABLES
from clickstream_loader import glue as glue_module
from clickstream_loader.config import LoaderConfig
from clickstream_loader.discovery import DataFile
from clickstream_loader.glue import named_queries, sync_catalog
from clickstream_loader.runner import run_once
from clickstream_loader.schema import TABLE_NAMES

from scripts.stack import ROOT, _wait_http, free_port

QUERY_NAMES = sorted(named_queries("x"))


@pytest.fixture(scope="module")
def aws_endpoint(tmp_path_factory):
    """moto's server with the two named-query operations it lacks (Glue, S3 and Athena on one endpoint)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto_athena") / "moto.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.loader.moto_athena", "-H", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/moto-api/", 30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def glue(aws_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    return botocore.session.get_session().create_client("glue", region_name="us-east-1", endpoint_url=aws_endpoint)


@pytest.fixture
def athena(glue, aws_endpoint):
    return botocore.session.get_session().create_client("athena", region_name="us-east-1", endpoint_url=aws_endpoint)


def workgroup_queries(athena, workgroup: str) -> list[dict]:
    """Every named query of the workgroup, read back through moto's own ListNamedQueries + GetNamedQuery."""
    ids = []
    for page in athena.get_paginator("list_named_queries").paginate(WorkGroup=workgroup):
        ids += page["NamedQueryIds"]
    return [athena.get_named_query(NamedQueryId=i)["NamedQuery"] for i in ids]


def new_workgroup(athena) -> str:
    name = f"wg-{uuid.uuid4().hex[:8]}"
    athena.create_work_group(Name=name, Configuration={"ResultConfiguration": {"OutputLocation": "s3://results/"}})
    return name


def data_file(table: str, app: str, day: date, n: int = 0) -> DataFile:
    key = (
        f"partition_app={app}/partition_year={day.year}/partition_month={day.month:02d}/partition_day={day.day:02d}"
        f"/p{n}.snappy.parquet"
    )
    return DataFile(f"s3://lake/ods/{table}/{key}", table, app, day, 10, 1.0)


def partitions(glue, database: str, table: str) -> list[tuple[list[str], str]]:
    found = []
    for page in glue.get_paginator("get_partitions").paginate(DatabaseName=database, TableName=table):
        found += [(p["Values"], p["StorageDescriptor"]["Location"]) for p in page["Partitions"]]
    return sorted(found)


def test_database_tables_and_partitions(glue):
    database = f"clickstream_{uuid.uuid4().hex[:8]}"
    files = [
        data_file("event_v2", "shop", date(2026, 3, 1), 0),
        data_file("event_v2", "shop", date(2026, 3, 1), 1),  # same partition
        data_file("event_v2", "shop", date(2026, 3, 2)),
        data_file("event_v2", "news", date(2026, 3, 1)),
        data_file("session", "shop", date(2026, 3, 1)),
    ]
    assert sync_catalog(database, "s3://lake/ods", files).partitions == 4

    assert glue.get_database(Name=database)["Database"]["Name"] == database
    tables = {t["Name"]: t for t in glue.get_tables(DatabaseName=database)["TableList"]}
    assert sorted(tables) == sorted(TABLE_NAMES)
    event = tables["event_v2"]
    descriptor = event["StorageDescriptor"]
    assert descriptor["Location"] == "s3://lake/ods/event_v2/"
    assert (
        descriptor["SerdeInfo"]["SerializationLibrary"] == "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    )
    assert [c["Name"] for c in descriptor["Columns"]] == TABLES["event_v2"].names
    types = {c["Name"]: c["Type"] for c in descriptor["Columns"]}
    assert types["event_timestamp"] == "timestamp" and types["event_id"] == "string"
    assert types["custom_parameters"] == "map<string,struct<value:string,type:string>>"
    assert [(k["Name"], k["Type"]) for k in event["PartitionKeys"]] == [(c, "string") for c in PARTITION_COLUMNS]

    assert partitions(glue, database, "event_v2") == [
        (
            ["news", "2026", "03", "01"],
            "s3://lake/ods/event_v2/partition_app=news/partition_year=2026/partition_month=03/partition_day=01/",
        ),
        (
            ["shop", "2026", "03", "01"],
            "s3://lake/ods/event_v2/partition_app=shop/partition_year=2026/partition_month=03/partition_day=01/",
        ),
        (
            ["shop", "2026", "03", "02"],
            "s3://lake/ods/event_v2/partition_app=shop/partition_year=2026/partition_month=03/partition_day=02/",
        ),
    ]
    assert [v for v, _ in partitions(glue, database, "session")] == [["shop", "2026", "03", "01"]]
    assert partitions(glue, database, "user_v2") == []

    # the next pass: existing database, tables and partitions are not errors; only the new day is created
    more = [*files, data_file("event_v2", "shop", date(2026, 3, 3))]
    assert sync_catalog(database, "s3://lake/ods", more).partitions == 1
    assert len(partitions(glue, database, "event_v2")) == 4


def test_run_once_adds_partitions_alongside_the_engine(glue, athena, aws_endpoint, tmp_path):
    """LOADER_GLUE_DATABASE: run_once creates the catalog, the listed files' partitions and the named queries (in
    LOADER_ATHENA_WORKGROUP) before the engine's step (whatever that step does: here duckdb, which the configuration
    would refuse on an S3 source)."""
    session = botocore.session.get_session()
    s3 = session.create_client("s3", region_name="us-east-1", endpoint_url=aws_endpoint)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    key = "ods/item_v2/partition_app=shop/partition_year=2026/partition_month=03/partition_day=05/p.snappy.parquet"
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    database = f"clickstream_{uuid.uuid4().hex[:8]}"
    workgroup = new_workgroup(athena)
    config = LoaderConfig(
        engine="duckdb",
        source=f"s3://{bucket}/ods",
        state_dir=str(tmp_path),
        glue_database=database,
        athena_workgroup=workgroup,
        reporting=False,
    )
    problems = list(config.problems())
    assert problems and all("duckdb" in p for p in problems)  # duckdb reads local folders; glue itself is fine
    report = run_once(config)
    assert [v for v, _ in partitions(glue, database, "item_v2")] == [["shop", "2026", "03", "05"]]
    assert report.glue_partitions == 1
    assert report.athena_queries == {"created": QUERY_NAMES, "updated": []}
    assert sorted(q["Name"] for q in workgroup_queries(athena, workgroup)) == QUERY_NAMES
    assert all(q["Database"] == database for q in workgroup_queries(athena, workgroup))
    again = run_once(config)
    assert again.glue_partitions == 0 and again.athena_queries == {"created": [], "updated": []}
    assert len(workgroup_queries(athena, workgroup)) == len(QUERY_NAMES)


def test_named_queries_created_once_and_updated_in_place(athena, monkeypatch):
    database = f"clickstream_{uuid.uuid4().hex[:8]}"
    workgroup = new_workgroup(athena)
    # the workgroup holds other queries: more than one page of them, one of them with our name but another
    # project's database (not ours: left alone), so the listing pages and the batches of 50 are exercised
    for n in range(55):
        athena.create_named_query(Name=f"someone's {n}", Database="other", QueryString="SELECT 1", WorkGroup=workgroup)
    athena.create_named_query(
        Name="Clickstream - Event Query", Database="other_project", QueryString="SELECT 2", WorkGroup=workgroup
    )
    before = {q["NamedQueryId"]: q for q in workgroup_queries(athena, workgroup)}

    first = sync_catalog(database, "s3://lake/ods", [], workgroup)
    assert (first.queries_created, first.queries_updated) == (QUERY_NAMES, [])
    ours = {q["Name"]: q for q in workgroup_queries(athena, workgroup) if q["Database"] == database}
    assert sorted(ours) == QUERY_NAMES
    for name, text in named_queries(database).items():
        assert ours[name]["QueryString"] == text and ours[name]["WorkGroup"] == workgroup
        assert "YYYYMMDD" in ours[name]["Description"]
    # nothing in the primary workgroup: LOADER_ATHENA_WORKGROUP is where they go
    assert not [q for q in workgroup_queries(athena, "primary") if q["Database"] == database]

    # a second pass that compares again (recheck_s=0): every query current, nothing created or updated, no duplicate
    second = sync_catalog(database, "s3://lake/ods", [], workgroup, recheck_s=0)
    assert (second.queries_created, second.queries_updated) == ([], [])
    after = workgroup_queries(athena, workgroup)
    assert len(after) == len(before) + len(QUERY_NAMES)
    assert sorted(q["NamedQueryId"] for q in after if q["Database"] == database) == sorted(
        q["NamedQueryId"] for q in ours.values()
    )

    # a new loader version changes one text: that query is updated in place (same id), the others are untouched,
    # at its first pass (other texts: no waiting for the recheck interval)
    rendered = glue_module.named_queries

    def changed(db):
        texts = rendered(db)
        texts["Clickstream - User Query"] += " LIMIT 1000"
        return texts

    monkeypatch.setattr(glue_module, "named_queries", changed)
    third = sync_catalog(database, "s3://lake/ods", [], workgroup)
    assert (third.queries_created, third.queries_updated) == ([], ["Clickstream - User Query"])
    now = {q["NamedQueryId"]: q for q in workgroup_queries(athena, workgroup)}
    user = now[ours["Clickstream - User Query"]["NamedQueryId"]]
    assert user["QueryString"].endswith(" LIMIT 1000") and user["Database"] == database
    assert len(now) == len(before) + len(QUERY_NAMES)
    for query_id, query in before.items():  # other queries, including the same name in another database
        assert now[query_id] == query
    # and a query edited by hand goes back to the loader's text
    athena.update_named_query(
        NamedQueryId=ours["Clickstream - Item Query"]["NamedQueryId"],
        Name="Clickstream - Item Query",
        QueryString="SELECT 3",
    )
    # ... within NAMED_QUERY_RECHECK_S of the last comparison the workgroup is not listed again
    unchecked = sync_catalog(database, "s3://lake/ods", [], workgroup)
    assert (unchecked.queries_created, unchecked.queries_updated) == ([], [])
    item = athena.get_named_query(NamedQueryId=ours["Clickstream - Item Query"]["NamedQueryId"])["NamedQuery"]
    assert item["QueryString"] == "SELECT 3"
    fourth = sync_catalog(database, "s3://lake/ods", [], workgroup, recheck_s=0)
    assert (fourth.queries_created, fourth.queries_updated) == ([], ["Clickstream - Item Query"])
    item = athena.get_named_query(NamedQueryId=ours["Clickstream - Item Query"]["NamedQueryId"])["NamedQuery"]
    assert item["QueryString"] == changed(database)["Clickstream - Item Query"]


def test_missing_workgroup_fails_clearly(athena):
    with pytest.raises(Exception, match="WorkGroup does not exist"):
        sync_catalog(f"clickstream_{uuid.uuid4().hex[:8]}", "s3://lake/ods", [], "no-such-workgroup")


def test_glue_config_problems():
    assert "lower-case" in "\n".join(LoaderConfig(source="/x", glue_database="Bad-Name").problems())
    assert "needs LOADER_SOURCE_URI on S3" in "\n".join(LoaderConfig(source="/x", glue_database="db").problems())
    s3 = {"engine": "postgres", "postgres_dsn": "dbname=x", "source": "s3://lake/ods", "glue_database": "db"}
    assert list(LoaderConfig(**s3).problems()) == []  # the default workgroup: primary
    assert list(LoaderConfig(**s3, athena_workgroup="analysts-2.v1").problems()) == []
    for bad in ("", "has space", "x" * 129, "a/b"):
        problems = list(LoaderConfig(**s3, athena_workgroup=bad).problems())
        assert len(problems) == 1 and "LOADER_ATHENA_WORKGROUP" in problems[0], bad
    alone = list(LoaderConfig(source="/x", athena_workgroup="analysts").problems())
    assert len(alone) == 1 and alone[0].startswith("LOADER_ATHENA_WORKGROUP is used only with LOADER_GLUE_DATABASE")


def test_named_queries_render_for_athena():
    queries = named_queries("clickstream_db")
    assert sorted(queries) == [
        "Clickstream - All Data Query",
        "Clickstream - Event Query",
        "Clickstream - Item Query",
        "Clickstream - Session Query",
        "Clickstream - User Query",
    ]
    for name, text in queries.items():
        tree = sqlglot.parse_one(text, read="athena")
        assert text.count("?") == 3, name  # app id, first day, last day
        assert "partition_app = ?" in text and "BETWEEN ? AND ?" in text
        names = [s.alias_or_name for s in tree.selects]
        assert len(names) == len(set(names)), name  # no ambiguous output column
    assert '"clickstream_db"."event_v2"' in queries["Clickstream - All Data Query"]
    assert "LEFT JOIN" in queries["Clickstream - All Data Query"]
