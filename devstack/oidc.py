"""A dev OIDC issuer: discovery document and JWKS on 127.0.0.1.

The real authorizer runs unchanged against it: it finds the JWKS through
``<issuer>/.well-known/openid-configuration`` exactly as with a production issuer
(plain http is allowed only for loopback issuers, which is why this one binds to 127.0.0.1). The signing key is
generated once and kept under the state dir so tokens minted earlier stay valid
across restarts of the dev stack.

It serves only public documents and mints nothing (tokens come from ``devstack.token``, which reads the
key file), yet like every local listener it answers only this machine (devstack/loopback.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.template import REPO_ROOT

# 3001 is the WebSocket API's (devstack/websocket.py).
DEFAULT_OIDC_PORT = 3002
ISSUER_DIR = "dev-issuer"
KEY_FILE = "key.pem"
ISSUER_FILE = "issuer.txt"


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
    """Serves discovery and JWKS with aiohttp on 127.0.0.1:<port> (0 = any free port)."""

    def __init__(self, state_dir: Path, port: int = DEFAULT_OIDC_PORT, host: str = "127.0.0.1") -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self._runner: Any = None
        self.key = load_or_create_key(state_dir)

    @property
    def issuer(self) -> str:
        return issuer_url(self.port)

    async def start(self) -> None:
        from aiohttp import web

        async def discovery(_: web.Request) -> web.Response:
            return web.json_response(discovery_document(self.issuer))

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response({"keys": [public_jwk(self.key)]})

        from devstack.loopback import aiohttp_middleware

        def forbidden() -> web.Response:
            return web.json_response({"error": "forbidden"}, status=403)

        app = web.Application(middlewares=[aiohttp_middleware(lambda: self.port, forbidden)])
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", jwks)
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
