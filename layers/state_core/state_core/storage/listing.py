"""DynamoDB's side of listing keys by prefix: the sparse index `ListIndex` and the values of a page.

Only live state items carry `list_shard` (storage/state.py sets it on every write and removes it with a
delete or an expiry), so history, blob, marker items and tombstones are never in the index. The index is
keyed by (`list_shard`, `pk`) and projects what a listing shows (`version`, `updated_at`, `value_size`,
`expires_at`, `blob_id`), so a page without values reads the index alone. Index reads are eventually
consistent (DynamoDB offers nothing else on a global secondary index). Never a Scan: each query reads one
shard's keys within a range, at most `limit` of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from state_core.domain.listing import LIST_INDEX, LIST_SHARD_ATTRIBUTE, KeyRange, ListedKey
from state_core.domain.records import StateRecord
from state_core.storage.batches import read_all
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
        "schema_name",
        "schema_version",
        "write_id",
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
        with dynamodb_errors():
            items = read_all(
                self._client,
                self._table,
                [{"pk": {"S": key}, "sk": {"S": STATE_SORT_KEY}} for key in keys],
                ProjectionExpression=", ".join(_VALUE_NAMES),
                ExpressionAttributeNames=_VALUE_NAMES,
            )
        records = map(record_of_item, items)
        return {record.key: record for record in records}


def _listed(item: dict[str, Any]) -> ListedKey:
    return ListedKey(
        key=item["pk"]["S"],
        version=int(item["version"]["N"]),
        updated_at=item["updated_at"]["S"],
        size=int(item["value_size"]["N"]) if "value_size" in item else 0,
        expires_at=float(item["expires_at"]["N"]) if "expires_at" in item else None,
        inline=("blob_id" not in item),
    )
