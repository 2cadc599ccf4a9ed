"""A key's new versions as Redis announces them: every cache write that lands (state_cache.py's
write-if-newer step: write-throughs, tombstones, fills, replays, the stream's repair) publishes its version on
the key's change channel, and a long-poll listens there instead of polling DynamoDB.

A notification is only a hint to read again: it carries a version and nothing else, so a forged or late one
costs a read, never a wrong answer. Redis trouble is never an error here: the subscription is simply not
there (None), and the waiter falls back to polling.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from state_core.cache.breaker import RedisUnavailable
from state_core.cache.state_cache import change_channel
from state_core.domain.params import ascii_int

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.client import PubSub

    from state_core.cache.link import RedisLink
    from state_core.domain.ports import MetricsSink

# Versions are below 10^15 (the history's cursor limits them); anything else on the channel is ignored.
_MAX_VERSION = 10**15 - 1


class RedisSubscription:
    """One key's change channel, subscribed on a connection of its own for one wait."""

    def __init__(self, link: RedisLink, pubsub: PubSub, monotonic: Callable[[], float]) -> None:
        self._link = link
        self._pubsub = pubsub
        self._monotonic = monotonic

    def next_versions(self, timeout: float) -> list[int] | None:
        """The versions announced within `timeout` seconds, as soon as one comes ([] when none did);
        None once the subscription is broken (closed connection, Redis gone): the caller polls instead."""
        ends = self._monotonic() + max(0.0, timeout)
        versions: list[int] = []
        try:
            while True:
                left = ends - self._monotonic()
                message = self._link.listen(self._pubsub, max(0.0, left) if not versions else 0.0)
                if message is None:
                    if versions or left <= 0:
                        return versions
                    continue  # a subscribe confirmation or nothing yet: go on until the time is up
                if message.get("type") != "message":
                    continue
                data = message.get("data")
                text = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
                version = ascii_int(text, low=0, high=_MAX_VERSION)
                if version is not None:
                    versions.append(version)
        except RedisUnavailable:
            return None

    def close(self) -> None:
        # Closing a broken connection may fail; it is dropped either way.
        with contextlib.suppress(Exception):
            self._pubsub.close()


class RedisChangeFeed:
    """Subscriptions to keys' change channels over the container's Redis link."""

    def __init__(
        self,
        link: RedisLink,
        metrics: MetricsSink,
        *,
        monotonic: Callable[[], float],
        confirm_timeout_seconds: float = 0.1,
    ) -> None:
        self._link = link
        self._metrics = metrics
        self._monotonic = monotonic
        self._confirm_timeout_seconds = confirm_timeout_seconds

    def subscribe(self, key: str) -> RedisSubscription | None:
        """A confirmed subscription to `key`'s changes, or None while Redis is unavailable (the breaker
        open, a refused or slow connection)."""
        try:
            pubsub = self._link.subscribe(change_channel(key), timeout_seconds=self._confirm_timeout_seconds)
        except RedisUnavailable:
            self._metrics.add_metric(name="LongPollFeedUnavailable", unit="Count", value=1)
            return None
        return RedisSubscription(self._link, pubsub, self._monotonic)
