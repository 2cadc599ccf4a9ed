"""The local event source mapping (devstack/stream_poller.py) against the moto server: checkpoints,
partial-batch retries, a killed execution environment, and the S3 on-failure destination."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from devstack.event_tail import take_messages
from devstack.stream_poller import MappingSettings, StreamPoller, matches
from devstack.workers import InvokeResult, WorkerConfig, WorkerPool
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from tests.doubles import NoMetrics, utc_now
from tests.event_schemas import assert_valid_event

pytestmark = pytest.mark.integration

REGION = "us-east-1"
STATE_FILTER = {"dynamodb": {"Keys": {"sk": {"S": ["state"]}}}}


@dataclass
class ScriptedPool:
    """Stands in for the function: records each batch and answers from a script (then succeeds)."""

    answers: list[InvokeResult]
    batches: list[list[str]] = field(default_factory=list)  # keys, per invocation

    @dataclass
    class _Config:
        function_name: str = "scripted"

    config: _Config = field(default_factory=_Config)

    def invoke_sync(self, event: Any, timeout: float | None = None) -> InvokeResult:
        self.batches.append([r["dynamodb"]["Keys"]["pk"]["S"] for r in event["Records"]])
        return self.answers.pop(0) if self.answers else InvokeResult(ok=True, payload={"batchItemFailures": []})

    def close(self) -> None:
        pass


@pytest.fixture
def table(moto_server: str, state_template: Any) -> str:
    """A fresh table (its own stream) per test, so the poller sees only this test's writes."""
    name = f"poller-{uuid.uuid4().hex[:8]}"
    ddb = boto3.client("dynamodb", region_name=REGION)
    ddb.create_table(**state_template.table_create_kwargs("StateTable", name))
    return name


def settings_for(table: str, **overrides: Any) -> MappingSettings:
    arn = boto3.client("dynamodb", region_name=REGION).describe_table(TableName=table)["Table"]["LatestStreamArn"]
    values: dict[str, Any] = {
        "function_id": "PublishChangesFunction",
        "stream_arn": arn,
        "starting_position": "TRIM_HORIZON",
        "batch_size": 100,
        "batching_window": 0.0,
        "report_item_failures": True,
        "bisect_on_error": True,
        "max_retry_attempts": 3,
        "max_record_age": 3600.0,
        "filters": (STATE_FILTER,),
        "failure_bucket": None,
    }
    values.update(overrides)
    return MappingSettings(**values)


def write(table: str, *keys: str) -> None:
    store = StateStore(boto3.client("dynamodb", region_name=REGION), table)
    manager = StateManager(store, clock=utc_now, metrics=NoMetrics())
    for key in keys:
        manager.put(key, {"k": key}, actor="alice")


def run_until(poller: StreamPoller, done: Any, timeout: float = 10.0) -> None:
    poller.start()
    try:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        poller.stop()


def test_the_filter_passes_state_items_only():
    state = {"dynamodb": {"Keys": {"pk": {"S": "k"}, "sk": {"S": "state"}}}}
    blob = {"dynamodb": {"Keys": {"pk": {"S": "k"}, "sk": {"S": "blob#1"}}}}

    assert matches(STATE_FILTER, state)
    assert not matches(STATE_FILTER, blob)


def test_a_partial_failure_is_retried_from_the_first_reported_record_and_then_checkpointed(
    table, tmp_path, moto_server
):
    write(table, "a", "b", "c")
    pool = ScriptedPool([])
    settings = settings_for(table)
    records = boto3.client("dynamodbstreams", region_name=REGION)
    # The function reports the second state record ("b") as failed once.
    arn = settings.stream_arn
    shard = records.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = records.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    all_records = records.get_records(ShardIterator=iterator["ShardIterator"])["Records"]
    b_sequence = [r for r in all_records if r["dynamodb"]["Keys"]["pk"]["S"] == "b"][-1]["dynamodb"]["SequenceNumber"]
    pool.answers = [InvokeResult(ok=True, payload={"batchItemFailures": [{"itemIdentifier": b_sequence}]})]
    checkpoints = tmp_path / "checkpoints.json"
    poller = StreamPoller(settings, pool, endpoint_url=moto_server, checkpoint_path=checkpoints)  # type: ignore[arg-type]

    run_until(poller, lambda: len(pool.batches) >= 2)

    # moto streams a keys-only INSERT before each new item's real one; both pass the filter.
    assert [k for k in pool.batches[0] if k] == ["a", "a", "b", "b", "c", "c"]
    assert pool.batches[1][0] == "b"
    assert "a" not in pool.batches[1]
    assert json.loads(checkpoints.read_text())  # the shard's position survives a restart


def test_two_mappings_of_one_stream_keep_their_own_checkpoints_in_the_shared_file(table, tmp_path, moto_server):
    """The publisher and the cache repair read the same stream: each resumes from its own position."""
    write(table, "a", "b")
    checkpoints = tmp_path / "checkpoints.json"
    pools = {name: ScriptedPool([]) for name in ("PublishChangesFunction", "RepairCacheFunction")}
    pollers = [
        StreamPoller(settings_for(table, function_id=name), pool, endpoint_url=moto_server, checkpoint_path=checkpoints)  # type: ignore[arg-type]
        for name, pool in pools.items()
    ]
    for poller in pollers:
        run_until(poller, lambda pool=poller.pool: len(pool.batches) >= 1)

    saved = json.loads(checkpoints.read_text())
    assert sorted(k.split()[0] for k in saved) == sorted(pools)
    assert len(set(saved.values())) == 1  # both read to the same record


def test_the_cache_repair_gets_its_own_mapping_only_with_redis(state_template):
    from devstack.template import load_template

    # The watch's fan-out has a mapping of its own too, with or without Redis.
    assert [f for f, _, _ in state_template.stream_event_sources()] == ["PublishChangesFunction", "WatchFanoutFunction"]
    with_redis = load_template(state_template.path, parameters={"RedisEndpoint": "redis://127.0.0.1:6379"})
    sources = {f: props for f, _, props in with_redis.stream_event_sources()}
    assert set(sources) == {"PublishChangesFunction", "RepairCacheFunction", "WatchFanoutFunction"}
    assert sources["RepairCacheFunction"]["Stream"] == sources["PublishChangesFunction"]["Stream"]


def test_a_killed_execution_environment_gets_the_batch_again_and_the_event_is_published(
    table, moto_server, state_template, tmp_path
):
    # Given the real publish_changes in a worker process, publishing to a bus with a rule to a queue
    suffix = uuid.uuid4().hex[:8]
    events, sqs = boto3.client("events", region_name=REGION), boto3.client("sqs", region_name=REGION)
    events.create_event_bus(Name=f"bus-{suffix}")
    queue = sqs.create_queue(QueueName=f"q-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=f"r-{suffix}", EventBusName=f"bus-{suffix}", EventPattern='{"detail-type":["StateChanged"]}')
    events.put_targets(Rule=f"r-{suffix}", EventBusName=f"bus-{suffix}", Targets=[{"Id": "q", "Arn": queue_arn}])
    dlq = sqs.create_queue(QueueName=f"dlq-{suffix}")["QueueUrl"]
    config = WorkerConfig.from_spec(
        state_template.function("PublishChangesFunction"),
        log_dir=tmp_path,
        endpoint_url=moto_server,
        overrides={
            "STATE_TABLE_NAME": table,
            "STATE_EVENT_BUS_NAME": f"bus-{suffix}",
            "STATE_EVENTS_DLQ_URL": dlq,
            "STATE_REDIS_URL": "",
        },
    )
    pool = WorkerPool(config, max_concurrency=1)
    assert pool.invoke_sync({"Records": []}).ok  # a warm environment
    killed: list[int] = []
    real_run = pool._run

    def die_first(worker: Any, *args: Any) -> InvokeResult:
        # The environment dies while the batch is in flight (as a crash or an OOM kill would).
        if not killed:
            killed.append(worker.pid)
            worker.process.kill()
            worker.process.join(5)
        return real_run(worker, *args)

    pool._run = die_first  # type: ignore[method-assign]
    key = f"kill:{uuid.uuid4().hex}"
    write(table, key)
    poller = StreamPoller(settings_for(table), pool, endpoint_url=moto_server)
    received: list[dict[str, Any]] = []

    def arrived() -> bool:
        messages = take_messages(sqs, queue, keep=True)
        for message in messages:
            assert_valid_event(message)
        received.extend(message["detail"] for message in messages)
        return bool(received)

    # When the poller runs
    run_until(poller, arrived, timeout=20)

    # Then the batch ran again in a new environment and the event arrived
    assert killed
    assert [(d["key"], d["version"]) for d in received] == [(key, 1)]
    assert poller.invocations >= 2


def test_a_batch_that_fails_every_retry_goes_to_the_failure_bucket_with_its_records(table, tmp_path, moto_server):
    s3 = boto3.client("s3", region_name=REGION)
    bucket = f"failures-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    write(table, "x")
    crash = InvokeResult(ok=False, error="crash", error_type="Runtime.ExitError")
    pool = ScriptedPool([crash] * 10)
    poller = StreamPoller(
        settings_for(table, max_retry_attempts=1, bisect_on_error=False, failure_bucket=bucket),
        pool,  # type: ignore[arg-type]
        endpoint_url=moto_server,
    )

    run_until(poller, lambda: poller.failure_records >= 1)

    assert len(pool.batches) == 2  # the first try and one retry
    (item,) = s3.list_objects_v2(Bucket=bucket)["Contents"]
    record = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert {r["dynamodb"]["Keys"]["pk"]["S"] for r in json.loads(record["payload"])["Records"]} == {"x"}
