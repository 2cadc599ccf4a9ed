"""StateManager against the serialized moto server: versions, preconditions, tombstones, expiry, sizes."""

import base64
import json
import os
import threading
import uuid

import boto3
import pytest

from state_core.domain.errors import NotFound, PayloadTooLarge, PreconditionFailed, ServiceUnavailable
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import Expectation, StateManager
from state_core.storage.state import StateStore
from tests.doubles import RecordedMetrics

pytestmark = pytest.mark.integration


@pytest.fixture
def recorded_metrics():
    return RecordedMetrics()


@pytest.fixture
def manager(store, clock, recorded_metrics):
    return StateManager(store, clock=clock, metrics=recorded_metrics)


@pytest.fixture
def key():
    return f"test:{uuid.uuid4().hex}"


def test_first_put_creates_version_1_and_replacing_keeps_created_at(manager, clock, key):
    first = manager.put(key, {"a": 1}, actor="alice")
    clock.advance(5)
    second = manager.put(key, {"a": 2}, actor="bob")

    assert (first.created, first.record.version) == (True, 1)
    assert (second.created, second.record.version) == (False, 2)
    assert second.record.created_at == first.record.created_at
    assert second.record.updated_by == "bob"
    assert json.loads(manager.get(key).canonical_value) == {"a": 2}


def test_get_returns_the_canonical_json_as_stored(manager, key):
    manager.put(key, {"b": [1, 2.5], "é": None}, actor="alice")
    assert manager.get(key).canonical_value == '{"b":[1,2.5],"é":null}'.encode()


def test_delete_leaves_a_tombstone_and_recreation_continues_the_count(manager, clock, key):
    manager.put(key, 1, actor="alice")
    manager.put(key, 2, actor="alice")
    tombstone = manager.delete(key, actor="alice")
    with pytest.raises(NotFound):
        manager.get(key)
    clock.advance(1)
    again = manager.put(key, 3, actor="alice")

    assert tombstone.version == 3
    assert (again.created, again.record.version) == (True, 4)
    assert again.record.created_at == again.record.updated_at


def test_delete_of_an_absent_key_is_not_found(manager, key):
    with pytest.raises(NotFound):
        manager.delete(key, actor="alice")


def test_if_match_mismatch_is_412_with_the_current_version_and_writes_nothing(manager, key):
    manager.put(key, "v1", actor="alice")
    manager.put(key, "v2", actor="alice")
    with pytest.raises(PreconditionFailed) as refused:
        manager.put(key, "v3", actor="alice", expect=Expectation(if_match=1))
    assert refused.value.current_version == 2
    assert (manager.get(key).record.version, manager.get(key).canonical_value) == (2, b'"v2"')


def test_if_match_on_the_current_version_writes(manager, key):
    manager.put(key, "v1", actor="alice")
    assert manager.put(key, "v2", actor="alice", expect=Expectation(if_match=1)).record.version == 2


def test_if_none_match_any_creates_only(manager, key):
    created = manager.put(key, "first", actor="alice", expect=Expectation(if_none_match_any=True))
    with pytest.raises(PreconditionFailed) as refused:
        manager.put(key, "second", actor="alice", expect=Expectation(if_none_match_any=True))
    assert created.created
    assert refused.value.current_version == 1
    assert manager.get(key).canonical_value == b'"first"'


def test_if_none_match_any_recreates_over_a_tombstone(manager, key):
    manager.put(key, "a", actor="alice")
    manager.delete(key, actor="alice")
    result = manager.put(key, "b", actor="alice", expect=Expectation(if_none_match_any=True))
    assert (result.created, result.record.version) == (True, 3)


def test_if_match_on_an_absent_key_is_412_without_a_version(manager, key):
    with pytest.raises(PreconditionFailed) as refused:
        manager.put(key, "x", actor="alice", expect=Expectation(if_match=1))
    assert refused.value.current_version is None


def test_patch_merges_and_answers_the_merged_value(manager, key):
    manager.put(key, {"a": 1, "b": {"c": 2}}, actor="alice")
    result, merged = manager.patch(key, {"b": {"c": None, "d": 3}, "e": [1]}, actor="bob")
    assert json.loads(merged) == {"a": 1, "b": {"d": 3}, "e": [1]}
    assert result.record.version == 2
    assert manager.get(key).canonical_value == merged


def test_patch_of_a_missing_key_is_not_found(manager, key):
    with pytest.raises(NotFound):
        manager.patch(key, {"a": 1}, actor="alice")


def test_patch_with_stale_if_match_is_412_and_writes_nothing(manager, key):
    manager.put(key, {"a": 1}, actor="alice")
    manager.put(key, {"a": 2}, actor="alice")
    with pytest.raises(PreconditionFailed) as refused:
        manager.patch(key, {"b": 1}, actor="alice", expect=Expectation(if_match=1))
    assert refused.value.current_version == 2
    assert manager.get(key).canonical_value == b'{"a":2}'


def test_delete_with_stale_if_match_is_412(manager, key):
    manager.put(key, 1, actor="alice")
    manager.put(key, 2, actor="alice")
    with pytest.raises(PreconditionFailed):
        manager.delete(key, actor="alice", expect=Expectation(if_match=1))
    assert manager.get(key).record.version == 2


def test_expired_key_is_absent_and_a_put_after_expiry_recreates_after_the_expiry_s_version(manager, clock, key):
    manager.put(key, "short-lived", actor="alice", ttl_seconds=2)
    assert manager.get(key).record.expires_at is not None
    clock.advance(2.5)

    with pytest.raises(NotFound):
        manager.get(key)
    with pytest.raises(NotFound):
        manager.patch(key, {"a": 1}, actor="alice")
    with pytest.raises(NotFound):
        manager.delete(key, actor="alice")
    again = manager.put(key, "again", actor="alice")
    # The expiry took version 2 (written by the first write that found the key expired).
    assert (again.created, again.record.version, again.record.expires_at) == (True, 3, None)


def test_patch_keeps_the_expiry(manager, key):
    first = manager.put(key, {"a": 1}, actor="alice", ttl_seconds=60)
    result, _ = manager.patch(key, {"b": 2}, actor="alice")
    assert result.record.expires_at == first.record.expires_at


def test_compressible_value_of_exactly_1_mib_round_trips(manager, key):
    value = "x" * (1_048_576 - 2)  # the quotes make 1 MiB of canonical JSON
    manager.put(key, value, actor="alice")
    view = manager.get(key)
    assert len(view.canonical_value) == 1_048_576
    assert json.loads(view.canonical_value) == value


def test_value_of_1_mib_plus_1_is_413_and_writes_nothing(manager, key):
    with pytest.raises(PayloadTooLarge):
        manager.put(key, "x" * (1_048_576 - 1), actor="alice")
    with pytest.raises(NotFound):
        manager.get(key)


def test_incompressible_value_of_1_mib_round_trips_through_a_blob(manager, store, key):
    value = base64.b64encode(os.urandom(786_426)).decode()  # 1,048,570 characters: 1 MiB of JSON
    result = manager.put(key, value, actor="alice")
    assert result.record.blob is not None
    assert result.record.blob.chunks >= 2
    view = manager.get(key)
    assert len(view.canonical_value) == 1_048_570
    assert json.loads(view.canonical_value) == value


def test_patch_that_would_pass_1_mib_is_413_and_writes_nothing(manager, key):
    manager.put(key, {"a": "x" * 1_000_000}, actor="alice")
    with pytest.raises(PayloadTooLarge):
        manager.patch(key, {"b": "y" * 100_000}, actor="alice")
    assert manager.get(key).record.version == 1


def test_concurrent_patches_each_land_exactly_once(manager, recorded_metrics, key):
    manager.put(key, {}, actor="alice")
    errors = []

    def add_member(index):
        try:
            manager.patch(key, {f"m{index}": index}, actor="alice")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add_member, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    view = manager.get(key)
    assert errors == []
    assert json.loads(view.canonical_value) == {f"m{i}": i for i in range(20)}
    assert view.record.version == 21


def test_unreachable_table_is_service_unavailable(clock, recorded_metrics, key):
    dead = boto3.client("dynamodb", endpoint_url="http://127.0.0.1:9", config=DYNAMODB_CONFIG, region_name="us-east-1")
    manager = StateManager(StateStore(dead, "missing"), clock=clock, metrics=recorded_metrics)
    with pytest.raises(ServiceUnavailable):
        manager.get(key)
    with pytest.raises(ServiceUnavailable):
        manager.put(key, 1, actor="alice")


class RetryingClient:
    """The real client; each update_item is sent twice, as botocore does when the first answer times out
    after DynamoDB applied it."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def update_item(self, **kwargs):
        self._client.update_item(**kwargs)
        return self._client.update_item(**kwargs)


@pytest.fixture
def retried_manager(client, state_table, clock, recorded_metrics):
    return StateManager(StateStore(RetryingClient(client), state_table), clock=clock, metrics=recorded_metrics)


def test_a_write_retried_after_it_was_applied_takes_one_version(retried_manager, key):
    first = retried_manager.put(key, "a", actor="alice")
    second = retried_manager.put(key, "b", actor="alice")
    guarded = retried_manager.put(key, "c", actor="alice", expect=Expectation(if_match=2))
    tombstone = retried_manager.delete(key, actor="alice", expect=Expectation(if_match=3))

    assert (first.created, first.record.version) == (True, 1)
    assert (second.created, second.record.version) == (False, 2)
    assert guarded.record.version == 3
    assert tombstone.version == 4


def test_a_patch_retried_after_it_was_applied_is_not_refused(retried_manager, recorded_metrics, key):
    retried_manager.put(key, {"a": 1}, actor="alice")
    result, merged = retried_manager.patch(key, {"b": 2}, actor="alice", expect=Expectation(if_match=1))
    assert (result.record.version, json.loads(merged)) == (2, {"a": 1, "b": 2})
    assert recorded_metrics.count("Conflicts") == 0
