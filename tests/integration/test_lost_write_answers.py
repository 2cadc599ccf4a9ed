"""Writes whose answer was lost after DynamoDB (moto) applied them, with another client's write acknowledged
in between: the sequence a retry must never undo. A's write lands as version N, its answer times out; B
writes N+1 and is acknowledged; a retry of A would then overwrite B (PUT), apply its patch again (PATCH),
delete B's value (DELETE), or answer 412 for a write that landed (If-Match PUT). The service answers 503
"outcome unknown" instead, and B's write stays the latest: exactly one version per applied write."""

from __future__ import annotations

import json
import random
import string

import boto3
import pytest

from state_core.api import edge
from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.lock import LockPolicy, RedisKeyLock
from state_core.cache.state_cache import CachePolicy, RedisStateCache
from state_core.domain.errors import OutcomeUnknown, StateError
from state_core.domain.records import BlobRef
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import Expectation, StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, LostAnswer, NoMetrics, hooked, utc_now

pytestmark = pytest.mark.integration


def manager_on(client, table, redis_url):
    """A manager as the functions build it: its own DynamoDB client, the shared cache and locks."""
    link = RedisLink(
        connect(redis_url, password=None, timeout_seconds=0.5),
        CircuitBreaker(open_seconds=2.0),
        on_error=lambda: None,
        signing_key=SIGNING_KEY,
    )
    metrics = NoMetrics()
    return StateManager(
        StateStore(client, table),
        clock=utc_now,
        metrics=metrics,
        cache=RedisStateCache(link, metrics, clock=utc_now, policy=CachePolicy()),
        lock=RedisKeyLock(link, metrics, LockPolicy(lease_seconds=2.0, max_wait_seconds=1.0)),
    )


@pytest.fixture
def b(client, state_table, redis_server):
    """Writer B: answered normally."""
    return manager_on(client, state_table, redis_server.url)


@pytest.fixture
def lossy(state_table, redis_server):
    """lossy(meanwhile) -> (writer A, its LostAnswer): A's first UpdateItem lands but its answer is lost."""

    def build(meanwhile=None):
        lost = LostAnswer(meanwhile=meanwhile)
        client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
        client.meta.events.register("before-send.dynamodb", lost)
        return manager_on(client, state_table, redis_server.url), lost

    return build


def assert_outcome_unknown(error):
    response = edge.problem(error)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["type"].endswith("/write-outcome-unknown")


def assert_latest(manager, key, version, value):
    """DynamoDB and the cache both hold `version` with `value` (nothing of A's was cached)."""
    view = manager.get(key, consistent=True)
    assert (view.record.version, json.loads(view.canonical_value)) == (version, value)
    cached = manager.get(key)
    assert (cached.record.version, json.loads(cached.canonical_value)) == (version, value)


def test_a_put_whose_answer_was_lost_never_overwrites_the_write_after_it(b, lossy, key):
    # Given version 1; A's PUT lands as version 2, and B's PUT (version 3) is acknowledged before A hears
    b.put(key, {"v": 1}, actor="b")
    a, lost = lossy(meanwhile=lambda: b.put(key, {"by": "b"}, actor="b"))
    # When A's answer is lost
    with pytest.raises(OutcomeUnknown) as unknown:
        a.put(key, {"by": "a"}, actor="a")
    # Then A was sent once (not retried over B), is told 503 outcome unknown, and B's write is the latest
    assert len(lost.sent) == 1
    assert_outcome_unknown(unknown.value)
    assert_latest(b, key, 3, {"by": "b"})


def test_a_patch_whose_answer_was_lost_is_not_applied_a_second_time(b, lossy, key):
    # Given version 1; A's PATCH lands as version 2; B replaces the value (version 3) before A hears
    b.put(key, {"n": 1}, actor="b")
    a, lost = lossy(meanwhile=lambda: b.put(key, {"b": 1}, actor="b"))
    with pytest.raises(OutcomeUnknown) as unknown:
        a.patch(key, {"a": 1}, actor="a")
    # Then A's patch was not merged into B's value as well (that would be version 4: {"b": 1, "a": 1})
    assert len(lost.sent) == 1
    assert_outcome_unknown(unknown.value)
    assert_latest(b, key, 3, {"b": 1})


def test_a_delete_whose_answer_was_lost_never_deletes_the_value_written_after_it(b, lossy, key):
    # Given version 1; A's DELETE lands as tombstone 2; B re-creates the key (version 3) before A hears
    b.put(key, {"v": 1}, actor="b")
    a, lost = lossy(meanwhile=lambda: b.put(key, {"by": "b"}, actor="b"))
    with pytest.raises(OutcomeUnknown) as unknown:
        a.delete(key, actor="a")
    assert len(lost.sent) == 1
    assert_outcome_unknown(unknown.value)
    assert_latest(b, key, 3, {"by": "b"})


def test_an_if_match_put_whose_answer_was_lost_is_not_answered_412(b, lossy, key):
    # Given version 1; A's If-Match: "1" PUT lands as version 2; B writes version 3 before A hears
    b.put(key, {"v": 1}, actor="b")
    a, lost = lossy(meanwhile=lambda: b.put(key, {"by": "b"}, actor="b"))
    # When A's answer is lost, A is not told its precondition failed: it may well have landed
    with pytest.raises(OutcomeUnknown) as unknown:
        a.put(key, {"by": "a"}, actor="a", expect=Expectation(if_match=1))
    assert len(lost.sent) == 1
    assert_outcome_unknown(unknown.value)
    assert_latest(b, key, 3, {"by": "b"})


def test_a_large_write_whose_answer_was_lost_keeps_its_blob(b, lossy, store, key):
    # Given version 1; A's If-Match PUT of a value too large for the item lands as version 2 (its blob holds
    # the value); B writes version 3 before A hears
    b.put(key, {"v": 1}, actor="b")
    rng = random.Random(7)
    large = "".join(rng.choices(string.ascii_letters + string.digits, k=600_000))
    a, lost = lossy(meanwhile=lambda: b.put(key, {"by": "b"}, actor="b"))
    with pytest.raises(StateError) as failed:
        a.put(key, {"large": large}, actor="a", expect=Expectation(if_match=1))
    # Then the blob version 2 refers to (its history will) is still there: a lost answer is no refusal
    values = lost.sent[0]["ExpressionAttributeValues"]
    blob = BlobRef(
        write_id=values[":blob_id"]["S"],
        chunks=int(values[":blob_chunks"]["N"]),
        sha256=values[":blob_sha256"]["S"],
        encoding=values[":encoding"]["S"],
        size=int(values[":value_size"]["N"]),
    )
    stored = store.load_blob(blob)
    assert stored is not None
    assert json.loads(stored.canonical()) == {"large": large}
    assert isinstance(failed.value, OutcomeUnknown)
    assert_latest(b, key, 3, {"by": "b"})


def test_a_write_whose_answer_was_lost_succeeds_when_it_is_still_the_latest(b, lossy, key):
    # Given version 1; A's PUT lands as version 2 and its answer is lost; nobody writes meanwhile
    b.put(key, {"v": 1}, actor="b")
    a, lost = lossy()
    # When A's write is settled by reading the item back: its own write id is there
    result = a.put(key, {"by": "a"}, actor="a")
    # Then A is acknowledged with version 2, exactly once (no retry), and the cache has it
    assert (len(lost.sent), result.record.version, result.created) == (1, 2, False)
    assert_latest(b, key, 2, {"by": "a"})


def test_over_http_the_client_gets_a_503_write_outcome_unknown_with_retry_after(invoke, client, state_table, key):
    # Given version 1 written through the PUT function; the functions' own DynamoDB client then loses the
    # answer of its next write, which landed, while B writes after it
    from conftest import http_event

    from state_core import runtime

    assert invoke("put_state", http_event("put", key, body={"value": {"v": 1}}))["statusCode"] == 201
    b = StateManager(StateStore(client, state_table), clock=utc_now, metrics=NoMetrics())
    lost = LostAnswer(meanwhile=lambda: b.put(key, {"by": "b"}, actor="b"))
    functions_client = runtime.dynamodb_client()
    with hooked(functions_client, lost):
        response = invoke("put_state", http_event("put", key, body={"value": {"by": "a"}}))

    # Then the answer is the outcome-unknown problem with Retry-After, and B's write is the latest
    assert response["statusCode"] == 503
    assert int(response["headers"]["Retry-After"]) > 0
    assert response["headers"]["Content-Type"] == "application/problem+json"
    problem = json.loads(response["body"])
    assert problem["type"] == "https://state.service/problems/write-outcome-unknown"
    assert "If-Match" in problem["detail"]
    current = invoke("get_state", http_event("get", key), None)
    assert (current["statusCode"], json.loads(current["body"])["value"], current["headers"]["ETag"]) == (
        200,
        {"by": "b"},
        '"3"',
    )
