"""Fixtures for a real Apache Kafka broker (KRaft, single node); see scripts/kafka.py.

    kafka_broker      one broker on free 127.0.0.1 ports for the whole run, started the first time a test
                      asks for it (jars fetched with Maven first if the cache lacks them), data in a tmp dir,
                      stopped at the end. `kafka_broker.bootstrap` is "127.0.0.1:<port>"; fault tests may
                      `stop()`/`start()`/`restart(down_s=30)`/`kill()`/`pause()` it (same port, same data)
    kafka_topic       a fresh topic per test, created with 1 partition (every partition led when it returns)
    kafka_topic_name  a fresh, not yet created topic name per test (auto-creation is on)
    new_kafka_topic   factory: `new_kafka_topic(partitions=3)` creates a fresh topic, returns its name

Topics are never deleted: names are unique per test. Each fixture that hands out a topic first brings the
broker back up if an earlier test left it stopped or paused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from scripts.kafka import KafkaBroker


def _fresh_name(request: pytest.FixtureRequest, prefix: str) -> str:
    test = re.sub(r"[^a-zA-Z0-9_.-]+", "-", request.node.name)[:60].strip("-")
    return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"


def _alive(broker: KafkaBroker) -> KafkaBroker:
    broker.resume()
    return broker.start()  # no-op when running


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker.isolated(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_topic_name(request: pytest.FixtureRequest) -> str:
    return _fresh_name(request, "topic")


@pytest.fixture
def new_kafka_topic(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    def create(partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = _fresh_name(request, "topic")
        return _alive(kafka_broker).create_topic(name, partitions, config)

    return create


@pytest.fixture
def kafka_topic(new_kafka_topic: Callable[..., str]) -> str:
    return new_kafka_topic()
