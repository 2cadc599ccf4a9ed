"""Long-poll of one key: answer as soon as its version is no longer one the client holds, or when the wait
ends.

The order closes the race between a write and the wait: subscribe to the key's change feed first, then read
the key (a read like any other, so never older than a write acknowledged before the request began); a write
after that read announces its version on the feed, which this subscription hears. A notification is only a
hint: a version at or below the one last read is ignored (a late write-through, a replay, a fence), a newer
one makes the waiter read the key again, and only what that read returns is answered. So a lost, late or
forged notification costs a read or a delay, never an older value.

Notifications can be lost (Redis down or restarted, the breaker open, a write-through that did not land):
with a feed the key is also read strongly consistently every `recheck_seconds`, and without one (no Redis,
or the subscription broke) every `poll_seconds`. A key whose expiry falls inside the wait is read again at
that moment, so it answers 404 when it expires, as a read would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from state_core import deadline
from state_core.domain.errors import CorruptStoredValue, NotFound, ServiceUnavailable
from state_core.domain.ports import ChangeFeed, MetricsSink, Subscription
from state_core.service.manager import StateManager, StateView


@dataclass(frozen=True, slots=True)
class WaitPolicy:
    """How long a long-poll may wait, and how often it reads the key without being told to."""

    # API Gateway's integration timeout is 30 s: the longest wait leaves room to read and answer.
    max_wait_seconds: int = 25
    # With a change feed: a consistent read this often, for notifications that never came.
    recheck_seconds: float = 1.0
    # Without one (no Redis, or the subscription broke): a consistent read this often.
    poll_seconds: float = 0.5
    # The invocation's time kept after the wait: a last read (which DynamoDB's guard refuses with less than
    # an attempt's budget left) and the answer.
    answer_margin_seconds: float = 0.5


class ChangeWaiter:
    """Waits for a key to change, over the StateManager's reads and an optional change feed."""

    def __init__(
        self,
        manager: StateManager,
        feed: ChangeFeed | None,
        *,
        clock: Callable[[], datetime],
        metrics: MetricsSink,
        policy: WaitPolicy | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        remaining: Callable[[], float | None] = deadline.remaining,
    ) -> None:
        self._manager = manager
        self._feed = feed
        self._clock = clock
        self._metrics = metrics
        self._policy = policy or WaitPolicy()
        self._monotonic = monotonic
        self._sleep = sleep
        self._remaining = remaining

    def applicable_wait(self, requested: int) -> int:
        """The whole seconds this request may wait: `requested`, at most the policy's longest wait, and no
        longer than the invocation leaves after the answer margin."""
        wait = min(requested, self._policy.max_wait_seconds)
        left = self._remaining()
        if left is not None:
            wait = min(wait, max(0, math.floor(left - self._policy.answer_margin_seconds)))
        return max(0, wait)

    def wait(
        self, key: str, *, unchanged: Callable[[int], bool], wait_seconds: float, consistent: bool = False
    ) -> StateView:
        """The key's state once `unchanged(version)` is false, or, when `wait_seconds` run out first, as last
        read (still unchanged: the caller answers 304). NotFound as soon as the key is absent, deleted or
        expired; other errors of the first read as they come."""
        started = self._monotonic()
        ends = started + max(0.0, wait_seconds)
        subscription = self._subscribe(key) if wait_seconds > 0 else None
        try:
            view = self._manager.get(key, consistent=consistent)
            if not unchanged(view.record.version) or wait_seconds <= 0:
                self._ended("LongPollAnsweredAtOnce", started)
                return view
            self._metrics.add_metric(name="LongPolls", unit="Count", value=1)
            next_check = self._monotonic() + self._interval(subscription)
            while True:
                now = self._monotonic()
                if now >= ends:
                    self._ended("LongPollNotModified", started)
                    return view
                wake = min(ends, next_check, self._expiry_moment(view, now))
                notified = False
                if subscription is not None:
                    versions = subscription.next_versions(wake - now)
                    if versions is None:
                        # The feed broke: poll from now on, starting at once (a notification may be lost).
                        self._metrics.add_metric(name="LongPollFeedLost", unit="Count", value=1)
                        subscription.close()
                        subscription = None
                        next_check = self._monotonic()
                    else:
                        notified = any(version > view.record.version for version in versions)
                else:
                    self._sleep(max(0.0, wake - now))
                now = self._monotonic()
                # A re-check that falls on the wait's end is left out: the 304 stands on the one before it
                # (at most an interval old) and on the notifications since.
                due = next_check <= now < ends
                if not (notified or due or now >= self._expiry_moment(view, now)):
                    continue
                if notified:
                    self._metrics.add_metric(name="LongPollWakeups", unit="Count", value=1)
                if due:
                    next_check = now + self._interval(subscription)
                # A notification's read may come from the cache (the notified version is there, or the
                # read misses and goes to DynamoDB); a timed re-check never trusts the cache.
                fresh = self._recheck(key, consistent=consistent or not notified, started=started)
                if fresh is None or fresh.record.version < view.record.version:
                    # Failed, or older than what this wait already read (a cache a failover rolled back):
                    # never answered; the next timed re-check reads DynamoDB.
                    continue
                if not unchanged(fresh.record.version):
                    self._ended("LongPollChanged", started)
                    return fresh
                view = fresh
        finally:
            if subscription is not None:
                subscription.close()

    def _subscribe(self, key: str) -> Subscription | None:
        return self._feed.subscribe(key) if self._feed is not None else None

    def _interval(self, subscription: Subscription | None) -> float:
        return self._policy.recheck_seconds if subscription is not None else self._policy.poll_seconds

    def _expiry_moment(self, view: StateView, now: float) -> float:
        """When, on the monotonic clock, the key's expiry falls (infinity without one)."""
        expires_at = view.record.expires_at
        if expires_at is None:
            return math.inf
        return now + max(0.0, expires_at - self._clock().timestamp())

    def _recheck(self, key: str, *, consistent: bool, started: float) -> StateView | None:
        """The key read again during the wait; None when the read failed. A re-check that fails is skipped
        (the next one, or a notification, comes soon), except for a stored value that fails its checks,
        which is the answer, as it would be to any read; NotFound (deleted, expired) ends the wait."""
        try:
            return self._manager.get(key, consistent=consistent)
        except NotFound:
            self._ended("LongPollGone", started)
            raise
        except ServiceUnavailable as trouble:
            if isinstance(trouble, CorruptStoredValue):
                raise
            self._metrics.add_metric(name="LongPollReadErrors", unit="Count", value=1)
            return None

    def _ended(self, how: str, started: float) -> None:
        self._metrics.add_metric(name=how, unit="Count", value=1)
        self._metrics.add_metric(
            name="LongPollWaitTime", unit="Milliseconds", value=(self._monotonic() - started) * 1000
        )
