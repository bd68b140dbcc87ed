"""Fixtures for the Kinesis (kinesalite) and DynamoDB (dynalite) emulators; see scripts/kinesis.py.

    emulators        one node process with both emulators on free 127.0.0.1 ports for the whole run,
                     started the first time a test asks for it (npm ci first if needed), in memory
    emulators_env    the AWS_* variables a service process needs to use them: pass
                     `env={**os.environ, **emulators_env}` to a subprocess
    use_emulators    the same variables set in this process's environment for one test (for
                     aiobotocore clients created in-process without an endpoint_url)
    stream_name      a fresh, not yet created stream name per test; `table_name` likewise
    new_stream       factory: `new_stream(shards=2)` creates a fresh stream, waits until ACTIVE,
                     returns its name
    new_table        factory: `new_table(hash_key="leaseKey")` creates a fresh table (table_exists
                     waiter), returns its name

Streams and tables are never deleted: names are unique per test and the store is in memory.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from scripts.kinesis import Emulators, aws_env, fetch


def _fresh_name(request: pytest.FixtureRequest, prefix: str) -> str:
    test = re.sub(r"[^a-zA-Z0-9_.-]+", "-", request.node.name)[:60].strip("-")
    return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def emulators(tmp_path_factory) -> Iterator[Emulators]:
    fetch(quiet=True)  # idempotent: a few ms when tools/emulators/node_modules is up to date
    local = Emulators.isolated(log_path=tmp_path_factory.mktemp("emulators") / "emulators.log")
    local.start()
    yield local
    local.stop()


@pytest.fixture
def emulators_env(emulators: Emulators) -> dict[str, str]:
    return aws_env(emulators.kinesis_endpoint, emulators.dynamodb_endpoint)


@pytest.fixture
def use_emulators(emulators_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for name, value in emulators_env.items():
        monkeypatch.setenv(name, value)
    return emulators_env


@pytest.fixture
def stream_name(request: pytest.FixtureRequest) -> str:
    return _fresh_name(request, "stream")


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    return _fresh_name(request, "table")


@pytest.fixture
def new_stream(emulators: Emulators, request: pytest.FixtureRequest) -> Callable[..., str]:
    def create(shards: int = 1) -> str:
        name = _fresh_name(request, "stream")
        emulators.create_stream(name, shards)
        return name

    return create


@pytest.fixture
def new_table(emulators: Emulators, request: pytest.FixtureRequest) -> Callable[..., str]:
    def create(hash_key: str = "id", **options) -> str:
        name = _fresh_name(request, "table")
        emulators.create_table(name, hash_key=hash_key, **options)
        return name

    return create
