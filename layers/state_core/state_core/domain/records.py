"""The record of a key's current state as the store holds it, and the reference to a large value's blob."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from state_core.domain.codec import StoredValue

# TTLs from 1 s to 10 years: a bound keeps every expiry a representable time (10**30 s is not one), and
# 10 years is as good as no expiry.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


def rfc3339(moment: datetime) -> str:
    """UTC with millisecond precision and a `Z`, e.g. 2026-11-28T06:00:00.123Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class BlobRef:
    """What the state item stores in place of an inline value: which blob, and how to read it back."""

    write_id: str
    chunks: int
    sha256: str = ""
    encoding: str = ""
    size: int = 0  # of the canonical JSON


@dataclass(frozen=True, slots=True)
class SchemaStamp:
    """The value schema (name and version) a version's value was checked against when it was written."""

    name: str
    version: int

    def fields(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A key's current item. A tombstone (`deleted`) keeps the version counter and has no value.

    A large value lives in a blob: `blob` names it, and `value` holds it only once it has been loaded.
    """

    key: str
    version: int
    deleted: bool
    value: StoredValue | None
    created_at: str | None
    updated_at: str
    updated_by: str
    expires_at: float | None  # epoch seconds, millisecond precision
    blob: BlobRef | None = None
    # The transaction (POST /state:transact) that wrote this version, if one did: events and history carry it.
    transaction_id: str | None = None
    # The schema the value was checked against when written; None for an ungoverned key (and a tombstone).
    schema: SchemaStamp | None = None
    # The approved proposal this version applied, and who approved it (approvals.md); the actor is its proposer.
    proposal_id: str | None = None
    approved_by: tuple[str, ...] = ()
    # The write that made this version: a sealed value is bound to it (with the table and the key), so its
    # ciphertext opens only in the item of the version it was written for.
    write_id: str | None = None

    def is_live(self, now: datetime) -> bool:
        """Present, not deleted, not expired. Expiry is decided here, at read time, never by DynamoDB's TTL."""
        return not self.deleted and (self.expires_at is None or self.expires_at > now.timestamp())

    def metadata_fields(self) -> dict[str, Any]:
        """The HTTP API's StateMetadata fields in its order, as plain values: responses are built from these
        without a pydantic model on the request path (the model documents them in the OpenAPI document)."""
        fields: dict[str, Any] = {
            "key": self.key,
            "version": self.version,
            "created_at": self.created_at or self.updated_at,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "expires_at": None if self.expires_at is None else rfc3339(datetime.fromtimestamp(self.expires_at, UTC)),
        }
        if self.schema is not None:
            fields["schema"] = self.schema.fields()  # absent for an ungoverned key
        return fields
