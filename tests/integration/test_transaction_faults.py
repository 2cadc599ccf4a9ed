"""Transactions against the real store (moto server) and a real redis-server: the cache after an
acknowledged transaction, Redis down during one, and a function that dies at each step after the commit."""

from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import pytest

from devstack import failpoints
from state_core.api.transact import render
from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.lock import LockPolicy, RedisKeyLock
from state_core.cache.state_cache import CachePolicy, RedisStateCache
from state_core.domain.errors import NotFound
from state_core.domain.transactions import TransactionConflict, idempotency_partition, parse_transaction
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import StateManager
from state_core.service.transactions import Transactions
from state_core.storage.state import StateStore
from state_core.storage.transactions import TransactionStore
from state_core.stream.repair import CacheRepairer
from tests.doubles import SIGNING_KEY, RecordedMetrics, utc_now
from tests.streams import stream_records

pytestmark = pytest.mark.integration


class Container:
    """What one function container holds: a manager and the transactions over one Redis link."""

    def __init__(self, redis_url, table):
        self.metrics = RecordedMetrics()
        link = RedisLink(
            connect(redis_url, password=None, timeout_seconds=0.05),
            CircuitBreaker(open_seconds=0.5),
            on_error=lambda: None,
            signing_key=SIGNING_KEY,
        )
        self.cache = RedisStateCache(link, self.metrics, clock=utc_now, policy=CachePolicy())
        self.client = client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
        store = StateStore(client, table)
        self.manager = StateManager(
            store,
            clock=utc_now,
            metrics=self.metrics,
            cache=self.cache,
            lock=RedisKeyLock(link, self.metrics, LockPolicy(lease_seconds=2.0, max_wait_seconds=1.0)),
        )
        self.transactions = Transactions(
            TransactionStore(client, table, store), self.manager, clock=utc_now, metrics=self.metrics
        )

    def transact(self, operations, *, partition=None):
        transaction = parse_transaction({"operations": operations})
        outcome = self.transactions.transact(transaction, actor="t", render=render, idempotency_partition=partition)
        return outcome.status, json.loads(outcome.body)

    def value(self, key, *, consistent=False):
        try:
            view = self.manager.get(key, consistent=consistent)
        except NotFound:
            return None
        return view.record.version, json.loads(view.canonical_value)


@pytest.fixture
def keys():
    run = uuid.uuid4().hex[:12]
    return [f"txf:{run}:{n}" for n in range(4)]


@pytest.fixture
def armed(monkeypatch):
    monkeypatch.setenv("STATE_FAILPOINTS", "1")
    yield
    failpoints.disarm()


def cached_at_version_1(container, keys):
    for key in keys:
        container.manager.put(key, {"v": 1}, actor="t")
        assert container.value(key) == (1, {"v": 1})  # read, so the cache holds it


TRANSFER = [
    ("put", {"v": 2}),
    ("patch", {"p": 2}),
    ("delete", None),
]


def operations_on(keys):
    ops = []
    for key, (op, payload) in zip(keys, TRANSFER, strict=False):
        operation = {"op": op, "key": key}
        if op == "put":
            operation["value"] = payload
        elif op == "patch":
            operation["patch"] = payload
        ops.append(operation)
    ops.append({"op": "check", "key": keys[3], "if_match": 1})
    return ops


AFTER = [(2, {"v": 2}), (2, {"v": 1, "p": 2}), None, (1, {"v": 1})]


def test_after_an_acknowledged_transaction_every_cached_read_sees_its_versions(redis_server, state_table, keys):
    writer, reader = Container(redis_server.url, state_table), Container(redis_server.url, state_table)
    cached_at_version_1(reader, keys)

    status, _ = writer.transact(operations_on(keys))

    assert status == 200
    assert [reader.value(key) for key in keys] == AFTER


def test_a_transaction_while_redis_is_down_is_fenced_before_the_writers_next_answer(redis_server, state_table, keys):
    writer, reader = Container(redis_server.url, state_table), Container(redis_server.url, state_table)
    cached_at_version_1(reader, keys)

    redis_server.pause()
    try:
        status, _ = writer.transact(operations_on(keys))  # DynamoDB took it; every write-through failed
    finally:
        redis_server.resume()
    assert status == 200
    assert writer.metrics.count("CacheErrors") >= 1

    # The writer's next Redis call, once its breaker lets one through, replays its kept write-throughs as
    # fences before anything else: the documented bound for a write made while Redis was unreachable
    time.sleep(0.6)
    writer.value(f"{keys[0]}:other")

    assert [reader.value(key) for key in keys] == AFTER


@pytest.mark.parametrize(
    ("point", "skip", "committed"),
    [
        ("transact_before_commit", 0, False),
        ("transact_after_commit_before_cache", 0, True),
        ("transact_after_cache_write", 0, True),
        ("transact_after_cache_write", 1, True),
    ],
)
def test_a_function_that_dies_at_any_step_leaves_all_or_none_and_one_event_per_version(
    armed, redis_server, state_table, keys, point, skip, committed
):
    # Given the keys at version 1, cached, and a transaction whose function dies at `point`
    container = Container(redis_server.url, state_table)
    cached_at_version_1(container, keys)
    failpoints.arm(point, "raise", count=1, skip=skip)

    with pytest.raises(failpoints.FailpointError):
        container.transact(operations_on(keys))

    # Then DynamoDB holds all of it or none of it
    consistent = [container.value(key, consistent=True) for key in keys]
    assert consistent == (AFTER if committed else [(1, {"v": 1})] * 4)

    # And the stream holds exactly one record per committed version, each naming the one transaction
    records = [r for r in stream_records(state_table, set(keys)) if "version" in r["dynamodb"].get("NewImage", {})]
    seen = [(r["dynamodb"]["Keys"]["pk"]["S"], int(r["dynamodb"]["NewImage"]["version"]["N"])) for r in records]
    assert len(seen) == len(set(seen))
    written = [r for r in records if "transaction_id" in r["dynamodb"]["NewImage"]]
    assert sorted(key for key, version in seen if version == 2) == (sorted(keys[:3]) if committed else [])
    assert len({r["dynamodb"]["NewImage"]["transaction_id"]["S"] for r in written}) == (1 if committed else 0)

    # And once the stream's repair fences them, no cached read serves the older versions
    assert CacheRepairer(container.cache, metrics=RecordedMetrics(), log=_Log()).repair(records, lambda: 60.0) == []
    assert [container.value(key) for key in keys] == consistent


@pytest.mark.parametrize("first", ["died", "in_flight"])
def test_a_replayed_answer_is_never_followed_by_an_older_cached_read(armed, redis_server, state_table, keys, first):
    # Given the keys cached at version 1, and a first request under an Idempotency-Key that committed but wrote
    # no key's cache: its function died there, or has not got there yet
    reader = Container(redis_server.url, state_table)
    cached_at_version_1(reader, keys)
    partition = idempotency_partition("t", uuid.uuid4().hex)
    first_request = Container(redis_server.url, state_table)
    if first == "died":
        failpoints.arm("transact_after_commit_before_cache", "raise", count=1)
        with pytest.raises(failpoints.FailpointError):
            first_request.transact(operations_on(keys), partition=partition)
    else:
        failpoints.arm("transact_after_commit_before_cache", "pause", 10, count=1)
        thread = threading.Thread(
            target=first_request.transact, args=(operations_on(keys),), kwargs={"partition": partition}
        )
        thread.start()
        assert failpoints.wait_reached("transact_after_commit_before_cache")

    # When its retry is answered with the first outcome
    try:
        status, _ = Container(redis_server.url, state_table).transact(operations_on(keys), partition=partition)

        # Then that acknowledgement holds as a first answer's does: no read through the cache is older
        assert status == 200
        assert [reader.value(key) for key in keys] == AFTER
    finally:
        if first == "in_flight":
            failpoints.release("transact_after_commit_before_cache")
            thread.join(timeout=20)


class _Log:
    def warning(self, *args, **kwargs):
        pass

    def error(self, *args, **kwargs):
        pass


@pytest.mark.parametrize("answers_lost", ["first", "every"])
def test_a_commit_whose_answer_was_lost_is_answered_once_as_applied(
    armed, redis_server, state_table, keys, answers_lost
):
    # Given a container whose first (or every) TransactWriteItems reaches the table but whose answer is lost:
    # botocore retries with the same client token, which DynamoDB would answer as applied and moto refuses on
    # the moved versions (the next round finds the transaction's id on its keys); once botocore's attempts are
    # spent, one read of a written key settles it
    container = Container(redis_server.url, state_table)
    failpoints.install_dynamodb_faults(container.client)
    cached_at_version_1(container, keys[:2])

    lost = []

    def lose_the_commit(_name, operation=b"", **_):
        target = operation.decode() if isinstance(operation, bytes) else str(operation)
        if target.endswith("TransactWriteItems") and (answers_lost == "every" or not lost):
            lost.append(target)
            return "lost"
        return None

    failpoints.arm("dynamodb_answer", "call", lose_the_commit)

    # When a transaction conditioned on version 1 of both keys commits
    status, body = container.transact([{"op": "put", "key": key, "value": {"v": 2}, "if_match": 1} for key in keys[:2]])

    # Then it is applied once and answered as applied (not 412 for its own retry), and the cache follows
    assert lost
    assert status == 200, body
    assert [r["version"] for r in body["results"]] == [2, 2]
    assert [container.value(key) for key in keys[:2]] == [(2, {"v": 2})] * 2


class RetriedWithoutToken(TransactionStore):
    """A table that applies a commit, loses its answer, and refuses the SDK's retry on the versions the first
    attempt moved: what DynamoDB would do were the retry's ClientRequestToken forgotten or expired."""

    def commit(self, planned, **kwargs):
        super().commit(planned, **kwargs)
        raise TransactionConflict(["ConditionalCheckFailed"] * len(planned))


@pytest.mark.parametrize("with_key", [False, True])
def test_a_commit_refused_after_it_landed_is_answered_as_applied_not_412(redis_server, state_table, keys, with_key):
    # With an Idempotency-Key the refused retry finds the request's own record: still its own answer, not a
    # replay, and the cache is written through before it
    container = Container(redis_server.url, state_table)
    other = Container(redis_server.url, state_table)
    cached_at_version_1(other, keys[:2])
    container.transactions = Transactions(
        RetriedWithoutToken(container.client, state_table, StateStore(container.client, state_table)),
        container.manager,
        clock=utc_now,
        metrics=container.metrics,
    )

    transaction = parse_transaction(
        {"operations": [{"op": "put", "key": key, "value": {"v": 2}, "if_match": 1} for key in keys[:2]]}
    )
    partition = idempotency_partition("t", uuid.uuid4().hex) if with_key else None

    outcome = container.transactions.transact(transaction, actor="t", render=render, idempotency_partition=partition)

    assert (outcome.status, outcome.replayed) == (200, False), outcome
    assert [r["version"] for r in json.loads(outcome.body)["results"]] == [2, 2]
    assert [other.value(key) for key in keys[:2]] == [(2, {"v": 2})] * 2
    assert container.metrics.count("Conflicts") == 1


def test_a_transaction_that_keeps_losing_races_is_503_past_its_budget_and_writes_nothing(
    armed, redis_server, state_table, keys
):
    from state_core.domain.errors import ServiceUnavailable
    from state_core.service.manager import PatchPolicy

    container = Container(redis_server.url, state_table)
    container.transactions = Transactions(
        TransactionStore(container.client, state_table, StateStore(container.client, state_table)),
        container.manager,
        clock=utc_now,
        metrics=container.metrics,
        policy=PatchPolicy(time_budget_seconds=0.3),
    )
    container.manager.put(keys[0], {"n": 0}, actor="t")
    other = Container(redis_server.url, state_table)
    writes = iter(range(1, 1000))
    failpoints.arm(
        "transact_before_commit", "call", lambda *_, **__: other.manager.put(keys[0], {"n": next(writes)}, actor="o")
    )

    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        container.transact(
            [{"op": "patch", "key": keys[0], "patch": {"mine": True}}, {"op": "put", "key": keys[1], "value": 1}]
        )

    _, value = container.value(keys[0], consistent=True)
    assert "mine" not in value
    assert container.value(keys[1], consistent=True) is None
    # It went on losing until its budget was spent (how many rounds fit in 0.3 s depends on the machine): it
    # stops once its next backoff, at most max_delay_seconds, would end past the budget.
    assert container.metrics.count("Conflicts") >= 1
    assert time.monotonic() - started >= 0.3 - PatchPolicy().max_delay_seconds
