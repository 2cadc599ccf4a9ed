"""Values too large for the state item (DynamoDB caps an item at 400 KB): immutable compressed blobs in the
same table.

A blob is named by the write id of the write that made it (a blob re-encrypted under a new key is a new blob
with an id of its own, reencryption.py) and is never changed: its chunks live under
their own partition keys (`chunk#<write id>#<n>`), so one key's large writes spread over partitions, and a
marker in the owning key's partition (`pk = <key>, sk = blob#<write id>`) records that the blob exists.
The state item refers to the blob by write id, chunk count and SHA-256; it is written after the chunks,
so a reader that finds the reference always finds the chunks, unless the blob was replaced and collected
meanwhile, which the reader notices (a chunk missing) and answers by reading the state item again.

A blob is removed only when nothing retained refers to it: neither the state item nor a history item
(history.py). The marker means "not yet claimed": the publisher deletes it once the version's history item
exists, and from then on the blob goes when the last of its referrers does (lifecycle.py: the history
item's TTL removal while the state no longer uses it, or the state moving on after the history item left).
`collect` removes the blobs of unclaimed markers, i.e. of writes that died between their chunks and their
state item, once they are older than any write can take, and never one the state item or a history item
names (both read strongly consistently at collection time). "Older" is measured against a time by which
every write that landed has been claimed: the stream record being processed (records of a key arrive in
order, so every version before it is in the history), or, for the sweep, the stream's retention ago; never
the wall clock alone, which runs ahead of a lagging stream. The marker's `ttl` is DynamoDB's own backstop
for markers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from state_core.domain.codec import StoredValue
from state_core.domain.errors import CorruptStoredValue
from state_core.domain.records import BlobRef
from state_core.storage.batches import write_all

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

# A DynamoDB item holds 400 KB (moto: 405,000 bytes) including names and keys; 350,000 bytes of data
# leaves room and makes a 1 MiB incompressible value three chunks.
CHUNK_BYTES = 350_000
MARKER_PREFIX = "blob#"
CHUNK_SORT_KEY = "chunk"
# A write older than this has finished or died: no function runs longer (template Timeout is 10 s).
WRITE_GRACE_SECONDS = 300
# How far the sweep stays behind the wall clock: DynamoDB keeps a stream record 24 h, so a write that
# landed longer ago has been through the publisher (history item written, marker claimed) or its record
# was handed to the on-failure destination. Any less, and a lagging stream's unrecorded (but replaced)
# version would lose its blob before its history item names it.
SWEEP_LAG_SECONDS = 24 * 3600
MARKER_TTL_SECONDS = 7 * 24 * 3600
_BATCH_ATTEMPTS = 8


def chunk_keys(ref: BlobRef) -> list[dict[str, Any]]:
    """The DynamoDB keys of the blob's chunks, in order."""
    return [
        {"pk": {"S": f"chunk#{ref.write_id}#{index:04d}"}, "sk": {"S": CHUNK_SORT_KEY}} for index in range(ref.chunks)
    ]


def _marker(key: str, ref: BlobRef, now: datetime) -> dict[str, Any]:
    created = int(now.timestamp())
    return {
        "pk": {"S": key},
        "sk": {"S": MARKER_PREFIX + ref.write_id},
        "chunks": {"N": str(ref.chunks)},
        "sha256": {"S": ref.sha256},
        "created_epoch": {"N": str(created)},
        "ttl": {"N": str(created + MARKER_TTL_SECONDS)},
    }


class BlobStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def put(self, key: str, write_id: str, value: StoredValue, now: datetime) -> BlobRef:
        """Write the marker and the chunks (before the state item that will refer to them)."""
        data = value.data
        pieces = [data[start : start + CHUNK_BYTES] for start in range(0, len(data), CHUNK_BYTES)]
        ref = BlobRef(
            write_id=write_id,
            chunks=len(pieces),
            sha256=hashlib.sha256(data).hexdigest(),
            encoding=value.encoding,
            size=value.size,
        )
        requests = [{"PutRequest": {"Item": _marker(key, ref, now)}}] + [
            {"PutRequest": {"Item": {**chunk_key, "owner": {"S": key}, "data": {"B": piece}}}}
            for chunk_key, piece in zip(chunk_keys(ref), pieces, strict=True)
        ]
        self._batch_write(requests)
        return ref

    def mark_unclaimed(self, key: str, ref: BlobRef, now: datetime) -> None:
        """Give an existing blob of `key` its marker again, dated `now`: `collect` then removes it once it is
        older than the grace and neither the state item nor a history item names it. Re-encryption hands the
        blob it moved every referrer off to the collector this way, rather than deleting it itself: a history
        item naming it may still be on its way from the stream."""
        self._batch_write([{"PutRequest": {"Item": _marker(key, ref, now)}}])

    def load(self, ref: BlobRef) -> StoredValue | None:
        """The blob's value, or None if a chunk is gone (the blob was replaced and collected)."""
        keys = chunk_keys(ref)
        found: dict[str, bytes] = {}
        pending: dict[str, Any] = {self._table: {"Keys": keys, "ConsistentRead": True}}
        for _ in range(_BATCH_ATTEMPTS):
            response = self._client.batch_get_item(RequestItems=pending)
            for item in response.get("Responses", {}).get(self._table, []):
                found[item["pk"]["S"]] = bytes(item["data"]["B"])
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                break
            time.sleep(0.01)
        if len(found) != ref.chunks:
            return None
        data = b"".join(found[key["pk"]["S"]] for key in keys)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise CorruptStoredValue(f"blob {ref.write_id} does not match its checksum")
        return StoredValue(ref.encoding, data, ref.size)

    def delete(self, key: str, refs: Iterable[BlobRef]) -> None:
        """Remove blobs: their chunks, then their markers."""
        requests: list[dict[str, Any]] = []
        for ref in refs:
            requests += [{"DeleteRequest": {"Key": chunk}} for chunk in chunk_keys(ref)]
            requests.append({"DeleteRequest": {"Key": {"pk": {"S": key}, "sk": {"S": MARKER_PREFIX + ref.write_id}}}})
        self._batch_write(requests)

    def collect(self, key: str, *, as_of: datetime) -> list[str]:
        """Remove the key's unclaimed blobs whose marker is more than WRITE_GRACE_SECONDS older than `as_of`
        and that neither the state item nor a retained history item names; returns their write ids.

        `as_of` must be a time by which every write of the key that landed has been claimed (the stream
        record being processed, or the sweep's lagging time), so that an old marker can only be a write
        that died. The current state is read here, consistently: a caller's view of it may be stale."""
        cutoff = int(as_of.timestamp()) - WRITE_GRACE_SECONDS
        stale: list[tuple[str, int]] = []
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :key AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":key": {"S": key}, ":prefix": {"S": MARKER_PREFIX}},
            "ConsistentRead": True,
        }
        for page in self._client.get_paginator("query").paginate(**request):
            for item in page.get("Items", []):
                write_id = item["sk"]["S"][len(MARKER_PREFIX) :]
                if int(item["created_epoch"]["N"]) <= cutoff:
                    stale.append((write_id, int(item["chunks"]["N"])))
        if stale:
            # Read after the markers: a write that lands after these reads has a marker younger than the cutoff.
            named = self._state_blob_ids(key) | self._history_blob_ids(key)
            stale = [(write_id, chunks) for write_id, chunks in stale if write_id not in named]
        self.delete(key, [BlobRef(write_id, chunks, "") for write_id, chunks in stale])
        return [write_id for write_id, _ in stale]

    def _state_blob_ids(self, key: str) -> set[str]:
        """The blob the key's state item refers to, if any (strongly consistent)."""
        state = self._client.get_item(
            TableName=self._table,
            Key={"pk": {"S": key}, "sk": {"S": "state"}},
            ConsistentRead=True,
            ProjectionExpression="blob_id",
        ).get("Item", {})
        return {state["blob_id"]["S"]} if "blob_id" in state else set()

    def _history_blob_ids(self, key: str) -> set[str]:
        """The blobs the key's retained history items refer to (history.py: sk = v#<version>)."""
        named: set[str] = set()
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :key AND begins_with(sk, :prefix)",
            "FilterExpression": "attribute_exists(#blob_id)",
            "ExpressionAttributeNames": {"#blob_id": "blob_id"},
            "ExpressionAttributeValues": {":key": {"S": key}, ":prefix": {"S": "v#"}},
            "ProjectionExpression": "#blob_id",
            "ConsistentRead": True,
        }
        for page in self._client.get_paginator("query").paginate(**request):
            named.update(item["blob_id"]["S"] for item in page.get("Items", []))
        return named

    def sweep(self, now: datetime) -> list[str]:
        """The backstop for blobs the stream did not collect (a write that died between its chunks and its
        state item, on a key never written again): every key with a marker is collected as of
        SWEEP_LAG_SECONDS before `now`. A Scan reads the whole table, so this runs rarely (`make
        sweep-blobs`, or on a schedule)."""
        as_of = now - timedelta(seconds=SWEEP_LAG_SECONDS)
        owners: set[str] = set()
        request: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":prefix": {"S": MARKER_PREFIX}},
            "ProjectionExpression": "pk",
        }
        for page in self._client.get_paginator("scan").paginate(**request):
            owners.update(item["pk"]["S"] for item in page.get("Items", []))
        collected: list[str] = []
        for key in sorted(owners):
            collected += self.collect(key, as_of=as_of)
        return collected

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        write_all(self._client, self._table, requests)
