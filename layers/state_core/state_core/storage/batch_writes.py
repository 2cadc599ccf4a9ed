"""BatchWriteItem for any number of put or delete requests: in requests of 25 (DynamoDB's limit), each
resent with what DynamoDB left unprocessed, with a growing pause, until it is all written."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

BATCH_SIZE = 25
ATTEMPTS = 8  # 10 ms doubling: about 2.5 s of pauses before giving up


class UnprocessedItems(RuntimeError):
    """DynamoDB still left some of a batch unprocessed after every attempt (throttling)."""


def write_all(client: DynamoDBClient, table: str, requests: Sequence[dict[str, Any]]) -> None:
    """Write `requests` (`{"PutRequest": ...}` or `{"DeleteRequest": ...}`, no two for one item) to `table`.
    The requests of one call of BatchWriteItem are applied in no particular order: a caller that needs one
    write before another makes two calls."""
    for start in range(0, len(requests), BATCH_SIZE):
        pending: dict[str, Any] = {table: list(requests[start : start + BATCH_SIZE])}
        for attempt in range(ATTEMPTS):
            pending = client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
            if not pending:
                break
            time.sleep(0.01 * 2**attempt)
        else:
            raise UnprocessedItems(f"DynamoDB left {len(pending.get(table, []))} items of a batch unprocessed")
