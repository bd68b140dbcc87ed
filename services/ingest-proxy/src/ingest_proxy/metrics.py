"""The proxy's Prometheus metrics (multiprocess mode: /metrics sums every proxy process)."""

from prometheus_client import Counter, Histogram

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
