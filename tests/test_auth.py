"""Optional source authentication: Bearer JWTs from an OIDC issuer (AUTH_OIDC_ISSUER/AUDIENCE).

A tiny issuer in a thread serves the discovery document and the JWKS; the proxy discovers the
keys itself. Auth is off by default (every other test posts without a token).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from scripts import sdkgen
from scripts.stack import LocalStack, free_port
from tests.support import metric_value, wait_for, wait_for_rids

AUDIENCE = "clickstream"
KID = "test-key-1"
BODY = sdkgen.body_text(sdkgen.sample_batch(2, seed=5))
TARGET = sdkgen.collect_target("shop", BODY, 1)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer:
    """Serves /.well-known/openid-configuration and /jwks.json on 127.0.0.1."""

    def __init__(self, key: rsa.RSAPrivateKey):
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
        documents = {
            "/.well-known/openid-configuration": {"issuer": self.url, "jwks_uri": self.url + "/jwks.json"},
            "/jwks.json": {"keys": [jwk]},
        }
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                document = documents.get(self.path)
                body = json.dumps(document).encode() if document else b"not found"
                self.send_response(200 if document else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def issuer():
    served = Issuer(new_key())
    yield served
    served.close()


@pytest.fixture(scope="module")
def auth_stack(issuer, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("auth-stack")
    stack = LocalStack.isolated(
        data_dir,
        proxy_env={"AUTH_OIDC_ISSUER": issuer.url, "AUTH_OIDC_AUDIENCE": AUDIENCE},
    )
    stack.start()
    yield stack
    stack.stop(timeout_s=15)


def claims(issuer: Issuer, **changes) -> dict:
    now = int(time.time())
    values = {"iss": issuer.url, "aud": AUDIENCE, "sub": "web-sdk", "iat": now, "exp": now + 300}
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def token(issuer: Issuer, key=None, kid: str | None = KID, algorithm: str = "RS256", **changes) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(issuer, **changes), key or issuer.key, algorithm=algorithm, headers=headers)


def post(stack: LocalStack, authorization: str | None) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        headers = {"Content-Type": "text/plain"}
        if authorization is not None:
            headers["Authorization"] = authorization
        connection.request("POST", TARGET, body=BODY.encode(), headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Request-ID", "")
    finally:
        connection.close()


def test_valid_token_is_accepted_and_lands(auth_stack, issuer):
    rids = set()
    for _ in range(6):  # fresh connections: both proxy processes fetch the keys and accept
        status, rid = post(auth_stack, "Bearer " + token(issuer))
        assert status == 200
        rids.add(rid)
    assert "/.well-known/openid-configuration" in issuer.hits and "/jwks.json" in issuer.hits
    wait_for_rids(auth_stack.lake, rids, timeout_s=10)


def bad_authorizations(issuer: Issuer) -> dict[str, str | None]:
    other_key = new_key()
    hour_ago = int(time.time()) - 3600
    unsigned = jwt.encode(claims(issuer), None, algorithm="none", headers={"kid": KID})
    return {
        "no header": None,
        "not bearer": "Basic dXNlcjpwYXNz",
        "empty bearer": "Bearer ",
        "garbage": "Bearer not.a.jwt",
        "random text": "Bearer " + uuid.uuid4().hex,
        "expired": "Bearer " + token(issuer, iat=hour_ago - 60, exp=hour_ago),
        "no exp": "Bearer " + token(issuer, exp=None),
        "wrong audience": "Bearer " + token(issuer, aud="someone-else"),
        "no audience": "Bearer " + token(issuer, aud=None),
        "wrong issuer": "Bearer " + token(issuer, iss="http://127.0.0.1:1/evil"),
        "other key, same kid": "Bearer " + token(issuer, key=other_key),
        "other key, unknown kid": "Bearer " + token(issuer, key=other_key, kid="unknown-kid"),
        "no kid": "Bearer " + token(issuer, kid=None),
        "alg none": "Bearer " + unsigned,
        "alg none, no signature": "Bearer " + unsigned.rsplit(".", 1)[0] + ".",
        "HS256 with the public key as secret": "Bearer " + _hs256_with_public_key(issuer),
        "tampered payload": "Bearer " + _tampered(issuer),
    }


def _hs256_with_public_key(issuer: Issuer) -> str:
    """The classic algorithm-confusion attack: an HMAC keyed with the issuer's public key."""
    import base64
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
        + "."
        + b64(json.dumps(claims(issuer)).encode())
    )
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def _tampered(issuer: Issuer) -> str:
    import base64

    header, _payload, signature = token(issuer).split(".")
    forged = base64.urlsafe_b64encode(json.dumps(claims(issuer, sub="admin")).encode()).rstrip(b"=")
    return f"{header}.{forged.decode()}.{signature}"


def test_every_bad_token_gets_401(auth_stack, issuer):
    # A valid request first, so the keys are known and an unknown kid cannot hide behind a fetch.
    assert post(auth_stack, "Bearer " + token(issuer))[0] == 200
    cases = bad_authorizations(issuer)
    answers = {name: post(auth_stack, authorization)[0] for name, authorization in cases.items()}
    assert answers == dict.fromkeys(cases, 401)

    def unauthenticated() -> float:
        connection = http.client.HTTPConnection("127.0.0.1", auth_stack.port, timeout=10)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        return metric_value(text, "proxy_rejections_total", {"reason": "unauthenticated"})

    # Processes publish their counts every 100 ms (metrics.FLUSH_INTERVAL_S).
    wait_for(lambda: unauthenticated() >= len(cases), 2, 0.05, "the rejections in /metrics")
    assert unauthenticated() == len(cases)
    # A token still valid after all of that: the rejections left the verifier in a good state.
    assert post(auth_stack, "Bearer " + token(issuer))[0] == 200
