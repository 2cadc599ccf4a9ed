"""What the sync and async clients share, with no I/O: the requests each method sends, how answers are read,
and when a request may be sent again."""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from state_client.errors import (
    RateLimited,
    RetryableError,
    StateError,
    Unavailable,
    WriteOutcomeUnknown,
    error_for,
)
from state_client.models import JSON, Envelope, KeyInfo, Page, TransactionResult, VersionInfo

DEFAULT_BASE_URL = "http://127.0.0.1:3000"
USER_AGENT = "state-client/0.1"
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def base_url_from_env(base_url: str | None) -> str:
    return (base_url or os.environ.get("STATE_API_URL") or DEFAULT_BASE_URL).rstrip("/")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of reads and conditional writes answered 429 or 503 (not write-outcome-unknown): at most
    `attempts` sends within `budget` seconds, waiting Retry-After when the server names it, else a jittered
    exponential backoff from `base` to `cap` seconds. A wait that would end past the budget is not made:
    the error goes to the caller at once."""

    attempts: int = 5
    budget: float = 10.0
    base: float = 0.1
    cap: float = 2.0

    def delay(self, attempt: int, error: StateError | None = None) -> float:
        """The wait before send number `attempt + 1` (attempt counts from 1) after `error` (None: a network
        failure): its Retry-After if it named one."""
        if isinstance(error, RetryableError) and error.retry_after is not None:
            return error.retry_after
        # Full jitter (AWS architecture blog): spreads clients that failed together.
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))  # noqa: S311  not crypto


NO_RETRIES = RetryPolicy(attempts=1)


def should_retry(error: StateError, *, safe: bool, idempotent: bool = False) -> bool:
    """Whether a request answered `error` may be sent again. Only reads and conditional writes (`safe`):
    a conditional write that landed meanwhile answers 412 instead of landing twice. Never after
    write-outcome-unknown (its caller must decide from the key's value, docs/api.md), except a transaction
    under its Idempotency-Key, which the server answers with what happened."""
    if not safe:
        return False
    if isinstance(error, WriteOutcomeUnknown):
        return idempotent
    return isinstance(error, RateLimited | Unavailable)


@dataclass
class Call:
    """One request of a method: what to send, whether it may be sent again, and how to read the answer."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    retry_safe: bool = True
    # A request the server answers once whatever it is sent (a transaction under its Idempotency-Key).
    idempotent: bool = False

    @property
    def resend_after_network_failure(self) -> bool:
        """Only a read, or a transaction under its Idempotency-Key: a write whose answer was lost may have
        landed, and sent again even conditionally it would answer 412 for the caller's own write (or make
        `modify` apply its function twice); a transaction sent again answers its first outcome instead."""
        return self.method == "GET" or self.idempotent


def key_path(key: str) -> str:
    # Keys are of a URL-safe alphabet; quoting anyway keeps a hostile key from changing the route (the
    # server then refuses it with 400).
    return "/state/" + quote(key, safe="")


def precondition_header(value: int | str) -> str:
    """If-Match's value: a version (7), an ETag ('"7"') or '*'."""
    if isinstance(value, bool):
        raise TypeError("if_match takes a version, an ETag or '*'")
    if isinstance(value, int):
        return f'"{value}"'
    return value


def conditions(if_match: int | str | None, if_none_match: str | None) -> dict[str, str]:
    headers = {}
    if if_match is not None:
        headers["If-Match"] = precondition_header(if_match)
    if if_none_match is not None:
        if if_none_match != "*":
            raise ValueError("if_none_match on a write may only be '*' (create only)")
        headers["If-None-Match"] = "*"
    return headers


def dumps(value: JSON) -> bytes:
    # UTF-8 as it is, no \uXXXX escapes: the body limit is 1 MiB + 64 KiB for a 1 MiB value (docs/api.md).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def get_call(key: str, *, version: int | None = None, consistent: bool = False) -> Call:
    params = {}
    if version is not None:
        params["version"] = str(version)
    if consistent:
        params["consistent"] = "true"
    return Call("GET", key_path(key), params=params)


def set_call(
    key: str,
    value: JSON,
    *,
    ttl_seconds: int | None,
    if_match: int | str | None,
    if_none_match: str | None,
) -> Call:
    body: dict[str, Any] = {"value": value}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    headers = {"Content-Type": "application/json", **conditions(if_match, if_none_match)}
    return Call("PUT", key_path(key), headers=headers, content=dumps(body), retry_safe=_conditional(headers))


def update_call(key: str, patch: JSON, *, if_match: int | str | None) -> Call:
    headers = {"Content-Type": "application/merge-patch+json", **conditions(if_match, None)}
    return Call("PATCH", key_path(key), headers=headers, content=dumps(patch), retry_safe=_conditional(headers))


def delete_call(key: str, *, if_match: int | str | None) -> Call:
    headers = conditions(if_match, None)
    return Call("DELETE", key_path(key), headers=headers, retry_safe=_conditional(headers))


MAX_BATCH_KEYS = 100


def batch_get_call(keys: Sequence[str], *, snapshot: bool, consistent: bool) -> Call:
    """`POST /state:batchGet`: a read, so sent again after a 429, a 503 or a lost answer like a GET."""
    if not 1 <= len(keys) <= MAX_BATCH_KEYS or len(set(keys)) != len(keys):
        raise ValueError(f"get_many takes 1 to {MAX_BATCH_KEYS} distinct keys")
    body = {"keys": list(keys), "snapshot": snapshot, "consistent": consistent}
    return Call(
        "POST", "/state:batchGet", headers={"Content-Type": "application/json"}, content=dumps(body), idempotent=True
    )


def batch_items(response: httpx.Response) -> list[Envelope | StateError | int]:
    """Each key's answer, in request order: its envelope, its error (`NotFound`, `Forbidden`, ...), or, where
    the answer left the value out for size, the version whose value the caller reads on its own."""
    raise_for_status(response)
    items: list[Envelope | StateError | int] = []
    for item in response.json()["items"]:
        if item.get("status") != 200:
            problem = item.get("problem") if isinstance(item.get("problem"), dict) else None
            items.append(error_for(int(item.get("status") or 500), problem))
        elif item.get("value_omitted"):
            items.append(int(item["version"]))
        else:
            items.append(Envelope.from_json(item))
    return items


def transaction_call(operations: Sequence[dict[str, Any]], *, idempotency_key: str) -> Call:
    """`POST /state:transact`: always under an Idempotency-Key (the caller's, or a fresh one), so a retry after
    a 503, a 429 or a lost answer answers the first outcome instead of applying twice."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    return Call(
        "POST", "/state:transact", headers=headers, content=dumps({"operations": list(operations)}), idempotent=True
    )


def transaction_result(response: httpx.Response) -> TransactionResult:
    raise_for_status(response)
    return TransactionResult.from_json(response.json(), replayed=response.headers.get("Idempotent-Replayed") == "true")


def history_call(key: str, *, limit: int | None, cursor: str | None) -> Call:
    return Call("GET", key_path(key) + "/history", params=_page_params(limit, cursor))


def list_call(prefix: str, *, include_values: bool, limit: int | None, cursor: str | None) -> Call:
    params = {"prefix": prefix, **_page_params(limit, cursor)}
    if include_values:
        params["include"] = "value"
    return Call("GET", "/state", params=params)


def _page_params(limit: int | None, cursor: str | None) -> dict[str, str]:
    params = {}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _conditional(headers: dict[str, str]) -> bool:
    # If-Match: * is not a condition on what was written: a PUT with it that landed would land again.
    return headers.get("If-Match", "*") != "*" or headers.get("If-None-Match") == "*"


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delay-seconds or an HTTP-date), None when absent or unreadable."""
    text = response.headers.get("Retry-After")
    if text is None:
        return None
    text = text.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_of(response: httpx.Response) -> StateError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_for(response.status_code, body if isinstance(body, dict) else None, retry_after(response))


def raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_of(response)


def version_of_etag(response: httpx.Response) -> int:
    etag = response.headers.get("ETag", "")
    return int(etag.strip('"'))


def envelope(response: httpx.Response, *, value: JSON = None) -> Envelope:
    raise_for_status(response)
    return Envelope.from_json(response.json(), value=value)


def history_page(response: httpx.Response) -> Page[VersionInfo]:
    raise_for_status(response)
    body = response.json()
    return Page([VersionInfo.from_json(v) for v in body["versions"]], body.get("next_cursor"))


def list_page(response: httpx.Response) -> Page[KeyInfo]:
    raise_for_status(response)
    body = response.json()
    return Page([KeyInfo.from_json(k) for k in body["keys"]], body.get("next_cursor"))


def ttl_to_keep(current: Envelope) -> int | None:
    """The ttl_seconds that keeps `current`'s expiry through a PUT (a PUT without one removes it)."""
    if current.expires_at is None:
        return None
    return max(1, math.ceil((current.expires_at - datetime.now(UTC)).total_seconds()))


@dataclass(frozen=True)
class ModifyPolicy:
    """`modify`'s optimistic loop: retried on 412 with jittered backoff until `budget` seconds have gone."""

    budget: float = 10.0
    base: float = 0.01
    cap: float = 0.5

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))  # noqa: S311  not crypto


def modify_write(current: Envelope | None, new_value: JSON, key: str) -> Call:
    """The conditional write of one `modify` round: create-only when the key was absent."""
    if current is None:
        return set_call(key, new_value, ttl_seconds=None, if_match=None, if_none_match="*")
    return set_call(key, new_value, ttl_seconds=ttl_to_keep(current), if_match=current.version, if_none_match=None)
