"""Re-encryption under a new KMS key (scripts/reencrypt.py) while 8 writers keep writing: every item readable
afterwards, none (state, history or cache) under the old key, no acknowledged write lost."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import boto3
import pytest

from state_core.cache.state_cache import entry_key
from state_core.domain.codec import SEALED_PREFIX, StoredValue
from state_core.domain.history import entry_of_record
from state_core.storage.history import history_item
from state_core.storage.reencryption import reencrypt
from state_core.storage.state import record_of_item
from tests.integration.test_encryption import Sealed

pytestmark = pytest.mark.integration

WRITERS = 8
KEYS = 24
# Enough rounds to overlap the job on a loaded machine, few enough to end soon after it.
MAX_ROUNDS = 15


def sealed_items(dynamodb: Any, table: str, prefix: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    request: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": "begins_with(pk, :prefix) AND begins_with(#encoding, :sealed)",
        "ExpressionAttributeNames": {"#encoding": "encoding"},
        "ExpressionAttributeValues": {":prefix": {"S": prefix}, ":sealed": {"S": SEALED_PREFIX}},
    }
    while True:
        page = dynamodb.scan(**request)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def seed(before: Sealed, keys: list[str]) -> None:
    for key in keys:
        before.manager.put(key, {"n": 0, "key": key}, actor="seed")
        before.manager.get(key)  # fills the cache with the old key's ciphertext
        # The history item the publisher would copy from the stream, as it writes it.
        record = record_of_item(before.item(key))
        before.dynamodb.put_item(TableName=before.table, Item=history_item(entry_of_record(record, "created"), 86_400))


def check_after(
    reader: Sealed, keys: list[str], acknowledged: dict[str, int], prefix: str, new_key: str, raw_redis: Any
) -> None:
    # The cache first, before the reads below fill it again.
    for key in keys:
        cached = raw_redis.hget(entry_key(key), "d")
        if cached:
            meta = json.loads(raw_redis.hget(entry_key(key), "m"))
            value = StoredValue(meta["encoding"], cached, meta["size"])
            assert reader.cipher.key_of(value) == new_key, key
    for key in keys:
        value = json.loads(reader.manager.get(key, consistent=True).canonical_value)
        assert value == {"n": acknowledged[key], "key": key}, key  # no acknowledged write lost
        assert json.loads(reader.manager.get(key).canonical_value) == value

    items = sealed_items(reader.dynamodb, reader.table, prefix)
    assert len(items) >= 2 * KEYS  # every state item and every seeded history item
    for item in items:
        value = StoredValue(item["encoding"]["S"], bytes(item["value"]["B"]), int(item["value_size"]["N"]))
        assert reader.cipher.key_of(value) == new_key, item["sk"]
        reader.cipher.open(item["pk"]["S"], item["write_id"]["S"], value)  # every one opens


@pytest.fixture
def state_table(moto_server: str, state_template: Any) -> str:
    """A table of its own: the job scans a whole table, and the session's shared one holds every other test's
    large values, which the one serialized emulator would spend a long time scanning for everybody."""
    name = f"state-reenc-{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb")
    ddb.create_table(**state_template.table_create_kwargs("StateTable", name))
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    return name


def test_reencryption_under_a_new_key_with_eight_writers_running(state_table, redis_server, raw_redis):
    kms = boto3.client("kms")
    old_key = kms.create_key(Description="old values key")["KeyMetadata"]["Arn"]
    new_key = kms.create_key(Description="new values key")["KeyMetadata"]["Arn"]
    prefix = f"secret:reenc-{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{n:03d}" for n in range(KEYS)]

    seed(Sealed(state_table, old_key, redis_server.url), keys)

    # The new key is deployed first: writers from now on seal under it.
    after = Sealed(state_table, new_key, redis_server.url)
    acknowledged: dict[str, int] = {}
    lock, stop = threading.Lock(), threading.Event()
    failures: list[BaseException] = []

    def writer(number: int) -> None:
        mine = keys[number::WRITERS]
        round_ = 0
        try:
            while not stop.is_set() and round_ < MAX_ROUNDS:
                round_ += 1
                for key in mine:
                    after.manager.put(key, {"n": round_, "key": key}, actor=f"writer-{number}")
                    with lock:
                        acknowledged[key] = round_
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    job = Sealed(state_table, new_key, redis_server.url)
    checkpoints: list[Any] = []
    try:
        first = reencrypt(
            job.dynamodb,
            state_table,
            job.cipher,
            new_key_arn=new_key,
            page_size=500,
            rate=10_000,
            evict=lambda key: raw_redis.delete(entry_key(key)),
            checkpoint=lambda progress: checkpoints.append(progress.resume_from),
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    assert first.done

    # Resumable: a run from a mid-way checkpoint finds nothing left under the old key.
    if len(checkpoints) > 1 and checkpoints[0] is not None:
        again = reencrypt(job.dynamodb, state_table, job.cipher, new_key_arn=new_key, start_from=checkpoints[0])
        assert again.reencrypted == 0

    check_after(Sealed(state_table, new_key, redis_server.url), keys, acknowledged, prefix, new_key, raw_redis)
