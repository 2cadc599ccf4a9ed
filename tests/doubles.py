"""Test doubles for the collaborators the core takes by injection (a metrics sink, a clock), shared by the
tests (`from tests.doubles import Clock, NoMetrics, RecordedMetrics, utc_now`), and an AWS service that
fails on demand (FailingService) or applies a request and loses its answer (LostAnswer)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

FIXED_START = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)

# The key that signs cache entries in tests that build a RedisLink on a client themselves (the functions
# read theirs from Secrets Manager).
SIGNING_KEY = secrets.token_bytes(32)


def utc_now() -> datetime:
    """The real clock, as the runtime injects it."""
    return datetime.now(UTC)


class NoMetrics:
    """A metrics sink that drops every metric."""

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        pass


class RecordedMetrics:
    """A metrics sink that keeps each metric as (name, value) in `values`; safe to share between threads."""

    def __init__(self) -> None:
        self.values: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        with self._lock:
            self.values.append((name, value))

    def count(self, name: str) -> float:
        """The sum of the values recorded under `name`: 0 if none was."""
        with self._lock:
            return sum(value for metric, value in self.values if metric == name)


class Clock:
    """A clock that stands still until the test moves it: `now` is `start` (FIXED_START by default) plus
    every `advance`."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = FIXED_START if start is None else start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def operation_of(request: Any) -> str:
    """The operation of a botocore request to a JSON protocol service (DynamoDB: "UpdateItem", ...)."""
    target = request.headers.get("X-Amz-Target", b"")
    return (target.decode() if isinstance(target, bytes) else str(target)).rpartition(".")[2]


class FailingService:
    """A botocore `before-send` hook that answers every request itself, with `status` and the error `code`,
    after `delay` seconds, counting the attempts (and each one's operation, in `operations`): register it
    as `before-send.<service>` on a client. With `raises` (a botocore exception class such as
    ReadTimeoutError or ConnectTimeoutError) the attempt fails with it instead, as a network fault would.
    Nothing reaches the service, so an injected failure can never be a partial write."""

    def __init__(
        self, status: int = 503, code: str = "ServiceUnavailable", delay: float = 0.0, raises: type | None = None
    ) -> None:
        self.status, self.code, self.delay, self.raises = status, code, delay, raises
        self.attempts = 0
        self.operations: list[str] = []

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self.attempts += 1
        self.operations.append(operation_of(request))
        if self.delay:
            time.sleep(self.delay)
        if self.raises is not None:
            raise self.raises(endpoint_url=request.url)
        body = json.dumps({"__type": self.code, "message": "injected"}).encode()
        return AWSResponse(request.url, self.status, {"Content-Type": "application/x-amz-json-1.0"}, _Body(body))


class LostAnswer:
    """A botocore `before-send` hook for DynamoDB that lets the table apply a request and loses the answer:
    the first `count` requests of `operation` it sends itself, then runs `meanwhile` (say, another client's
    write, acknowledged before this caller hears anything), then fails the attempt with ReadTimeoutError,
    as an answer that never came. Other requests pass. It stands in for the network, not for DynamoDB:
    the table (moto) really applies the request. `sent` holds every request body of `operation`."""

    def __init__(self, operation: str = "UpdateItem", meanwhile: Any = None, count: int = 1) -> None:
        self.operation, self.meanwhile, self.count = operation, meanwhile, count
        self.sent: list[dict[str, Any]] = []
        self.lost = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.exceptions import ReadTimeoutError
        from botocore.httpsession import URLLib3Session

        if operation_of(request) != self.operation:
            return None
        self.sent.append(json.loads(request.body))
        if self.lost >= self.count:
            return None
        self.lost += 1
        session = URLLib3Session()
        try:
            session.send(request)
        finally:
            session.close()
        if self.meanwhile is not None:
            self.meanwhile()
        raise ReadTimeoutError(endpoint_url=request.url)


class _Body:
    """The raw stream AWSResponse reads its content from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data
