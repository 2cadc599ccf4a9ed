"""Per-key locks in Redis for PATCH: contending writers queue instead of burning conditional write
retries. A lock is only an optimization: DynamoDB's version condition stays the fence, so a lost,
expired or skipped lock can cost a retry but never an update.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from state_core.cache.breaker import RedisUnavailable
from state_core.domain.cached import CacheEntry
from state_core.domain.ports import MetricsSink

if TYPE_CHECKING:
    from state_core.cache.link import RedisLink
    from state_core.cache.state_cache import RedisStateCache

# Compare-and-delete: release only a lock we still hold (after our lease expired, another writer may).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lock_key(key: str) -> str:
    return f"lk:{{{key}}}"


@dataclass(frozen=True, slots=True)
class LockPolicy:
    # Far longer than one read-merge-write (a few ms to tens of ms), far shorter than a PATCH's budget.
    lease_seconds: float = 2.0
    # How long to queue before going ahead optimistically.
    max_wait_seconds: float = 2.0
    # Polls of about one hold time (a read-merge-write): 64 PATCHes on one key through the local stack
    # (make bench) ran at 14 op/s with 2-20 ms polls (the waiters' polls ate the CPU and starved some
    # into timeouts and conflicts), 18.5 op/s with 0 conflicts at 5-30 ms.
    min_poll_seconds: float = 0.005
    max_poll_seconds: float = 0.03


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    token: str


class RedisKeyLock:
    """SET NX PX with a random token; bounded, jittered wait; compare-and-delete release."""

    def __init__(
        self,
        link: RedisLink,
        metrics: MetricsSink,
        policy: LockPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._metrics = metrics
        self._policy = policy or LockPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._release = link.script(_RELEASE)
        self._rng = random.Random()  # noqa: S311 - poll jitter, not security

    def acquire(self, key: str) -> Lease | None:
        """A lease on `key`, or None when it could not be had in time or Redis is unavailable (the caller
        then goes ahead optimistically: the version condition keeps it correct)."""
        lease, _ = self._acquire(key, None)
        return lease

    def acquire_and_read(self, key: str, cache: RedisStateCache) -> tuple[Lease | None, CacheEntry | None]:
        """`acquire`, with the cache read of `key` sent in the same round trip as each attempt, so the read
        that follows a won lock costs nothing extra. A previous holder's write-through lands before its
        release (same pipeline, in order), so the read sees it. The entry is None on a miss or Redis trouble.
        """
        return self._acquire(key, cache)

    def _acquire(self, key: str, cache: RedisStateCache | None) -> tuple[Lease | None, CacheEntry | None]:
        policy = self._policy
        lease = Lease(key, secrets.token_hex(16))
        lease_ms = int(policy.lease_seconds * 1000)
        deadline = self._monotonic() + policy.max_wait_seconds
        waited = False
        while True:
            entry = None
            try:
                if cache is None:
                    acquired = self._link.run(
                        lambda client: client.set(lock_key(key), lease.token, nx=True, px=lease_ms)
                    )
                else:
                    cache.replay_pending()

                    def queue(pipe: Any) -> None:
                        pipe.set(lock_key(key), lease.token, nx=True, px=lease_ms)
                        # Whether we hold it, asked rather than taken from SET's reply: after a NOSCRIPT
                        # the pipeline is sent again, and the resent SET NX fails on our own lock.
                        pipe.get(lock_key(key))
                        cache.queue_get(pipe, key)

                    # The release goes along: after Redis lost its scripts, one reload covers the whole PATCH.
                    _, holder, reply = self._link.pipeline(queue, scripts=(*cache.scripts, self._release))
                    acquired = holder == lease.token.encode("ascii")
                    entry = cache.entry_from(key, reply)
            except RedisUnavailable:
                self._metrics.add_metric(name="LockErrors", unit="Count", value=1)
                if cache is not None:
                    cache.read_failed()
                return None, None
            if acquired:
                if waited:
                    self._metrics.add_metric(name="LockWaits", unit="Count", value=1)
                return lease, entry
            if self._monotonic() >= deadline:
                self._metrics.add_metric(name="LockTimeouts", unit="Count", value=1)
                return None, entry
            waited = True
            # The longer a writer has queued, the faster it polls, so the lock passes roughly in arrival
            # order: with uniform polls a few writers lost every handoff until they timed out (then
            # wrote without the lock and cost everyone conflicts), under load in `make bench`.
            queued = 1 - (deadline - self._monotonic()) / policy.max_wait_seconds if policy.max_wait_seconds else 1
            ceiling = policy.max_poll_seconds - (policy.max_poll_seconds - policy.min_poll_seconds) * min(1, 2 * queued)
            self._sleep(self._rng.uniform(policy.min_poll_seconds, ceiling))

    def release(self, lease: Lease) -> None:
        """Release if still ours; on Redis trouble the lease simply expires."""
        try:
            self._link.run(lambda client: self._release(keys=[lock_key(lease.key)], args=[lease.token], client=client))
        except RedisUnavailable:
            self._metrics.add_metric(name="LockErrors", unit="Count", value=1)

    def write_and_release(self, lease: Lease, cache: RedisStateCache, entry: CacheEntry) -> None:
        """The write-through of `entry`, then the release, in one round trip. Both are idempotent, so a
        resend after NOSCRIPT is safe. Sent even while the breaker is open, like every write-through
        (RedisStateCache.write_if_newer); after a timeout the write-through alone is tried once more, and a
        write-through that did not land is kept for replay. The lease then expires."""
        try:
            cache.replay_pending(bypass_breaker=True)

            def queue(pipe: Any) -> None:
                cache.queue_write(pipe, entry)
                pipe.evalsha(self._release.sha, 1, lock_key(lease.key), lease.token)

            self._link.pipeline(queue, scripts=(*cache.scripts, self._release), bypass_breaker=True)
        except RedisUnavailable as trouble:
            cache.read_failed()  # counted as a cache error, like any failed cache call
            self._metrics.add_metric(name="LockErrors", unit="Count", value=1)
            if trouble.timed_out:
                cache.write_through_again(entry)
            else:
                cache.remember(entry)
