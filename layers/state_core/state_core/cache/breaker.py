"""A circuit breaker for Redis: after a failure, skip Redis for a window, so a dead or hung server costs
at most one timeout per container per window instead of one per request: reads then go to DynamoDB, which
is never stale, so an outage of the cache costs latency only."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RedisUnavailable(Exception):
    """Redis failed, timed out, or the breaker is open. Callers degrade; requests never fail on it.
    `timed_out`: Redis did not answer in time, the one failure worth trying again at once."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class CircuitBreaker:
    """Closed: calls go through. A failure opens it for `open_seconds`; then one trial call is let
    through (half-open): success closes it, failure opens it again."""

    def __init__(self, open_seconds: float = 0.5, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._open_seconds = open_seconds
        self._monotonic = monotonic
        self._open_until = 0.0
        self._trial_in_flight = False
        self._lock = threading.Lock()

    @property
    def is_closed(self) -> bool:
        return self._open_until == 0.0

    def allow(self) -> bool:
        """May a call be made now?"""
        with self._lock:
            if self._open_until == 0.0:
                return True
            if self._monotonic() < self._open_until or self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._open_until = 0.0
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._open_until = self._monotonic() + self._open_seconds
            self._trial_in_flight = False
