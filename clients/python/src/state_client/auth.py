"""Where the bearer token comes from: a static string, a callable (sync or async), or OAuth2 client
credentials (RFC 6749 section 4.4) against the issuer's token endpoint, cached and refreshed before expiry."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx

from state_client.errors import StateError

type TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]] | ClientCredentials


class AuthError(StateError):
    """The token endpoint refused the client's credentials or answered something unreadable."""


@dataclass(frozen=True)
class _Cached:
    token: str
    refresh_at: float  # time.monotonic() after which a fresh token is fetched


class ClientCredentials:
    """OAuth2 client credentials: a token from `token_url` (or the issuer's discovery document), kept until
    shortly before it expires (in the last fifth of its lifetime, at most a minute before), so a request never
    goes out with a token about to expire in flight. A request answered as if its token were rejected is sent
    once more with a fresh one.

    One instance serves one client (sync or async); the lock makes concurrent requests share one fetch."""

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        token_url: str | None = None,
        issuer: str | None = None,
        scope: str | None = None,
        audience: str | None = None,
    ) -> None:
        if (token_url is None) == (issuer is None):
            raise ValueError("give token_url or issuer (its discovery document names the token endpoint)")
        self.client_id = client_id
        self._secret = client_secret
        self.token_url = token_url
        self.issuer = issuer.rstrip("/") if issuer else None
        self.scope = scope
        self.audience = audience
        self._cached: _Cached | None = None
        self._thread_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:  # never the secret
        return f"ClientCredentials(client_id={self.client_id!r}, token_url={self.token_url or self.issuer!r})"

    def invalidate(self) -> None:
        """Forget the cached token (the API refused it): the next request fetches another."""
        self._cached = None

    def _fresh(self) -> str | None:
        cached = self._cached
        if cached is not None and time.monotonic() < cached.refresh_at:
            return cached.token
        return None

    def _form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        return form

    def _auth(self) -> httpx.BasicAuth:
        # client_secret_basic, the method RFC 6749 requires servers to support; both parts form-urlencoded
        # first (section 2.3.1), which changes nothing for the usual ids and secrets of letters and digits.
        return httpx.BasicAuth(quote_plus(self.client_id), quote_plus(self._secret))

    def _store(self, response: httpx.Response, started: float) -> str:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            error = body.get("error") if isinstance(body, dict) else None
            raise AuthError(response.status_code, title="token request refused", detail=str(error or "no token"))
        lifetime = float(body.get("expires_in") or 300)
        # A fifth of the lifetime, at most a minute, plus a second for issuers that count whole seconds
        # (a token issued at 10.9 s says 10 s); never more than half of it.
        margin = min(lifetime / 2, min(60.0, lifetime / 5) + 1.0)
        # From when the request was sent: the token's clock started no earlier.
        self._cached = _Cached(body["access_token"], started + lifetime - margin)
        return str(body["access_token"])

    @staticmethod
    def _endpoint_from(response: httpx.Response) -> str:
        try:
            endpoint = response.json().get("token_endpoint") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            endpoint = None
        if not isinstance(endpoint, str):
            raise AuthError(response.status_code, title="the issuer's discovery document names no token_endpoint")
        return endpoint

    def token_sync(self, http: httpx.Client) -> str:
        token = self._fresh()
        if token is not None:
            return token
        with self._thread_lock:
            token = self._fresh()
            if token is not None:
                return token
            if self.token_url is None:
                self.token_url = self._endpoint_from(http.get(f"{self.issuer}/.well-known/openid-configuration"))
            started = time.monotonic()
            return self._store(http.post(self.token_url, data=self._form(), auth=self._auth()), started)

    async def token_async(self, http: httpx.AsyncClient) -> str:
        token = self._fresh()
        if token is not None:
            return token
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            token = self._fresh()
            if token is not None:
                return token
            if self.token_url is None:
                discovery = await http.get(f"{self.issuer}/.well-known/openid-configuration")
                self.token_url = self._endpoint_from(discovery)
            started = time.monotonic()
            return self._store(await http.post(self.token_url, data=self._form(), auth=self._auth()), started)


def refreshable(source: TokenSource | None) -> bool:
    """Whether asking `source` again may give another token (worth one retry after a rejected token)."""
    return source is not None and not isinstance(source, str)


def token_sync(source: TokenSource | None, http: httpx.Client) -> str | None:
    if source is None or isinstance(source, str):
        return source
    if isinstance(source, ClientCredentials):
        return source.token_sync(http)
    token: Any = source()
    if inspect.isawaitable(token):
        raise TypeError("StateClient needs a sync token callable; AsyncStateClient takes async ones")
    return str(token)


async def token_async(source: TokenSource | None, http: httpx.AsyncClient) -> str | None:
    if source is None or isinstance(source, str):
        return source
    if isinstance(source, ClientCredentials):
        return await source.token_async(http)
    token: Any = source()
    if inspect.isawaitable(token):
        token = await token
    return str(token)


def invalidate(source: TokenSource | None) -> None:
    if isinstance(source, ClientCredentials):
        source.invalidate()


def rejected_token(response: httpx.Response) -> bool:
    """An answer of the gateway's authorizer to a token it does not accept (expired, say): 401, or 403 with
    API Gateway's own body; nothing ran, so the request may be sent again with a fresh token. A 403
    problem document is the service's RBAC answer and is final."""
    if response.status_code == 401:
        return True
    return response.status_code == 403 and not response.headers.get("Content-Type", "").startswith(
        "application/problem+json"
    )
