"""What the read cache holds for a key: one version of its record, a tombstone, or a fence."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from state_core.domain.records import StateRecord, rfc3339


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached version of a key: its record (tombstones included; version 0 means "absent")."""

    record: StateRecord

    @property
    def version(self) -> int:
        return self.record.version

    @classmethod
    def absent(cls, key: str, now: datetime) -> CacheEntry:
        """A key the store does not hold at all: a tombstone at version 0, so any write supersedes it."""
        return cls(StateRecord(key, 0, True, None, None, rfc3339(now), "", None))

    def fence(self) -> CacheEntry:
        """This version without its value or tombstone, which readers take as a miss (they fill the current
        state from the store; the same version with its value may fill it). What a write that may land long
        after it was made stores (a replayed write, the stream's repair): newer entries may be gone by then
        (a restart, an eviction, their expiry), and with its value it would serve an old version to every
        container. As a fence it still keeps older versions out."""
        return CacheEntry(replace(self.record, deleted=False, value=None))

    def is_usable(self) -> bool:
        """False for a live version too large to cache, which readers treat as a miss."""
        return self.record.deleted or self.record.value is not None
