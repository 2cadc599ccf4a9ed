"""Bearer JWT validation for the Lambda authorizer (DESIGN §4).

Keys come from the issuer's JWKS, found through `<issuer>/.well-known/openid-configuration` and cached by
PyJWT's JWKS client. Only asymmetric algorithms on the allow-list are accepted, so neither `none` nor HMAC
signed with a public key can pass. The authorizer's answer may be cached by API Gateway per token, so it
depends on the token alone, never on the route or key.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from state_core.config import AuthorizerSettings

ALLOWED_ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
FETCH_TIMEOUT_SECONDS = 1.5
JWKS_CACHE_SECONDS = 300
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class TokenRejected(Exception):
    """The token is not acceptable. The message names the reason and never contains the token."""


def _check_fetchable(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        return
    raise ValueError(f"OIDC URLs must be https (plain http only on loopback): {url}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def discover_jwks_uri(issuer: str) -> str:
    """The issuer's `jwks_uri` from its discovery document, which must name the same issuer."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    _check_fetchable(url)
    with _OPENER.open(url, timeout=FETCH_TIMEOUT_SECONDS) as response:
        document = json.loads(response.read(150_000))
    if document.get("issuer") != issuer:
        raise ValueError("the discovery document names another issuer")
    jwks_uri = document["jwks_uri"]
    _check_fetchable(jwks_uri)
    return str(jwks_uri)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    scopes: tuple[str, ...]
    roles: tuple[str, ...]

    def authorizer_context(self) -> dict[str, str]:
        """Simple-response context values must be strings: scopes space-separated, roles a JSON array."""
        return {"sub": self.subject, "scopes": " ".join(self.scopes), "roles": json.dumps(list(self.roles))}


class TokenVerifier:
    """Validates bearer JWTs for one issuer and audience."""

    def __init__(self, settings: AuthorizerSettings, jwks_client: jwt.PyJWKClient) -> None:
        self._settings = settings
        self._jwks = jwks_client

    @classmethod
    def for_issuer(cls, settings: AuthorizerSettings) -> TokenVerifier:
        client = jwt.PyJWKClient(
            discover_jwks_uri(settings.issuer),
            cache_keys=True,
            lifespan=JWKS_CACHE_SECONDS,
            timeout=int(FETCH_TIMEOUT_SECONDS + 0.5),
        )
        return cls(settings, client)

    def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in ALLOWED_ALGORITHMS:
                raise TokenRejected("algorithm not allowed")
            signing_key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key=signing_key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise TokenRejected("the issuer's keys could not be fetched") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected(type(exc).__name__) from exc
        return _verified(claims)


def _verified(claims: Mapping[str, Any]) -> VerifiedToken:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenRejected("sub must be a non-empty string")
    raw_scopes = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw_scopes, str):
        scopes = tuple(raw_scopes.split())
    elif isinstance(raw_scopes, list) and all(isinstance(scope, str) for scope in raw_scopes):
        scopes = tuple(raw_scopes)
    else:
        raise TokenRejected("scope must be a string or an array of strings")
    raw_roles = claims.get("roles", [])
    if not isinstance(raw_roles, list) or not all(isinstance(role, str) for role in raw_roles):
        raise TokenRejected("roles must be an array of strings")
    return VerifiedToken(subject=subject, scopes=scopes, roles=tuple(raw_roles))


def bearer_token(headers: Mapping[str, str] | None) -> str | None:
    """The token from `Authorization: Bearer <token>` (scheme case-insensitive), or None."""
    value = (headers or {}).get("authorization", "")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token
