"""The listing index's backfill: `list_shard` on live state items written before the index existed.

An operator's job, run once (`make backfill-listing`, scripts/backfill_listing.py), never the request path:
it Scans the table for live state items without `list_shard` and sets it on each with one conditional
UpdateItem that holds only while the item is still the version the Scan saw, still live and still without
the attribute. So it never overwrites a newer write (which sets `list_shard` itself, or deletes the key), and
never puts a deleted key back in the index. The item's version does not change: the stream consumers take a
record whose version did not move for what it is, no change of state (stream/events.py, `new_state_image`).

Resumable: after each Scan page is done, the page's `LastEvaluatedKey` is handed to `checkpoint`; a run
started with it goes on from there (and a page done twice costs its conditional updates, nothing else).
Rate-limited: at most `rate` updates a second, and the Scan reads `page_size` items a page, so the job
takes a bounded share of the table's capacity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from state_core import failpoints
from state_core.domain.listing import LIST_SHARD_ATTRIBUTE, list_shard
from state_core.storage.state import STATE_SORT_KEY, dynamodb_errors

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_dynamodb.client import DynamoDBClient


@dataclass(slots=True)
class BackfillProgress:
    """What the backfill has done so far: Scan pages and items read, items given a shard, items a newer
    write (or a deletion) got to first, and where the Scan goes on from (None: done)."""

    pages: int = 0
    scanned: int = 0
    updated: int = 0
    raced: int = 0
    resume_from: dict[str, Any] | None = None
    done: bool = False


def backfill_listing(  # noqa: PLR0913  one knob each, keyword-only
    client: DynamoDBClient,
    table: str,
    *,
    start_from: dict[str, Any] | None = None,
    rate: float = 100.0,
    page_size: int = 100,
    max_pages: int | None = None,
    checkpoint: Callable[[BackfillProgress], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> BackfillProgress:
    """Set `list_shard` on every live state item missing it; at most `rate` updates a second."""
    if rate <= 0 or page_size <= 0:
        raise ValueError("rate and page_size must be positive")
    progress = BackfillProgress(resume_from=start_from)
    request: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": (
            "sk = :state AND attribute_exists(#version) AND attribute_not_exists(#shard)"
            " AND attribute_not_exists(#deleted)"
        ),
        "ProjectionExpression": "pk, #version",
        "ExpressionAttributeNames": {"#version": "version", "#shard": LIST_SHARD_ATTRIBUTE, "#deleted": "deleted"},
        "ExpressionAttributeValues": {":state": {"S": STATE_SORT_KEY}},
        "Limit": page_size,
    }
    started, sent = clock(), 0
    while max_pages is None or progress.pages < max_pages:
        if progress.resume_from is not None:
            request["ExclusiveStartKey"] = progress.resume_from
        with dynamodb_errors():
            page = client.scan(**request)
        for item in page.get("Items", []):
            # Paced from the start: `rate` updates a second on average, never a burst above it.
            ahead = started + sent / rate - clock()
            if ahead > 0:
                sleep(ahead)
            sent += 1
            progress.scanned += 1
            if _set_shard(client, table, item["pk"]["S"], item["version"]["N"]):
                progress.updated += 1
            else:
                progress.raced += 1
        progress.pages += 1
        progress.resume_from = page.get("LastEvaluatedKey")
        progress.done = progress.resume_from is None
        if checkpoint is not None:
            checkpoint(progress)
        if progress.done:
            break
    return progress


def _set_shard(client: DynamoDBClient, table: str, key: str, version: str) -> bool:
    """One item's shard, only on the version the Scan saw, still live and still without one."""
    if failpoints.ENABLED:
        failpoints.hit("listing_backfill_before_update", key=key, version=int(version))
    try:
        with dynamodb_errors():
            client.update_item(
                TableName=table,
                Key={"pk": {"S": key}, "sk": {"S": STATE_SORT_KEY}},
                UpdateExpression="SET #shard = :shard",
                ConditionExpression=(
                    "#version = :version AND attribute_not_exists(#shard) AND attribute_not_exists(#deleted)"
                ),
                ExpressionAttributeNames={
                    "#shard": LIST_SHARD_ATTRIBUTE,
                    "#version": "version",
                    "#deleted": "deleted",
                },
                ExpressionAttributeValues={":shard": {"S": list_shard(key)}, ":version": {"N": version}},
            )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise
    return True
