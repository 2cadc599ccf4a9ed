"""DynamoDB's batch calls for any number of items: BatchWriteItem in requests of 25 and BatchGetItem in
requests of 100 (DynamoDB's limits), each asked again for what DynamoDB left unprocessed, with a growing
pause, until it is all done."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from state_core.domain.errors import ServiceUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

BATCH_SIZE = 25
ATTEMPTS = 8  # 10 ms doubling: about 2.5 s of pauses before giving up
KEYS_PER_READ = 100
READ_ATTEMPTS = 6


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


def backoff(attempt: int) -> None:
    """Full-jitter exponential backoff before the `attempt`-th retry of a batch or transactional read: readers
    throttled together do not come back together."""
    time.sleep(random.uniform(0, min(0.2, 0.01 * 2**attempt)))  # noqa: S311 - jitter, not security


def read_all(
    client: DynamoDBClient, table: str, keys: Sequence[dict[str, Any]], **request: Any
) -> list[dict[str, Any]]:
    """The items of `keys` (absent ones left out, in no particular order), read strongly consistently;
    `request` adds to each key set (a ProjectionExpression, its names). ServiceUnavailable when DynamoDB
    still leaves some unread after READ_ATTEMPTS (throttling, or over 16 MB of answer each time)."""
    items: list[dict[str, Any]] = []
    for start in range(0, len(keys), KEYS_PER_READ):
        pending: dict[str, Any] = {
            table: {"Keys": list(keys[start : start + KEYS_PER_READ]), "ConsistentRead": True, **request}
        }
        for attempt in range(READ_ATTEMPTS):
            if attempt:
                backoff(attempt)
            response = client.batch_get_item(RequestItems=pending)
            items += response.get("Responses", {}).get(table, [])
            pending = dict(response.get("UnprocessedKeys") or {})
            if not pending:
                break
        else:
            raise ServiceUnavailable("the state table is busy; retry shortly")
    return items
