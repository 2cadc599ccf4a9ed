"""Listing keys by prefix: the rules that need no I/O.

State items carry `list_shard`, a write shard derived from a hash of the key, and the table's sparse index
`ListIndex` is keyed by (`list_shard`, `pk`): a prefix is listed by reading the same key range from every
shard and merging them in key order. A shard is a pure function of the key and LIST_SHARDS, so every write
of a key goes to the same shard and the index never has to move it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from state_core.domain.keys import MAX_KEY_LENGTH

# Fixed per deployment: changing it means rewriting every state item's `list_shard` (docs/listing.md).
# Each index partition takes up to 1,000 writes a second, so 16 shards let the table take ~16,000 key
# writes a second before the index throttles them, while a page costs 16 small queries.
LIST_SHARDS = 16
LIST_INDEX = "ListIndex"
LIST_SHARD_ATTRIBUTE = "list_shard"

# The key alphabet in byte order runs from `-` (0x2D) to `z` (0x7A): every key that starts with P sorts
# within [P, P + "~"], and the smallest key after K is K + "-".
_BELOW_EVERY_KEY = "-"
_ABOVE_EVERY_KEY_CHARACTER = "~"
_SMALLEST_KEY_CHARACTER = "-"


def list_shard(key: str, shards: int = LIST_SHARDS) -> str:
    """The write shard of `key`: two digits, stable across processes (not Python's salted hash)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return f"{int.from_bytes(digest, 'big') % shards:02d}"


def all_shards(shards: int = LIST_SHARDS) -> tuple[str, ...]:
    return tuple(f"{n:02d}" for n in range(shards))


@dataclass(frozen=True, slots=True, order=True)
class KeyRange:
    """The keys from `low` to `high`, both included, in byte order; `exact` when it is one key (which then
    lives in one known shard)."""

    low: str
    high: str
    exact: bool = False

    @classmethod
    def prefix(cls, prefix: str) -> KeyRange:
        return cls(prefix or _BELOW_EVERY_KEY, prefix + _ABOVE_EVERY_KEY_CHARACTER)

    @classmethod
    def key(cls, key: str) -> KeyRange:
        return cls(key, key, exact=True)

    def after(self, key: str | None) -> KeyRange | None:
        """The part of this range strictly after `key` (None when nothing is left)."""
        if key is None:
            return self
        successor = key + _SMALLEST_KEY_CHARACTER
        if successor > self.high:
            return None
        return KeyRange(max(self.low, successor), self.high, self.exact)

    def shards(self) -> tuple[str, ...]:
        return (list_shard(self.low),) if self.exact else all_shards()


@dataclass(frozen=True, slots=True)
class ListedKey:
    """One key as the index holds it: what a listing shows without reading the value."""

    key: str
    version: int
    updated_at: str
    size: int
    expires_at: float | None
    # False when the value is a large value's blob, which a listing never inlines.
    inline: bool = True


MAX_PREFIX_LENGTH = MAX_KEY_LENGTH
