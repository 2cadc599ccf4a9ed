"""The emulator's one-at-a-time rule: never two requests inside moto at once (DynamoDB's conditional writes
and transactions need it), and of the requests waiting, the table's own go first. The middleware wraps a WSGI
app that holds each request until the test lets it go, so who is inside, and in which order they got there,
is observed, not timed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from werkzeug.serving import make_server

from devstack.moto_server import SerializingMiddleware, goes_first

pytestmark = pytest.mark.unit

PUT_ITEM = "DynamoDB_20120810.PutItem"
GET_RECORDS = "DynamoDBStreams_20120810.GetRecords"
PUT_EVENTS = "AWSEvents.PutEvents"


class HoldingApp:
    """A WSGI app that notes the order requests enter in and keeps each inside until `release(name)`."""

    def __init__(self, names: Iterable[str]) -> None:
        self.order: list[str] = []
        self.inside = 0
        self.most_inside = 0
        self.entered = {name: threading.Event() for name in names}
        self._go = {name: threading.Event() for name in names}
        self._count = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        name = environ["test.name"]
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.order.append(name)
        self.entered[name].set()
        self._go[name].wait(5)
        with self._count:
            self.inside -= 1
        start_response("200 OK", [])
        return [b"{}"]

    def release(self, name: str) -> None:
        self._go[name].set()


def serve(app: SerializingMiddleware, name: str, target: str) -> threading.Thread:
    def run() -> None:
        list(app({"test.name": name, "HTTP_X_AMZ_TARGET": target}, lambda *_: None))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_until_queued(app: SerializingMiddleware, count: int) -> None:
    for _ in range(500):
        if app.lock.waiting == count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{count} requests never queued")


@pytest.mark.parametrize("second", [PUT_ITEM, GET_RECORDS, PUT_EVENTS, ""])
def test_a_second_request_of_any_service_waits_until_the_first_is_done(second):
    inner = HoldingApp(["a", "b"])
    app = SerializingMiddleware(inner)
    threads = [serve(app, "a", PUT_ITEM)]
    assert inner.entered["a"].wait(5)
    threads.append(serve(app, "b", second))
    wait_until_queued(app, 1)

    assert not inner.entered["b"].wait(0.2)
    inner.release("a")
    assert inner.entered["b"].wait(5)
    inner.release("b")
    for thread in threads:
        thread.join(5)
    assert inner.most_inside == 1
    assert not app.lock.held


def test_of_the_waiting_requests_the_table_s_go_before_the_stream_s_and_other_services():
    inner = HoldingApp(["busy", "stream", "events", "write", "read"])
    app = SerializingMiddleware(inner)
    threads = [serve(app, "busy", GET_RECORDS)]
    assert inner.entered["busy"].wait(5)
    # Queued in this order while the emulator is busy: the stream's and EventBridge's first.
    for count, (name, target) in enumerate(
        [("stream", GET_RECORDS), ("events", PUT_EVENTS), ("write", PUT_ITEM), ("read", "DynamoDB_20120810.GetItem")],
        start=1,
    ):
        threads.append(serve(app, name, target))
        wait_until_queued(app, count)
    for name in ["busy", "write", "read", "stream", "events"]:
        inner.release(name)
    for thread in threads:
        thread.join(5)

    assert inner.order[0] == "busy"
    assert set(inner.order[1:3]) == {"write", "read"}
    assert set(inner.order[3:]) == {"stream", "events"}
    assert inner.most_inside == 1


def test_only_the_table_s_own_requests_go_first():
    assert goes_first({"HTTP_X_AMZ_TARGET": PUT_ITEM})
    assert not goes_first({"HTTP_X_AMZ_TARGET": GET_RECORDS})
    assert not goes_first({"HTTP_X_AMZ_TARGET": PUT_EVENTS})
    assert not goes_first({"PATH_INFO": "/moto-api/reset"})


def test_a_client_that_resets_its_connection_mid_request_does_not_keep_the_emulator():
    # A client that gives up (botocore's read timeout) closes its connection while the emulator serves it;
    # werkzeug then fails reading what is left of the request, before closing the body. The lock must not
    # depend on that close: every later request would wait for ever.
    inner = HoldingApp(["gone", "next"])
    app = SerializingMiddleware(lambda environ, start: inner({**environ, "test.name": environ["PATH_INFO"][1:]}, start))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert inner.entered["gone"].wait(5)
        # Gone before the answer: the answer then meets a closed socket, whose reset werkzeug trips on.
        client.close()
        inner.release("gone")
        inner.release("next")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
            again.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            assert again.recv(100).startswith(b"HTTP/1.1 200")
        assert not app.lock.held
    finally:
        server.shutdown()
        server.server_close()
