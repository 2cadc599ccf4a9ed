"""The stream's cache repair: the safety net behind every write-through that did not land.

A writer whose Redis call failed, whose breaker was open, or that died between DynamoDB and Redis leaves
the cache holding an older entry, which other containers would serve. This step fences every state
record's version into the cache (CacheEntry.fence through write-if-newer: older versions are kept out,
readers fill the current state from DynamoDB, and pending fill leases are dropped). It runs on its own
event source mapping, with its own checkpoint, so it neither holds up events nor is held up by them.

Unlike every request path, it never skips Redis for an open breaker: it retries each record with a short
backoff until Redis accepts, so a cache that is reachable again is repaired within one backoff step of
it. When the invocation runs short of time it reports the first unrepaired record as a batch item failure
and Lambda retries from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from state_core.cache.breaker import RedisUnavailable
from state_core.domain.cached import CacheEntry
from state_core.domain.ports import Log, MetricsSink
from state_core.storage.state import record_of_item
from state_core.stream.events import is_state_record, new_state_image


class FenceSink(Protocol):
    """cache.state_cache.RedisStateCache's repair: raises RedisUnavailable on trouble, never skips for a breaker."""

    def repair(self, entry: CacheEntry) -> bool: ...


@dataclass(frozen=True, slots=True)
class RepairPolicy:
    # Short steps: the contract allows stale reads for at most 1 s after Redis is reachable again.
    first_backoff_seconds: float = 0.05
    max_backoff_seconds: float = 0.2
    # Stop retrying while this much of the invocation is left, and let Lambda retry from the first
    # unrepaired record: a timeout would retry the whole batch.
    reserve_seconds: float = 2.0


class CacheRepairer:
    def __init__(
        self,
        cache: FenceSink,
        *,
        metrics: MetricsSink,
        log: Log,
        policy: RepairPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._log = log
        self._policy = policy or RepairPolicy()
        self._sleep = sleep

    def repair(self, records: Sequence[Mapping[str, Any]], remaining_seconds: Callable[[], float]) -> list[str]:
        """Fence every state record's version, in stream order. Returns the sequence number of the first
        record left unrepaired (as the only batch item failure), or nothing."""
        repaired = 0
        for record in records:
            state = _state_of(record)
            if state is None:
                continue
            entry = CacheEntry(state)
            backoff = self._policy.first_backoff_seconds
            while True:
                try:
                    if self._cache.repair(entry):
                        repaired += 1
                    break
                except RedisUnavailable as exc:
                    self._metrics.add_metric(name="CacheRepairErrors", unit="Count", value=1)
                    if remaining_seconds() - backoff < self._policy.reserve_seconds:
                        self._log.warning("cache repair deferred", key=state.key, error=str(exc))
                        if repaired:
                            self._metrics.add_metric(name="CacheRepairs", unit="Count", value=repaired)
                        return [str(record["dynamodb"]["SequenceNumber"])]
                    self._sleep(backoff)
                    backoff = min(self._policy.max_backoff_seconds, backoff * 2)
        if repaired:
            self._metrics.add_metric(name="CacheRepairs", unit="Count", value=repaired)
        return []


def _state_of(record: Mapping[str, Any]) -> Any:
    """The state a stream record wrote, or None (not a state item, a removal, moto's keys-only insert)."""
    if not is_state_record(record):
        return None
    item = new_state_image(record)
    if item is None:
        return None
    try:
        return record_of_item(item)
    except (KeyError, ValueError, TypeError):
        # Not a state this service wrote: nothing to fence, and a record that can never be repaired must
        # not block the shard (the publisher reports it, on its own mapping).
        return None
