"""The DynamoDB mark store against the moto server (the same emulator the local stack runs): marks only move
forwards, whoever writes last, and two consumers sharing a table keep apart by prefix."""

from __future__ import annotations

import threading
import uuid

import boto3
import pytest

from state_client.consumer import DynamoDBMarkStore, InMemoryMarkStore, OrderedConsumer, create_mark_table

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dynamodb():
    from devstack.moto_server import SerializedMotoServer
    from devstack.resources import DUMMY_CREDENTIALS

    server = SerializedMotoServer(port=0).start()
    try:
        yield boto3.client("dynamodb", endpoint_url=server.endpoint_url, region_name="us-east-1", **DUMMY_CREDENTIALS)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def table(dynamodb):
    name = f"marks-{uuid.uuid4().hex[:8]}"
    create_mark_table(dynamodb, name)
    return name


@pytest.fixture
def store(dynamodb, table):
    return DynamoDBMarkStore(table, client=dynamodb, prefix=f"{uuid.uuid4().hex[:6]}/")


def test_an_unknown_key_is_at_zero_and_advances_only_forwards(store):
    assert store.get("user:1") == 0
    assert store.advance("user:1", 3)
    assert store.get("user:1") == 3
    assert not store.advance("user:1", 3)
    assert not store.advance("user:1", 2)
    assert store.get("user:1") == 3
    assert store.advance("user:1", 4)
    assert store.get("user:1") == 4


def test_racing_writers_leave_the_highest_mark(store):
    versions = list(range(1, 41))
    won: list[int] = []
    barrier = threading.Barrier(8)

    def writer(mine: list[int]) -> None:
        barrier.wait()
        for version in mine:
            if store.advance("k", version):
                won.append(version)

    # Eight writers, each with its versions in a different order: low ones land after high ones.
    threads = [threading.Thread(target=writer, args=(versions[n::8][:: 1 if n % 2 else -1],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert store.get("k") == 40
    assert 40 in won
    # No version won twice: each win was above every mark before it.
    assert len(set(won)) == len(won)


def test_prefixes_keep_consumers_apart(dynamodb, table):
    one = DynamoDBMarkStore(table, client=dynamodb, prefix="one/")
    two = DynamoDBMarkStore(table, client=dynamodb, prefix="two/")
    assert one.advance("shared:key", 5)
    assert two.get("shared:key") == 0
    assert two.advance("shared:key", 1)
    assert one.get("shared:key") == 5


def test_a_consumer_on_the_table_resumes_where_another_left(store):
    class NoReads:
        def get_version(self, key, version, /):
            raise AssertionError("nothing is missing")

    events = [
        {"key": "k", "version": v, "previous_version": v - 1 or None, "operation": "updated", "value": v}
        for v in range(1, 6)
    ]
    first = OrderedConsumer(NoReads(), store).consume(events[:3])
    assert [c.version for c in first] == [1, 2, 3]

    # Another process, another consumer, the same table: a replay of everything gives only 4 and 5.
    assert [c.version for c in OrderedConsumer(NoReads(), store).consume(events)] == [4, 5]
    assert store.get("k") == 5


def test_the_in_memory_store_starts_from_given_marks():
    store = InMemoryMarkStore({"k": 2})
    assert store.get("k") == 2
    assert not store.advance("k", 2)
    assert store.advance("k", 3)


def test_two_consumers_at_once_each_in_order_together_complete_and_marks_never_back(store):
    class Versions:
        """Every version has a value: these consumers are about marks, not the history API."""

        def get_version(self, key, version, /):
            return type("Record", (), {"value": version, "updated_by": "w", "updated_at": "t"})()

    keys = [f"k{n}" for n in range(4)]
    top = 30

    def batch(seed: int) -> list[dict]:
        # Each consumer sees a different subset (always the newest, so both reach the end), shuffled.
        chosen = [(k, v) for k in keys for v in range(1, top + 1) if v == top or (v * 7 + seed) % 3 == 0]
        chosen.sort(key=lambda pair: (pair[1] * 31 + seed * 17) % 11)
        return [
            {"key": k, "version": v, "previous_version": v - 1 or None, "operation": "updated", "value": v}
            for k, v in chosen
        ]

    yielded: dict[int, list[tuple[str, int]]] = {0: [], 1: []}
    seen_marks: dict[str, list[int]] = {k: [] for k in keys}
    done = threading.Event()
    start = threading.Barrier(3)

    def consume(n: int) -> None:
        start.wait()
        for change in OrderedConsumer(Versions(), store).consume(batch(n)):
            yielded[n].append((change.key, change.version))

    def watch_marks() -> None:
        start.wait()
        while not done.is_set():
            for k in keys:
                seen_marks[k].append(store.get(k))

    threads = [threading.Thread(target=consume, args=(n,)) for n in (0, 1)]
    watcher = threading.Thread(target=watch_marks)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()

    for k in keys:
        mine = [[v for key, v in yielded[n] if key == k] for n in (0, 1)]
        assert all(versions == sorted(set(versions)) for versions in mine), mine  # each in order, no repeats
        assert set(mine[0]) | set(mine[1]) == set(range(1, top + 1))  # together, nothing skipped
        assert seen_marks[k] == sorted(seen_marks[k])  # never backwards
        assert store.get(k) == top
