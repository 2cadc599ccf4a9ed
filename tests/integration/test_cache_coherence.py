"""The cache never answers older than an acknowledged write, across the faults a local Redis can show:
a fill or a write-through that lands late, after the newer entry was evicted, flushed or lost to a
restart; a writer whose breaker is open; the stream's repair while Redis is paused. Real redis-server and
the serialized moto server."""

import threading
import time
import uuid

import boto3
import pytest
import redis

from devstack.redis_server import RedisServer
from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.state_cache import CachePolicy, RedisStateCache, entry_key
from state_core.config import ServiceSettings
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, RecordedMetrics, utc_now

pytestmark = pytest.mark.integration


class Container:
    """One function container: its own Redis link (client + breaker) and StateManager."""

    def __init__(self, redis_url, table, *, store=None, breaker=None):
        self.metrics = RecordedMetrics()
        self.link = RedisLink(
            connect(redis_url, password=None, timeout_seconds=0.05),
            breaker or CircuitBreaker(),
            on_error=lambda: None,
            signing_key=SIGNING_KEY,
        )
        self.cache = RedisStateCache(self.link, self.metrics, clock=utc_now, policy=CachePolicy())
        self.store = store or StateStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), table)
        self.manager = StateManager(self.store, clock=utc_now, metrics=self.metrics, cache=self.cache)


def writer_and_reader(redis_url, table, key, *, writer_breaker=None):
    """Two containers on one Redis: the writer has written version 1, the reader has filled it and then hit
    it, so the cache holds version 1 with its value (a write-through of an unread key is only a fence)."""
    writer = Container(redis_url, table, breaker=writer_breaker)
    reader = Container(redis_url, table)
    writer.manager.put(key, "v1", actor="alice")
    assert reader.manager.get(key).record.version == 1
    assert reader.manager.get(key).record.version == 1  # a hit
    return writer, reader


class Held:
    """The real store; the named thread's read (or write) returns, then waits until released."""

    def __init__(self, store, thread_name, operation):
        self._store, self._thread, self._operation = store, thread_name, operation
        self.reached, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _hold(self, name):
        if name == self._operation and threading.current_thread().name == self._thread:
            self.reached.set()
            assert self.release.wait(10)

    def get(self, key):
        record = self._store.get(key)
        self._hold("get")
        return record

    def write(self, key, value, **kwargs):
        result = self._store.write(key, value, **kwargs)
        self._hold("write")
        return result


@pytest.fixture
def key():
    return f"coh:{uuid.uuid4().hex}"


def started(name, target):
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


WIPES = {
    "eviction": lambda raw, key: raw.delete(entry_key(key)),
    "flushall": lambda raw, key: raw.flushall(),
}


@pytest.mark.parametrize("wipe", sorted(WIPES))
def test_a_slow_fill_never_lands_where_a_newer_entry_was_wiped(redis_server, state_table, raw_redis, key, wipe):
    writer = Container(redis_server.url, state_table)
    writer.manager.put(key, "v1", actor="alice")
    raw_redis.delete(entry_key(key))  # the reader misses
    slow = Held(writer.store, "slow-reader", "get")
    reader = Container(redis_server.url, state_table, store=slow)
    thread = started("slow-reader", lambda: reader.manager.get(key))
    assert slow.reached.wait(10)  # the reader missed and holds version 1 from DynamoDB

    writer.manager.put(key, "v2", actor="alice")  # acknowledged
    writer.manager.get(key)  # version 2 cached with its value
    WIPES[wipe](raw_redis, key)
    slow.release.set()
    thread.join(10)

    # A new read, begun after version 2 was acknowledged, never answers version 1.
    assert Container(redis_server.url, state_table).manager.get(key).canonical_value == b'"v2"'


def test_a_slow_fill_never_lands_across_a_redis_restart(state_table, key):
    server = RedisServer().start()
    try:
        writer = Container(server.url, state_table)
        writer.manager.put(key, "v1", actor="alice")
        redis.Redis.from_url(server.url).delete(entry_key(key))  # the reader misses
        slow = Held(writer.store, "slow-reader", "get")
        reader = Container(server.url, state_table, store=slow)
        thread = started("slow-reader", lambda: reader.manager.get(key))
        assert slow.reached.wait(10)
        writer.manager.put(key, "v2", actor="alice")
        writer.manager.get(key)
        port = server.port
        server.stop()
        server = RedisServer(port=port).start()  # empty, same address
        time.sleep(0.6)  # past the breakers of containers that saw the restart
        slow.release.set()
        thread.join(10)
        assert Container(server.url, state_table).manager.get(key).canonical_value == b'"v2"'
    finally:
        server.stop()


def test_a_stalled_write_through_never_reinstalls_its_value_where_a_newer_entry_was_wiped(
    redis_server, state_table, raw_redis, key
):
    setup = Container(redis_server.url, state_table)
    setup.manager.put(key, "v1", actor="alice")
    setup.manager.get(key)  # cached with its value
    stalled_store = Held(setup.store, "stalled-writer", "write")
    stalled = Container(redis_server.url, state_table, store=stalled_store)
    thread = started("stalled-writer", lambda: stalled.manager.put(key, "v2", actor="alice"))
    assert stalled_store.reached.wait(10)  # version 2 is in DynamoDB, its write-through not sent

    setup.manager.put(key, "v3", actor="alice")  # acknowledged, cached with its value
    raw_redis.delete(entry_key(key))  # evicted
    stalled_store.release.set()
    thread.join(10)

    assert Container(redis_server.url, state_table).manager.get(key).canonical_value == b'"v3"'


def test_the_breaker_retries_a_recovered_redis_within_the_bound():
    assert ServiceSettings.from_environ({"STATE_TABLE_NAME": "state"}).redis_breaker_seconds <= 0.5
    assert CircuitBreaker()._open_seconds <= 0.5


def test_a_writer_whose_breaker_was_open_fences_its_write_on_its_next_call(state_table, key):
    server = RedisServer().start()
    try:
        writer, reader = writer_and_reader(server.url, state_table, key)

        server.pause()
        try:
            writer.manager.put(key, "v2", actor="alice")  # times out, opens the breaker, keeps a fence
        finally:
            server.resume()
        writer.manager.put(key, "v3", actor="alice")  # breaker open: skipped, acknowledged
        time.sleep(0.6)  # the breaker's window
        resumed = time.monotonic()
        writer.manager.get(key)  # its next call replays the fence before anything else

        assert reader.manager.get(key).record.version == 3
        assert time.monotonic() - resumed < 1.0
    finally:
        server.stop()


def test_a_write_through_is_sent_even_while_the_writers_breaker_is_open(state_table, key):
    """Redis is back, but the writer's breaker (opened during the fault) has not let a trial through yet: its
    write still goes through, so no other container reads the entry it replaces."""
    server = RedisServer().start()
    try:
        writer, reader = writer_and_reader(server.url, state_table, key, writer_breaker=CircuitBreaker(open_seconds=30))

        server.pause()
        try:
            writer.manager.get(key)  # times out: the writer's breaker opens for 30 s
        finally:
            server.resume()
        writer.manager.put(key, "v2", actor="alice")  # acknowledged with Redis reachable

        assert reader.manager.get(key).canonical_value == b'"v2"'
    finally:
        server.stop()


class StallsOnce:
    """The real client; its first `stalls` script calls time out, as on a Redis that just came back with a
    backlog (a fault injector standing in for the network)."""

    def __init__(self, client, stalls=1):
        self._client, self.stalls = client, stalls

    def __getattr__(self, name):
        return getattr(self._client, name)

    def evalsha(self, *args):
        if self.stalls:
            self.stalls -= 1
            raise redis.TimeoutError("Timeout reading from socket")
        return self._client.evalsha(*args)


def test_a_write_through_that_times_out_once_is_sent_again_before_the_write_is_acknowledged(
    redis_server, state_table, raw_redis, key
):
    writer, reader = writer_and_reader(redis_server.url, state_table, key)
    writer.link._client = StallsOnce(writer.link._client)

    writer.manager.put(key, "v2", actor="alice")

    assert writer.link._client.stalls == 0
    assert reader.manager.get(key).canonical_value == b'"v2"'


def test_a_reset_connection_does_not_lose_the_write_through(redis_server, state_table, raw_redis, key):
    # Both containers now hold a pooled connection.
    writer, reader = writer_and_reader(redis_server.url, state_table, key)

    raw_redis.client_kill_filter(_type="normal", skipme=True)  # what a failover or a proxy restart does
    writer.manager.put(key, "v2", actor="alice")

    assert reader.manager.get(key).canonical_value == b'"v2"'
    assert writer.metrics.count("CacheErrors") == reader.metrics.count("CacheErrors") == 0


def test_the_repair_keeps_retrying_while_redis_is_paused_and_lands_soon_after_it_resumes(state_table, key):
    from state_core.stream.repair import CacheRepairer
    from tests.integration.test_publisher import stream_records

    server = RedisServer().start()
    try:
        _, reader = writer_and_reader(server.url, state_table, key)
        # Version 2 written by a container that never reached Redis (its write-through is lost with it).
        Container("redis://127.0.0.1:1", state_table).manager.put(key, "v2", actor="alice")
        records = stream_records(state_table, {key})

        # The repair's own container: a cache on a link with a fresh breaker, like any function's.
        repair_cache = Container(server.url, state_table).cache
        repairer = CacheRepairer(repair_cache, metrics=RecordedMetrics(), log=_Log())

        server.pause()
        outcome = {}
        thread = started("repair", lambda: outcome.update(failed=repairer.repair(records, lambda: 60.0)))
        time.sleep(1.5)  # paused: the repair keeps trying, it does not give up or skip
        assert thread.is_alive()
        server.resume()
        resumed = time.monotonic()
        thread.join(5)
        landed = time.monotonic() - resumed

        assert outcome["failed"] == []
        assert landed < 1.0
        assert reader.manager.get(key).canonical_value == b'"v2"'
    finally:
        server.stop()


def test_the_repair_reports_the_first_unrepaired_record_when_time_runs_short(state_table, key):
    from state_core.stream.repair import CacheRepairer
    from tests.integration.test_publisher import stream_records

    Container("redis://127.0.0.1:1", state_table).manager.put(key, "v1", actor="alice")
    Container("redis://127.0.0.1:1", state_table).manager.put(key, "v2", actor="alice")
    records = stream_records(state_table, {key})
    left = iter([10.0, 5.0, 1.0])
    dead = Container("redis://127.0.0.1:1", state_table).cache
    repairer = CacheRepairer(dead, metrics=RecordedMetrics(), log=_Log())
    failed = repairer.repair(records, lambda: next(left, 0.0))
    # The first state record (moto streams a keys-only insert before it): Lambda retries from there.
    first = next(r for r in records if "version" in r["dynamodb"].get("NewImage", {}))
    assert failed == [first["dynamodb"]["SequenceNumber"]]


class _Log:
    def warning(self, *args, **kwargs):
        pass
