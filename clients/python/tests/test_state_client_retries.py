"""The retry policy against real HTTP: a scripted server for the answers hard to provoke on purpose
(write-outcome-unknown, 410, a Retry-After as an HTTP date, a lost answer), the local stack's own 503 with
Retry-After under injected DynamoDB throttling, and the local gateway's own throttling (429) on a stack with
a tiny rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from state_client import (
    AsyncStateClient,
    Gone,
    RateLimited,
    RetryPolicy,
    StateClient,
    Unavailable,
    WriteOutcomeUnknown,
)
from tests.stack import DevStack, start_devstack

PROBLEM = "https://state.service/problems/"
ENVELOPE = {"key": "k", "value": 1, "version": 1, "created_at": "2026-12-01T00:00:00Z",
            "updated_at": "2026-12-01T00:00:00Z", "updated_by": "alice", "expires_at": None}  # fmt: skip


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def unavailable(retry_after: str | None = "1", slug: str = "service-unavailable") -> Answer:
    headers = {"Content-Type": "application/problem+json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"type": PROBLEM + slug, "title": "Service unavailable", "status": 503, "detail": "try again"}
    return Answer(503, body, headers)


OK = Answer(200, ENVELOPE, {"ETag": '"1"'})


class Scripted:
    """A real HTTP server answering each request with the next scripted answer (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                scripted.requests.append((time.monotonic(), self.command, dict(self.headers)))
                answer = scripted.script.pop(0) if len(scripted.script) > 1 else scripted.script[0]
                payload = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                headers = {"Content-Type": "application/json", **answer.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def play(self, *answers: Answer) -> None:
        self.script, self.requests = list(answers), []

    def gaps(self) -> list[float]:
        times = [t for t, _, _ in self.requests]
        return [b - a for a, b in itertools.pairwise(times)]


@pytest.fixture(scope="module")
def server() -> Iterator[Scripted]:
    scripted = Scripted()
    yield scripted
    scripted.server.shutdown()


@pytest.fixture
def client(server: Scripted) -> Iterator[StateClient]:
    with StateClient(server.url, token="t", retry=RetryPolicy(attempts=5, budget=5.0)) as state:
        yield state


@pytest.mark.integration
def test_a_read_waits_retry_after_then_succeeds(server: Scripted, client: StateClient) -> None:
    server.play(unavailable("1"), Answer(429, {"message": "Too Many Requests"}, {"Retry-After": "1"}), OK)
    assert client.get("k").version == 1
    assert len(server.requests) == 3
    assert all(gap >= 0.95 for gap in server.gaps())
    assert all(headers["Authorization"] == "Bearer t" for _, _, headers in server.requests)


@pytest.mark.integration
def test_retry_after_as_an_http_date_is_honoured(server: Scripted, client: StateClient) -> None:
    server.play(unavailable(formatdate(time.time() + 2, usegmt=True)), OK)
    client.get("k")
    assert server.gaps()[0] >= 0.9  # a whole-second date: between 1 and 2 s from now


@pytest.mark.integration
@pytest.mark.parametrize(
    ("call", "sends"),
    [
        (lambda c: c.set("k", 1, if_match=1), 2),
        (lambda c: c.set("k", 1, if_none_match="*"), 2),
        (lambda c: c.update("k", {"a": 1}, if_match='"1"'), 2),
        (lambda c: c.delete("k", if_match=1), 2),
        (lambda c: c.set("k", 1), 1),  # unconditional writes are never sent twice
        (lambda c: c.set("k", 1, if_match="*"), 1),  # '*' holds as well after the write landed
        (lambda c: c.update("k", {"a": 1}), 1),
        (lambda c: c.delete("k"), 1),
    ],
    ids=["put-if-match", "put-create-only", "patch-if-match", "delete-if-match", "put", "put-if-match-any",
         "patch", "delete"],
)  # fmt: skip
def test_only_reads_and_conditional_writes_are_retried(server: Scripted, client: StateClient, call, sends) -> None:
    # A DELETE's answer has no body; the envelope's ETag serves the same purpose here.
    server.play(unavailable("0"), OK)
    if sends == 1:
        with pytest.raises(Unavailable) as refused:
            call(client)
        assert refused.value.retry_after == 0
    else:
        call(client)
    assert len(server.requests) == sends


@pytest.mark.integration
def test_write_outcome_unknown_is_never_retried(server: Scripted, client: StateClient) -> None:
    server.play(unavailable("1", "write-outcome-unknown"), OK)
    with pytest.raises(WriteOutcomeUnknown) as unknown:
        client.set("k", 1, if_match=1)
    assert len(server.requests) == 1
    assert isinstance(unknown.value, Unavailable)
    assert unknown.value.retry_after == 1


@pytest.mark.integration
def test_a_wait_past_the_budget_is_not_made(server: Scripted) -> None:
    server.play(unavailable("30", "stored-value-unreadable"))
    with StateClient(server.url, token="t", retry=RetryPolicy(budget=5.0)) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as refused:
            client.get("k")
    assert time.monotonic() - started < 1
    assert (len(server.requests), refused.value.retry_after) == (1, 30)
    assert refused.value.type == PROBLEM + "stored-value-unreadable"


@pytest.mark.integration
def test_attempts_and_budget_bound_the_retries(server: Scripted) -> None:
    server.play(unavailable(None))  # no Retry-After: jittered exponential backoff
    policy = RetryPolicy(attempts=4, budget=5.0, base=0.05)
    with StateClient(server.url, token="t", retry=policy) as client, pytest.raises(Unavailable):
        client.get("k")
    assert len(server.requests) == 4
    server.play(unavailable("1"))
    policy = RetryPolicy(attempts=10, budget=2.5)
    with StateClient(server.url, token="t", retry=policy) as client, pytest.raises(Unavailable):
        client.get("k")
    assert len(server.requests) == 3  # at 0, 1 and 2 s; a third wait would end past 2.5 s


@pytest.mark.integration
def test_the_async_client_retries_the_same_way(server: Scripted) -> None:
    async def scenario() -> None:
        async with AsyncStateClient(server.url, token="t", retry=RetryPolicy(budget=5.0)) as client:
            server.play(unavailable("1"), OK)
            assert (await client.get_version("k", 1)).version == 1
            server.play(unavailable("0"), OK)
            with pytest.raises(Unavailable):
                await client.set("k", 1)
            server.play(Answer(410, {"type": PROBLEM + "gone", "title": "Gone", "status": 410, "detail": "old"}))
            with pytest.raises(Gone) as gone:
                await client.get_version("k", 1)
            assert gone.value.detail == "old"

    asyncio.run(scenario())
    assert server.gaps() == []


@pytest.mark.integration
def test_after_a_lost_answer_only_reads_are_sent_again() -> None:
    # A server that reads each request and hangs up without answering: the write may have landed.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                accepted.append(1)
                connection.recv(65536)
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with StateClient(url, token="t", retry=RetryPolicy(attempts=3, budget=5.0, base=0.01)) as client:
            with pytest.raises(httpx.TransportError):
                client.get("k")
            assert len(accepted) == 3
            accepted.clear()
            with pytest.raises(httpx.TransportError):
                client.set("k", 1, if_match=1)
            assert len(accepted) == 1
    finally:
        listener.close()


# ------------------------------------------------------------------------------- the gateway's own 429
@pytest.fixture(scope="module")
def throttled_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # One request per route and second, no burst to speak of: concurrent requests mostly get 429.
    stack = start_devstack(
        tmp_path_factory.mktemp("client-throttled"),
        extra_env={"LOCAL_THROTTLING_BURST_LIMIT": "1", "LOCAL_THROTTLING_RATE_LIMIT": "2"},
    )
    try:
        yield stack
    finally:
        stack.stop()


@pytest.mark.e2e
def test_reads_throttled_by_the_gateway_are_retried_until_they_pass(throttled_stack: DevStack) -> None:
    stack = throttled_stack
    key = f"client:{uuid.uuid4().hex[:8]}"
    with StateClient(stack.base_url, token=stack.token(), retry=RetryPolicy(attempts=1)) as once:
        once.set(key, {"n": 1})
        with ThreadPoolExecutor(4) as pool:
            throttled = list(pool.map(lambda _: _outcome(lambda: once.get(key)), range(4)))
    assert "RateLimited" in throttled  # without retries, some fail

    time.sleep(1.0)
    with StateClient(stack.base_url, token=stack.token(), retry=RetryPolicy(attempts=20, budget=20.0)) as state:
        with ThreadPoolExecutor(4) as pool:
            values = list(pool.map(lambda _: state.get(key).value, range(4)))
        assert values == [{"n": 1}] * 4
        # An unconditional write is not retried: a 429 goes to the caller.
        with ThreadPoolExecutor(4) as pool:
            writes = list(pool.map(lambda i: _outcome(lambda: state.set(f"{key}-{i}", i)), range(4)))
    assert "RateLimited" in writes
    assert set(writes) <= {"ok", "RateLimited"}


def _outcome(call: Any) -> str:
    try:
        call()
    except RateLimited:
        return "RateLimited"
    return "ok"


# ------------------------------------------------------------------------ the service's own 503 and Retry-After
@pytest.fixture(scope="module")
def faulted_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # Each function's worker process answers its first three DynamoDB requests itself with DynamoDB's
    # ThrottlingException (devstack/failpoints.py): botocore's three attempts of the first request each
    # worker serves all fail, and the service answers 503 service-unavailable with Retry-After, nothing
    # written; the worker's later requests reach the table. The tests below run one request at a time, so
    # each function has one worker.
    stack = start_devstack(
        tmp_path_factory.mktemp("client-faulted"),
        extra_env={"STATE_FAILPOINTS": "1", "STATE_FAILPOINTS_SPEC": "dynamodb_send=return(throttle)*3"},
    )
    try:
        yield stack
    finally:
        stack.stop()


class Recording(httpx.HTTPTransport):
    """The client's own transport, noting each exchange: (sent, answered, method, status, Retry-After)."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[tuple[float, float, str, int, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent = time.monotonic()
        response = super().handle_request(request)
        self.exchanges.append(
            (sent, time.monotonic(), request.method, response.status_code, response.headers.get("Retry-After"))
        )
        return response

    def of(self, method: str) -> list[tuple[float, float, str, int, str | None]]:
        return [exchange for exchange in self.exchanges if exchange[2] == method]


@pytest.mark.e2e
def test_the_services_503_is_typed_with_its_retry_after_and_the_wait_is_honoured(faulted_stack: DevStack) -> None:
    stack = faulted_stack
    key = f"client:{uuid.uuid4().hex[:8]}"
    recording = Recording()
    patient = RetryPolicy(attempts=5, budget=30.0)
    with StateClient(stack.base_url, token=stack.token(), timeout=60, retry=patient, transport=recording) as state:
        # A conditional write and a read: sent again once the Retry-After the service named has passed.
        assert state.set(key, {"n": 1}, if_none_match="*").version == 1
        assert state.get(key, consistent=True).value == {"n": 1}
        # An unconditional write is never sent again: the 503 goes to the caller, typed, with its Retry-After.
        with pytest.raises(Unavailable) as refused:
            state.delete(key)
        assert (refused.value.status, refused.value.retry_after) == (503, 1.0)
        assert refused.value.type == PROBLEM + "service-unavailable"
        # It wrote nothing: the key is still at version 1, and a delete now makes version 2.
        assert state.delete(key, if_match=1) == 2
    for method, ok in (("PUT", 201), ("GET", 200)):
        (_, answered, _, status, wait), (resent, _, _, again, _) = recording.of(method)
        assert (status, wait, again) == (503, "1", ok), recording.exchanges
        assert resent - answered >= 1.0, f"{method} sent again {resent - answered:.3f} s after Retry-After: 1"
    assert [exchange[3] for exchange in recording.of("DELETE")] == [503, 204]

    async def patch_without_retries() -> None:
        async with AsyncStateClient(stack.base_url, token=stack.token(), retry=RetryPolicy(attempts=1)) as state:
            await state.set(key, {"n": 1})
            with pytest.raises(Unavailable) as refused:
                await state.update(key, {"n": 2}, if_match=3)
            assert refused.value.retry_after == 1.0
            assert (await state.get(key, consistent=True)).value == {"n": 1}

    asyncio.run(asyncio.wait_for(patch_without_retries(), 120))
