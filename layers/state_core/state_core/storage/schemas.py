"""The schema registry in the state table, under partitions no key can name (a key starts with a letter or
digit, these with `#`), and with sort keys the stream's filters drop (only `state` items publish events):

- `#schemas` / `registry`: the registry's revision, raised by every publish, so that publishes are
  serialized (the overlap check reads every current schema, and a concurrent publish would void it);
- `#schemas` / `current#<name>`: each schema's current version, read together by one Query;
- `#schemas` / `pending#<name>`: a version being checked against the values already stored (enforced
  on writes with the current one until the check ends; it blocks other publishes of the name);
- `#schema#<name>` / `version#<10 digits>`: every version ever published, never changed;
- `#schema#<name>` / `check#<id>`: a check's progress and checkpoint, and `check#<id>#key#<key>` each
  offending key it found (the first of its violations and their count, never the value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from state_core.domain.schemas import (
    CheckProgress,
    OffendingKey,
    SchemaCheck,
    SchemaConflict,
    SchemaVersion,
    Violation,
)
from state_core.storage.batches import write_all
from state_core.storage.state import dynamodb_errors, new_write_id

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

REGISTRY = "#schemas"
_REVISION_SK = "registry"
_CURRENT = "current#"
_PENDING = "pending#"
_VERSION = "version#"
_CHECK = "check#"
_OFFENDING = "#key#"


def _history_pk(name: str) -> str:
    return f"#schema#{name}"


class SchemaStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def revision(self) -> int:
        item = self._revision_item()
        return int(item["revision"]["N"]) if item else 0

    def _revision_item(self) -> dict[str, Any] | None:
        with dynamodb_errors():
            item: dict[str, Any] | None = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": REGISTRY}, "sk": {"S": _REVISION_SK}},
                ConsistentRead=True,
            ).get("Item")
        return item

    def current(self) -> list[SchemaVersion]:
        """Every schema's current version (strongly consistent: a publish is seen at once by the next read)."""
        return [schema for schema in self.registry() if schema.check_id is None]

    def registry(self) -> list[SchemaVersion]:
        """Every schema's current version and every version being checked (`check_id` set), in one Query."""
        found: list[SchemaVersion] = []
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": REGISTRY}},
            "ConsistentRead": True,
        }
        with dynamodb_errors():
            for page in self._client.get_paginator("query").paginate(**query):
                for item in page.get("Items", []):
                    sk = item["sk"]["S"]
                    if sk.startswith((_CURRENT, _PENDING)):
                        found.append(_schema_of(item))
            return found

    def version(self, name: str, version: int | None) -> SchemaVersion | None:
        """A schema's `version`, or its current version when None."""
        key = (
            {"pk": {"S": REGISTRY}, "sk": {"S": _CURRENT + name}}
            if version is None
            else {"pk": {"S": _history_pk(name)}, "sk": {"S": f"{_VERSION}{version:010d}"}}
        )
        with dynamodb_errors():
            item = self._client.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item")
        return _schema_of(item) if item else None

    def versions(self, name: str) -> list[SchemaVersion]:
        found: list[SchemaVersion] = []
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _history_pk(name)}},
            "ConsistentRead": True,
        }
        with dynamodb_errors():
            for page in self._client.get_paginator("query").paginate(**query):
                found += [_schema_of(item) for item in page.get("Items", [])]
            return found

    def publish(self, schema: SchemaVersion, *, previous: int | None, revision: int) -> None:
        """Write `schema` as its name's new current version, if the registry is still at `revision` (no other
        publish since the caller's checks) and the name still at `previous`; SchemaConflict otherwise."""
        self._transact(schema.name, previous, revision, [self._current_put(schema), self._version_put(schema)])

    def begin_check(self, schema: SchemaVersion, check: SchemaCheck, *, previous: int | None, revision: int) -> None:
        """Record `schema` (its `check_id` set) as its name's pending version and `check` as its job, if the
        registry is still at `revision`; SchemaConflict otherwise."""
        pending = {"pk": {"S": REGISTRY}, "sk": {"S": _PENDING + schema.name}, **_item_of(schema)}
        self._transact(
            schema.name,
            previous,
            revision,
            [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": pending,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {"Put": {"TableName": self._table, "Item": _check_item(check)}},
            ],
        )

    def end_check(self, schema: SchemaVersion, check: SchemaCheck, *, revision: int) -> None:
        """End `check` of the pending `schema`: published (the pending version becomes current) when
        `check.state` is `passed`, else only dropped. SchemaConflict when the registry moved meanwhile."""
        assert schema.check_id is not None
        published = schema.with_check(None)
        drop_pending: dict[str, Any] = {
            "Delete": {
                "TableName": self._table,
                "Key": {"pk": {"S": REGISTRY}, "sk": {"S": _PENDING + schema.name}},
                "ConditionExpression": "check_id = :check",
                "ExpressionAttributeValues": {":check": {"S": schema.check_id}},
            }
        }
        finish = {"Put": {"TableName": self._table, "Item": _check_item(check)}}
        items = [drop_pending, finish]
        if check.state == "passed":
            items += [self._current_put(published), self._version_put(published)]
        self._transact(schema.name, schema.version - 1 or None, revision, items)

    def check(self, name: str, check_id: str) -> SchemaCheck | None:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": _history_pk(name)}, "sk": {"S": _CHECK + check_id}},
                ConsistentRead=True,
            ).get("Item")
        return _check_of(item) if item else None

    def save_progress(self, check: SchemaCheck, previous: CheckProgress, offending: list[OffendingKey]) -> bool:
        """Record the offending keys found since `previous`, then `check`'s progress, if the check is still at
        `previous` (a second runner of the same check loses here and stops); whether it was recorded."""
        if offending:
            with dynamodb_errors():
                write_all(
                    self._client,
                    self._table,
                    [{"PutRequest": {"Item": self._offending_item(check, o)}} for o in offending],
                )
        progress = check.progress
        try:
            with dynamodb_errors():
                self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": _history_pk(check.name)}, "sk": {"S": _CHECK + check.id}},
                    UpdateExpression="SET checked = :checked, offending = :offending, #cursor = :cursor,"
                    " heartbeat = :heartbeat, #state = :state",
                    ConditionExpression="#cursor = :previous AND checked = :previous_checked",
                    ExpressionAttributeNames={"#cursor": "cursor", "#state": "state"},
                    ExpressionAttributeValues={
                        ":checked": {"N": str(progress.checked)},
                        ":offending": {"N": str(progress.offending)},
                        ":cursor": {"S": progress.cursor},
                        ":heartbeat": {"N": str(progress.heartbeat)},
                        ":state": {"S": check.state},
                        ":previous": {"S": previous.cursor},
                        ":previous_checked": {"N": str(previous.checked)},
                    },
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def offending(self, name: str, check_id: str, *, after: str | None, limit: int) -> tuple[list[OffendingKey], bool]:
        """Up to `limit` offending keys of a check in key order, after the key `after`; whether more follow."""
        prefix = f"{_CHECK}{check_id}{_OFFENDING}"
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {":pk": {"S": _history_pk(name)}, ":prefix": {"S": prefix}},
            "ConsistentRead": True,
            "Limit": limit + 1,
        }
        if after is not None:
            query["ExclusiveStartKey"] = {"pk": {"S": _history_pk(name)}, "sk": {"S": prefix + after}}
        with dynamodb_errors():
            items = self._client.query(**query).get("Items", [])
        found = [_offending_of(item) for item in items[:limit]]
        return found, len(items) > limit

    def _offending_item(self, check: SchemaCheck, offending: OffendingKey) -> dict[str, Any]:
        return {
            "pk": {"S": _history_pk(check.name)},
            "sk": {"S": f"{_CHECK}{check.id}{_OFFENDING}{offending.key}"},
            "key": {"S": offending.key},
            "violation_count": {"N": str(offending.violation_count)},
            "violations": {
                "L": [{"M": {"pointer": {"S": v.pointer}, "message": {"S": v.message}}} for v in offending.violations]
            },
        }

    # ------------------------------------------------------------------------------------- transactions
    def _revision_update(self, revision: int, write_id: str) -> dict[str, Any]:
        registry_condition = "attribute_not_exists(revision)" if revision == 0 else "revision = :revision"
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": REGISTRY}, "sk": {"S": _REVISION_SK}},
            "UpdateExpression": "SET revision = :next, write_id = :write",
            "ConditionExpression": registry_condition,
            "ExpressionAttributeValues": {":next": {"N": str(revision + 1)}, ":write": {"S": write_id}},
        }
        if revision:
            update["ExpressionAttributeValues"][":revision"] = {"N": str(revision)}
        return {"Update": update}

    def _current_put(self, schema: SchemaVersion) -> dict[str, Any]:
        current = {"pk": {"S": REGISTRY}, "sk": {"S": _CURRENT + schema.name}, **_item_of(schema)}
        return {"Put": {"TableName": self._table, "Item": current}}

    def _version_put(self, schema: SchemaVersion) -> dict[str, Any]:
        versioned = {
            "pk": {"S": _history_pk(schema.name)},
            "sk": {"S": f"{_VERSION}{schema.version:010d}"},
            **_item_of(schema),
        }
        return {"Put": {"TableName": self._table, "Item": versioned, "ConditionExpression": "attribute_not_exists(pk)"}}

    def _transact(self, name: str, previous: int | None, revision: int, items: list[dict[str, Any]]) -> None:
        """Apply `items` with the registry's move from `revision` to the next, all or nothing. The move carries
        a write id: when botocore retried the transaction after an answer that never came (a timeout), the
        retry is cancelled by the first attempt's own move, and the id tells that apart from another
        publish's."""
        write_id = new_write_id()
        try:
            with dynamodb_errors():
                transact_items = [self._revision_update(revision, write_id), *items]
                self._client.transact_write_items(TransactItems=transact_items)  # type: ignore[arg-type]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                if self._moved_by(revision, write_id):
                    return
                raise SchemaConflict(
                    f"another publish changed the registry while schema {name} was checked; retry",
                    [f"{name}: version {previous or 0} is no longer current"],
                ) from None
            raise

    def _moved_by(self, revision: int, write_id: str) -> bool:
        """Whether the registry is at the revision after `revision`, moved there by the write `write_id`."""
        item = self._revision_item()
        return (
            item is not None
            and item.get("revision", {}).get("N") == str(revision + 1)
            and item.get("write_id", {}).get("S") == write_id
        )


def _item_of(schema: SchemaVersion) -> dict[str, Any]:
    check = {} if schema.check_id is None else {"check_id": {"S": schema.check_id}}
    return {
        **check,
        "name": {"S": schema.name},
        "version": {"N": str(schema.version)},
        "document": {"S": schema.document},
        "patterns": {"L": [{"S": p} for p in schema.patterns]},
        "created_at": {"S": schema.created_at},
        "created_by": {"S": schema.created_by},
        "mode": {"S": schema.mode},
    }


def _schema_of(item: dict[str, Any]) -> SchemaVersion:
    return SchemaVersion(
        name=item["name"]["S"],
        version=int(item["version"]["N"]),
        document=item["document"]["S"],
        patterns=tuple(p["S"] for p in item["patterns"]["L"]),
        created_at=item["created_at"]["S"],
        created_by=item["created_by"]["S"],
        mode=item["mode"]["S"],
        check_id=item["check_id"]["S"] if "check_id" in item else None,
    )


def _check_item(check: SchemaCheck) -> dict[str, Any]:
    progress = check.progress
    item: dict[str, Any] = {
        "pk": {"S": _history_pk(check.name)},
        "sk": {"S": _CHECK + check.id},
        "name": {"S": check.name},
        "version": {"N": str(check.version)},
        "patterns": {"L": [{"S": p} for p in check.patterns]},
        "state": {"S": check.state},
        "created_at": {"S": check.created_at},
        "created_by": {"S": check.created_by},
        "settle_until": {"N": str(check.settle_until)},
        "checked": {"N": str(progress.checked)},
        "offending": {"N": str(progress.offending)},
        "cursor": {"S": progress.cursor},
        "heartbeat": {"N": str(progress.heartbeat)},
    }
    if check.finished_at is not None:
        item["finished_at"] = {"S": check.finished_at}
    return item


def _check_of(item: dict[str, Any]) -> SchemaCheck:
    return SchemaCheck(
        id=item["sk"]["S"].removeprefix(_CHECK),
        name=item["name"]["S"],
        version=int(item["version"]["N"]),
        patterns=tuple(p["S"] for p in item["patterns"]["L"]),
        state=item["state"]["S"],
        created_at=item["created_at"]["S"],
        created_by=item["created_by"]["S"],
        settle_until=float(item["settle_until"]["N"]),
        progress=CheckProgress(
            checked=int(item["checked"]["N"]),
            offending=int(item["offending"]["N"]),
            cursor=item["cursor"]["S"],
            heartbeat=float(item["heartbeat"]["N"]),
        ),
        finished_at=item["finished_at"]["S"] if "finished_at" in item else None,
    )


def _offending_of(item: dict[str, Any]) -> OffendingKey:
    return OffendingKey(
        key=item["key"]["S"],
        violation_count=int(item["violation_count"]["N"]),
        violations=tuple(Violation(v["M"]["pointer"]["S"], v["M"]["message"]["S"]) for v in item["violations"]["L"]),
    )
