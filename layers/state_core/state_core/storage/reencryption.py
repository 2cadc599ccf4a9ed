"""Re-encryption of every sealed value under a new KMS key, online: an operator's job (`make reencrypt`,
scripts/reencrypt.py), never the request path. After a key is suspected compromised, or to move to another key;
KMS's own yearly rotation needs none of this (old key material stays usable).

It Scans the table for sealed values whose data key is not under the new key, opens each and seals it again under
the new key, bound to what it was bound to, and writes it back conditionally, so a concurrent write always wins:
it is already sealed under whatever key its writer has (the new key is deployed first, so new writes use it), and
the job skips the item it replaced.

- **Inline values** (state and history items): an UpdateItem that holds only while the item still holds the
  ciphertext the Scan read (and, for a state item, the same version and write id).
- **Large values** (blobs, blobs.py): chunks are immutable, so the value goes to NEW chunks under a new blob id
  (with its marker, as a write's blob has), sealed under the new key and still bound to the key and the
  version's write id (a blob's id is no part of what its value is bound to). Then every item naming the old
  blob, the state item and its version's history item (read consistently), is switched to the new one by an UpdateItem
  that holds only while the item still names the old blob and the same write id (the state item: and the same
  version). If none switches, the new blob is nobody's and is deleted (its marker lets the collector take it,
  should that fail or the job die first). The old blob is given back its marker: the stream's collection (or
  the sweep) removes it once it is past the write grace and nothing names it, as it removes a dead write's
  blob. The job never deletes it itself: a history item naming it may still be on its way from the stream, or
  be written again by a retried batch. Every switch happens within half the write grace of the new chunks, so
  the collector never takes a blob the job is about to name. A history item whose state item already names a
  blob of the same write under the new key (an earlier run switched only the state item) takes that blob, in
  one transaction with a check that the state item still names it: one blob a version, as the lifecycle
  expects.
- **Change proposals** (approvals.py, sealed bound to the proposal): the value and patch are sealed again and
  written back only while the proposal keeps the status and the ciphertext read, so an approval's apply or a
  decision meanwhile wins (it does not depend on the ciphertext: the applied value is the same either way).

Versions do not change, so the stream consumers take the records for no change of state (stream/events.py,
`new_state_image`): no event, no history, no blob released by the stream.

Resumable: after each Scan page is done, the page's `LastEvaluatedKey` is handed to `checkpoint`; a run started
with it goes on from there (a page done twice costs reads, and for a blob a run died in the middle of, one more
blob for the collector). Rate-limited: at most `rate` items a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from state_core import failpoints
from state_core.domain.codec import SEALED_PREFIX, StoredValue
from state_core.domain.errors import CorruptStoredValue, DecryptionFailed
from state_core.domain.ports import ValueCipher
from state_core.storage.approvals import is_proposal_sort_key, sealing_id
from state_core.storage.blobs import WRITE_GRACE_SECONDS, BlobStore, chunk_keys
from state_core.storage.history import history_sort_key
from state_core.storage.state import STATE_SORT_KEY, new_write_id, value_of_item

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_dynamodb.client import DynamoDBClient

    from state_core.domain.records import BlobRef


class RekeyingCipher(ValueCipher, Protocol):
    """security.envelope.KmsEnvelope, sealing under the new key: it also tells which KMS key a value is under."""

    def key_of(self, value: StoredValue) -> str: ...


# The collector may take an unclaimed blob once its marker is WRITE_GRACE_SECONDS old: every switch to a new
# blob is made well within that, or not at all (the item stays on the old blob, for the next run).
SWITCH_SECONDS = WRITE_GRACE_SECONDS / 2


@dataclass(slots=True)
class Progress:
    """What a run has done so far, by kind and outcome, and where its Scan goes on from (None: done)."""

    pages: int = 0
    sealed_seen: int = 0
    # Inline values (state and history items).
    reencrypted: int = 0
    already_new: int = 0
    raced: int = 0
    # Sealed values that do not open (tampered, or under a key the job may not use): left as they are, and
    # counted, so one bad item does not stop the job; the read path reports each one (DecryptionFailures).
    unreadable: int = 0
    # Large values: blobs re-sealed under a new id, the items switched to them, blobs whose every referrer
    # moved on meanwhile (or that were collected), blobs that do not open or fail their checksum.
    blobs_reencrypted: int = 0
    blob_items_switched: int = 0
    blobs_raced: int = 0
    blobs_unreadable: int = 0
    # Proposals' sealed values and patches.
    proposals_reencrypted: int = 0
    proposals_raced: int = 0
    proposals_unreadable: int = 0
    resume_from: dict[str, Any] | None = None
    done: bool = False

    def left(self) -> int:
        """Sealed items this run could not move to the new key (a complete run with 0 left is the signal that
        the old key may go; see docs/security.md)."""
        counts = (self.raced, self.unreadable, self.blobs_raced, self.blobs_unreadable, self.proposals_raced)
        return sum(counts) + self.proposals_unreadable


def reencrypt(  # noqa: PLR0913  one knob each, keyword-only
    client: DynamoDBClient,
    table: str,
    cipher: RekeyingCipher,
    *,
    new_key_arn: str,
    start_from: dict[str, Any] | None = None,
    page_size: int = 100,
    rate: float = 100.0,
    evict: Callable[[str], None] | None = None,
    checkpoint: Callable[[Progress], None] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Progress:
    """Re-seal every sealed value (inline, blob or proposal) not under `new_key_arn` (`cipher` seals under it)."""
    progress = Progress(resume_from=start_from)
    job = _Job(client, table, cipher, new_key_arn, BlobStore(client, table), clock)
    request: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": "begins_with(#encoding, :sealed) OR begins_with(#patch_encoding, :sealed)",
        # What re-sealing needs, never a blob chunk's bytes (chunks carry no encoding and are filtered out anyway).
        "ProjectionExpression": (
            "pk, sk, #encoding, #value, value_size, write_id, version, blob_id, blob_chunks, blob_sha256,"
            " proposal_id, #status, #patch, #patch_encoding, patch_size"
        ),
        "ExpressionAttributeNames": {
            "#encoding": "encoding",
            "#value": "value",
            "#status": "status",
            "#patch": "patch",
            "#patch_encoding": "patch_encoding",
        },
        "ExpressionAttributeValues": {":sealed": {"S": SEALED_PREFIX}},
        "Limit": page_size,
    }
    started, sent = time.monotonic(), 0
    while True:
        if progress.resume_from is not None:
            request["ExclusiveStartKey"] = progress.resume_from
        page = client.scan(**request)
        for item in page.get("Items", []):
            progress.sealed_seen += 1
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sent += 1
            if is_proposal_sort_key(item["sk"]["S"]):
                outcome = job.proposal(item)
                progress.proposals_reencrypted += outcome == "done"
                progress.proposals_raced += outcome == "raced"
                progress.proposals_unreadable += outcome == "unreadable"
                progress.already_new += outcome == "new"
            elif "value" not in item:
                outcome, switched = job.blob(item)
                progress.blobs_reencrypted += outcome == "done"
                progress.blob_items_switched += switched
                progress.blobs_raced += outcome == "raced"
                progress.blobs_unreadable += outcome == "unreadable"
                progress.already_new += outcome == "new"
                if switched and evict is not None:
                    evict(item["pk"]["S"])
            else:
                outcome = job.value(item)
                progress.reencrypted += outcome == "done"
                progress.already_new += outcome == "new"
                progress.raced += outcome == "raced"
                progress.unreadable += outcome == "unreadable"
                if outcome == "done" and evict is not None and item["sk"]["S"] == STATE_SORT_KEY:
                    evict(item["pk"]["S"])
        # A later page is read after these moves, so it names the new blobs: only this page's items can be stale.
        job.moved.clear()
        progress.pages += 1
        progress.resume_from = page.get("LastEvaluatedKey")
        progress.done = progress.resume_from is None
        if checkpoint is not None:
            checkpoint(progress)
        if progress.done:
            return progress


@dataclass(slots=True)
class _Job:
    client: DynamoDBClient
    table: str
    cipher: RekeyingCipher
    new_key_arn: str
    blobs: BlobStore
    clock: Callable[[], datetime]
    # Blobs moved while doing the current page (key, old blob id): the page, read before, still names them.
    moved: set[tuple[str, str]] = field(default_factory=set)

    def value(self, item: dict[str, Any]) -> str:
        """An inline value's outcome: "done", "new", "raced" or "unreadable"."""
        key, write_id = item["pk"]["S"], item.get("write_id", {}).get("S")
        old = StoredValue(item["encoding"]["S"], bytes(item["value"]["B"]), int(item["value_size"]["N"]))
        try:
            if self.cipher.key_of(old) == self.new_key_arn:
                return "new"
            if write_id is None:
                return "unreadable"  # nothing binds it: the read path cannot open it either
            fresh = self.cipher.seal(key, write_id, self.cipher.open(key, write_id, old))
        except DecryptionFailed:
            return "unreadable"
        if failpoints.ENABLED:
            failpoints.hit("reencrypt_before_switch", kind="value", key=key, sk=item["sk"]["S"])
        condition = "#value = :old AND #write_id = :write_id"
        names = {"#value": "value", "#encoding": "encoding", "#write_id": "write_id"}
        values: dict[str, Any] = {
            ":old": {"B": old.data},
            ":new": {"B": fresh.data},
            ":write_id": {"S": write_id},
            ":encoding": {"S": fresh.encoding},
        }
        if "version" in item:
            condition += " AND #version = :version"
            names["#version"] = "version"
            values[":version"] = {"N": item["version"]["N"]}
        return self._update(
            {"pk": item["pk"], "sk": item["sk"]},
            update="SET #value = :new, #encoding = :encoding",
            condition=condition,
            names=names,
            values=values,
        )

    def blob(self, item: dict[str, Any]) -> tuple[str, int]:
        """(outcome, items switched) for the large value `item` names; see the module docstring."""
        key, write_id = item["pk"]["S"], item.get("write_id", {}).get("S")
        _, ref = value_of_item(item)
        if ref is None or write_id is None or "version" not in item:
            return "unreadable", 0  # nothing binds it: the read path cannot open it either
        if (key, ref.write_id) in self.moved:
            return "new", 0
        try:
            return self._move(key, write_id, ref, item["version"]["N"])
        except (DecryptionFailed, CorruptStoredValue):
            return "unreadable", 0

    def _move(self, key: str, write_id: str, ref: BlobRef, version: str) -> tuple[str, int]:
        # The envelope's header (so its data key) is in the first chunk: a blob already under the new key (a
        # run going on from its checkpoint) costs one small read, not the whole value.
        first = self.client.get_item(TableName=self.table, Key=chunk_keys(ref)[0], ConsistentRead=True).get("Item")
        if first is None:
            return "raced", 0  # collected: its items moved on since the Scan
        if self.cipher.key_of(StoredValue(ref.encoding, bytes(first["data"]["B"]), ref.size)) == self.new_key_arn:
            return "new", 0
        referrers, sibling = self._referrers(key, ref.write_id, write_id, version)
        if sibling is not None and [state_version for _, state_version in referrers] == [None]:
            adopted = self._adopt(key, write_id, ref, sibling, referrers[0][0])
            if adopted is not None:
                return adopted
        old = self.blobs.load(ref) if referrers else None
        if old is None:
            return "raced", 0
        fresh = self.cipher.seal(key, write_id, self.cipher.open(key, write_id, old))
        written = time.monotonic()
        new_ref = self.blobs.put(key, new_write_id(), fresh, self.clock())
        if failpoints.ENABLED:
            failpoints.hit("reencrypt_before_switch", kind="blob", key=key, blob=new_ref.write_id)
        switched = 0
        for sort_key, state_version in referrers:
            if time.monotonic() - written > SWITCH_SECONDS:
                break  # the collector could take the new blob from under this switch: left for the next run
            request = self._switch_request(
                key, sort_key, version=state_version, write_id=write_id, old=ref, new=new_ref
            )
            switched += self._send(request) == "done"
        if not switched:
            # Refused everywhere, so the new blob is nobody's; should the delete fail, its marker lets the
            # collector take it.
            self.blobs.delete(key, [new_ref])
            return "raced", 0
        self.moved.add((key, ref.write_id))
        self.blobs.mark_unclaimed(key, ref, self.clock())
        return "done", switched

    def _referrers(
        self, key: str, blob_id: str, write_id: str, version: str
    ) -> tuple[list[tuple[str, str | None]], BlobRef | None]:
        """(sort key, the state item's version) of the items of `key` naming the blob of the write `write_id`,
        read strongly consistently; and the other blob the state item names for that same write, if it does.

        Only that version's items can name the blob: the state item while it is that version, and the version's
        history item (history.py); read by their keys, never a Query over the key's history. The state item
        names another blob of the same write when an earlier run switched it but not the history item (it
        died, or the publisher wrote the history item again from the stream afterwards)."""
        found: list[tuple[str, str | None]] = []
        sibling = None
        for sort_key in (STATE_SORT_KEY, history_sort_key(int(version))):
            named = self.client.get_item(
                TableName=self.table,
                Key={"pk": {"S": key}, "sk": {"S": sort_key}},
                ConsistentRead=True,
                ProjectionExpression="blob_id, blob_chunks, blob_sha256, #encoding, value_size, write_id, version",
                ExpressionAttributeNames={"#encoding": "encoding"},
            ).get("Item", {})
            if "blob_id" not in named or named.get("write_id", {}).get("S") != write_id:
                continue
            if named["blob_id"]["S"] == blob_id:
                found.append((sort_key, named["version"]["N"] if sort_key == STATE_SORT_KEY else None))
            elif sort_key == STATE_SORT_KEY:
                sibling = value_of_item(named)[1]
        return found, sibling

    def _adopt(self, key: str, write_id: str, old: BlobRef, sibling: BlobRef, sort_key: str) -> tuple[str, int] | None:
        """Switch the history item from `old` to the blob the state item already names for the same write, when
        that one is under the new key and opens: one blob a version, as the blob lifecycle expects (it
        releases the blob the state moved off only when the version's history item is gone). None: it is not
        such a blob, make a new one."""
        value = self.blobs.load(sibling)
        if value is None or self.cipher.key_of(value) != self.new_key_arn:
            return None
        self.cipher.open(key, write_id, value)
        if failpoints.ENABLED:
            failpoints.hit("reencrypt_before_switch", kind="blob", key=key, blob=sibling.write_id)
        names = {"#blob_id": "blob_id", "#write_id": "write_id"}
        # The state item must still name it as the history item takes it: otherwise the collection could find it
        # named by neither in between.
        still_named = {
            "TableName": self.table,
            "Key": {"pk": {"S": key}, "sk": {"S": STATE_SORT_KEY}},
            "ConditionExpression": "#blob_id = :blob AND #write_id = :write_id",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":blob": {"S": sibling.write_id}, ":write_id": {"S": write_id}},
        }
        switch = self._switch_request(key, sort_key, version=None, write_id=write_id, old=old, new=sibling)
        together: list[Any] = [{"ConditionCheck": still_named}, {"Update": switch}]
        try:
            self.client.transact_write_items(TransactItems=together)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                return "raced", 0
            raise
        self.moved.add((key, old.write_id))
        self.blobs.mark_unclaimed(key, old, self.clock())
        return "done", 1

    def _switch_request(
        self, key: str, sort_key: str, *, version: str | None, write_id: str, old: BlobRef, new: BlobRef
    ) -> dict[str, Any]:
        """The UpdateItem moving an item from blob `old` to `new`, only while it names `old` for the same write
        (and, given `version`, is still that version)."""
        condition = "#blob_id = :old AND #write_id = :write_id"
        names = {
            "#blob_id": "blob_id",
            "#blob_chunks": "blob_chunks",
            "#blob_sha256": "blob_sha256",
            "#encoding": "encoding",
            "#write_id": "write_id",
        }
        values: dict[str, Any] = {
            ":old": {"S": old.write_id},
            ":new": {"S": new.write_id},
            ":chunks": {"N": str(new.chunks)},
            ":sha256": {"S": new.sha256},
            ":encoding": {"S": new.encoding},
            ":write_id": {"S": write_id},
        }
        if version is not None:
            condition += " AND #version = :version"
            names["#version"] = "version"
            values[":version"] = {"N": version}
        return {
            "TableName": self.table,
            "Key": {"pk": {"S": key}, "sk": {"S": sort_key}},
            "UpdateExpression": "SET #blob_id = :new, #blob_chunks = :chunks, #blob_sha256 = :sha256,"
            " #encoding = :encoding",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def proposal(self, item: dict[str, Any]) -> str:
        """A proposal's outcome: its sealed value and patch, re-sealed together."""
        key, bound = item["pk"]["S"], sealing_id(item["proposal_id"]["S"])
        parts = [
            (data, encoding, bound + suffix)
            for data, encoding, suffix in (("value", "encoding", ""), ("patch", "patch_encoding", ":patch"))
            if data in item and item.get(encoding, {}).get("S", "").startswith(SEALED_PREFIX)
        ]
        sizes = {"value": "value_size", "patch": "patch_size"}
        old = {
            data: StoredValue(item[encoding]["S"], bytes(item[data]["B"]), int(item[sizes[data]]["N"]))
            for data, encoding, _ in parts
        }
        try:
            if all(self.cipher.key_of(value) == self.new_key_arn for value in old.values()):
                return "new"
            fresh = {
                data: self.cipher.seal(key, bound_to, self.cipher.open(key, bound_to, old[data]))
                for data, _, bound_to in parts
            }
        except DecryptionFailed:
            return "unreadable"
        if failpoints.ENABLED:
            failpoints.hit("reencrypt_before_switch", kind="proposal", key=key, sk=item["sk"]["S"])
        sets, conditions = [], ["#status = :status"]
        names, values = {"#status": "status"}, {":status": item["status"]}
        for data, encoding, _ in parts:
            names |= {f"#{data}": data, f"#{encoding}": encoding}
            values |= {
                f":old_{data}": {"B": old[data].data},
                f":new_{data}": {"B": fresh[data].data},
                f":{encoding}": {"S": fresh[data].encoding},
            }
            sets += [f"#{data} = :new_{data}", f"#{encoding} = :{encoding}"]
            conditions.append(f"#{data} = :old_{data}")
        # Only while it keeps the status and ciphertext read: an approval's apply or a decision meanwhile wins.
        return self._update(
            {"pk": item["pk"], "sk": item["sk"]},
            update="SET " + ", ".join(sets),
            condition=" AND ".join(conditions),
            names=names,
            values=values,
        )

    def _update(
        self, key: dict[str, Any], *, update: str, condition: str, names: dict[str, str], values: dict[str, Any]
    ) -> str:
        return self._send(
            {
                "TableName": self.table,
                "Key": key,
                "UpdateExpression": update,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        )

    def _send(self, request: dict[str, Any]) -> str:
        """ "done", or "raced" when the condition did not hold (a newer write replaced it, sealed by its writer)."""
        try:
            self.client.update_item(**request)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return "raced"
            raise
        return "done"
