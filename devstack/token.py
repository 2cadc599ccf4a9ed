"""Mint RS256 tokens from the dev issuer.

``python -m devstack.token --sub alice --scope "state:read state:write"`` prints a
token the running dev stack's authorizer accepts: the issuer URL is read from the
state dir (written by the running stack), so a stack on a non-default port works.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

import jwt

from devstack.oidc import (
    DEFAULT_OIDC_PORT,
    default_state_dir,
    issuer_url,
    load_or_create_key,
    public_jwk,
    read_issuer_file,
)

DEFAULT_AUDIENCE = "state-service"


def current_issuer(state_dir: Path | None = None) -> str:
    """The issuer of the running dev stack, else the default dev issuer URL."""
    return read_issuer_file(state_dir) or issuer_url(DEFAULT_OIDC_PORT)


def mint(  # noqa: PLR0913  one keyword per claim a test or developer may set
    sub: str,
    scope: str,
    *,
    roles: list[str] | None = None,
    ttl: int = 3600,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str | None = None,
    state_dir: Path | None = None,
    extra_claims: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """A signed RS256 JWT (``kid`` = the dev key's RFC 7638 thumbprint)."""
    directory = state_dir or default_state_dir()
    key = load_or_create_key(directory)
    now = int(time.time())
    # An already expired token (ttl <= 0, for tests) was issued a while before it expired, as a real one.
    issued = now if ttl > 0 else now + ttl - 300
    claims: dict[str, Any] = {
        "iss": issuer or current_issuer(directory),
        "aud": audience,
        "sub": sub,
        "iat": issued,
        "nbf": issued,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "scope": scope,
    }
    if roles is not None:
        claims["roles"] = list(roles)
    claims.update(extra_claims or {})
    jose_headers = {"kid": public_jwk(key)["kid"], "typ": "JWT", **(headers or {})}
    return jwt.encode(claims, key, algorithm="RS256", headers=jose_headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mint a token from the local dev OIDC issuer")
    parser.add_argument("--sub", required=True)
    parser.add_argument("--scope", default="state:read state:write")
    parser.add_argument("--roles", default=None, help="comma-separated roles")
    parser.add_argument("--ttl", type=int, default=3600)
    parser.add_argument("--aud", default=DEFAULT_AUDIENCE)
    parser.add_argument("--issuer", default=None, help="default: the running dev stack's issuer")
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    roles = [r for r in args.roles.split(",") if r] if args.roles is not None else None
    print(
        mint(
            args.sub,
            args.scope,
            roles=roles,
            ttl=args.ttl,
            audience=args.aud,
            issuer=args.issuer,
            state_dir=args.state_dir,
        )
    )


if __name__ == "__main__":
    main()
