"""Version history: every version of a key, kept for a retention period, beside its state item.

Items: `pk = <key>, sk = v#<version, 12 digits>`, one per version, written with a plain PutItem of an item
derived only from the state item's image (version, operation, actor, time, size, expiry, and the value:
inline bytes, or the reference of its blob, never a copy), so writing it twice writes the same thing.
Two writers, both idempotent:

- the request path, right after its state write (best effort: a failure is only counted), so a version is
  in the history when its write is acknowledged;
- publish_changes, for every state item image on the table's stream (transactional outbox): a function
  that died after its state write still gets its version into the history, within the stream's lag.

`ttl` (epoch seconds) = the version's time + the retention; DynamoDB's TTL then removes the item, and the
publisher, seeing that REMOVE on the stream, releases the item's blob unless the state item still uses
it. The current version is always served from the state item, whatever happened to its history item.

A blob's marker (blobs.py) says "not yet claimed": the publisher deletes it once the version's history
item exists, so the blob collector only ever looks at blobs of writes that died before their state item.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from state_core.domain.codec import StoredValue
from state_core.domain.errors import BadRequest, Gone, NotFound, ServiceUnavailable
from state_core.domain.params import ascii_int
from state_core.domain.records import BlobRef, StateRecord
from state_core.storage.blobs import MARKER_PREFIX
from state_core.storage.state import dynamodb_errors, record_of_item, value_of_item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

HISTORY_PREFIX = "v#"
DEFAULT_RETENTION_DAYS = 90
MAX_PAGE = 1000
DEFAULT_PAGE = 100
# Sort keys hold 12 digits; `?version=` takes up to 15 (a version past the key's current one is a 404).
MAX_HISTORY_VERSION = 10**12 - 1
MAX_REQUESTED_VERSION = 10**15 - 1
# How far the history may trail the state when a function died between its state write and its own
# history write: the stream's lag (about a second; measured locally, README). Within this window after the
# key's latest write, a missing older version answers 503 (retry) rather than a premature 410.
HISTORY_LAG_GRACE_SECONDS = 60
_CURSOR_VERSION = "h1"
_PAGE_NAMES = {
    f"#{name}": name
    for name in ("pk", "version", "operation", "actor", "occurred_at", "created_at", "value_size", "expires_at")
}


def history_sort_key(version: int) -> str:
    return f"{HISTORY_PREFIX}{version:012d}"


def is_history_sort_key(sort_key: str) -> bool:
    return sort_key.startswith(HISTORY_PREFIX)


def _epoch(rfc3339_time: str) -> float:
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

    @property
    def has_value(self) -> bool:
        return self.value is not None or self.blob is not None

    def summary(self) -> dict[str, Any]:
        """What `GET /state/{key}/history` lists for the version (never the value)."""
        return {
            "version": self.version,
            "operation": self.operation,
            "actor": self.actor,
            "occurred_at": self.occurred_at,
            "size": self.size,
        }

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
        )


def entry_of_record(record: StateRecord, operation: str) -> HistoryEntry:
    """The history entry of a state record. A large value is referenced by its blob even when the record
    holds it loaded (the request path's record does): the history never copies a blob."""
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
    )


def history_item(entry: HistoryEntry, retention_seconds: int) -> dict[str, Any]:
    """The low-level item: a function of the version alone, so both writers write the same item."""
    item: dict[str, Any] = {
        "pk": {"S": entry.key},
        "sk": {"S": history_sort_key(entry.version)},
        "version": {"N": str(entry.version)},
        "operation": {"S": entry.operation},
        "actor": {"S": entry.actor},
        "occurred_at": {"S": entry.occurred_at},
        "ttl": {"N": str(int(_epoch(entry.occurred_at)) + retention_seconds)},
    }
    if entry.created_at is not None:
        item["created_at"] = {"S": entry.created_at}
    if entry.size is not None:
        item["value_size"] = {"N": str(entry.size)}
    if entry.expires_at is not None:
        item["expires_at"] = {"N": f"{entry.expires_at:.3f}"}
    if entry.value is not None:
        item["encoding"] = {"S": entry.value.encoding}
        item["value"] = {"B": entry.value.data}
    elif entry.blob is not None:
        item["encoding"] = {"S": entry.blob.encoding}
        item["blob_id"] = {"S": entry.blob.write_id}
        item["blob_chunks"] = {"N": str(entry.blob.chunks)}
        item["blob_sha256"] = {"S": entry.blob.sha256}
    return item


def entry_of_item(item: Mapping[str, Any]) -> HistoryEntry:
    size = int(item["value_size"]["N"]) if "value_size" in item else None
    value, blob = value_of_item(item)
    return HistoryEntry(
        key=item["pk"]["S"],
        version=int(item["version"]["N"]),
        operation=item["operation"]["S"],
        actor=item["actor"]["S"],
        occurred_at=item["occurred_at"]["S"],
        created_at=item["created_at"]["S"] if "created_at" in item else None,
        size=size,
        expires_at=float(item["expires_at"]["N"]) if "expires_at" in item else None,
        value=value,
        blob=blob,
    )


# ----------------------------------------------------------------------------------------------- cursors
def _key_tag(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _check(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:8]


def encode_cursor(key: str, version: int) -> str:
    """Opaque: base64url of the format, a tag of the key, the last version listed, and a check over them
    (a garbled or truncated cursor is refused, not read as another position). Not a secret: a caller that
    forges a cursor for a key it may read can only skip to versions it may read anyway."""
    text = f"{_CURSOR_VERSION}:{_key_tag(key)}:{version}"
    text = f"{text}:{_check(text)}"
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(key: str, cursor: str) -> int:
    """The version a cursor continues after; BadRequest if it is garbled or belongs to another key."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        fmt, tag, version_text, check = text.split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not a cursor this service issued") from None
    version = ascii_int(version_text, low=1, high=MAX_HISTORY_VERSION)
    intact = check == _check(f"{fmt}:{tag}:{version_text}")
    if not intact or fmt != _CURSOR_VERSION or version is None:
        raise BadRequest("cursor is not a cursor this service issued")
    if tag != _key_tag(key):
        raise BadRequest("cursor belongs to another key")
    return version


def page_limit(text: str | None) -> int:
    """`?limit=N`: ASCII digits, 1 to MAX_PAGE."""
    if text is None:
        return DEFAULT_PAGE
    limit = ascii_int(text, low=1, high=MAX_PAGE)
    if limit is None:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    return limit


def requested_version(text: str | None) -> int | None:
    """`?version=N`: ASCII digits, 1 to MAX_REQUESTED_VERSION."""
    if text is None:
        return None
    version = ascii_int(text, low=1, high=MAX_REQUESTED_VERSION)
    if version is None:
        raise BadRequest(f"version must be an integer from 1 to {MAX_REQUESTED_VERSION}")
    return version


# -------------------------------------------------------------------------------------------------- store
class HistoryStore:
    """Reads and idempotently writes history items."""

    def __init__(self, client: DynamoDBClient, table_name: str, *, retention_seconds: int) -> None:
        self._client = client
        self._table = table_name
        self.retention_seconds = retention_seconds

    def record(self, record: StateRecord, operation: str) -> None:
        """Write the history item of `record` (the state item after a write). Idempotent."""
        item = history_item(entry_of_record(record, operation), self.retention_seconds)
        self._client.put_item(TableName=self._table, Item=item)

    def claim_blob(self, key: str, blob: BlobRef) -> None:
        """The history now refers to `blob`: drop its marker, so the collector never considers it."""
        self._client.delete_item(
            TableName=self._table, Key={"pk": {"S": key}, "sk": {"S": MARKER_PREFIX + blob.write_id}}
        )

    def get(self, key: str, version: int) -> HistoryEntry | None:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": key}, "sk": {"S": history_sort_key(version)}},
                ConsistentRead=True,
            ).get("Item")
        return None if item is None else entry_of_item(item)

    def exists(self, key: str, version: int) -> bool:
        item = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": key}, "sk": {"S": history_sort_key(version)}},
            ConsistentRead=True,
            ProjectionExpression="#version",
            ExpressionAttributeNames={"#version": "version"},
        ).get("Item")
        return item is not None

    def page(self, key: str, *, limit: int, before: int | None) -> tuple[list[HistoryEntry], bool]:
        """Up to `limit` versions older than `before` (all when None), newest first; and whether more follow.
        One item more than asked tells whether a next page exists, so the last page never comes back empty."""
        if before is not None and before <= 1:
            # Nothing is older than version 1; asked anyway, DynamoDB refuses a BETWEEN whose low bound is
            # above its high bound (a ValidationException, where moto answers an empty page).
            return [], False
        top = MAX_HISTORY_VERSION if before is None else min(before - 1, MAX_HISTORY_VERSION)
        upper = history_sort_key(top)
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :key AND sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":key": {"S": key},
                ":low": {"S": history_sort_key(1)},
                ":high": {"S": upper},
            },
            "ScanIndexForward": False,
            "ConsistentRead": True,
            # Only the metadata: a page never carries values.
            "ProjectionExpression": ", ".join(_PAGE_NAMES),
            "ExpressionAttributeNames": _PAGE_NAMES,
        }
        entries: list[HistoryEntry] = []
        while len(entries) <= limit:
            request["Limit"] = limit + 1 - len(entries)
            with dynamodb_errors():
                response = self._client.query(**request)
            entries += [entry_of_item(item) for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                break
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        return entries[:limit], len(entries) > limit

    def references(self, key: str, blob_id: str) -> bool:
        """Whether any retained history item of `key` refers to the blob (the collector's last check)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :key AND begins_with(sk, :prefix)",
            "FilterExpression": "#blob_id = :blob",
            "ExpressionAttributeValues": {
                ":key": {"S": key},
                ":prefix": {"S": HISTORY_PREFIX},
                ":blob": {"S": blob_id},
            },
            "ExpressionAttributeNames": {"#blob_id": "blob_id"},
            "ProjectionExpression": "#blob_id",
            "ConsistentRead": True,
        }
        while True:
            response = self._client.query(**request)
            if response.get("Items"):
                return True
            if "LastEvaluatedKey" not in response:
                return False
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]


# ------------------------------------------------------------------------------------------------ reading
class StateReads(Protocol):
    """What reading history needs of the state store (storage.state.StateStore)."""

    def get(self, key: str) -> StateRecord | None: ...
    def head(self, key: str) -> dict[str, Any] | None: ...
    def load_blob(self, blob: BlobRef) -> StoredValue | None: ...


class HistoryEntryModel(BaseModel):
    """One version in `GET /state/{key}/history`."""

    model_config = ConfigDict(defer_build=True)

    version: int
    operation: Literal["created", "updated", "deleted", "expired"]
    actor: str = Field(description="Subject of the caller that made the change (system:ttl for an expiry).")
    occurred_at: str = Field(description="RFC 3339 UTC time of the change.")
    size: int | None = Field(description="Bytes of the value's canonical JSON; null for a deletion or expiry.")


class HistoryPageModel(BaseModel):
    """A page of a key's versions, newest first."""

    model_config = ConfigDict(defer_build=True)

    key: str
    versions: list[HistoryEntryModel]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


@dataclass(frozen=True, slots=True)
class HistoryPage:
    key: str
    entries: list[HistoryEntry]
    next_cursor: str | None

    def body(self) -> str:
        return json.dumps(
            {"key": self.key, "versions": [e.summary() for e in self.entries], "next_cursor": self.next_cursor},
            separators=(",", ":"),
            ensure_ascii=False,
        )


def operation_of_state(item: Mapping[str, Any]) -> str:
    """A state item's operation without its old image (the stream has both; a read has only this)."""
    if item.get("deleted", {}).get("BOOL"):
        return "expired" if "expired" in item else "deleted"
    incarnation, write_id = item.get("incarnation", {}).get("S"), item.get("write_id", {}).get("S")
    return "created" if incarnation is not None and incarnation == write_id else "updated"


class HistoryReader:
    """`GET /state/{key}?version=N` and `GET /state/{key}/history`."""

    def __init__(self, states: StateReads, history: HistoryStore, *, clock: Callable[[], datetime]) -> None:
        self._states = states
        self._history = history
        self._clock = clock

    def version(self, key: str, version: int) -> tuple[StateRecord, bytes]:
        """Version `version` of `key` as a record and its canonical value.

        NotFound if the version never existed (or is a deletion or expiry, which has no value); Gone if it
        existed but its history item has left retention; ServiceUnavailable within the lag grace after the
        key's latest write, when the history may not have caught up yet.
        """
        state = self._states.get(key)
        if state is None or version > state.version:
            raise NotFound(f"key {key} has no version {version}")
        if version == state.version:
            if state.deleted or state.value is None:  # StateStore.get loads a large value's blob
                raise NotFound(f"version {version} of key {key} is a deletion and has no value")
            return state, state.value.canonical()
        found = self._history.get(key, version)
        if found is None:
            if self._clock().timestamp() - _epoch(state.updated_at) < HISTORY_LAG_GRACE_SECONDS:
                raise ServiceUnavailable(f"version {version} of key {key} is not in the history yet; retry shortly")
            raise Gone(f"version {version} of key {key} is beyond the history's retention")
        if not found.has_value:
            raise NotFound(f"version {version} of key {key} is a deletion and has no value")
        value = found.value
        if value is None and found.blob is not None:
            value = self._states.load_blob(found.blob)
            if value is None:
                raise Gone(f"version {version} of key {key} is beyond the history's retention")
        assert value is not None
        return replace(found, value=value).record(), value.canonical()

    def list(self, key: str, *, limit: int, cursor: str | None) -> HistoryPage:
        """Versions newest first. The first page starts with the current version, taken from the state
        item (its history item may have left retention, or trail it by the stream's lag)."""
        before = None if cursor is None else decode_cursor(key, cursor)
        entries, more = self._history.page(key, limit=limit, before=before)
        if before is None:
            head = self._states.head(key)
            if head is None and not entries:
                raise NotFound(f"key {key} has no history")
            if head is not None and (not entries or entries[0].version < int(head["version"]["N"])):
                current = entry_of_record(record_of_item(head), operation_of_state(head))
                if "value_size" in head:
                    current = replace(current, size=int(head["value_size"]["N"]))
                entries = [current, *entries]
                if len(entries) > limit:
                    entries, more = entries[:limit], True
        next_cursor = encode_cursor(key, entries[-1].version) if more and entries else None
        return HistoryPage(key=key, entries=entries, next_cursor=next_cursor)
