"""The watch table in DynamoDB: connections, subscriptions, the index of subscriptions by target, watermarks.

Items (docs/watch.md, "What is stored"): everything of a connection under `c#<connection id>` (its
principal, its subscriptions, its watermarks), and one index entry per subscription under the watched
target (`t#k#<key>` / `t#p#<prefix>`), read with strongly consistent Queries so that a subscription written
before a change is seen by that change's fan-out. Watermarks move only by conditional writes: the claim of
version v needs v - 1 delivered (or nothing yet) and no live lease; a lease holder's writes need its lease.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from state_core.domain.watch import (
    CLOCK_MARGIN_SECONDS,
    RESUME_RETENTION_SECONDS,
    Connection,
    Journal,
    LeaseLost,
    Subscription,
    Watermark,
)
from state_core.storage.batches import write_all
from state_core.storage.state import dynamodb_errors

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from mypy_boto3_dynamodb.client import DynamoDBClient

    from state_core.domain.watch import ChangeNote

CONNECTION_SK = "conn"
# Everything of a connection outlives its token by a day at most, even if $disconnect never ran.
RETAIN_PAST_EXPIRY_SECONDS = 86_400


def _conn_pk(connection_id: str) -> str:
    return f"c#{connection_id}"


def _index_pk(target: str) -> str:
    return f"t#{target}"


# A watched prefix's journal marker sits in its index partition, after every index entry (`~` sorts after
# connection ids), so one Query finds whether the prefix is journaled or watched at all.
JOURNAL_MARKER_SK = "~journal"


def _journal_pk(prefix: str) -> str:
    return f"j#{prefix}"


def _millis(seconds: float) -> str:
    return f"{int(seconds * 1000):015d}"


def _subscription_of(connection_id: str, subscription_id: str, target: str, item: dict[str, Any]) -> Subscription:
    is_key = target.startswith("k#")
    resumed = item.get("resumed_from", {}).get("N")
    return Subscription(
        connection_id,
        subscription_id,
        target[2:] if is_key else None,
        None if is_key else target[2:],
        None if resumed is None else float(resumed),
    )


def _watermark_key(s: Subscription, key: str) -> dict[str, Any]:
    return {"pk": {"S": _conn_pk(s.connection_id)}, "sk": {"S": f"w#{s.subscription_id}#{key}"}}


def _failed(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _watermark(item: dict[str, Any] | None) -> Watermark:
    item = item or {}

    def number(name: str) -> float | None:
        return float(item[name]["N"]) if name in item else None

    delivered, pending = number("delivered"), number("pending")
    return Watermark(
        delivered=None if delivered is None else int(delivered),
        claim=item.get("claim", {}).get("S"),
        lease_by=item.get("lease_by", {}).get("S"),
        lease_until=number("lease_until"),
        pending=None if pending is None else int(pending),
    )


def _connection(item: dict[str, Any]) -> Connection:
    return Connection(
        connection_id=item["pk"]["S"][2:],
        subject=item["subject"]["S"],
        scopes=tuple(item.get("scopes", {}).get("SS", [])),
        roles=tuple(item.get("roles", {}).get("SS", [])),
        expires_at=int(item["exp"]["N"]),
        warned=item.get("warned", {}).get("BOOL", False),
    )


class WatchStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    # ------------------------------------------------------------------------------------- connections
    def _principal_values(self, connection: Connection) -> dict[str, Any]:
        values: dict[str, Any] = {
            ":subject": {"S": connection.subject},
            ":exp": {"N": str(connection.expires_at)},
            ":ttl": {"N": str(connection.expires_at + RETAIN_PAST_EXPIRY_SECONDS)},
        }
        return values

    def put_connection(self, connection: Connection) -> None:
        item: dict[str, Any] = {
            "pk": {"S": _conn_pk(connection.connection_id)},
            "sk": {"S": CONNECTION_SK},
            "subject": {"S": connection.subject},
            "exp": {"N": str(connection.expires_at)},
            "ttl": {"N": str(connection.expires_at + RETAIN_PAST_EXPIRY_SECONDS)},
        }
        # String sets cannot be empty: no scopes, no member.
        if connection.scopes:
            item["scopes"] = {"SS": sorted(set(connection.scopes))}
        if connection.roles:
            item["roles"] = {"SS": sorted(set(connection.roles))}
        with dynamodb_errors():
            self._client.put_item(TableName=self._table, Item=item)

    def connection(self, connection_id: str) -> Connection | None:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": _conn_pk(connection_id)}, "sk": {"S": CONNECTION_SK}},
                ConsistentRead=True,
            ).get("Item")
        return None if item is None else _connection(item)

    def connections(self, connection_ids: Iterable[str]) -> dict[str, Connection]:
        wanted = list(dict.fromkeys(connection_ids))
        found: dict[str, Connection] = {}
        for start in range(0, len(wanted), 100):
            keys: list[dict[str, Any]] = [
                {"pk": {"S": _conn_pk(c)}, "sk": {"S": CONNECTION_SK}} for c in wanted[start : start + 100]
            ]
            request: dict[str, Any] = {self._table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self._client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self._table, []):
                    connection = _connection(item)
                    found[connection.connection_id] = connection
                request = response.get("UnprocessedKeys") or {}
        return found

    def replace_principal(self, connection: Connection) -> bool:
        """A refresh: the new token's scopes, roles and exp, only for the same subject (False otherwise)."""
        names = {"#subject": "subject", "#exp": "exp", "#ttl": "ttl", "#scopes": "scopes", "#roles": "roles"}
        values = self._principal_values(connection)
        sets = ["#exp = :exp", "#ttl = :ttl", "warned = :no"]
        removes = []
        values[":no"] = {"BOOL": False}
        for name, members in (("scopes", connection.scopes), ("roles", connection.roles)):
            if members:
                sets.append(f"#{name} = :{name}")
                values[f":{name}"] = {"SS": sorted(set(members))}
            else:
                removes.append(f"#{name}")
        update = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": _conn_pk(connection.connection_id)}, "sk": {"S": CONNECTION_SK}},
                UpdateExpression=update,
                ConditionExpression="#subject = :subject",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _failed(error):
                return False
            raise
        return True

    def mark_warned(self, connection_id: str) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": _conn_pk(connection_id)}, "sk": {"S": CONNECTION_SK}},
                UpdateExpression="SET warned = :yes",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":yes": {"BOOL": True}},
            )
        except ClientError as error:
            if not _failed(error):
                raise

    def expiring(self, before: float) -> Iterator[Connection]:
        """Connections whose token expires before `before` (a scan: the sweep runs once a minute)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": "sk = :conn AND #exp < :before",
            "ExpressionAttributeNames": {"#exp": "exp"},
            "ExpressionAttributeValues": {":conn": {"S": CONNECTION_SK}, ":before": {"N": str(int(before))}},
        }
        for response in self._client.get_paginator("scan").paginate(**request):
            for item in response.get("Items", []):
                yield _connection(item)

    def forget_connection(self, connection_id: str) -> None:
        """Delete everything of a connection: its subscriptions' index entries, then its own items."""
        items = self._connection_items(connection_id)
        index = [
            {"pk": {"S": _index_pk(item["target"]["S"])}, "sk": {"S": f"{connection_id}#{item['sk']['S'][2:]}"}}
            for item in items
            if item["sk"]["S"].startswith("s#")
        ]
        own = [{"pk": item["pk"], "sk": item["sk"]} for item in items]
        self._delete_all(index + own)

    def _connection_items(self, connection_id: str) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _conn_pk(connection_id)}},
            "ConsistentRead": True,
        }
        items: list[dict[str, Any]] = []
        for response in self._client.get_paginator("query").paginate(**request):
            items += response.get("Items", [])
        return items

    def _delete_all(self, keys: list[dict[str, Any]]) -> None:
        write_all(self._client, self._table, [{"DeleteRequest": {"Key": key}} for key in keys])

    # ----------------------------------------------------------------------------------- subscriptions
    def add_subscription(
        self, subscription: Subscription, expires_at: int, known: dict[str, int] | None = None
    ) -> bool:
        """The index entry first, then the subscription item (False if the id is taken): the fan-out reads
        the index, so from the index entry on, every later change of the target reaches this subscription.
        A resumed prefix subscription keeps the versions its client named (`known`) on its item."""
        s = subscription
        ttl = {"N": str(expires_at + RETAIN_PAST_EXPIRY_SECONDS)}
        item: dict[str, Any] = {
            "pk": {"S": _conn_pk(s.connection_id)},
            "sk": {"S": f"s#{s.subscription_id}"},
            "target": {"S": s.target},
            "ttl": ttl,
        }
        resumed: dict[str, Any] = {}
        if s.resumed_from is not None:
            resumed["resumed_from"] = {"N": f"{s.resumed_from:.3f}"}
            item["known"] = {"M": {k: {"N": str(v)} for k, v in (known or {}).items()}}
        item.update(resumed)
        try:
            # Conditional on the id being free, before the index entry exists: a taken id changes nothing.
            with dynamodb_errors():
                self._client.put_item(
                    TableName=self._table,
                    Item={**item, "adding": {"BOOL": True}},
                    ConditionExpression="attribute_not_exists(pk)",
                )
        except ClientError as error:
            if _failed(error):
                return False
            raise
        with dynamodb_errors():
            self._client.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": _index_pk(s.target)},
                    "sk": {"S": f"{s.connection_id}#{s.subscription_id}"},
                    "connection": {"S": s.connection_id},
                    "subscription": {"S": s.subscription_id},
                    "ttl": ttl,
                    **resumed,
                },
            )
            self._client.put_item(TableName=self._table, Item=item)
        return True

    def subscription(self, connection_id: str, subscription_id: str) -> Subscription | None:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": _conn_pk(connection_id)}, "sk": {"S": f"s#{subscription_id}"}},
                ConsistentRead=True,
            ).get("Item")
        if item is None:
            return None
        return _subscription_of(connection_id, subscription_id, item["target"]["S"], item)

    def known_versions(self, subscription: Subscription) -> dict[str, int] | None:
        """The versions the client of a resumed prefix subscription said it had processed, per key; None when
        the subscription is gone."""
        s = subscription
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": _conn_pk(s.connection_id)}, "sk": {"S": f"s#{s.subscription_id}"}},
                ProjectionExpression="known",
                ConsistentRead=True,
            ).get("Item")
        if item is None:
            return None
        known = item.get("known", {}).get("M", {})
        return {key: int(value["N"]) for key, value in known.items()}

    def remove_subscription(self, subscription: Subscription) -> None:
        """The index entry first (no new deliveries), then the subscription and its watermarks."""
        s = subscription
        prefix = f"w#{s.subscription_id}#"
        watermarks = [
            {"pk": item["pk"], "sk": item["sk"]}
            for item in self._connection_items(s.connection_id)
            if item["sk"]["S"].startswith(prefix)
        ]
        self._delete_all(
            [
                {"pk": {"S": _index_pk(s.target)}, "sk": {"S": f"{s.connection_id}#{s.subscription_id}"}},
                {"pk": {"S": _conn_pk(s.connection_id)}, "sk": {"S": f"s#{s.subscription_id}"}},
                *watermarks,
            ]
        )

    def subscribers(self, target: str) -> list[Subscription]:
        """Every subscription of `target`, strongly consistent."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk < :marker",
            "ExpressionAttributeValues": {":pk": {"S": _index_pk(target)}, ":marker": {"S": JOURNAL_MARKER_SK}},
            "ProjectionExpression": "#c, #s, resumed_from",
            "ExpressionAttributeNames": {"#c": "connection", "#s": "subscription"},
            "ConsistentRead": True,
        }
        found: list[Subscription] = []
        with dynamodb_errors():
            for response in self._client.get_paginator("query").paginate(**request):
                found += [
                    _subscription_of(item["connection"]["S"], item["subscription"]["S"], target, item)
                    for item in response.get("Items", [])
                ]
        return found

    # ----------------------------------------------------------------------------------------- journal
    def open_journal(self, prefix: str, until: float, now: float) -> Journal:
        """Keep the prefix's journal until at least `until`: a live journal keeps its start, an expired or
        absent one starts now (changes before now were not journaled, so older cursors must resync)."""
        key = {"pk": {"S": _index_pk(f"p#{prefix}")}, "sk": {"S": JOURNAL_MARKER_SK}}
        values = {":now": {"N": f"{now:.3f}"}, ":until": {"N": f"{until:.3f}"}, ":ttl": {"N": str(int(until) + 1)}}
        with dynamodb_errors():
            refused = self._update(
                key,
                UpdateExpression="SET since = if_not_exists(since, :now), #until = :until, #ttl = :ttl",
                ConditionExpression="attribute_not_exists(#until) OR (#until >= :now AND #until < :until)",
                ExpressionAttributeNames={"#until": "until", "#ttl": "ttl"},
                ExpressionAttributeValues=values,
            )
        if refused is None:
            journal = self.journal_of(prefix)
            return journal if journal is not None else Journal(since=now, until=until)
        live = float(refused["until"]["N"]) >= now
        if live:
            return Journal(since=float(refused["since"]["N"]), until=float(refused["until"]["N"]))
        with dynamodb_errors():
            self._client.put_item(
                TableName=self._table,
                Item={**key, "since": values[":now"], "until": values[":until"], "ttl": values[":ttl"]},
            )
        return Journal(since=now, until=until)

    def journal_of(self, prefix: str) -> Journal | None:
        with dynamodb_errors():
            item = self._client.get_item(
                TableName=self._table,
                Key={"pk": {"S": _index_pk(f"p#{prefix}")}, "sk": {"S": JOURNAL_MARKER_SK}},
                ConsistentRead=True,
            ).get("Item")
        if item is None:
            return None
        return Journal(since=float(item["since"]["N"]), until=float(item["until"]["N"]))

    def journal_if_kept(self, prefix: str, notes: list[ChangeNote], now: float) -> bool:
        """Journal `notes` under `prefix` if the prefix is watched or its journal is live (True then). One
        Query: the marker sorts last in the index partition, so the newest item is it, or else a watcher."""
        with dynamodb_errors():
            items = self._client.query(
                TableName=self._table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": _index_pk(f"p#{prefix}")}},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            ).get("Items", [])
        if not items:
            return False
        newest = items[0]
        if newest["sk"]["S"] == JOURNAL_MARKER_SK and float(newest["until"]["N"]) < now:
            return False
        ttl = {"N": str(int(now + RESUME_RETENTION_SECONDS + 2 * CLOCK_MARGIN_SECONDS))}
        entries = [
            {
                "pk": {"S": _journal_pk(prefix)},
                "sk": {"S": f"{_millis(now)}#{note.key}#{note.version:012d}"},
                "key": {"S": note.key},
                "version": {"N": str(note.version)},
                "ttl": ttl,
            }
            for note in notes
        ]
        with dynamodb_errors():
            write_all(self._client, self._table, [{"PutRequest": {"Item": entry}} for entry in entries])
        return True

    def journal(self, prefix: str, after: float, limit: int) -> list[tuple[str, int]]:
        """(key, version) of the changes journaled under `prefix` since `after`, oldest first, at most `limit`."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk >= :after",
            "ExpressionAttributeValues": {":pk": {"S": _journal_pk(prefix)}, ":after": {"S": _millis(after)}},
            "ProjectionExpression": "#k, version",
            "ExpressionAttributeNames": {"#k": "key"},
            "ConsistentRead": True,
            "Limit": limit,
        }
        found: list[tuple[str, int]] = []
        while len(found) < limit:
            with dynamodb_errors():
                response = self._client.query(**request)
            found += [(item["key"]["S"], int(item["version"]["N"])) for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                break
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
            request["Limit"] = limit - len(found)
        return found[:limit]

    # -------------------------------------------------------------------------------------- watermarks
    def _update(self, key: dict[str, Any], **request: Any) -> dict[str, Any] | None:
        """The conditional update; None when it held, the item as it was when the condition failed."""
        try:
            # A table that is slow, throttling or out of the invocation's time is ServiceUnavailable, as on every
            # other store: the socket handler then answers the subscription's `error` 503 (docs/watch.md), not
            # API Gateway's id-less "Internal server error".
            with dynamodb_errors():
                self._client.update_item(
                    TableName=self._table, Key=key, ReturnValuesOnConditionCheckFailure="ALL_OLD", **request
                )
        except ClientError as error:
            if _failed(error):
                item: dict[str, Any] = dict(error.response.get("Item") or {})  # type: ignore[call-overload]
                return item
            raise
        return None

    def claim(self, s: Subscription, key: str, version: int, token: str, now: float) -> Watermark | None:
        """Claim `version` for sending: None when claimed (or claimed before with the same token), else
        the watermark that refused it (delivered past it, a live lease, a gap, or a key subscription whose
        start was never recorded: its subscribe died before answering, and the client subscribes again)."""
        # Only a prefix subscription meets a key it has sent nothing of yet; a key subscription's watermark
        # gets its start from the subscribe handler.
        # A resumed prefix subscription starts each key where its client left off, never at the first version
        # it meets: a watermark it has not got yet is a gap the deliverer fills under the lease.
        first = "attribute_not_exists(delivered) OR " if s.prefix is not None and s.resumed_from is None else ""
        refused = self._update(
            _watermark_key(s, key),
            UpdateExpression="SET delivered = :v, claim = :token",
            ConditionExpression=(
                f"({first}delivered = :prev OR (delivered = :v AND claim = :token))"
                " AND (attribute_not_exists(lease_until) OR lease_until < :now)"
            ),
            ExpressionAttributeValues={
                ":v": {"N": str(version)},
                ":prev": {"N": str(version - 1)},
                ":token": {"S": token},
                ":now": {"N": f"{now:.3f}"},
            },
        )
        return None if refused is None else _watermark(refused)

    def unclaim(self, s: Subscription, key: str, version: int, token: str) -> None:
        """Give back a claimed version whose message could not be posted; the next change catches up."""
        self._update(
            _watermark_key(s, key),
            UpdateExpression="SET delivered = :prev, pending = :v REMOVE claim",
            ConditionExpression="delivered = :v AND claim = :token",
            ExpressionAttributeValues={
                ":v": {"N": str(version)},
                ":prev": {"N": str(version - 1)},
                ":token": {"S": token},
            },
        )

    def take_lease(self, s: Subscription, key: str, token: str, until: float, now: float) -> Watermark | None:
        """The watermark's lease for `token` (the watermark as it is then), or None while another holds it."""
        try:
            with dynamodb_errors():
                response = self._client.update_item(
                    TableName=self._table,
                    Key=_watermark_key(s, key),
                    UpdateExpression="SET lease_by = :token, lease_until = :until",
                    ConditionExpression="attribute_not_exists(lease_until) OR lease_until < :now OR lease_by = :token",
                    ExpressionAttributeValues={
                        ":token": {"S": token},
                        ":until": {"N": f"{until:.3f}"},
                        ":now": {"N": f"{now:.3f}"},
                    },
                    ReturnValues="ALL_NEW",
                )
        except ClientError as error:
            if _failed(error):
                return None
            raise
        return _watermark(response.get("Attributes"))

    def start_at(self, s: Subscription, key: str, version: int, token: str) -> None:
        """Under the lease: the version the subscription starts after, unless the watermark is already past it."""
        self._update(
            _watermark_key(s, key),
            UpdateExpression="SET delivered = :v",
            ConditionExpression="lease_by = :token AND (attribute_not_exists(delivered) OR delivered < :v)",
            ExpressionAttributeValues={":v": {"N": str(version)}, ":token": {"S": token}},
        )

    def renew(self, s: Subscription, key: str, token: str, delivered: int, until: float) -> None:
        """Extend the lease before a post, only while the watermark is where its holder left it. A lease that
        ran out let a live change be claimed and sent; the holder must then not send it too."""
        refused = self._update(
            _watermark_key(s, key),
            UpdateExpression="SET lease_until = :until",
            ConditionExpression="lease_by = :token AND (delivered = :d OR attribute_not_exists(delivered))",
            ExpressionAttributeValues={
                ":token": {"S": token},
                ":d": {"N": str(delivered)},
                ":until": {"N": f"{until:.3f}"},
            },
        )
        if refused is not None:
            raise LeaseLost(f"the lease of {key} for subscription {s.subscription_id} ran out and was taken over")

    def advance(self, s: Subscription, key: str, version: int, token: str) -> None:
        refused = self._update(
            _watermark_key(s, key),
            UpdateExpression="SET delivered = :v, claim = :token",
            ConditionExpression="lease_by = :token",
            ExpressionAttributeValues={":v": {"N": str(version)}, ":token": {"S": token}},
        )
        if refused is not None:
            raise LeaseLost(f"the lease of {key} for subscription {s.subscription_id} was lost")

    def note_pending(self, s: Subscription, key: str, version: int, now: float) -> bool:
        """Tell the lease holder that `version` is waiting; False when no lease is live any more."""
        refused = self._update(
            _watermark_key(s, key),
            UpdateExpression="SET pending = :v",
            ConditionExpression="lease_until >= :now AND (attribute_not_exists(pending) OR pending < :v)",
            ExpressionAttributeValues={":v": {"N": str(version)}, ":now": {"N": f"{now:.3f}"}},
        )
        if refused is None:
            return True
        # Refused because a higher version is already pending (fine: it covers this one) or the lease went.
        mark = _watermark(refused)
        return mark.lease_by is not None and (mark.lease_until or 0) >= now and (mark.pending or 0) >= version

    def release(self, s: Subscription, key: str, token: str) -> int | None:
        """Let the lease go, unless a version past the delivered one is pending: then that version."""
        refused = self._update(
            _watermark_key(s, key),
            UpdateExpression="REMOVE lease_by, lease_until, pending",
            ConditionExpression="lease_by = :token AND (attribute_not_exists(pending) OR pending <= delivered)",
            ExpressionAttributeValues={":token": {"S": token}},
        )
        if refused is None:
            return None
        mark = _watermark(refused)
        if mark.lease_by != token:
            raise LeaseLost(f"the lease of {key} for subscription {s.subscription_id} was lost")
        return mark.pending

    def clear_watermark(self, s: Subscription, key: str, token: str) -> None:
        """Empty a watermark while holding its lease (one a lease made for a subscription that is gone), so
        that a new subscription of the same id starts on it afresh. An UpdateItem: the roles may not delete."""
        self._update(
            _watermark_key(s, key),
            UpdateExpression="REMOVE delivered, claim, lease_by, lease_until, pending",
            ConditionExpression="lease_by = :token",
            ExpressionAttributeValues={":token": {"S": token}},
        )

    def mark_behind(self, s: Subscription, key: str, version: int) -> None:
        """`version` is waiting, whoever holds the lease: the sweep (or the key's next change) sends it."""
        self._update(
            _watermark_key(s, key),
            UpdateExpression="SET pending = :v",
            ConditionExpression="attribute_not_exists(pending) OR pending < :v",
            ExpressionAttributeValues={":v": {"N": str(version)}},
        )

    def behind(self, now: float) -> Iterator[tuple[Subscription, str]]:
        """Watermarks with a version pending past the delivered one and no live lease (a scan: the sweep's)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "FilterExpression": (
                "begins_with(sk, :w) AND attribute_exists(pending)"
                " AND (attribute_not_exists(delivered) OR pending > delivered)"
                " AND (attribute_not_exists(lease_until) OR lease_until < :now)"
            ),
            "ExpressionAttributeValues": {":w": {"S": "w#"}, ":now": {"N": f"{now:.3f}"}},
        }
        for response in self._client.get_paginator("scan").paginate(**request):
            for item in response.get("Items", []):
                connection_id = item["pk"]["S"][2:]
                subscription_id, key = item["sk"]["S"][2:].split("#", 1)
                found = self.subscription(connection_id, subscription_id)
                if found is not None:
                    yield found, key
