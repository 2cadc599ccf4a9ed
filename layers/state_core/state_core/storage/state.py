"""DynamoDB adapter: the current state of a key is one item (pk = key, sk = "state"), written only with
conditional UpdateItem calls. Other item kinds (history, value chunks, blob and expiry markers) sit beside it under
other sort or partition keys.

Item attributes: version (N), value (B) or blob_id / blob_chunks / blob_sha256 (a large value's blob, see
blobs.py), encoding (S), value_size (N), created_at / updated_at (S, RFC 3339), updated_by (S), expires_at
(N, epoch seconds), incarnation (S: write id of the write that created this life of the key), write_id (S),
deleted (BOOL, tombstones only), list_shard (S, live items only: the listing index's partition, see
storage/listing.py), transaction_id (S, only on a version a transaction wrote: storage/transactions.py),
proposal_id and approved_by (S and SS, only on a version an approved proposal wrote: storage/approvals.py). A
tombstone keeps `version`, so a re-created key goes on counting, and drops value, created_at, incarnation,
expires_at and list_shard.
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
)

from state_core.deadline import OutOfTime
from state_core.domain.codec import StoredValue
from state_core.domain.errors import OutcomeUnknown, PayloadTooLarge, ServiceUnavailable
from state_core.domain.keys import SYSTEM_ACTOR_PREFIX
from state_core.domain.listing import LIST_SHARD_ATTRIBUTE, list_shard
from state_core.domain.records import BlobRef, SchemaStamp, StateRecord, rfc3339
from state_core.domain.writes import ConditionFailed, Precondition, WriteResult
from state_core.storage.batches import KEYS_PER_READ, READ_ATTEMPTS, backoff, read_all
from state_core.storage.blobs import BlobStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from state_core.domain.ports import ValueCipher

STATE_SORT_KEY = "state"
# Compressed values up to this size stay inside the state item; larger ones become blobs.
INLINE_VALUE_BYTES = 350_000
# A reader that finds its blob collected (replaced meanwhile) reads the state item again this often.
_READ_ATTEMPTS = 3
# TransactGetItems takes at most 100 keys a call, as BatchGetItem does.
MAX_KEYS_PER_READ = KEYS_PER_READ
# Cancelled snapshot reads (a write to one of the keys was in flight) are tried again as often as a batch
# read's unprocessed keys (batches.py), with the same jittered backoff, before the read answers 503.
_BATCH_READ_ATTEMPTS = READ_ATTEMPTS

# Errors that mean "DynamoDB is slow or unavailable right now" once botocore's own retries are spent.
_UNAVAILABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)

# A sent conditional write that gets no clear answer may have been applied, and another write may have come
# after it; a retry would then apply it a second time (over the newer write) or fail its condition (412 for a
# write that landed). So a state write is retried only after a failure that proves it was not applied:
# - never sent: no connection was made, or the time budget refused the attempt;
# - refused: any 4xx answer (throttled, condition failed, invalid), except the timeout codes below.
# Anything else (read timeout, connection dropped after sending, 5xx, a 2xx whose checksum botocore rejects)
# leaves the outcome unknown.
_NEVER_SENT = (ConnectTimeoutError, EndpointConnectionError, OutOfTime)
_TIMEOUT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"})
_RETRY_HOOK_ID = "state-core-retry-only-unapplied-writes"

_NAMES = {
    "#pk": "pk",
    "#version": "version",
    "#value": "value",
    "#encoding": "encoding",
    "#value_size": "value_size",
    "#created_at": "created_at",
    "#updated_at": "updated_at",
    "#updated_by": "updated_by",
    "#expires_at": "expires_at",
    "#incarnation": "incarnation",
    "#write_id": "write_id",
    "#deleted": "deleted",
    "#expired": "expired",
    "#blob_id": "blob_id",
    "#blob_chunks": "blob_chunks",
    "#blob_sha256": "blob_sha256",
    "#list_shard": LIST_SHARD_ATTRIBUTE,
    "#transaction_id": "transaction_id",
    "#schema_name": "schema_name",
    "#schema_version": "schema_version",
    "#proposal_id": "proposal_id",
    "#approved_by": "approved_by",
}

# Named condition parts. Comparisons with a missing attribute are false in DynamoDB, so an item
# without expires_at is never "expired".
_NOT_EXPIRED = "(attribute_not_exists(#expires_at) OR #expires_at > :now_epoch)"
_LIVE = f"(attribute_exists(#pk) AND attribute_not_exists(#deleted) AND {_NOT_EXPIRED})"
# An expired item that is not yet a tombstone is not "gone" for a write: the write first turns it into an
# `expired` tombstone (taking a version, since expiry is a change), then writes over that.
_GONE = "(attribute_not_exists(#pk) OR attribute_exists(#deleted))"
# Expiry: the item must still be the version that expired, live, and past its expiry, so a write that
# landed meanwhile is never expired.
_EXPIRABLE = (
    "#version = :expected_version AND attribute_not_exists(#deleted) AND #expires_at = :expires_at"
    " AND #expires_at <= :now_epoch"
)


# Who an expiry is attributed to (the event's and the history's actor).
EXPIRY_ACTOR = f"{SYSTEM_ACTOR_PREFIX}ttl"
_HEAD_NAMES = {
    f"#{name}": name
    for name in (
        "pk",
        "version",
        "deleted",
        "expired",
        "created_at",
        "updated_at",
        "updated_by",
        "expires_at",
        "value_size",
        "incarnation",
        "write_id",
        "encoding",
        "blob_id",
        "blob_chunks",
        "blob_sha256",
        "schema_name",
        "schema_version",
        "transaction_id",
        "proposal_id",
        "approved_by",
    )
}


def new_write_id() -> str:
    return secrets.token_hex(12)


def _epoch(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


class StateStore:
    """Reads and conditionally writes state items. Translates DynamoDB errors into domain errors."""

    def __init__(self, client: DynamoDBClient, table_name: str, *, cipher: ValueCipher | None = None) -> None:
        self._client = client
        self._table = table_name
        self.blobs = BlobStore(client, table_name)
        # Seals a sensitive key's value before it leaves the writer: the item, its blob's chunks, the history
        # the stream copies from the item and the cache's write-through then all carry ciphertext.
        self.cipher = cipher
        retry_only_unapplied_writes(client)

    def sealed(self, key: str, write_id: str, value: StoredValue) -> StoredValue:
        """`value` as the write `write_id` of `key` stores it: sealed if the key is sensitive."""
        if self.cipher is None or not self.cipher.sensitive(key):
            return value
        return self.cipher.seal(key, write_id, value)

    def get(self, key: str) -> StateRecord | None:
        """Strongly consistent read of the key's item (tombstones included), with its value loaded."""
        for _ in range(_READ_ATTEMPTS):
            with dynamodb_errors():
                item = self._client.get_item(TableName=self._table, Key=self._item_key(key), ConsistentRead=True).get(
                    "Item"
                )
            if item is None:
                return None
            record = self._loaded(record_of_item(item))
            if record is not None:
                return record
        raise ServiceUnavailable("a large value could not be read consistently; retry shortly")

    def get_many(self, keys: list[str]) -> dict[str, StateRecord]:
        """Strongly consistent reads of the keys' items (tombstones included), values loaded; absent keys
        are left out. Each item is read after the call began, as `get` reads it: BatchGetItem with
        ConsistentRead, its UnprocessedKeys asked again."""
        with dynamodb_errors():
            items = read_all(self._client, self._table, [self._item_key(key) for key in keys])
        found = {record.key: record for record in map(record_of_item, items)}
        for key, record in list(found.items()):
            loaded = self._loaded(record)
            # Its blob was collected under us (a newer version replaced it): that key alone is read again.
            reread = loaded if loaded is not None else self.get(key)
            if reread is None:
                del found[key]
            else:
                found[key] = reread
        return found

    def snapshot(self, keys: list[str]) -> dict[str, StateRecord]:
        """The keys' items as of one point in time (TransactGetItems), values loaded; absent keys left out.

        A large value is loaded after the transaction: its blob is named by the write id the item held at
        that point and never changes, so it is that point's value (its checksum is verified); should it
        have been collected meanwhile (a newer version replaced it and its history left retention), the
        whole snapshot is read again. A transaction cancelled because a write to one of the keys was in
        flight is tried again with backoff, then 503."""
        if len(keys) > MAX_KEYS_PER_READ:
            raise ValueError(f"a snapshot reads at most {MAX_KEYS_PER_READ} keys")
        for _ in range(_READ_ATTEMPTS):
            records = self._transact_get(keys)
            loaded = {key: self._loaded(record) for key, record in records.items()}
            if all(record is not None for record in loaded.values()):
                return {key: record for key, record in loaded.items() if record is not None}
        raise ServiceUnavailable("the keys changed too often to be read together; retry shortly")

    def _transact_get(self, keys: list[str]) -> dict[str, StateRecord]:
        request = [{"Get": {"TableName": self._table, "Key": self._item_key(key)}} for key in keys]
        for attempt in range(_BATCH_READ_ATTEMPTS):
            if attempt:
                backoff(attempt)
            try:
                with dynamodb_errors():
                    response = self._client.transact_get_items(TransactItems=request)  # type: ignore[arg-type]
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "TransactionCanceledException":
                    continue  # a write to one of the keys was in flight (TransactionConflict), or throttled
                if code == "ValidationException":
                    # Our request is well formed: what DynamoDB refuses is the items' aggregate size.
                    raise PayloadTooLarge(
                        "the keys' stored items exceed the 4 MB a snapshot read can hold at once; ask for fewer"
                        " keys, or read them without snapshot"
                    ) from exc
                raise
            return {
                record.key: record
                for record in (record_of_item(entry["Item"]) for entry in response["Responses"] if entry.get("Item"))
            }
        raise ServiceUnavailable("the keys are being written too often to be read together; retry shortly")

    def _loaded(self, record: StateRecord) -> StateRecord | None:
        """`record` with its blob loaded; None if the blob was collected (a newer version replaced it)."""
        if record.blob is None or record.value is not None:
            return record
        with dynamodb_errors():
            value = self.blobs.load(record.blob)
        return None if value is None else replace(record, value=value)

    def write(  # noqa: PLR0913  one keyword each for what a write may carry
        self,
        key: str,
        value: StoredValue,
        *,
        actor: str,
        now: datetime,
        precondition: Precondition,
        version: int | None = None,
        expires_at: float | None = None,
        keep_expiry: bool = False,
        schema: SchemaStamp | None = None,
    ) -> WriteResult:
        """Write a new version of `key` if `precondition` holds; raise ConditionFailed otherwise, and
        OutcomeUnknown if it was sent but whether it landed cannot be told (see _update). `schema`: the
        schema name and version the value was checked against (None for an ungoverned key).

        No read happens first: the version increments server-side and the condition is the only guard.
        """
        write_id = new_write_id()
        value = self.sealed(key, write_id, value)
        blob = None
        if len(value.data) > INLINE_VALUE_BYTES:
            with dynamodb_errors():
                blob = self.blobs.put(key, write_id, value, now)
        # A write that starts a new life (create, or re-create over a tombstone or an expired item)
        # resets created_at; otherwise if_not_exists keeps it. `incarnation` tells which happened without
        # a read: it equals our write id exactly when this write started the life.
        fresh = precondition in (Precondition.GONE, Precondition.AT_VERSION)
        sets = [
            "#version = if_not_exists(#version, :zero) + :one",
            "#encoding = :encoding",
            "#value_size = :value_size",
            "#updated_at = :now",
            "#updated_by = :actor",
            "#write_id = :write_id",
            "#created_at = :now" if fresh else "#created_at = if_not_exists(#created_at, :now)",
            "#incarnation = :write_id" if fresh else "#incarnation = if_not_exists(#incarnation, :write_id)",
            # Live items only carry it: the listing index holds exactly the live keys (storage/listing.py).
            "#list_shard = :list_shard",
        ]
        # A version written alone carries no transaction id: the previous version's must not stick to it.
        removes = ["#deleted", "#expired", "#transaction_id", "#proposal_id", "#approved_by"]
        values: dict[str, Any] = {
            ":zero": {"N": "0"},
            ":one": {"N": "1"},
            ":encoding": {"S": value.encoding},
            ":value_size": {"N": str(value.size)},
            ":now": {"S": rfc3339(now)},
            ":actor": {"S": actor},
            ":write_id": {"S": write_id},
            ":list_shard": {"S": list_shard(key)},
        }
        if blob is None:
            sets.append("#value = :value")
            values[":value"] = {"B": value.data}
            removes += ["#blob_id", "#blob_chunks", "#blob_sha256"]
        else:
            sets += ["#blob_id = :blob_id", "#blob_chunks = :blob_chunks", "#blob_sha256 = :blob_sha256"]
            values.update(
                {
                    ":blob_id": {"S": blob.write_id},
                    ":blob_chunks": {"N": str(blob.chunks)},
                    ":blob_sha256": {"S": blob.sha256},
                }
            )
            removes.append("#value")
        if schema is None:
            removes += ["#schema_name", "#schema_version"]
        else:
            sets += ["#schema_name = :schema_name", "#schema_version = :schema_version"]
            values.update({":schema_name": {"S": schema.name}, ":schema_version": {"N": str(schema.version)}})
        if not keep_expiry:
            if expires_at is None:
                removes.append("#expires_at")
            else:
                sets.append("#expires_at = :expires_at")
                values[":expires_at"] = {"N": f"{expires_at:.3f}"}
        condition = self._condition(precondition, version, now, values)
        try:
            attributes = self._update(
                key,
                update=f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
                condition=condition,
                values=values,
            )
        except ConditionFailed:
            # Refused, so the blob is nobody's. Not after OutcomeUnknown: the write may have landed, and then
            # its version refers to the blob; if it did not, the blob's marker lets the collector take it.
            if blob is not None:
                self._discard(key, blob)
            raise
        record = replace(record_of_item({**self._item_key(key), **attributes}), value=value)
        return WriteResult(record=record, created=attributes["incarnation"]["S"] == write_id)

    def _discard(self, key: str, blob: BlobRef) -> None:
        """Remove the blob of a write that lost its condition; if this fails too, the sweep collects it."""
        try:
            with dynamodb_errors():
                self.blobs.delete(key, [blob])
        except (ServiceUnavailable, ClientError):
            pass

    def delete(self, key: str, *, actor: str, now: datetime, version: int | None) -> StateRecord:
        """Replace a live item by a tombstone with the next version; raise ConditionFailed if it is not
        live (or not at `version`, when given)."""
        values: dict[str, Any] = {
            ":one": {"N": "1"},
            ":true": {"BOOL": True},
            ":now": {"S": rfc3339(now)},
            ":actor": {"S": actor},
            ":write_id": {"S": new_write_id()},
        }
        precondition = Precondition.LIVE if version is None else Precondition.LIVE_AT_VERSION
        condition = self._condition(precondition, version, now, values)
        attributes = self._update(
            key,
            update=(
                "SET #version = #version + :one, #deleted = :true, #updated_at = :now, #updated_by = :actor,"
                " #write_id = :write_id"
                " REMOVE #value, #encoding, #value_size, #created_at, #incarnation, #expires_at,"
                " #blob_id, #blob_chunks, #blob_sha256, #list_shard, #transaction_id, #schema_name, #schema_version,"
                " #proposal_id, #approved_by"
            ),
            condition=condition,
            values=values,
        )
        return record_of_item({**self._item_key(key), **attributes})

    def expire(self, key: str, *, version: int, expires_at: float, now: datetime) -> StateRecord:
        """Turn the expired item at `version` into an `expired` tombstone with the next version; raise
        ConditionFailed if it is no longer that version, not live, or not yet expired.

        Timeline it guards: the marker of version 3 is removed (TTL) while a PUT that found version 3
        expired has already written the expiry as 4 and itself as 5: the version condition makes the
        marker's late expiry a no-op, so there is exactly one `expired` change.
        """
        moment = datetime.fromtimestamp(expires_at, UTC)
        values: dict[str, Any] = {
            ":one": {"N": "1"},
            ":true": {"BOOL": True},
            ":expired_at": {"S": rfc3339(moment)},
            ":actor": {"S": EXPIRY_ACTOR},
            ":write_id": {"S": new_write_id()},
            ":expected_version": {"N": str(version)},
            ":expires_at": {"N": f"{expires_at:.3f}"},
            ":now_epoch": {"N": _epoch(now)},
        }
        attributes = self._update(
            key,
            update=(
                "SET #version = #version + :one, #deleted = :true, #expired = :true, #updated_at = :expired_at,"
                " #updated_by = :actor, #write_id = :write_id"
                " REMOVE #value, #encoding, #value_size, #created_at, #incarnation, #expires_at,"
                " #blob_id, #blob_chunks, #blob_sha256, #list_shard, #transaction_id, #schema_name, #schema_version,"
                " #proposal_id, #approved_by"
            ),
            condition=_EXPIRABLE,
            values=values,
        )
        return record_of_item({**self._item_key(key), **attributes})

    def head(self, key: str) -> dict[str, Any] | None:
        """The state item without its value (strongly consistent), as DynamoDB returns it."""
        return read_head(self._client, self._table, key)

    def load_blob(self, blob: BlobRef) -> StoredValue | None:
        with dynamodb_errors():
            return self.blobs.load(blob)

    @staticmethod
    def _condition(precondition: Precondition, version: int | None, now: datetime, values: dict[str, Any]) -> str:
        if precondition in (Precondition.LIVE_AT_VERSION, Precondition.AT_VERSION):
            if version is None:
                raise ValueError(f"{precondition} needs a version")
            values[":expected_version"] = {"N": str(version)}
        # DynamoDB refuses a value the expressions do not use: only the conditions with an expiry get `now`.
        if precondition not in (Precondition.AT_VERSION, Precondition.GONE):
            values[":now_epoch"] = {"N": _epoch(now)}
        match precondition:
            case Precondition.NOT_EXPIRED:
                return _NOT_EXPIRED
            case Precondition.GONE:
                return _GONE
            case Precondition.LIVE:
                return _LIVE
            case Precondition.LIVE_AT_VERSION:
                return f"{_LIVE} AND #version = :expected_version"
            case Precondition.AT_VERSION:
                return "#version = :expected_version"

    def _update(self, key: str, *, update: str, condition: str, values: dict[str, Any]) -> dict[str, Any]:
        """The conditional UpdateItem of the state item: its new attributes, ConditionFailed, or OutcomeUnknown
        when it was sent and no clear answer came back (botocore does not retry it then: see the hook)."""
        own_write_id = values[":write_id"]["S"]
        # The write id guard: a retry that finds its own write id on the item has already succeeded, and is
        # answered from the item DynamoDB returns. Retries follow only attempts that were not applied, so it
        # should never fire; it stays as a cheap net should a failure ever be misjudged as not applied.
        # (Every condition is an AND chain of parenthesized parts: DynamoDB refuses redundant parentheses.)
        condition = f"{condition} AND (attribute_not_exists(#write_id) OR #write_id <> :write_id)"
        names = {name: attr for name, attr in _NAMES.items() if name in update or name in condition}
        try:
            with dynamodb_errors():
                try:
                    return self._client.update_item(
                        TableName=self._table,
                        Key=self._item_key(key),
                        UpdateExpression=update,
                        ConditionExpression=condition,
                        ExpressionAttributeNames=names,
                        ExpressionAttributeValues=values,
                        ReturnValues="ALL_NEW",
                        # On failure DynamoDB hands back the current item, so callers need not read again.
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )["Attributes"]
                except (AnswerLost, ClientError, ConnectionError, HTTPClientError) as exc:
                    if not isinstance(exc, AnswerLost) and not may_have_applied(exc):
                        raise
                    landed = self._current_if_written_by(key, own_write_id)
                    if landed is None:
                        raise OutcomeUnknown(
                            "the write was sent but its answer was lost: it may or may not have been applied, and"
                            " may since have been replaced; read the key, or retry with If-Match (If-None-Match: *"
                            " to create)"
                        ) from exc
                    return landed
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            # The item ReturnValuesOnConditionCheckFailure asked for; botocore-stubs' error response lacks it.
            item: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            if item is not None and item.get("write_id", {}).get("S") == own_write_id:
                return item
            # A large value's blob is not loaded here: most callers need only the version.
            raise ConditionFailed(None if item is None else record_of_item(item)) from exc

    def _current_if_written_by(self, key: str, write_id: str) -> dict[str, Any] | None:
        """The state item (without its value) if the write `write_id` made it, else None: after a write whose
        answer was lost, the common case (nobody wrote since) is settled by one read. Another write id proves
        nothing (ours may have landed before it), nor does a failed read."""
        try:
            item = self.head(key)
        except (ServiceUnavailable, ClientError, BotoCoreError):
            return None
        if item is None or item.get("write_id", {}).get("S") != write_id:
            return None
        return item

    @staticmethod
    def _item_key(key: str) -> dict[str, Any]:
        return {"pk": {"S": key}, "sk": {"S": STATE_SORT_KEY}}


@contextmanager
def dynamodb_errors() -> Iterator[None]:
    """DynamoDB slow or unavailable once botocore's own retries are spent: ServiceUnavailable (503)."""
    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _UNAVAILABLE_CODES:
            raise ServiceUnavailable("the state table is busy or unavailable; retry shortly") from exc
        raise
    except AnswerLost as exc:
        # Another store's UpdateItem on the state store's client (one per container), which stops botocore
        # retrying an UpdateItem that may have been applied: for that write too the outcome is unknown.
        raise OutcomeUnknown(
            "the write was sent but its answer was lost: it may or may not have been applied; read it again"
        ) from exc
    except (ConnectionError, HTTPClientError, OutOfTime) as exc:
        # A state write whose outcome is unknown never gets here (StateStore._update: OutcomeUnknown), so for
        # a write this means not applied: never sent, or refused before an attempt the budget stopped.
        raise ServiceUnavailable("the state table did not answer in time; retry shortly") from exc


def may_have_applied(error: BaseException) -> bool:
    """Whether a failed state write may have been applied all the same (see _NEVER_SENT)."""
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
        return _answer_leaves_it_unknown(status, error.response.get("Error", {}).get("Code"))
    return isinstance(error, ConnectionError | HTTPClientError) and not isinstance(error, _NEVER_SENT)


def _answer_leaves_it_unknown(status: int, code: str | None) -> bool:
    return not 400 <= status < 500 or code in _TIMEOUT_CODES


class AnswerLost(Exception):
    """Raised from botocore's retry step for a state write that may have been applied: it stops the retry
    there, and _update settles the outcome. `error` is the failure botocore saw (None: a 2xx it rejected)."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__("the answer to a state write was lost")
        self.error = error


def _retry_only_unapplied(
    caught_exception: BaseException | None = None,
    response: tuple[Any, dict[str, Any]] | None = None,
    operation: Any = None,
    **_: Any,
) -> None:
    """botocore's `needs-retry` for UpdateItem: raises AnswerLost unless the attempt was certainly not applied;
    returning None leaves the decision to the standard retries (throttling, connection failures, within 3
    attempts). It raises rather than answering False: older botocore releases read any answer that is
    not None, False included, as "retry after sleeping that long", and the Lambda runtime brings its own
    botocore. It runs before the standard handler, which is registered for the whole service."""
    if caught_exception is not None:
        if may_have_applied(caught_exception):
            raise AnswerLost(caught_exception)
        return
    if response is None:
        return
    http_response, parsed = response
    if 200 <= http_response.status_code < 300:
        # Applied. botocore asks after every answer, and retries a 2xx only when its CRC32 does not match
        # the body: a write that landed, so its retry must be stopped too.
        expected = http_response.headers.get("x-amz-crc32")
        if expected is not None and str(zlib.crc32(http_response.content) & 0xFFFFFFFF) != expected:
            raise AnswerLost(None)
        return
    if _answer_leaves_it_unknown(http_response.status_code, parsed.get("Error", {}).get("Code")):
        # `parsed` is the error response botocore would raise with; the hook's signature leaves it a plain dict.
        raise AnswerLost(ClientError(parsed, getattr(operation, "name", "UpdateItem")))  # type: ignore[arg-type]


def retry_only_unapplied_writes(client: Any) -> None:
    """Stop botocore retrying an UpdateItem of `client` that may have been applied (once per client)."""
    events = getattr(getattr(client, "meta", None), "events", None)
    if events is not None:
        events.register_first("needs-retry.dynamodb.UpdateItem", _retry_only_unapplied, unique_id=_RETRY_HOOK_ID)


def read_head(client: DynamoDBClient, table_name: str, key: str) -> dict[str, Any] | None:
    """The key's state item without its value (strongly consistent), as DynamoDB returns it."""
    with dynamodb_errors():
        item: dict[str, Any] | None = client.get_item(
            TableName=table_name,
            Key={"pk": {"S": key}, "sk": {"S": STATE_SORT_KEY}},
            ConsistentRead=True,
            ProjectionExpression=", ".join(_HEAD_NAMES),
            ExpressionAttributeNames=_HEAD_NAMES,
        ).get("Item")
    return item


def value_of_item(item: Mapping[str, Any]) -> tuple[StoredValue | None, BlobRef | None]:
    """The value an item (state or history) holds: inline, or the reference to its blob, or neither."""
    if "value" in item:
        value = StoredValue(
            encoding=item["encoding"]["S"], data=bytes(item["value"]["B"]), size=int(item["value_size"]["N"])
        )
        return value, None
    if "blob_id" in item:
        blob = BlobRef(
            write_id=item["blob_id"]["S"],
            chunks=int(item["blob_chunks"]["N"]),
            sha256=item["blob_sha256"]["S"],
            encoding=item["encoding"]["S"],
            size=int(item["value_size"]["N"]),
        )
        return None, blob
    return None, None


def record_of_item(item: Mapping[str, Any]) -> StateRecord:
    """A state item (as GetItem, UpdateItem or a stream image gives it) as a record. A blob-backed value
    is left unloaded: `value` is None and `blob` says where it is."""
    value, blob = value_of_item(item)
    return StateRecord(
        key=item["pk"]["S"],
        version=int(item["version"]["N"]),
        deleted=item.get("deleted", {}).get("BOOL", False),
        value=value,
        created_at=item["created_at"]["S"] if "created_at" in item else None,
        updated_at=item["updated_at"]["S"],
        updated_by=item["updated_by"]["S"],
        expires_at=float(item["expires_at"]["N"]) if "expires_at" in item else None,
        blob=blob,
        transaction_id=item["transaction_id"]["S"] if "transaction_id" in item else None,
        schema=SchemaStamp(item["schema_name"]["S"], int(item["schema_version"]["N"]))
        if "schema_name" in item
        else None,
        proposal_id=item["proposal_id"]["S"] if "proposal_id" in item else None,
        approved_by=tuple(sorted(item["approved_by"]["SS"])) if "approved_by" in item else (),
        write_id=item["write_id"]["S"] if "write_id" in item else None,
    )
