"""The one version of each test double, shared by every test: the collaborators the core takes by injection
(metrics sinks, a wall clock and a monotonic clock), Lambda's context object for handlers called in-process,
an HTTP client for the service behind the local gateway (the end-to-end tests), and an AWS service that fails
on demand (FailingService) or applies a request and loses its answer (LostAnswer)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

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


class MonotonicClock:
    """A monotonic clock (seconds, as `time.monotonic`) that stands still until the test sets or moves `now`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class LambdaContext:
    """Lambda's context object for a handler called in-process: `remaining_ms` of the invocation left (10 s
    unless told otherwise)."""

    function_version = "$LATEST"
    log_stream_name = "test"

    def __init__(
        self,
        function_name: str = "test",
        *,
        remaining_ms: int = 10_000,
        memory_limit_in_mb: int = 512,
        aws_request_id: str = "test-request",
    ) -> None:
        self.function_name = function_name
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


MERGE_PATCH = "application/merge-patch+json"


class ApiClient:
    """The service's HTTP API as a caller with a dev token sees it, on a running local stack (anything with
    `base_url` and `token(sub=, scope=)`): one requests session, every request with a 30 s timeout. Query
    parameters go as keywords: `get(key, version="2")`, `history(key, limit="10")`."""

    def __init__(self, stack: Any, scope: str = "state:read state:write", sub: str = "alice") -> None:
        self.base_url: str = stack.base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {stack.token(sub=sub, scope=scope)}"

    def url(self, key: str) -> str:
        return f"{self.base_url}/state/{key}"

    def get(self, key: str, *, headers: dict[str, str] | None = None, **params: str) -> requests.Response:
        return self.session.get(self.url(key), params=params, headers=headers, timeout=30)

    def history(self, key: str, **params: str) -> requests.Response:
        return self.session.get(f"{self.url(key)}/history", params=params, timeout=30)

    def put(
        self,
        key: str,
        value: Any = None,
        *,
        body: str | bytes | None = None,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> requests.Response:
        """PUT `{"value": value, **fields}`, or `body` as it is (malformed on purpose, say), as application/json."""
        data = body if body is not None else json.dumps({"value": value, **fields})
        return self.session.put(
            self.url(key), data=data, headers={"Content-Type": "application/json", **(headers or {})}, timeout=30
        )

    def patch(
        self, key: str, patch: Any, *, headers: dict[str, str] | None = None, content_type: str = MERGE_PATCH
    ) -> requests.Response:
        headers = {"Content-Type": content_type, **(headers or {})}
        return self.session.patch(self.url(key), data=json.dumps(patch), headers=headers, timeout=30)

    def delete(self, key: str, *, headers: dict[str, str] | None = None) -> requests.Response:
        return self.session.delete(self.url(key), headers=headers, timeout=30)


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


def without_token(request: Any, **_: Any) -> None:
    """A botocore `before-send` hook that drops the request token from a TransactWriteItems, as a DynamoDB that
    did not honour it would see the retry."""
    if request.headers.get("X-Amz-Target", b"").endswith(b"TransactWriteItems"):
        body = json.loads(request.body)
        body.pop("ClientRequestToken", None)
        request.body = json.dumps(body).encode()
        request.headers["Content-Length"] = str(len(request.body))


@contextmanager
def hooked(client: Any, *hooks: Any, event: str = "before-send.dynamodb") -> Iterator[None]:
    """`hooks` on `client` for the block, in order, and off it after, whatever happens: for a client the block
    shares with others (the functions' one client per container)."""
    for hook in hooks:
        client.meta.events.register(event, hook)
    try:
        yield
    finally:
        for hook in hooks:
            client.meta.events.unregister(event, hook)


class _Body:
    """The raw stream AWSResponse reads its content from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data
