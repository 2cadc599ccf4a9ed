"""The local stand-in for DynamoDB's Time to Live, which moto never runs.

For every table of the template with a ``TimeToLiveSpecification``, a thread finds, every
``STATE_TTL_SWEEP_SECONDS`` (default 1 s), the items whose TTL attribute (epoch seconds) is due, and
deletes them with DeleteItem under the condition that the attribute still holds the value it saw, so an
item rewritten meanwhile survives. It learns which items carry the attribute from the table's stream (an
index kept in memory, from the stream's oldest record on), not by scanning: a Scan every second would
hold the serialized emulator for a time that grows with the table (0.3 s at a few hundred items with
large values), slowing every request of the stack. A table without a stream (the watch table) is scanned,
every ``SCAN_INTERVAL_SECONDS`` (60 s) at most: its items are due a day after their connection's token
expired, and a Scan of a table the watch's load had filled with thousands of items held the emulator for a
tenth of a second, every second.

The deletes show up on the table's stream as REMOVE records with the old image, as DynamoDB's TTL
deletes do, which is what publish_changes acts on: an expiry marker's removal
writes the key's expiry as a version, a history item's removal may release a blob.

DynamoDB deletes due items within days, and a local second instead; the service never depends on when
(expiry is decided at read time), only on the removal arriving eventually.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from devstack.resources import client

DEFAULT_INTERVAL_SECONDS = 1.0
SCAN_INTERVAL_SECONDS = 60.0


class TtlSweeper:
    def __init__(
        self,
        tables: dict[str, str],
        *,
        endpoint_url: str,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        """`tables`: table name -> its TTL attribute."""
        self._tables = tables
        self._ddb = client("dynamodb", endpoint_url)
        self._streams = client("dynamodbstreams", endpoint_url)
        self._stream_arns: dict[str, str | None] = {}
        self._iterators: dict[str, str | None] = {}
        # table -> (pk, sk) -> the item's TTL attribute as the stream last showed it (N text)
        self._index: dict[str, dict[tuple[str, str], str]] = {}
        self._interval = interval_seconds
        self._next_scan: dict[str, float] = {}  # table -> when to scan it next (monotonic)
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ttl-sweeper", daemon=True)
        self.removed = 0

    def start(self) -> TtlSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for table, attribute in self._tables.items():
                try:
                    stream_arn = self._stream_arn(table)
                    if stream_arn is None:
                        if time.monotonic() >= self._next_scan.get(table, 0.0):
                            self._next_scan[table] = time.monotonic() + SCAN_INTERVAL_SECONDS
                            self.sweep(table, attribute)
                    else:
                        self._follow(table, attribute, stream_arn)
                        self._remove_due(table, attribute)
                except Exception as exc:  # the emulator restarting, a table gone: try again next round
                    self._log(f"ttl-sweeper: {table}: {type(exc).__name__}: {exc}")

    def _stream_arn(self, table: str) -> str | None:
        if table not in self._stream_arns:
            self._stream_arns[table] = self._ddb.describe_table(TableName=table)["Table"].get("LatestStreamArn")
        return self._stream_arns[table]

    def _follow(self, table: str, attribute: str, stream_arn: str) -> None:
        """Bring the table's index of TTL-carrying items up to the end of its stream."""
        index = self._index.setdefault(table, {})
        shards = self._streams.describe_stream(StreamArn=stream_arn)["StreamDescription"].get("Shards") or []
        for shard in sorted(shards, key=lambda s: "ParentShardId" in s):
            shard_id = shard["ShardId"]
            if shard_id not in self._iterators:
                self._iterators[shard_id] = self._streams.get_shard_iterator(
                    StreamArn=stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            while self._iterators[shard_id] is not None:
                response = self._streams.get_records(ShardIterator=self._iterators[shard_id], Limit=1000)
                self._iterators[shard_id] = response.get("NextShardIterator")
                records = response.get("Records") or []
                for record in records:
                    ddb = record["dynamodb"]
                    item_key = (ddb["Keys"]["pk"]["S"], ddb["Keys"]["sk"]["S"])
                    due = (ddb.get("NewImage") or {}).get(attribute, {}).get("N")
                    if record["eventName"] == "REMOVE" or due is None:
                        index.pop(item_key, None)
                    else:
                        index[item_key] = due
                if not records:
                    break

    def _remove_due(self, table: str, attribute: str) -> None:
        index = self._index.get(table, {})
        now = time.time()
        for item_key, due in [(k, v) for k, v in index.items() if float(v) <= now]:
            self._delete(table, attribute, {"pk": {"S": item_key[0]}, "sk": {"S": item_key[1]}}, due)
            # Rewritten with another TTL: the stream brings it back into the index.
            index.pop(item_key, None)

    def _delete(self, table: str, attribute: str, key: dict[str, Any], due: str) -> bool:
        try:
            self._ddb.delete_item(
                TableName=table,
                Key=key,
                ConditionExpression="#ttl = :ttl",
                ExpressionAttributeNames={"#ttl": attribute},
                ExpressionAttributeValues={":ttl": {"N": due}},
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False  # rewritten since: not due any more
        self.removed += 1
        return True

    def sweep(self, table: str, attribute: str, now: float | None = None) -> int:
        """Delete the due items of one table found by a Scan (a table without a stream); returns how many."""
        moment = int(now if now is not None else time.time())
        request: dict[str, Any] = {
            "TableName": table,
            "FilterExpression": "#ttl <= :now",
            "ExpressionAttributeNames": {"#ttl": attribute, "#pk": "pk", "#sk": "sk"},
            "ExpressionAttributeValues": {":now": {"N": str(moment)}},
            "ProjectionExpression": "#pk, #sk, #ttl",
        }
        removed = 0
        while True:
            page = self._ddb.scan(**request)
            for item in page.get("Items", []):
                removed += self._delete(table, attribute, {"pk": item["pk"], "sk": item["sk"]}, item[attribute]["N"])
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return removed

    @classmethod
    def for_template(
        cls, template: Any, names: dict[str, str], *, endpoint_url: str, log: Callable[[str], None]
    ) -> TtlSweeper | None:
        tables = {
            names[logical_id]: attribute
            for logical_id in template.tables()
            if (attribute := template.table_ttl_attribute(logical_id))
        }
        if not tables:
            return None
        import os

        interval = float(os.environ.get("STATE_TTL_SWEEP_SECONDS") or DEFAULT_INTERVAL_SECONDS)
        return cls(tables, endpoint_url=endpoint_url, interval_seconds=interval, log=log)
