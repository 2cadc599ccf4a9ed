"""The Redis read cache and per-key locks against a real redis-server and the serialized
moto server: versioned write-if-newer, fills, tombstones, failure behaviour, locks and the version fence."""

import json
import threading
import time
import uuid

import boto3
import pytest

from devstack.redis_server import RedisServer
from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.lock import LockPolicy, RedisKeyLock
from state_core.cache.state_cache import CachePolicy, RedisStateCache, entry_key
from state_core.domain.cached import CacheEntry
from state_core.domain.codec import StoredValue
from state_core.domain.errors import NotFound
from state_core.domain.records import StateRecord
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, RecordedMetrics, utc_now

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 0.05
BREAKER_SECONDS = 2.0


class Stack:
    """A StateManager wired as in a Lambda container: one Redis link (client + breaker) for cache and lock."""

    def __init__(self, redis_url, table, *, store=None, lock_policy=None):
        self.metrics = RecordedMetrics()
        self.link = RedisLink(
            connect(redis_url, password=None, timeout_seconds=TIMEOUT_SECONDS),
            CircuitBreaker(open_seconds=BREAKER_SECONDS),
            on_error=lambda: self.metrics.add_metric("RedisErrors", "Count", 1),
            signing_key=SIGNING_KEY,
        )
        self.cache = RedisStateCache(self.link, self.metrics, clock=utc_now, policy=CachePolicy())
        self.lock = RedisKeyLock(self.link, self.metrics, lock_policy or LockPolicy())
        dynamodb = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
        self.store = store or StateStore(dynamodb, table)
        self.manager = StateManager(self.store, clock=utc_now, metrics=self.metrics, cache=self.cache, lock=self.lock)


@pytest.fixture
def key():
    return f"cache:{uuid.uuid4().hex}"


@pytest.fixture
def stack(redis_server, state_table):
    return Stack(redis_server.url, state_table)


def cached_version(raw_redis, key):
    version = raw_redis.hget(entry_key(key), "v")
    return None if version is None else int(version)


def record(key, version, value=b'"x"'):
    return StateRecord(key, version, False, StoredValue("identity", value, len(value)), "t", "t", "alice", None)


# --- the cache --------------------------------------------------------------------------------------------


def test_read_after_write_returns_the_new_version_from_the_cache(stack, raw_redis, key):
    stack.manager.put(key, {"a": 1}, actor="alice")
    # The first write of an uncached key leaves a fence (a write-through never installs a value where no
    # entry is), so its first read misses and fills; writes after that go through with their values.
    assert stack.manager.get(key).record.version == 1
    assert (stack.metrics.count("CacheMisses"), stack.metrics.count("CacheHits")) == (1, 0)
    stack.manager.put(key, {"a": 2}, actor="alice")
    stack.metrics.values.clear()

    view = stack.manager.get(key)

    assert (view.record.version, json.loads(view.canonical_value)) == (2, {"a": 2})
    assert stack.metrics.count("CacheHits") == 1
    assert stack.metrics.count("CacheMisses") == 0
    assert cached_version(raw_redis, key) == 2


def test_a_miss_fills_from_a_consistent_read_and_the_next_read_hits(stack, raw_redis, key):
    stack.manager.put(key, "v1", actor="alice")
    raw_redis.delete(entry_key(key))

    assert stack.manager.get(key).record.version == 1
    assert stack.manager.get(key).record.version == 1
    assert (stack.metrics.count("CacheMisses"), stack.metrics.count("CacheHits")) == (1, 1)


def test_the_cached_bytes_are_the_stored_compressed_form(stack, raw_redis, key):
    stack.manager.put(key, {"text": "abc" * 10_000}, actor="alice")
    stack.manager.get(key)  # fills
    cached = raw_redis.hget(entry_key(key), "d")
    assert len(cached) < 1_000  # compressed, not the 30 kB of JSON


def test_write_if_newer_refuses_older_and_equal_versions(stack, raw_redis, key):
    assert stack.cache.get(key) is None  # the miss takes the fill lease
    assert stack.cache.fill(CacheEntry(record(key, 5, b'"five"'))) is True
    assert stack.cache.write_if_newer(CacheEntry(record(key, 3, b'"three"'))) is False
    assert stack.cache.write_if_newer(CacheEntry(record(key, 5, b'"other"'))) is False
    assert raw_redis.hget(entry_key(key), "d") == b'"five"'
    assert stack.cache.write_if_newer(CacheEntry(record(key, 6, b'"six"'))) is True
    assert cached_version(raw_redis, key) == 6


def test_delete_caches_a_versioned_tombstone(stack, raw_redis, key):
    stack.manager.put(key, 1, actor="alice")
    stack.manager.get(key)  # fills version 1: the tombstone then goes over an entry that holds a value
    stack.manager.delete(key, actor="alice")
    assert cached_version(raw_redis, key) == 2
    stack.metrics.values.clear()
    with pytest.raises(NotFound):
        stack.manager.get(key)
    assert stack.metrics.count("CacheHits") == 1


def test_consistent_read_bypasses_the_cache(stack, raw_redis, key):
    stack.manager.put(key, "v1", actor="alice")
    stack.manager.get(key, consistent=True)
    assert stack.metrics.count("CacheHits") == stack.metrics.count("CacheMisses") == 0


def test_entries_expire_no_later_than_the_state_plus_the_longest_run(stack, raw_redis, key):
    stack.manager.put(key, "short", actor="alice", ttl_seconds=5)
    lifetime_ms = raw_redis.pttl(entry_key(key))
    assert 0 < lifetime_ms <= (5 + CachePolicy().longest_run_seconds) * 1000
    stack.manager.put(key, "long", actor="alice")
    assert raw_redis.pttl(entry_key(key)) > 200_000


class DelayedFillStore:
    """The real store; a GET's read of `key` holds its result until released, as a slow reader would."""

    def __init__(self, store, key):
        self._store = store
        self._key = key
        self.read_done = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get(self, key):
        record = self._store.get(key)
        if key == self._key and threading.current_thread().name == "slow-reader":
            self.read_done.set()
            assert self.release.wait(10)
        return record


def test_an_older_fill_after_a_newer_write_is_refused(redis_server, state_table, raw_redis, key):
    writer = Stack(redis_server.url, state_table)
    writer.manager.put(key, "v1", actor="alice")
    raw_redis.delete(entry_key(key))  # the reader will miss and fill from DynamoDB
    slow_store = DelayedFillStore(writer.store, key)
    reader = Stack(redis_server.url, state_table, store=slow_store)
    results = []
    thread = threading.Thread(target=lambda: results.append(reader.manager.get(key)), name="slow-reader")

    thread.start()
    assert slow_store.read_done.wait(10)  # the reader holds version 1, not yet cached
    writer.manager.put(key, "v2", actor="alice")  # write-through of version 2
    slow_store.release.set()
    thread.join(10)

    assert results[0].record.version == 1  # the reader answers what it read...
    assert cached_version(raw_redis, key) == 2  # ...but its fill could not put version 1 back
    assert writer.manager.get(key).canonical_value == b'"v2"'


# --- failure behaviour ------------------------------------------------------------------------------------


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, to stop or pause."""
    server = RedisServer().start()
    yield server
    server.stop()


def timed(operation):
    started = time.perf_counter()
    result = operation()
    return result, time.perf_counter() - started


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_requests_succeed_quickly_while_redis_is_down_and_reads_are_newest_after(own_redis, state_table, key, fault):
    stack = Stack(own_redis.url, state_table)
    stack.manager.put(key, {"n": 1}, actor="alice")
    assert stack.manager.get(key).record.version == 1  # cached

    if fault == "stopped":
        own_redis.stop()
    else:
        own_redis.pause()
    try:
        # The first operation pays one timeout and opens the breaker...
        _, first = timed(lambda: stack.manager.put(key, {"n": 2}, actor="alice"))
        # ...then reads skip Redis while it is open, and writes pay at most one timeout for their write-through.
        durations = []
        for n in range(3, 6):
            _, put_time = timed(lambda n=n: stack.manager.put(key, {"n": n}, actor="alice"))
            view, get_time = timed(lambda: stack.manager.get(key))
            (_, merged), patch_time = timed(lambda n=n: stack.manager.patch(key, {f"p{n}": n}, actor="alice"))
            durations += [put_time, get_time, patch_time]
            assert json.loads(merged)["n"] == n
        assert view.record.version >= 5
    finally:
        if fault == "stopped":
            own_redis.start()
        else:
            own_redis.resume()

    assert first < 1.0
    assert max(durations) < 0.5, durations
    assert stack.metrics.count("CacheErrors") >= 1

    time.sleep(BREAKER_SECONDS + 0.1)  # the breaker lets a trial through; queued cache writes replay first
    latest = stack.manager.get(key, consistent=True).record.version
    view = stack.manager.get(key)
    assert view.record.version == latest
    assert stack.manager.get(key).record.version == latest


# --- locks ------------------------------------------------------------------------------------------------


def test_concurrent_patches_with_locks_lose_nothing_and_conflict_far_less(redis_server, state_table, key):
    def run(use_lock):
        stack = Stack(redis_server.url, state_table)
        manager = stack.manager if use_lock else StateManager(stack.store, clock=utc_now, metrics=stack.metrics)
        run_key = f"{key}:{'locked' if use_lock else 'optimistic'}"
        manager.put(run_key, {}, actor="alice")
        threads = [
            threading.Thread(target=manager.patch, args=(run_key, {f"m{i}": i}), kwargs={"actor": "alice"})
            for i in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        view = StateManager(stack.store, clock=utc_now, metrics=RecordedMetrics()).get(run_key)
        assert json.loads(view.canonical_value) == {f"m{i}": i for i in range(20)}
        assert view.record.version == 21
        return stack.metrics.count("Conflicts")

    optimistic, locked = run(use_lock=False), run(use_lock=True)
    print(f"conflicting writes for 20 concurrent PATCHes: optimistic {optimistic}, with locks {locked}")
    assert locked <= max(2, optimistic // 4)


class PausingStore:
    """The real store; the thread named `holder` stops before its first write until told to go on."""

    def __init__(self, store):
        self._store = store
        self.holder_reached_write = threading.Event()
        self.go_on = threading.Event()
        self._paused_once = False

    def __getattr__(self, name):
        return getattr(self._store, name)

    def write(self, *args, **kwargs):
        if threading.current_thread().name == "holder" and not self._paused_once:
            self._paused_once = True
            self.holder_reached_write.set()
            assert self.go_on.wait(10)
        return self._store.write(*args, **kwargs)


def test_a_lock_holder_paused_past_its_lease_is_fenced_by_the_version(redis_server, state_table, key):
    lease = LockPolicy(lease_seconds=0.3, max_wait_seconds=2.0)
    base = Stack(redis_server.url, state_table, lock_policy=lease)
    base.manager.put(key, {"start": True}, actor="alice")
    pausing = PausingStore(base.store)
    holder = Stack(redis_server.url, state_table, store=pausing, lock_policy=lease)
    other = Stack(redis_server.url, state_table, lock_policy=lease)

    holder_thread = threading.Thread(
        target=holder.manager.patch, args=(key, {"holder": 1}), kwargs={"actor": "alice"}, name="holder"
    )
    holder_thread.start()
    assert pausing.holder_reached_write.wait(5)  # holds the lock, has read version 1, is about to write

    started = time.monotonic()
    result, _ = other.manager.patch(key, {"other": 2}, actor="bob")  # waits out the lease, then proceeds
    assert result.record.version == 2
    assert 0.2 < time.monotonic() - started < 2.0
    assert other.metrics.count("LockWaits") == 1

    pausing.go_on.set()  # the holder wakes past its lease and writes "if still version 1"
    holder_thread.join(10)

    final = base.manager.get(key, consistent=True)
    assert json.loads(final.canonical_value) == {"start": True, "other": 2, "holder": 1}
    assert final.record.version == 3
    assert holder.metrics.count("Conflicts") == 1  # its late write was refused by the fence, then retried
