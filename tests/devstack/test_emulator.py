"""The emulator canary: the serialized moto server behaves like DynamoDB
where the core's correctness depends on it. If one of these fails, every test that
relies on conditional writes is testing moto's races, not our code.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration

THREADS = 50
RUNS = 20


@pytest.fixture(scope="module")
def ddb(moto_server: str) -> Any:
    # One client shared by all threads (botocore clients are thread-safe), with a
    # connection per thread so the requests really arrive together.
    return boto3.client(
        "dynamodb",
        endpoint_url=moto_server,
        region_name="us-east-1",
        config=Config(max_pool_connections=THREADS + 10, retries={"max_attempts": 1}),
    )


@pytest.fixture
def canary_table(ddb: Any, state_template: Any) -> Iterator[str]:
    # A fresh table per test, defined by template.yaml: moto copies the whole table
    # on a failed transaction, so a table shared with other tests would slow this down.
    name = f"canary-{uuid.uuid4().hex[:8]}"
    ddb.create_table(**state_template.table_create_kwargs("StateTable", name))
    yield name
    ddb.delete_table(TableName=name)


def _run_together(count: int, work: Any) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_create_only_conditional_write_has_exactly_one_winner_in_every_run(ddb: Any, canary_table: str) -> None:
    # Given 50 threads racing to create the same key with attribute_not_exists(pk)
    winners_per_run = []
    for _ in range(RUNS):
        pk = f"race-{uuid.uuid4().hex}"

        def create(i: int, pk: str = pk) -> str:
            try:
                ddb.put_item(
                    TableName=canary_table,
                    Item={"pk": {"S": pk}, "sk": {"S": "state"}, "writer": {"N": str(i)}},
                    ConditionExpression="attribute_not_exists(#pk)",
                    ExpressionAttributeNames={"#pk": "pk"},
                )
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
            return "won"

        # When they all write at once
        results = _run_together(THREADS, create)
        winners = [i for i, outcome in enumerate(results) if outcome == "won"]
        assert set(results) <= {"won", "ConditionalCheckFailedException"}
        # Then exactly one wins, and the stored item is the winner's
        item = ddb.get_item(TableName=canary_table, Key={"pk": {"S": pk}, "sk": {"S": "state"}}, ConsistentRead=True)[
            "Item"
        ]
        assert len(winners) == 1
        assert item["writer"]["N"] == str(winners[0])
        winners_per_run.append(len(winners))
    assert winners_per_run == [1] * RUNS


def test_failing_transactions_never_lose_acknowledged_writes(ddb: Any, canary_table: str) -> None:
    # Given writers that acknowledge each distinct item they wrote, and beside them
    # threads whose TransactWriteItems fail a condition (moto restores a copy of the
    # table when a transaction fails, which would erase concurrent writes)
    run_id = uuid.uuid4().hex[:8]
    writers, items_per_writer, transactors = 6, 15, 4
    acknowledged: dict[str, str] = {}
    ack_lock = threading.Lock()
    writers_done = threading.Event()
    failure_codes: list[str] = []

    def work(i: int) -> None:
        if i < writers:
            for n in range(items_per_writer):
                pk, value = f"ack-{run_id}-{i}-{n}", uuid.uuid4().hex
                ddb.put_item(
                    TableName=canary_table,
                    Item={"pk": {"S": pk}, "sk": {"S": "state"}, "value": {"S": value}},
                )
                with ack_lock:
                    acknowledged[pk] = value
            return
        while not writers_done.is_set():
            try:
                ddb.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": canary_table,
                                "Item": {"pk": {"S": f"tx-{run_id}-{uuid.uuid4().hex}"}, "sk": {"S": "state"}},
                            }
                        },
                        {
                            "ConditionCheck": {
                                "TableName": canary_table,
                                "Key": {"pk": {"S": f"absent-{run_id}"}, "sk": {"S": "state"}},
                                "ConditionExpression": "attribute_exists(pk)",
                            }
                        },
                    ]
                )
            except ClientError as exc:
                with ack_lock:
                    failure_codes.append(str(exc.response["Error"]["Code"]))

    def run(i: int) -> None:
        work(i)

    # When both run at the same time
    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers + transactors)]
    for t in threads:
        t.start()
    for t in threads[:writers]:
        t.join(timeout=60)
    writers_done.set()
    for t in threads[writers:]:
        t.join(timeout=60)

    # Then every acknowledged item is present with its value
    assert failure_codes
    assert set(failure_codes) == {"TransactionCanceledException"}
    assert len(acknowledged) == writers * items_per_writer
    lost = []
    for pk, value in acknowledged.items():
        item = ddb.get_item(
            TableName=canary_table, Key={"pk": {"S": pk}, "sk": {"S": "state"}}, ConsistentRead=True
        ).get("Item")
        if item is None or item["value"]["S"] != value:
            lost.append(pk)
    assert lost == []
