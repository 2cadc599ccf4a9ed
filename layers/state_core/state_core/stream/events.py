"""StateChanged events from the table's stream: pure functions, no I/O.

A DynamoDB stream record (Lambda's event format: low-level attribute values, binary as base64) becomes one
`StateChanged` event. The record's new image is the state item after the write, its old image the item
before, so the event needs no read: version, previous version, operation, actor and time are all there.

`build_change` also returns the new `StateRecord`, which the publisher uses to repair the cache.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from state_core.domain.codec import SEALED_PREFIX
from state_core.domain.records import BlobRef, SchemaStamp, StateRecord
from state_core.storage.state import STATE_SORT_KEY, record_of_item

if TYPE_CHECKING:
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

    from state_core.stream.proposals import ProposalChanged

DEFAULT_EVENT_SOURCE = "state.service"
# The value rides in the event only while the whole detail stays under this size (a consumer GETs a larger
# value): EventBridge takes at most 256 KB per entry.
DEFAULT_MAX_DETAIL_BYTES = 65_536
# value_omitted_reason of a sensitive key's event.
SENSITIVE = "sensitive"
# EventBridge limits (PutEvents): 10 entries a request, 256 KB per request, sizes computed as below.
MAX_ENTRIES_PER_REQUEST = 10
MAX_REQUEST_BYTES = 262_144
# An entry's Time counts 14 bytes when present (we never set it: EventBridge stamps the receive time).
_TIME_BYTES = 14

# Fixed namespace for event ids: the same (key, version, operation) always gives the same id, in every
# deployment and on every retry or replay, so consumers can drop duplicates by it.
_EVENT_ID_NAMESPACE = uuid.UUID("5b0f3f0e-6a1c-4c55-9d3e-3d1d6f1b9c2a")


class Operation(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    # The key's expiry, written as its own version (storage.state.StateStore.expire).
    EXPIRED = "expired"


def event_id(key: str, version: int, operation: Operation) -> str:
    """Deterministic: derived from key, version and operation only (keys never contain a newline)."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{key}\n{version}\n{operation.value}"))


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The detail of one StateChanged event. `value_json` is the value's canonical JSON (UTF-8), or None
    when the event carries no value (a delete, or `value_omitted`)."""

    detail_type: ClassVar[str] = "StateChanged"

    event_id: str
    key: str
    version: int
    previous_version: int | None
    operation: Operation
    actor: str
    occurred_at: str
    value_json: bytes | None
    value_omitted: bool
    # The transaction that wrote this version, shared by every key it wrote (absent for a single write).
    transaction_id: str | None = None
    # The value schema the value was checked against when written (absent for an ungoverned key, a delete).
    schema: SchemaStamp | None = None
    # The approved proposal this version applied, and its approvers (absent otherwise).
    proposal_id: str | None = None
    approved_by: tuple[str, ...] = ()
    # Why the value is omitted when that is not its size: "sensitive" for a sealed value, which no event carries.
    omitted_reason: str | None = None

    def detail(self) -> str:
        """The detail as JSON text. The canonical value is spliced in as is (it already is canonical
        JSON), so a value is neither parsed nor re-encoded on its way to the bus."""
        head: dict[str, Any] = {
            "event_id": self.event_id,
            "key": self.key,
            "version": self.version,
            "previous_version": self.previous_version,
            "operation": self.operation.value,
            "actor": self.actor,
            "occurred_at": self.occurred_at,
        }
        if self.transaction_id is not None:
            head["transaction_id"] = self.transaction_id
        if self.schema is not None:
            head["schema"] = self.schema.fields()
        if self.proposal_id is not None:
            head["proposal_id"] = self.proposal_id
            head["approved_by"] = list(self.approved_by)
        if self.value_omitted:
            head["value_omitted"] = True
        if self.omitted_reason is not None:
            head["value_omitted_reason"] = self.omitted_reason
        text = json.dumps(head, separators=(",", ":"), ensure_ascii=False)
        if self.value_json is None:
            return text
        return f'{text[:-1]},"value":{self.value_json.decode("utf-8")}}}'


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One stream record's event: its PutEvents entry plus what the publisher needs around it."""

    sequence_number: str  # the stream record's, reported back in batchItemFailures
    position: int  # index in the invocation's batch: stream order, hence version order per key
    detail: StateChanged | ProposalChanged
    entry: PutEventsRequestEntryTypeDef

    @property
    def size(self) -> int:
        return entry_size(self.entry)


@dataclass(frozen=True, slots=True)
class StreamChange:
    """A stream record that is a state change: the event to publish and the state to repair the cache
    with (`event` is None for a change that publishes nothing, e.g. a REMOVE by DynamoDB's TTL)."""

    sequence_number: str
    record: StateRecord | None
    event: ChangeEvent | None
    # The blob of the version this change replaced, which nothing refers to any more (blobs.py).
    replaced_blob: BlobRef | None = None
    # When DynamoDB wrote the record (its ApproximateCreationDateTime): blob collection ages markers by
    # it, not by the publisher's clock, so a lagging stream never makes a newer write look abandoned.
    recorded_at: datetime | None = None


def image(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A stream image as the low-level item format `storage.state.record_of_item` reads: Lambda's JSON event carries
    binary attributes as base64 text, boto3 responses carry bytes; both become bytes."""
    return {name: _attribute(value) for name, value in raw.items()}


def _attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    if "B" in value:
        data = value["B"]
        return {"B": base64.b64decode(data) if isinstance(data, str) else bytes(data)}
    if "BS" in value:
        return {"BS": [base64.b64decode(d) if isinstance(d, str) else bytes(d) for d in value["BS"]]}
    if "M" in value:
        return {"M": image(value["M"])}
    if "L" in value:
        return {"L": [_attribute(v) for v in value["L"]]}
    return dict(value)


def recorded_at(record: Mapping[str, Any]) -> datetime | None:
    """The record's `ApproximateCreationDateTime`: epoch seconds in Lambda's event (a number), a datetime
    in a boto3 GetRecords response; None when absent."""
    raw = (record.get("dynamodb") or {}).get("ApproximateCreationDateTime")
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal | str):
        raise TypeError(f"ApproximateCreationDateTime is not a time: {raw!r}")
    return datetime.fromtimestamp(float(raw), UTC)


def is_state_record(record: Mapping[str, Any]) -> bool:
    """Only state items (sk = "state") produce events. The event source mapping's filter already drops
    other item kinds (history, blobs), except the removals lifecycle.py acts on (expiry markers, history
    items); this is the defensive second check."""
    keys = (record.get("dynamodb") or {}).get("Keys") or {}
    return bool((keys.get("sk") or {}).get("S") == STATE_SORT_KEY)


def operation_of(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Operation:
    """What a write did, from the images alone.

    A new life of the key (first write, re-creation over a tombstone or over an expired item) is marked
    by the store: `incarnation` equals the write's own `write_id` exactly when that write started it.
    """
    if "expired" in new:
        # The expiry's tombstone is marked so (storage.state.StateStore.expire); a later write removes the mark.
        return Operation.EXPIRED
    if new.get("deleted", {}).get("BOOL"):
        return Operation.DELETED
    if old is None or old.get("deleted", {}).get("BOOL"):
        return Operation.CREATED
    incarnation, write_id = new.get("incarnation", {}).get("S"), new.get("write_id", {}).get("S")
    if incarnation is not None and incarnation == write_id:
        return Operation.CREATED
    return Operation.UPDATED


def new_state_image(stream_record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The state a state item's stream record wrote (its new image), or None when it wrote none:
    - a REMOVE: only DynamoDB's TTL cleanup deletes state items, long after the expiry was decided and
      published; it is not a change of state;
    - an image without a version: every write sets the version atomically with the rest (moto's UpdateItem
      of a new item streams a keys-only INSERT before the real one; DynamoDB never does);
    - an image at the version the old one had: every write of state moves the version, so this is the
      listing backfill giving the item its `list_shard` (storage/listing_backfill.py), no change of state."""
    ddb = stream_record["dynamodb"]
    if "NewImage" not in ddb:
        return None
    new = image(ddb["NewImage"])
    if "version" not in new:
        return None
    old_version = (ddb.get("OldImage") or {}).get("version", {}).get("N")
    return None if old_version == new["version"]["N"] else new


def build_change(
    stream_record: Mapping[str, Any],
    *,
    position: int,
    source: str = DEFAULT_EVENT_SOURCE,
    bus_name: str,
    max_detail_bytes: int = DEFAULT_MAX_DETAIL_BYTES,
) -> StreamChange | None:
    """The change a stream record stands for, or None when it is not a state item."""
    if not is_state_record(stream_record):
        return None
    ddb = stream_record["dynamodb"]
    sequence_number = str(ddb["SequenceNumber"])
    when = recorded_at(stream_record)
    new = new_state_image(stream_record)
    if new is None:
        return StreamChange(sequence_number, None, None, recorded_at=when)
    old = image(ddb["OldImage"]) if "OldImage" in ddb else None
    if old is not None and "version" not in old:
        old = None
    record = record_of_item(new)
    operation = operation_of(old, new)
    detail = state_changed(
        record,
        operation=operation,
        previous_version=None if old is None else int(old["version"]["N"]),
        max_detail_bytes=max_detail_bytes,
    )
    entry: PutEventsRequestEntryTypeDef = {
        "Source": source,
        "DetailType": StateChanged.detail_type,
        "Detail": detail.detail(),
        "EventBusName": bus_name,
    }
    replaced = record_of_item(old).blob if old is not None else None
    if replaced is not None and record.blob is not None and replaced.write_id == record.blob.write_id:
        replaced = None
    return StreamChange(
        sequence_number,
        record,
        ChangeEvent(sequence_number, position, detail, entry),
        replaced_blob=replaced,
        recorded_at=when,
    )


def state_changed(
    record: StateRecord, *, operation: Operation, previous_version: int | None, max_detail_bytes: int
) -> StateChanged:
    """The detail for `record`, with its value when the detail stays within `max_detail_bytes`."""
    without_value = StateChanged(
        event_id=event_id(record.key, record.version, operation),
        key=record.key,
        version=record.version,
        previous_version=previous_version,
        operation=operation,
        actor=record.updated_by,
        occurred_at=record.updated_at,
        value_json=None,
        value_omitted=False,
        transaction_id=record.transaction_id,
        schema=record.schema,
        proposal_id=record.proposal_id,
        approved_by=record.approved_by,
    )
    if record.deleted or operation in (Operation.DELETED, Operation.EXPIRED):
        return without_value
    omitted = replace(without_value, value_omitted=True)
    if (record.value is not None and record.value.sealed) or (
        record.blob is not None and record.blob.encoding.startswith(SEALED_PREFIX)
    ):
        # A sensitive value is never opened on the stream side: consumers GET it with their own permissions.
        return replace(omitted, omitted_reason=SENSITIVE)
    if record.value is None:
        # The value is not inline in the item (a large value's blob reference): never fetched here.
        return omitted
    # `,"value":` plus the canonical value, measured before decompressing anything.
    projected = len(without_value.detail().encode("utf-8")) + len(',"value":') + record.value.size
    if projected > max_detail_bytes:
        return omitted
    return replace(without_value, value_json=record.value.canonical())


def entry_size(entry: Mapping[str, Any]) -> int:
    """An entry's size as EventBridge computes it for the 256 KB request limit: UTF-8 bytes of Source,
    DetailType, Detail and each Resources ARN, plus 14 for Time when set (EventBusName is not counted)."""
    size = _TIME_BYTES if entry.get("Time") is not None else 0
    for name in ("Source", "DetailType", "Detail"):
        if entry.get(name):
            size += len(str(entry[name]).encode("utf-8"))
    for resource in entry.get("Resources") or ():
        size += len(str(resource).encode("utf-8"))
    return size


def batches(events: Sequence[ChangeEvent]) -> Iterator[list[ChangeEvent]]:
    """PutEvents requests in order: at most 10 entries and 256 KB (as EventBridge counts) each."""
    batch: list[ChangeEvent] = []
    total = 0
    for event in events:
        size = event.size
        if batch and (len(batch) == MAX_ENTRIES_PER_REQUEST or total + size > MAX_REQUEST_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(event)
        total += size
    if batch:
        yield batch
