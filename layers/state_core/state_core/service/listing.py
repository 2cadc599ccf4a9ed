"""Listing keys by prefix: `GET /state?prefix=P&limit=&cursor=&include=value`.

The caller's grants become disjoint key ranges under the prefix (security/principal.py); the ranges are
read in key order, each one from every write shard of the index at once, merged in key order (a k-way
merge over one sorted stream per shard). Each shard's stream reads what the page needs, in batches that
grow while the merge keeps taking from it, so a page costs about `limit` keys of reads plus one small
query per shard, however many keys share the prefix. Every key is checked again against the caller's grants
before it is listed, and keys whose expiry has passed are left out (the index keeps them until the write that
records the expiry removes them).

Pages continue strictly after the last key listed, carried by a cursor signed for the caller and the
prefix: a key present for the whole listing is listed exactly once, whatever is written meanwhile.
With `include=value` the values are read from the table (strongly consistent BatchGetItem) and the entry
shows the version read with its value; a page stops early, with a cursor, rather than exceed the body
budget, and a large value (a blob) is listed without it (`value_omitted`).
"""

from __future__ import annotations

import contextvars
import heapq
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from state_core.domain.errors import CorruptStoredValue
from state_core.domain.listing import KeyRange, ListedKey
from state_core.domain.records import rfc3339
from state_core.domain.sealing import canonical_of

if TYPE_CHECKING:
    from state_core.domain.ports import ListCursorSigner, ListIndex, Log, MetricsSink, ValueCipher
    from state_core.domain.records import SchemaStamp, StateRecord

# The listing's body stays under this many bytes of UTF-8 (values included). Lambda's response is at most
# 6 MB and carries the body as an escaped JSON string, which can grow a value up to 3 times (a non-ASCII
# character as \uXXXX), so 2,000,000 bytes always fits; a 1 MiB value still fits a page of its own.
MAX_LIST_BODY_BYTES = 2_000_000
# What one entry's fields, separators and the page's own fields cost at most besides the key and value.
_ENTRY_OVERHEAD_BYTES = 160
_PAGE_OVERHEAD_BYTES = 600
# A shard's first batch is sized to its share of the page, with room for an uneven spread; each further
# batch doubles, up to the most a page can need.
_MIN_BATCH = 4
_MAX_BATCH = 1001


@dataclass(frozen=True, slots=True)
class ListEntry:
    key: str
    version: int
    updated_at: str
    size: int
    expires_at: str | None
    value: bytes | None = None  # canonical JSON, with include=value
    value_omitted: bool = False  # include=value, but the value is not in the page (a blob, or unreadable)
    schema: SchemaStamp | None = None  # include=value: the schema the value was checked against, if any


@dataclass(frozen=True, slots=True)
class ListPage:
    prefix: str
    entries: list[ListEntry]
    next_cursor: str | None


class _ShardStream:
    """One shard's keys within a range, in key order, read in growing batches."""

    def __init__(self, index: ListIndex, shard: str, key_range: KeyRange, batch: int) -> None:
        self._index, self._shard, self._range = index, shard, key_range
        self._batch = batch
        self.buffer: list[ListedKey] = []
        self._next: KeyRange | None = key_range

    def fetch(self) -> None:
        if self._next is None:
            return
        listed, more = self._index.query(self._shard, self._next, limit=self._batch)
        self.buffer.extend(reversed(listed))  # popped from the end: smallest key last
        self._next = self._range.after(listed[-1].key) if more and listed else None
        self._batch = min(self._batch * 2, _MAX_BATCH)

    def pop(self) -> ListedKey | None:
        if not self.buffer:
            self.fetch()
        return self.buffer.pop() if self.buffer else None


class KeyLister:
    def __init__(
        self,
        index: ListIndex,
        cursors: ListCursorSigner,
        *,
        clock: Callable[[], datetime],
        log: Log | None = None,
        metrics: MetricsSink | None = None,
        max_body_bytes: int = MAX_LIST_BODY_BYTES,
        executor: ThreadPoolExecutor | None = None,
        cipher: ValueCipher | None = None,
    ) -> None:
        self._cipher = cipher
        self._index = index
        self._cursors = cursors
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._executor = executor

    def page(
        self,
        *,
        subject: str,
        prefix: str,
        ranges: list[KeyRange],
        allows: Callable[[str], bool],
        limit: int,
        cursor: str | None,
        include_values: bool,
    ) -> ListPage:
        """A page of the keys under `prefix` within `ranges` (the caller's grants, disjoint, in key order)
        that `allows` admits, after the cursor's key."""
        after = self._cursors.last_key(cursor, subject=subject, prefix=prefix) if cursor is not None else None
        now = self._clock().timestamp()
        candidates = self._candidates(ranges, after, limit, allows, now)
        page = candidates[:limit]
        more = len(candidates) > limit
        if include_values:
            entries, stopped_early = self._with_values(page, now)
            more = more or stopped_early
        else:
            entries = [_entry(listed) for listed in page]
        next_cursor = None
        if more and entries:
            next_cursor = self._cursors.issue(subject, prefix, entries[-1].key)
        return ListPage(prefix=prefix, entries=entries, next_cursor=next_cursor)

    # --------------------------------------------------------------------------------------------- index
    def _candidates(
        self, ranges: list[KeyRange], after: str | None, limit: int, allows: Callable[[str], bool], now: float
    ) -> list[ListedKey]:
        """Up to limit + 1 listable keys after `after`, in key order (the one past the page tells whether
        another page follows without asking for it)."""
        found: list[ListedKey] = []
        for key_range in ranges:
            remaining = key_range.after(after)
            if remaining is None:
                continue
            for listed in self._merged(remaining, limit + 1 - len(found)):
                if listed.expires_at is not None and listed.expires_at <= now:
                    continue
                if not allows(listed.key):
                    continue
                found.append(listed)
                if len(found) > limit:
                    return found
        return found

    def _merged(self, key_range: KeyRange, wanted: int) -> Iterator[ListedKey]:
        shards = key_range.shards()
        batch = 1 if key_range.exact else max(_MIN_BATCH, min(_MAX_BATCH, -(-2 * wanted // len(shards))))
        streams = [_ShardStream(self._index, shard, key_range, batch) for shard in shards]
        self._fetch_all(streams)
        heap: list[tuple[str, int]] = []
        for number, stream in enumerate(streams):
            if stream.buffer:
                heap.append((stream.buffer[-1].key, number))
        heapq.heapify(heap)
        while heap:
            _, number = heapq.heappop(heap)
            stream = streams[number]
            listed = stream.buffer.pop()
            yield listed
            if not stream.buffer:
                stream.fetch()
            if stream.buffer:
                heapq.heappush(heap, (stream.buffer[-1].key, number))

    def _fetch_all(self, streams: list[_ShardStream]) -> None:
        """Every shard's first batch at once: one round trip of latency for the page, not one per shard."""
        if self._executor is None or len(streams) == 1:
            for stream in streams:
                stream.fetch()
            return
        # Each query runs in a copy of this context, so the invocation's time budget applies to it too.
        futures = [self._executor.submit(contextvars.copy_context().run, stream.fetch) for stream in streams]
        for future in futures:
            future.result()

    # -------------------------------------------------------------------------------------------- values
    def _with_values(self, page: list[ListedKey], now: float) -> tuple[list[ListEntry], bool]:
        """The page's entries with their values, read in batches that fit the body budget; True when the
        budget ended the page before its last key."""
        used = _PAGE_OVERHEAD_BYTES
        entries: list[ListEntry] = []
        start = 0
        while start < len(page):
            batch: list[ListedKey] = []
            planned = used
            for listed in page[start : start + 100]:
                cost = _ENTRY_OVERHEAD_BYTES + len(listed.key) + (listed.size if listed.inline else 0)
                if batch and planned + cost > self._max_body_bytes:
                    break
                batch.append(listed)
                planned += cost
            records = self._index.values([listed.key for listed in batch if listed.inline])
            for listed in batch:
                entry = self._entry_with_value(listed, records.get(listed.key), now)
                if entry is None:
                    continue  # deleted or expired since the index listed it
                cost = _ENTRY_OVERHEAD_BYTES + len(entry.key) + len(entry.value or b"")
                if entries and used + cost > self._max_body_bytes:
                    return entries, True
                entries.append(entry)
                used += cost
            start += len(batch)
        return entries, False

    def _entry_with_value(self, listed: ListedKey, record: StateRecord | None, now: float) -> ListEntry | None:
        if not listed.inline:
            return _entry(listed, value_omitted=True)
        if record is None or not record.is_live(datetime.fromtimestamp(now, UTC)):
            return None
        metadata = ListEntry(
            key=record.key,
            version=record.version,
            updated_at=record.updated_at,
            size=record.value.size if record.value is not None else (record.blob.size if record.blob else 0),
            expires_at=_expiry(record.expires_at),
            schema=record.schema,
        )
        if record.value is None:
            # It became a large value after the index listed it.
            return replace(metadata, value_omitted=True)
        try:
            return replace(metadata, value=canonical_of(record.value, record.key, record.write_id, self._cipher))
        except CorruptStoredValue as exc:
            if self._log is not None:
                self._log.error("stored value unreadable", extra={"reason": exc.detail, "key": record.key})
            if self._metrics is not None:
                self._metrics.add_metric(name="CorruptStoredValues", unit="Count", value=1)
            return replace(metadata, value_omitted=True)


def _expiry(expires_at: float | None) -> str | None:
    return None if expires_at is None else rfc3339(datetime.fromtimestamp(expires_at, UTC))


def _entry(listed: ListedKey, *, value_omitted: bool = False) -> ListEntry:
    return ListEntry(
        key=listed.key,
        version=listed.version,
        updated_at=listed.updated_at,
        size=listed.size,
        expires_at=_expiry(listed.expires_at),
        value_omitted=value_omitted,
    )
