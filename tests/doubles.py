"""Test doubles for the collaborators the core takes by injection (a metrics sink, a clock), shared by the
tests (`from tests.doubles import Clock, NoMetrics, RecordedMetrics, utc_now`), and an AWS service that
fails on demand (FailingService)."""

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


class FailingService:
    """A botocore `before-send` hook that answers every request itself, with `status` and the error `code`,
    after `delay` seconds, counting the attempts: register it as `before-send.<service>` on a client.
    Nothing reaches the service, so an injected failure can never be a partial write."""

    def __init__(self, status: int = 503, code: str = "ServiceUnavailable", delay: float = 0.0) -> None:
        self.status, self.code, self.delay = status, code, delay
        self.attempts = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self.attempts += 1
        if self.delay:
            time.sleep(self.delay)
        body = json.dumps({"__type": self.code, "message": "injected"}).encode()
        return AWSResponse(request.url, self.status, {"Content-Type": "application/x-amz-json-1.0"}, _Body(body))


class _Body:
    """The raw stream AWSResponse reads its content from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data
