"""The WebSocket watch's core through its real handlers (watch_socket, watch_fanout) against the moto server:
the watch table from template.yaml, real stream records, the history as the publisher writes it, real
tokens from the dev issuer, and PostToConnection through botocore to a small @connections endpoint (an
emulation of API Gateway's management API that records what each connection received).

Each promise of docs/watch.md has a test that tries to break it: the replay and the fan-out racing at the
seam, a retried batch, a gone connection, a throttled post, hostile keys, prefixes and messages, RBAC
narrowed after subscribing, an expired token.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from devstack.token import mint
from state_core import failpoints, runtime
from state_core.domain.errors import NotFound
from state_core.domain.watch import RESUME_RETENTION_SECONDS, GiveBackFailed, encode_cursor, encode_prefix_cursor
from state_core.security import audit
from state_core.service.manager import StateManager
from state_core.storage.history import HistoryStore
from state_core.storage.state import StateStore
from state_core.stream.lifecycle import StreamLifecycle
from tests.doubles import LambdaContext, NoMetrics, utc_now
from tests.streams import record_history, stream_records

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------------------- @connections
class Connections:
    """What each connection received, and the faults to answer with (410 Gone, 429 throttling, a pause)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.closed: set[str] = set()
        self.gone: set[str] = set()
        self.throttle: dict[str, int] = {}
        # (connection id, message type) -> (entered, release): the post waits for `release` once.
        self.pauses: dict[tuple[str, str], tuple[threading.Event, threading.Event]] = {}

    def messages(self, connection_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            got = list(self.received[connection_id])
        return [m for m in got if kind is None or m["type"] == kind]

    def pause(self, connection_id: str, kind: str) -> tuple[threading.Event, threading.Event]:
        events = (threading.Event(), threading.Event())
        self.pauses[(connection_id, kind)] = events
        return events


def _handler(state: Connections) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, error: str | None = None) -> None:
            body = json.dumps({"message": error or ""}).encode() if error else b""
            self.send_response(status)
            if error:
                self.send_header("x-amzn-ErrorType", error)
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            connection_id = self.path.rsplit("/@connections/", 1)[1]
            data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if connection_id in state.gone or connection_id in state.closed:
                self._answer(410, "GoneException")
                return
            with state.lock:
                left = state.throttle.get(connection_id, 0)
                if left:
                    state.throttle[connection_id] = left - 1
            if left:
                self._answer(429, "LimitExceededException")
                return
            paused = state.pauses.pop((connection_id, data["type"]), None)
            if paused is not None:
                paused[0].set()
                paused[1].wait(10)
            with state.lock:
                state.received[connection_id].append(data)
            self._answer(200)

        def do_DELETE(self) -> None:
            state.closed.add(self.path.rsplit("/@connections/", 1)[1])
            self._answer(204)

    return Handler


@pytest.fixture(scope="module")
def connections() -> Any:
    state = Connections()

    class Server(ThreadingHTTPServer):
        # The fan-out posts from 32 threads at once: with socketserver's backlog of 5, connections beyond it
        # waited out the poster's 1 s connect timeout on a loaded machine, and their versions were left behind.
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}/watch"  # type: ignore[attr-defined]
    yield state
    server.shutdown()


@pytest.fixture(scope="module")
def watch_table(moto_server: str, state_template: Any) -> str:
    name = f"watch-test-{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    ddb.create_table(**state_template.table_create_kwargs("WatchTable", name))
    return name


@pytest.fixture(scope="module")
def watch_env(handler_environment: str, watch_table: str, connections: Any, dev_issuer: Any) -> Any:
    os.environ.update(
        {
            "STATE_WATCH_TABLE_NAME": watch_table,
            "STATE_WS_ENDPOINT": connections.endpoint,
            "STATE_OIDC_ISSUER": dev_issuer.issuer,
            "STATE_OIDC_AUDIENCE": "state-service",
        }
    )
    for built in (runtime.watch_settings, runtime.watch_service, runtime._token_issuer):
        built.cache_clear()
    yield connections
    for built in (runtime.watch_settings, runtime.watch_service, runtime._token_issuer):
        built.cache_clear()


@pytest.fixture
def manager(store: StateStore) -> StateManager:
    return StateManager(store, clock=utc_now, metrics=NoMetrics())


@pytest.fixture
def lifecycle(client: Any, state_table: str, store: StateStore) -> StreamLifecycle:
    history = HistoryStore(client, state_table, retention_seconds=90 * 86_400)
    return StreamLifecycle(client, state_table, history=history, states=store, blobs=store.blobs, clock=utc_now)


@pytest.fixture
def token(dev_issuer: Any) -> Any:
    def make(sub: str = "alice", scope: str = "state:read", **kwargs: Any) -> str:
        return mint(sub, scope, issuer=dev_issuer.issuer, state_dir=dev_issuer.state_dir, **kwargs)

    return make


def ws_event(route: str, connection_id: str, *, body: Any = None, headers: dict[str, str] | None = None,
             query: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """An API Gateway WebSocket proxy event, as the integration receives it."""
    event: dict[str, Any] = {
        "requestContext": {
            "routeKey": route,
            "eventType": {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}.get(route, "MESSAGE"),
            "connectionId": connection_id,
            "requestId": uuid.uuid4().hex,
            "stage": "watch",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "isBase64Encoded": False,
    }
    if headers is not None:
        event["headers"] = headers
    if query is not None:
        event["queryStringParameters"] = query
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    return event


class Watcher:
    """One connection driven through the real handler."""

    def __init__(self, invoke: Any, connections: Connections, token: str) -> None:
        self.invoke = invoke
        self.connections = connections
        self.id = uuid.uuid4().hex
        answer = invoke("watch_socket", ws_event("$connect", self.id, headers={"Authorization": f"Bearer {token}"}))
        assert answer["statusCode"] == 200, answer

    def send(self, message: Any) -> None:
        route = message.get("type", "$default") if isinstance(message, dict) else "$default"
        if route not in ("subscribe", "unsubscribe", "refresh"):
            route = "$default"
        assert self.invoke("watch_socket", ws_event(route, self.id, body=message))["statusCode"] == 200

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self.connections.messages(self.id, kind)

    def send_disconnect(self) -> None:
        self.invoke("watch_socket", ws_event("$disconnect", self.id))
        self.connections.closed.add(self.id)

    def versions(self, subscription: str = "s") -> list[int]:
        return [m["version"] for m in self.messages("change") if m["subscription"] == subscription]


@pytest.fixture
def watcher(invoke: Any, watch_env: Any, token: Any) -> Any:
    def open_one(sub: str = "alice", scope: str = "state:read", **kwargs: Any) -> Watcher:
        return Watcher(invoke, watch_env, token(sub, scope, **kwargs))

    return open_one


@pytest.fixture
def fan_out(invoke: Any, state_table: str) -> Any:
    """fan_out(*keys[, records]): the fan-out's stream batch of every record of `keys` so far."""

    def run(*keys: str, records: list[dict[str, Any]] | None = None) -> None:
        batch = records if records is not None else stream_records(state_table, set(keys))
        assert invoke("watch_fanout", {"Records": batch}) == {"batchItemFailures": []}

    return run


def user_key(sub: str = "alice") -> str:
    return f"user:{sub}:{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------------------------- delivery
def test_every_version_arrives_once_in_order_with_its_value_and_cursor(watcher, manager, fan_out):
    key = user_key()
    w = watcher(scope="state:read:user:${sub}:*")
    w.send({"type": "subscribe", "id": "s", "key": key})
    assert w.messages("subscribed") == [
        {"type": "subscribed", "id": "s", "key": key, "version": 0, "cursor": encode_cursor(key, 0)}
    ]
    manager.put(key, {"n": 1}, actor="alice")
    manager.patch(key, {"n": 2}, actor="alice")
    manager.delete(key, actor="alice")
    manager.put(key, "again", actor="alice")
    fan_out(key)
    changes = w.messages("change")
    assert [(c["version"], c["operation"]) for c in changes] == [
        (1, "created"), (2, "updated"), (3, "deleted"), (4, "created")
    ]  # fmt: skip
    assert [c.get("value") for c in changes] == [{"n": 1}, {"n": 2}, None, "again"]
    assert changes[1]["cursor"] == encode_cursor(key, 2)
    fan_out(key)  # the same batch again (a retried invocation): nothing new
    assert w.versions()[:4] == [1, 2, 3, 4]
    assert len(w.versions()) <= 5  # at most the last claimed version again, never an older one


def test_a_prefix_subscription_gets_the_keys_under_it_and_nothing_else(watcher, manager, fan_out):
    base = f"p{uuid.uuid4().hex[:8]}"
    w = watcher(scope="state:read")
    w.send({"type": "subscribe", "id": "s", "prefix": f"{base}:a:"})
    inside, deeper, outside, lookalike = f"{base}:a:1", f"{base}:a:b:2", f"{base}:b:1", f"{base}:ab"
    for k in (inside, deeper, outside, lookalike):
        manager.put(k, 1, actor="alice")
    fan_out(inside, deeper, outside, lookalike)
    assert sorted(m["key"] for m in w.messages("change")) == sorted([inside, deeper])


def test_a_large_value_goes_out_without_its_value(watcher, manager, fan_out):
    key = user_key()
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key})
    manager.put(key, "x" * 200_000, actor="alice")
    fan_out(key)
    (change,) = w.messages("change")
    assert change["value_omitted"] is True
    assert change["reason"] == "too-large"
    assert "value" not in change


def test_a_gone_connection_is_forgotten_at_once(watcher, watch_env, manager, fan_out, watch_table):
    key = user_key()
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key})
    watch_env.gone.add(w.id)
    manager.put(key, 1, actor="alice")
    fan_out(key)
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    left = ddb.query(
        TableName=watch_table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": f"c#{w.id}"}}
    )["Items"]
    index = ddb.query(
        TableName=watch_table, KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"t#k#{key}"}},
    )["Items"]  # fmt: skip
    assert left == []
    assert index == []


def test_a_throttled_post_is_caught_up_at_the_next_change(watcher, watch_env, manager, fan_out, lifecycle, state_table):
    key = user_key()
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key})
    manager.put(key, 1, actor="alice")
    watch_env.throttle[w.id] = 3  # every attempt of version 1's post
    fan_out(key)
    assert w.versions() == []
    manager.put(key, 2, actor="alice")
    record_history(lifecycle, stream_records(state_table, {key}))
    fan_out(key)
    assert w.versions() == [1, 2]


def test_a_claim_the_table_applied_but_whose_answer_was_lost_is_given_back_and_caught_up(
    watcher, manager, fan_out, lifecycle, state_table
):
    """The claim of version 1 lands but its answer never comes (the fan-out sees an error): left claimed, version
    2's claim would go through and 1 would never be sent. It is given back, and the next change catches up."""
    key = user_key()
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key})
    manager.put(key, 1, actor="alice")
    records = stream_records(state_table, {key})
    lost = []

    def answer_lost(name: str, **context: Any) -> None:
        if name == "watch_after_claim" and context["claimed"] and not lost:
            lost.append(context["version"])
            raise ReadTimeoutError(endpoint_url="http://table")

    failpoints.install(answer_lost)
    try:
        fan_out(key, records=records)  # the batch itself succeeds: one watcher's trouble is its own
    finally:
        failpoints.uninstall()
    assert lost == [1]
    assert w.versions() == []
    manager.put(key, 2, actor="alice")
    record_history(lifecycle, stream_records(state_table, {key}))
    fan_out(key, records=stream_records(state_table, {key})[len(records) :])
    assert w.versions() == [1, 2]


def test_a_version_neither_posted_nor_given_back_fails_the_batch_whose_retry_sends_it(
    watcher, watch_env, manager, fan_out, invoke, lifecycle, state_table
):
    """The post fails and so does the give-back (the table timing out): left claimed, the next version's claim
    would go through and this one never be sent. The batch fails instead, and its retry claims it again."""
    key = user_key()
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key})
    manager.put(key, 1, actor="alice")
    records = stream_records(state_table, {key})
    watch_env.throttle[w.id] = 3  # every attempt of version 1's post

    def table_times_out(name: str, **context: Any) -> None:
        if name == "watch_give_back":
            raise EndpointConnectionError(endpoint_url="http://table")

    failpoints.install(table_times_out)
    try:
        with pytest.raises(GiveBackFailed):
            invoke("watch_fanout", {"Records": records})
    finally:
        failpoints.uninstall()
    assert w.versions() == []
    fan_out(key, records=records)  # the retried batch
    assert w.versions() == [1]
    manager.put(key, 2, actor="alice")
    later = stream_records(state_table, {key})[len(records) :]
    fan_out(key, records=later)
    assert w.versions() == [1, 2]


def test_a_throttled_post_is_sent_by_the_sweep_when_no_other_change_comes(
    watcher, watch_env, manager, fan_out, lifecycle, state_table, invoke
):
    key = user_key()
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key})
    manager.put(key, 1, actor="alice")
    watch_env.throttle[w.id] = 3
    fan_out(key)
    assert w.versions() == []
    record_history(lifecycle, stream_records(state_table, {key}))
    assert invoke("watch_fanout", {}) == {}  # the schedule
    assert w.versions() == [1]


# ------------------------------------------------------------------------------------------ replay
def test_since_replays_the_versions_after_the_cursor_then_goes_live(watcher, manager, fan_out, lifecycle, state_table):
    key = user_key()
    for n in range(1, 6):
        manager.put(key, n, actor="alice")
    record_history(lifecycle, stream_records(state_table, {key}))
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 2)})
    assert w.messages("subscribed")[0]["version"] == 2
    assert w.versions() == [3, 4, 5]
    assert [m["value"] for m in w.messages("change")] == [3, 4, 5]
    manager.put(key, 6, actor="alice")
    fan_out(key)  # versions 1-5 are in the batch too: the watermark drops them
    assert w.versions() == [3, 4, 5, 6]


def test_the_replay_and_the_fan_out_racing_at_the_seam_send_each_version_once_in_order(
    watcher, watch_env, manager, fan_out, lifecycle, state_table
):
    key, tail = key_with_recorded_history(manager, lifecycle, state_table, versions=4)
    w = watcher()
    # The replay stops in its `subscribed` post, under its lease, while versions 5 and 6 are written and fanned
    # out. The pause stays well inside the poster's 2 s read timeout: only the new stream records are read.
    entered, release = watch_env.pause(w.id, "subscribed")
    subscribing = threading.Thread(
        target=w.send, args=({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)},)
    )
    subscribing.start()
    assert entered.wait(10)
    manager.put(key, 5, actor="alice")
    manager.put(key, 6, actor="alice")
    records = tail.poll()
    record_history(lifecycle, records)
    fan_out(key, records=records)  # finds the replay's lease: leaves 5 and 6 pending
    assert w.versions() == []
    release.set()
    subscribing.join(10)
    assert w.versions() == [2, 3, 4, 5, 6]
    fan_out(key, records=records)
    manager.put(key, 7, actor="alice")
    fan_out(key)
    assert w.versions() == [2, 3, 4, 5, 6, 7]


def test_a_replay_that_outlasts_its_lease_never_sends_a_version_the_fan_out_took_over(
    watcher, manager, fan_out, lifecycle, state_table, client, watch_table
):
    """The replay's history read outlasts its lease (a slow table): meanwhile the fan-out, finding the lease run
    out, claims the next versions and sends them. The replay must then send none of them again, and the
    subscription stands: the client gets every version once, in order, and no error."""
    key, tail = key_with_recorded_history(manager, lifecycle, state_table, versions=4)
    w = watcher()
    taken_over = []

    def lease_runs_out(name: str, **context: Any) -> None:
        if name != "watch_replay_before_post" or context["version"] != 3 or taken_over:
            return
        taken_over.append(True)
        # What 15 s of a slow read would leave: the watermark's lease run out.
        client.update_item(
            TableName=watch_table,
            Key={"pk": {"S": f"c#{w.id}"}, "sk": {"S": f"w#s#{key}"}},
            UpdateExpression="SET lease_until = :past",
            ExpressionAttributeValues={":past": {"N": "0"}},
        )
        manager.put(key, 5, actor="alice")
        records = tail.poll()
        record_history(lifecycle, records)
        fan_out(key)  # claims 3, 4 and 5 and sends them

    failpoints.install(lease_runs_out)
    try:
        w.send({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)})
    finally:
        failpoints.uninstall()
    assert taken_over
    assert w.versions() == [2, 3, 4, 5]
    assert w.messages("error") == []
    manager.put(key, 6, actor="alice")
    records = tail.poll()
    record_history(lifecycle, records)
    fan_out(key, records=records)
    assert w.versions() == [2, 3, 4, 5, 6]


def test_a_replay_short_of_time_after_a_post_still_records_it_so_no_catch_up_sends_it_again(
    watcher, manager, fan_out, lifecycle, state_table, client, watch_table, invoke, watch_env
):
    """The subscribe's replay posts a version with just enough of the invocation left for one DynamoDB attempt,
    and the post is slow: the record of what was sent must still be made. Refused for want of time, the
    watermark stayed behind, and the next catch-up sent the version again on the same subscription."""
    key, tail = key_with_recorded_history(manager, lifecycle, state_table, versions=4)
    w = watcher()
    entered, release = watch_env.pause(w.id, "change")
    # Released after 1.5 s, inside the poster's 2 s read timeout: the post of version 2 eats the last second of
    # the budget the renewal before it had, so the record after it finds less than one attempt's worth left.

    def release_late() -> None:
        entered.wait(10)
        time.sleep(1.5)
        release.set()

    threading.Thread(target=release_late, daemon=True).start()
    subscribe = ws_event(
        "subscribe", w.id, body={"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)}
    )
    invoke(
        "watch_socket", subscribe, LambdaContext(remaining_ms=int((runtime.DYNAMODB_ATTEMPT_BUDGET_SECONDS + 1) * 1000))
    )
    assert entered.is_set()
    assert w.versions() == [2]  # then out of time before the next version's renewal: a failed subscribe
    mark = client.get_item(TableName=watch_table, Key={"pk": {"S": f"c#{w.id}"}, "sk": {"S": f"w#s#{key}"}})
    assert mark["Item"]["delivered"]["N"] == "2"
    # Its lease runs out; the next change catches the subscription up from what it was sent.
    client.update_item(
        TableName=watch_table,
        Key={"pk": {"S": f"c#{w.id}"}, "sk": {"S": f"w#s#{key}"}},
        UpdateExpression="SET lease_until = :past",
        ExpressionAttributeValues={":past": {"N": "0"}},
    )
    manager.put(key, 5, actor="alice")
    record_history(lifecycle, tail.poll())
    fan_out(key)
    assert w.versions() == [2, 3, 4, 5]


def test_a_watermark_write_out_of_time_answers_503_naming_the_subscription_and_a_new_id_resumes(
    watcher, manager, fan_out, lifecycle, state_table, invoke
):
    """The replay's history read of version 3 takes what is left of the invocation but one DynamoDB attempt's
    worth: the lease renewal before its post is refused for want of time (OutOfTime), and so is the removal
    of the failed subscription. The client must get the documented `error` 503 naming the subscription, not
    API Gateway's id-less "Internal server error" (an exception out of the handler); the subscription left
    behind stops at `unsubscribe`, and a subscribe under a new id from the last cursor resumes, once each."""
    from state_core import deadline

    key, tail = key_with_recorded_history(manager, lifecycle, state_table, versions=4)
    w = watcher()
    slowed = []

    def history_read_eats_the_budget(name: str, **context: Any) -> None:
        if name == "watch_replay_before_post" and context["version"] == 3 and not slowed:
            slowed.append(True)
            left = deadline.remaining()
            assert left is not None
            time.sleep(max(0.0, left - runtime.DYNAMODB_ATTEMPT_BUDGET_SECONDS + 0.5))

    subscribe = ws_event(
        "subscribe", w.id, body={"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)}
    )
    failpoints.install(history_read_eats_the_budget)
    try:
        answer = invoke(
            "watch_socket",
            subscribe,
            LambdaContext(remaining_ms=int((runtime.DYNAMODB_ATTEMPT_BUDGET_SECONDS + 3) * 1000)),
        )
    finally:
        failpoints.uninstall()
    assert slowed
    assert answer["statusCode"] == 200
    assert w.versions() == [2]
    (error,) = w.messages("error")
    assert (error["status"], error["id"]) == (503, "s")
    # What the client does (docs/watch.md, "A subscribe that failed"): unsubscribe, then a new id from the cursor
    # of the last change it processed.
    w.send({"type": "unsubscribe", "id": "s"})
    assert w.messages("unsubscribed") == [{"type": "unsubscribed", "id": "s"}]
    cursor = w.messages("change")[-1]["cursor"]
    w.send({"type": "subscribe", "id": "s2", "key": key, "since": cursor})
    assert w.versions("s2") == [3, 4]
    manager.put(key, 5, actor="alice")
    record_history(lifecycle, tail.poll())
    fan_out(key)
    assert (w.versions(), w.versions("s2")) == ([2], [3, 4, 5])


def test_a_cursor_older_than_the_history_gets_resync(watcher, manager, fan_out, lifecycle, state_table, client):
    key = user_key()
    for n in range(1, 4):
        manager.put(key, n, actor="alice")
    record_history(lifecycle, stream_records(state_table, {key}))
    # Version 2's history item left retention (DynamoDB's TTL); the key's last write is long past the lag.
    client.delete_item(TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "v#000000000002"}})
    client.update_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "state"}},
        UpdateExpression="SET updated_at = :old", ExpressionAttributeValues={":old": {"S": "2020-01-01T00:00:00.000Z"}},
    )  # fmt: skip
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)})
    assert [m["key"] for m in w.messages("resync")] == [key]
    manager.put(key, 4, actor="alice")
    fan_out(key)
    assert w.versions() == [4]


def test_a_version_recorded_between_the_replays_two_reads_is_sent_not_taken_for_gone(
    watcher, manager, lifecycle, state_table
):
    """The replay misses version 2 in the history, then the publisher records 2 and 3 together before it
    looks for a later version: 3 recorded must not make 2 look gone (a false resync breaks gap-free)."""
    key = user_key()
    for n in range(1, 4):
        manager.put(key, n, actor="alice")
    records = stream_records(state_table, {key})
    record_history(lifecycle, records[:1])  # the stream lags: only version 1 recorded

    def publisher_lands(name: str, **context: Any) -> None:
        if name == "watch_history_between_reads" and context["version"] == 2:
            record_history(lifecycle, records[1:])

    failpoints.install(publisher_lands)
    try:
        w = watcher()
        w.send({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)})
    finally:
        failpoints.uninstall()
    assert w.messages("resync") == []
    assert w.versions() == [2, 3]


# ---------------------------------------------------------------------------------- prefix resume
def per_key(w: Watcher, subscription: str = "s") -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)
    for m in w.messages("change"):
        if m["subscription"] == subscription:
            seen[m["key"]].append(m["version"])
    return dict(seen)


def away(watcher, manager, fan_out, lifecycle, state_table, *, dropped: int = 0):
    """A prefix watcher receives a:1-2, b:1, d:1, disconnects, and meanwhile a:3, c:1 and d's deletion (2) are
    written and fanned out. Returns the prefix, its keys, the watch's cursor and the versions the client
    processed (the last `dropped` changes it received lost in flight)."""
    base = f"r{uuid.uuid4().hex[:8]}"
    prefix = f"{base}:g:"
    a, b, c, d = (f"{prefix}{name}" for name in "abcd")
    w = watcher(scope="state:read")
    w.send({"type": "subscribe", "id": "s", "prefix": prefix})
    (subscribed,) = w.messages("subscribed")
    assert "version" not in subscribed
    for key, value in ((a, 1), (a, 2), (b, 1), (d, 1)):
        manager.put(key, value, actor="alice")
    record_history(lifecycle, stream_records(state_table, {a, b, c, d}))
    fan_out(a, b, c, d)
    received = [(m["key"], m["version"]) for m in w.messages("change")]
    assert sorted(received) == [(a, 1), (a, 2), (b, 1), (d, 1)]
    w.send_disconnect()
    manager.put(a, 3, actor="alice")
    manager.put(c, 1, actor="alice")
    manager.delete(d, actor="alice")
    record_history(lifecycle, stream_records(state_table, {a, b, c, d}))
    fan_out(a, b, c, d)  # nobody watches now: journaled only
    processed: dict[str, int] = {}
    for key, version in received[: len(received) - dropped]:
        processed[key] = version
    return prefix, (a, b, c, d), subscribed["cursor"], processed


def test_a_prefix_watcher_resumes_with_its_cursor_and_gets_every_version_it_missed_once_in_order(
    watcher, manager, fan_out, lifecycle, state_table
):
    prefix, (a, b, c, d), cursor, processed = away(watcher, manager, fan_out, lifecycle, state_table)
    w = watcher(scope="state:read")
    w.send({"type": "subscribe", "id": "s", "prefix": prefix, "since": cursor, "versions": processed})
    assert w.messages("resync") == []
    assert w.messages("subscribed") == [{"type": "subscribed", "id": "s", "prefix": prefix, "cursor": cursor}]
    assert per_key(w) == {a: [3], c: [1], d: [2]}
    assert [m["operation"] for m in w.messages("change") if m["key"] == d] == ["deleted"]
    manager.put(a, 4, actor="alice")
    manager.put(b, 2, actor="alice")
    fan_out(a, b, c, d)  # every version of the keys again (as a retried batch): only the new ones go out
    assert per_key(w) == {a: [3, 4], b: [2], c: [1], d: [2]}


def test_changes_lost_in_flight_at_the_disconnect_are_sent_again_from_the_clients_versions(
    watcher, manager, fan_out, lifecycle, state_table
):
    """The server sent a:2 (say) but the client never processed it: what the client names is what counts."""
    prefix, (a, b, c, d), cursor, processed = away(watcher, manager, fan_out, lifecycle, state_table, dropped=2)
    w = watcher(scope="state:read")
    w.send({"type": "subscribe", "id": "s", "prefix": prefix, "since": cursor, "versions": processed})
    seen = per_key(w)
    for key in (a, b, c, d):
        assert seen.get(key, []) == list(range(processed.get(key, 0) + 1, store_version(state_table, key) + 1))


def test_the_prefix_replay_and_the_fan_out_racing_at_the_seam_send_each_version_once_in_order(
    watcher, watch_env, manager, fan_out, lifecycle, state_table
):
    prefix, (a, b, c, d), cursor, processed = away(watcher, manager, fan_out, lifecycle, state_table)
    keys = {a, b, c, d}
    tail = StreamTail(state_table, keys)
    tail.poll()  # what is recorded already
    w = watcher(scope="state:read")
    # The replay stops in its first change post, holding that key's lease, while every key is written again
    # and fanned out: the fan-out meets the held lease (pending), keys the replay has not reached (it catches
    # them up itself from the client's versions), and a key the client never received (c).
    entered, release = watch_env.pause(w.id, "change")
    resume = {"type": "subscribe", "id": "s", "prefix": prefix, "since": cursor, "versions": processed}
    subscribing = threading.Thread(target=w.send, args=(resume,))
    subscribing.start()
    assert entered.wait(10)
    for key in (a, b, c, d):
        manager.put(key, "again", actor="alice")
    records = tail.poll()
    record_history(lifecycle, records)
    fan_out(records=records)
    release.set()
    subscribing.join(10)
    fan_out(a, b, c, d)
    seen = per_key(w)
    for key in keys:
        assert seen[key] == list(range(processed.get(key, 0) + 1, store_version(state_table, key) + 1)), key


def test_a_resumed_prefix_removed_while_a_key_is_caught_up_sends_nothing_more_of_it(
    watcher, manager, fan_out, lifecycle, state_table
):
    """A deliverer (here the resume's replay; the fan-out's catch-up takes the same path) starts a key of a
    resumed subscription just as the client unsubscribes. Without the client's versions, which went with the
    subscription, it must send nothing: starting b from the history would send b:1, which the client has."""
    prefix, (_, b, _, _), cursor, processed = away(watcher, manager, fan_out, lifecycle, state_table)
    w = watcher(scope="state:read")

    def unsubscribe(name: str, **context: Any) -> None:
        if name == "watch_resume_start" and context["key"] == b:
            w.send({"type": "unsubscribe", "id": "s"})

    failpoints.install(unsubscribe)
    try:
        w.send({"type": "subscribe", "id": "s", "prefix": prefix, "since": cursor, "versions": processed})
    finally:
        failpoints.uninstall()
    assert "unsubscribed" in [m["type"] for m in w.messages()]
    assert b not in per_key(w)
    assert w.messages("error") == []


def test_a_fan_out_behind_the_clients_versions_never_sends_a_resumed_prefix_what_the_client_named(
    watcher, manager, fan_out, lifecycle, state_table
):
    """A client can be ahead of the stream: a replay reads the history, not the stream. A resume names k:3, got
    from an earlier resume's replay, and the fan-out, still behind, then meets k (k:2 and k:3) before the
    resume's replay does: it starts k after 3, the version the client named, not at the older version it was
    handed, from which it would claim k:3 and send it again. (The load test saw this after failed subscribes:
    each resume gets ahead of a lagging stream, and a replay stopped short leaves keys to the fan-out.)"""
    prefix = f"r{uuid.uuid4().hex[:8]}:g:"
    a, k = f"{prefix}a", f"{prefix}k"
    first = watcher(scope="state:read")
    first.send({"type": "subscribe", "id": "s", "prefix": prefix})
    cursor = first.messages("subscribed")[0]["cursor"]
    manager.put(a, 1, actor="alice")
    manager.put(k, 1, actor="alice")
    tail = StreamTail(state_table, {a, k})
    records = tail.poll()
    record_history(lifecycle, records)
    fan_out(records=records)  # journaled under the prefix: a and k changed since the watch began
    assert per_key(first) == {a: [1], k: [1]}
    first.send_disconnect()
    manager.put(k, 2, actor="alice")
    manager.put(k, 3, actor="alice")
    lagging = tail.poll()
    record_history(lifecycle, lagging)  # the history has k:2 and k:3; the fan-out has not got to them yet
    second = watcher(scope="state:read")
    second.send({"type": "subscribe", "id": "s", "prefix": prefix, "since": cursor, "versions": {a: 1, k: 1}})
    assert per_key(second) == {k: [2, 3]}  # replayed from the history, ahead of the fan-out
    second.send_disconnect()
    third = watcher(scope="state:read")
    # The third resume's replay stops at a (its first key), so the fan-out's lagging batch reaches k first.
    entered, release = threading.Event(), threading.Event()

    def pause_at_a(name: str, **context: Any) -> None:
        if name == "watch_resume_start" and context["key"] == a and not entered.is_set():
            entered.set()
            release.wait(10)

    resume = {"type": "subscribe", "id": "s", "prefix": prefix, "since": cursor, "versions": {a: 1, k: 3}}
    failpoints.install(pause_at_a)
    try:
        subscribing = threading.Thread(target=third.send, args=(resume,))
        subscribing.start()
        assert entered.wait(10)
        fan_out(records=lagging)
        release.set()
        subscribing.join(10)
    finally:
        release.set()
        failpoints.uninstall()
    assert third.messages("error") == []
    assert per_key(third) == {}
    manager.put(k, 4, actor="alice")
    fan_out(records=tail.poll())
    assert per_key(third) == {k: [4]}


@pytest.mark.parametrize("why", ["older than retention", "journal began after it"])
def test_a_prefix_cursor_the_journal_does_not_cover_gets_resync_and_the_watch_goes_on_from_now(
    watcher, manager, fan_out, why
):
    prefix = f"r{uuid.uuid4().hex[:8]}:g:"
    started = time.time() - (RESUME_RETENTION_SECONDS + 60 if why == "older than retention" else 120)
    if why == "older than retention":
        watcher(scope="state:read").send({"type": "subscribe", "id": "s", "prefix": prefix})  # a live journal
    old = encode_prefix_cursor(prefix, started)
    w = watcher(scope="state:read")
    w.send({"type": "subscribe", "id": "s", "prefix": prefix, "since": old, "versions": {}})
    assert [m["type"] for m in w.messages()] == ["subscribed", "resync"]
    assert w.messages("subscribed")[0]["cursor"] != old
    (resync,) = w.messages("resync")
    assert resync["prefix"] == prefix
    assert "key" not in resync
    manager.put(f"{prefix}k", 1, actor="alice")
    manager.put(f"{prefix}k", 2, actor="alice")
    fan_out(f"{prefix}k")
    assert per_key(w) == {f"{prefix}k": [1, 2]}


def test_a_prefix_resume_needs_read_on_the_prefix_and_names_only_keys_under_it(watcher, manager):
    mine = watcher(sub="alice", scope="state:read:user:${sub}:*")
    mine.send({"type": "subscribe", "id": "s", "prefix": "user:alice:"})
    cursor = mine.messages("subscribed")[0]["cursor"]
    resumed = watcher(sub="alice", scope="state:read:user:${sub}:*")
    resumed.send({"type": "subscribe", "id": "s", "prefix": "user:alice:", "since": cursor, "versions": {}})
    assert [m["type"] for m in resumed.messages()] == ["subscribed"]
    attempts = [
        # bob's prefix with a cursor of it: refused before anything is read
        ("bob", {"prefix": "user:alice:", "since": cursor}, 403),
        # a cursor of another prefix
        ("alice", {"prefix": "user:alice:prefs:", "since": cursor}, 400),
        # versions naming a key outside the prefix (whose versions the resume would read)
        ("alice", {"prefix": "user:alice:", "since": cursor, "versions": {"user:bob:x": 1}}, 400),
        ("alice", {"prefix": "user:alice:", "versions": {"user:alice:x": 1}}, 400),
    ]
    for sub, target, status in attempts:
        w = watcher(sub=sub, scope="state:read:user:${sub}:*")
        w.send({"type": "subscribe", "id": "s", **target})
        (error,) = w.messages()
        assert (error["type"], error["status"]) == ("error", status), target
        manager.put(f"user:{sub}:x", 1, actor=sub)
        assert w.messages("subscribed") == []


# -------------------------------------------------------------------------------------------- RBAC
@pytest.mark.parametrize(
    ("scope", "target", "allowed"),
    [
        ("state:read:user:${sub}:*", {"prefix": "user:alice:"}, True),
        ("state:read:user:${sub}:*", {"prefix": "user:alice:prefs:"}, True),
        ("state:read:user:${sub}:*", {"prefix": "user:"}, False),
        ("state:read:user:${sub}:*", {"prefix": "user:bob:"}, False),
        ("state:read:user:${sub}:*", {"key": "user:bob:x"}, False),
        ("state:read:user:alice:prefs", {"key": "user:alice:prefs"}, True),
        ("state:read:user:alice:prefs", {"prefix": "user:alice:"}, False),
        ("state:read:user:al*", {"prefix": "user:al:"}, True),
        ("state:write", {"key": "user:alice:prefs"}, False),
        ("state:read:*", {"prefix": "a:"}, True),
    ],
)
def test_a_subscription_needs_read_on_every_key_it_can_receive(watcher, scope, target, allowed):
    w = watcher(scope=scope)
    w.send({"type": "subscribe", "id": "s", **target})
    if allowed:
        assert [m["type"] for m in w.messages()] == ["subscribed"]
    else:
        assert [(m["type"], m["status"], m["id"]) for m in w.messages()] == [("error", 403, "s")]


def test_a_subject_that_is_no_key_segment_gets_nothing_from_sub_grants(watcher):
    w = watcher(sub="alice:x", scope="state:read:user:${sub}:*")
    w.send({"type": "subscribe", "id": "s", "prefix": "user:alice:x:"})
    assert w.messages()[0]["status"] == 403


def test_delivery_checks_the_principal_again_after_a_narrowing_refresh(watcher, token, manager, fan_out):
    key = user_key()
    w = watcher(scope="state:read")
    w.send({"type": "subscribe", "id": "s", "key": key})
    w.send({"type": "refresh", "token": token("alice", "state:read:other:*")})
    manager.put(key, 1, actor="alice")
    fan_out(key)
    assert w.versions() == []


def test_refresh_with_another_subjects_token_is_refused_and_changes_nothing(watcher, token, manager, fan_out):
    key = user_key()
    w = watcher(scope="state:read")
    w.send({"type": "subscribe", "id": "s", "key": key})
    w.send({"type": "refresh", "token": token("mallory", "state:read")})
    assert w.messages("error")[0]["status"] == 403
    manager.put(key, 1, actor="alice")
    fan_out(key)
    assert w.versions() == [1]


def test_an_expired_tokens_connection_is_closed_when_a_change_comes(watcher, watch_env, manager, fan_out, watch_table):
    key = user_key()
    w = watcher(ttl=2)
    w.send({"type": "subscribe", "id": "s", "key": key})
    time.sleep(2.1)
    manager.put(key, 1, actor="alice")
    fan_out(key)
    assert w.versions() == []
    assert w.messages("closing") == [{"type": "closing", "reason": "token-expired"}]
    assert w.id in watch_env.closed


# ----------------------------------------------------------------------------------------- $connect
@pytest.fixture
def connect(invoke, watch_env):
    def run(headers=None, query=None):
        return invoke("watch_socket", ws_event("$connect", uuid.uuid4().hex, headers=headers, query=query))

    return run


def test_a_browser_sends_its_token_as_a_subprotocol_and_only_state_v1_is_echoed(connect, token, watch_table):
    jwt = token()
    answer = connect(headers={"Sec-WebSocket-Protocol": f"state.v1, bearer.{jwt}"})
    assert answer == {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "state.v1"}}
    items = boto3.client("dynamodb", region_name="us-east-1").scan(TableName=watch_table)["Items"]
    assert jwt not in json.dumps(items)


@pytest.mark.parametrize(
    ("make_headers", "query", "status"),
    [
        (lambda t: {"Authorization": f"Bearer {t}"}, {"access_token": "x"}, 400),
        (lambda t: {}, {"token": "{t}"}, 400),
        (lambda t: {}, None, 401),
        (lambda t: {"Authorization": f"Bearer {t}x"}, None, 401),
        (lambda t: {"Sec-WebSocket-Protocol": f"bearer.{t}"}, None, 400),
        (lambda t: {"Authorization": f"Bearer {t}", "Sec-WebSocket-Protocol": f"state.v1, bearer.{t}"}, None, 400),
    ],
)
def test_a_handshake_without_one_valid_token_in_a_header_is_refused(connect, token, make_headers, query, status):
    answer = connect(headers=make_headers(token()), query=query)
    assert answer["statusCode"] == status
    assert json.loads(answer["body"])["status"] == status


def test_an_expired_token_cannot_connect(connect, token):
    assert connect(headers={"Authorization": f"Bearer {token(ttl=-10)}"})["statusCode"] == 401


def _denials(out: str) -> list[tuple[str, str]]:
    """(operation, reason) of each denial the function's EMF records count."""
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]
    return [(r["operation"], r.get("denial_reason", "")) for r in records if "AuthorizationDenials" in r]


@pytest.mark.parametrize(
    ("ttl", "headers", "reason"),
    [
        (None, {}, "no_token"),
        (-10, None, "expired"),  # within the verifier's leeway: refused by the connection's own check
        (-3600, None, "expired"),  # refused by the verifier
        (None, {"Sec-WebSocket-Protocol": "bearer.x"}, None),  # a malformed handshake (400), no denial
    ],
)
def test_a_refused_handshake_is_counted_with_its_reason_and_never_its_token(
    connect, token, capsys, ttl, headers, reason
):
    jwt = token(ttl=ttl) if ttl is not None else None
    capsys.readouterr()
    answer = connect(headers=headers if headers is not None else {"Authorization": f"Bearer {jwt}"})
    out = capsys.readouterr().out
    assert answer["statusCode"] == (401 if reason else 400)
    assert _denials(out) == ([("watch_connect", reason)] if reason else [])
    assert jwt is None or jwt not in out


# ------------------------------------------------------------------------------------- bad messages
@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ("not json", 400, None),
        ("[]", 400, None),
        ('{"type":"nonsense","id":"s"}', 400, "s"),
        ('{"type":"subscribe","id":"s","key":"a","key":"b"}', 400, "s"),
        ({"type": "subscribe", "id": "s"}, 400, "s"),
        ({"type": "subscribe", "id": "s", "key": "a", "prefix": "a:"}, 400, "s"),
        ({"type": "subscribe", "id": "s", "key": "a b"}, 400, "s"),
        ({"type": "subscribe", "id": "s", "key": "a\n"}, 400, "s"),
        ({"type": "subscribe", "id": "s", "prefix": "user:al"}, 400, "s"),
        ({"type": "subscribe", "id": "s", "prefix": ":"}, 400, "s"),
        ({"type": "subscribe", "id": "bad id!", "key": "a"}, 400, None),
        ({"type": "subscribe", "id": "s", "key": "a", "extra": 1}, 400, "s"),
        ({"type": "subscribe", "id": "s", "key": 5}, 400, "s"),
        ({"type": "subscribe", "id": "s", "key": "a", "since": "garbage"}, 400, "s"),
        ({"type": "subscribe", "id": "s", "key": "a", "since": encode_cursor("b", 1)}, 400, "s"),
        ({"type": "subscribe", "id": "s", "prefix": "a:", "since": encode_cursor("a:b", 1)}, 400, "s"),
        ({"type": "subscribe", "id": "s", "prefix": "a:", "since": "garbage"}, 400, "s"),
        ({"type": "subscribe", "id": "s", "prefix": "a:", "since": encode_prefix_cursor("b:", 1.0)}, 400, "s"),
        ({"type": "subscribe", "id": "s", "key": "a", "since": encode_prefix_cursor("a:", 1.0)}, 400, "s"),
        ({"type": "subscribe", "id": "s", "prefix": "a:", "versions": {"a:b": 1}}, 400, "s"),
        ({"type": "subscribe", "id": "s", "prefix": "a:", "since": "c", "versions": {"a:b": "1"}}, 400, "s"),
        (
            {
                "type": "subscribe",
                "id": "s",
                "prefix": "a:",
                "since": encode_prefix_cursor("a:", 1.0),
                "versions": {"b:x": 1},
            },
            400,
            "s",
        ),
        ({"type": "unsubscribe"}, 400, None),
        ({"type": "refresh", "token": 5}, 400, None),
        ({"type": "subscribe", "id": "s", "key": "a" * 70_000}, 413, "s"),
    ],
)
def test_a_bad_message_gets_a_clear_error_and_changes_nothing(watcher, body, status, named):
    w = watcher(scope="state:read")
    w.send(body)
    (error,) = w.messages()
    assert error["type"] == "error"
    assert error["status"] == status
    assert error.get("id") == named
    assert error["detail"]
    assert error["title"]


def test_an_id_in_use_is_refused_and_unsubscribe_stops_the_changes(watcher, manager, fan_out):
    key = user_key()
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key})
    w.send({"type": "subscribe", "id": "s", "key": key})
    assert w.messages("error")[0]["status"] == 409
    w.send({"type": "unsubscribe", "id": "s"})
    assert w.messages("unsubscribed") == [{"type": "unsubscribed", "id": "s"}]
    manager.put(key, 1, actor="alice")
    fan_out(key)
    assert w.versions() == []


def test_a_token_in_a_refresh_is_never_logged_nor_echoed(watcher, token, capsys):
    w = watcher()
    bad = token("alice", "state:read") + "tampered"
    w.send({"type": "refresh", "token": bad})
    assert w.messages("error")[0]["status"] == 401
    captured = capsys.readouterr()
    assert bad not in captured.out + captured.err
    assert bad not in json.dumps(w.messages())


# ------------------------------------------------------------------------------ many watchers, many writers
def key_with_recorded_history(manager, lifecycle, state_table: str, versions: int) -> tuple[str, StreamTail]:
    """A fresh key written `versions` times with its history recorded, and a tail of its stream read past them."""
    key = user_key()
    for n in range(1, versions + 1):
        manager.put(key, n, actor="alice")
    tail = StreamTail(state_table, {key})
    record_history(lifecycle, tail.poll())
    return key, tail


class StreamTail:
    """The table's stream read on from where it was, as an event source mapping does: new records of `keys`."""

    def __init__(self, state_table: str, keys: set[str]) -> None:
        from devstack.stream_poller import lambda_record

        self._convert = lambda_record
        self.keys = keys
        self.streams = boto3.client("dynamodbstreams", region_name="us-east-1")
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        self.arn = ddb.describe_table(TableName=state_table)["Table"]["LatestStreamArn"]
        self.iterators = {
            shard["ShardId"]: self.streams.get_shard_iterator(
                StreamArn=self.arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for shard in self.streams.describe_stream(StreamArn=self.arn)["StreamDescription"]["Shards"]
        }

    def poll(self) -> list[dict[str, Any]]:
        found = []
        for shard, iterator in list(self.iterators.items()):
            while iterator:
                response = self.streams.get_records(ShardIterator=iterator, Limit=1000)
                iterator = response.get("NextShardIterator")
                self.iterators[shard] = iterator
                found += response["Records"]
                if not response["Records"]:
                    break
        return [self._convert(r, self.arn) for r in found if r["dynamodb"]["Keys"]["pk"]["S"] in self.keys]


class RaceClient:
    """A watcher of one key or prefix that reconnects and resumes with the cursor of what it processed."""

    def __init__(self, invoke: Any, connections: Connections, jwt: str, key: str | None, prefix: str | None) -> None:
        self.invoke, self.connections, self.jwt = invoke, connections, jwt
        self.key, self.prefix = key, prefix
        self.connection = ""
        self.seen: dict[str, list[int]] = defaultdict(list)
        self.cursor: str | None = None
        self.connect()

    def connect(self) -> None:
        self.connection = uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {self.jwt}"}
        assert self.invoke("watch_socket", ws_event("$connect", self.connection, headers=headers))["statusCode"] == 200
        target: dict[str, Any] = {"key": self.key} if self.key else {"prefix": self.prefix}
        if self.cursor:
            target["since"] = self.cursor
            if self.prefix:
                # The last version processed of each key received since the watch began.
                target["versions"] = {key: versions[-1] for key, versions in self.seen.items() if versions}
        subscribe = {"type": "subscribe", "id": "s", **target}
        self.invoke("watch_socket", ws_event("subscribe", self.connection, body=subscribe))
        assert self.connections.messages(self.connection, "error") == []
        assert self.connections.messages(self.connection, "resync") == []
        if not self.cursor:
            self.cursor = self.connections.messages(self.connection, "subscribed")[0]["cursor"]

    def collect(self) -> None:
        for message in self.connections.messages(self.connection, "change"):
            self.seen[message["key"]].append(message["version"])
            if self.key:
                self.cursor = message["cursor"]

    def reconnect(self) -> None:
        self.invoke("watch_socket", ws_event("$disconnect", self.connection))
        self.connections.closed.add(self.connection)
        self.collect()  # what arrived before the socket closed
        self.connect()


def race_writes(manager: StateManager, keys: list[str], writer: int) -> None:
    """PUT (some with a 1 s TTL, expired by a later write), PATCH and DELETE at random on `keys`."""
    import random

    local = random.Random(writer)
    for _ in range(20):
        key = local.choice(keys)
        kind = local.random()
        try:
            if kind < 0.5:
                manager.put(key, {"w": writer}, actor="alice", ttl_seconds=1 if kind < 0.1 else None)
            elif kind < 0.8:
                manager.patch(key, {"p": writer}, actor="alice")
            else:
                manager.delete(key, actor="alice")
        except NotFound:
            pass  # a PATCH or DELETE of a deleted key
        time.sleep(local.uniform(0, 0.05))


def stream_until(done: threading.Event, tail: StreamTail, lifecycle: StreamLifecycle, invoke: Any) -> None:
    """The publisher records history, then the fan-out's mapping delivers the same batch, until `done`."""
    while True:
        finished = done.is_set()
        batch = tail.poll()
        if batch:
            record_history(lifecycle, batch)
            assert invoke("watch_fanout", {"Records": batch}) == {"batchItemFailures": []}
        if finished:
            return
        time.sleep(0.05)


def test_watchers_resuming_by_cursor_get_every_version_of_their_keys_once_in_order_while_writers_race(
    invoke, watch_env, token, manager, lifecycle, state_table
):
    """Writers race on a few keys (PUT, PATCH, DELETE, TTL expiry) while the stream is recorded and fanned
    out in batches; key and prefix watchers disconnect at random meanwhile and resume on a new connection with
    their cursor (a prefix watcher with the versions it processed). Every key watcher must see 1..final of its
    key exactly once, in order, across its connections; every prefix watcher every version of every key under
    its prefix."""
    import random

    rng = random.Random(15)
    base = f"race{uuid.uuid4().hex[:6]}"
    keys = [f"{base}:{group}:{n}" for group in ("a", "b") for n in range(3)]
    jwt = token("alice", "state:read")
    key_clients = [RaceClient(invoke, watch_env, jwt, keys[i % len(keys)], None) for i in range(8)]
    prefix_clients = [RaceClient(invoke, watch_env, jwt, None, f"{base}:{group}:") for group in ("a", "b")]

    done = threading.Event()
    streaming = threading.Thread(
        target=stream_until, args=(done, StreamTail(state_table, set(keys)), lifecycle, invoke)
    )
    streaming.start()
    writers = [threading.Thread(target=race_writes, args=(manager, keys, n)) for n in range(4)]
    for thread in writers:
        thread.start()
    while any(t.is_alive() for t in writers):
        for client in rng.sample(key_clients, 2) + rng.sample(prefix_clients, 1):
            client.reconnect()
        time.sleep(0.1)
    for thread in writers:
        thread.join()
    done.set()
    streaming.join(60)
    for client in key_clients + prefix_clients:
        client.collect()
    final = {key: store_version(state_table, key) for key in keys}
    for client in key_clients:
        assert client.seen[str(client.key)] == list(range(1, final[str(client.key)] + 1)), client.key
    for client in prefix_clients:
        for key in keys:
            if key.startswith(str(client.prefix)):
                assert client.seen[key] == list(range(1, final[key] + 1)), key


def store_version(state_table: str, key: str) -> int:
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "state"}}, ConsistentRead=True
    )["Item"]
    return int(item["version"]["N"])


# ---------------------------------------------------------------------------------- sweep, lag, audit
def test_the_sweep_warns_before_a_token_expires_and_closes_after(watcher, watch_env, invoke):
    soon, later = watcher(ttl=120), watcher(ttl=3600)
    assert invoke("watch_fanout", {}) == {}  # the schedule's event
    assert [m["type"] for m in watch_env.messages(soon.id)] == ["expiring"]
    assert watch_env.messages(later.id) == []
    assert invoke("watch_fanout", {}) == {}
    assert [m["type"] for m in watch_env.messages(soon.id)] == ["expiring"]  # warned once
    gone = watcher(ttl=2)
    time.sleep(2.1)
    invoke("watch_fanout", {})
    assert [m["type"] for m in watch_env.messages(gone.id)] == ["closing"]
    assert gone.id in watch_env.closed


def test_a_refresh_extends_the_connection_past_the_first_tokens_expiry(watcher, token, manager, fan_out):
    key = user_key()
    w = watcher(ttl=2)
    w.send({"type": "subscribe", "id": "s", "key": key})
    w.send({"type": "refresh", "token": token("alice", "state:read", ttl=600)})
    time.sleep(2.1)
    manager.put(key, 1, actor="alice")
    fan_out(key)
    assert w.versions() == [1]


def test_a_replay_into_versions_the_stream_has_not_recorded_yet_waits_then_answers_503(
    watcher, manager, lifecycle, state_table
):
    key = user_key()
    for n in range(1, 4):
        manager.put(key, n, actor="alice")
    records = stream_records(state_table, {key})
    record_history(lifecycle, records[:1])  # the publisher is behind: only version 1 is recorded
    w = watcher()
    started = time.monotonic()
    w.send({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)})
    assert time.monotonic() - started >= 3
    (error,) = w.messages("error")
    assert (error["status"], error["id"]) == (503, "s")
    assert w.versions() == []
    record_history(lifecycle, records)
    w.send({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)})  # the id is free again
    assert w.versions() == [2, 3]


class _Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter | None) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def audit_lines() -> Any:
    collector = _Lines(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    yield collector.lines
    audit.audit_logger.removeHandler(collector)


def test_every_access_leaves_an_audit_record_without_values_or_tokens(invoke, watch_env, token, audit_lines):
    jwt = token("alice", "state:read:user:${sub}:*")
    w = Watcher(invoke, watch_env, jwt)
    key = user_key()
    w.send({"type": "subscribe", "id": "s", "key": key})
    w.send({"type": "subscribe", "id": "t", "key": "user:bob:x"})
    w.send({"type": "unsubscribe", "id": "s"})
    records = [json.loads(line)["audit"] for line in audit_lines]
    summary = [(r["action"], r["key"], r["decision"], r["status"], r["subject"]) for r in records]
    assert summary == [
        ("watch_connect", None, "allow", 200, "alice"),
        ("watch_subscribe", key, "allow", 200, "alice"),
        ("watch_subscribe", "user:bob:x", "deny", 403, "alice"),
        ("watch_unsubscribe", None, "allow", 200, "alice"),
    ]
    assert all(r["connection_id"] == w.id for r in records)
    assert jwt not in "\n".join(audit_lines)


def test_a_cursor_too_far_behind_gets_resync_and_the_watch_goes_on_from_now(
    watcher, manager, fan_out, client, state_table
):
    from state_core.service.watch import MAX_REPLAY_VERSIONS

    key = user_key()
    # The state item alone at a high version: the history is not read before the distance is known.
    manager.put(key, 0, actor="alice")
    client.update_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "state"}},
        UpdateExpression="SET version = :v", ExpressionAttributeValues={":v": {"N": str(MAX_REPLAY_VERSIONS + 2)}},
    )  # fmt: skip
    w = watcher()
    w.send({"type": "subscribe", "id": "s", "key": key, "since": encode_cursor(key, 1)})
    assert [m["type"] for m in w.messages()] == ["subscribed", "resync"]
    assert w.messages("subscribed")[0]["version"] == MAX_REPLAY_VERSIONS + 2
    manager.put(key, 1, actor="alice")
    fan_out(key)
    assert w.versions() == [MAX_REPLAY_VERSIONS + 3]
