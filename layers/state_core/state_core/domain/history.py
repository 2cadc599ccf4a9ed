"""A version of a key as its history holds it: what the storage writes and reads back, what the reading
rules serve, and what a history page lists.

The history keeps, for each version, who made it, when, how, and its value (inline bytes or the reference
of its blob, never a copy of a blob); a deletion or an expiry is a version without a value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from state_core.domain.records import StateRecord

if TYPE_CHECKING:
    from state_core.domain.codec import StoredValue
    from state_core.domain.records import BlobRef, SchemaStamp

# The history's items number versions with 12 digits, so this is the highest version it can hold.
MAX_HISTORY_VERSION = 10**12 - 1


def rfc3339_epoch(rfc3339_time: str) -> float:
    """Epoch seconds of a time as records.rfc3339 writes it."""
    return datetime.strptime(rfc3339_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One version as the history holds it. `value` / `blob` are both None for a deletion or an expiry."""

    key: str
    version: int
    operation: str
    actor: str
    occurred_at: str
    created_at: str | None
    size: int | None
    expires_at: float | None
    value: StoredValue | None = None
    blob: BlobRef | None = None
    transaction_id: str | None = None  # the transaction that wrote this version, if one did
    proposal_id: str | None = None  # the approved proposal it applied (the actor is its proposer)
    approved_by: tuple[str, ...] = ()  # and who approved it
    write_id: str | None = None  # the write that made this version: what a sealed value is bound to
    schema: SchemaStamp | None = None  # the value schema its value was checked against when written

    @property
    def has_value(self) -> bool:
        return self.value is not None or self.blob is not None

    def record(self) -> StateRecord:
        """The version as a state record, for the envelope."""
        return StateRecord(
            key=self.key,
            version=self.version,
            deleted=not self.has_value,
            value=self.value,
            created_at=self.created_at,
            updated_at=self.occurred_at,
            updated_by=self.actor,
            expires_at=self.expires_at,
            blob=self.blob,
            write_id=self.write_id,
            schema=self.schema if self.has_value else None,
        )


def entry_of_record(record: StateRecord, operation: str) -> HistoryEntry:
    """The history entry of a state record. A large value is referenced by its blob even when the record
    holds it loaded (a record read back does): the history never copies a blob."""
    blob = None if record.deleted else record.blob
    value = None if record.deleted or blob is not None else record.value
    size = blob.size if blob is not None else (value.size if value is not None else None)
    return HistoryEntry(
        key=record.key,
        version=record.version,
        operation=operation,
        actor=record.updated_by,
        occurred_at=record.updated_at,
        created_at=record.created_at,
        size=size,
        expires_at=record.expires_at,
        value=value,
        blob=blob,
        transaction_id=record.transaction_id,
        proposal_id=record.proposal_id,
        approved_by=record.approved_by,
        write_id=record.write_id,
        schema=None if record.deleted else record.schema,
    )
