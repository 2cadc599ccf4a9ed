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
from typing import Any, Literal, Protocol

from state_core.codec import StoredValue, canonical_json, check_depth, check_value_size
from state_core.errors import NotFound, PayloadTooLarge, PreconditionFailed, ServiceUnavailable
from state_core.merge_patch import apply_merge_patch
from state_core.models import StateRecord
from state_core.store import ConditionFailed, Precondition, WriteResult

# One DynamoDB item holds 400 KB (moto: 405,000 bytes) including the key and metadata; values whose
# compressed form is larger wait for the large-values issue, which stores them as chunked blobs.
MAX_INLINE_VALUE_BYTES = 380_000
# An unconditional PUT meets a condition failure only when the item it replaces has expired (it then
# re-creates at that exact version); a few rounds cover concurrent writers doing the same.
_PUT_ATTEMPTS = 5


class Store(Protocol):
    def get(self, key: str) -> StateRecord | None: ...

    def write(
        self,
        key: str,
        value: StoredValue,
        *,
        actor: str,
        now: datetime,
        precondition: Precondition,
        version: int | None = None,
        expires_at: float | None = None,
        keep_expiry: bool = False,
    ) -> WriteResult: ...

    def delete(self, key: str, *, actor: str, now: datetime, version: int | None) -> StateRecord: ...


class MetricsSink(Protocol):
    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


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
        patch_policy: PatchPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._patch_policy = patch_policy or PatchPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security

    def get(self, key: str) -> StateView:
        """The key's current value and metadata; NotFound if absent, deleted or expired."""
        record = self._store.get(key)
        if record is None or record.value is None or not record.is_live(self._clock()):
            raise NotFound(f"key {key} does not exist")
        return StateView(record=record, canonical_value=record.value.canonical())

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
                return self._store.write(
                    key,
                    stored,
                    actor=actor,
                    now=now,
                    precondition=precondition,
                    version=version,
                    expires_at=expires_at,
                )
            except ConditionFailed as failed:
                current = failed.current
                if precondition not in (Precondition.NOT_EXPIRED, Precondition.AT_VERSION):
                    raise _precondition_failed(key, current, now) from None
                self._metrics.add_metric(name="Conflicts", unit="Count", value=1)
                if current is not None and not current.deleted and not current.is_live(now):
                    # The item is live in DynamoDB but expired: re-create over exactly that version.
                    precondition, version = Precondition.AT_VERSION, current.version
                else:
                    precondition, version = Precondition.NOT_EXPIRED, None
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
        policy = self._patch_policy
        deadline = self._monotonic() + policy.time_budget_seconds
        current = self._store.get(key)
        attempt = 0
        while True:
            now = self._clock()
            if current is None or current.value is None or not current.is_live(now):
                if expect.if_match is not None:
                    raise PreconditionFailed(f"key {key} does not exist", current_version=None)
                raise NotFound(f"key {key} does not exist")
            if isinstance(expect.if_match, int) and current.version != expect.if_match:
                raise PreconditionFailed(
                    f"key {key} is at version {current.version}, not {expect.if_match}",
                    current_version=current.version,
                )
            merged = apply_merge_patch(json.loads(current.value.canonical()), patch)
            canonical = canonical_json(merged)
            stored = self._encode_canonical(canonical)
            try:
                result = self._store.write(
                    key,
                    stored,
                    actor=actor,
                    now=now,
                    precondition=Precondition.LIVE_AT_VERSION,
                    version=current.version,
                    keep_expiry=True,
                )
            except ConditionFailed as failed:
                current = failed.current
                attempt += 1
                self._metrics.add_metric(name="Conflicts", unit="Count", value=1)
                delay = self._rng.uniform(0, min(policy.max_delay_seconds, policy.base_delay_seconds * 2**attempt))
                if self._monotonic() + delay > deadline:
                    raise ServiceUnavailable(
                        f"PATCH of key {key} lost {attempt} races to concurrent writers; retry shortly"
                    ) from None
                self._metrics.add_metric(name="Retries", unit="Count", value=1)
                self._sleep(delay)
                continue
            return result, canonical

    def delete(self, key: str, *, actor: str, expect: Expectation = Expectation()) -> StateRecord:
        """Replace the key by a tombstone with the next version; NotFound if it is not live."""
        version = expect.if_match if isinstance(expect.if_match, int) else None
        now = self._clock()
        try:
            return self._store.delete(key, actor=actor, now=now, version=version)
        except ConditionFailed as failed:
            current = failed.current
            if expect.if_match is None and (current is None or not current.is_live(now)):
                raise NotFound(f"key {key} does not exist") from None
            raise _precondition_failed(key, current, now) from None

    def _encode(self, value: Any) -> StoredValue:
        check_depth(value)
        return self._encode_canonical(canonical_json(value))

    def _encode_canonical(self, canonical: bytes) -> StoredValue:
        check_value_size(canonical)
        stored = StoredValue.encode(canonical)
        if len(stored.data) > MAX_INLINE_VALUE_BYTES:
            raise PayloadTooLarge(
                f"the value compresses to {len(stored.data)} bytes; values whose compressed form exceeds"
                f" {MAX_INLINE_VALUE_BYTES} bytes are not supported yet"
            )
        self._metrics.add_metric(name="ValueBytes", unit="Bytes", value=stored.size)
        return stored


def _precondition_failed(key: str, current: StateRecord | None, now: datetime) -> PreconditionFailed:
    if current is None or not current.is_live(now):
        return PreconditionFailed(f"key {key} does not exist", current_version=None)
    return PreconditionFailed(f"key {key} is at version {current.version}", current_version=current.version)
