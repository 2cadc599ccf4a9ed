"""The emulator canary: the serialized moto server behaves like DynamoDB
where the core's correctness depends on it. If one of these fails, every test that
relies on conditional writes is testing moto's races, not our code.
"""

from __future__ import annotations

import base64
import json
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


# ----------------------------------------------------------------------------------- the stream's records
@pytest.fixture(scope="module")
def plain_moto() -> Iterator[str]:
    """moto's own server, unchanged, in a process of its own (the emulator's changes are process-wide)."""
    import socket
    import subprocess
    import sys
    import time

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _stream_records(endpoint: str, state_template: Any) -> tuple[str, list[dict[str, Any]]]:
    """Writes of every attribute type, then the answer's Content-Type and the stream's records as boto3
    reads them."""
    kwargs = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    ddb, streams = boto3.client("dynamodb", **kwargs), boto3.client("dynamodbstreams", **kwargs)
    table = f"records-{uuid.uuid4().hex[:8]}"
    ddb.create_table(**state_template.table_create_kwargs("StateTable", table))
    item = {
        "pk": {"S": "k"},
        "sk": {"S": "state"},
        "n": {"N": "12.5"},
        "b": {"B": b"\x00\xffbytes"},
        "flag": {"BOOL": True},
        "nothing": {"NULL": True},
        "list": {"L": [{"S": "a"}, {"N": "1"}, {"B": b"\x01"}]},
        "map": {"M": {"inner": {"S": "x"}, "bin": {"B": b"\x02"}, "deeper": {"M": {"n": {"N": "3"}}}}},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2"]},
        "bs": {"BS": [b"\x03", b"\x04"]},
    }
    ddb.put_item(TableName=table, Item=item)
    ddb.put_item(TableName=table, Item={**item, "n": {"N": "13"}})
    ddb.delete_item(TableName=table, Key={"pk": {"S": "k"}, "sk": {"S": "state"}})
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    answer = streams.get_records(ShardIterator=iterator["ShardIterator"], Limit=10)
    records = answer["Records"]
    for record in records:
        # What differs between two runs: a random id, the time of the write, and the size moto estimates
        # from the record with that time in it.
        assert record.pop("eventID")
        assert record["dynamodb"].pop("ApproximateCreationDateTime").year >= 2026
        assert record["dynamodb"].pop("SizeBytes") > 0
    return answer["ResponseMetadata"]["HTTPHeaders"]["content-type"], records


def test_the_emulator_answers_get_records_as_moto_itself_does(moto_server, plain_moto, state_template):
    content_type, ours = _stream_records(moto_server, state_template)

    assert [record["eventName"] for record in ours] == ["INSERT", "MODIFY", "REMOVE"]
    assert content_type == "application/x-amz-json-1.0"
    assert (content_type, ours) == _stream_records(plain_moto, state_template)


def _queued_events(endpoint: str) -> list[dict[str, Any]]:
    """Events put on a bus whose rule sends them to a queue, as the queue holds them."""
    kwargs = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    events, sqs = boto3.client("events", **kwargs), boto3.client("sqs", **kwargs)
    name = f"events-{uuid.uuid4().hex[:8]}"
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.create_event_bus(Name=name)
    events.put_rule(Name=name, EventBusName=name, EventPattern=json.dumps({"source": ["state.test"]}))
    events.put_targets(Rule=name, EventBusName=name, Targets=[{"Id": "queue", "Arn": arn}])
    details = [{"key": f"k{n}", "value": {"list": [1, "two", None], "n": n}} for n in range(3)]
    entries = [
        {"Source": "state.test", "DetailType": "StateChanged", "Detail": json.dumps(d), "EventBusName": name,
         "Resources": [f"arn:aws:dynamodb:us-east-1:123456789012:table/t/{n}"]}
        for n, d in enumerate(details)
    ]  # fmt: skip
    for _ in range(2):  # the second time through paths the first one compiled
        assert events.put_events(Entries=entries)["FailedEntryCount"] == 0
    # The queue's counts, which sending a message no longer computes, are still its own when asked for.
    counts = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    bodies: list[Any] = [counts]
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            body = json.loads(message["Body"])
            # What differs between two runs: the event's id and when it was put.
            assert body.pop("id")
            assert body.pop("time")
            bodies.append(body)
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return [bodies[0], *sorted(bodies[1:], key=json.dumps)]


def test_the_emulator_sends_events_to_a_rules_queue_as_moto_itself_does(moto_server, plain_moto):
    counts, *ours = _queued_events(moto_server)

    assert counts["ApproximateNumberOfMessages"] == "6"
    assert len(ours) == 6
    assert {body["detail"]["key"] for body in ours} == {"k0", "k1", "k2"}
    assert [counts, *ours] == _queued_events(plain_moto)


# ----------------------------------------------------------------------------------------------- queries
def _query_answers(endpoint: str, state_template: Any) -> list[dict[str, Any]]:
    """Queries of every shape the service makes, and a few more, over a table of several partitions."""
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    table = f"queries-{uuid.uuid4().hex[:8]}"
    kwargs = state_template.table_create_kwargs("StateTable", table)
    kwargs.pop("SSESpecification", None)  # a KMS key of the local stack's, absent from plain moto
    ddb.create_table(**kwargs)
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    ddb.create_table(
        TableName=plain,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for n in range(4):
        ddb.put_item(TableName=plain, Item={"pk": {"S": f"p{n}"}, "n": {"N": str(n)}})
    # Written out of order, in several partitions, with range keys that sort differently as text and numbers.
    for sk in ["v#0010", "v#0002", "state", "v#0001", "~journal", "v#0100", "a", "v#0003"]:
        for pk in ["b", "a", "c:d"]:
            ddb.put_item(
                TableName=table,
                Item={
                    "pk": {"S": pk},
                    "sk": {"S": sk},
                    "n": {"N": str(len(sk))},
                    "list_shard": {"S": f"s{len(sk) % 2}"},
                    "version": {"N": "1"},
                },
            )
    queries: list[dict[str, Any]] = [
        {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "a"}}},
        {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "nobody"}}},
        {
            "KeyConditionExpression": "pk = :pk AND sk < :m",
            "ExpressionAttributeValues": {":pk": {"S": "b"}, ":m": {"S": "~journal"}},
            "ProjectionExpression": "sk, n",
            "ConsistentRead": True,
        },
        {
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": "c:d"}},
            "ScanIndexForward": False,
            "Limit": 1,
        },
        {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :v)",
            "ExpressionAttributeValues": {":pk": {"S": "a"}, ":v": {"S": "v#"}, ":big": {"N": "5"}},
            "FilterExpression": "n >= :big",
            "ScanIndexForward": False,
        },
        {
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":pk": {"S": "a"}, ":lo": {"S": "v#0002"}, ":hi": {"S": "v#0010"}},
            "Select": "COUNT",
        },
        {
            "KeyConditionExpression": "pk = :pk AND sk >= :after",
            "ExpressionAttributeValues": {":pk": {"S": "b"}, ":after": {"S": "v#0002"}},
            "Limit": 2,
            "ExclusiveStartKey": {"pk": {"S": "b"}, "sk": {"S": "v#0002"}},
        },
        {
            "IndexName": "ListIndex",
            "KeyConditionExpression": "list_shard = :s AND pk > :after",
            "ExpressionAttributeValues": {":s": {"S": "s0"}, ":after": {"S": "a"}},
        },
    ]
    answers = []
    for query in queries:
        answers.append(ddb.query(TableName=table, **query))
    while True:  # paged, two at a time, to the end
        page = ddb.query(
            TableName=table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "a"}},
            Limit=2,
            **({"ExclusiveStartKey": answers[-1]["LastEvaluatedKey"]} if "LastEvaluatedKey" in answers[-1] else {}),
        )
        answers.append(page)
        if "LastEvaluatedKey" not in page:
            break
    answers.append(
        ddb.query(TableName=plain, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "p2"}})
    )
    for answer in answers:
        answer.pop("ResponseMetadata")
    return answers


def test_the_emulator_answers_queries_as_moto_itself_does(moto_server, plain_moto, state_template):
    ours = _query_answers(moto_server, state_template)

    assert [item["sk"]["S"] for item in ours[0]["Items"]] == sorted(
        ["v#0010", "v#0002", "state", "v#0001", "~journal", "v#0100", "a", "v#0003"]
    )
    assert ours == _query_answers(plain_moto, state_template)


# ----------------------------------------------------------------------------------------------- updates
def _update_answers(endpoint: str) -> list[Any]:
    """UpdateItems with the same expressions again and again (new values, other items), refused ones among
    them, as the watch's claims and the state writes make them; each answer or error as boto3 reads it."""
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    table = "updates"  # one of this name on each server: answers name their table
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    claim = {
        "UpdateExpression": "SET delivered = :v, claim = :token",
        "ConditionExpression": "(attribute_not_exists(delivered) OR delivered = :prev OR (delivered = :v AND"
        " claim = :token)) AND (attribute_not_exists(lease_until) OR lease_until < :now)",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    write = {
        "UpdateExpression": "SET #version = if_not_exists(#version, :zero) + :one, #value = :value,"
        " #tags = list_append(if_not_exists(#tags, :empty), :tag) REMOVE #gone, #deleted",
        "ExpressionAttributeNames": {
            "#version": "version",
            "#value": "value",
            "#tags": "tags",
            "#gone": "gone",
            "#deleted": "deleted",
        },
        "ConditionExpression": "attribute_not_exists(#deleted) AND (attribute_not_exists(#version) OR #version < :ten)",
    }
    requests: list[dict[str, Any]] = []
    for n in range(3):
        for item in ("a", "b"):
            for version in (n + 1, n + 1, n + 3):  # a claim, the same claim again, a gap
                requests.append(
                    {
                        **claim,
                        "Key": {"pk": {"S": f"c#{item}"}, "sk": {"S": "w#s#k"}},
                        "ExpressionAttributeValues": {
                            ":v": {"N": str(version)},
                            ":prev": {"N": str(version - 1)},
                            ":token": {"S": f"t{version}"},
                            ":now": {"N": str(n)},
                        },
                        "ReturnValues": ["NONE", "ALL_NEW", "UPDATED_OLD"][n],
                    }
                )
            requests.append(
                {
                    **write,
                    "Key": {"pk": {"S": item}, "sk": {"S": "state"}},
                    "ExpressionAttributeValues": {
                        ":zero": {"N": "0"},
                        ":one": {"N": "1"},
                        ":ten": {"N": "10"},
                        ":value": {"B": bytes([n, 255])},
                        ":empty": {"L": []},
                        ":tag": {"L": [{"S": f"n{n}"}]},
                    },
                    "ReturnValues": ["ALL_NEW", "UPDATED_NEW", "ALL_OLD"][n],
                }
            )
    key = {"pk": {"S": "a"}, "sk": {"S": "state"}}
    for _ in range(2):  # what moto refuses, it refuses every time
        requests += [
            {"Key": key, "UpdateExpression": "SET delivered = = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}},
            {"Key": key, "UpdateExpression": "SET x = :v REMOVE", "ExpressionAttributeValues": {":v": {"N": "1"}}},
            # Two clauses of one kind: refused by the pass that counts them, whose search the emulator speeds up.
            {"Key": key, "UpdateExpression": "SET x = :v SET y = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}},
            {"Key": key, "UpdateExpression": "REMOVE x REMOVE y"},
        ]
    answers: list[Any] = []
    for request in requests:
        try:
            answer = ddb.update_item(TableName=table, **request)
            answer.pop("ResponseMetadata")
            answers.append(answer)
        except ClientError as error:
            answers.append((error.response["Error"], error.response.get("Item")))
    answers.append(ddb.scan(TableName=table, ConsistentRead=True)["Items"])
    return answers


def test_the_emulator_answers_updates_as_moto_itself_does(moto_server, plain_moto):
    ours = _update_answers(moto_server)

    refused = [answer for answer in ours if isinstance(answer, tuple)]
    assert {error["Code"] for error, _ in refused} == {"ConditionalCheckFailedException", "ValidationException"}
    assert ours == _update_answers(plain_moto)


# ---------------------------------------------------------------------------------------- item operations
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _item_operation_requests(table: str) -> list[tuple[str, dict[str, Any]]]:
    """DynamoDB's item operations as the wire carries them (blobs base64-encoded), with every kind of answer:
    hits and misses, each ReturnValues, pages, capacities, and a few refusals."""
    key = {"pk": {"S": "k"}, "sk": {"S": "state"}}
    item = {
        **key,
        "s": {"S": "text é"},
        "empty": {"S": ""},
        "n": {"N": "12.50"},
        "b": {"B": _b64(b"\x00\xffbytes")},
        "flag": {"BOOL": False},
        "nothing": {"NULL": True},
        "list": {"L": [{"S": "a"}, {"N": "1"}, {"B": _b64(b"\x01")}, {"L": []}]},
        "map": {"M": {"inner": {"S": "x"}, "bin": {"B": _b64(b"\x02")}, "deeper": {"M": {"n": {"N": "3"}}}}},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.5"]},
        "bs": {"BS": [_b64(b"\x03"), _b64(b"\x04")]},
        "g": {"S": "gsi"},
    }
    missing = {"pk": {"S": "nobody"}, "sk": {"S": "state"}}
    rows = [{"pk": {"S": "q"}, "sk": {"S": f"v#{n}"}, "n": {"N": str(n)}, "g": {"S": "gsi"}} for n in range(5)]
    update = {
        "UpdateExpression": "SET #n = #n + :one, #map.#inner = :s, #list = list_append(#list, :more), #b = :b"
        " ADD #ns :ns, #ss :ss REMOVE #nothing",
        "ExpressionAttributeNames": {
            "#n": "n",
            "#map": "map",
            "#inner": "inner",
            "#list": "list",
            "#b": "b",
            "#ns": "ns",
            "#ss": "ss",
            "#nothing": "nothing",
        },
        "ExpressionAttributeValues": {
            ":one": {"N": "1"},
            ":s": {"S": "y"},
            ":more": {"L": [{"B": _b64(b"\x05")}]},
            ":b": {"B": _b64(b"new")},
            ":ns": {"NS": ["7"]},
            ":ss": {"SS": ["c"]},
        },
    }
    query = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "q"}}}
    requests: list[tuple[str, dict[str, Any]]] = [
        ("PutItem", {"Item": item}),
        ("PutItem", {"Item": item, "ReturnValues": "ALL_OLD", "ReturnConsumedCapacity": "TOTAL"}),
        ("PutItem", {"Item": {**item, "pk": {"S": "new"}}, "ReturnValues": "ALL_OLD"}),
        *[("PutItem", {"Item": row}) for row in rows],
        ("GetItem", {"Key": key}),
        ("GetItem", {"Key": missing}),
        ("GetItem", {"Key": key, "ConsistentRead": True, "ReturnConsumedCapacity": "TOTAL"}),
        ("GetItem", {"Key": missing, "ReturnConsumedCapacity": "INDEXES"}),
        (
            "GetItem",
            {
                "Key": key,
                "ProjectionExpression": "#b, #map.bin, #list, #bs, #n",
                "ExpressionAttributeNames": {"#b": "b", "#map": "map", "#list": "list", "#bs": "bs", "#n": "n"},
            },
        ),
        *[
            ("UpdateItem", {"Key": key, **update, "ReturnValues": values})
            for values in ("NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW")
        ],
        *[
            (
                "UpdateItem",
                {
                    "Key": {"pk": {"S": f"fresh-{values}"}, "sk": {"S": "state"}},
                    "ReturnValues": values,
                    "UpdateExpression": "SET #v = :v",
                    "ExpressionAttributeNames": {"#v": "v"},
                    "ExpressionAttributeValues": {":v": {"N": "1"}},
                },
            )
            for values in ("ALL_OLD", "UPDATED_OLD", "UPDATED_NEW", "ALL_NEW")
        ],
        (
            "UpdateItem",
            {
                "Key": key,
                "UpdateExpression": "SET #flag = :t",
                "ExpressionAttributeNames": {"#flag": "flag"},
                "ExpressionAttributeValues": {":t": {"BOOL": True}},
                "ReturnConsumedCapacity": "TOTAL",
            },
        ),
        ("DeleteItem", {"Key": {"pk": {"S": "new"}, "sk": {"S": "state"}}, "ReturnValues": "ALL_OLD"}),
        ("DeleteItem", {"Key": missing, "ReturnValues": "ALL_OLD"}),
        ("DeleteItem", {"Key": {"pk": {"S": "fresh-NONE"}, "sk": {"S": "state"}}, "ReturnConsumedCapacity": "TOTAL"}),
        ("Query", {**query, "Limit": 2, "ScanIndexForward": False, "ReturnConsumedCapacity": "TOTAL"}),
        ("Query", {**query, "Limit": 2, "ExclusiveStartKey": {"pk": {"S": "q"}, "sk": {"S": "v#1"}}}),
        ("Query", {**query, "Select": "COUNT"}),
        ("Query", {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "nobody"}}}),
        (
            "Query",
            {
                "IndexName": "by_g",
                "KeyConditionExpression": "g = :g",
                "ExpressionAttributeValues": {":g": {"S": "gsi"}},
                "ReturnConsumedCapacity": "INDEXES",
            },
        ),
        ("Scan", {"Limit": 3}),
        ("Scan", {"ConsistentRead": True, "FilterExpression": "attribute_exists(b)"}),
        (
            "BatchWriteItem",
            {
                "RequestItems": {
                    "{table}": [
                        {"PutRequest": {"Item": {"pk": {"S": "batch"}, "sk": {"S": "1"}, "b": {"B": _b64(b"\x06")}}}},
                        {"DeleteRequest": {"Key": {"pk": {"S": "q"}, "sk": {"S": "v#4"}}}},
                    ]
                }
            },
        ),
        (
            "BatchGetItem",
            {
                "RequestItems": {"{table}": {"Keys": [key, missing, {"pk": {"S": "batch"}, "sk": {"S": "1"}}]}},
                "ReturnConsumedCapacity": "TOTAL",
            },
        ),
        ("BatchGetItem", {"RequestItems": {"{table}": {"Keys": [key], "ProjectionExpression": "b, ss"}}}),
        (
            "TransactWriteItems",
            {
                "TransactItems": [
                    {
                        "Put": {
                            "TableName": "{table}",
                            "Item": {"pk": {"S": "tx"}, "sk": {"S": "1"}, "bs": {"BS": [_b64(b"x")]}},
                        }
                    },
                    {
                        "Update": {
                            "TableName": "{table}",
                            "Key": key,
                            "UpdateExpression": "SET tx = :t",
                            "ExpressionAttributeValues": {":t": {"S": "yes"}},
                        }
                    },
                    {"Delete": {"TableName": "{table}", "Key": {"pk": {"S": "q"}, "sk": {"S": "v#3"}}}},
                    {
                        "ConditionCheck": {
                            "TableName": "{table}",
                            "Key": {"pk": {"S": "q"}, "sk": {"S": "v#0"}},
                            "ConditionExpression": "attribute_exists(pk)",
                        }
                    },
                ]
            },
        ),
        (
            "TransactGetItems",
            {
                "TransactItems": [
                    {"Get": {"TableName": "{table}", "Key": key}},
                    {"Get": {"TableName": "{table}", "Key": missing}},
                    {"Get": {"TableName": "{table}", "Key": {"pk": {"S": "tx"}, "sk": {"S": "1"}}}},
                ],
                "ReturnConsumedCapacity": "TOTAL",
            },
        ),
        ("TransactGetItems", {"TransactItems": [{"Get": {"TableName": "{table}", "Key": missing}}]}),
        # Refusals: moto's own answers, through its own path.
        (
            "PutItem",
            {
                "Item": item,
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            },
        ),
        (
            "UpdateItem",
            {"Key": key, "UpdateExpression": "SET n = = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}},
        ),
        (
            "TransactWriteItems",
            {
                "TransactItems": [
                    {
                        "ConditionCheck": {
                            "TableName": "{table}",
                            "Key": missing,
                            "ConditionExpression": "attribute_exists(pk)",
                        }
                    },
                ]
            },
        ),
        ("GetItem", {"TableName": "absent", "Key": key}),
        ("Scan", {}),
    ]
    # Each request names the table, in its body or in its batches' and transaction's items.
    batched = ("BatchWriteItem", "BatchGetItem", "TransactWriteItems", "TransactGetItems")
    named = [
        (operation, body if operation in batched else {"TableName": table, **body}) for operation, body in requests
    ]
    return [(operation, json.loads(json.dumps(body).replace("{table}", table))) for operation, body in named]


def _a_set(value: dict[str, Any]) -> dict[str, Any]:
    """A set attribute in one order: a set is unordered, and moto's ADD to one leaves it in the order of a Python
    set of strings, which differs from process to process."""
    if len(value) == 1 and next(iter(value)) in ("SS", "NS", "BS"):
        return {kind: sorted(members) for kind, members in value.items()}
    return value


def _item_operation_answers(endpoint: str, table: str) -> list[tuple[str, int, str, Any]]:
    """Each request's answer as the wire carries it: status, Content-Type and the body's JSON."""
    import requests

    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "g", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by_g",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    answers = []
    with requests.Session() as session:
        for operation, body in _item_operation_requests(table):
            response = session.post(
                endpoint,
                data=json.dumps(body),
                headers={
                    "X-Amz-Target": f"DynamoDB_20120810.{operation}",
                    "Content-Type": "application/x-amz-json-1.0",
                    "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/dynamodb/aws4_request,"
                    " SignedHeaders=host, Signature=0",
                },
                timeout=30,
            )
            # Numbers keep their kind: 1 and 1.0 are equal in Python, not to a client reading a double.
            body = json.loads(
                response.text, parse_int=lambda n: f"int {n}", parse_float=lambda n: f"float {n}", object_hook=_a_set
            )
            answers.append((operation, response.status_code, response.headers.get("Content-Type", ""), body))
    ddb.delete_table(TableName=table)
    return answers


def test_the_emulator_answers_item_operations_as_moto_itself_does(moto_server, plain_moto):
    from moto.dynamodb.responses import DynamoHandler

    from devstack.moto_server import answer_item_operations_as_json

    table = f"items-{uuid.uuid4().hex[:8]}"  # one of this name on each server: answers name their table
    ours = _item_operation_answers(moto_server, table)

    assert getattr(DynamoHandler.serialized, "answers_as_json", False)  # the emulator's own answers, not moto's
    applied = DynamoHandler.serialized
    answer_item_operations_as_json()  # as every other server in the process starts: once is enough
    assert DynamoHandler.serialized is applied
    assert {status for _, status, _, _ in ours} == {200, 400}
    assert [body["Count"] for operation, _, _, body in ours if operation == "Query"] == [
        "int 2", "int 2", "int 5", "int 0", "int 6"
    ]  # fmt: skip
    assert ours == _item_operation_answers(plain_moto, table)


# ----------------------------------------------------------------------------------- its process
OUTLIVING_PARENT = """
import signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as the stack's main process: it stops on its own terms
from devstack.moto_server import MotoProcess
moto = MotoProcess().start()
print(moto.endpoint_url, flush=True)
sys.stdin.readline()
moto.stop()
"""


def test_the_emulator_outlives_a_signal_to_its_parents_process_group_until_its_parent_stops_it():
    """`make dev`'s Ctrl-C and a test's stop signal the stack's whole process group; the emulator must still
    answer while the stack stops (the WebSocket connections' $disconnect writes to it), then stop."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests

    from devstack.template import REPO_ROOT

    parent = subprocess.Popen(
        [sys.executable, "-c", OUTLIVING_PARENT],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdin is not None
        url = parent.stdout.readline().strip()
        assert requests.get(f"{url}/moto-api/", timeout=10).ok
        os.killpg(parent.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert requests.get(f"{url}/moto-api/", timeout=10).ok
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.wait(timeout=30) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/moto-api/", timeout=10)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
