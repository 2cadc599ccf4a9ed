"""DynamoDB adapter for proposals (approvals.md): one item per proposal in its key's partition, sort key
`proposal#<id>`, so a key's proposals are one Query and a key's state item and a proposal can be written in
one TransactWriteItems. The listing index never holds them (no `list_shard`); the stream's publisher turns
their changes into lifecycle events (stream/proposals.py).

Item: `proposal_id`, `op`, `status`, `proposer`, `created_at` (RFC 3339), `expires_at` (N, epoch seconds),
`base_version` (N; 0: the key was never written), `required` (N), `approvers` (SS, absent while empty), the
resulting value (`value` B, `encoding`, `value_size`), a patch's canonical JSON (`patch` B), `ttl_seconds`,
then once decided `decided_by`, `decided_at`, `comment`, `applied_version` or `current_version` (stale), and
DynamoDB's `ttl` (30 days after the expiry).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from state_core.domain.approvals import (
    RETENTION_AFTER_EXPIRY_SECONDS,
    Proposal,
    ProposalClosedError,
    ProposalOp,
    Status,
)
from state_core.domain.codec import SEALED_PREFIX, StoredValue
from state_core.domain.errors import DecryptionFailed
from state_core.domain.records import SchemaStamp, rfc3339
from state_core.domain.transactions import PlannedOperation
from state_core.storage.state import dynamodb_errors
from state_core.storage.transactions import TransactionStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

    from state_core.domain.ports import ValueCipher
    from state_core.domain.records import StateRecord

PROPOSAL_PREFIX = "proposal#"


def proposal_sort_key(proposal_id: str) -> str:
    return PROPOSAL_PREFIX + proposal_id


def is_proposal_sort_key(sort_key: str) -> bool:
    return sort_key.startswith(PROPOSAL_PREFIX)


def _epoch(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


class ProposalStore:
    """Creates, reads, decides and applies proposals; DynamoDB errors become domain errors."""

    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        transactions: TransactionStore,
        *,
        cipher: ValueCipher | None = None,
    ) -> None:
        self._client = client
        self._table = table_name
        self._transactions = transactions
        # A sensitive key's proposed value and patch are sealed as its state item's value is, bound to the key
        # and the proposal; opened only here, on the service's read path.
        self._cipher = cipher

    def create(self, proposal: Proposal) -> None:
        """A new proposal item. An UpdateItem that may only create, so the write functions' roles need no
        PutItem, which could replace any item of the table whole."""
        item = self._sealed(proposal_item(proposal))
        attributes = {name: value for name, value in item.items() if name not in ("pk", "sk")}
        names = {f"#a{index}": name for index, name in enumerate(attributes)}
        values = {f":v{index}": value for index, value in enumerate(attributes.values())}
        with dynamodb_errors():
            self._client.update_item(
                TableName=self._table,
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(attributes))),
                ConditionExpression="attribute_not_exists(pk)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )

    def get(self, key: str, proposal_id: str) -> Proposal | None:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table, Key=_item_key(key, proposal_id), ConsistentRead=True
            ).get("Item")
        return None if item is None else self._proposal(item)

    def list_open(self, key: str, *, now: datetime, limit: int, after: str | None) -> tuple[list[Proposal], str | None]:
        """Up to `limit` open, unexpired proposals of `key` in the order proposed, after the id `after`; and the
        id to continue after, or None at the end."""
        found: list[Proposal] = []
        start: dict[str, Any] | None = _item_key(key, after) if after is not None else None
        while True:
            request: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
                "FilterExpression": "#status = :open AND expires_at > :now",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":pk": {"S": key},
                    ":prefix": {"S": PROPOSAL_PREFIX},
                    ":open": {"S": "open"},
                    ":now": {"N": _epoch(now)},
                },
                "ConsistentRead": True,
                "Limit": limit - len(found),
            }
            if start is not None:
                request["ExclusiveStartKey"] = start
            with dynamodb_errors():
                page = self._client.query(**request)
            found.extend(self._proposal(item) for item in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if start is None:
                return found, None
            if len(found) >= limit:
                return found, found[-1].proposal_id

    def approve(self, key: str, proposal_id: str, approver: str, now: datetime, comment: str | None) -> Proposal:
        """Add `approver` to the open, unexpired proposal's approvers, unless it proposed it or already counts;
        ProposalClosedError when any of that does not hold (the caller reads why)."""
        return self._update_open(
            TableName=self._table,
            Key=_item_key(key, proposal_id),
            UpdateExpression="ADD approvers :who" + (" SET approval_comments.#who = :comment" if comment else ""),
            ConditionExpression=(
                "attribute_exists(pk) AND #status = :open AND expires_at > :now AND proposer <> :subject"
                " AND NOT contains(approvers, :subject)"
            ),
            ExpressionAttributeNames={"#status": "status", **({"#who": approver} if comment else {})},
            ExpressionAttributeValues={
                **({":comment": {"S": comment}} if comment else {}),
                ":who": {"SS": [approver]},
                ":subject": {"S": approver},
                ":open": {"S": "open"},
                ":now": {"N": _epoch(now)},
            },
        )

    def close(
        self,
        key: str,
        proposal_id: str,
        status: Status,
        *,
        now: datetime,
        by: str | None,
        comment: str | None = None,
        current_version: int | None = None,
        proposer: str | None = None,
    ) -> Proposal:
        """Move the open proposal to `status` (never an applied one: see apply); ProposalClosedError when it is
        not open any more, or, with `proposer`, not that subject's. An expiry needs it past its expiry."""
        action = self.close_action(
            key, proposal_id, status, now=now, by=by, comment=comment, current_version=current_version
        )
        if proposer is not None:
            action["ConditionExpression"] += " AND proposer = :proposer"
            action["ExpressionAttributeValues"][":proposer"] = {"S": proposer}
        if status == "expired":
            action["ConditionExpression"] += " AND expires_at <= :now"
            action["ExpressionAttributeValues"][":now"] = {"N": _epoch(now)}
        return self._update_open(**action)

    def _update_open(self, **request: Any) -> Proposal:
        """A conditional UpdateItem of an open proposal: the proposal as it is after, or ProposalClosedError
        when its condition did not hold."""
        try:
            with dynamodb_errors():
                attributes = self._client.update_item(**request, ReturnValues="ALL_NEW")["Attributes"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            raise ProposalClosedError from None
        return self._proposal(attributes)

    def close_action(  # noqa: PLR0913  one field of the decision each, keyword-only
        self,
        key: str,
        proposal_id: str,
        status: Status,
        *,
        now: datetime,
        by: str | None,
        comment: str | None = None,
        current_version: int | None = None,
        applied_version: int | None = None,
        required: int | None = None,
    ) -> dict[str, Any]:
        """The conditional UpdateItem that closes an open proposal (an apply's also needs its approvals)."""
        sets = ["#status = :status", "decided_at = :now_text"]
        values: dict[str, Any] = {
            ":status": {"S": status},
            ":open": {"S": "open"},
            ":now_text": {"S": rfc3339(now)},
        }
        condition = "attribute_exists(pk) AND #status = :open"
        if by is not None:
            sets.append("decided_by = :by")
            values[":by"] = {"S": by}
        if comment is not None:
            sets.append("#comment = :comment")
            values[":comment"] = {"S": comment}
        if current_version is not None:
            sets.append("current_version = :current")
            values[":current"] = {"N": str(current_version)}
        if applied_version is not None:
            sets.append("applied_version = :applied")
            values[":applied"] = {"N": str(applied_version)}
        if required is not None:
            condition += " AND size(approvers) >= :required"
            values[":required"] = {"N": str(required)}
        names = {"#status": "status"}
        if comment is not None:
            names["#comment"] = "comment"
        return {
            "TableName": self._table,
            "Key": _item_key(key, proposal_id),
            "UpdateExpression": "SET " + ", ".join(sets),
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def apply(self, proposal: Proposal, step: PlannedOperation, *, now: datetime, attempt: int) -> StateRecord | None:
        """The key's next version and the proposal's `applied` in one TransactWriteItems (TransactionConflict
        with the reasons: the key first, then the proposal). Answers the new state record."""
        close = self.close_action(
            proposal.key,
            proposal.proposal_id,
            "applied",
            now=now,
            by=None,
            applied_version=step.next_version,
            required=proposal.required,
        )
        return self._transactions.apply_proposal(
            step,
            actor=proposal.proposer,
            now=now,
            proposal_id=proposal.proposal_id,
            approvers=tuple(sorted(proposal.approvers)),
            close={"Update": close},
            token=f"{proposal.proposal_id}-{attempt}",
        )

    def _sealed(self, item: dict[str, Any]) -> dict[str, Any]:
        key, write_id = item["pk"]["S"], sealing_id(item["proposal_id"]["S"])
        if self._cipher is None or not self._cipher.sensitive(key):
            return item
        sealed = dict(item)
        if "value" in item:
            value = StoredValue(item["encoding"]["S"], bytes(item["value"]["B"]), int(item["value_size"]["N"]))
            value = self._cipher.seal(key, write_id, value)
            sealed.update(value={"B": value.data}, encoding={"S": value.encoding}, value_size={"N": str(value.size)})
        if "patch" in item:
            patch = self._cipher.seal(key, f"{write_id}:patch", StoredValue.encode(bytes(item["patch"]["B"])))
            sealed.update(
                patch={"B": patch.data}, patch_encoding={"S": patch.encoding}, patch_size={"N": str(patch.size)}
            )
        return sealed

    def _proposal(self, item: dict[str, Any]) -> Proposal:
        """The proposal of an item, its value and patch opened if they are sealed."""
        sealed_value = "encoding" in item and item["encoding"]["S"].startswith(SEALED_PREFIX)
        if not sealed_value and "patch_encoding" not in item:
            return proposal_of_item(item)
        key, write_id = item["pk"]["S"], sealing_id(item["proposal_id"]["S"])
        opened = dict(item)
        if sealed_value:
            value = StoredValue(item["encoding"]["S"], bytes(item["value"]["B"]), int(item["value_size"]["N"]))
            value = self._open(key, write_id, value)
            opened.update(value={"B": value.data}, encoding={"S": value.encoding}, value_size={"N": str(value.size)})
        if "patch_encoding" in item:
            patch = StoredValue(item["patch_encoding"]["S"], bytes(item["patch"]["B"]), int(item["patch_size"]["N"]))
            opened["patch"] = {"B": self._open(key, f"{write_id}:patch", patch).canonical()}
        return proposal_of_item(opened)

    def _open(self, key: str, write_id: str, value: StoredValue) -> StoredValue:
        if self._cipher is None:
            raise DecryptionFailed("a sealed proposal was read where no values key is configured")
        return self._cipher.open(key, write_id, value)


def sealing_id(proposal_id: str) -> str:
    """What a proposal's sealed value is bound to beside its key: the proposal, never a write of the key (its
    sealed patch: this and `:patch`)."""
    return f"proposal:{proposal_id}"


def _item_key(key: str, proposal_id: str) -> dict[str, Any]:
    return {"pk": {"S": key}, "sk": {"S": proposal_sort_key(proposal_id)}}


def proposal_item(proposal: Proposal) -> dict[str, Any]:
    item: dict[str, Any] = {
        **_item_key(proposal.key, proposal.proposal_id),
        "proposal_id": {"S": proposal.proposal_id},
        "op": {"S": proposal.op},
        "status": {"S": proposal.status},
        "proposer": {"S": proposal.proposer},
        "created_at": {"S": proposal.created_at},
        "expires_at": {"N": f"{proposal.expires_at:.3f}"},
        "base_version": {"N": str(proposal.base_version)},
        "required": {"N": str(proposal.required)},
        # DynamoDB's TTL removes it late; readers go by expires_at and status.
        "ttl": {"N": str(int(proposal.expires_at) + RETENTION_AFTER_EXPIRY_SECONDS)},
        # Approvers' comments by subject (set with the approval, so the map must exist first).
        "approval_comments": {"M": {}},
    }
    if proposal.approvers:
        item["approvers"] = {"SS": list(proposal.approvers)}
    if proposal.value is not None:
        item["value"] = {"B": proposal.value.data}
        item["encoding"] = {"S": proposal.value.encoding}
        item["value_size"] = {"N": str(proposal.value.size)}
    if proposal.patch is not None:
        item["patch"] = {"B": proposal.patch}
    if proposal.ttl_seconds is not None:
        item["ttl_seconds"] = {"N": str(proposal.ttl_seconds)}
    if proposal.schema is not None:
        item["schema_name"] = {"S": proposal.schema.name}
        item["schema_version"] = {"N": str(proposal.schema.version)}
    return item


def proposal_of_item(item: dict[str, Any]) -> Proposal:
    """A proposal item, from GetItem, UpdateItem or a stream image (binary as bytes)."""

    def text(name: str) -> str | None:
        return item[name]["S"] if name in item else None

    def number(name: str) -> int | None:
        return int(item[name]["N"]) if name in item else None

    value = None
    if "value" in item:
        value = StoredValue(
            encoding=item["encoding"]["S"], data=bytes(item["value"]["B"]), size=int(item["value_size"]["N"])
        )
    return Proposal(
        key=item["pk"]["S"],
        proposal_id=item["proposal_id"]["S"],
        op=cast("ProposalOp", item["op"]["S"]),
        status=cast("Status", item["status"]["S"]),
        proposer=item["proposer"]["S"],
        created_at=item["created_at"]["S"],
        expires_at=float(item["expires_at"]["N"]),
        base_version=int(item["base_version"]["N"]),
        required=int(item["required"]["N"]),
        approvers=tuple(sorted(item["approvers"]["SS"])) if "approvers" in item else (),
        value=value,
        patch=bytes(item["patch"]["B"]) if "patch" in item else None,
        ttl_seconds=number("ttl_seconds"),
        decided_by=text("decided_by"),
        decided_at=text("decided_at"),
        comment=text("comment"),
        applied_version=number("applied_version"),
        current_version=number("current_version"),
        approval_comments={name: v["S"] for name, v in item.get("approval_comments", {}).get("M", {}).items()},
        schema=SchemaStamp(item["schema_name"]["S"], int(item["schema_version"]["N"]))
        if "schema_name" in item
        else None,
    )
