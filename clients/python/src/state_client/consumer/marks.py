"""Where an ordered consumer keeps each key's mark: the last version it handed out and was resumed past.

Any store works that answers `get` and moves a mark only forwards in `advance`, atomically: that is what
keeps two consumers of one key from moving it backwards. Two come with the client: in memory (one process,
tests) and a DynamoDB table (conditional writes).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping


class MarkStore(Protocol):
    def get(self, key: str, /) -> int:
        """The key's mark; 0 for a key never marked (versions start at 1)."""
        ...

    def advance(self, key: str, version: int, /) -> bool:
        """Set the key's mark to `version` if it is below it, atomically. False when the mark already is
        at `version` or past it (another consumer got there): nothing changes then."""
        ...


class InMemoryMarkStore:
    """Marks in a dict: for tests and for one process that starts from scratch on every run."""

    def __init__(self, marks: Mapping[str, int] | None = None) -> None:
        self._marks = dict(marks or {})
        self._lock = threading.Lock()

    def get(self, key: str, /) -> int:
        with self._lock:
            return self._marks.get(key, 0)

    def advance(self, key: str, version: int, /) -> bool:
        with self._lock:
            if self._marks.get(key, 0) >= version:
                return False
            self._marks[key] = version
            return True

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._marks)


class DynamoDBMarkStore:
    """Marks in a DynamoDB table whose partition key is a string (`key_attribute`, default `key`) and that has
    no sort key. Reads are strongly consistent; `advance` is one conditional UpdateItem, so of two consumers
    racing on a key the mark ends at the higher version whatever the order their writes land in.

    `prefix` keeps several consumers' marks apart in one table (each prefix its own marks). Needs boto3
    (`pip install 'state-client[dynamodb]'`); pass `client` to choose region, endpoint or credentials.
    """

    def __init__(self, table_name: str, *, client: Any = None, key_attribute: str = "key", prefix: str = "") -> None:
        if client is None:
            import boto3  # only where this store is used: the client itself never needs boto3

            client = boto3.client("dynamodb")
        self._client = client
        self.table_name = table_name
        self._key_attribute = key_attribute
        self._prefix = prefix

    def _item_key(self, key: str) -> dict[str, Any]:
        return {self._key_attribute: {"S": self._prefix + key}}

    def get(self, key: str, /) -> int:
        item = self._client.get_item(
            TableName=self.table_name,
            Key=self._item_key(key),
            ConsistentRead=True,
            ProjectionExpression="#v",
            ExpressionAttributeNames={"#v": "version"},
        ).get("Item")
        return int(item["version"]["N"]) if item and "version" in item else 0

    def advance(self, key: str, version: int, /) -> bool:
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key=self._item_key(key),
                UpdateExpression="SET #v = :v, #at = :at",
                ConditionExpression="attribute_not_exists(#v) OR #v < :v",
                ExpressionAttributeNames={"#v": "version", "#at": "marked_at"},
                ExpressionAttributeValues={
                    ":v": {"N": str(version)},
                    ":at": {"S": datetime.now(UTC).isoformat(timespec="milliseconds")},
                },
            )
        except self._client.exceptions.ConditionalCheckFailedException:
            return False
        return True


def create_mark_table(client: Any, table_name: str, *, key_attribute: str = "key") -> None:
    """A table for DynamoDBMarkStore, on demand, and wait until it is active (tests, scripts; the example's
    SAM template declares its own)."""
    client.create_table(
        TableName=table_name,
        AttributeDefinitions=[{"AttributeName": key_attribute, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": key_attribute, "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
