"""Optional source authentication: `Authorization: Bearer <JWT>` checked against an OIDC issuer.

Keys come from the issuer's JWKS (discovered through /.well-known/openid-configuration unless a
JWKS URL is given) and are cached by key id; a token is valid when its signature, issuer,
audience and expiry check out.
"""

from __future__ import annotations

import asyncio
import logging
import time

import jwt
import orjson

log = logging.getLogger("ingest_proxy.auth")

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256"]
KEY_REFRESH_MIN_INTERVAL_S = 30.0


class AuthError(Exception):
    pass


class JwtVerifier:
    def __init__(self, issuer: str, audience: str, jwks_url: str = "", leeway_s: float = 30.0):
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.leeway = leeway_s
        self._keys: dict[str, object] = {}
        self._last_fetch = 0.0
        self._fetch_lock = asyncio.Lock()

    def _fetch_keys_sync(self) -> dict[str, object]:
        import urllib.request

        url = self.jwks_url
        if not url:
            discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            with urllib.request.urlopen(discovery, timeout=5) as answer:  # noqa: S310 (configured https URL)
                url = orjson.loads(answer.read(1 << 20))["jwks_uri"]
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310
            document = orjson.loads(answer.read(1 << 20))
        keys = {}
        for jwk in document.get("keys", []):
            try:
                keys[jwk.get("kid", "")] = jwt.PyJWK(jwk).key
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue
        return keys

    async def _key_for(self, kid: str):
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._fetch_lock:
            if kid not in self._keys and time.monotonic() - self._last_fetch >= KEY_REFRESH_MIN_INTERVAL_S:
                self._last_fetch = time.monotonic()
                try:
                    self._keys = await asyncio.to_thread(self._fetch_keys_sync)
                except Exception as exc:  # issuer unreachable: tokens with known keys still pass
                    log.warning("cannot fetch JWKS", extra={"error": str(exc)})
        key = self._keys.get(kid)
        if key is None:
            raise AuthError("token signed by an unknown key")
        return key

    async def verify(self, authorization: str | None) -> dict:
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("missing bearer token")
        token = authorization[7:].strip()
        if len(token) > 8192:
            raise AuthError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise AuthError("token algorithm not allowed")
        key = await self._key_for(header.get("kid", ""))
        try:
            return jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from None
