"""The asyncio client."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from state_client import _protocol as p
from state_client import _watch as w
from state_client.auth import TokenSource, invalidate, refreshable, rejected_token, token_async
from state_client.errors import NotFound, PreconditionFailed, StateError
from state_client.models import JSON, Envelope, KeyInfo, Page, TransactionResult, VersionInfo, WatchEvent


class AsyncStateClient:
    """The state service over HTTP, one connection pool per client: use it as an async context manager
    (or call `aclose`). `base_url` defaults to ``$STATE_API_URL``; `token` is a string, a callable (sync or
    async) returning one, or `ClientCredentials`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: TokenSource | None = None,
        timeout: float | httpx.Timeout = p.DEFAULT_TIMEOUT,
        retry: p.RetryPolicy | None = None,
        modify_policy: p.ModifyPolicy | None = None,
        watch_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = p.base_url_from_env(base_url)
        self.watch_url = w.watch_url_from_env(watch_url)
        self._token = token
        self._retry = retry or p.RetryPolicy()
        self._modify = modify_policy or p.ModifyPolicy()
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": p.USER_AGENT, "Accept": "application/json"},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------------------------------- reads
    async def get(self, key: str, *, consistent: bool = False) -> Envelope:
        """The key's current state; `NotFound` when absent, deleted or expired."""
        return p.envelope(await self._send(p.get_call(key, consistent=consistent)))

    async def get_version(self, key: str, version: int) -> Envelope:
        """Version `version` as it was; `NotFound` (never existed, or a deletion), `Gone` (past retention)."""
        return p.envelope(await self._send(p.get_call(key, version=version)))

    async def history_pages(
        self, key: str, *, page_size: int | None = None, cursor: str | None = None
    ) -> AsyncIterator[Page[VersionInfo]]:
        while True:
            page = p.history_page(await self._send(p.history_call(key, limit=page_size, cursor=cursor)))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def history(self, key: str, *, page_size: int | None = None) -> AsyncIterator[VersionInfo]:
        """The key's versions, newest first, fetching a page at a time."""
        async for page in self.history_pages(key, page_size=page_size):
            for version in page.items:
                yield version

    async def list_pages(
        self, prefix: str = "", *, include_values: bool = False, page_size: int | None = None, cursor: str | None = None
    ) -> AsyncIterator[Page[KeyInfo]]:
        while True:
            call = p.list_call(prefix, include_values=include_values, limit=page_size, cursor=cursor)
            page = p.list_page(await self._send(call))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def list(
        self, prefix: str = "", *, include_values: bool = False, page_size: int | None = None
    ) -> AsyncIterator[KeyInfo]:
        """The keys under `prefix` the caller may read, in key order, fetching a page at a time."""
        async for page in self.list_pages(prefix, include_values=include_values, page_size=page_size):
            for item in page.items:
                yield item

    # ------------------------------------------------------------------------------------------ writes
    async def set(
        self,
        key: str,
        value: JSON,
        *,
        ttl_seconds: int | None = None,
        if_match: int | str | None = None,
        if_none_match: str | None = None,
    ) -> Envelope:
        """Create or replace. The answer carries no value: the envelope's `value` is the one sent."""
        call = p.set_call(key, value, ttl_seconds=ttl_seconds, if_match=if_match, if_none_match=if_none_match)
        return p.envelope(await self._send(call), value=value)

    async def update(self, key: str, patch: JSON, *, if_match: int | str | None = None) -> Envelope:
        """JSON Merge Patch (RFC 7396): `None` removes a member. Answers the merged value."""
        return p.envelope(await self._send(p.update_call(key, patch, if_match=if_match)))

    async def delete(self, key: str, *, if_match: int | str | None = None) -> int:
        """Delete; answers the tombstone's version."""
        response = await self._send(p.delete_call(key, if_match=if_match))
        p.raise_for_status(response)
        return p.version_of_etag(response)

    async def get_many(
        self, keys: Sequence[str], *, snapshot: bool = False, consistent: bool = False
    ) -> builtins.list[Envelope | StateError]:
        """Up to 100 distinct keys in one request (docs/api.md#bulk-reads), answered in their order: each its
        envelope, or the error a `get` of it would raise (`NotFound`, `Forbidden`, ...), returned, not raised.
        Each is as fresh as a `get`; with `snapshot=True` all are read at one point in time. A value the
        answer left out for size is fetched by its version, so it is still that read's value."""
        items = p.batch_items(await self._send(p.batch_get_call(keys, snapshot=snapshot, consistent=consistent)))
        return [
            await self.get_version(key, item) if isinstance(item, int) else item
            for key, item in zip(keys, items, strict=True)
        ]

    async def transaction(
        self, operations: Sequence[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> TransactionResult:
        """Up to 25 operations on distinct keys, all or nothing (docs/api.md#transactions): each a dict such
        as ``{"op": "put", "key": "order:1", "value": {...}, "if_none_match": "*"}``, ``{"op": "patch",
        "key": ..., "patch": {...}}``, ``{"op": "delete", "key": ...}`` or ``{"op": "check", "key": ...,
        "if_match": 3}``. `PreconditionFailed` when a condition fails (nothing written; its
        `failed_operations` names each). Sent under `idempotency_key` (a fresh one when not given), so the
        retries after 429, 503 or a lost answer are safe: the server answers the first outcome."""
        call = p.transaction_call(operations, idempotency_key=idempotency_key or str(uuid.uuid4()))
        return p.transaction_result(await self._send(call))

    async def modify(
        self, key: str, fn: Callable[[JSON], JSON] | Callable[[JSON], Awaitable[JSON]], *, budget: float | None = None
    ) -> Envelope:
        """Read the key, write `fn(value)` (`fn(None)` when absent: then create-only) with If-Match, and on a
        412 (someone wrote in between) read and apply again, with jittered backoff, until `budget` seconds
        (`ModifyPolicy.budget`) have gone; then the last `PreconditionFailed` is raised. `fn` may run more
        than once: keep it free of side effects. A TTL is kept."""
        policy = self._modify
        deadline = time.monotonic() + (policy.budget if budget is None else budget)
        attempt = 0
        while True:
            attempt += 1
            try:
                current: Envelope | None = await self.get(key, consistent=True)
            except NotFound:
                current = None
            new_value = fn(None if current is None else current.value)
            if inspect.isawaitable(new_value):
                new_value = await new_value
            try:
                return p.envelope(await self._send(p.modify_write(current, new_value, key)), value=new_value)
            except PreconditionFailed:
                delay = policy.delay(attempt)
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------------------------------- watch
    async def watch(
        self, *, key: str | None = None, prefix: str | None = None, since: str | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Every change of `key` (after the cursor `since`, else from now) or of the keys under `prefix`
        (ending in ':'), as `Change` (or `Resync`) events, over the WebSocket API. Reconnects by itself with
        backoff and resumes, so nothing is missed or yielded twice: a key watch from the cursor of the last
        change yielded, a prefix watch from the watch's cursor and the last version yielded of each key
        (docs/watch.md)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        state = w.WatchState(key=key, prefix=prefix, cursor=since)
        backoff = w.Backoff()
        handshake_retried = False
        while True:
            try:
                headers = await self._auth_headers()
                async with connect(self.watch_url, additional_headers=headers, max_size=None) as socket:
                    handshake_retried = False
                    await socket.send(json.dumps(state.subscribe()))
                    async for event in self._watch_connection(socket, state, backoff):
                        yield event
            except InvalidStatus as refused:
                status = refused.response.status_code
                if status in (401, 403) and refreshable(self._token) and not handshake_retried:
                    handshake_retried = True
                    invalidate(self._token)
                    continue
                if status < 500:
                    raise w.handshake_error(status) from refused
            except (w.Reconnect, WebSocketException, OSError, TimeoutError):
                pass
            await asyncio.sleep(backoff.next())

    async def _watch_connection(
        self, socket: Any, state: w.WatchState, backoff: w.Backoff
    ) -> AsyncIterator[WatchEvent]:
        while True:
            timeout = None if state.subscribed else w.SUBSCRIBE_TIMEOUT
            frame = await asyncio.wait_for(socket.recv(), timeout)
            step = state.on_frame(frame)
            if state.subscribed:
                backoff.reset()
            if step.refresh_token:
                invalidate(self._token)
                token = await token_async(self._token, self._http)
                if token is not None:
                    await socket.send(json.dumps({"type": "refresh", "token": token}))
            for message in step.send:
                await socket.send(json.dumps(message))
            for event in step.events:
                yield event

    # ------------------------------------------------------------------------------------------ sending
    async def _auth_headers(self) -> dict[str, str]:
        token = await token_async(self._token, self._http)
        return {"Authorization": f"Bearer {token}"} if token is not None else {}

    async def _send(self, call: p.Call) -> httpx.Response:
        """Send `call`, again where safe: after a rejected token (once, with a fresh one, whatever the
        method: the authorizer ran before anything else), and for reads and conditional writes after 429
        or 503 within the retry budget."""
        policy = self._retry if call.retry_safe else p.NO_RETRIES
        started = time.monotonic()
        attempt, token_retried = 0, False
        while True:
            attempt += 1
            headers = {**call.headers, **await self._auth_headers()}
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, headers=headers, content=call.content
                )
            except httpx.TransportError:
                if not call.resend_after_network_failure or attempt >= policy.attempts:
                    raise
                delay = policy.delay(attempt)
                if time.monotonic() - started + delay > policy.budget:
                    raise
                await asyncio.sleep(delay)
                continue
            if rejected_token(response) and refreshable(self._token) and not token_retried:
                token_retried = True
                invalidate(self._token)
                continue
            if response.status_code < 400:
                return response
            error = p.error_of(response)
            if (
                not p.should_retry(error, safe=call.retry_safe, idempotent=call.idempotent)
                or attempt >= policy.attempts
            ):
                raise error
            delay = policy.delay(attempt, error)
            if time.monotonic() - started + delay > policy.budget:
                raise error
            await asyncio.sleep(delay)
