"""CORS for the credentialed SDK requests: echo an allowed Origin, never answer `*`.

The web SDK sends `credentials: 'include'`, so browsers refuse `Access-Control-Allow-Origin: *`:
an allowed Origin is echoed with `Access-Control-Allow-Credentials: true`. In the allow-list, `*`
means "echo any Origin" (dev mode) and `*.example.com` matches any subdomain on any scheme.
"""

from __future__ import annotations

from functools import lru_cache

from clickstream_core.appconfig import AppConfig

PREFLIGHT_METHODS = "POST, OPTIONS"


def _matches(origin: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    origin = origin.lower()
    pattern = pattern.lower().rstrip("/")
    if pattern.startswith("*."):
        _, sep, host = origin.partition("://")
        if not sep:
            return False
        host = host.split(":", 1)[0]
        suffix = pattern[1:]  # ".example.com"
        return host.endswith(suffix) and len(host) > len(suffix)
    return origin == pattern


class CorsPolicy:
    def __init__(self, origins: list[str], app_config: AppConfig, max_age_s: int):
        self.global_origins = tuple(origins)
        self.per_app = {app.app_id: app.allowed_origins for app in app_config.apps.values()}
        self.max_age = str(max_age_s)
        self._allowed = lru_cache(maxsize=4096)(self._compute)

    def _compute(self, origin: str, app_id: str) -> bool:
        patterns = self.global_origins + self.per_app.get(app_id, ())
        return any(_matches(origin, pattern) for pattern in patterns)

    def allowed(self, origin: str | None, app_id: str | None) -> bool:
        if not origin or len(origin) > 512:
            return False
        return self._allowed(origin, app_id or "")

    def headers(self, origin: str) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    def preflight_headers(self, origin: str, request_headers: str | None) -> dict[str, str]:
        headers = self.headers(origin)
        headers["Access-Control-Allow-Methods"] = PREFLIGHT_METHODS
        headers["Access-Control-Max-Age"] = self.max_age
        if request_headers:
            headers["Access-Control-Allow-Headers"] = request_headers[:1024]
        return headers
