"""One throwaway PostgreSQL cluster for the whole test run (scripts/postgres.py), a fresh database per test."""

from __future__ import annotations

import itertools

import pytest

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster():
    from scripts.postgres import PostgresCluster

    cluster = PostgresCluster().start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_dsn(pg_cluster) -> str:
    """The DSN of an empty database of its own."""
    return pg_cluster.create_database(f"test_{next(_counter)}")
