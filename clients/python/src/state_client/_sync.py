"""The blocking client: the same methods as `AsyncStateClient`, on httpx's sync client."""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from state_client import _protocol as p
from state_client import _watch as w
from state_client.auth import TokenSource, invalidate, refreshable, rejected_token, token_sync
from state_client.errors import NotFound, PreconditionFailed, StateError
from state_client.models import JSON, Envelope, KeyInfo, Page, TransactionResult, VersionInfo, WatchEvent


class StateClient:
    """The state service over HTTP, one connection pool per client: use it as a context manager (or call
    `close`). `base_url` defaults to ``$STATE_API_URL``; `token` is a string, a callable returning one, or
    `ClientCredentials`. Methods and errors as `AsyncStateClient`'s."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: TokenSource | None = None,
        timeout: float | httpx.Timeout = p.DEFAULT_TIMEOUT,
        retry: p.RetryPolicy | None = None,
        modify_policy: p.ModifyPolicy | None = None,
        watch_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = p.base_url_from_env(base_url)
        self.watch_url = w.watch_url_from_env(watch_url)
        self._token = token
        self._retry = retry or p.RetryPolicy()
        self._modify = modify_policy or p.ModifyPolicy()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": p.USER_AGENT, "Accept": "application/json"},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------------------------------- reads
    def get(self, key: str, *, consistent: bool = False) -> Envelope:
        """The key's current state; `NotFound` when absent, deleted or expired."""
        return p.envelope(self._send(p.get_call(key, consistent=consistent)))

    def get_version(self, key: str, version: int) -> Envelope:
        """Version `version` as it was; `NotFound` (never existed, or a deletion), `Gone` (past retention)."""
        return p.envelope(self._send(p.get_call(key, version=version)))

    def history_pages(
        self, key: str, *, page_size: int | None = None, cursor: str | None = None
    ) -> Iterator[Page[VersionInfo]]:
        while True:
            page = p.history_page(self._send(p.history_call(key, limit=page_size, cursor=cursor)))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def history(self, key: str, *, page_size: int | None = None) -> Iterator[VersionInfo]:
        """The key's versions, newest first, fetching a page at a time."""
        for page in self.history_pages(key, page_size=page_size):
            yield from page.items

    def list_pages(
        self, prefix: str = "", *, include_values: bool = False, page_size: int | None = None, cursor: str | None = None
    ) -> Iterator[Page[KeyInfo]]:
        while True:
            call = p.list_call(prefix, include_values=include_values, limit=page_size, cursor=cursor)
            page = p.list_page(self._send(call))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def list(
        self, prefix: str = "", *, include_values: bool = False, page_size: int | None = None
    ) -> Iterator[KeyInfo]:
        """The keys under `prefix` the caller may read, in key order, fetching a page at a time."""
        for page in self.list_pages(prefix, include_values=include_values, page_size=page_size):
            yield from page.items

    # ------------------------------------------------------------------------------------------ writes
    def set(
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
        return p.envelope(self._send(call), value=value)

    def update(self, key: str, patch: JSON, *, if_match: int | str | None = None) -> Envelope:
        """JSON Merge Patch (RFC 7396): `None` removes a member. Answers the merged value."""
        return p.envelope(self._send(p.update_call(key, patch, if_match=if_match)))

    def delete(self, key: str, *, if_match: int | str | None = None) -> int:
        """Delete; answers the tombstone's version."""
        response = self._send(p.delete_call(key, if_match=if_match))
        p.raise_for_status(response)
        return p.version_of_etag(response)

    def get_many(
        self, keys: Sequence[str], *, snapshot: bool = False, consistent: bool = False
    ) -> builtins.list[Envelope | StateError]:
        """Up to 100 distinct keys in one request (docs/api.md#bulk-reads), answered in their order: each its
        envelope, or the error a `get` of it would raise (`NotFound`, `Forbidden`, ...), returned, not raised.
        Each is as fresh as a `get`; with `snapshot=True` all are read at one point in time. A value the
        answer left out for size is fetched by its version, so it is still that read's value."""
        items = p.batch_items(self._send(p.batch_get_call(keys, snapshot=snapshot, consistent=consistent)))
        return [
            self.get_version(key, item) if isinstance(item, int) else item
            for key, item in zip(keys, items, strict=True)
        ]

    def transaction(
        self, operations: Sequence[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> TransactionResult:
        """Up to 25 operations on distinct keys, all or nothing (docs/api.md#transactions): each a dict such
        as ``{"op": "put", "key": "order:1", "value": {...}, "if_none_match": "*"}``, ``{"op": "patch",
        "key": ..., "patch": {...}}``, ``{"op": "delete", "key": ...}`` or ``{"op": "check", "key": ...,
        "if_match": 3}``. `PreconditionFailed` when a condition fails (nothing written; its
        `failed_operations` names each). Sent under `idempotency_key` (a fresh one when not given), so the
        retries after 429, 503 or a lost answer are safe: the server answers the first outcome."""
        call = p.transaction_call(operations, idempotency_key=idempotency_key or str(uuid.uuid4()))
        return p.transaction_result(self._send(call))

    def modify(self, key: str, fn: Callable[[JSON], JSON], *, budget: float | None = None) -> Envelope:
        """As `AsyncStateClient.modify`: read, write `fn(value)` with If-Match, again on 412 until `budget`."""
        policy = self._modify
        deadline = time.monotonic() + (policy.budget if budget is None else budget)
        attempt = 0
        while True:
            attempt += 1
            try:
                current: Envelope | None = self.get(key, consistent=True)
            except NotFound:
                current = None
            new_value = fn(None if current is None else current.value)
            try:
                return p.envelope(self._send(p.modify_write(current, new_value, key)), value=new_value)
            except PreconditionFailed:
                delay = policy.delay(attempt)
                if time.monotonic() + delay >= deadline:
                    raise
                time.sleep(delay)

    # ------------------------------------------------------------------------------------------- watch
    def watch(
        self, *, key: str | None = None, prefix: str | None = None, since: str | None = None
    ) -> Iterator[WatchEvent]:
        """As `AsyncStateClient.watch`, a blocking iterator (one thread, websockets' sync client)."""
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        state = w.WatchState(key=key, prefix=prefix, cursor=since)
        backoff = w.Backoff()
        handshake_retried = False
        while True:
            try:
                with connect(self.watch_url, additional_headers=self._auth_headers(), max_size=None) as socket:
                    handshake_retried = False
                    socket.send(json.dumps(state.subscribe()))
                    yield from self._watch_connection(socket, state, backoff)
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
            time.sleep(backoff.next())

    def _watch_connection(self, socket: Any, state: w.WatchState, backoff: w.Backoff) -> Iterator[WatchEvent]:
        while True:
            frame = socket.recv(timeout=None if state.subscribed else w.SUBSCRIBE_TIMEOUT)
            step = state.on_frame(frame)
            if state.subscribed:
                backoff.reset()
            if step.refresh_token:
                invalidate(self._token)
                token = token_sync(self._token, self._http)
                if token is not None:
                    socket.send(json.dumps({"type": "refresh", "token": token}))
            for message in step.send:
                socket.send(json.dumps(message))
            yield from step.events

    # ------------------------------------------------------------------------------------------ sending
    def _auth_headers(self) -> dict[str, str]:
        token = token_sync(self._token, self._http)
        return {"Authorization": f"Bearer {token}"} if token is not None else {}

    def _send(self, call: p.Call) -> httpx.Response:
        """As `AsyncStateClient._send`."""
        policy = self._retry if call.retry_safe else p.NO_RETRIES
        started = time.monotonic()
        attempt, token_retried = 0, False
        while True:
            attempt += 1
            headers = {**call.headers, **self._auth_headers()}
            try:
                response = self._http.request(
                    call.method, call.path, params=call.params, headers=headers, content=call.content
                )
            except httpx.TransportError:
                if not call.resend_after_network_failure or attempt >= policy.attempts:
                    raise
                delay = policy.delay(attempt)
                if time.monotonic() - started + delay > policy.budget:
                    raise
                time.sleep(delay)
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
            time.sleep(delay)
