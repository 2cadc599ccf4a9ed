"""The issuer's signing keys: fetched from its JWKS with hard limits and cached.

PyJWT's own PyJWKClient refetches on every unknown `kid` (a flood of made-up kids becomes a flood of
requests to the issuer), drops its keys when a refetch fails and follows redirects, so the cache is ours:

- keys live `ttl` seconds (≤ 300), so a key the issuer removed is refused at most that long afterwards;
- at most one fetch runs at a time, and fetches of any kind are at least `cooldown` seconds (≈ 30) apart:
  an unknown-kid flood costs the issuer at most 2 requests a minute;
- a failed fetch (down, slow, HTML, redirect, oversized) keeps the last good key set;
- each fetch is https (plain http only on loopback), follows no redirect, and is cut at 1.5 s and
  150,000 bytes: the limits API Gateway's own JWT authorizer uses.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import jwt

FETCH_TIMEOUT_SECONDS = 1.5
MAX_DOCUMENT_BYTES = 150_000
DEFAULT_TTL_SECONDS = 300.0
DEFAULT_COOLDOWN_SECONDS = 30.0
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class JwksUnavailable(OSError):
    """A discovery or JWKS document could not be fetched within the limits. Names no token."""


def check_fetchable(url: str) -> None:
    """Raise ValueError unless `url` is https, or plain http to a loopback host (local runs)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return
    raise ValueError(f"OIDC URLs must be https (plain http only on loopback): {url}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect is an answer we do not accept (it could point anywhere): urllib then raises HTTPError.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _read_limited(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (checked)
    with _OPENER.open(request, timeout=timeout) as response:
        if response.status != 200:
            raise JwksUnavailable(f"HTTP {response.status} from {url}")
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise JwksUnavailable(f"{url} is over {max_bytes} bytes")
        body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise JwksUnavailable(f"{url} is over {max_bytes} bytes")
    return bytes(body)


def fetch_json(url: str, *, timeout: float = FETCH_TIMEOUT_SECONDS, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """GET `url` as JSON within `timeout` seconds in total and `max_bytes` bytes, no redirects.

    Socket timeouts bound each read, not the whole exchange (a server can trickle bytes), so the fetch
    runs in a daemon thread and the caller waits at most `timeout`; an abandoned fetch dies on its own
    socket timeout.
    """
    check_fetchable(url)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["body"] = _read_limited(url, timeout, max_bytes)
        except Exception as exc:  # any failure is reported to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="jwks-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise JwksUnavailable(f"{url} did not answer within {timeout} s")
    if "error" in outcome:
        raise JwksUnavailable(f"{url}: {type(outcome['error']).__name__}") from outcome["error"]
    try:
        return json.loads(outcome["body"])
    except (UnicodeDecodeError, ValueError) as exc:
        raise JwksUnavailable(f"{url} did not answer JSON") from exc


def discover_jwks_uri(issuer: str, fetch: Callable[[str], Any] = fetch_json) -> str:
    """The issuer's `jwks_uri` from its discovery document, which must name the same issuer."""
    check_fetchable(issuer)
    document = fetch(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if not isinstance(document, dict) or document.get("issuer") != issuer:
        raise ValueError("the discovery document names another issuer")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise ValueError("the discovery document has no jwks_uri")
    check_fetchable(jwks_uri)
    return jwks_uri


def parse_key_set(document: Any, algorithms: Iterable[str]) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document by kid. Symmetric keys, encryption keys, keys without
    a kid, keys for algorithms off the allow-list and keys PyJWT cannot load are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnavailable("the JWKS document has no keys array")
    allowed = frozenset(algorithms)
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or jwk["kid"] in keys:
            continue
        if jwk.get("kty") not in ("RSA", "EC", "OKP") or jwk.get("use", "sig") != "sig":
            continue
        if "alg" in jwk and jwk["alg"] not in allowed:
            continue
        try:
            keys[jwk["kid"]] = jwt.PyJWK(jwk)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
    return keys


class JwksCache:
    """The issuer's signing keys by kid, refreshed within the limits above."""

    def __init__(
        self,
        jwks_uri: str,
        *,
        algorithms: Iterable[str],
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        cooldown_seconds: float = DEFAULT_COOLDOWN_SECONDS,
        fetch: Callable[[str], Any] = fetch_json,
        clock: Callable[[], float] = time.monotonic,
        on_fetch_error: Callable[[str], None] | None = None,
    ) -> None:
        check_fetchable(jwks_uri)
        self.jwks_uri = jwks_uri
        self.clock = clock
        self._algorithms = tuple(algorithms)
        self._ttl = ttl_seconds
        self._cooldown = cooldown_seconds
        self._fetch = fetch
        self._on_fetch_error = on_fetch_error
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._lock = threading.Lock()
        self.fetch_count = 0

    def signing_key(self, kid: str) -> jwt.PyJWK | None:
        """The key for `kid`, or None. May fetch: when the set is older than the TTL, or for an unknown
        kid (a key the issuer just published), but never within the cooldown of the previous fetch."""
        now = self.clock()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl:
            self._refresh()
        key = self._keys.get(kid)
        if key is None:
            self._refresh()
            key = self._keys.get(kid)
        return key

    def _due(self) -> bool:
        return self._attempted_at is None or self.clock() - self._attempted_at >= self._cooldown

    def _refresh(self) -> None:
        if not self._due():
            return
        # One fetch at a time: whoever waited on the lock finds the fetch done and not due again.
        with self._lock:
            if not self._due():
                return
            self._attempted_at = self.clock()
            self.fetch_count += 1
            try:
                keys = parse_key_set(self._fetch(self.jwks_uri), self._algorithms)
            except (JwksUnavailable, ValueError) as exc:
                # Keep the last good set: an unreachable issuer must not lock every caller out.
                if self._on_fetch_error is not None:
                    self._on_fetch_error(str(exc))
                return
            self._keys = keys
            self._fetched_at = self.clock()
