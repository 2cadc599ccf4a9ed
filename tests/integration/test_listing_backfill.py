"""The listing index's backfill against the serialized moto server and the real table (its ListIndex from
template.yaml): keys written before the index existed (their `list_shard` taken off behind the store's back)
get it once, a newer write racing the backfill always wins, a stopped run goes on from its checkpoint, the
pace holds, and the backfill's writes are no change to the stream's consumers."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from state_core import failpoints
from state_core.domain.listing import LIST_INDEX, list_shard
from state_core.service.manager import StateManager
from state_core.storage.listing_backfill import backfill_listing
from state_core.stream.events import build_change
from state_core.stream.watch import change_notes
from tests.doubles import NoMetrics, utc_now
from tests.streams import stream_records

pytestmark = pytest.mark.integration


@pytest.fixture
def manager(store: Any) -> StateManager:
    return StateManager(store, clock=utc_now, metrics=NoMetrics())


def written_before_the_index(manager: StateManager, client: Any, table: str, count: int) -> list[str]:
    """`count` live keys without `list_shard`, as every key was before the index existed."""
    base = f"bf{uuid.uuid4().hex[:8]}"
    keys = [f"{base}:{n}" for n in range(count)]
    for key in keys:
        manager.put(key, {"n": key}, actor="alice")
        client.update_item(
            TableName=table, Key={"pk": {"S": key}, "sk": {"S": "state"}}, UpdateExpression="REMOVE list_shard"
        )
    assert not any(indexed(client, table, key) for key in keys)
    return keys


def indexed(client: Any, table: str, key: str) -> bool:
    items = client.query(
        TableName=table,
        IndexName=LIST_INDEX,
        KeyConditionExpression="list_shard = :s AND pk = :k",
        ExpressionAttributeValues={":s": {"S": list_shard(key)}, ":k": {"S": key}},
    )["Items"]
    return bool(items)


def state_item(client: Any, table: str, key: str) -> dict[str, Any]:
    item: dict[str, Any] = client.get_item(
        TableName=table, Key={"pk": {"S": key}, "sk": {"S": "state"}}, ConsistentRead=True
    )["Item"]
    return item


def test_live_keys_without_a_shard_get_one_and_nothing_else_changes(manager, client, state_table):
    keys = written_before_the_index(manager, client, state_table, 5)
    gone = keys.pop()
    manager.delete(gone, actor="alice")
    before = {key: state_item(client, state_table, key) for key in keys}
    progress = backfill_listing(client, state_table, rate=1_000)
    assert progress.done
    assert progress.updated >= len(keys)
    for key in keys:
        assert indexed(client, state_table, key)
        after = state_item(client, state_table, key)
        assert after["list_shard"] == {"S": list_shard(key)}
        assert {k: v for k, v in after.items() if k != "list_shard"} == before[key]
    assert not indexed(client, state_table, gone)  # a tombstone never gets a shard
    assert backfill_listing(client, state_table, rate=1_000).updated == 0  # once


@pytest.mark.parametrize("write", ["put", "delete"])
def test_a_write_between_the_scan_and_the_update_wins(manager, client, state_table, write):
    (key,) = written_before_the_index(manager, client, state_table, 1)

    def newer_write(name: str, **context: Any) -> None:
        if name == "listing_backfill_before_update" and context["key"] == key:
            if write == "put":
                manager.put(key, "newer", actor="bob")
            else:
                manager.delete(key, actor="bob")

    failpoints.install(newer_write)
    try:
        progress = backfill_listing(client, state_table, rate=1_000)
    finally:
        failpoints.uninstall()
    assert progress.raced >= 1
    item = state_item(client, state_table, key)
    assert item["version"] == {"N": "2"}
    assert item["updated_by"] == {"S": "bob"}
    # The PUT set the shard itself; the deletion left the key out of the index, and the backfill did not
    # put it back.
    assert indexed(client, state_table, key) is (write == "put")


def test_a_stopped_backfill_goes_on_from_its_checkpoint(manager, client, state_table):
    keys = written_before_the_index(manager, client, state_table, 6)
    checkpoints: list[dict[str, Any] | None] = []
    first = backfill_listing(
        client, state_table, rate=1_000, page_size=2, max_pages=1,
        checkpoint=lambda p: checkpoints.append(p.resume_from),
    )  # fmt: skip
    assert not first.done
    assert checkpoints == [first.resume_from]
    updated, resume_from = first.updated, first.resume_from
    while True:
        more = backfill_listing(client, state_table, rate=1_000, page_size=50, start_from=resume_from)
        updated += more.updated
        if more.done:
            break
        resume_from = more.resume_from
    assert updated >= len(keys)
    assert all(indexed(client, state_table, key) for key in keys)


def test_the_backfill_keeps_to_its_rate(manager, client, state_table):
    keys = written_before_the_index(manager, client, state_table, 5)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    progress = backfill_listing(client, state_table, rate=10, clock=lambda: now[0], sleep=sleep)
    assert progress.scanned >= len(keys)
    # The n-th update waits until (n - 1) / rate seconds after the start: never faster than the rate.
    assert now[0] == pytest.approx((progress.scanned - 1) / 10)


def test_the_backfills_writes_are_no_change_to_the_streams_consumers(manager, client, state_table):
    (key,) = written_before_the_index(manager, client, state_table, 1)
    backfill_listing(client, state_table, rate=1_000)
    records = stream_records(state_table, {key})
    last = records[-1]
    assert last["dynamodb"]["NewImage"]["list_shard"] == {"S": list_shard(key)}
    change = build_change(last, position=0, bus_name="unused")
    assert change is not None
    assert change.event is None  # no StateChanged event
    assert [note.version for note, _ in change_notes(records)] == [1]  # the watchers get version 1 once


@pytest.mark.parametrize(("rate", "page_size"), [(0, 10), (-1, 10), (10, 0)])
def test_a_rate_or_page_size_that_is_not_positive_is_refused(client, state_table, rate, page_size):
    with pytest.raises(ValueError, match="positive"):
        backfill_listing(client, state_table, rate=rate, page_size=page_size)
