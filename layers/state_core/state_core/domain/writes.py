"""What a conditional write of a key asks for and what it answers: the precondition the current item must
meet, the new record, or the failed condition with the item that failed it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from state_core.domain.records import StateRecord


class Precondition(Enum):
    """What must hold of the current item for a write to apply."""

    NOT_EXPIRED = "not-expired"  # absent, tombstone or live: an unconditional PUT
    GONE = "gone"  # absent, tombstone or expired: If-None-Match: *
    LIVE = "live"  # If-Match: *
    LIVE_AT_VERSION = "live-at-version"  # If-Match: "<v>", and PATCH's fence
    AT_VERSION = "at-version"  # exactly this version, whatever its state: re-creating over an expired item


class ConditionFailed(Exception):
    """The write's condition did not hold; `current` is the item the store returned (None if absent)."""

    def __init__(self, current: StateRecord | None) -> None:
        super().__init__("condition failed")
        self.current = current


@dataclass(frozen=True, slots=True)
class WriteResult:
    record: StateRecord
    created: bool  # this write started a new life of the key (201 rather than 200)
