"""A dev OIDC issuer: discovery document, JWKS and a client-credentials token endpoint on 127.0.0.1.

The real authorizer runs unchanged against it: it finds the JWKS through
``<issuer>/.well-known/openid-configuration`` exactly as with a production issuer
(plain http is allowed only for loopback issuers, which is why this one binds to 127.0.0.1). The signing key is
generated once and kept under the state dir so tokens minted earlier stay valid
across restarts of the dev stack.

Besides the public documents it serves ``POST /token`` for the OAuth2 client credentials grant (RFC 6749
section 4.4), so a client library can be exercised the way it runs against a real issuer: fetch, cache,
refresh. The clients are dev-only (``LOCAL_OIDC_CLIENTS``, by default ``dev-client``/``dev-secret``); a
token's subject is the client id. Like every local listener it answers only this machine
(devstack/loopback.py), so a web page can reach neither the documents nor the token endpoint; a local
process could as well read the key file (``devstack.token``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.template import REPO_ROOT

# 3001 is the WebSocket API's (devstack/websocket.py).
DEFAULT_OIDC_PORT = 3002
ISSUER_DIR = "dev-issuer"
KEY_FILE = "key.pem"
ISSUER_FILE = "issuer.txt"
# The dev clients of the token endpoint: dev-only credentials, like the dev key, for this machine alone.
DEFAULT_CLIENTS_JSON = '{"dev-client": {"secret": "dev-secret", "scope": "state:read state:write"}}'
# The authorizer refuses tokens living longer than STATE_OIDC_MAX_LIFETIME_SECONDS (3600 by default).
DEFAULT_TOKEN_TTL = 3600


@dataclass(frozen=True)
class DevClient:
    """A client of the token endpoint: its secret, the scopes it may be granted, its roles."""

    secret: str
    scope: str
    roles: tuple[str, ...] | None = None


def parse_clients(text: str) -> dict[str, DevClient]:
    """``{"<client id>": {"secret": ..., "scope": "...", "roles": [...]}}`` (LOCAL_OIDC_CLIENTS)."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("LOCAL_OIDC_CLIENTS is a JSON object of client id -> {secret, scope, roles}")
    clients = {}
    for client_id, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("secret"), str) or not entry["secret"]:
            raise ValueError(f"LOCAL_OIDC_CLIENTS: client {client_id!r} needs a non-empty secret")
        roles = entry.get("roles")
        clients[str(client_id)] = DevClient(
            secret=entry["secret"],
            scope=str(entry.get("scope", "")),
            roles=tuple(str(r) for r in roles) if isinstance(roles, list) else None,
        )
    return clients


def clients_from_env() -> dict[str, DevClient]:
    return parse_clients(os.environ.get("LOCAL_OIDC_CLIENTS") or DEFAULT_CLIENTS_JSON)


def token_ttl_from_env() -> int:
    text = os.environ.get("LOCAL_OIDC_TOKEN_TTL_SECONDS")
    if not text:
        return DEFAULT_TOKEN_TTL
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 86_400:
        raise ValueError("LOCAL_OIDC_TOKEN_TTL_SECONDS is a whole number of seconds, 1 to 86400")
    return int(text)


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """client_secret_basic: both parts form-urlencoded, then base64 (RFC 6749 section 2.3.1)."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (unquote_plus(client_id), unquote_plus(secret)) if colon else None


# RFC 6749 section 5.1: token responses are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def default_state_dir() -> Path:
    return Path(os.environ.get("STATE_DIR") or REPO_ROOT / ".local")


def issuer_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def load_or_create_key(state_dir: Path | None = None) -> rsa.RSAPrivateKey:
    """The issuer's RSA-2048 key, created on first use under ``<state_dir>/dev-issuer``."""
    directory = (state_dir or default_state_dir()) / ISSUER_DIR
    path = directory / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA key")
        return key
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Write-then-rename with 0600: two processes racing on first use end with one key.
    tmp = directory / f".{KEY_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    if path.exists():
        tmp.unlink()
        return load_or_create_key(state_dir)
    tmp.replace(path)
    return key


def public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    # RFC 7638 thumbprint: SHA-256 over the required members, sorted, no whitespace.
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return {**members, "kid": kid, "use": "sig", "alg": "RS256"}


def discovery_document(issuer: str) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks.json",
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "token_endpoint": f"{issuer}/token",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }


def write_issuer_file(state_dir: Path, issuer: str) -> None:
    """Tell ``devstack.token`` which issuer the running stack's authorizer trusts."""
    directory = state_dir / ISSUER_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ISSUER_FILE).write_text(issuer + "\n", encoding="utf-8")


def read_issuer_file(state_dir: Path | None = None) -> str | None:
    path = (state_dir or default_state_dir()) / ISSUER_DIR / ISSUER_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


class DevIssuer:
    """Serves discovery, JWKS and the token endpoint with aiohttp on 127.0.0.1:<port> (0 = any free port)."""

    def __init__(
        self,
        state_dir: Path,
        port: int = DEFAULT_OIDC_PORT,
        host: str = "127.0.0.1",
        *,
        clients: dict[str, DevClient] | None = None,
        token_ttl: int = DEFAULT_TOKEN_TTL,
        audience: str = "state-service",
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.clients = parse_clients(DEFAULT_CLIENTS_JSON) if clients is None else clients
        self.token_ttl = token_ttl
        self.audience = audience
        self._runner: Any = None
        self.key = load_or_create_key(state_dir)

    def _client(self, header: str | None, form: dict[str, str]) -> tuple[str, DevClient] | None:
        """The client the request authenticates as (Basic, or client_id + client_secret in the form)."""
        basic = _basic_credentials(header)
        posted = (form.get("client_id"), form.get("client_secret"))
        if basic is not None and posted[1] is not None:
            return None  # RFC 6749 section 2.3: one method per request
        client_id, secret = basic if basic is not None else posted
        client = self.clients.get(client_id or "")
        if client is None or secret is None or not hmac.compare_digest(client.secret.encode(), secret.encode()):
            return None
        return str(client_id), client

    def grant(self, header: str | None, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The token endpoint's answer (status, body) to a client credentials request (RFC 6749 4.4, 5)."""
        authenticated = self._client(header, form)
        if authenticated is None:
            return 401, {"error": "invalid_client"}
        client_id, client = authenticated
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        allowed = client.scope.split()
        requested = form.get("scope", "").split() or allowed
        if not set(requested) <= set(allowed):
            return 400, {"error": "invalid_scope"}
        audience = form.get("audience") or self.audience
        if audience != self.audience:
            return 400, {"error": "invalid_target"}
        from devstack.token import mint

        scope = " ".join(requested)
        token = mint(
            client_id,
            scope,
            roles=list(client.roles) if client.roles is not None else None,
            ttl=self.token_ttl,
            audience=audience,
            issuer=self.issuer,
            state_dir=self.state_dir,
        )
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl, "scope": scope}

    @property
    def issuer(self) -> str:
        return issuer_url(self.port)

    async def start(self) -> None:
        from aiohttp import web

        async def discovery(_: web.Request) -> web.Response:
            return web.json_response(discovery_document(self.issuer))

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response({"keys": [public_jwk(self.key)]})

        async def token(request: web.Request) -> web.Response:
            if request.content_type != "application/x-www-form-urlencoded":
                return web.json_response({"error": "invalid_request"}, status=400, headers=NO_STORE)
            form = {name: str(value) for name, value in (await request.post()).items()}
            status, body = self.grant(request.headers.get("Authorization"), form)
            headers = dict(NO_STORE)
            if status == 401:
                headers["WWW-Authenticate"] = 'Basic realm="dev-issuer"'
            return web.json_response(body, status=status, headers=headers)

        from devstack.loopback import aiohttp_middleware

        def forbidden() -> web.Response:
            return web.json_response({"error": "forbidden"}, status=403)

        app = web.Application(middlewares=[aiohttp_middleware(lambda: self.port, forbidden)])
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", jwks)
        app.router.add_post("/token", token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        write_issuer_file(self.state_dir, self.issuer)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
