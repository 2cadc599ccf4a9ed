"""History and expiry in the core against the serialized moto server: the stream writes the history (the
request path writes only the state item), what a read of an old version answers while the stream lags and
as the history ages, and the expiry's version condition. The tests decide when the stream catches up."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest

from state_core.domain.errors import BadRequest, Gone, NotFound, ServiceUnavailable
from state_core.domain.writes import ConditionFailed
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.history import HISTORY_LAG_GRACE_SECONDS, HistoryReader, decode_cursor, encode_cursor
from state_core.service.manager import StateManager
from state_core.storage.history import HistoryStore, history_sort_key
from state_core.stream.lifecycle import StreamLifecycle, expiry_marker
from tests.doubles import FailingService, NoMetrics
from tests.streams import record_history, stream_records, up_to

pytestmark = pytest.mark.integration


@pytest.fixture
def history(client, state_table):
    return HistoryStore(client, state_table, retention_seconds=90 * 86_400)


@pytest.fixture
def manager(store, clock):
    return StateManager(store, clock=clock, metrics=NoMetrics())


@pytest.fixture
def lifecycle(client, state_table, store, history, clock):
    return StreamLifecycle(client, state_table, history=history, states=store, blobs=store.blobs, clock=clock)


@pytest.fixture
def catch_up(lifecycle, state_table):
    """catch_up(key[, version]): the stream delivers the key's records (up to `version`) to the publisher."""

    def deliver(key, version=None):
        records = stream_records(state_table, {key})
        record_history(lifecycle, records if version is None else up_to(records, version))

    return deliver


def history_items(client, state_table, key):
    return client.query(
        TableName=state_table,
        KeyConditionExpression="pk = :k AND begins_with(sk, :p)",
        ExpressionAttributeValues={":k": {"S": key}, ":p": {"S": "v#"}},
        ConsistentRead=True,
    )["Items"]


@pytest.fixture
def reader(store, history, clock):
    return HistoryReader(store, history, clock=clock)


def test_the_request_path_writes_no_history_and_the_stream_writes_each_version_s_item_with_its_retention(
    manager, client, state_table, catch_up, key
):
    manager.put(key, {"a": 1}, actor="alice")
    manager.patch(key, {"b": 2}, actor="bob")
    manager.delete(key, actor="carol")
    assert history_items(client, state_table, key) == []

    catch_up(key)

    items = history_items(client, state_table, key)
    assert [(i["operation"]["S"], i["actor"]["S"]) for i in items] == [
        ("created", "alice"),
        ("updated", "bob"),
        ("deleted", "carol"),
    ]
    first = items[0]
    occurred = datetime.strptime(first["occurred_at"]["S"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert int(first["ttl"]["N"]) == int(occurred.timestamp()) + 90 * 86_400
    assert "ttl" not in client.get_item(TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "state"}})["Item"]


def test_a_batch_of_more_versions_than_one_batch_write_holds_records_each_once_even_when_repeated(
    manager, lifecycle, client, state_table
):
    # 3 keys x 20 versions: 60 history items, more than two BatchWriteItem requests of 25; the stream
    # may deliver a record twice (a retried batch), and one request may not name an item twice.
    import uuid

    keys = [f"batch-{uuid.uuid4().hex[:8]}:{n}" for n in range(3)]
    for version in range(20):
        for key in keys:
            manager.put(key, version, actor="alice", ttl_seconds=3600 if version == 18 else None)
    records = stream_records(state_table, set(keys))

    record_history(lifecycle, records[:5] + records)

    for key in keys:
        items = history_items(client, state_table, key)
        assert [int(i["version"]["N"]) for i in items] == list(range(1, 21))
        # The key's marker is its last version with an expiry (19, as version 20 has none), as if each
        # version had written its own in turn.
        marker = client.get_item(
            TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "expiry"}}, ConsistentRead=True
        )["Item"]
        assert marker["version"]["N"] == "19"


def test_a_missing_old_version_is_503_within_the_lag_grace_and_410_after(
    manager, reader, client, state_table, clock, catch_up, key
):
    for n in range(3):
        manager.put(key, n, actor="alice")
    catch_up(key)
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


def test_the_first_page_always_starts_with_the_current_version(manager, reader, client, state_table, catch_up, key):
    manager.put(key, "a", actor="alice")
    manager.put(key, "b", actor="alice")
    catch_up(key)
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
    client, state_table, store, clock, catch_up, key
):
    # DynamoDB refuses `BETWEEN :low AND :high` with low > high (ValidationException, a 500 before this was
    # fixed); moto accepts it, so the test checks the queries themselves.
    recorder = QueryRecorder(client)
    history = HistoryStore(recorder, state_table, retention_seconds=90 * 86_400)
    manager = StateManager(store, clock=clock, metrics=NoMetrics())
    reader = HistoryReader(store, history, clock=clock)
    for n in range(3):
        manager.put(key, n, actor="alice")
    catch_up(key)
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


def test_a_write_that_finds_the_key_expired_writes_the_expiry_as_a_version_first(
    manager, reader, client, state_table, clock, catch_up, key
):
    manager.put(key, "short", actor="alice", ttl_seconds=2)
    clock.advance(3)
    again = manager.put(key, "again", actor="bob")
    assert (again.created, again.record.version) == (True, 3)
    # The expiry the write performed is a state write like any other: its history comes from the stream.
    assert history_items(client, state_table, key) == []
    with pytest.raises(ServiceUnavailable):
        reader.version(key, 2)
    catch_up(key)
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
    manager, reader, client, state_table, catch_up, key
):
    import os

    big = os.urandom(400_000).hex()  # compresses to ~400 KB, past the inline limit: a blob
    manager.put(key, big, actor="alice")
    catch_up(key)
    item = client.get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": history_sort_key(1)}}, ConsistentRead=True
    )["Item"]
    assert "value" not in item
    assert item["blob_id"]["S"]
    assert reader.version(key, 1)[1] == f'"{big}"'.encode()  # the current version, from the state
    manager.put(key, "small", actor="alice")
    assert reader.version(key, 1)[1] == f'"{big}"'.encode()  # now from the history item's blob


# ------------------------------------------------------------------------------- the stream's lag window
def test_while_the_stream_lags_an_older_version_is_503_and_a_listing_never_has_a_hole(manager, reader, catch_up, key):
    # Given v1 and v2 written, and the stream has recorded nothing yet
    manager.put(key, {"n": 1}, actor="alice")
    manager.put(key, {"n": 2}, actor="alice")

    # Then v2 (the current one) reads from the state item; v1 is 503, not 404 or 410; with nothing recorded
    # a first page is 503 too, not a page that leaves v1 out
    assert reader.version(key, 2)[1] == b'{"n":2}'
    with pytest.raises(ServiceUnavailable):
        reader.version(key, 1)
    with pytest.raises(ServiceUnavailable):
        reader.list(key, limit=10, cursor=None)
    with pytest.raises(NotFound):
        reader.version(key, 3)  # never existed, lag or not

    # When the stream has delivered v1 only: both answer, the current version from the state item
    catch_up(key, 1)
    assert reader.version(key, 1)[1] == b'{"n":1}'
    assert [e.version for e in reader.list(key, limit=10, cursor=None).entries] == [2, 1]

    # And a v3 the stream has not seen opens a gap under the current version again: the listing starts at
    # the newest recorded version (it trails the state, with no hole), v2 is 503
    manager.put(key, {"n": 3}, actor="alice")
    assert [e.version for e in reader.list(key, limit=10, cursor=None).entries] == [1]
    with pytest.raises(ServiceUnavailable):
        reader.version(key, 2)

    # And the stream catching up one version moves the listing's start up with it
    catch_up(key, 2)
    assert [e.version for e in reader.list(key, limit=10, cursor=None).entries] == [3, 2, 1]

    # Once the stream caught up, everything is there, paged newest first
    catch_up(key)
    page = reader.list(key, limit=2, cursor=None)
    assert [e.version for e in page.entries] == [3, 2]
    assert [e.version for e in reader.list(key, limit=2, cursor=page.next_cursor).entries] == [1]
    assert reader.version(key, 2)[1] == b'{"n":2}'


def test_while_the_stream_lags_a_delete_and_an_expiry_answer_as_the_contract_says(
    manager, reader, clock, catch_up, key
):
    # Given v1 deleted as v2, before the stream saw either
    manager.put(key, "a", actor="alice")
    manager.delete(key, actor="alice")
    # Then the deletion (current) has no value, and v1 is on its way
    with pytest.raises(NotFound):
        reader.version(key, 2)
    with pytest.raises(ServiceUnavailable):
        reader.version(key, 1)

    # Given a v3 with a TTL that a DELETE finds expired: the expiry (v4) takes the expiry's time as its own,
    # which may be before the write that performed it
    manager.put(key, "b", actor="alice", ttl_seconds=1)
    clock.advance(2)
    with pytest.raises(NotFound):
        manager.delete(key, actor="alice")
    with pytest.raises(ServiceUnavailable):
        reader.version(key, 3)
    catch_up(key)
    assert reader.version(key, 3)[1] == b'"b"'
    assert [(e.version, e.operation) for e in reader.list(key, limit=10, cursor=None).entries] == [
        (4, "expired"),
        (3, "created"),
        (2, "deleted"),
        (1, "created"),
    ]


def test_past_the_lag_grace_a_missing_version_is_taken_for_retention(manager, reader, clock, key):
    # The stated bound: a stream that lags more than the grace behind a key's latest write (a publisher
    # failing for that long) makes its unrecorded versions read as gone until it catches up.
    manager.put(key, 1, actor="alice")
    manager.put(key, 2, actor="alice")
    clock.advance(HISTORY_LAG_GRACE_SECONDS)
    with pytest.raises(Gone):
        reader.version(key, 1)
    assert [e.version for e in reader.list(key, limit=10, cursor=None).entries] == [2]
