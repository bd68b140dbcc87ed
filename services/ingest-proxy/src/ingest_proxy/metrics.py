"""The proxy's Prometheus metrics (multiprocess mode: /metrics sums every proxy process).

In multiprocess mode every metric update is a locked write to a memory-mapped file (about 1 us);
at tens of thousands of requests per second that is a measurable share of the request path. So the
request path counts into a plain-Python `Tally`, which is flushed into the real metrics every
`FLUSH_INTERVAL_S` and before each /metrics answer.
"""

from __future__ import annotations

import bisect
from collections import Counter as _Counts

from prometheus_client import Counter, Histogram

FLUSH_INTERVAL_S = 0.1

REQUESTS = Counter("proxy_requests", "Requests answered, by path kind and status", ["path", "status"])
REQUEST_BYTES = Counter("proxy_request_bytes", "Body bytes received on the collect path")
ACCEPTED_RECORDS = Counter("proxy_accepted_records", "Requests acknowledged with 200 (one raw record each)")
REJECTIONS = Counter("proxy_rejections", "Collect requests not accepted, by reason", ["reason"])
LATENCY = Histogram(
    "proxy_collect_seconds",
    "Time from request start to answer on the collect path",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 3, 10),
)


class MalformedHttpFilter:
    """aiohttp logs every unparsable request at error level with a traceback; garbage traffic
    would flood the logs. Count those as rejections instead and keep real errors."""

    def filter(self, record) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            REJECTIONS.labels("malformed_http").inc()
            return False
        return True


class Tally:
    def __init__(self) -> None:
        self.requests: _Counts = _Counts()  # (path kind, status) -> count
        self.rejections: _Counts = _Counts()
        self.request_bytes = 0
        self.accepted = 0
        self._bounds = list(LATENCY._upper_bounds)
        self._latency = [0] * len(self._bounds)
        self._latency_sum = 0.0

    def observe_latency(self, seconds: float) -> None:
        # Same bucket choice as Histogram.observe: the first bound >= the value.
        self._latency[bisect.bisect_left(self._bounds, seconds)] += 1
        self._latency_sum += seconds

    def flush(self) -> None:
        requests, self.requests = self.requests, _Counts()
        for (path, status), count in requests.items():
            REQUESTS.labels(path, str(status)).inc(count)
        rejections, self.rejections = self.rejections, _Counts()
        for reason, count in rejections.items():
            REJECTIONS.labels(reason).inc(count)
        if self.request_bytes:
            REQUEST_BYTES.inc(self.request_bytes)
            self.request_bytes = 0
        if self.accepted:
            ACCEPTED_RECORDS.inc(self.accepted)
            self.accepted = 0
        if self._latency_sum or any(self._latency):
            for index, count in enumerate(self._latency):
                if count:
                    LATENCY._buckets[index].inc(count)
                    self._latency[index] = 0
            LATENCY._sum.inc(self._latency_sum)
            self._latency_sum = 0.0
