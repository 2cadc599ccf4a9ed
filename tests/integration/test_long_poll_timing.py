"""The long-poll's waiter on injected clocks, over the real store on the serialized moto server: how often it
reads DynamoDB (what a waiter costs), what a broken feed or a failing re-check does, the key's expiry, and how
the invocation's deadline bounds the wait; 25-second waits that run in milliseconds."""

import uuid
from datetime import timedelta

import boto3
import pytest

from state_core.domain.errors import NotFound, ServiceUnavailable
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.service.waiting import ChangeWaiter, WaitPolicy
from state_core.storage.state import StateStore
from tests.doubles import Clock, MonotonicClock, RecordedMetrics

pytestmark = pytest.mark.integration


class Time:
    """A wall clock and a monotonic clock that move together, only when the waiter sleeps or listens."""

    def __init__(self):
        self.wall = Clock()
        self.monotonic = MonotonicClock()

    def sleep(self, seconds):
        self.monotonic.now += seconds
        self.wall.advance(seconds)


class CountingStore:
    """The real store; counts the waiter's reads and when they happened, and fails the ones asked to."""

    def __init__(self, store, time_):
        self._store = store
        self._time = time_
        self.reads = []
        self.failing = set()

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get(self, key):
        self.reads.append(self._time.monotonic.now)
        if len(self.reads) in self.failing:
            raise ServiceUnavailable("DynamoDB is throttling")
        return self._store.get(key)


class ScriptedFeed:
    """A change feed whose subscription hears nothing, breaks at `breaks_at` seconds, or announces
    `announce` = (at, version) once; listening takes the time it is given."""

    def __init__(self, time_, *, breaks_at=None, announce=None):
        self._time = time_
        self.breaks_at = breaks_at
        self.announce = announce
        self.subscriptions = 0
        self.closed = 0

    def subscribe(self, key):
        self.subscriptions += 1
        return self

    def next_versions(self, timeout):
        now = self._time.monotonic.now
        if self.breaks_at is not None and now + timeout >= self.breaks_at:
            self._time.sleep(max(0.0, self.breaks_at - now))
            return None
        if self.announce is not None and now + timeout >= self.announce[0]:
            at, version = self.announce
            self.announce = None
            self._time.sleep(max(0.0, at - now))
            return [version]
        self._time.sleep(timeout)
        return []

    def close(self):
        self.closed += 1


@pytest.fixture
def time_():
    return Time()


@pytest.fixture
def store(state_table, time_):
    return CountingStore(StateStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), state_table), time_)


@pytest.fixture
def key():
    return f"poll:{uuid.uuid4().hex}"


def waiter_over(store, time_, feed, *, remaining=None, policy=None):
    metrics = RecordedMetrics()
    manager = StateManager(store, clock=time_.wall, metrics=metrics)
    waiter = ChangeWaiter(
        manager,
        feed,
        clock=time_.wall,
        metrics=metrics,
        policy=policy or WaitPolicy(),
        monotonic=time_.monotonic,
        sleep=time_.sleep,
        remaining=lambda: remaining,
    )
    return manager, waiter, metrics


def test_with_a_feed_a_quiet_25_second_wait_reads_dynamodb_once_a_second(store, time_, key):
    feed = ScriptedFeed(time_)
    manager, waiter, metrics = waiter_over(store, time_, feed)
    manager.put(key, 1, actor="alice")

    view = waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=25)

    assert view.record.version == 1
    assert time_.monotonic.now == 25
    # The first read, then one strongly consistent re-check a second: 25 RRU for a small item.
    assert len(store.reads) == 1 + 24
    assert (feed.subscriptions, feed.closed) == (1, 1)
    assert metrics.count("LongPollNotModified") == 1


def test_without_a_feed_a_quiet_25_second_wait_polls_twice_a_second(store, time_, key):
    manager, waiter, _ = waiter_over(store, time_, None)
    manager.put(key, 1, actor="alice")

    waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=25)

    assert time_.monotonic.now == 25
    assert len(store.reads) == 1 + 49


def test_a_feed_that_breaks_switches_the_rest_of_the_wait_to_polling_at_once(store, time_, key):
    feed = ScriptedFeed(time_, breaks_at=3.2)
    manager, waiter, metrics = waiter_over(store, time_, feed)
    manager.put(key, 1, actor="alice")

    waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=5)

    assert store.reads == [0, 1, 2, 3, 3.2, 3.7, 4.2, 4.7]
    assert metrics.count("LongPollFeedLost") == 1
    assert feed.closed == 1


def test_a_notification_of_a_newer_version_reads_at_once(store, time_, key):
    feed = ScriptedFeed(time_, announce=(0.25, 2))
    manager, waiter, metrics = waiter_over(store, time_, feed)
    manager.put(key, 1, actor="alice")
    manager.put(key, 2, actor="alice")  # written "during" the wait: the first read already sees 2

    view = waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=25)

    assert view.record.version == 2
    assert store.reads == [0]
    assert metrics.count("LongPollAnsweredAtOnce") == 1


def test_a_notification_of_the_version_held_or_older_costs_nothing(store, time_, key):
    manager, waiter, metrics = waiter_over(store, time_, ScriptedFeed(time_, announce=(0.25, 1)))
    manager.put(key, 1, actor="alice")

    waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=2)

    assert store.reads == [0, 1]
    assert metrics.count("LongPollWakeups") == 0


def test_re_checks_that_fail_are_skipped_and_the_wait_goes_on(store, time_, key):
    manager, waiter, metrics = waiter_over(store, time_, None)
    manager.put(key, 1, actor="alice")
    store.failing = {2, 3, 4}

    view = waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=3)

    assert view.record.version == 1
    assert metrics.count("LongPollReadErrors") == 3
    assert time_.monotonic.now == 3


def test_a_first_read_that_fails_is_the_answer(store, time_, key):
    manager, waiter, _ = waiter_over(store, time_, None)
    manager.put(key, 1, actor="alice")
    store.reads.clear()
    store.failing = {1}

    with pytest.raises(ServiceUnavailable):
        waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=3)
    assert time_.monotonic.now == 0


def test_a_key_that_expires_during_the_wait_is_not_found_at_its_expiry(store, time_, key):
    # Re-checks far apart: only the expiry's own moment can answer at 3 s.
    policy = WaitPolicy(recheck_seconds=10, poll_seconds=10)
    manager, waiter, metrics = waiter_over(store, time_, None, policy=policy)
    manager.put(key, 1, actor="alice", ttl_seconds=3)

    with pytest.raises(NotFound):
        waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=25)

    assert time_.monotonic.now == pytest.approx(3)
    assert metrics.count("LongPollGone") == 1


@pytest.mark.parametrize(
    ("requested", "remaining", "applied"),
    [
        (10, None, 10),
        (10**9, None, 25),
        (0, None, 0),
        (25, 33.7, 25),
        (25, 30.0, 24),  # 30 s left: the wait ends 5.5 s before the deadline
        (20, 7.0, 1),
        (20, 5.0, 0),
        (20, -1.0, 0),
    ],
)
def test_the_wait_fits_the_policy_and_the_invocations_deadline(store, time_, requested, remaining, applied):
    policy = WaitPolicy(answer_margin_seconds=5.5)
    _, waiter, _ = waiter_over(store, time_, None, remaining=remaining, policy=policy)
    assert waiter.applicable_wait(requested) == applied


def test_an_expiry_far_beyond_the_wait_changes_nothing(store, time_, key):
    manager, waiter, _ = waiter_over(store, time_, ScriptedFeed(time_))
    manager.put(key, 1, actor="alice", ttl_seconds=3600)

    view = waiter.wait(key, unchanged=lambda version: version == 1, wait_seconds=3)

    assert view.record.version == 1
    assert time_.wall.now - timedelta(seconds=3) == Clock().now
