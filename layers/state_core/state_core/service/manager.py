"""StateManager: the service's operations, over an injected store, clock and metrics sink.

Every rule that decides an outcome lives here; handlers only translate HTTP to these calls and back.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeGuard

from state_core import failpoints
from state_core.domain.cached import CacheEntry
from state_core.domain.codec import StoredValue, canonical_json, check_depth, check_value_size
from state_core.domain.errors import (
    CorruptStoredValue,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    ServiceUnavailable,
    StateError,
)
from state_core.domain.merge_patch import apply_merge_patch
from state_core.domain.ports import Cache, KeyLock, MetricsSink, SchemaChecker, Store, ValueCipher
from state_core.domain.records import SchemaStamp, StateRecord
from state_core.domain.sealing import canonical_of
from state_core.domain.writes import ConditionFailed, Precondition, WriteResult

# An unconditional PUT meets a condition failure only when the item it replaces has expired (it then
# re-creates at that exact version); a few rounds cover concurrent writers doing the same.
_PUT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Expectation:
    """A client's precondition on the current version: If-Match (a version or "*"), If-None-Match: *."""

    if_match: int | Literal["*"] | None = None
    if_none_match_any: bool = False


@dataclass(frozen=True, slots=True)
class PatchPolicy:
    """Bounded optimistic retries for PATCH: full-jitter exponential backoff inside a time budget."""

    time_budget_seconds: float = 5.0
    base_delay_seconds: float = 0.005
    max_delay_seconds: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The pause before the next attempt: full jitter, up to base * 2**attempt and at most the maximum."""
        return rng.uniform(0, min(self.max_delay_seconds, self.base_delay_seconds * 2**attempt))


@dataclass(frozen=True, slots=True)
class StateView:
    """A live key as read: its record and its canonical JSON, ready to be sent as is."""

    record: StateRecord
    canonical_value: bytes


class StateManager:
    """Get, put, merge-patch and delete JSON state with versions and preconditions."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime],
        metrics: MetricsSink,
        cache: Cache | None = None,
        lock: KeyLock | None = None,
        patch_policy: PatchPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        schemas: SchemaChecker | None = None,
        cipher: ValueCipher | None = None,
    ) -> None:
        self._store = store
        self._cipher = cipher
        self._schemas = schemas
        self._cache = cache
        self._lock = lock
        self._clock = clock
        self._metrics = metrics
        self._patch_policy = patch_policy or PatchPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security

    def get(self, key: str, *, consistent: bool = False) -> StateView:
        """The key's current value and metadata; NotFound if absent, deleted or expired.

        Served from the cache when it holds the key; otherwise (or with `consistent`) a strongly consistent
        read, which then fills the cache through its write-if-newer step, under the fill lease the miss took.
        """
        if self._cache is not None and not consistent:
            entry = self._cache.get(key)
            if entry is not None and entry.is_usable():
                return self._view(key, entry.record, self._clock())
            if failpoints.ENABLED:
                failpoints.hit("after_cache_miss", key=key)
        return self._filled(key, self._store.get(key))

    def get_many(
        self, keys: list[str], *, consistent: bool = False, snapshot: bool = False
    ) -> list[StateView | StateError]:
        """Each key read as `get` reads it, answered in order: its view, or the error `get` would raise for
        it (NotFound; CorruptStoredValue for a stored value that fails its checks). The cache is read in one
        round trip, and the misses in one strongly consistent batch read, each filling its key's entry under
        the lease its miss took, exactly as `get` does.

        `snapshot`: all keys read from the table in one transaction, so the answer is one point in time
        across them; the cache is neither read (its entries are of different moments) nor filled.
        `keys` are distinct (DynamoDB refuses a batch or transaction that names an item twice).
        """
        if len(set(keys)) != len(keys):
            raise ValueError("get_many reads each key once")
        if snapshot:
            records = self._store.snapshot(keys)
            now = self._clock()
            return [_outcome(self._view, key, records.get(key), now) for key in keys]
        answers: dict[str, StateView | StateError] = {}
        misses = list(keys)
        if self._cache is not None and not consistent:
            misses = []
            entries = self._cache.get_many(keys)
            now = self._clock()
            for key, entry in zip(keys, entries, strict=True):
                if entry is not None and entry.is_usable():
                    answers[key] = _outcome(self._view, key, entry.record, now)
                    continue
                if failpoints.ENABLED:
                    failpoints.hit("after_cache_miss", key=key)
                misses.append(key)
        if misses:
            records = self._store.get_many(misses)
            for key in misses:
                answers[key] = _outcome(self._filled, key, records.get(key))
        return [answers[key] for key in keys]

    def _filled(self, key: str, record: StateRecord | None) -> StateView:
        """The view of what a strongly consistent read after a miss found, filled into the cache."""
        now = self._clock()
        if failpoints.ENABLED:
            failpoints.hit("after_fill_read_before_set", key=key)
        try:
            # Decoded before the fill: a stored value that fails its checks (CorruptStoredValue) is never
            # cached, so the cache does not count the table's corruption as its own.
            view = self._view(key, record, now)
        except NotFound:
            self._cache_fill(CacheEntry(record) if record is not None else CacheEntry.absent(key, now))
            raise
        self._cache_fill(CacheEntry(view.record))
        return view

    def put(
        self,
        key: str,
        value: Any,
        *,
        actor: str,
        ttl_seconds: int | None = None,
        expect: Expectation = Expectation(),
    ) -> WriteResult:
        """Create or replace the key's value. No read happens before the write."""
        stored = self._encode(value)
        schema = self.check_schema(key, value)
        if expect.if_none_match_any:
            precondition = Precondition.GONE
        elif expect.if_match == "*":
            precondition = Precondition.LIVE
        elif expect.if_match is not None:
            precondition = Precondition.LIVE_AT_VERSION
        else:
            precondition = Precondition.NOT_EXPIRED
        version = expect.if_match if isinstance(expect.if_match, int) else None

        for _ in range(_PUT_ATTEMPTS):
            now = self._clock()
            expires_at = None if ttl_seconds is None else now.timestamp() + ttl_seconds
            try:
                result = self._store.write(
                    key,
                    stored,
                    actor=actor,
                    now=now,
                    precondition=precondition,
                    version=version,
                    expires_at=expires_at,
                    schema=schema,
                )
            except ConditionFailed as failed:
                current = failed.current
                if _expired(current, now):
                    # Expiry is a change of its own (one version, one event): the expired version becomes an `expired`
                    # tombstone with the next version first, then this write goes on over that tombstone.
                    self._expire(key, current, now)
                    if precondition in (Precondition.NOT_EXPIRED, Precondition.GONE):
                        continue
                if precondition not in (Precondition.NOT_EXPIRED, Precondition.AT_VERSION):
                    raise _precondition_failed(key, current, now) from None
                self._metrics.add_metric(name="Conflicts", unit="Count", value=1)
                precondition, version = Precondition.NOT_EXPIRED, None
                continue
            if failpoints.ENABLED:
                failpoints.hit("after_db_write_before_cache", key=key)
            self._cache_write(CacheEntry(result.record))
            return result
        raise ServiceUnavailable("the key changed too often to be written; retry shortly")

    def patch(
        self,
        key: str,
        patch: Any,
        *,
        actor: str,
        expect: Expectation = Expectation(),
    ) -> tuple[WriteResult, bytes]:
        """Apply a JSON Merge Patch (RFC 7396): read, merge, write conditioned on the version read.

        A lost race costs a retry with the item DynamoDB returned on the failed condition (no second read),
        after a jittered backoff; past the time budget the caller gets 503 with Retry-After.
        Returns the write and the merged value's canonical JSON.
        """
        check_depth(patch)
        canonical_json(patch)  # a patch with a lone surrogate is invalid even where it only removes
        if self._schemas is not None:
            self._schemas.refresh_ahead()
        # Uncontended, Redis sees two round trips: lock + cache read, then write-through + unlock.
        lease, cached = self._lock_and_read(key)
        try:
            if failpoints.ENABLED:
                failpoints.hit("after_lock_acquire", key=key)
            result, canonical = self._patch(key, patch, actor=actor, expect=expect, cached=cached)
        except BaseException:
            if failpoints.ENABLED:
                failpoints.hit("before_lock_release", key=key)
            if lease is not None and self._lock is not None:
                self._lock.release(lease)
            raise
        if failpoints.ENABLED:
            failpoints.hit("after_db_write_before_cache", key=key)
            failpoints.hit("before_lock_release", key=key)
        self._write_through_and_release(CacheEntry(result.record), lease)
        return result, canonical

    def _lock_and_read(self, key: str) -> tuple[Any | None, CacheEntry | None]:
        if self._lock is None:
            return None, self._cache.get(key) if self._cache is not None else None
        if self._cache is None:
            return self._lock.acquire(key), None
        return self._lock.acquire_and_read(key, self._cache)

    def _write_through_and_release(self, entry: CacheEntry, lease: Any | None) -> None:
        if lease is None or self._lock is None:
            self._cache_write(entry, after_read=True)
        elif self._cache is None:
            self._lock.release(lease)
        else:
            self._lock.write_and_release(lease, self._cache, entry)

    def _patch(
        self, key: str, patch: Any, *, actor: str, expect: Expectation, cached: CacheEntry | None
    ) -> tuple[WriteResult, bytes]:
        policy = self._patch_policy
        deadline = self._monotonic() + policy.time_budget_seconds
        current = self._read_for_patch(key, cached)
        attempt = 0
        while True:
            now = self._clock()
            if current is not None and current.value is None and current.blob is not None:
                current = self._store.get(key)  # a failed condition returned a large value unloaded
            if current is None or current.value is None or not current.is_live(now):
                if _expired(current, now):
                    self._expire(key, current, now)
                if expect.if_match is not None:
                    raise PreconditionFailed(f"key {key} does not exist", current_version=None)
                raise NotFound(f"key {key} does not exist")
            if isinstance(expect.if_match, int) and current.version != expect.if_match:
                raise PreconditionFailed(
                    f"key {key} is at version {current.version}, not {expect.if_match}",
                    current_version=current.version,
                )
            if failpoints.ENABLED:
                failpoints.hit("after_patch_read", key=key, version=current.version)
            merged = apply_merge_patch(
                json.loads(canonical_of(current.value, key, current.write_id, self._cipher)), patch
            )
            canonical = canonical_json(merged)
            stored = self._encode_canonical(canonical)
            # The merged result is what gets stored, so it is what the key's schema judges (each retry's too).
            schema = self.check_schema(key, merged)
            try:
                result = self._store.write(
                    key,
                    stored,
                    actor=actor,
                    now=now,
                    precondition=Precondition.LIVE_AT_VERSION,
                    version=current.version,
                    keep_expiry=True,
                    schema=schema,
                )
            except ConditionFailed as failed:
                # The version fence: another writer came first (or our lock lapsed). DynamoDB returned
                # the current item, so the retry merges into it without another read.
                current = failed.current
                attempt += 1
                self._metrics.add_metric(name="Conflicts", unit="Count", value=1)
                delay = policy.delay(attempt, self._rng)
                if self._monotonic() + delay > deadline:
                    raise ServiceUnavailable(
                        f"PATCH of key {key} lost {attempt} races to concurrent writers; retry shortly"
                    ) from None
                self._metrics.add_metric(name="Retries", unit="Count", value=1)
                self._sleep(delay)
                continue
            return result, canonical

    def _read_for_patch(self, key: str, cached: CacheEntry | None) -> StateRecord | None:
        """A live cached version saves the read (a stale one only costs a fenced retry); anything else,
        including a cached tombstone, is confirmed by a strongly consistent read."""
        if cached is not None and cached.record.value is not None and cached.record.is_live(self._clock()):
            return cached.record
        return self._store.get(key)

    def delete(self, key: str, *, actor: str, expect: Expectation = Expectation()) -> StateRecord:
        """Replace the key by a tombstone with the next version; NotFound if it is not live."""
        version = expect.if_match if isinstance(expect.if_match, int) else None
        now = self._clock()
        try:
            tombstone = self._store.delete(key, actor=actor, now=now, version=version)
        except ConditionFailed as failed:
            current = failed.current
            if current is not None and _expired(current, now):
                self._expire(key, current, now)
            if expect.if_match is None and (current is None or not current.is_live(now)):
                raise NotFound(f"key {key} does not exist") from None
            raise _precondition_failed(key, current, now) from None
        if failpoints.ENABLED:
            failpoints.hit("after_db_write_before_cache", key=key)
        # A versioned tombstone, so a slow fill of an older version cannot bring the key back.
        self._cache_write(CacheEntry(tombstone))
        return tombstone

    def _expire(self, key: str, current: StateRecord, now: datetime) -> None:
        """Write the expiry of `current` (expired, not yet a tombstone) as its own version. Whoever comes
        first wins the version condition: another writer, or the publisher on the expiry marker's removal."""
        assert current.expires_at is not None
        try:
            tombstone = self._store.expire(key, version=current.version, expires_at=current.expires_at, now=now)
        except ConditionFailed:
            return  # already expired (or rewritten) by someone else
        except OutcomeUnknown:
            # Whether it landed or not, the caller's next step holds: a PUT's next conditional write sees
            # which, and a write that lands over it is what the client asked for; if it landed, the stream
            # records its history and event, and repairs the cache.
            return
        self._metrics.add_metric(name="Expiries", unit="Count", value=1)
        self._cache_write(CacheEntry(tombstone))

    # The pieces a multi-key transaction (service/transactions.py) shares with the single-key writes, so its
    # expiries, cache write-throughs and value checks are theirs exactly.
    def expire(self, key: str, current: StateRecord, now: datetime) -> None:
        """Write `current`'s expiry as its own version, if it is live in the table but past its expiry."""
        if _expired(current, now):
            self._expire(key, current, now)

    def check_schema(self, key: str, value: Any) -> SchemaStamp | None:
        """SchemaViolation (422) unless `value` satisfies the schema governing `key`: before any write. The
        schema it was checked against, stored with the version (None for an ungoverned key)."""
        if self._schemas is None:
            return None
        checked = self._schemas.check(key, value)
        return None if checked is None else SchemaStamp(checked.name, checked.version)

    def write_through(self, record: StateRecord) -> None:
        """What every acknowledged write does after DynamoDB took it: the versioned write-through (kept and
        replayed as a fence when Redis cannot be reached)."""
        self._cache_write(CacheEntry(record))

    def encode(self, value: Any) -> StoredValue:
        """`value` as stored, after the depth and size checks of a single write."""
        return self._encode(value)

    def encode_canonical(self, canonical: bytes) -> StoredValue:
        return self._encode_canonical(canonical)

    def canonical(self, record: StateRecord) -> bytes:
        """The canonical JSON of a record's loaded value, opened if it is sealed."""
        assert record.value is not None
        return canonical_of(record.value, record.key, record.write_id, self._cipher)

    def _view(self, key: str, record: StateRecord | None, now: datetime) -> StateView:
        if record is None or record.value is None or not record.is_live(now):
            raise NotFound(f"key {key} does not exist")
        return StateView(record=record, canonical_value=canonical_of(record.value, key, record.write_id, self._cipher))

    def _cache_fill(self, entry: CacheEntry) -> None:
        if self._cache is not None:
            self._cache.fill(entry)

    def _cache_write(self, entry: CacheEntry, *, after_read: bool = False) -> None:
        if self._cache is not None:
            self._cache.write_if_newer(entry, after_read=after_read)

    def _encode(self, value: Any) -> StoredValue:
        check_depth(value)
        return self._encode_canonical(canonical_json(value))

    def _encode_canonical(self, canonical: bytes) -> StoredValue:
        check_value_size(canonical)
        stored = StoredValue.encode(canonical)
        self._metrics.add_metric(name="ValueBytes", unit="Bytes", value=stored.size)
        return stored


def _outcome(read: Callable[..., StateView], *args: Any) -> StateView | StateError:
    """One key's answer in a bulk read: its view, or the error a single read of it would raise."""
    try:
        return read(*args)
    except (NotFound, CorruptStoredValue) as error:
        return error


def _expired(current: StateRecord | None, now: datetime) -> TypeGuard[StateRecord]:
    """Live in DynamoDB but past its expiry: the expiry has not been written as a version yet."""
    return current is not None and not current.deleted and current.expires_at is not None and not current.is_live(now)


def _precondition_failed(key: str, current: StateRecord | None, now: datetime) -> PreconditionFailed:
    if current is None or not current.is_live(now):
        return PreconditionFailed(f"key {key} does not exist", current_version=None)
    return PreconditionFailed(f"key {key} is at version {current.version}", current_version=current.version)
