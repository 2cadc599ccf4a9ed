"""Typed errors, one class per kind of answer a caller handles differently.

The service answers errors as RFC 9457 problem documents (docs/api.md, "Errors"); API Gateway itself answers
some with ``{"message": ...}`` (throttling, a rejected token, an unknown route). Both become a `StateError`
subclass chosen by status, and for 503 by the problem's ``type``.
"""

from __future__ import annotations

from typing import Any

PROBLEM_TYPE_BASE = "https://state.service/problems/"
WRITE_OUTCOME_UNKNOWN = PROBLEM_TYPE_BASE + "write-outcome-unknown"
STORED_VALUE_UNREADABLE = PROBLEM_TYPE_BASE + "stored-value-unreadable"


class StateError(Exception):
    """An error answer of the service (or of the gateway in front of it)."""

    def __init__(
        self,
        status: int,
        *,
        type: str | None = None,  # the RFC 9457 member's name
        title: str | None = None,
        detail: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.body = body or {}
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.status} {self.title or ''}".strip()
        return f"{text}: {self.detail}" if self.detail else text


class BadRequest(StateError):
    """400 (and 415): the request itself is wrong (key, JSON, header, query parameter, media type)."""


class Unauthorized(StateError):
    """401: no token, or a request that reached the service without the authorizer's context."""


class Forbidden(StateError):
    """403: the principal may not do this to this key, or the gateway rejected the token."""


class NotFound(StateError):
    """404: absent, deleted or expired; a version that never existed or has no value."""


class Gone(StateError):
    """410: a version whose history left retention."""


class PreconditionFailed(StateError):
    """412: If-Match / If-None-Match did not hold. `current_version` is the key's version (None if absent)."""

    def __init__(self, status: int, *, current_version: int | None = None, **kw: Any) -> None:
        self.current_version = current_version
        super().__init__(status, **kw)

    @property
    def failed_operations(self) -> list[dict[str, Any]]:
        """A transaction's 412: each failed operation's `index`, `key` and `current_version`."""
        failed = (self.body or {}).get("failed_operations")
        return failed if isinstance(failed, list) else []


class TooLarge(StateError):
    """413: the value (over 1 MiB canonical) or the request is too large; nothing was written."""


class Unprocessable(StateError):
    """422: a body of the wrong shape."""


class RetryableError(StateError):
    """An answer that invites a retry after `retry_after` seconds (None when the server named none)."""

    def __init__(self, status: int, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(status, **kw)


class RateLimited(RetryableError):
    """429: throttled by the gateway before anything ran."""


class Unavailable(RetryableError):
    """503: nothing was written (or a stored value is unreadable: `type` ends in stored-value-unreadable)."""


class WriteOutcomeUnknown(Unavailable):
    """503 write-outcome-unknown: the write may or may not have landed. Read the key (consistent=True) and
    decide, or retry conditionally; never retried by the client (docs/api.md, "Writes whose outcome is
    unknown")."""


class ServerError(StateError):
    """Any other 5xx: a crash or a gateway timeout; the outcome of a write is unknown."""


_BY_STATUS: dict[int, type[StateError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    410: Gone,
    412: PreconditionFailed,
    413: TooLarge,
    415: BadRequest,
    422: Unprocessable,
    429: RateLimited,
    503: Unavailable,
}


def error_for(status: int, body: dict[str, Any] | None, retry_after: float | None = None) -> StateError:
    """The typed error of an answer with `status` and (if it had one) its JSON `body`."""
    body = body or {}
    problem_type = body.get("type") if isinstance(body.get("type"), str) else None
    title = body.get("title") if isinstance(body.get("title"), str) else None
    detail = body.get("detail") if isinstance(body.get("detail"), str) else None
    if title is None and isinstance(body.get("message"), str):
        title = body["message"]  # API Gateway's own answers
    kw: dict[str, Any] = {"type": problem_type, "title": title, "detail": detail, "body": body}
    if status == 412:
        current = body.get("current_version")
        return PreconditionFailed(status, current_version=current if isinstance(current, int) else None, **kw)
    if status == 503 and problem_type == WRITE_OUTCOME_UNKNOWN:
        return WriteOutcomeUnknown(status, retry_after=retry_after, **kw)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else StateError
    if issubclass(cls, RetryableError):
        return cls(status, retry_after=retry_after, **kw)
    return cls(status, **kw)
