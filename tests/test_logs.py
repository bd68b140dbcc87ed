"""JSON log lines, and the rate limit that keeps a retry loop from flooding them."""

from __future__ import annotations

import io
import logging

import orjson
from clickstream_core.logs import JsonFormatter, RateLimit


def test_repeated_messages_are_limited_per_second_and_the_drops_reported():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    handler.addFilter(RateLimit(per_second=3))
    logger = logging.getLogger("test.ratelimit")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    for second in (1000.0, 1000.5):
        for _ in range(50):
            record = logger.makeRecord(
                logger.name, logging.WARNING, __file__, 1, "Unable connect to node %s", (1,), None
            )
            record.created = second
            logger.handle(record)
    other = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "another message", (), None)
    other.created = 1000.9
    logger.handle(other)
    later = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "Unable connect to node %s", (1,), None)
    later.created = 1001.0
    logger.handle(later)
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["msg"] for line in lines] == ["Unable connect to node 1"] * 3 + ["another message"] + [
        "Unable connect to node 1"
    ]
    assert lines[-1]["suppressed_repeats"] == 97
