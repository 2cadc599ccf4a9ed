"""StateChanged events from stream records: pure logic, no sockets."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import pytest

from state_core.domain.codec import StoredValue
from state_core.stream.events import (
    MAX_REQUEST_BYTES,
    Operation,
    batches,
    build_change,
    entry_size,
    event_id,
)
from tests.event_schemas import assert_valid_detail

pytestmark = pytest.mark.unit

BUS = "bus"


def state_image(key: str, version: int, value: Any = None, *, deleted: bool = False, **extra: Any) -> dict[str, Any]:
    """A state item as Lambda's stream event carries it (binary as base64 text)."""
    item: dict[str, Any] = {
        "pk": {"S": key},
        "sk": {"S": "state"},
        "version": {"N": str(version)},
        "updated_at": {"S": "2026-11-28T06:00:00.000Z"},
        "updated_by": {"S": "alice"},
        "write_id": {"S": f"w{version}"},
    }
    if deleted:
        item["deleted"] = {"BOOL": True}
    else:
        canonical = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        stored = StoredValue.encode(canonical)
        item.update(
            value={"B": base64.b64encode(stored.data).decode()},
            encoding={"S": stored.encoding},
            value_size={"N": str(stored.size)},
            created_at={"S": "2026-11-28T05:00:00.000Z"},
            incarnation={"S": extra.pop("incarnation", "w1")},
        )
    item.update(extra)
    return item


def stream_record(new: dict[str, Any] | None, old: dict[str, Any] | None = None, seq: str = "100") -> dict[str, Any]:
    source = new or old or {}
    ddb: dict[str, Any] = {"Keys": {"pk": source["pk"], "sk": source["sk"]}, "SequenceNumber": seq}
    if new is not None:
        ddb["NewImage"] = new
    if old is not None:
        ddb["OldImage"] = old
    name = "INSERT" if old is None else "REMOVE" if new is None else "MODIFY"
    return {"eventName": name, "dynamodb": ddb}


def detail_of(record: dict[str, Any], **kw: Any) -> dict[str, Any]:
    change = build_change(record, position=0, bus_name=BUS, **kw)
    assert change is not None
    assert change.event is not None
    assert_valid_detail(change.event.entry["Detail"])
    return json.loads(change.event.entry["Detail"])


def test_a_first_write_is_created_with_its_value_and_no_previous_version():
    detail = detail_of(stream_record(state_image("user:1", 1, {"a": 1})))

    assert detail == {
        "event_id": event_id("user:1", 1, Operation.CREATED),
        "key": "user:1",
        "version": 1,
        "previous_version": None,
        "operation": "created",
        "actor": "alice",
        "occurred_at": "2026-11-28T06:00:00.000Z",
        "value": {"a": 1},
    }


def test_a_replace_is_updated_with_the_previous_version():
    detail = detail_of(stream_record(state_image("k", 3, [1, "é"]), state_image("k", 2, 0)))

    assert (detail["operation"], detail["version"], detail["previous_version"], detail["value"]) == (
        "updated",
        3,
        2,
        [1, "é"],
    )


def test_a_delete_carries_no_value():
    detail = detail_of(stream_record(state_image("k", 4, deleted=True), state_image("k", 3, 1)))

    assert detail["operation"] == "deleted"
    assert "value" not in detail
    assert "value_omitted" not in detail


def test_a_write_over_a_tombstone_or_an_expired_item_is_created_and_goes_on_counting():
    over_tombstone = stream_record(state_image("k", 5, 1, incarnation="w5"), state_image("k", 4, deleted=True))
    over_expired = stream_record(state_image("k", 6, 1, incarnation="w6"), state_image("k", 5, 1, incarnation="w5"))

    assert (detail_of(over_tombstone)["operation"], detail_of(over_tombstone)["previous_version"]) == ("created", 4)
    assert detail_of(over_expired)["operation"] == "created"


def test_event_ids_are_deterministic_and_differ_by_version_and_operation():
    assert event_id("k", 1, Operation.CREATED) == event_id("k", 1, Operation.CREATED)
    assert len({event_id("k", 1, Operation.CREATED), event_id("k", 2, Operation.CREATED)}) == 2
    assert event_id("k", 1, Operation.CREATED) != event_id("k", 1, Operation.UPDATED)


def test_a_value_too_large_for_the_detail_is_omitted():
    big = "x" * 70_000

    detail = detail_of(stream_record(state_image("k", 1, big)))

    assert detail["value_omitted"] is True
    assert "value" not in detail
    assert detail_of(stream_record(state_image("k", 1, "x" * 1000)), max_detail_bytes=1_024)["value_omitted"]


def test_a_value_that_is_not_inline_is_omitted_without_being_fetched():
    # A large value's item refers to a blob instead of holding `value` (the chunked-blob layout).
    image = state_image("k", 2, 1)
    for name in ("value",):
        image.pop(name)
    image["blob_id"] = {"S": "w2"}
    image["blob_chunks"] = {"N": "3"}
    image["blob_sha256"] = {"S": "0" * 64}

    detail = detail_of(stream_record(image))

    assert detail["value_omitted"] is True
    assert "value" not in detail


def test_only_state_items_produce_changes():
    other = stream_record(state_image("k", 1, 1))
    other["dynamodb"]["Keys"]["sk"] = {"S": "blob#w1#0"}

    assert build_change(other, position=0, bus_name=BUS) is None


def test_a_ttl_removal_and_a_keys_only_image_publish_nothing():
    removal = build_change(stream_record(None, state_image("k", 1, 1)), position=0, bus_name=BUS)
    keys_only = build_change(stream_record({"pk": {"S": "k"}, "sk": {"S": "state"}}), position=0, bus_name=BUS)

    assert removal is not None
    assert removal.event is None
    assert keys_only is not None
    assert keys_only.event is None


def test_a_change_carries_its_stream_record_s_time_in_both_formats():
    from datetime import UTC, datetime

    lambda_format = stream_record(state_image("k", 1, 1))
    lambda_format["dynamodb"]["ApproximateCreationDateTime"] = 1_796_000_000  # Lambda: epoch seconds
    boto3_format = stream_record(state_image("k", 1, 1))
    boto3_format["dynamodb"]["ApproximateCreationDateTime"] = datetime.fromtimestamp(1_796_000_000, UTC)
    removal = stream_record(None, state_image("k", 1, 1))
    removal["dynamodb"]["ApproximateCreationDateTime"] = 1_796_000_000.5

    times = [build_change(r, position=0, bus_name=BUS) for r in (lambda_format, boto3_format, removal)]

    assert [c.recorded_at.timestamp() if c and c.recorded_at else None for c in times] == [
        1_796_000_000,
        1_796_000_000,
        1_796_000_000.5,
    ]
    untimed = build_change(stream_record(state_image("k", 1, 1)), position=0, bus_name=BUS)
    assert untimed is not None
    assert untimed.recorded_at is None


def test_the_value_is_the_stored_canonical_json_unchanged():
    value = {"n": 1.5, "big": 12345678901234567890, "s": "\u2028"}
    stored = zlib.compress(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())

    detail = detail_of(stream_record(state_image("k", 1, value)))

    assert detail["value"] == value
    assert zlib.decompress(stored) == json.dumps(detail["value"], separators=(",", ":"), ensure_ascii=False).encode()


def test_entry_size_counts_source_detail_type_detail_and_resources_as_eventbridge_does():
    entry = {"Source": "state.service", "DetailType": "StateChanged", "Detail": '{"k":"é"}', "EventBusName": "b"}

    assert entry_size(entry) == len("state.service") + len("StateChanged") + len('{"k":"é"}'.encode())
    assert entry_size({**entry, "Time": "x", "Resources": ["arn:1"]}) == entry_size(entry) + 14 + 5


def _events(count: int, value_bytes: int) -> list[Any]:
    changes = [
        build_change(stream_record(state_image(f"k{i}", 1, "v" * value_bytes), seq=str(i)), position=i, bus_name=BUS)
        for i in range(count)
    ]
    return [c.event for c in changes if c is not None and c.event is not None]


def test_batches_hold_at_most_ten_entries_in_stream_order():
    groups = list(batches(_events(23, 10)))

    assert [len(g) for g in groups] == [10, 10, 3]
    assert [e.position for g in groups for e in g] == list(range(23))


def test_batches_stay_under_the_request_size_limit():
    groups = list(batches(_events(10, 60_000)))

    assert all(sum(e.size for e in g) <= MAX_REQUEST_BYTES for g in groups)
    assert [len(g) for g in groups] == [4, 4, 2]


def test_a_large_value_moved_to_a_new_blob_at_its_version_releases_nothing():
    """Re-encryption switches a state item to a new blob at the version it has (storage/reencryption.py): no
    event, and the old blob is no `replaced_blob` for the stream to release (the job hands it to the collection)."""

    def with_blob(blob_id: str) -> dict[str, Any]:
        image = state_image("k", 3, deleted=True)
        del image["deleted"]
        image.update(
            blob_id={"S": blob_id},
            blob_chunks={"N": "2"},
            blob_sha256={"S": "00"},
            encoding={"S": "aes256gcm+zlib"},
            value_size={"N": "600000"},
            created_at={"S": "2026-11-28T05:00:00.000Z"},
            incarnation={"S": "w1"},
        )
        return image

    change = build_change(stream_record(with_blob("new"), with_blob("old")), position=0, bus_name=BUS)
    assert change is not None
    assert (change.record, change.event, change.replaced_blob) == (None, None, None)


def test_a_record_that_moved_no_version_is_no_change():
    """The listing backfill adds `list_shard` to an item at the version it has: no event, no new state."""
    old = state_image("k", 3, {"a": 1})
    new = state_image("k", 3, {"a": 1}, list_shard={"S": "07"})
    change = build_change(stream_record(new, old), position=0, bus_name=BUS)
    assert change is not None
    assert change.record is None
    assert change.event is None
    moved = build_change(stream_record(state_image("k", 4, {"a": 2}), old), position=0, bus_name=BUS)
    assert moved is not None
    assert moved.event is not None
