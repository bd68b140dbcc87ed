"""Table DDL rendered from clickstream_core.tables for each engine; the loader's configuration; key discovery."""

from __future__ import annotations

from datetime import date

import duckdb
import psycopg
import pytest
import sqlglot
from clickstream_core.appconfig import AppConfig
from clickstream_core.settings import ConfigError, load
from clickstream_core.tables import TABLES
from clickstream_loader import schema
from clickstream_loader.cli import main as cli
from clickstream_loader.config import LoaderConfig
from clickstream_loader.discovery import parse_key


def test_postgres_ddl_runs_and_matches_the_data_model(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for _ in range(2):  # idempotent
            for statement in schema.create_tables_sql("Shop_2"):
                conn.execute(statement)
        for table in schema.TABLE_NAMES:
            got = conn.execute(
                "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'Shop_2' AND table_name = %s "
                "ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            assert [g[0] for g in got] == TABLES[table].names
            for (name, kind, length, nullable, default), column in zip(got, TABLES[table].columns, strict=True):
                if column.type == "string":
                    assert (kind, length) == ("character varying", column.max_bytes)
                if column.type.startswith("map"):
                    assert kind == "jsonb"
                if column.not_null:
                    assert nullable == "NO"
                if name == "created_time":
                    assert kind == "timestamp without time zone" and default == "now()"
        indexes = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'Shop_2'").fetchall()
        assert len(indexes) == 4


def test_duckdb_and_redshift_renderings():
    con = duckdb.connect()
    for statement in schema.create_tables_sql("shop", "duckdb"):
        con.execute(statement)
    assert [r[0] for r in con.sql('DESCRIBE "shop"."event_v2"').fetchall()] == TABLES["event_v2"].names
    redshift = schema.create_tables_sql("shop", "redshift")
    text = "\n".join(redshift)
    assert "SUPER" in text and "JSONB" not in text.upper().replace("SUPER", "") and "GETDATE()" in text
    assert "INDEX" not in text  # Redshift has no indexes; the merge key is the MERGE's ON
    for statement in redshift:
        sqlglot.parse_one(statement, read="redshift")


@pytest.mark.parametrize("bad", ["1shop", "shop-x", 'x"; drop table y; --', ""])
def test_schema_names_refuse_what_the_app_config_refuses(bad):
    with pytest.raises(ValueError):
        schema.schema_name(bad)


def test_config_defaults_and_every_mistake_at_once():
    config = load(LoaderConfig, {"LOADER_SOURCE_URI": "/data/ods"})
    assert (config.engine, config.max_files, config.retention_days) == ("duckdb", 50, 365)
    assert config.state_path == "/data/ods/_loader"
    with pytest.raises(ConfigError) as err:
        load(
            LoaderConfig,
            {"LOADER_ENGINE": "postgres", "LOADER_MAX_FILES_PER_LOAD": "0", "LOADER_RETENTION_DAYS": "x"},
        )
    problems = err.value.problems
    assert any("LOADER_SOURCE_URI" in p for p in problems)
    assert any("LOADER_POSTGRES_DSN" in p for p in problems)
    assert any("LOADER_MAX_FILES_PER_LOAD" in p for p in problems)
    assert any("LOADER_RETENTION_DAYS='x'" in p for p in problems)
    with pytest.raises(ConfigError, match="duckdb reads a local folder"):
        load(LoaderConfig, {"LOADER_SOURCE_URI": "s3://bucket/ods"})


def test_cli_exit_status_2_on_bad_configuration(monkeypatch, capsys):
    monkeypatch.delenv("LOADER_SOURCE_URI", raising=False)
    assert cli(["run", "--engine", "postgres"]) == 2
    err = capsys.readouterr().err
    assert "LOADER_SOURCE_URI" in err and "LOADER_POSTGRES_DSN" in err


def test_cli_ddl_prints_the_rendered_tables(capsys):
    assert cli(["ddl", "--engine", "redshift", "shop"]) == 0
    assert 'CREATE TABLE IF NOT EXISTS "shop"."event_v2"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("partition_app=shop/partition_year=2026/partition_month=03/partition_day=01/part-1.snappy.parquet",
         ("shop", date(2026, 3, 1))),
        ("partition_app=shop/partition_year=2026/partition_month=3/partition_day=01/part-1.snappy.parquet", None),
        ("partition_app=shop/partition_year=2026/partition_month=02/partition_day=30/part-1.snappy.parquet", None),
        ("partition_app=shop/partition_year=2026/partition_month=03/partition_day=01/part-1.parquet", None),
        ("partition_app=shop/partition_year=2026/partition_month=03/partition_day=01/.part-1.snappy.parquet", None),
        ("partition_app=shop/partition_year=2026/partition_month=03/partition_day=01/x/p.snappy.parquet", None),
        ("partition_app=sh-op/partition_year=2026/partition_month=03/partition_day=01/p.snappy.parquet", None),
        ("shop/partition_year=2026/partition_month=03/partition_day=01/p.snappy.parquet", None),
    ],
)  # fmt: skip
def test_key_pattern(key, expected):
    assert parse_key("event_v2", key, ".snappy.parquet") == expected


def test_unregistered_apps_are_not_discovered(tmp_path):
    from clickstream_loader.discovery import discover

    from tests.loader.helpers import event, write

    write(tmp_path, "event_v2", [event("e1"), event("e2", app="other")], tag="a")
    (tmp_path / "event_v2" / "stray.snappy.parquet").write_bytes(b"")
    dev = discover(str(tmp_path), AppConfig())
    assert sorted(f.app_id for f in dev) == ["other", "shop"]
    registered = discover(str(tmp_path), AppConfig.from_mapping({"apps": [{"app_id": "shop"}]}))
    assert [(f.app_id, f.table, f.event_day) for f in registered] == [("shop", "event_v2", date(2026, 3, 1))]
    assert registered[0].uri == str(tmp_path / registered[0].uri.split(str(tmp_path) + "/")[1])


def test_cli_run_exit_status_0_then_1_when_the_warehouse_is_unreachable(tmp_path, capsys):
    from tests.loader.helpers import event, write

    write(tmp_path, "event_v2", [event("e1")], tag="a")
    assert cli(["run", "--source", str(tmp_path), "--engine", "duckdb"]) == 0
    assert "succeeded" in capsys.readouterr().out
    dsn = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
    assert cli(["run", "--source", str(tmp_path), "--engine", "postgres", "--postgres-dsn", dsn]) == 1
    captured = capsys.readouterr()
    assert "failed" in captured.out and "127.0.0.1:1" not in captured.out  # the DSN is not printed
