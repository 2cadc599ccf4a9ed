"""History and expiry in the core against the serialized moto server: what the request path writes,
what a read of an old version answers as the history ages, and the expiry's version condition."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest

from state_core.domain.errors import BadRequest, Gone, NotFound, ServiceUnavailable
from state_core.domain.writes import ConditionFailed
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.history import HistoryReader, decode_cursor, encode_cursor
from state_core.service.manager import StateManager
from state_core.storage.history import HistoryStore, history_sort_key
from state_core.stream.lifecycle import StreamLifecycle, expiry_marker
from tests.doubles import FailingService, NoMetrics

pytestmark = pytest.mark.integration


@pytest.fixture
def history(client, state_table):
    return HistoryStore(client, state_table, retention_seconds=90 * 86_400)


@pytest.fixture
def manager(store, history, clock):
    return StateManager(store, history=history, clock=clock, metrics=NoMetrics())


@pytest.fixture
def reader(store, history, clock):
    return HistoryReader(store, history, clock=clock)


def test_the_request_path_writes_each_version_s_history_item_with_its_retention(manager, client, state_table, key):
    manager.put(key, {"a": 1}, actor="alice")
    manager.patch(key, {"b": 2}, actor="bob")
    manager.delete(key, actor="carol")
    items = client.query(
        TableName=state_table,
        KeyConditionExpression="pk = :k AND begins_with(sk, :p)",
        ExpressionAttributeValues={":k": {"S": key}, ":p": {"S": "v#"}},
        ConsistentRead=True,
    )["Items"]
    assert [(i["operation"]["S"], i["actor"]["S"]) for i in items] == [
        ("created", "alice"),
        ("updated", "bob"),
        ("deleted", "carol"),
    ]
    first = items[0]
    occurred = datetime.strptime(first["occurred_at"]["S"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert int(first["ttl"]["N"]) == int(occurred.timestamp()) + 90 * 86_400
    assert "ttl" not in client.get_item(TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "state"}})["Item"]


def test_a_missing_old_version_is_503_within_the_lag_grace_and_410_after(
    manager, reader, client, state_table, clock, key
):
    for n in range(3):
        manager.put(key, n, actor="alice")
    client.delete_item(TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": history_sort_key(1)}})

    with pytest.raises(ServiceUnavailable):
        reader.version(key, 1)  # may still be on its way from the stream
    clock.advance(120)
    with pytest.raises(Gone):
        reader.version(key, 1)
    assert reader.version(key, 2)[1] == b"1"
    assert reader.version(key, 3)[1] == b"2"
    with pytest.raises(NotFound):
        reader.version(key, 4)


def test_the_first_page_always_starts_with_the_current_version(manager, reader, client, state_table, key):
    manager.put(key, "a", actor="alice")
    manager.put(key, "b", actor="alice")
    # The current version's history item left retention (an idle key) or trails by the stream's lag.
    client.delete_item(TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": history_sort_key(2)}})
    page = reader.list(key, limit=1, cursor=None)
    assert [(e.version, e.operation, e.size) for e in page.entries] == [(2, "updated", 3)]
    assert page.next_cursor is not None
    rest = reader.list(key, limit=1, cursor=page.next_cursor)
    assert [e.version for e in rest.entries] == [1]
    assert rest.next_cursor is None


def test_history_reads_answer_503_when_dynamodb_throttles_them(manager, store, clock, state_table, key, monkeypatch):
    # Given a key with three versions, and history reads that DynamoDB throttles on every attempt (and
    # botocore's backoff without its sleeps, which only slow the test)
    manager.put(key, {"a": 1}, actor="alice")
    manager.put(key, {"a": 2}, actor="alice")
    manager.put(key, {"a": 3}, actor="alice")
    throttled_client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
    throttled = FailingService(400, "ThrottlingException")
    throttled_client.meta.events.register("before-send.dynamodb", throttled)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    reader = HistoryReader(store, HistoryStore(throttled_client, state_table, retention_seconds=86_400), clock=clock)
    # Then a page and an old version are 503 + Retry-After (ServiceUnavailable), after botocore's 3 attempts each
    with pytest.raises(ServiceUnavailable):
        reader.list(key, limit=10, cursor=None)
    with pytest.raises(ServiceUnavailable):
        reader.version(key, 1)
    assert throttled.attempts == 6


def test_a_key_that_never_existed_has_no_history(reader, key):
    with pytest.raises(NotFound):
        reader.list(key, limit=10, cursor=None)
    with pytest.raises(NotFound):
        reader.version(key, 1)


def test_cursors_are_bound_to_their_key():
    cursor = encode_cursor("user:1", 42)
    assert decode_cursor("user:1", cursor) == 42
    with pytest.raises(BadRequest, match="another key"):
        decode_cursor("user:2", cursor)
    for garbled in ("", "abc", "aDE6eDox", cursor[:-2]):
        with pytest.raises(BadRequest):
            decode_cursor("user:1", garbled)


class QueryRecorder:
    """The real DynamoDB client, recording each Query's key condition values."""

    def __init__(self, client):
        self._client = client
        self.queries: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def query(self, **kwargs):
        self.queries.append(kwargs)
        return self._client.query(**kwargs)


def test_a_cursor_continuing_after_version_1_is_an_empty_last_page_without_an_inverted_between(
    client, state_table, store, clock, key
):
    # DynamoDB refuses `BETWEEN :low AND :high` with low > high (ValidationException, a 500 before this was
    # fixed); moto accepts it, so the test checks the queries themselves.
    recorder = QueryRecorder(client)
    history = HistoryStore(recorder, state_table, retention_seconds=90 * 86_400)
    manager = StateManager(store, history=history, clock=clock, metrics=NoMetrics())
    reader = HistoryReader(store, history, clock=clock)
    for n in range(3):
        manager.put(key, n, actor="alice")
    for version in (1, 2, 3, 4, 999_999_999_999):
        page = reader.list(key, limit=10, cursor=encode_cursor(key, version))
        assert [e.version for e in page.entries] == [v for v in (3, 2, 1) if v < version]
        assert page.next_cursor is None
    for query in recorder.queries:
        values = query["ExpressionAttributeValues"]
        if ":low" in values:
            assert values[":low"]["S"] <= values[":high"]["S"], query["KeyConditionExpression"]
    with pytest.raises(BadRequest):
        reader.list(key, limit=10, cursor=encode_cursor(key, 10**12))


def test_a_write_that_finds_the_key_expired_writes_the_expiry_as_a_version_first(manager, reader, clock, key):
    manager.put(key, "short", actor="alice", ttl_seconds=2)
    clock.advance(3)
    again = manager.put(key, "again", actor="bob")
    assert (again.created, again.record.version) == (True, 3)
    page = reader.list(key, limit=10, cursor=None)
    assert [(e.version, e.operation, e.actor) for e in page.entries] == [
        (3, "created", "bob"),
        (2, "expired", "system:ttl"),
        (1, "created", "alice"),
    ]


def test_if_none_match_over_an_expired_key_creates_after_the_expiry(manager, clock, key):
    from state_core.service.manager import Expectation

    manager.put(key, "short", actor="alice", ttl_seconds=1)
    clock.advance(2)
    created = manager.put(key, "new", actor="alice", expect=Expectation(if_none_match_any=True))
    assert (created.created, created.record.version) == (True, 3)


def test_the_expiry_happens_once_whoever_comes_first(manager, store, history, client, state_table, clock, key):
    first = manager.put(key, "short", actor="alice", ttl_seconds=1)
    clock.advance(2)
    lifecycle = StreamLifecycle(client, state_table, history=history, states=store, blobs=store.blobs, clock=clock)
    marker = expiry_marker(first.record)
    removal = {
        "eventName": "REMOVE",
        "dynamodb": {"Keys": {"pk": marker["pk"], "sk": marker["sk"]}, "OldImage": marker},
    }
    lifecycle.on_removals([removal])  # the marker's TTL removal: expires version 1 as version 2
    assert store.get(key).version == 2
    lifecycle.on_removals([removal])  # a redelivered removal finds nothing to do
    again = manager.put(key, "again", actor="alice")  # and neither does the next write
    assert again.record.version == 3
    with pytest.raises(ConditionFailed):
        store.expire(key, version=1, expires_at=first.record.expires_at, now=clock())


def test_an_unexpired_key_is_not_expired_by_an_early_marker_removal(manager, store, clock, key):
    first = manager.put(key, "long", actor="alice", ttl_seconds=60)
    with pytest.raises(ConditionFailed):
        store.expire(key, version=1, expires_at=first.record.expires_at, now=clock())
    assert store.get(key).version == 1


def test_a_large_version_s_history_item_refers_to_its_blob_and_both_versions_read_back(
    manager, reader, client, state_table, key
):
    import os

    big = os.urandom(400_000).hex()  # compresses to ~400 KB, past the inline limit: a blob
    manager.put(key, big, actor="alice")
    item = client.get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": history_sort_key(1)}}, ConsistentRead=True
    )["Item"]
    assert "value" not in item
    assert item["blob_id"]["S"]
    assert reader.version(key, 1)[1] == f'"{big}"'.encode()  # the current version, from the state
    manager.put(key, "small", actor="alice")
    assert reader.version(key, 1)[1] == f'"{big}"'.encode()  # now from the history item's blob
