"""The change publisher against the moto server (EventBridge bus, rule, SQS queues, S3) and redis-server.

Stream records are real: written through the StateManager into a table with the template's stream, read
back with GetRecords and converted to Lambda's format as the local event source mapping does.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest

from devstack.event_tail import take_messages
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from state_core.stream.events import Operation, build_change, event_id
from state_core.stream.publisher import ChangePublisher
from state_core.stream.sender import EventSender, PublishPolicy
from tests.doubles import SIGNING_KEY, RecordedMetrics, utc_now
from tests.event_schemas import assert_valid_detail, assert_valid_event
from tests.streams import stream_records, up_to

pytestmark = pytest.mark.integration

REGION = "us-east-1"


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.lines.append((str(msg), kwargs))

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.lines.append((str(msg), kwargs))


class FlakyEvents:
    """The real EventBridge client, except that chosen entries come back failed (as PutEvents reports a
    partial failure: FailedEntryCount and an ErrorCode on the entry) a number of times, or always."""

    def __init__(self, real: Any, failures: dict[tuple[str, int], int]) -> None:
        self.real = real
        self.failures = dict(failures)  # (key, version) -> how many more times to fail (-1: always)
        self.attempts: list[list[tuple[str, int]]] = []  # per request: the entries it carried

    def put_events(self, **kwargs: Any) -> dict[str, Any]:
        entries = kwargs["Entries"]
        for entry in entries:
            assert_valid_detail(entry["Detail"])
        ids = [(d["key"], d["version"]) for d in (json.loads(e["Detail"]) for e in entries)]
        self.attempts.append(ids)
        failing = {i for i, ident in enumerate(ids) if self.failures.get(ident, 0) != 0}
        for i in failing:
            if self.failures[ids[i]] > 0:
                self.failures[ids[i]] -= 1
        passing = [e for i, e in enumerate(entries) if i not in failing]
        accepted = iter(self.real.put_events(Entries=passing)["Entries"] if passing else [])
        results = [
            {"ErrorCode": "InternalFailure", "ErrorMessage": "injected"} if i in failing else next(accepted)
            for i in range(len(entries))
        ]
        return {"FailedEntryCount": len(failing), "Entries": results}


@pytest.fixture(scope="module")
def aws(moto_server: str) -> dict[str, Any]:
    """A bus with the template's example rule to a queue, a dead-letter queue and a failure bucket."""
    suffix = uuid.uuid4().hex[:8]
    events = boto3.client("events", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    bus = f"bus-{suffix}"
    events.create_event_bus(Name=bus)
    queue = sqs.create_queue(QueueName=f"changes-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name=f"rule-{suffix}",
        EventBusName=bus,
        EventPattern=json.dumps({"source": ["state.service"], "detail-type": ["StateChanged"]}),
    )
    events.put_targets(Rule=f"rule-{suffix}", EventBusName=bus, Targets=[{"Id": "q", "Arn": queue_arn}])
    dlq = sqs.create_queue(QueueName=f"dlq-{suffix}")["QueueUrl"]
    bucket = f"failures-{suffix}"
    s3.create_bucket(Bucket=bucket)
    return {"events": events, "sqs": sqs, "s3": s3, "bus": bus, "queue": queue, "dlq": dlq, "bucket": bucket}


@pytest.fixture
def manager(state_table: str) -> StateManager:
    """Writes without any cache: only the stream path can bring the cache up to date."""
    store = StateStore(boto3.client("dynamodb", region_name=REGION), state_table)
    return StateManager(store, clock=utc_now, metrics=RecordedMetrics())


def drain(sqs: Any, queue: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while messages := take_messages(sqs, queue):
        for message in messages:
            assert_valid_event(message)
        found += messages
    return found


def publisher(aws: dict[str, Any], events_client: Any, *, log: Log | None = None, **more: Any) -> ChangePublisher:
    log = log or Log()
    sender = EventSender(
        events_client,
        dead_letters=aws["sqs"],
        dead_letter_queue_url=aws["dlq"],
        metrics=RecordedMetrics(),
        log=log,
        policy=PublishPolicy(max_attempts=3, base_backoff_seconds=0.01, max_backoff_seconds=0.02),
        sleep=lambda _seconds: None,
    )
    return ChangePublisher(sender, bus_name=aws["bus"], log=log, **more)


def test_only_the_refused_entries_are_retried_in_version_order(aws, manager, state_table):
    # Given three versions of one key and one of another, the first two versions refused once
    a, b = f"pub:{uuid.uuid4().hex}", f"pub:{uuid.uuid4().hex}"
    manager.put(a, {"n": 1}, actor="alice")
    manager.put(b, "x", actor="bob")
    manager.patch(a, {"n": 2}, actor="alice")
    manager.put(a, {"n": 3}, actor="alice")
    flaky = FlakyEvents(aws["events"], {(a, 1): 1, (a, 2): 1})

    # When the batch is published
    outcome = publisher(aws, flaky).publish(stream_records(state_table, {a, b}))

    # Then only those two were sent again, in version order, and every version arrived exactly once
    assert flaky.attempts[0] == [(a, 1), (b, 1), (a, 2), (a, 3)]
    assert flaky.attempts[1:] == [[(a, 1), (a, 2)]]
    assert outcome.failed_sequence_numbers == []
    assert outcome.dead_lettered == 0
    details = [e["detail"] for e in drain(aws["sqs"], aws["queue"])]
    assert sorted((d["key"], d["version"]) for d in details) == sorted([(a, 1), (a, 2), (a, 3), (b, 1)])
    assert {d["event_id"] for d in details if d["key"] == a} == {
        event_id(a, 1, Operation.CREATED),
        event_id(a, 2, Operation.UPDATED),
        event_id(a, 3, Operation.UPDATED),
    }


def test_an_entry_refused_past_the_retry_budget_is_dead_lettered_and_the_replay_delivers_it(
    aws, manager, state_table, moto_server
):
    from devstack.replay import replay

    # Given an entry EventBridge refuses every time
    key = f"pub:{uuid.uuid4().hex}"
    manager.put(key, {"n": 1}, actor="alice")
    manager.put(key, {"n": 2}, actor="alice")
    flaky = FlakyEvents(aws["events"], {(key, 1): -1})
    log = Log()

    # When the batch is published
    outcome = publisher(aws, flaky, log=log).publish(stream_records(state_table, {key}))

    # Then it was tried the budget's 3 times, kept in the dead-letter queue, and the batch succeeded
    assert sum(attempt.count((key, 1)) for attempt in flaky.attempts) == 3
    assert (outcome.published, outcome.dead_lettered, outcome.failed_sequence_numbers) == (1, 1, [])
    assert [d["detail"]["version"] for d in drain(aws["sqs"], aws["queue"])] == [2]
    assert "event dead-lettered" in [line for line, _ in log.lines]

    # And the replay publishes it from the dead-letter queue: none lost
    report = replay(
        endpoint_url=moto_server,
        bus_name=aws["bus"],
        dead_letter_queue_url=aws["dlq"],
        failure_bucket=aws["bucket"],
    )
    assert report.dead_letters_replayed == 1
    replayed = [d["detail"] for d in drain(aws["sqs"], aws["queue"])]
    assert [(d["key"], d["version"], d["event_id"]) for d in replayed] == [
        (key, 1, event_id(key, 1, Operation.CREATED))
    ]
    assert aws["sqs"].receive_message(QueueUrl=aws["dlq"]).get("Messages") is None


def test_records_that_cannot_even_be_dead_lettered_are_reported_as_batch_item_failures(aws, manager, state_table):
    key = f"pub:{uuid.uuid4().hex}"
    manager.put(key, 1, actor="alice")
    records = stream_records(state_table, {key})
    log = Log()
    broken_sender = EventSender(
        FlakyEvents(aws["events"], {(key, 1): -1}),
        dead_letters=aws["sqs"],
        dead_letter_queue_url=aws["dlq"] + "-missing",
        metrics=RecordedMetrics(),
        log=log,
        policy=PublishPolicy(max_attempts=2, base_backoff_seconds=0.01),
        sleep=lambda _seconds: None,
    )
    broken = ChangePublisher(broken_sender, bus_name=aws["bus"], log=log)

    outcome = broken.publish(records)

    assert outcome.failed_sequence_numbers == [records[-1]["dynamodb"]["SequenceNumber"]]


def test_failure_records_in_the_bucket_are_replayed_and_removed(aws, manager, state_table, moto_server):
    from devstack.replay import replay
    from state_core.storage.history import HistoryStore

    # Given a batch that the event source mapping gave up on (its S3 on-failure record)
    key = f"pub:{uuid.uuid4().hex}"
    manager.put(key, {"v": 1}, actor="alice")
    manager.delete(key, actor="alice")
    payload = json.dumps({"Records": stream_records(state_table, {key})})
    aws["s3"].put_object(
        Bucket=aws["bucket"],
        Key=f"aws/lambda/esm/shard/{uuid.uuid4()}",
        Body=json.dumps({"version": "1.0", "DDBStreamBatchInfo": {"batchSize": 2}, "payload": payload}).encode(),
    )

    # When it is replayed
    report = replay(
        endpoint_url=moto_server,
        bus_name=aws["bus"],
        dead_letter_queue_url=aws["dlq"],
        failure_bucket=aws["bucket"],
        table_name=state_table,
    )

    # Then both changes arrive, both versions are in the history (the batch never wrote them, and nothing
    # else does), and the record is gone
    assert report.failure_records_replayed == 1
    details = [d["detail"] for d in drain(aws["sqs"], aws["queue"])]
    assert [(d["version"], d["operation"]) for d in details] == [(1, "created"), (2, "deleted")]
    history = HistoryStore(boto3.client("dynamodb", region_name=REGION), state_table, retention_seconds=86_400)
    entries, _ = history.page(key, limit=10, before=None)
    assert [(e.version, e.operation) for e in entries] == [(2, "deleted"), (1, "created")]
    assert aws["s3"].list_objects_v2(Bucket=aws["bucket"]).get("KeyCount") == 0


def redis_cache(redis_server: Any, **policy: Any) -> Any:
    from state_core.cache.breaker import CircuitBreaker
    from state_core.cache.link import RedisLink, connect
    from state_core.cache.state_cache import CachePolicy, RedisStateCache

    link = RedisLink(
        connect(redis_server.url, password=None, timeout_seconds=0.5),
        CircuitBreaker(5),
        lambda: None,
        signing_key=SIGNING_KEY,
    )
    return RedisStateCache(link, RecordedMetrics(), clock=utc_now, policy=CachePolicy(**policy))


def repairer(cache: Any) -> Any:
    """The stream's cache repair (its own mapping, repair_cache), with the backoff it runs with."""
    from state_core.stream.repair import CacheRepairer

    return CacheRepairer(cache, metrics=RecordedMetrics(), log=Log())


def cached_manager(state_table: str, cache: Any) -> StateManager:
    """The request path with the cache: reads hit it, misses fill it, writes write through."""
    store = StateStore(boto3.client("dynamodb", region_name=REGION), state_table)
    return StateManager(store, cache=cache, clock=utc_now, metrics=RecordedMetrics())


def test_the_stream_fences_out_a_cached_version_the_write_never_replaced(aws, manager, state_table, redis_server):
    # Given a cache holding version 1, and version 2 written by a function whose cache update never happened
    cache = redis_cache(redis_server)
    reader = cached_manager(state_table, cache)
    key = f"pub:{uuid.uuid4().hex}"
    manager.put(key, {"v": 1}, actor="alice")
    assert json.loads(reader.get(key).canonical_value) == {"v": 1}
    manager.put(key, {"v": 2}, actor="alice")

    # When the stream's batch is repaired
    repairer(cache).repair(stream_records(state_table, {key}), lambda: 60.0)

    # Then the cache holds version 2 as a fence (no value), so the next read fills version 2 from DynamoDB
    entry = cache.get(key)
    assert entry is not None
    assert (entry.version, entry.record.value) == (2, None)
    assert json.loads(reader.get(key).canonical_value) == {"v": 2}
    filled = cache.get(key)
    assert filled is not None
    assert filled.record.value is not None
    assert json.loads(filled.record.value.canonical()) == {"v": 2}


def test_a_lagging_record_never_brings_an_older_value_back_into_an_empty_cache(aws, manager, state_table, redis_server):
    # Given version 2 in the table and its cache entry gone (evicted, or Redis restarted)
    cache = redis_cache(redis_server)
    reader = cached_manager(state_table, cache)
    key = f"pub:{uuid.uuid4().hex}"
    manager.put(key, {"v": 1}, actor="alice")
    manager.put(key, {"v": 2}, actor="alice")
    assert cache.get(key) is None

    # When the stream, lagging, repairs a batch that ends at version 1
    repairer(cache).repair(up_to(stream_records(state_table, {key}), 1), lambda: 60.0)

    # Then a read still answers version 2: the acknowledged write is never hidden
    view = reader.get(key)
    assert (view.record.version, json.loads(view.canonical_value)) == (2, {"v": 2})


def test_a_lagging_delete_never_hides_the_re_created_key(aws, manager, state_table, redis_server):
    # Given a key written, deleted and written again, none of it in the cache
    cache = redis_cache(redis_server)
    reader = cached_manager(state_table, cache)
    key = f"pub:{uuid.uuid4().hex}"
    manager.put(key, "first", actor="alice")
    manager.delete(key, actor="alice")
    manager.put(key, "again", actor="alice")

    # When the stream, lagging, repairs a batch that ends at the delete (version 2)
    repairer(cache).repair(up_to(stream_records(state_table, {key}), 2), lambda: 60.0)

    # Then a read answers the re-created version 3, not 404
    view = reader.get(key)
    assert (view.record.version, view.canonical_value) == (3, b'"again"')


def test_a_lagging_record_never_outlives_a_short_lived_newer_entry(aws, state_table, redis_server):
    import time

    from state_core.domain.errors import NotFound

    # Given version 1 and then version 2 with ttl_seconds=1, both written through the cache: version 2's
    # entry lives only past the key's expiry by the run margin (30 s deployed, 0.2 s here to keep it short)
    cache = redis_cache(redis_server, longest_run_seconds=0.2)
    writer = cached_manager(state_table, cache)
    key = f"pub:{uuid.uuid4().hex}"
    writer.put(key, {"v": 1}, actor="alice")
    writer.put(key, {"v": 2}, actor="alice", ttl_seconds=1)
    deadline = time.monotonic() + 5
    while cache.get(key) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.get(key) is None

    # When the stream, lagging past that entry's lifetime, repairs a batch that ends at version 1
    repairer(cache).repair(up_to(stream_records(state_table, {key}), 1), lambda: 60.0)

    # Then a read answers what the table holds (version 2, expired: 404), never version 1's value
    with pytest.raises(NotFound):
        writer.get(key)


# ---------------------------------------------------------------------------------------------- blob collection
# A blob-backed value: random base64 compresses to ~3/4, past the 350,000 bytes kept inside the state item.
LARGE = 600_000


def large_value() -> str:
    import base64
    import os

    return base64.b64encode(os.urandom(LARGE * 3 // 4)).decode()


def collecting_publisher(aws: dict[str, Any], state_table: str, *, lag_seconds: float) -> ChangePublisher:
    """The deployed publisher's blob collection and history, in a run `lag_seconds` behind the stream."""
    from datetime import timedelta

    from state_core.storage.history import HistoryStore
    from state_core.stream.blob_collection import BlobCollection
    from state_core.stream.lifecycle import StreamLifecycle

    client = boto3.client("dynamodb", region_name=REGION)
    store = StateStore(client, state_table)
    history = HistoryStore(client, state_table, retention_seconds=90 * 86_400)
    lifecycle = StreamLifecycle(client, state_table, history=history, states=store, blobs=store.blobs, clock=utc_now)
    blobs = BlobCollection(
        store.blobs,
        lifecycle=lifecycle,
        metrics=RecordedMetrics(),
        log=Log(),
        clock=lambda: utc_now() + timedelta(seconds=lag_seconds),
    )
    return publisher(aws, aws["events"], blobs=blobs, lifecycle=lifecycle)


def plain_manager(state_table: str) -> StateManager:
    """A request path as deployed: it writes state items only, the stream writes their history."""
    return StateManager(
        StateStore(boto3.client("dynamodb", region_name=REGION), state_table), clock=utc_now, metrics=RecordedMetrics()
    )


def chunks_exist(state_table: str, blob: Any) -> bool:
    return StateStore(boto3.client("dynamodb", region_name=REGION), state_table).blobs.load(blob) is not None


def two_blob_versions_unrecorded(state_table: str) -> tuple[Any, str, Any, Any]:
    """A key at version 2, both versions blobs, neither in the history yet (the stream has not run): the
    manager, the key, version 2's value and its write."""
    manager = plain_manager(state_table)
    key = f"blob:{uuid.uuid4().hex}"
    manager.put(key, large_value(), actor="alice")
    second = large_value()
    written = manager.put(key, second, actor="alice")
    assert written.record.blob is not None
    return manager, key, second, written


def test_a_lagging_batch_never_collects_the_blob_of_the_current_version(aws, state_table):
    # Given version 1 (a blob) and version 2 (a blob), neither recorded yet
    manager, key, second, written = two_blob_versions_unrecorded(state_table)

    # When the stream, lagging past the write grace, repairs a batch that ends at version 1
    batch = up_to(stream_records(state_table, {key}), 1)
    collecting_publisher(aws, state_table, lag_seconds=301).publish(batch)

    # Then version 2 still reads back, its chunks all there
    assert chunks_exist(state_table, written.record.blob)
    assert json.loads(manager.get(key).canonical_value) == second


def test_the_blob_of_a_write_that_died_before_the_record_s_time_is_collected(aws, state_table):
    from datetime import timedelta

    from state_core.domain.codec import StoredValue
    from state_core.storage.state import new_write_id

    # Given a write that died between its blob and its state item more than the grace before a later write
    manager = plain_manager(state_table)
    key = f"blob:{uuid.uuid4().hex}"
    client = boto3.client("dynamodb", region_name=REGION)
    blobs = StateStore(client, state_table).blobs
    stored = StoredValue.encode(json.dumps(large_value()).encode())
    died = blobs.put(key, new_write_id(), stored, utc_now() - timedelta(seconds=301))
    manager.put(key, "small", actor="alice")

    # When the stream publishes that write, without any lag
    collecting_publisher(aws, state_table, lag_seconds=0).publish(stream_records(state_table, {key}))

    # Then the dead write's blob is gone: chunks and marker
    assert blobs.load(died) is None
    markers = client.query(
        TableName=state_table,
        KeyConditionExpression="pk = :k AND begins_with(sk, :p)",
        ExpressionAttributeValues={":k": {"S": key}, ":p": {"S": "blob#"}},
        ConsistentRead=True,
    )["Items"]
    assert markers == []


def test_a_lagging_batch_never_collects_the_blob_of_a_replaced_version_the_stream_has_yet_to_record(aws, state_table):
    from state_core.service.history import HistoryReader
    from state_core.storage.history import HistoryStore

    # Given version 1 (a blob), version 2 (a blob) and version 3, none recorded yet
    manager, key, second, written = two_blob_versions_unrecorded(state_table)
    manager.put(key, "small", actor="alice")

    # When the stream, lagging past the write grace, repairs a batch that ends at version 1, then the rest
    records = stream_records(state_table, {key})
    lagging = collecting_publisher(aws, state_table, lag_seconds=301)
    first = up_to(records, 1)
    lagging.publish(first)
    assert chunks_exist(state_table, written.record.blob)
    lagging.publish(records[len(first) :])

    # Then version 2, now in the history, reads back
    client = boto3.client("dynamodb", region_name=REGION)
    reader = HistoryReader(
        StateStore(client, state_table), HistoryStore(client, state_table, retention_seconds=90 * 86_400), clock=utc_now
    )
    assert json.loads(reader.version(key, 2)[1]) == second


def test_the_sweep_never_collects_the_blob_of_a_replaced_version_the_stream_has_yet_to_record(aws, state_table):
    from datetime import timedelta

    from state_core.service.history import HistoryReader
    from state_core.storage.blobs import WRITE_GRACE_SECONDS, BlobStore
    from state_core.storage.history import HistoryStore

    # Given version 1 (a blob), replaced by version 2, neither recorded yet
    manager = plain_manager(state_table)
    key = f"blob:{uuid.uuid4().hex}"
    first = large_value()
    manager.put(key, first, actor="alice")
    manager.put(key, "small", actor="alice")

    # When the sweep runs once any write would have finished, with the stream still behind
    client = boto3.client("dynamodb", region_name=REGION)
    BlobStore(client, state_table).sweep(utc_now() + timedelta(seconds=WRITE_GRACE_SECONDS + 1))

    # Then the stream, catching up, records version 1, which reads back
    collecting_publisher(aws, state_table, lag_seconds=0).publish(stream_records(state_table, {key}))
    reader = HistoryReader(
        StateStore(client, state_table), HistoryStore(client, state_table, retention_seconds=90 * 86_400), clock=utc_now
    )
    assert json.loads(reader.version(key, 1)[1]) == first


def test_the_replay_sends_only_this_stacks_state_changed_entries_and_reads_bounded_failure_records(
    aws, manager, state_table, moto_server
):
    from devstack.replay import replay
    from state_core.stream.sender import DEAD_LETTER_FORMAT

    # Given a dead-letter queue and a failure bucket that someone besides the publisher wrote to
    suffix = uuid.uuid4().hex[:8]
    dlq = aws["sqs"].create_queue(QueueName=f"dlq-foreign-{suffix}")["QueueUrl"]
    bucket = f"failures-foreign-{suffix}"
    aws["s3"].create_bucket(Bucket=bucket)
    key = f"pub:{uuid.uuid4().hex}"
    manager.put(key, {"v": 1}, actor="alice")
    # The entry the publisher itself built for that write (a replayed event is still a whole StateChanged)
    built = build_change(stream_records(state_table, {key})[-1], position=0, bus_name=aws["bus"])
    assert built is not None
    assert built.event is not None
    genuine = dict(built.event.entry)
    forged = [
        {**genuine, "EventBusName": "default"},
        {**genuine, "Source": "billing.service"},
        {**genuine, "DetailType": "PaymentApproved"},
        {**genuine, "Resources": ["arn:aws:iam::000000000000:role/admin"]},
    ]
    for entry in [*forged, genuine]:
        body = json.dumps({"format": DEAD_LETTER_FORMAT, "entry": entry})
        aws["sqs"].send_message(QueueUrl=dlq, MessageBody=body)
    aws["sqs"].send_message(QueueUrl=dlq, MessageBody="not json at all")
    aws["sqs"].send_message(QueueUrl=dlq, MessageBody=json.dumps({"format": DEAD_LETTER_FORMAT}))
    aws["s3"].put_object(Bucket=bucket, Key="huge", Body=b" " * 9 * 1_048_576)
    aws["s3"].put_object(Bucket=bucket, Key="garbage", Body=b"\x00not json")
    payload = json.dumps({"Records": stream_records(state_table, {key})})
    aws["s3"].put_object(Bucket=bucket, Key="genuine", Body=json.dumps({"payload": payload}).encode())

    # When the replay runs
    report = replay(endpoint_url=moto_server, bus_name=aws["bus"], dead_letter_queue_url=dlq, failure_bucket=bucket)

    # Then only the genuine entry and the genuine batch were published; the rest is kept, counted, not sent
    assert (report.dead_letters_replayed, report.dead_letters_rejected) == (1, 6)
    assert (report.failure_records_replayed, report.failure_records_rejected) == (1, 2)
    details = [d["detail"] for d in drain(aws["sqs"], aws["queue"])]
    assert [(d["key"], d["version"]) for d in details if d["key"] == key] == [(key, 1), (key, 1)]
    remaining = {item["Key"] for item in aws["s3"].list_objects_v2(Bucket=bucket)["Contents"]}
    assert remaining == {"huge", "garbage"}
