"""One SparkSession for the whole test run (start-up ~6 s, ~1.3 GB): every ETL test shares it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    from clickstream_etl.spark import build_session

    session = build_session(master="local[2]", app_name="clickstream-tests", shuffle_partitions=4)
    yield session
    session.stop()
