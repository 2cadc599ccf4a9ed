"""Version history in DynamoDB: every version of a key, kept for a retention period, beside its state item.

Items: `pk = <key>, sk = v#<version, 12 digits>`, one per version, written with a plain PutItem of an item
derived only from the state item's image (version, operation, actor, time, size, expiry, and the value:
inline bytes, or the reference of its blob, never a copy), so writing it twice writes the same thing.
One writer: the stream publisher, for every state item image on the table's stream (transactional
outbox), in version order per key; the request path writes only the state item, so each write request is
one DynamoDB write and the history trails the state by the stream's lag.

`ttl` (epoch seconds) = the version's time + the retention; DynamoDB's TTL then removes the item, and the
publisher, seeing that REMOVE on the stream, releases the item's blob unless the state item still uses
it. The current version is always served from the state item, whatever happened to its history item.

A blob's marker (blobs.py) says "not yet claimed": the publisher deletes it once the version's history
item exists, so the blob collector only ever looks at blobs of writes that died before their state item.

Which version a reader may see, and when a missing one is gone for good, is decided in service/history.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from state_core.domain.history import MAX_HISTORY_VERSION, HistoryEntry, entry_of_record, rfc3339_epoch
from state_core.domain.records import SchemaStamp, StateRecord
from state_core.storage.batches import write_all
from state_core.storage.blobs import MARKER_PREFIX
from state_core.storage.state import dynamodb_errors, read_head, record_of_item, value_of_item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

HISTORY_PREFIX = "v#"
DEFAULT_RETENTION_DAYS = 90
_PAGE_NAMES = {
    f"#{name}": name
    for name in (
        "pk",
        "version",
        "operation",
        "actor",
        "occurred_at",
        "created_at",
        "value_size",
        "expires_at",
        # A version a transaction wrote lists the transaction, as its event names it.
        "transaction_id",
        # An approved change lists its proposal and approvers beside its actor (the proposer).
        "proposal_id",
        "approved_by",
        # And a governed key's version the schema its value was checked against.
        "schema_name",
        "schema_version",
    )
}


def history_sort_key(version: int) -> str:
    return f"{HISTORY_PREFIX}{version:012d}"


def is_history_sort_key(sort_key: str) -> bool:
    return sort_key.startswith(HISTORY_PREFIX)


def history_item(entry: HistoryEntry, retention_seconds: int) -> dict[str, Any]:
    """The low-level item: a function of the version alone, so a retried or replayed batch writes the same
    item."""
    item: dict[str, Any] = {
        "pk": {"S": entry.key},
        "sk": {"S": history_sort_key(entry.version)},
        "version": {"N": str(entry.version)},
        "operation": {"S": entry.operation},
        "actor": {"S": entry.actor},
        "occurred_at": {"S": entry.occurred_at},
        "ttl": {"N": str(int(rfc3339_epoch(entry.occurred_at)) + retention_seconds)},
    }
    if entry.created_at is not None:
        item["created_at"] = {"S": entry.created_at}
    if entry.size is not None:
        item["value_size"] = {"N": str(entry.size)}
    if entry.expires_at is not None:
        item["expires_at"] = {"N": f"{entry.expires_at:.3f}"}
    if entry.transaction_id is not None:
        item["transaction_id"] = {"S": entry.transaction_id}
    if entry.proposal_id is not None:
        item["proposal_id"] = {"S": entry.proposal_id}
    if entry.approved_by:
        item["approved_by"] = {"SS": list(entry.approved_by)}
    if entry.write_id is not None:
        item["write_id"] = {"S": entry.write_id}
    if entry.schema is not None:
        item["schema_name"] = {"S": entry.schema.name}
        item["schema_version"] = {"N": str(entry.schema.version)}
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
        transaction_id=item["transaction_id"]["S"] if "transaction_id" in item else None,
        proposal_id=item["proposal_id"]["S"] if "proposal_id" in item else None,
        approved_by=tuple(sorted(item["approved_by"]["SS"])) if "approved_by" in item else (),
        write_id=item["write_id"]["S"] if "write_id" in item else None,
        schema=SchemaStamp(item["schema_name"]["S"], int(item["schema_version"]["N"]))
        if "schema_name" in item
        else None,
    )


def operation_of_state(item: Mapping[str, Any]) -> str:
    """A state item's operation without its old image (the stream has both; a read has only this)."""
    if item.get("deleted", {}).get("BOOL"):
        return "expired" if "expired" in item else "deleted"
    incarnation, write_id = item.get("incarnation", {}).get("S"), item.get("write_id", {}).get("S")
    return "created" if incarnation is not None and incarnation == write_id else "updated"


def entry_of_state_head(head: Mapping[str, Any]) -> HistoryEntry:
    """The history entry of a state item read without its value (StateStore.head): its size is the
    item's `value_size`, since an inline value is not there to measure."""
    entry = entry_of_record(record_of_item(head), operation_of_state(head))
    return replace(entry, size=int(head["value_size"]["N"])) if "value_size" in head else entry


# -------------------------------------------------------------------------------------------------- store
class HistoryStore:
    """Reads and idempotently writes history items."""

    def __init__(self, client: DynamoDBClient, table_name: str, *, retention_seconds: int) -> None:
        self._client = client
        self._table = table_name
        self.retention_seconds = retention_seconds

    def record(self, versions: Sequence[tuple[StateRecord, str]]) -> None:
        """Write the history items of `versions` (each a state item after a write, with its operation), then
        claim their blobs: a blob's marker goes only once its history item exists. Idempotent.

        In batches of 25: the stream side's per-version PutItem calls used to outnumber the write requests'
        own, and each one was a request DynamoDB (or the local emulator) serves beside the writers'."""
        items = {
            (record.key, record.version): history_item(entry_of_record(record, operation), self.retention_seconds)
            for record, operation in versions
        }
        write_all(self._client, self._table, [{"PutRequest": {"Item": item}} for item in items.values()])
        claims = {
            (record.key, record.blob.write_id): {
                "DeleteRequest": {"Key": {"pk": {"S": record.key}, "sk": {"S": MARKER_PREFIX + record.blob.write_id}}}
            }
            for record, _ in versions
            if record.blob is not None
        }
        write_all(self._client, self._table, list(claims.values()))

    def get(self, key: str, version: int) -> HistoryEntry | None:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": key}, "sk": {"S": history_sort_key(version)}},
                ConsistentRead=True,
            ).get("Item")
        return None if item is None else entry_of_item(item)

    def current(self, key: str) -> HistoryEntry | None:
        """The key's current version as the history lists it, read from its state item (without the value):
        that version's own history item may trail it by the stream's lag, or have left retention."""
        head = read_head(self._client, self._table, key)
        return None if head is None else entry_of_state_head(head)

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
        pages = self._client.get_paginator("query").paginate(**request)
        return any(page.get("Items") for page in pages)  # stops at the first page with one
