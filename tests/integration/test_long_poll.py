"""The long-poll's waiter against a real redis-server and the serialized moto server: woken by the writers'
change notifications within 100 ms, by polling without Redis or when the subscription breaks, never into an
older version by a late or forged notification, and 304 when the wait ends."""

import threading
import time
import uuid

import boto3
import pytest
import redis

from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.lock import LockPolicy, RedisKeyLock
from state_core.cache.state_cache import CachePolicy, RedisStateCache, change_channel, entry_key
from state_core.cache.watch import RedisChangeFeed
from state_core.domain.cached import CacheEntry
from state_core.domain.errors import NotFound
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.service.waiting import ChangeWaiter, WaitPolicy
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, RecordedMetrics, utc_now

pytestmark = pytest.mark.integration

# Writer's acknowledgement to the waiter's answer, with Redis: the notification, one cache read, the return.
NOTIFIED_WITHIN_SECONDS = 0.1
POLICY = WaitPolicy(recheck_seconds=1.0, poll_seconds=0.5)


class Service:
    """A writer's and a waiter's container: each its own Redis link, as two Lambda instances would have."""

    def __init__(self, redis_url, table, *, redis=True, policy=POLICY):
        self.metrics = RecordedMetrics()
        self.store = StateStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), table)
        self.link = None
        cache = lock = feed = None
        if redis:
            self.link = RedisLink(
                connect(redis_url, password=None, timeout_seconds=0.05),
                CircuitBreaker(open_seconds=0.5),
                on_error=lambda: self.metrics.add_metric("RedisErrors", "Count", 1),
                signing_key=SIGNING_KEY,
            )
            cache = RedisStateCache(self.link, self.metrics, clock=utc_now, policy=CachePolicy())
            lock = RedisKeyLock(self.link, self.metrics, LockPolicy())
            feed = RedisChangeFeed(self.link, self.metrics, monotonic=time.monotonic)
        self.cache = cache
        self.manager = StateManager(self.store, clock=utc_now, metrics=self.metrics, cache=cache, lock=lock)
        self.waiter = ChangeWaiter(
            self.manager, feed, clock=utc_now, metrics=self.metrics, policy=policy, remaining=lambda: None
        )


class Waiting:
    """One waiter in a thread: its answer (a StateView or the exception) and when it came."""

    def __init__(self, service, key, held, seconds, **kwargs):
        self.answer = None
        self.answered_at = None
        self.started_at = time.monotonic()

        def run():
            try:
                self.answer = service.waiter.wait(
                    key, unchanged=lambda version: version in held, wait_seconds=seconds, **kwargs
                )
            except Exception as exc:  # the test inspects it
                self.answer = exc
            self.answered_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the waiter never answered"
        return self.answer


@pytest.fixture
def key():
    return f"poll:{uuid.uuid4().hex}"


@pytest.fixture
def writer(redis_server, state_table):
    return Service(redis_server.url, state_table)


@pytest.fixture
def reader(redis_server, state_table):
    return Service(redis_server.url, state_table)


def settle(service, key, count=1):
    """Wait until `count` waiters are subscribed (Redis counts them) and past their first read (they count
    themselves), so that the test's write comes during their wait, not before it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            listening = service.link is None or service.link._client.pubsub_numsub(change_channel(key))[0][1] >= count
        except redis.ConnectionError:
            listening = True  # a waiter whose Redis is down polls: nothing to subscribe to
        if listening and service.metrics.count("LongPolls") >= count:
            return
        time.sleep(0.005)
    raise AssertionError("the waiters did not begin to wait")


# --- the notification -------------------------------------------------------------------------------------


def test_every_cache_write_that_lands_announces_its_version_and_a_refused_one_nothing(writer, raw_redis, key):
    listener = raw_redis.pubsub()
    listener.subscribe(change_channel(key))
    assert listener.get_message(timeout=1)["type"] == "subscribe"

    writer.manager.put(key, "a", actor="alice")  # a fence over nothing: still announced
    writer.manager.get(key)  # the fill
    writer.manager.put(key, {"b": 1}, actor="alice")
    old = writer.store.get(key)
    writer.cache.write_if_newer(CacheEntry(old))  # the same version again: refused, nothing announced
    writer.manager.delete(key, actor="alice")

    heard = []
    while (message := listener.get_message(timeout=0.2)) is not None:
        heard.append(int(message["data"]))
    assert heard == [1, 1, 2, 3]
    listener.close()


def test_a_patch_announces_its_version_with_the_locks_release(writer, raw_redis, key):
    writer.manager.put(key, {"a": 1}, actor="alice")
    listener = raw_redis.pubsub()
    listener.subscribe(change_channel(key))
    assert listener.get_message(timeout=1)["type"] == "subscribe"

    writer.manager.patch(key, {"b": 2}, actor="alice")

    message = listener.get_message(timeout=1)
    assert (message["type"], int(message["data"])) == ("message", 2)
    listener.close()


# --- waking -----------------------------------------------------------------------------------------------


def test_a_waiter_gets_the_new_version_within_100_ms_of_the_writers_acknowledgement(writer, reader, key):
    writer.manager.put(key, {"n": 1}, actor="alice")
    waiting = Waiting(reader, key, {1}, 10)
    settle(reader, key)

    writer.manager.put(key, {"n": 2}, actor="alice")
    acknowledged = time.monotonic()

    answer = waiting.join()
    assert (answer.record.version, answer.canonical_value) == (2, b'{"n":2}')
    assert waiting.answered_at - acknowledged < NOTIFIED_WITHIN_SECONDS
    assert reader.metrics.count("LongPollWakeups") == 1
    assert reader.metrics.count("LongPollChanged") == 1


def test_without_redis_a_waiter_gets_the_new_version_within_its_poll_interval(redis_server, state_table, key):
    writer = Service(redis_server.url, state_table, redis=False)
    reader = Service(redis_server.url, state_table, redis=False)
    writer.manager.put(key, 1, actor="alice")
    waiting = Waiting(reader, key, {1}, 10)
    settle(reader, key)

    writer.manager.put(key, 2, actor="alice")
    acknowledged = time.monotonic()

    assert waiting.join().record.version == 2
    assert waiting.answered_at - acknowledged < POLICY.poll_seconds + 0.2


def test_a_wait_that_sees_no_change_ends_at_the_requested_time_with_the_version_held(reader, key):
    reader.manager.put(key, 1, actor="alice")
    waiting = Waiting(reader, key, {1}, 1.5)

    answer = waiting.join()
    assert answer.record.version == 1
    assert 1.5 <= waiting.answered_at - waiting.started_at < 1.5 + 0.25
    assert reader.metrics.count("LongPollNotModified") == 1
    # With a subscription the key is read again about once a second, not polled every 0.5 s.
    assert reader.metrics.count("LongPollWakeups") == 0


def test_a_version_the_client_does_not_hold_is_answered_at_once(reader, key):
    reader.manager.put(key, 1, actor="alice")
    reader.manager.put(key, 2, actor="alice")
    waiting = Waiting(reader, key, {1}, 10)

    assert waiting.join().record.version == 2
    assert waiting.answered_at - waiting.started_at < 0.5


def test_a_key_deleted_during_the_wait_is_not_found_at_once(writer, reader, key):
    writer.manager.put(key, 1, actor="alice")
    waiting = Waiting(reader, key, {1}, 10)
    settle(reader, key)

    writer.manager.delete(key, actor="alice")
    acknowledged = time.monotonic()

    assert isinstance(waiting.join(), NotFound)
    assert waiting.answered_at - acknowledged < NOTIFIED_WITHIN_SECONDS


def test_an_absent_key_is_not_found_at_once(reader, key):
    waiting = Waiting(reader, key, {1}, 10)
    assert isinstance(waiting.join(), NotFound)
    assert waiting.answered_at - waiting.started_at < 0.5


def test_a_key_that_expires_during_the_wait_is_not_found_when_it_expires(writer, reader, key):
    writer.manager.put(key, 1, actor="alice", ttl_seconds=1)
    waiting = Waiting(reader, key, {1}, 10)

    assert isinstance(waiting.join(), NotFound)
    assert waiting.answered_at - waiting.started_at < 1.3


def test_fifty_waiters_on_one_key_all_wake(writer, reader, key):
    writer.manager.put(key, 1, actor="alice")
    waiters = [Waiting(reader, key, {1}, 15) for _ in range(50)]
    settle(reader, key, count=50)

    writer.manager.put(key, 2, actor="alice")
    acknowledged = time.monotonic()

    answers = [waiting.join() for waiting in waiters]
    assert {answer.record.version for answer in answers} == {2}
    assert max(waiting.answered_at for waiting in waiters) - acknowledged < 1.0


# --- notifications that lie or never come -----------------------------------------------------------------


def test_a_late_write_through_of_an_older_version_does_not_wake_the_waiter_into_it(writer, reader, raw_redis, key):
    writer.manager.put(key, "v1", actor="alice")
    first = writer.store.get(key)
    writer.manager.put(key, "v2", actor="alice")
    waiting = Waiting(reader, key, {2}, 1.5)
    settle(reader, key)
    deadline = time.monotonic() + 5
    while not raw_redis.hexists(entry_key(key), "d"):  # the waiter's first read has filled version 2
        assert time.monotonic() < deadline
        time.sleep(0.005)
    raw_redis.delete(entry_key(key))  # wiped: the late write-through of version 1 lands, as a fence

    assert writer.cache.write_if_newer(CacheEntry(first))
    raw_redis.publish(change_channel(key), b"1")

    answer = waiting.join()
    assert answer.record.version == 2  # the wait ran out: 304 with the version the client holds
    assert waiting.answered_at - waiting.started_at >= 1.5
    assert reader.metrics.count("LongPollWakeups") == 0


def test_a_forged_notification_of_a_newer_version_costs_a_read_never_an_answer(reader, raw_redis, key):
    reader.manager.put(key, "v1", actor="alice")
    waiting = Waiting(reader, key, {1}, 1.5)
    settle(reader, key)

    raw_redis.publish(change_channel(key), b"99")
    raw_redis.publish(change_channel(key), b"not a version")

    answer = waiting.join()
    assert answer.record.version == 1
    assert waiting.answered_at - waiting.started_at >= 1.5
    assert reader.metrics.count("LongPollWakeups") == 1


def test_a_write_whose_notification_is_lost_is_found_by_the_consistent_recheck(
    writer, reader, redis_server, state_table, key
):
    writer.manager.put(key, 1, actor="alice")
    waiting = Waiting(reader, key, {1}, 10)
    settle(reader, key)

    # A writer without Redis: nothing is announced, as when a write-through did not land.
    Service(redis_server.url, state_table, redis=False).manager.put(key, 2, actor="alice")
    acknowledged = time.monotonic()

    assert waiting.join().record.version == 2
    assert waiting.answered_at - acknowledged < POLICY.recheck_seconds + 0.3


def test_a_subscription_killed_mid_wait_falls_back_to_polling(writer, reader, raw_redis, state_table, key):
    writer.manager.put(key, 1, actor="alice")
    waiting = Waiting(reader, key, {1}, 10)
    settle(reader, key)

    assert raw_redis.client_kill_filter(_type="pubsub") >= 1
    time.sleep(0.2)
    # Written without Redis, so no notification could reach a new subscription either.
    writer_without_redis = Service("redis://unused", state_table, redis=False)
    writer_without_redis.manager.put(key, 2, actor="alice")
    acknowledged = time.monotonic()

    assert waiting.join().record.version == 2
    assert waiting.answered_at - acknowledged < POLICY.poll_seconds + 0.3
    assert reader.metrics.count("LongPollFeedLost") == 1


def test_with_redis_down_the_waiter_polls(redis_server, state_table, key):
    writer = Service(redis_server.url, state_table, redis=False)
    reader = Service("redis://127.0.0.1:1", state_table)  # nothing listens there: refused at once
    writer.manager.put(key, 1, actor="alice")
    waiting = Waiting(reader, key, {1}, 10)
    settle(reader, key)

    writer.manager.put(key, 2, actor="alice")
    acknowledged = time.monotonic()

    assert waiting.join().record.version == 2
    assert waiting.answered_at - acknowledged < POLICY.poll_seconds + 0.3
    assert reader.metrics.count("LongPollFeedUnavailable") == 1


def test_a_write_acknowledged_before_the_wait_but_missing_from_the_cache_is_answered_within_the_recheck(
    writer, reader, redis_server, state_table, key
):
    # The cache holds version 1 with its value; version 2 is written by a writer that cannot reach Redis (the
    # documented window in which a plain read may still be stale), then the long-poll for "1" begins.
    writer.manager.put(key, 1, actor="alice")
    writer.manager.get(key)
    writer.manager.put(key, 1, actor="alice")  # over a value: the write-through stores version 2's value
    assert reader.manager.get(key).record.version == 2
    Service(redis_server.url, state_table, redis=False).manager.put(key, 3, actor="alice")
    assert reader.manager.get(key).record.version == 2  # stale: the write-through of 3 never happened
    started = time.monotonic()

    answer = Waiting(reader, key, {2}, 10).join()

    assert answer.record.version == 3
    assert time.monotonic() - started < POLICY.recheck_seconds + 0.3


def test_an_entry_evicted_during_the_wait_still_wakes_the_waiter_with_the_new_version(writer, reader, raw_redis, key):
    writer.manager.put(key, "v1", actor="alice")
    waiting = Waiting(reader, key, {1}, 10)
    settle(reader, key)
    raw_redis.delete(entry_key(key))  # evicted: the next write-through stores a fence, not a value

    writer.manager.put(key, "v2", actor="alice")
    acknowledged = time.monotonic()

    answer = waiting.join()
    assert (answer.record.version, answer.canonical_value) == (2, b'"v2"')
    assert waiting.answered_at - acknowledged < NOTIFIED_WITHIN_SECONDS
    assert reader.metrics.count("LongPollWakeups") == 1


def test_two_writers_racing_during_the_wait_never_make_it_answer_what_the_client_holds_or_older(
    writer, redis_server, state_table, key
):
    other = Service(redis_server.url, state_table)
    writer.manager.put(key, 0, actor="alice")
    for _ in range(5):
        reader = Service(redis_server.url, state_table)
        held = reader.manager.get(key, consistent=True).record.version
        waiting = Waiting(reader, key, {held}, 10)
        settle(reader, key)
        threads = [
            threading.Thread(target=service.manager.put, args=(key, n), kwargs={"actor": "alice"})
            for n, service in enumerate((writer, other))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answer = waiting.join()
        assert answer.record.version in (held + 1, held + 2)
        assert answer.canonical_value in (b"0", b"1")
