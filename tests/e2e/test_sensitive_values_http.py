"""A canary sensitive value written through the whole local stack (HTTP, the put, patch and transaction
functions, the stream, publish_changes, EventBridge, the queues, Redis) is readable through the API and in
plaintext nowhere else: every DynamoDB item of every table, the table's stream records, every Redis key, every
queue's messages, the failure bucket, the events, every log line."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.redis_server import RedisServer
from tests.doubles import ApiClient
from tests.stack import DevStack, start_devstack

pytestmark = pytest.mark.e2e

CANARY = f"canary-{uuid.uuid4().hex}"
ALIAS = "alias/e2e-sensitive-values"
POLICY = {
    "version": 1,
    "roles": {"state-admin": ["state:read", "state:write"]},
    "sensitive": ["vault:*"],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevStack, RedisServer]]:
    state_dir = tmp_path_factory.mktemp("sensitive-stack")
    policy = Path(state_dir) / "policy.json"
    policy.write_text(json.dumps(POLICY))
    password = secrets.token_urlsafe(16)
    cache = RedisServer(password=password).start()
    function_env = {"STATE_KMS_KEY_ID": ALIAS, "STATE_POLICY_FILE": str(policy)}
    started = start_devstack(
        state_dir,
        {
            "REDIS_URL": f"redis://:{password}@127.0.0.1:{cache.port}/0",
            "LOCAL_FUNCTION_ENV": json.dumps(function_env),
        },
    )
    try:
        kms = started.client("kms")
        key = kms.create_key(Description="e2e values key")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=ALIAS, TargetKeyId=key)
        yield started, cache
    finally:
        started.stop()
        cache.stop()


def _contains(blob: Any) -> bool:
    text = blob if isinstance(blob, str) else repr(blob)
    return CANARY in text


def _wait_for_events(stack: DevStack, keys: set[str], timeout: float = 20.0) -> list[dict[str, Any]]:
    sqs = stack.client("sqs")
    url = sqs.get_queue_url(QueueName="state-service-local-state-changes")["QueueUrl"]
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not keys <= {json.loads(m["Body"])["detail"]["key"] for m in seen}:
        seen += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        time.sleep(0.1)
    return seen


def test_a_canary_sensitive_value_is_plaintext_nowhere_but_the_api(stack):
    devstack, cache = stack
    api = ApiClient(devstack)
    small, large, patched, transacted = (f"vault:{uuid.uuid4().hex}" for _ in range(4))
    plain = f"open:{uuid.uuid4().hex}"

    assert api.put(small, {"card": CANARY}).status_code == 201
    words = [uuid.uuid4().hex for _ in range(18_000)]  # incompressible: a blob of chunks
    assert api.put(large, {"words": words, "card": CANARY}).status_code == 201
    assert api.put(patched, {"a": 1}).status_code == 201
    assert api.patch(patched, {"card": CANARY}).status_code == 200
    transaction = {"operations": [{"op": "put", "key": transacted, "value": {"card": CANARY}}]}
    answer = api.session.post(f"{devstack.base_url}/state:transact", json=transaction, timeout=30)
    assert answer.status_code == 200, answer.text
    assert api.put(plain, {"public": "yes"}).status_code == 201

    for key in (small, patched, transacted):
        assert CANARY in api.get(key).text  # through the cache
        assert CANARY in api.get(key, consistent="true").text
    assert CANARY in api.get(large).text
    for snapshot in (False, True):
        bulk = api.session.post(
            f"{devstack.base_url}/state:batchGet", json={"keys": [small, transacted], "snapshot": snapshot}, timeout=30
        )
        assert [item["value"]["card"] for item in bulk.json()["items"]] == [CANARY, CANARY], bulk.text
    listing = api.session.get(f"{devstack.base_url}/state", params={"prefix": "vault:", "include": "value"}, timeout=30)
    listed = {entry["key"]: entry for entry in listing.json()["keys"]}
    assert listed[small]["value"] == {"card": CANARY}, listing.text
    assert CANARY in api.get(small, version="1").text  # from the history, once the stream wrote it

    events = _wait_for_events(devstack, {small, large, patched, transacted, plain})
    details = [json.loads(m["Body"])["detail"] for m in events]
    assert {d["key"] for d in details} >= {small, large, patched, transacted, plain}
    for detail in details:
        if detail["key"].startswith("vault:"):
            assert detail.get("value_omitted") is True
            assert detail.get("value_omitted_reason") == "sensitive"
        assert not _contains(detail)
    assert next(d for d in details if d["key"] == plain)["value"] == {"public": "yes"}

    _assert_nowhere_in_storage(devstack, cache)


def _assert_nowhere_in_storage(devstack: DevStack, cache: RedisServer) -> None:
    _assert_nowhere_in_tables(devstack)
    _assert_nowhere_in_streams(devstack)
    _assert_nowhere_else(devstack, cache)


def _assert_nowhere_in_tables(devstack: DevStack) -> None:
    ddb = devstack.client("dynamodb")
    scanned = 0
    for table in ddb.list_tables()["TableNames"]:
        request: dict[str, Any] = {"TableName": table}
        while True:
            page = ddb.scan(**request)
            for item in page["Items"]:
                scanned += 1
                assert not _contains(item), (table, item.get("pk"), item.get("sk"))
                assert not any(CANARY.encode() in bytes(v["B"]) for v in item.values() if "B" in v)
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    assert scanned > 0


def _assert_nowhere_in_streams(devstack: DevStack) -> None:
    streams = devstack.client("dynamodbstreams")
    for summary in streams.list_streams()["Streams"]:
        description = streams.describe_stream(StreamArn=summary["StreamArn"])["StreamDescription"]
        for shard in description["Shards"]:
            iterator = streams.get_shard_iterator(
                StreamArn=summary["StreamArn"], ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            records = streams.get_records(ShardIterator=iterator, Limit=1000)["Records"]
            assert not any(_contains(record) for record in records)


def _assert_nowhere_else(devstack: DevStack, cache: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=cache.port, password=cache.password)
    for name in client.scan_iter(count=1000):
        assert CANARY.encode() not in (client.dump(name) or b""), name

    sqs = devstack.client("sqs")
    for url in sqs.list_queues().get("QueueUrls", []):
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        ):
            assert not _contains(message["Body"]), url

    s3 = devstack.client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        for obj in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            body = s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
            assert CANARY.encode() not in body, obj["Key"]

    for path in devstack.log_dir.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    assert not any(CANARY in line for line in devstack.output)
