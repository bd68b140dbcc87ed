"""Shared fixtures: one local stack and one moto server for the whole run where tests allow it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.stack import LocalStack, free_port, start_moto  # noqa: E402

# Fixtures of the streaming components live beside their start-up scripts' tests.
pytest_plugins = ["tests.fixtures_kafka", "tests.fixtures_kinesis", "tests.fixtures_spark", "tests.fixtures_postgres"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> LocalStack:
    """A dev-mode stack (any appId, any Origin) shared by the HTTP tests; objects roll every second."""
    data_dir = tmp_path_factory.mktemp("stack")
    local = LocalStack.isolated(
        data_dir,
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> str:
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
