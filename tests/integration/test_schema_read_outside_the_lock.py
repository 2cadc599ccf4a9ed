"""A PATCH reads the schema registry (once in `cache_seconds` per container) before it takes the key's lock,
not while holding it: every waiter queued behind a holder would wait for that read too. Real redis-server
and moto; the registry's clock is the test's."""

import uuid

import boto3
import pytest

from state_core.cache.lock import lock_key
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.service.schemas import DEFAULT_CACHE_SECONDS, REFRESH_AHEAD_SECONDS, SchemaRegistry
from state_core.storage.schemas import SchemaStore
from tests.doubles import utc_now
from tests.integration.test_cache_and_locks import Stack

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WatchedSource:
    """The real schema store, noting at each registry read whether the key's lock was held."""

    def __init__(self, store: SchemaStore, raw_redis, key: str) -> None:
        self._store, self._redis, self._key = store, raw_redis, key
        self.reads_under_lock: list[bool] = []

    def registry(self):
        self.reads_under_lock.append(bool(self._redis.exists(lock_key(self._key))))
        return self._store.registry()


def test_a_patch_reads_a_registry_about_to_go_stale_before_it_takes_the_lock(redis_server, state_table, raw_redis):
    key = f"schemas:{uuid.uuid4().hex}"
    source = WatchedSource(SchemaStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), state_table), raw_redis, key)
    clock = Clock()
    stack = Stack(redis_server.url, state_table)
    manager = StateManager(
        stack.store,
        clock=utc_now,
        metrics=stack.metrics,
        cache=stack.cache,
        lock=stack.lock,
        schemas=SchemaRegistry(source, clock=utc_now, monotonic=clock),
    )
    manager.put(key, {"a": 0}, actor="alice")
    assert source.reads_under_lock == [False]  # a PUT takes no lock

    # Due within the margin: read before the lock, so the hold does not include it.
    clock.now += DEFAULT_CACHE_SECONDS - REFRESH_AHEAD_SECONDS / 2
    manager.patch(key, {"a": 1}, actor="alice")
    assert source.reads_under_lock == [False, False]

    # Fresh: no read at all.
    clock.now += REFRESH_AHEAD_SECONDS / 4
    manager.patch(key, {"a": 2}, actor="alice")
    assert source.reads_under_lock == [False, False]

    # Stale: read again, still before the lock.
    clock.now += DEFAULT_CACHE_SECONDS
    manager.patch(key, {"a": 3}, actor="alice")
    assert source.reads_under_lock == [False, False, False]
    assert manager.get(key).record.version == 4
