"""The schema registry in the state table, under partitions no key can name (a key starts with a letter or
digit, these with `#`), and with sort keys the stream's filters drop (only `state` items publish events):

- `#schemas` / `registry`: the registry's revision, raised by every publish, so that publishes are
  serialized (the overlap check reads every current schema, and a concurrent publish would void it);
- `#schemas` / `current#<name>`: each schema's current version, read together by one Query;
- `#schema#<name>` / `version#<10 digits>`: every version ever published, never changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from state_core.domain.schemas import SchemaConflict, SchemaVersion
from state_core.storage.state import dynamodb_errors

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

REGISTRY = "#schemas"
_REVISION_SK = "registry"
_CURRENT = "current#"
_VERSION = "version#"


def _history_pk(name: str) -> str:
    return f"#schema#{name}"


class SchemaStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def revision(self) -> int:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": REGISTRY}, "sk": {"S": _REVISION_SK}},
                ConsistentRead=True,
            ).get("Item")
        return int(item["revision"]["N"]) if item else 0

    def current(self) -> list[SchemaVersion]:
        """Every schema's current version (strongly consistent: a publish is seen at once by the next read)."""
        found: list[SchemaVersion] = []
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :current)",
            "ExpressionAttributeValues": {":pk": {"S": REGISTRY}, ":current": {"S": _CURRENT}},
            "ConsistentRead": True,
        }
        with dynamodb_errors():
            for page in self._client.get_paginator("query").paginate(**query):
                found += [_schema_of(item) for item in page.get("Items", [])]
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
        item = _item_of(schema)
        registry_condition = "attribute_not_exists(revision)" if revision == 0 else "revision = :revision"
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": REGISTRY}, "sk": {"S": _REVISION_SK}},
            "UpdateExpression": "SET revision = :next",
            "ConditionExpression": registry_condition,
            "ExpressionAttributeValues": {":next": {"N": str(revision + 1)}},
        }
        if revision:
            update["ExpressionAttributeValues"][":revision"] = {"N": str(revision)}
        current = {"pk": {"S": REGISTRY}, "sk": {"S": _CURRENT + schema.name}, **item}
        versioned = {"pk": {"S": _history_pk(schema.name)}, "sk": {"S": f"{_VERSION}{schema.version:010d}"}, **item}
        try:
            with dynamodb_errors():
                self._client.transact_write_items(
                    TransactItems=[
                        {"Update": update},  # type: ignore[typeddict-item]
                        {"Put": {"TableName": self._table, "Item": current}},
                        {
                            "Put": {
                                "TableName": self._table,
                                "Item": versioned,
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        },
                    ]
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException":
                raise SchemaConflict(
                    f"another publish changed the registry while schema {schema.name} was checked; retry",
                    [f"{schema.name}: version {previous or 0} is no longer current"],
                ) from None
            raise


def _item_of(schema: SchemaVersion) -> dict[str, Any]:
    return {
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
    )
