"""Values up to 1 MiB even when incompressible (past DynamoDB's 400 KB item): blobs beside the state item, whole
versions only, and nothing left behind once the documented cleanup has run."""

import base64
import json
import random
import threading
import uuid
from datetime import timedelta

import pytest

from state_core.domain.codec import StoredValue
from state_core.domain.errors import NotFound, PayloadTooLarge, PreconditionFailed
from state_core.service.manager import Expectation, StateManager
from state_core.storage.blobs import SWEEP_LAG_SECONDS, WRITE_GRACE_SECONDS
from state_core.storage.state import new_write_id
from tests.doubles import NoMetrics, utc_now

pytestmark = pytest.mark.integration

ONE_MIB = 1_048_576


def after_grace():
    return utc_now() + timedelta(seconds=WRITE_GRACE_SECONDS + 1)


def sweep_after_grace():
    """When the sweep may take a write made now for one that died: the stream has moved past it too."""
    return utc_now() + timedelta(seconds=SWEEP_LAG_SECONDS + WRITE_GRACE_SECONDS + 1)


def incompressible(size=ONE_MIB, seed=None):
    """A JSON string whose canonical form is exactly `size` bytes of random base64."""
    rng = random.Random(seed)
    return base64.b64encode(rng.randbytes(size)).decode()[: size - 2]


@pytest.fixture
def manager(store):
    return StateManager(store, clock=utc_now, metrics=NoMetrics())


@pytest.fixture
def key():
    return f"large:{uuid.uuid4().hex}"


def blob_items(client, table, key):
    """Every blob marker of `key` and every chunk item it owns."""
    markers = client.query(
        TableName=table,
        KeyConditionExpression="pk = :k AND begins_with(sk, :p)",
        ExpressionAttributeValues={":k": {"S": key}, ":p": {"S": "blob#"}},
        ConsistentRead=True,
    )["Items"]
    chunks = [
        item
        for page in client.get_paginator("scan").paginate(
            TableName=table,
            FilterExpression="#owner = :k",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":k": {"S": key}},
            ProjectionExpression="pk",
        )
        for item in page["Items"]
    ]
    return markers, chunks


def test_1_mib_incompressible_value_round_trips_exactly(manager, key):
    value = incompressible()
    manager.put(key, value, actor="alice")
    view = manager.get(key)
    assert len(view.canonical_value) == ONE_MIB
    assert json.loads(view.canonical_value) == value


def test_1_mib_plus_1_byte_is_413_and_writes_nothing(manager, client, state_table, key):
    with pytest.raises(PayloadTooLarge):
        manager.put(key, incompressible(ONE_MIB + 1), actor="alice")
    with pytest.raises(NotFound):
        manager.get(key)
    assert blob_items(client, state_table, key) == ([], [])


def test_a_conflicting_large_write_leaves_no_blob(manager, client, state_table, key):
    manager.put(key, "small", actor="alice")
    with pytest.raises(PreconditionFailed):
        manager.put(key, incompressible(seed=1), actor="alice", expect=Expectation(if_match=7))
    assert blob_items(client, state_table, key) == ([], [])
    assert manager.get(key).canonical_value == b'"small"'


def test_replaced_and_deleted_values_leave_no_blob_after_cleanup(manager, store, client, state_table, key):
    big = manager.put(key, incompressible(seed=2), actor="alice")
    manager.put(key, "ten bytes!"[:8], actor="alice")
    _, chunks = blob_items(client, state_table, key)
    assert len(chunks) == big.record.blob.chunks  # still there until the cleanup runs

    # What the stream publisher does for the change: the old image names the blob no longer used.
    store.blobs.delete(key, [big.record.blob])
    manager.delete(key, actor="alice")
    store.blobs.collect(key, as_of=after_grace())

    assert blob_items(client, state_table, key) == ([], [])


def test_a_write_killed_between_blob_and_state_item_leaves_an_orphan_the_sweep_removes(
    manager, store, client, state_table, key
):
    manager.put(key, "committed", actor="alice")
    # The write dies after its chunks and marker, before its state item: exactly what put() does first.
    canonical = json.dumps(incompressible(seed=3)).encode()
    store.blobs.put(key, new_write_id(), StoredValue.encode(canonical), utc_now())
    markers, chunks = blob_items(client, state_table, key)
    assert (len(markers), len(chunks)) == (1, 3)

    assert store.blobs.sweep(utc_now()) == []  # younger than any write in flight: kept
    assert store.blobs.sweep(after_grace()) == []  # the stream may not have recorded it yet: kept
    store.blobs.sweep(sweep_after_grace())

    assert blob_items(client, state_table, key) == ([], [])
    assert manager.get(key).canonical_value == b'"committed"'


def test_the_sweep_keeps_the_blob_the_state_refers_to(manager, store, client, state_table, key):
    value = incompressible(seed=4)
    manager.put(key, value, actor="alice")
    store.blobs.sweep(sweep_after_grace())
    assert json.loads(manager.get(key).canonical_value) == value


def test_collection_keeps_the_blob_the_state_refers_to_whatever_the_time(manager, store, key):
    # An unclaimed marker (the stream has not recorded the version yet) of the current version
    value = incompressible(seed=6)
    manager.put(key, value, actor="alice")
    store.blobs.collect(key, as_of=utc_now() + timedelta(days=30))
    assert json.loads(manager.get(key).canonical_value) == value


def test_patch_on_a_large_value_works_and_past_1_mib_is_413(manager, key):
    value = {"text": incompressible(ONE_MIB - 200, seed=5)}
    manager.put(key, value, actor="alice")
    _, merged = manager.patch(key, {"extra": 1}, actor="alice")
    assert json.loads(merged) == {**value, "extra": 1}
    with pytest.raises(PayloadTooLarge):
        manager.patch(key, {"more": "x" * 500}, actor="alice")
    assert manager.get(key).record.version == 2


def test_concurrent_large_puts_and_gets_only_ever_see_whole_versions(manager, store, key):
    values = [incompressible(ONE_MIB - 10, seed=10), incompressible(ONE_MIB - 10, seed=11)]
    canonical = {json.dumps(v).encode() for v in values}
    manager.put(key, values[0], actor="alice")
    committed = []  # blob refs in commit order, as the stream would deliver them
    lock = threading.Lock()
    stop = threading.Event()
    seen, errors = [], []

    def write(index):
        for round_ in range(4):
            result = manager.put(key, values[(index + round_) % 2], actor="alice")
            with lock:
                committed.append(result.record)

    def collect_replaced():
        # The stream-driven cleanup: once a newer version is committed, the older blob is removed, so
        # readers really do race against collected blobs.
        while not stop.is_set():
            with lock:
                records = sorted(committed, key=lambda r: r.version)
            if len(records) > 1:
                store.blobs.delete(key, [r.blob for r in records[:-1] if r.blob is not None])

    def read():
        while not stop.is_set():
            try:
                seen.append(manager.get(key).canonical_value)
            except Exception as exc:
                errors.append(exc)

    writers = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    others = [threading.Thread(target=read) for _ in range(3)] + [threading.Thread(target=collect_replaced)]
    for thread in writers + others:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in others:
        thread.join()

    assert errors == []
    assert seen
    assert set(seen) <= canonical
