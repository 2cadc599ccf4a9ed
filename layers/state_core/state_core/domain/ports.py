"""The collaborators the core is handed rather than builds, as protocols: the state store, the read cache,
the per-key lock and the history (the StateManager's), what the history reader reads, a key's change feed
(the long-poll's), and the metrics and log sinks every part uses.
runtime.py wires the real ones (DynamoDB, Redis, Powertools); tests hand in their own."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from state_core.domain.cached import CacheEntry
from state_core.domain.codec import StoredValue
from state_core.domain.records import BlobRef, SchemaStamp, StateRecord
from state_core.domain.writes import Precondition, WriteResult

if TYPE_CHECKING:
    # Only the history reader's ports name it: the handlers that import these ports need not load it.
    from state_core.domain.history import HistoryEntry
    from state_core.domain.listing import KeyRange, ListedKey
    from state_core.domain.transactions import Outcome, PlannedOperation


class SchemaChecker(Protocol):
    """The value schemas (service.schemas.SchemaRegistry): raises SchemaViolation for a value its key's
    schema refuses."""

    def check(self, key: str, value: Any) -> Any: ...

    def refresh_ahead(self) -> None:
        """Read what `check` needs now if it is about to go stale (before a lock is taken)."""


class MetricsSink(Protocol):
    """Powertools' Metrics in the functions, a recorder in tests."""

    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class Log(Protocol):
    """Powertools' Logger in the functions (the parts of it the stream steps use)."""

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None: ...
    def error(self, msg: object, *args: Any, **kwargs: Any) -> None: ...


class ValueCipher(Protocol):
    """Envelope encryption of sensitive values (security.envelope.KmsEnvelope): `seal` binds a stored value to
    its key and the write id of its version; `open` gives it back or raises DecryptionFailed, never another
    value."""

    def sensitive(self, key: str) -> bool: ...
    def seal(self, key: str, write_id: str, value: StoredValue) -> StoredValue: ...
    def open(self, key: str, write_id: str | None, value: StoredValue) -> StoredValue: ...


class Store(Protocol):
    """The state table (storage.state.StateStore): conditional writes raise ConditionFailed with the
    current item, and OutcomeUnknown when a sent write's answer was lost. `get_many` reads strongly
    consistently, `snapshot` as of one point in time (a transaction)."""

    def get(self, key: str) -> StateRecord | None: ...
    def get_many(self, keys: list[str]) -> dict[str, StateRecord]: ...
    def snapshot(self, keys: list[str]) -> dict[str, StateRecord]: ...

    def write(  # noqa: PLR0913  one keyword each for what a write may carry
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
        schema: SchemaStamp | None = None,
    ) -> WriteResult: ...

    def delete(self, key: str, *, actor: str, now: datetime, version: int | None) -> StateRecord: ...

    def expire(self, key: str, *, version: int, expires_at: float, now: datetime) -> StateRecord: ...


class TransactionWrites(Protocol):
    """Multi-key transactions (storage.transactions.TransactionStore): the keys read together, one atomic
    commit conditioned on exactly what was read (TransactionConflict otherwise), and idempotency records."""

    def read(self, keys: list[str]) -> dict[str, StateRecord | None]: ...
    def load(self, key: str) -> StateRecord | None: ...

    def commit(
        self,
        planned: list[PlannedOperation],
        *,
        actor: str,
        now: datetime,
        transaction_id: str,
        attempt: int,
        remember: tuple[str, Outcome] | None = None,
    ) -> list[StateRecord | None]: ...

    def outcome(self, partition: str, now: datetime) -> Outcome | None: ...
    def remember(self, partition: str, outcome: Outcome, now: datetime) -> Outcome | None: ...


class StateReads(Protocol):
    """What reading history needs of the state store (storage.state.StateStore)."""

    def get(self, key: str) -> StateRecord | None: ...
    def load_blob(self, blob: BlobRef) -> StoredValue | None: ...


class HistoryReads(Protocol):
    """The history's read side (storage.history.HistoryStore): a version, the current version as the history
    lists it (from the state item), and a page of versions older than `before`, newest first."""

    def get(self, key: str, version: int) -> HistoryEntry | None: ...
    def current(self, key: str) -> HistoryEntry | None: ...
    def page(self, key: str, *, limit: int, before: int | None) -> tuple[list[HistoryEntry], bool]: ...


class Cache(Protocol):
    """The versioned read cache (cache.state_cache.RedisStateCache); never raises for Redis trouble."""

    def get(self, key: str) -> CacheEntry | None: ...
    def get_many(self, keys: list[str]) -> list[CacheEntry | None]: ...
    def fill(self, entry: CacheEntry) -> bool: ...
    def write_if_newer(self, entry: CacheEntry, *, after_read: bool = False) -> bool: ...


class KeyLock(Protocol):
    """Per-key lock (cache.lock.RedisKeyLock); acquire answers None when it cannot be had or Redis is down.
    The `_and_` forms send the cache's read (write) in the same Redis round trip as the acquire (release)."""

    def acquire(self, key: str) -> Any | None: ...
    def release(self, lease: Any) -> None: ...
    def acquire_and_read(self, key: str, cache: Any) -> tuple[Any | None, CacheEntry | None]: ...
    def write_and_release(self, lease: Any, cache: Any, entry: CacheEntry) -> None: ...


class ListIndex(Protocol):
    """The listing index (storage.listing.ListIndexStore): one shard's keys within a range, in key order, and
    whether more follow; and the state items of listed keys, with inline values."""

    def query(self, shard: str, key_range: KeyRange, *, limit: int) -> tuple[list[ListedKey], bool]: ...
    def values(self, keys: list[str]) -> dict[str, StateRecord]: ...


class ListCursorSigner(Protocol):
    """The listing's cursors (security.list_cursor.ListCursors): bound to the caller and the prefix."""

    def issue(self, subject: str, prefix: str, last_key: str) -> str: ...
    def last_key(self, cursor: str, *, subject: str, prefix: str) -> str: ...


class Subscription(Protocol):
    """One key's change notifications for one wait (cache.watch.RedisSubscription)."""

    def next_versions(self, timeout: float) -> list[int] | None: ...
    def close(self) -> None: ...


class ChangeFeed(Protocol):
    """Where a key's new versions are announced (cache.watch.RedisChangeFeed); `subscribe` answers None
    when the feed cannot be reached, and a broken subscription answers None to `next_versions`."""

    def subscribe(self, key: str) -> Subscription | None: ...
