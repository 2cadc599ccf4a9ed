"""Per-key locks in Redis for PATCH: contending writers queue in arrival order and the releaser hands the
lock to the next one, instead of burning conditional write retries. A lock is only an optimization:
DynamoDB's version condition stays the fence, so a lost, expired or skipped lock can cost a retry but never
an update.

Redis holds, per key (one hash slot, through the `{<key>}` tag): the holder's token with its lease
(`lk:`), the waiters' tokens in arrival order (`lq:`), each waiter's wait deadline (`ld:`, so a waiter
that gave up is skipped) and one wake-up list per waiter (`lw:`), on which it blocks. The release hands
the lock to the next live waiter in the same script that checks the holder, and pushes to its wake list:
the lock never sits idle between a release and the next poll.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from state_core import deadline as invocation
from state_core.cache.breaker import RedisUnavailable
from state_core.cache.state_cache import WRITE_THROUGH_ATTEMPTS
from state_core.domain.cached import CacheEntry
from state_core.domain.ports import MetricsSink

if TYPE_CHECKING:
    from state_core.cache.link import RedisLink
    from state_core.cache.state_cache import RedisStateCache

# KEYS: lock, queue, deadlines, grant count (how many times the lock was granted: a waiter compares it at
# entry and at its turn, to show nobody overtook it). Hands the lock to the first waiter still inside its
# wait, with a short lease (the waiter lengthens it on waking: a waiter that died in the queue holds the key
# only briefly), dropping those whose wait ran out: they have left or are leaving.
_HAND_OVER = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Stamps for the lock's timings are microseconds, so a median of holds is not rounded to whole ms.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function granted(keep_ms)
  redis.call('INCR', KEYS[4])
  redis.call('PEXPIRE', KEYS[4], keep_ms)
end
local function hand_over(now, stamp_us, handoff_ms, wake_prefix, keep_ms)
  while true do
    local head = redis.call('LPOP', KEYS[2])
    if not head then return false end
    local until_ms = tonumber(redis.call('HGET', KEYS[3], head) or '0')
    redis.call('HDEL', KEYS[3], head)
    if until_ms > now then
      redis.call('SET', KEYS[1], head, 'PX', handoff_ms)
      granted(keep_ms)
      local wake = wake_prefix .. head
      redis.call('DEL', wake)
      redis.call('RPUSH', wake, string.format('%d', stamp_us))  -- all 16 digits, not a float's 14
      redis.call('PEXPIRE', wake, until_ms - now + handoff_ms)
      return head
    end
  end
end
"""

# ARGV: token, lease ms, handoff ms, wait left ms, wake prefix, leaving (1/0), queue lifetime ms.
# Takes the lock if it is ours (handed over), free (after handing it to a live waiter ahead of us, if any),
# else queues us once (or, leaving, takes us out of the queue). Returns {held, holder's ttl ms, position,
# grant count, a time on Redis's clock (us): when the lock became ours (0: the wake-up carried it), or now}.
_ENTER = (
    _HAND_OVER
    + """
local token = ARGV[1]
local wake = ARGV[5] .. token
local holder = redis.call('GET', KEYS[1])
if not holder then
  local now = now_us()
  holder = hand_over(math.floor(now / 1000), now, tonumber(ARGV[3]), ARGV[5], tonumber(ARGV[7]))
  if not holder then granted(tonumber(ARGV[7])) end
end
if holder == token or not holder then
  local granted_at = now_us()
  if holder == token then granted_at = tonumber(redis.call('LPOP', wake) or '0') end
  redis.call('SET', KEYS[1], token, 'PX', tonumber(ARGV[2]))
  if redis.call('HDEL', KEYS[3], token) == 1 then redis.call('LREM', KEYS[2], 1, token) end
  redis.call('DEL', wake)
  return {1, 0, -1, tonumber(redis.call('GET', KEYS[4]) or '0'), granted_at}
end
if ARGV[6] == '1' then
  if redis.call('HDEL', KEYS[3], token) == 1 then redis.call('LREM', KEYS[2], 1, token) end
  redis.call('DEL', wake)
  return {0, 0, -1, 0, 0}
end
if redis.call('HEXISTS', KEYS[3], token) == 0 then
  redis.call('RPUSH', KEYS[2], token)
  redis.call('HSET', KEYS[3], token, now_ms() + tonumber(ARGV[4]))
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[7]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[7]))
local position = redis.call('LPOS', KEYS[2], token) or -1
return {0, redis.call('PTTL', KEYS[1]), position, tonumber(redis.call('GET', KEYS[4]) or '0'), now_us()}
"""
)

# ARGV: token, handoff ms, wake prefix, keys' lifetime ms. Release only a lock we still hold (after our
# lease expired, another writer may), handing it to the next live waiter. Returns when, on Redis's clock in
# microseconds (0: it was no longer ours).
_RELEASE = (
    _HAND_OVER
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local now = now_us()
if not hand_over(math.floor(now / 1000), now, tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])) then
  redis.call('DEL', KEYS[1])
end
return now
"""
)


def _microseconds(stamp: bytes | str | int) -> int:
    """A time stamp from the lock's scripts. A releaser of the version before pushed milliseconds to the
    wake-up lists: during a deploy that mixes the two, its stamps are scaled rather than read as a hold of
    decades."""
    value = int(stamp)
    return value * 1000 if 0 < value < 10**14 else value


def lock_key(key: str) -> str:
    return f"lk:{{{key}}}"


def _keys(key: str) -> tuple[str, str, str, str]:
    return lock_key(key), f"lq:{{{key}}}", f"ld:{{{key}}}", f"lg:{{{key}}}"


def _wake_prefix(key: str) -> str:
    return f"lw:{{{key}}}"


@dataclass(frozen=True, slots=True)
class LockPolicy:
    # Far longer than one read-merge-write (a few ms to tens of ms), far shorter than a PATCH's budget.
    lease_seconds: float = 2.0
    # How long to queue before going ahead optimistically.
    max_wait_seconds: float = 2.0
    # The lease a handed-over lock starts with, until its waiter (woken at once, in the same round trip)
    # lengthens it: what a waiter that died in the queue costs the key.
    handoff_seconds: float = 0.25
    # The longest a waiter blocks before it looks again: it then takes a lock left free by a dead holder
    # or a dead waiter, so neither stalls the queue for longer than about its short lease plus this.
    watch_seconds: float = 0.25
    # Slack on the socket over the block, for the answer to travel back.
    socket_slack_seconds: float = 0.1
    # What an acquire leaves of the invocation for the write and the answer.
    reserve_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    token: str
    # When it was taken (monotonic), for the hold time the release reports when Redis's clock cannot.
    taken_at: float = 0.0
    # When Redis made it ours (us on Redis's clock; 0: unknown): a hold then runs from the handoff to the
    # release on one clock, so a woken waiter's own wake-up counts as its hold, as it does for the key.
    granted_us: int = 0


class RedisKeyLock:
    """A fair queue with push handoff; bounded wait; the release hands the lock to the next live waiter."""

    def __init__(
        self,
        link: RedisLink,
        metrics: MetricsSink,
        policy: LockPolicy | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._metrics = metrics
        self._policy = policy or LockPolicy()
        self._monotonic = monotonic
        self._enter = link.script(_ENTER)
        self._release = link.script(_RELEASE)

    def acquire(self, key: str) -> Lease | None:
        """A lease on `key`, or None when it could not be had in time or Redis is unavailable (the caller
        then goes ahead optimistically: the version condition keeps it correct)."""
        lease, _ = self._acquire(key, None)
        return lease

    def acquire_and_read(self, key: str, cache: RedisStateCache) -> tuple[Lease | None, CacheEntry | None]:
        """`acquire`, with the cache read of `key` sent in the same round trip as each attempt, so the read
        that follows a won lock costs nothing extra. A previous holder's write-through lands before its
        release (same pipeline, in order), and a woken waiter's read runs after its wake-up, so the read
        sees it. The entry is None on a miss or Redis trouble.
        """
        return self._acquire(key, cache)

    def _wait_budget(self) -> float:
        budget = self._policy.max_wait_seconds
        left = invocation.remaining()
        if left is not None:
            budget = min(budget, left - self._policy.reserve_seconds)
        return max(0.0, budget)

    def _acquire(self, key: str, cache: RedisStateCache | None) -> tuple[Lease | None, CacheEntry | None]:
        policy = self._policy
        lease = Lease(key, secrets.token_hex(16))
        wake = _wake_prefix(key) + lease.token
        started = self._monotonic()
        deadline = started + self._wait_budget()
        scripts = (self._enter, self._release, *(cache.scripts if cache is not None else ()))
        try:
            if cache is not None:
                cache.replay_pending()
            # The release goes along: after Redis lost its scripts, one reload covers the whole PATCH.
            replies = self._link.pipeline(lambda pipe: self._queue_enter(pipe, lease, cache, deadline), scripts=scripts)
            (held, holder_ttl_ms, position, grants_at_entry, stamp_us), entry = self._entered(replies, key, cache)
            queued_us = stamp_us
            while not held:
                # Blocking ends, socket timeout included, within the wait: a hung Redis cannot hold us longer.
                left = deadline - self._monotonic() - policy.socket_slack_seconds
                if left <= 0.001:
                    # Leaving takes us out of the queue, or gives us the lock if it was just handed over.
                    replies = self._link.pipeline(
                        lambda pipe: self._queue_enter(pipe, lease, cache, deadline, leaving=True), scripts=scripts
                    )
                    (held, _, _, grants, stamp_us), entry = self._entered(replies, key, cache)
                    if not held:
                        self._metrics.add_metric(name="LockTimeouts", unit="Count", value=1)
                        return None, entry
                    break
                # Past the holder's lease a dead holder's lock is free: look again then, or sooner.
                block = round(min(left, policy.watch_seconds, max(0.001, holder_ttl_ms / 1000 + 0.005)), 3)

                def wait_then_enter(pipe: Any, block: float = block) -> None:
                    # Redis runs the rest of the pipeline as soon as the BLPOP returns: a handed-over
                    # lock is lengthened and the entry read at once, without another round trip.
                    pipe.blpop([wake], timeout=block)
                    self._queue_enter(pipe, lease, cache, deadline)

                replies = self._link.pipeline(
                    wait_then_enter, scripts=scripts, timeout_seconds=block + policy.socket_slack_seconds
                )
                (held, holder_ttl_ms, _, grants, stamp_us), entry = self._entered(replies, key, cache)
                if held and not stamp_us and replies[0]:
                    stamp_us = _microseconds(replies[0][1])  # the wake-up we blocked on carried the handoff's time
        except RedisUnavailable:
            self._metrics.add_metric(name="LockErrors", unit="Count", value=1)
            if cache is not None:
                cache.read_failed()
            return None, None
        if position >= 0:
            # Grants between our entry and our turn, ours excluded: our position (one per waiter queued
            # ahead) when nobody overtook us, fewer when some ahead gave up.
            self._waited(started, position, grants - grants_at_entry - 1, stamp_us - queued_us if stamp_us else None)
        return Lease(key, lease.token, self._monotonic(), stamp_us), entry

    def _queue_enter(
        self, pipe: Any, lease: Lease, cache: RedisStateCache | None, deadline: float, *, leaving: bool = False
    ) -> None:
        policy = self._policy
        keys = _keys(lease.key)
        left_ms = max(1, int((deadline - self._monotonic()) * 1000))
        handoff_ms = int(policy.handoff_seconds * 1000)
        args = (lease.token, int(policy.lease_seconds * 1000), handoff_ms, left_ms, _wake_prefix(lease.key))
        pipe.evalsha(self._enter.sha, len(keys), *keys, *args, int(leaving), self._keep_ms())
        if cache is not None:
            cache.queue_get(pipe, lease.key)

    @staticmethod
    def _entered(
        replies: list[Any], key: str, cache: RedisStateCache | None
    ) -> tuple[tuple[bool, int, int, int, int], CacheEntry | None]:
        """Whether we hold the lock, the holder's remaining lease (ms), our place in the queue (-1: not
        queued), the key's grant count, the script's time stamp (us on Redis's clock); and the cache entry
        read after it."""
        held, holder_ttl_ms, position, grants, stamp_us = replies[-1] if cache is None else replies[-2]
        entry = None if cache is None else cache.entry_from(key, replies[-1])
        return (bool(held), int(holder_ttl_ms), int(position), int(grants), _microseconds(stamp_us)), entry

    def _waited(self, started: float, position: int, grants_ahead: int, queued_us: int | None) -> None:
        """The wait as the waiter saw it (its own wake-up included), and on Redis's clock from joining the
        queue to being handed the lock: the queue's own time, comparable with the holds ahead."""
        self._metrics.add_metric(name="LockWaits", unit="Count", value=1)
        self._metrics.add_metric(
            name="LockWaitTime", unit="Milliseconds", value=round((self._monotonic() - started) * 1000, 1)
        )
        if queued_us is not None:
            self._metrics.add_metric(name="LockQueueTime", unit="Milliseconds", value=max(0, queued_us) / 1000)
        self._metrics.add_metric(name="LockQueuePosition", unit="Count", value=position)
        self._metrics.add_metric(name="LockGrantsAhead", unit="Count", value=grants_ahead)

    def _held(self, lease: Lease, released_us: int) -> None:
        """From the lock becoming ours to its release, on Redis's clock when both ends are known (else as
        this process saw it): the time the next waiter waits per holder ahead."""
        if lease.granted_us and released_us:
            held_ms = max(0, released_us - lease.granted_us) / 1000
        else:
            held_ms = round((self._monotonic() - lease.taken_at) * 1000, 1)
        self._metrics.add_metric(name="LockHoldTime", unit="Milliseconds", value=held_ms)

    def _release_args(self, lease: Lease) -> tuple[Any, ...]:
        keys = _keys(lease.key)
        return (
            self._release.sha,
            len(keys),
            *keys,
            lease.token,
            int(self._policy.handoff_seconds * 1000),
            _wake_prefix(lease.key),
            self._keep_ms(),
        )

    def _keep_ms(self) -> int:
        """How long the queue's keys outlive their last use: any waiter's wait and a holder's lease."""
        policy = self._policy
        return int((policy.max_wait_seconds + policy.lease_seconds + policy.handoff_seconds) * 1000)

    def release(self, lease: Lease) -> None:
        """Release if still ours, handing the lock to the next waiter; on Redis trouble the lease simply
        expires."""
        self._held(lease, self._send_release(lease))

    def _send_release(self, lease: Lease) -> int:
        """When the release landed (us on Redis's clock), 0 if it did not or the lock was no longer ours."""
        try:
            replies = self._link.pipeline(
                lambda pipe: pipe.evalsha(*self._release_args(lease)), scripts=(self._release,)
            )
        except RedisUnavailable:
            self._metrics.add_metric(name="LockErrors", unit="Count", value=1)
            return 0
        return int(replies[-1] or 0)

    def write_and_release(self, lease: Lease, cache: RedisStateCache, entry: CacheEntry) -> None:
        """The write-through of `entry`, then the release, in one round trip. Both are idempotent, so a
        resend after NOSCRIPT is safe. Sent even while the breaker is open, like every write-through
        (RedisStateCache.write_if_newer), and after a timeout sent once more, release included: a release
        that did not land would leave the queue waiting out the whole lease. A write-through that did not
        land is kept for replay, and the lease then expires."""

        def queue(pipe: Any) -> None:
            cache.queue_write(pipe, entry, after_read=True)
            pipe.evalsha(*self._release_args(lease))

        released_us = 0
        for attempt in range(1, WRITE_THROUGH_ATTEMPTS + 1):
            try:
                cache.replay_pending(bypass_breaker=True)
                replies = self._link.pipeline(queue, scripts=(*cache.scripts, self._release), bypass_breaker=True)
                released_us = int(replies[-1] or 0)
                break
            except RedisUnavailable as trouble:
                cache.read_failed()  # counted as a cache error, like any failed cache call
                self._metrics.add_metric(name="LockErrors", unit="Count", value=1)
                if attempt == WRITE_THROUGH_ATTEMPTS or not trouble.timed_out:
                    cache.remember(entry)
                    break
        self._held(lease, released_us)
