"""Test support for the security tests: a loopback OIDC issuer whose JWKS can misbehave on demand, an
attacker host that counts what reaches it, signing keys, and a token builder that can produce any bytes
(duplicate members, non-canonical base64url, foreign algorithms) with a valid signature."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.doubles import LambdaContext

REPO_ROOT = Path(__file__).resolve().parent.parent
AUDIENCE = "state-service"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.get_algorithm_by_name(self.alg).to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}


def rsa_key(kid: str | None = None) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid or uuid.uuid4().hex, private, "RS256")


def ec_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or uuid.uuid4().hex, ec.generate_private_key(ec.SECP256R1()), "ES256")


def raw_token(header: bytes | str, payload: bytes | str, key: Any, alg: str = "RS256") -> str:
    """A compact JWS over exactly these header and payload bytes (or already-encoded segments, given as
    str), signed with `key` by `alg`."""
    h = header if isinstance(header, str) else b64url(header)
    p = payload if isinstance(payload, str) else b64url(payload)
    signature = jwt.get_algorithm_by_name(alg).sign(f"{h}.{p}".encode(), key)
    return f"{h}.{p}.{b64url(signature)}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        host = self.server.host
        with host.lock:
            host.requests.append(self.path)
        if self.path.endswith(DISCOVERY_PATH):
            if host.discovery_down:
                self._send(503, b"unavailable", "text/plain")
                return
            self._send(200, json.dumps({"issuer": host.issuer, "jwks_uri": host.base_url + "/jwks.json"}).encode())
            return
        if self.path != "/jwks.json":
            self._send(404, b"{}")
            return
        mode = host.mode
        if mode == "down":
            self._send(503, b"unavailable", "text/plain")
        elif mode == "slow":
            time.sleep(4)
            self._send(200, json.dumps(host.jwks()).encode())
        elif mode == "html":
            self._send(200, b"<html><body>Sign in</body></html>", "text/html")
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", host.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "huge":
            # A well-formed JWKS of about 1 MB: refused by size, not by shape.
            padded = {**host.jwks(), "padding": "x" * 1_000_000}
            self._send(200, json.dumps(padded).encode())
        else:
            self._send(200, json.dumps(host.jwks()).encode())

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (by design, for the slow and huge modes)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    host: KeyHost


@dataclass
class KeyHost:
    """An HTTP server on 127.0.0.1: an OIDC issuer (discovery + JWKS) or, unused, an attacker's host."""

    keys: list[SigningKey] = field(default_factory=list)
    mode: str = "ok"  # how the JWKS endpoint answers
    discovery_down: bool = False
    redirect_to: str = ""
    issuer: str = ""
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> KeyHost:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.host = self
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.issuer = self.base_url
        threading.Thread(target=self._server.serve_forever, name="key-host", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self, keys: list[SigningKey]) -> None:
        self.keys, self.mode, self.redirect_to, self.issuer = list(keys), "ok", "", self.base_url
        self.discovery_down = False
        with self.lock:
            self.requests.clear()

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.keys]}

    @property
    def jwks_requests(self) -> int:
        with self.lock:
            return sum(1 for path in self.requests if path == "/jwks.json")

    @property
    def discovery_requests(self) -> int:
        with self.lock:
            return sum(1 for path in self.requests if path.endswith(DISCOVERY_PATH))


@contextmanager
def key_host(keys: list[SigningKey] | None = None) -> Iterator[KeyHost]:
    host = KeyHost(keys=list(keys or [])).start()
    try:
        yield host
    finally:
        host.stop()


AUTHORIZER_CONTEXT = LambdaContext(
    "authorizer", remaining_ms=5_000, memory_limit_in_mb=256, aws_request_id="security-test"
)


class Authorizer:
    """The real authorizer handler (functions/authorizer/app.py), loaded fresh for one configuration."""

    def __init__(self) -> None:
        spec = importlib.util.spec_from_file_location(
            f"authorizer_app_{uuid.uuid4().hex}", REPO_ROOT / "functions" / "authorizer" / "app.py"
        )
        assert spec is not None
        assert spec.loader is not None
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        template = REPO_ROOT / "events" / "authorizer.json"
        self._event = json.loads(template.read_text())

    def __call__(self, headers: dict[str, str]) -> dict[str, Any]:
        event = copy.deepcopy(self._event)
        event["headers"] = headers
        event["identitySource"] = [headers.get("authorization", "")]
        answer: dict[str, Any] = self.module.lambda_handler(event, AUTHORIZER_CONTEXT)
        return answer

    def token(self, token: str) -> dict[str, Any]:
        return self({"authorization": f"Bearer {token}"})

    def allows(self, token: str) -> bool:
        return self.token(token)["isAuthorized"] is True

    @property
    def keys(self) -> Any:
        """The verifier's JWKS cache (built on first use)."""
        return self.module.issuer().verifier().keys


def claims_for(issuer: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scope": "state:read state:write",
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not _ABSENT}


_ABSENT = object()
ABSENT: Any = _ABSENT


def sign(key: SigningKey, claims: dict[str, Any], **headers: Any) -> str:
    """A JWT over `claims` signed by `key` (its kid in the header unless given); `alg` picks another
    algorithm for the same key."""
    algorithm = headers.pop("alg", key.alg)
    header = {"alg": algorithm, "typ": "JWT", "kid": key.kid, **headers}
    header = {name: value for name, value in header.items() if value is not _ABSENT}
    return raw_token(json.dumps(header).encode(), json.dumps(claims).encode(), key.private, algorithm)
