"""DynamoDB's side of listing keys by prefix: the sparse index `ListIndex` and the values of a page.

Only live state items carry `list_shard` (storage/state.py sets it on every write and removes it with a
delete or an expiry), so history, blob, marker items and tombstones are never in the index. The index is
keyed by (`list_shard`, `pk`) and projects what a listing shows (`version`, `updated_at`, `value_size`,
`expires_at`, `blob_id`), so a page without values reads the index alone. Index reads are eventually
consistent (DynamoDB offers nothing else on a global secondary index). Never a Scan: each query reads one
shard's keys within a range, at most `limit` of them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from state_core.domain.errors import ServiceUnavailable
from state_core.domain.listing import LIST_INDEX, LIST_SHARD_ATTRIBUTE, KeyRange, ListedKey
from state_core.domain.records import StateRecord
from state_core.storage.state import STATE_SORT_KEY, dynamodb_errors, record_of_item

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

_INDEX_NAMES = {
    "#shard": LIST_SHARD_ATTRIBUTE,
    "#pk": "pk",
    "#version": "version",
    "#updated_at": "updated_at",
    "#value_size": "value_size",
    "#expires_at": "expires_at",
    "#blob_id": "blob_id",
}
_INDEX_PROJECTION = "#pk, #version, #updated_at, #value_size, #expires_at, #blob_id"
# BatchGetItem takes at most 100 keys a request.
_BATCH_GET_KEYS = 100
# Keys DynamoDB leaves unread (throttling, or over 16 MB of answer) are asked for again, with a short backoff.
_UNPROCESSED_ATTEMPTS = 5
_VALUE_NAMES = {
    f"#{name}": name
    for name in (
        "pk",
        "version",
        "deleted",
        "value",
        "encoding",
        "value_size",
        "created_at",
        "updated_at",
        "updated_by",
        "expires_at",
        "blob_id",
        "blob_chunks",
        "blob_sha256",
    )
}


class ListIndexStore:
    """Queries of one shard's key range, and the values of listed keys."""

    def __init__(self, client: DynamoDBClient, table_name: str, index_name: str = LIST_INDEX) -> None:
        self._client = client
        self._table = table_name
        self._index = index_name

    def query(self, shard: str, key_range: KeyRange, *, limit: int) -> tuple[list[ListedKey], bool]:
        """Up to `limit` keys of `shard` within `key_range`, in key order, and whether more may follow."""
        with dynamodb_errors():
            response = self._client.query(
                TableName=self._table,
                IndexName=self._index,
                KeyConditionExpression="#shard = :shard AND #pk BETWEEN :low AND :high",
                ExpressionAttributeNames=_INDEX_NAMES,
                ExpressionAttributeValues={
                    ":shard": {"S": shard},
                    ":low": {"S": key_range.low},
                    ":high": {"S": key_range.high},
                },
                ProjectionExpression=_INDEX_PROJECTION,
                Limit=limit,
            )
        listed = [_listed(item) for item in response.get("Items", [])]
        return listed, "LastEvaluatedKey" in response

    def values(self, keys: list[str]) -> dict[str, StateRecord]:
        """The state items of `keys`, read strongly consistently, with inline values (a blob-backed value
        is left unloaded: its record has `blob` set and no value). Absent keys are left out."""
        found: dict[str, StateRecord] = {}
        for start in range(0, len(keys), _BATCH_GET_KEYS):
            pending: dict[str, Any] = {
                self._table: {
                    "Keys": [
                        {"pk": {"S": key}, "sk": {"S": STATE_SORT_KEY}} for key in keys[start : start + _BATCH_GET_KEYS]
                    ],
                    "ConsistentRead": True,
                    "ProjectionExpression": ", ".join(_VALUE_NAMES),
                    "ExpressionAttributeNames": _VALUE_NAMES,
                }
            }
            for attempt in range(_UNPROCESSED_ATTEMPTS):
                if not pending:
                    break
                if attempt:
                    time.sleep(0.05 * 2**attempt)
                with dynamodb_errors():
                    response = self._client.batch_get_item(RequestItems=pending)
                for item in response.get("Responses", {}).get(self._table, []):
                    record = record_of_item(item)
                    found[record.key] = record
                # Over 16 MB of answer, or throttled: DynamoDB hands back what it did not read.
                pending = dict(response.get("UnprocessedKeys") or {})
            if pending:
                raise ServiceUnavailable("the state table is busy; retry shortly")
        return found


def _listed(item: dict[str, Any]) -> ListedKey:
    return ListedKey(
        key=item["pk"]["S"],
        version=int(item["version"]["N"]),
        updated_at=item["updated_at"]["S"],
        size=int(item["value_size"]["N"]) if "value_size" in item else 0,
        expires_at=float(item["expires_at"]["N"]) if "expires_at" in item else None,
        inline=("blob_id" not in item),
    )
