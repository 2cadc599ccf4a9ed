"""Change events through the whole local stack: HTTP writes -> table -> stream poller ->
publish_changes (its own worker process) -> EventBridge bus -> the template's rule -> `state-changes`.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from datetime import datetime
from typing import Any

import boto3
import pytest

from devstack.event_tail import take_messages
from devstack.resources import DUMMY_CREDENTIALS
from tests.doubles import ApiClient, NoMetrics, utc_now
from tests.event_schemas import assert_valid_event

pytestmark = pytest.mark.e2e

ARRIVAL_TIMEOUT = 15.0


class Inbox:
    """Every message of the `state-changes` queue, by key, with the time the test saw it arrive. One per
    session: the queue is shared, so whoever drains it keeps what it finds for everybody."""

    def __init__(self, moto_url: str) -> None:
        self.sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1", **DUMMY_CREDENTIALS)
        self.url = self.sqs.get_queue_url(QueueName="state-service-local-state-changes")["QueueUrl"]
        self.by_key: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def poll(self) -> None:
        with self._lock:
            while True:
                # Short polls: the emulator serves one request at a time, a long poll would stall it.
                events = take_messages(self.sqs, self.url)
                seen = time.time()
                if not events:
                    return
                for event in events:
                    # Every event the whole stack publishes, as a consumer receives it.
                    assert_valid_event(event)
                    detail = event["detail"]
                    self.by_key.setdefault(detail["key"], []).append((seen, detail))

    def wait_for(self, key: str, versions: int, timeout: float = ARRIVAL_TIMEOUT) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            found = self.by_key.get(key, [])
            if len({d["version"] for _, d in found}) >= versions or time.monotonic() > deadline:
                return [d for _, d in sorted(found, key=lambda pair: pair[1]["version"])]
            time.sleep(0.02)


@pytest.fixture(scope="module")
def inbox(devstack) -> Inbox:
    return Inbox(devstack.moto_url)


@pytest.fixture(scope="module")
def client(devstack) -> ApiClient:
    return ApiClient(devstack)


def test_put_patch_delete_each_yield_exactly_one_event_with_the_contract_fields(client, inbox):
    key = f"ev:{uuid.uuid4().hex}"

    assert client.put(key, {"a": 1, "b": 2}).status_code == 201
    assert client.patch(key, {"b": None}).status_code == 200
    assert client.delete(key).status_code == 204
    assert client.put(key, "again").status_code == 201

    events = inbox.wait_for(key, 4)
    time.sleep(1.0)  # anything extra would have arrived by now
    inbox.poll()
    everything = [d for _, d in inbox.by_key[key]]
    assert [(e["version"], e["previous_version"], e["operation"]) for e in events] == [
        (1, None, "created"),
        (2, 1, "updated"),
        (3, 2, "deleted"),
        (4, 3, "created"),
    ]
    assert [e.get("value") for e in events] == [{"a": 1, "b": 2}, {"a": 1}, None, "again"]
    assert all(e["actor"] == "alice" and "value_omitted" not in e for e in events)
    assert all(datetime.fromisoformat(e["occurred_at"]).tzinfo is not None for e in events)
    assert len({e["event_id"] for e in events}) == 4
    assert len(everything) == 4  # exactly one event per version


def test_a_write_whose_handler_never_ran_past_it_still_yields_its_event(devstack, inbox):
    # The crash right after the DynamoDB write, in its strongest form: the write is made through the
    # core's StateStore directly, so nothing that a handler does after a write (response, cache
    # write-through) ever happens. The stream alone carries the change out.
    from state_core.domain.codec import StoredValue
    from state_core.domain.writes import Precondition
    from state_core.storage.state import StateStore

    key = f"ev:{uuid.uuid4().hex}"
    ddb = devstack.client("dynamodb")
    StateStore(ddb, devstack.table_name).write(
        key,
        StoredValue.encode(b'{"crashed":true}'),
        actor="writer",
        now=utc_now(),
        precondition=Precondition.NOT_EXPIRED,
    )

    events = inbox.wait_for(key, 1)

    assert [(e["version"], e["operation"], e["actor"], e["value"]) for e in events] == [
        (1, "created", "writer", {"crashed": True})
    ]


def test_a_value_too_large_for_the_event_arrives_as_value_omitted(client, inbox):
    key = f"ev:{uuid.uuid4().hex}"

    assert client.put(key, "x" * 100_000).status_code == 201

    (event,) = inbox.wait_for(key, 1)
    assert event["value_omitted"] is True
    assert "value" not in event
    assert event["version"] == 1


def test_the_stream_brings_the_cache_to_a_version_the_handler_never_cached(devstack):
    # The handler's cache update is suppressed by writing through a StateManager built without a cache;
    # only the stream's cache repair (repair_cache, its own mapping) can put the new version into Redis.
    import redis

    from state_core.service.manager import StateManager
    from state_core.storage.state import StateStore

    redis_url = next(line.split()[1] for line in devstack.output if line.startswith("redis "))
    # The stack's Redis wants the AUTH token the functions read from Secrets Manager.
    auth_secret = next(line.split()[2] for line in devstack.output if line.startswith("redis auth "))
    secrets = devstack.client("secretsmanager")
    cache = redis.Redis.from_url(redis_url, password=secrets.get_secret_value(SecretId=auth_secret)["SecretString"])
    ddb = devstack.client("dynamodb")

    manager = StateManager(StateStore(ddb, devstack.table_name), clock=utc_now, metrics=NoMetrics())
    key = f"ev:{uuid.uuid4().hex}"
    manager.put(key, {"v": 1}, actor="alice")
    manager.put(key, {"v": 2}, actor="alice")

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and cache.hget(f"st:{{{key}}}", "v") != b"2":
        time.sleep(0.05)
    assert cache.hget(f"st:{{{key}}}", "v") == b"2"


def test_lag_from_write_to_event_arrival_is_measured(client, inbox):
    lags: list[float] = []
    for _ in range(20):
        key = f"lag:{uuid.uuid4().hex}"
        assert client.put(key, 1).status_code == 201
        written = time.time()
        inbox.wait_for(key, 1)
        arrived = min(seen for seen, _ in inbox.by_key[key])
        lags.append(arrived - written)

    p50, worst = statistics.median(lags), max(lags)
    print(f"\nwrite -> event in state-changes (local stack): p50 {p50 * 1000:.0f} ms, max {worst * 1000:.0f} ms")
    assert worst < ARRIVAL_TIMEOUT
