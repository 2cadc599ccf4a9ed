"""The ordered consumer's logic: order, duplicates, gaps, marks, failures.

The version reader here is a dict of versions, the one stand-in these tests use: they are about which
versions the consumer asks for and yields, not about HTTP (test_consumer_e2e.py runs the same consumer with
the real client against the local stack).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state_client.consumer import (
    ChangeEvent,
    ChangesPending,
    InMemoryMarkStore,
    Operation,
    OrderedConsumer,
    Origin,
)
from state_client.errors import Forbidden, Gone, NotFound, Unavailable

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Record:
    value: Any
    updated_by: str = "alice"
    updated_at: str = "2026-12-02T01:00:00Z"


class VersionsOf:
    """Versions by (key, version): a Record, or the error the read answers."""

    def __init__(self, versions: dict[tuple[str, int], Record | Exception] | None = None) -> None:
        self.versions = dict(versions or {})
        self.reads: list[tuple[str, int]] = []

    def get_version(self, key: str, version: int, /) -> Record:
        self.reads.append((key, version))
        found = self.versions.get((key, version), NotFound(404))
        if isinstance(found, Exception):
            raise found
        return found


def event(key: str, version: int, operation: str = "updated", **extra: Any) -> dict[str, Any]:
    """An EventBridge event as the bus delivers it."""
    detail: dict[str, Any] = {
        "event_id": f"{key}-{version}",
        "key": key,
        "version": version,
        "previous_version": version - 1 or None,
        "operation": "created" if version == 1 else operation,
        "actor": "alice",
        "occurred_at": "2026-12-02T01:00:00.000Z",
    }
    if detail["operation"] in ("created", "updated") and "value_omitted" not in extra:
        detail["value"] = {"v": version}
    detail.update(extra)
    return {"version": "0", "id": "x", "detail-type": "StateChanged", "source": "state.service", "detail": detail}


def drain(consumer: OrderedConsumer, events: list[Any]) -> list[tuple[str, int]]:
    return [(c.key, c.version) for c in consumer.consume(events)]


def test_shuffled_and_repeated_events_come_out_once_each_in_version_order():
    events = [event(k, v) for k in ("a", "b") for v in range(1, 6)]
    events = events + events[::2]
    events = events[1::2][::-1] + events[::2]  # newest first, then the rest
    reader = VersionsOf()

    changes = list(OrderedConsumer(reader, InMemoryMarkStore()).consume(events))

    assert [(c.key, c.version) for c in changes if c.key == "a"] == [("a", v) for v in range(1, 6)]
    assert [(c.key, c.version) for c in changes if c.key == "b"] == [("b", v) for v in range(1, 6)]
    assert all(c.origin is Origin.EVENT for c in changes)
    assert [c.value for c in changes if c.key == "a"] == [{"v": v} for v in range(1, 6)]
    assert reader.reads == []  # nothing was missing


def test_missing_versions_are_read_from_the_history_in_their_place():
    reader = VersionsOf({("k", 2): Record({"v": 2}), ("k", 4): Record(None, "bob")})
    marks = InMemoryMarkStore()

    changes = list(OrderedConsumer(reader, marks).consume([event("k", 5), event("k", 3), event("k", 1)]))

    assert [(c.version, c.origin, c.operation) for c in changes] == [
        (1, Origin.EVENT, Operation.CREATED),
        (2, Origin.HISTORY, Operation.WRITTEN),
        (3, Origin.EVENT, Operation.UPDATED),
        (4, Origin.HISTORY, Operation.WRITTEN),
        (5, Origin.EVENT, Operation.UPDATED),
    ]
    assert (changes[1].value, changes[1].has_value, changes[1].actor) == ({"v": 2}, True, "alice")
    # A version whose value is JSON null is a value, not its absence.
    assert (changes[3].value, changes[3].has_value, changes[3].actor) == (None, True, "bob")
    assert reader.reads == [("k", 2), ("k", 4)]
    assert marks.get("k") == 5


def test_a_missing_deletion_is_removed_and_a_version_past_retention_unretained():
    # 404 for a version below one that exists: a deletion or an expiry; 410: beyond the history's retention.
    reader = VersionsOf({("k", 1): Gone(410), ("k", 3): NotFound(404)})

    changes = list(OrderedConsumer(reader, InMemoryMarkStore()).consume([event("k", 4, "created"), event("k", 2)]))

    assert [(c.version, c.operation, c.has_value) for c in changes] == [
        (1, Operation.UNRETAINED, False),
        (2, Operation.UPDATED, True),
        (3, Operation.REMOVED, False),
        (4, Operation.CREATED, True),
    ]


def test_a_later_batch_yields_only_what_is_past_the_mark():
    marks = InMemoryMarkStore()
    consumer = OrderedConsumer(VersionsOf(), marks)
    assert drain(consumer, [event("k", 1), event("k", 2)]) == [("k", 1), ("k", 2)]

    # A replay of old events together with new ones.
    assert drain(consumer, [event("k", 2), event("k", 1), event("k", 4), event("k", 3)]) == [("k", 3), ("k", 4)]
    assert drain(consumer, [event("k", 4), event("k", 3)]) == []


def test_a_change_whose_handler_died_comes_again_on_the_next_delivery():
    marks = InMemoryMarkStore()
    consumer = OrderedConsumer(VersionsOf(), marks)
    events = [event("k", 1), event("k", 2), event("k", 3)]

    changes = consumer.consume(events)
    assert next(changes).version == 1
    assert next(changes).version == 2
    changes.close()  # the handler raised while holding version 2: never resumed past it

    assert marks.get("k") == 1
    assert drain(consumer, events) == [("k", 2), ("k", 3)]


def test_a_failed_history_read_stops_its_key_only_and_is_raised_after_the_batch():
    reader = VersionsOf({("a", 2): Unavailable(503, retry_after=1.0)})
    marks = InMemoryMarkStore()
    consumer = OrderedConsumer(reader, marks)
    events = [event("a", 1), event("a", 3), event("b", 1), event("b", 2)]

    seen: list[tuple[str, int]] = []
    with pytest.raises(ChangesPending) as raised:
        seen.extend((c.key, c.version) for c in consumer.consume(events))

    assert seen == [("a", 1), ("b", 1), ("b", 2)]
    assert raised.value.keys == {"a"}
    assert isinstance(raised.value.errors["a"], Unavailable)
    assert marks.snapshot() == {"a": 1, "b": 2}

    # The history caught up: the same events again give the rest of a, and nothing of b twice.
    reader.versions[("a", 2)] = Record({"v": 2})
    assert drain(consumer, events) == [("a", 2), ("a", 3)]


def test_a_refused_read_is_pending_too_not_a_hole():
    reader = VersionsOf({("a", 1): Forbidden(403)})
    with pytest.raises(ChangesPending) as raised:
        list(OrderedConsumer(reader, InMemoryMarkStore()).consume([event("a", 2)]))
    assert isinstance(raised.value.errors["a"], Forbidden)


def test_an_omitted_value_is_read_with_its_version():
    reader = VersionsOf({("k", 1): Record({"big": "x" * 10})})
    big = event("k", 1, value_omitted=True)

    (change,) = OrderedConsumer(reader, InMemoryMarkStore()).consume([big])

    assert (change.origin, change.operation) == (Origin.EVENT, Operation.CREATED)
    assert (change.value, change.has_value) == ({"big": "x" * 10}, True)
    assert change.event_id == "k-1"


def test_an_omitted_value_past_retention_keeps_the_events_facts_without_a_value():
    reader = VersionsOf({("k", 1): Gone(410)})
    (change,) = OrderedConsumer(reader, InMemoryMarkStore()).consume([event("k", 1, value_omitted=True)])
    assert (change.operation, change.has_value) == (Operation.CREATED, False)


def test_omitted_values_are_left_alone_when_asked():
    reader = VersionsOf()
    consumer = OrderedConsumer(reader, InMemoryMarkStore(), fetch_omitted_values=False)
    (change,) = consumer.consume([event("k", 1, value_omitted=True)])
    assert not change.has_value
    assert reader.reads == []


def test_two_consumers_never_move_a_mark_back_and_the_late_one_skips_what_the_other_did():
    marks = InMemoryMarkStore()
    events = [event("k", v) for v in range(1, 6)]
    late = OrderedConsumer(VersionsOf(), marks).consume(events)
    assert next(late).version == 1  # read mark 0, holds version 1

    assert drain(OrderedConsumer(VersionsOf(), marks), events) == [("k", v) for v in range(1, 6)]
    assert list(late) == []  # resumed: its mark write loses, and it finds everything done

    assert marks.get("k") == 5


def test_new_keys_can_start_at_their_first_event_rather_than_at_version_1():
    reader = VersionsOf()
    consumer = OrderedConsumer(reader, InMemoryMarkStore(), new_keys="event")
    assert drain(consumer, [event("k", 9), event("k", 7)]) == [("k", 7), ("k", 8), ("k", 9)]
    assert reader.reads == [("k", 8)]
    # Once marked, a key fills its gaps as any other.
    assert drain(consumer, [event("k", 11)]) == [("k", 10), ("k", 11)]


def test_events_may_be_details_json_text_or_parsed():
    body = json.dumps(event("k", 2))
    detail = event("k", 1)["detail"]
    parsed = ChangeEvent.parse(event("k", 3))
    assert drain(OrderedConsumer(VersionsOf(), InMemoryMarkStore()), [body, detail, parsed]) == [
        ("k", 1),
        ("k", 2),
        ("k", 3),
    ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({**event("k", 1), "detail-type": "secret"}, "not a StateChanged"),
        ({**event("k", 1), "detail": [1]}, "not an object"),
        ({"key": "", "version": 1, "operation": "created"}, "detail.key"),
        ({"key": "k", "version": True, "operation": "created"}, "detail.version"),
        ({"key": "k", "version": 0, "operation": "created"}, "detail.version"),
        ({"key": "k", "version": "2", "operation": "created"}, "detail.version"),
        ({"key": "k", "version": 10**15, "operation": "created"}, "detail.version"),
        ({"key": "k", "version": {"secret": "s"}, "operation": "created"}, r"detail.version .* \(a dict\)$"),
        ({"key": "k", "version": 2, "previous_version": -1, "operation": "updated"}, "previous_version"),
        ({"key": "k", "version": 2, "operation": "written"}, "detail.operation"),
        ({"key": "k", "version": 2, "operation": "secret"}, "detail.operation"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_malformed_events_are_refused_before_anything_is_yielded(bad, message):
    marks = InMemoryMarkStore()
    changes = OrderedConsumer(VersionsOf(), marks).consume([event("k", 1), bad])
    with pytest.raises(ValueError, match=message) as refused:
        next(changes)
    assert marks.snapshot() == {}
    assert "secret" not in str(refused.value)  # the message is logged: it never shows what a field holds


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=4),
    data=st.data(),
)
def test_any_order_repeats_and_drops_give_every_version_once_in_order(sizes, data):
    keys = [f"k{n}" for n in range(len(sizes))]
    everything = [(key, v) for key, size in zip(keys, sizes, strict=True) for v in range(1, size + 1)]
    # The newest version of each key stays (a gap after the last event seen is not knowable).
    kept = [
        pair
        for pair in everything
        if pair[1] == dict(zip(keys, sizes, strict=True))[pair[0]] or data.draw(st.booleans())
    ]
    delivered = kept + data.draw(st.lists(st.sampled_from(kept), max_size=10))
    delivered = data.draw(st.permutations(delivered))
    reader = VersionsOf({pair: Record({"v": pair[1]}) for pair in everything})

    changes = list(OrderedConsumer(reader, InMemoryMarkStore()).consume([event(k, v) for k, v in delivered]))

    for key, size in zip(keys, sizes, strict=True):
        assert [c.version for c in changes if c.key == key] == list(range(1, size + 1))
    assert all(c.value == {"v": c.version} for c in changes)
    assert sorted(reader.reads) == sorted(set(everything) - set(kept))
