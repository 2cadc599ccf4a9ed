"""The ordered consumer end to end: real StateChanged events from the local stack's state-changes queue
(HTTP writes -> table -> stream -> publisher -> bus -> rule -> queue), handed to the example Lambda's batch
function shuffled, repeated and with versions dropped; the real client reads the missing versions from the
history API, and the marks live in a DynamoDB table of the stack's emulator."""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack.resources import DUMMY_CREDENTIALS
from state_client import StateClient
from state_client.consumer import (
    Change,
    DynamoDBMarkStore,
    Operation,
    OrderedConsumer,
    Origin,
    create_mark_table,
)
from tests.stack import DevStack

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ordered_consumer" / "app.py"
# Over the event's 64 KB budget: the event says value_omitted and the consumer reads the value.
BIG = "x" * 70_000
VALUE_MARK = "consumer-value-never-logged"


def example_app() -> Any:
    spec = importlib.util.spec_from_file_location("ordered_consumer_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Queue:
    """The stack's state-changes queue, as SQS records the way Lambda hands them to a function."""

    def __init__(self, stack: DevStack) -> None:
        self.sqs = stack.client("sqs")
        self.url = self.sqs.get_queue_url(QueueName="state-service-local-state-changes")["QueueUrl"]
        self.records: list[dict[str, Any]] = []

    def collect(self, expected: dict[str, int], timeout: float = 60.0) -> list[dict[str, Any]]:
        """Receive until every key in `expected` has that many versions; the records of those keys."""
        deadline = time.monotonic() + timeout
        while True:
            # Short polls: the emulator serves one request at a time.
            messages = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
            for message in messages:
                self.records.append({"messageId": message["MessageId"], "body": message["Body"]})
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
            mine = [r for r in self.records if detail(r)["key"] in expected]
            seen = {key: {detail(r)["version"] for r in mine if detail(r)["key"] == key} for key in expected}
            if all(len(seen[key]) >= n for key, n in expected.items()):
                return mine
            assert time.monotonic() < deadline, f"events missing: {seen}"
            if not messages:
                time.sleep(0.1)


def detail(record: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(record["body"])["detail"])


@pytest.fixture(scope="module")
def queue(stack: DevStack) -> Queue:
    return Queue(stack)


@pytest.fixture(scope="module")
def writer(stack: DevStack) -> Any:
    with StateClient(stack.base_url, token=stack.token("writer", "state:read state:write")) as client:
        yield client


@pytest.fixture
def marks(stack: DevStack) -> DynamoDBMarkStore:
    import boto3

    dynamodb = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="us-east-1", **DUMMY_CREDENTIALS)
    table = f"marks-{uuid.uuid4().hex[:8]}"
    create_mark_table(dynamodb, table)
    return DynamoDBMarkStore(table, client=dynamodb)


def by_key(changes: list[Change]) -> dict[str, list[Change]]:
    grouped: dict[str, list[Change]] = {}
    for change in changes:
        grouped.setdefault(change.key, []).append(change)
    return grouped


def test_shuffled_repeated_and_dropped_events_give_each_version_once_in_order(stack, queue, writer, marks):
    prefix = f"oc{uuid.uuid4().hex[:8]}:"
    a, b, c = f"{prefix}a", f"{prefix}b", f"{prefix}c"
    writer.set(a, {"n": 1})
    writer.update(a, {"m": 2})  # 2: dropped, read back as WRITTEN
    writer.set(a, {"big": BIG})  # 3: its event omits the value
    writer.delete(a)  # 4: dropped, read back as REMOVED
    writer.set(a, "again")  # 5
    writer.update(a, {"n": 6})  # 6
    for n in range(1, 3):
        writer.set(b, n)  # 1 dropped
    writer.delete(b)  # 3: dropped
    writer.set(b, None)  # 4: a JSON null value
    for n in range(1, 6):
        writer.set(c, n)  # 2 and 3 dropped

    records = queue.collect({a: 6, b: 4, c: 5})
    assert len(records) == 15
    dropped = {(a, 2), (a, 4), (b, 1), (b, 3), (c, 2), (c, 3)}
    kept = [r for r in records if (detail(r)["key"], detail(r)["version"]) not in dropped]
    shuffler = random.Random(2026)
    batch = kept + shuffler.sample(kept, 5)  # redeliveries: the same messages again
    shuffler.shuffle(batch)

    handled: list[Change] = []
    app = example_app()
    with StateClient(stack.base_url, token=stack.token("consumer", "state:read")) as client:
        consumer = OrderedConsumer(client, marks)
        assert app.consume_batch(batch, consumer, handled.append) == {"batchItemFailures": []}

        changes = by_key(handled)
        assert [ch.version for ch in changes[a]] == [1, 2, 3, 4, 5, 6]
        assert [ch.version for ch in changes[b]] == [1, 2, 3, 4]
        assert [ch.version for ch in changes[c]] == [1, 2, 3, 4, 5]
        assert {(ch.key, ch.version) for ch in handled if ch.origin is Origin.HISTORY} == dropped

        summary = [(ch.operation, ch.value, ch.has_value) for ch in changes[a]]
        assert summary == [
            (Operation.CREATED, {"n": 1}, True),
            (Operation.WRITTEN, {"n": 1, "m": 2}, True),
            (Operation.UPDATED, {"big": BIG}, True),  # the omitted value, read with its version
            (Operation.REMOVED, None, False),
            (Operation.CREATED, "again", True),
            (Operation.UPDATED, {"n": 6}, True),
        ]
        assert changes[a][1].actor == "writer"
        assert [(ch.operation, ch.value) for ch in changes[b]] == [
            (Operation.WRITTEN, 1),
            (Operation.UPDATED, 2),
            (Operation.REMOVED, None),
            (Operation.CREATED, None),
        ]
        assert changes[b][3].has_value  # null is a value
        assert [ch.value for ch in changes[c]] == [1, 2, 3, 4, 5]
        assert (marks.get(a), marks.get(b), marks.get(c)) == (6, 4, 5)

        # Everything delivered once more (a replay, a retried batch): nothing is handled twice.
        again: list[Change] = []
        assert app.consume_batch(records, consumer, again.append) == {"batchItemFailures": []}
        assert again == []


def test_a_key_whose_gap_cannot_be_read_is_retried_and_the_rest_goes_on(stack, queue, writer, marks):
    prefix = f"op{uuid.uuid4().hex[:8]}:"
    readable, hidden = f"{prefix}mine:k", f"{prefix}other:k"
    for n in range(1, 4):
        writer.set(readable, n)
        writer.set(hidden, n)
    records = queue.collect({readable: 3, hidden: 3})
    batch = [r for r in records if detail(r)["version"] != 2]
    batch.append({"messageId": "not-an-event", "body": json.dumps({"detail-type": "Other", "detail": {}})})

    handled: list[Change] = []
    app = example_app()
    # A consumer allowed to read its own keys only: the other key's missing version 2 is a 403.
    token = stack.token("consumer", f"state:read:{prefix}mine:*")
    with StateClient(stack.base_url, token=token) as client:
        result = app.consume_batch(batch, OrderedConsumer(client, marks), handled.append)

    hidden_messages = {r["messageId"] for r in batch[:-1] if detail(r)["key"] == hidden}
    assert {f["itemIdentifier"] for f in result["batchItemFailures"]} == hidden_messages | {"not-an-event"}
    changes = by_key(handled)
    assert [ch.version for ch in changes[readable]] == [1, 2, 3]
    assert changes[readable][1].origin is Origin.HISTORY
    assert [ch.version for ch in changes[hidden]] == [1]  # from its event; version 2 could not be read
    # The hidden key stopped before its gap: its mark is at 1, so its retry starts at 2.
    assert (marks.get(readable), marks.get(hidden)) == (3, 1)


def test_the_example_handler_from_its_environment(stack, queue, writer, marks, monkeypatch, caplog):
    # The whole Lambda entry point as deployed: the client secret from Secrets Manager, a token from the
    # issuer's token endpoint (client credentials), the marks table by name, an SQS event in.
    secret = stack.client("secretsmanager").create_secret(
        Name=f"consumer-{uuid.uuid4().hex[:6]}", SecretString="dev-secret"
    )
    for name, value in {
        "AWS_ENDPOINT_URL": stack.moto_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
        "STATE_API_URL": stack.base_url,
        "STATE_TOKEN_URL": f"{stack.issuer}/token",
        "STATE_CLIENT_ID": "dev-client",
        "STATE_CLIENT_SECRET_ARN": secret["ARN"],
        "STATE_TOKEN_SCOPE": "state:read",
        "MARKS_TABLE_NAME": marks.table_name,
    }.items():
        monkeypatch.setenv(name, value)
    key = f"oh{uuid.uuid4().hex[:8]}:k"
    for n in range(1, 4):
        writer.set(key, {"mark": VALUE_MARK, "n": n})
    records = [r for r in queue.collect({key: 3}) if detail(r)["version"] != 2]
    records.append({"messageId": "bad", "body": json.dumps({"key": key, "version": {"v": VALUE_MARK}})})

    app = example_app()
    with caplog.at_level(logging.INFO):
        assert app.handler({"Records": records[::-1]}, None) == {"batchItemFailures": [{"itemIdentifier": "bad"}]}

    # The example's handle logs one line per change: key, version, operation, origin; never the value.
    logged = [
        json.loads(r.getMessage()) for r in caplog.records if key in r.getMessage() and "version" in r.getMessage()
    ]
    assert [(line["version"], line["origin"]) for line in logged] == [(1, "event"), (2, "history"), (3, "event")]
    assert VALUE_MARK not in caplog.text
    assert marks.get(key) == 3
