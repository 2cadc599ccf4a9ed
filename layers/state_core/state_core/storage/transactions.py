"""DynamoDB adapter for multi-key transactions: the keys' state items read together (strongly consistent),
one TransactWriteItems that writes every key's next version conditioned on exactly the state read, and the
idempotency records that remember a transaction's first outcome.

Item shapes are the single-key writes' (storage/state.py), plus `transaction_id` on every state item the
transaction writes, so its stream image (hence its event and history item) carries it. The idempotency
record: pk `idem#<sha256 of subject and Idempotency-Key>`, sk `idempotency`, `fingerprint`, `status`,
`body`, `expires_at` (epoch seconds) and DynamoDB's `ttl`; the stream's consumers filter on the state, expiry
and history sort keys, so these items reach none of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from state_core.domain.errors import OutcomeUnknown, PayloadTooLarge, ServiceUnavailable
from state_core.domain.listing import LIST_SHARD_ATTRIBUTE, list_shard
from state_core.domain.records import StateRecord, rfc3339
from state_core.domain.transactions import Outcome, PlannedOperation, TransactionConflict
from state_core.storage.state import (
    STATE_SORT_KEY,
    StateStore,
    dynamodb_errors,
    may_have_applied,
    new_write_id,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

IDEMPOTENCY_SORT_KEY = "idempotency"

_NAMES = {
    f"#{name}": attr
    for name, attr in {
        "pk": "pk",
        "version": "version",
        "value": "value",
        "encoding": "encoding",
        "value_size": "value_size",
        "created_at": "created_at",
        "updated_at": "updated_at",
        "updated_by": "updated_by",
        "expires_at": "expires_at",
        "incarnation": "incarnation",
        "write_id": "write_id",
        "deleted": "deleted",
        "expired": "expired",
        "blob_id": "blob_id",
        "blob_chunks": "blob_chunks",
        "blob_sha256": "blob_sha256",
        "list_shard": LIST_SHARD_ATTRIBUTE,
        "transaction_id": "transaction_id",
        "schema_name": "schema_name",
        "schema_version": "schema_version",
        "proposal_id": "proposal_id",
        "approved_by": "approved_by",
    }.items()
}


def _epoch(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


class TransactionStore:
    """Reads and commits multi-key transactions; translates DynamoDB errors into domain errors."""

    def __init__(self, client: DynamoDBClient, table_name: str, state: StateStore) -> None:
        self._client = client
        self._table = table_name
        self._state = state

    def load(self, key: str) -> StateRecord | None:
        """One key's state item with its value loaded, a large value's blob included."""
        return self._state.get(key)

    def read(self, keys: list[str]) -> dict[str, StateRecord | None]:
        """The keys' state items (tombstones included; None for a key never written), read strongly
        consistently in one BatchGetItem, values loaded: the bulk read's own read (StateStore.get_many)."""
        found: dict[str, StateRecord | None] = dict.fromkeys(keys)
        found.update(self._state.get_many(keys))
        return found

    def commit(
        self,
        planned: list[PlannedOperation],
        *,
        actor: str,
        now: datetime,
        transaction_id: str,
        attempt: int,
        remember: tuple[str, Outcome] | None = None,
    ) -> list[StateRecord | None]:
        """Write every planned operation's next version in one TransactWriteItems, each conditioned on the
        state it read (and `remember`'s outcome under its idempotency partition, if none is recorded yet).
        Answers the new records (None for a check); TransactionConflict when a condition failed or another
        transaction held a key (nothing written), OutcomeUnknown when the answer was lost and the keys do not
        show the transaction."""
        items: list[dict[str, Any]] = []
        records: list[StateRecord | None] = []
        for step in planned:
            action, record = self._action(step, actor=actor, now=now, transaction_id=transaction_id)
            items.append(action)
            records.append(record)
        if remember is not None:
            items.append(self._remember_action(remember[0], remember[1], now))
        # The token makes botocore's own retries of a request whose answer was lost safe: DynamoDB applies a
        # token once (for 10 minutes). A new one per attempt: each attempt is a different request.
        token = f"{transaction_id}-{attempt}"
        try:
            with dynamodb_errors():
                try:
                    self._client.transact_write_items(TransactItems=items, ClientRequestToken=token)  # type: ignore[arg-type]
                except (ClientError, ConnectionError, HTTPClientError) as exc:
                    if _cancellation(exc) is not None or not may_have_applied(exc):
                        raise
                    if not self._committed(planned, transaction_id):
                        raise OutcomeUnknown(
                            "the transaction was sent but its answer was lost: it may or may not have been applied;"
                            " retry it with the same Idempotency-Key, or read its keys"
                        ) from exc
        except ClientError as exc:
            reasons = _cancellation(exc)
            if reasons is None:
                raise
            codes = [reason.get("Code", "None") for reason in reasons]
            if any(code in ("ConditionalCheckFailed", "TransactionConflict") for code in codes):
                raise TransactionConflict(codes) from None
            if any(
                code in ("ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded") for code in codes
            ):
                raise ServiceUnavailable("the state table is busy; retry shortly") from None
            if any("size" in str(reason.get("Message", "")).lower() for reason in reasons):
                raise PayloadTooLarge("the transaction's items do not fit DynamoDB's item size limit") from None
            raise
        return records

    def _committed(self, planned: list[PlannedOperation], transaction_id: str) -> bool:
        """After a lost answer: whether a written key shows the transaction (all or none of it landed, so one
        key tells). Another transaction id proves nothing: ours may have landed before it."""
        written = [step.operation.key for step in planned if step.operation.writes]
        if not written:
            return False
        try:
            with dynamodb_errors():
                item = self._client.get_item(
                    TableName=self._table,
                    Key=_state_key(written[0]),
                    ConsistentRead=True,
                    ProjectionExpression="#transaction_id",
                    ExpressionAttributeNames={"#transaction_id": "transaction_id"},
                ).get("Item")
        except (ServiceUnavailable, ClientError, BotoCoreError):
            return False
        return item is not None and item.get("transaction_id", {}).get("S") == transaction_id

    def apply_proposal(
        self,
        step: PlannedOperation,
        *,
        actor: str,
        now: datetime,
        proposal_id: str,
        approvers: tuple[str, ...],
        close: dict[str, Any],
        token: str,
    ) -> StateRecord | None:
        """One approved proposal's change and its closing (`close`, the proposal item's conditional update) in
        one TransactWriteItems: the key's next version conditioned on exactly the state read (the proposal's
        base version), stamped with the proposal and its approvers instead of a transaction id. Answers the
        new record; TransactionConflict (reasons in order: the key, the proposal) when either condition
        failed, nothing written."""
        action, record = self._action(
            step, actor=actor, now=now, transaction_id=None, proposal=(proposal_id, approvers)
        )
        try:
            with dynamodb_errors():
                self._client.transact_write_items(TransactItems=[action, close], ClientRequestToken=token)  # type: ignore[list-item]
        except ClientError as exc:
            reasons = _cancellation(exc)
            if reasons is None:
                raise
            raise TransactionConflict([reason.get("Code", "None") for reason in reasons]) from None
        return record

    def _action(
        self,
        step: PlannedOperation,
        *,
        actor: str,
        now: datetime,
        transaction_id: str | None,
        proposal: tuple[str, tuple[str, ...]] | None = None,
    ) -> tuple[dict[str, Any], StateRecord | None]:
        operation, current = step.operation, step.current
        values: dict[str, Any] = {}
        if current is None:
            condition = "attribute_not_exists(#pk)"
        else:
            condition = "#version = :expected_version"
            values[":expected_version"] = {"N": str(current.version)}
            if not current.deleted and current.expires_at is not None:
                # Read live: it must not expire before the commit (its expiry is a version of its own).
                condition += " AND #expires_at > :now_epoch"
                values[":now_epoch"] = {"N": _epoch(now)}
        key = _state_key(operation.key)
        if operation.op == "check":
            return {"ConditionCheck": _expression(self._table, key, condition=condition, values=values)}, None
        write_id = new_write_id()
        values.update(
            {
                ":version": {"N": str(step.next_version)},
                ":now": {"S": rfc3339(now)},
                ":actor": {"S": actor},
                ":write_id": {"S": write_id},
            }
        )
        sets = ["#version = :version", "#updated_at = :now", "#updated_by = :actor", "#write_id = :write_id"]
        stamp_removes = _stamp(sets, values, transaction_id, proposal)
        approved_by = proposal[1] if proposal is not None else ()
        proposal_id = proposal[0] if proposal is not None else None
        if operation.op == "delete":
            values[":true"] = {"BOOL": True}
            sets.append("#deleted = :true")
            update = (
                f"SET {', '.join(sets)} REMOVE #value, #encoding, #value_size, #created_at, #incarnation,"
                " #expires_at, #blob_id, #blob_chunks, #blob_sha256, #list_shard, #schema_name, #schema_version,"
                f" {', '.join(stamp_removes)}"
            )
            tombstone = StateRecord(
                key=operation.key,
                version=step.next_version,
                deleted=True,
                value=None,
                created_at=None,
                updated_at=rfc3339(now),
                updated_by=actor,
                expires_at=None,
                transaction_id=transaction_id,
                proposal_id=proposal_id,
                approved_by=approved_by,
                write_id=write_id,
            )
            return {
                "Update": _expression(self._table, key, condition=condition, values=values, update=update)
            }, tombstone
        value = step.value
        assert value is not None
        value = self._state.sealed(operation.key, write_id, value)
        fresh = current is None or current.deleted
        values.update(
            {
                ":encoding": {"S": value.encoding},
                ":value_size": {"N": str(value.size)},
                ":value": {"B": value.data},
                ":list_shard": {"S": list_shard(operation.key)},
            }
        )
        sets += [
            "#encoding = :encoding",
            "#value_size = :value_size",
            "#value = :value",
            "#list_shard = :list_shard",
            "#created_at = :now" if fresh else "#created_at = if_not_exists(#created_at, :now)",
            "#incarnation = :write_id" if fresh else "#incarnation = if_not_exists(#incarnation, :write_id)",
        ]
        removes = ["#deleted", "#expired", "#blob_id", "#blob_chunks", "#blob_sha256", *stamp_removes]
        if step.schema is None:
            removes += ["#schema_name", "#schema_version"]
        else:
            sets += ["#schema_name = :schema_name", "#schema_version = :schema_version"]
            values.update({":schema_name": {"S": step.schema.name}, ":schema_version": {"N": str(step.schema.version)}})
        if operation.op == "put":
            if step.expires_at is None:
                removes.append("#expires_at")
            else:
                sets.append("#expires_at = :expires_at")
                values[":expires_at"] = {"N": f"{step.expires_at:.3f}"}
        update = f"SET {', '.join(sets)} REMOVE {', '.join(removes)}"
        record = StateRecord(
            key=operation.key,
            version=step.next_version,
            deleted=False,
            value=value,
            created_at=rfc3339(now) if fresh or current is None else (current.created_at or rfc3339(now)),
            updated_at=rfc3339(now),
            updated_by=actor,
            expires_at=step.expires_at,
            transaction_id=transaction_id,
            schema=step.schema,
            proposal_id=proposal_id,
            approved_by=approved_by,
            write_id=write_id,
        )
        return {"Update": _expression(self._table, key, condition=condition, values=values, update=update)}, record

    def _remember_action(self, partition: str, outcome: Outcome, now: datetime) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": _outcome_item(partition, outcome),
                "ConditionExpression": "attribute_not_exists(#pk) OR #expires_at <= :now_epoch",
                "ExpressionAttributeNames": {"#pk": "pk", "#expires_at": "expires_at"},
                "ExpressionAttributeValues": {":now_epoch": {"N": _epoch(now)}},
            }
        }

    def outcome(self, partition: str, now: datetime) -> Outcome | None:
        """The outcome remembered under `partition`, unless it expired (DynamoDB's TTL deletes late)."""
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": partition}, "sk": {"S": IDEMPOTENCY_SORT_KEY}},
                ConsistentRead=True,
            ).get("Item")
        if item is None:
            return None
        outcome = Outcome(
            status=int(item["status"]["N"]),
            body=item["body"]["S"],
            fingerprint=item["fingerprint"]["S"],
            expires_at=float(item["expires_at"]["N"]),
        )
        return outcome if outcome.expires_at > now.timestamp() else None

    def remember(self, partition: str, outcome: Outcome, now: datetime) -> Outcome | None:
        """Record `outcome` (one that wrote nothing, such as a 412) unless an unexpired one is there: None if
        recorded, else the outcome that was there first."""
        action = self._remember_action(partition, outcome, now)["Put"]
        try:
            with dynamodb_errors():
                self._client.put_item(**action)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return self.outcome(partition, now)
        return None


def _outcome_item(partition: str, outcome: Outcome) -> dict[str, Any]:
    return {
        "pk": {"S": partition},
        "sk": {"S": IDEMPOTENCY_SORT_KEY},
        "fingerprint": {"S": outcome.fingerprint},
        "status": {"N": str(outcome.status)},
        "body": {"S": outcome.body},
        "expires_at": {"N": f"{outcome.expires_at:.3f}"},
        # DynamoDB's TTL removes the record days late at worst; readers check expires_at themselves.
        "ttl": {"N": str(int(outcome.expires_at) + 1)},
    }


def _stamp(
    sets: list[str], values: dict[str, Any], transaction_id: str | None, proposal: tuple[str, tuple[str, ...]] | None
) -> list[str]:
    """Set the transaction or the proposal (and its approvers) that writes a version; the attributes to remove,
    so a version never carries one left from an earlier version."""
    if proposal is None:
        assert transaction_id is not None
        values[":transaction_id"] = {"S": transaction_id}
        sets.append("#transaction_id = :transaction_id")
        return ["#proposal_id", "#approved_by"]
    values[":proposal_id"] = {"S": proposal[0]}
    sets.append("#proposal_id = :proposal_id")
    removes = ["#transaction_id"]
    if proposal[1]:
        values[":approved_by"] = {"SS": list(proposal[1])}
        sets.append("#approved_by = :approved_by")
    else:
        removes.append("#approved_by")
    return removes


def _state_key(key: str) -> dict[str, Any]:
    return {"pk": {"S": key}, "sk": {"S": STATE_SORT_KEY}}


def _expression(
    table: str, key: dict[str, Any], *, condition: str, values: dict[str, Any], update: str | None = None
) -> dict[str, Any]:
    text = f"{condition} {update or ''}"
    # DynamoDB refuses names and values the expressions do not use.
    action: dict[str, Any] = {
        "TableName": table,
        "Key": key,
        "ConditionExpression": condition,
        "ExpressionAttributeNames": {name: attr for name, attr in _NAMES.items() if _uses(text, name)},
    }
    used_values = {name: value for name, value in values.items() if _uses(text, name)}
    if used_values:
        action["ExpressionAttributeValues"] = used_values
    if update is not None:
        action["UpdateExpression"] = update
    return action


def _uses(text: str, name: str) -> bool:
    """Whether `name` appears in `text` as a whole token (`#expires_at` is not `#expired`'s prefix match)."""
    start = text.find(name)
    while start != -1:
        end = start + len(name)
        if end == len(text) or not (text[end].isalnum() or text[end] == "_"):
            return True
        start = text.find(name, end)
    return False


def _cancellation(error: BaseException) -> list[dict[str, Any]] | None:
    if not isinstance(error, ClientError):
        return None
    if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return None
    reasons: list[dict[str, Any]] = error.response.get("CancellationReasons") or []  # type: ignore[assignment]
    return reasons
