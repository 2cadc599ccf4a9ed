"""Faults at failpoints, in-process against the real store (moto server) and a real redis-server:
a lock holder paused past its lease, a function that dies between DynamoDB and the cache, DynamoDB
throttling every attempt, an answer lost after the table applied the request."""

from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import pytest
import redis

from devstack import failpoints
from state_core.api import edge
from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.lock import LockPolicy, RedisKeyLock
from state_core.cache.state_cache import CachePolicy, RedisStateCache, entry_key
from state_core.domain.errors import NotFound, ServiceUnavailable
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, RecordedMetrics, utc_now

pytestmark = pytest.mark.integration


@pytest.fixture
def armed(monkeypatch):
    monkeypatch.setenv("STATE_FAILPOINTS", "1")
    yield
    failpoints.disarm()


@pytest.fixture
def key():
    return f"fp:{uuid.uuid4().hex}"


def build(redis_url, table, *, client=None, lease_seconds=2.0):
    metrics = RecordedMetrics()
    link = RedisLink(
        connect(redis_url, password=None, timeout_seconds=0.05),
        CircuitBreaker(open_seconds=2.0),
        on_error=lambda: None,
        signing_key=SIGNING_KEY,
    )
    manager = StateManager(
        StateStore(client or boto3.client("dynamodb", config=DYNAMODB_CONFIG), table),
        clock=utc_now,
        metrics=metrics,
        cache=RedisStateCache(link, metrics, clock=utc_now, policy=CachePolicy()),
        lock=RedisKeyLock(link, metrics, LockPolicy(lease_seconds=lease_seconds, max_wait_seconds=1.0)),
    )
    return manager, metrics


def test_a_lock_holder_paused_past_its_lease_loses_no_update(armed, redis_server, state_table, key):
    # Given a PATCH that holds the lock and has read version 1, paused past its 0.1 s lease
    manager, metrics = build(redis_server.url, state_table, lease_seconds=0.1)
    manager.put(key, {"base": 1}, actor="t")
    failpoints.arm("after_patch_read", "pause", count=1)
    slow: dict[str, object] = {}
    thread = threading.Thread(target=lambda: slow.update(result=manager.patch(key, {"slow": 1}, actor="t")))
    thread.start()
    assert failpoints.wait_reached("after_patch_read")
    time.sleep(0.15)

    # When another writer takes the lapsed lock and writes version 2, then the paused one goes on
    fast, _ = manager.patch(key, {"fast": 1}, actor="t")
    failpoints.release("after_patch_read")
    thread.join(timeout=10)

    # Then the version condition fenced the paused writer: it retried on version 2 and kept both members
    assert fast.record.version == 2
    result, canonical = slow["result"]
    assert result.record.version == 3
    assert json.loads(canonical) == {"base": 1, "fast": 1, "slow": 1}
    assert metrics.count("Conflicts") == 1
    assert json.loads(manager.get(key).canonical_value) == {"base": 1, "fast": 1, "slow": 1}


def test_a_write_that_dies_before_the_cache_is_not_lost_by_the_next_patch(armed, redis_server, state_table, key):
    # Given version 1 cached, and a PUT of version 2 that DynamoDB accepted but whose function died
    manager, _ = build(redis_server.url, state_table)
    manager.put(key, {"v": 1}, actor="t")
    failpoints.arm("after_db_write_before_cache", "raise", count=1)
    with pytest.raises(failpoints.FailpointError):
        manager.put(key, {"v": 2, "kept": True}, actor="t")

    # When a PATCH starts from the stale cached version 1
    result, canonical = manager.patch(key, {"p": 1}, actor="t")

    # Then the fence made it merge into the committed version 2, and the cache moved on to version 3
    assert result.record.version == 3
    assert json.loads(canonical) == {"v": 2, "kept": True, "p": 1}
    assert manager.get(key).record.version == 3


def with_dynamodb_faults(redis_url, table, key):
    """A manager whose DynamoDB client the armed failpoints can fault, with `key` written as version 1."""
    client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
    failpoints.install_dynamodb_faults(client)
    manager, _ = build(redis_url, table, client=client)
    manager.put(key, {"v": 1}, actor="t")
    return manager


def test_dynamodb_throttling_every_attempt_is_a_503_with_retry_after_and_writes_nothing(
    armed, redis_server, state_table, key
):
    # Given a client whose every DynamoDB request is answered "throttled" (botocore retries each one)
    manager = with_dynamodb_faults(redis_server.url, state_table, key)
    failpoints.arm("dynamodb_send", "return", "throttle")

    # When a PUT and a PATCH are attempted
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as put_error:
        manager.put(key, {"v": 2}, actor="t")
    put_attempts, put_seconds = failpoints.fired("dynamodb_send"), time.monotonic() - started
    with pytest.raises(ServiceUnavailable):
        manager.patch(key, {"p": 1}, actor="t")
    attempts = failpoints.fired("dynamodb_send")
    failpoints.disarm()
    print(f"\nthrottled PUT: {put_attempts} attempts in {put_seconds:.2f} s; PUT + PATCH: {attempts} attempts")

    # Then the client gets 503 with Retry-After, botocore tried 3 times per call, and nothing was written
    response = edge.problem(put_error.value)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert put_attempts == 3
    assert attempts >= 6
    view = manager.get(key, consistent=True)
    assert (view.record.version, json.loads(view.canonical_value)) == (1, {"v": 1})


def test_a_lost_answer_is_applied_by_the_table_and_a_write_is_then_settled_by_reading_it_back(
    armed, redis_server, state_table, key
):
    # Given a client whose next DynamoDB request reaches the table but whose answer is lost
    manager = with_dynamodb_faults(redis_server.url, state_table, key)
    failpoints.arm("dynamodb_answer", "return", "lost", count=1)

    # When a PUT's answer is lost: nobody wrote since, so reading the item back finds the write
    result = manager.put(key, {"v": 2}, actor="t")

    # Then it is acknowledged once, as version 2 (not sent again as version 3)
    assert failpoints.fired("dynamodb_answer") == 1
    assert result.record.version == 2
    view = manager.get(key, consistent=True)
    assert (view.record.version, json.loads(view.canonical_value)) == (2, {"v": 2})


def test_a_write_through_replayed_after_the_newer_entry_is_gone_never_serves_an_older_version(
    redis_server, state_table, key
):
    """Found by the history checker after Redis restarts. Container A's write-through of version 2 fails
    and is queued; another container writes version 3; Redis then loses the entry (restart, eviction,
    expiry); A's queued write is replayed later. A plain replay would cache version 2 over nothing, and
    every container would read version 2 after version 3 was acknowledged. A replay only fences."""
    a, _ = build(redis_server.url, state_table)
    b, _ = build(redis_server.url, state_table)
    a.put(key, {"v": 1}, actor="a")
    redis_server.pause()
    try:
        a.put(key, {"v": 2}, actor="a")  # DynamoDB accepted; the write-through timed out and is queued
    finally:
        redis_server.resume()
    b.put(key, {"v": 3}, actor="b")
    redis.Redis.from_url(redis_server.url).delete(entry_key(key))  # Redis lost the entry
    time.sleep(2.1)  # A's breaker lets a call through again
    with pytest.raises(NotFound):
        a.get(f"{key}:other")  # any call of A replays its queue first

    view = b.get(key)

    assert (view.record.version, json.loads(view.canonical_value)) == (3, {"v": 3})
    assert b.get(key).record.version == 3
