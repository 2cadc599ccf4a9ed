"""The local stand-in for Lambda's DynamoDB event source mapping.

moto never pushes stream records, so this polls the table's stream as the mapping does
(DescribeStream, GetShardIterator, GetRecords) and invokes the function in its own worker
process (``devstack.workers``), one batch at a time per shard, with the mapping's settings
read from ``template.yaml``:

- ``StartingPosition`` for a shard without a checkpoint, then ``AFTER_SEQUENCE_NUMBER`` of the
  checkpoint (kept in ``$STATE_DIR/stream-checkpoints.json``, so a restarted stack against a
  long-running emulator resumes where it stopped);
- ``BatchSize`` and ``MaximumBatchingWindowInSeconds``; ``FilterCriteria`` (exact-value and
  ``{"prefix": ...}`` patterns, what the template uses; records that do not match are skipped, never
  invoked);
- ``FunctionResponseTypes: [ReportBatchItemFailures]``: the batch is retried from the first
  reported record; an identifier that is not in the batch fails the whole batch, as in Lambda;
- function errors, timeouts and crashes: ``BisectBatchOnFunctionError`` splits the batch in two,
  otherwise the batch is retried, up to ``MaximumRetryAttempts`` and ``MaximumRecordAgeInSeconds``;
  then the invocation record (with the batch's stream records) is written to the S3
  ``DestinationConfig.OnFailure`` bucket, as Lambda does, and the shard moves on.

Lambda polls a shard about four times a second; so does this.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.template import ACCOUNT_ID, REGION, StateTemplate
from devstack.workers import InvokeResult, WorkerConfig, WorkerPool

POLL_INTERVAL_SECONDS = 0.25
RETRY_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True)
class MappingSettings:
    """The event source mapping's settings, from the template's ``Type: DynamoDB`` event."""

    function_id: str
    stream_arn: str
    starting_position: str
    batch_size: int
    batching_window: float
    report_item_failures: bool
    bisect_on_error: bool
    max_retry_attempts: int  # -1: until the record expires
    max_record_age: float  # -1: until the record expires
    filters: tuple[dict[str, Any], ...]
    failure_bucket: str | None

    @classmethod
    def from_template(cls, template: StateTemplate, function_id: str, props: Mapping[str, Any]) -> MappingSettings:
        filters = tuple(json.loads(f["Pattern"]) for f in (props.get("FilterCriteria") or {}).get("Filters") or [])
        for pattern in filters:
            _check_pattern(pattern)
        destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        bucket = None
        if destination:
            if not str(destination).startswith("arn:aws:s3:::"):
                raise ValueError(f"{function_id}: the local stack writes on-failure records to S3 only")
            bucket = str(destination).removeprefix("arn:aws:s3:::")
        return cls(
            function_id=function_id,
            stream_arn=str(props["Stream"]),
            starting_position=str(props.get("StartingPosition", "LATEST")),
            batch_size=int(props.get("BatchSize", 100)),
            batching_window=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            report_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
            bisect_on_error=bool(props.get("BisectBatchOnFunctionError", False)),
            max_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
            max_record_age=float(props.get("MaximumRecordAgeInSeconds", -1)),
            filters=filters,
            failure_bucket=bucket,
        )


def _check_pattern(pattern: Any) -> None:
    """Only exact-value and prefix patterns are evaluated locally; anything else must fail loudly, not
    match wrongly."""
    if isinstance(pattern, dict):
        for value in pattern.values():
            _check_pattern(value)
    elif isinstance(pattern, list):
        if any(isinstance(item, list) or (isinstance(item, dict) and not _is_prefix(item)) for item in pattern):
            raise ValueError(f"filter operators are not supported locally: {pattern!r}")
    else:
        raise ValueError(f"a filter pattern leaf must be a list of values: {pattern!r}")


def _is_prefix(item: Any) -> bool:
    return isinstance(item, dict) and list(item) == ["prefix"] and isinstance(item["prefix"], str)


def _leaf_matches(expected: list[Any], actual: Any) -> bool:
    return any(
        (isinstance(actual, str) and actual.startswith(item["prefix"])) if _is_prefix(item) else actual == item
        for item in expected
    )


def matches(pattern: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
    """EventBridge-style matching of exact values and prefixes: every field of the pattern must be present
    and equal to one of its listed values (or start with a listed `{"prefix": ...}`)."""
    for name, expected in pattern.items():
        if name not in record:
            return False
        actual = record[name]
        if isinstance(expected, dict):
            if not isinstance(actual, dict) or not matches(expected, actual):
                return False
        elif not _leaf_matches(expected, actual):
            return False
    return True


def lambda_record(record: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A boto3 GetRecords record as Lambda delivers it: JSON, binary as base64, times as epoch seconds."""
    out = {k: v for k, v in record.items() if k != "dynamodb"}
    ddb = dict(record["dynamodb"])
    created = ddb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        ddb["ApproximateCreationDateTime"] = int(created.timestamp())
    for name in ("Keys", "NewImage", "OldImage"):
        if name in ddb:
            ddb[name] = {k: _json_attribute(v) for k, v in ddb[name].items()}
    out["dynamodb"] = ddb
    out["eventSourceARN"] = stream_arn
    return out


def _json_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    if "B" in value:
        return {"B": base64.b64encode(bytes(value["B"])).decode()}
    if "BS" in value:
        return {"BS": [base64.b64encode(bytes(v)).decode() for v in value["BS"]]}
    if "M" in value:
        return {"M": {k: _json_attribute(v) for k, v in value["M"].items()}}
    if "L" in value:
        return {"L": [_json_attribute(v) for v in value["L"]]}
    return dict(value)


# The pollers of one stack share their checkpoint file (threads of one process).
_CHECKPOINT_FILE_LOCK = threading.Lock()


class StreamPoller:
    """One event source mapping: a thread polling the stream's shards and invoking the function."""

    def __init__(
        self,
        settings: MappingSettings,
        pool: WorkerPool,
        *,
        endpoint_url: str,
        checkpoint_path: Path | None = None,
        log: Any = None,
    ) -> None:
        from devstack.resources import client

        self.settings = settings
        self.pool = pool
        self._streams = client("dynamodbstreams", endpoint_url)
        self._s3 = client("s3", endpoint_url) if settings.failure_bucket else None
        self._checkpoint_path = checkpoint_path
        self._checkpoints: dict[str, str] = self._load_checkpoints()
        self._iterators: dict[str, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stream-{settings.function_id}", daemon=True)
        self._log = log or (lambda line: None)
        self.invocations = 0
        self.failure_records = 0
        # Lambda's IteratorAge: how old the oldest record of the last delivered batch was (0 once caught up).
        self.iterator_age_seconds = 0.0

    @classmethod
    def for_template(
        cls,
        template: StateTemplate,
        *,
        endpoint_url: str,
        state_dir: Path,
        overrides: dict[str, str] | None = None,
        log: Any = None,
    ) -> list[StreamPoller]:
        pollers = []
        for function_id, _name, props in template.stream_event_sources():
            settings = MappingSettings.from_template(template, function_id, props)
            config = WorkerConfig.from_spec(
                template.function(function_id),
                log_dir=state_dir / "logs",
                endpoint_url=endpoint_url,
                overrides=overrides,
            )
            # One invocation at a time per shard (ParallelizationFactor 1): a key's versions stay in order.
            pollers.append(
                cls(
                    settings,
                    WorkerPool(config, max_concurrency=1),
                    endpoint_url=endpoint_url,
                    checkpoint_path=state_dir / "stream-checkpoints.json",
                    log=log,
                )
            )
        return pollers

    def start(self) -> StreamPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.pool.close()

    # -- polling -------------------------------------------------------------------------------

    def _run(self) -> None:
        shards: list[str] = []
        refreshed = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - refreshed > 5 or not shards:
                    shards = self._shards()
                    refreshed = time.monotonic()
                busy = False
                for shard_id in shards:
                    busy = self._poll_shard(shard_id) or busy
            except Exception as exc:  # the poller must outlive an emulator hiccup
                self._log(f"stream poller: {type(exc).__name__}: {exc}")
                busy = False
            if not busy:
                self._stop.wait(POLL_INTERVAL_SECONDS)

    def _shards(self) -> list[str]:
        description = self._streams.describe_stream(StreamArn=self.settings.stream_arn)["StreamDescription"]
        # Parents before children: a key's older records are in the parent shard.
        shards = description.get("Shards") or []
        return [s["ShardId"] for s in sorted(shards, key=lambda shard: "ParentShardId" in shard)]

    def _iterator(self, shard_id: str) -> str | None:
        if shard_id in self._iterators:
            return self._iterators[shard_id]
        checkpoint = self._checkpoints.get(self._checkpoint_key(shard_id))
        kwargs: dict[str, Any] = {"StreamArn": self.settings.stream_arn, "ShardId": shard_id}
        if checkpoint:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=checkpoint)
        else:
            kwargs["ShardIteratorType"] = self.settings.starting_position
        iterator: str | None = self._streams.get_shard_iterator(**kwargs)["ShardIterator"]
        self._iterators[shard_id] = iterator
        return iterator

    def _read(self, shard_id: str, limit: int) -> list[dict[str, Any]]:
        iterator = self._iterator(shard_id)
        if iterator is None:
            return []  # a closed shard, read to its end
        try:
            response = self._streams.get_records(ShardIterator=iterator, Limit=limit)
        except self._streams.exceptions.ExpiredIteratorException:
            self._iterators.pop(shard_id, None)
            return []
        self._iterators[shard_id] = response.get("NextShardIterator")
        return list(response.get("Records") or [])

    def _poll_shard(self, shard_id: str) -> bool:
        settings = self.settings
        records = self._read(shard_id, settings.batch_size)
        if settings.batching_window > 0 and records and len(records) < settings.batch_size:
            deadline = time.monotonic() + settings.batching_window
            while len(records) < settings.batch_size and time.monotonic() < deadline and not self._stop.is_set():
                more = self._read(shard_id, settings.batch_size - len(records))
                records += more
                if not more:
                    self._stop.wait(POLL_INTERVAL_SECONDS)
        if not records:
            self.iterator_age_seconds = 0.0
            return False
        batch = [lambda_record(r, settings.stream_arn) for r in records]
        if settings.filters:
            batch = [r for r in batch if any(matches(p, r) for p in settings.filters)]
        if batch and not self._deliver(batch, shard_id):
            # Stopping mid-retry: no checkpoint, so a restarted stack delivers the batch again.
            self._iterators.pop(shard_id, None)
            return False
        self._checkpoint(shard_id, records[-1]["dynamodb"]["SequenceNumber"])
        return True

    def _deliver(self, batch: list[dict[str, Any]], shard_id: str) -> bool:
        """Invoke until the batch succeeds, bisecting or retrying as the mapping is configured; a batch
        that runs out of attempts or age goes to the on-failure destination. False if stopped first."""
        settings = self.settings
        attempts = 0
        while batch and not self._stop.is_set():
            age = time.time() - float(batch[0]["dynamodb"].get("ApproximateCreationDateTime", time.time()))
            self.iterator_age_seconds = max(0.0, age)
            if 0 <= settings.max_record_age < age:
                self._send_to_failure_destination(batch, shard_id, "RecordAgeExceeded", attempts)
                return True
            result = self.pool.invoke_sync({"Records": batch})
            self.invocations += 1
            if result.ok:
                failed_from = self._first_failed(batch, result)
                if failed_from is None:
                    return True
                batch = batch[failed_from:]
            elif settings.bisect_on_error and len(batch) > 1:
                middle = len(batch) // 2
                self._log(f"stream poller: {result.error_type}; bisecting a batch of {len(batch)}")
                return self._deliver(batch[:middle], shard_id) and self._deliver(batch[middle:], shard_id)
            attempts += 1
            if 0 <= settings.max_retry_attempts < attempts:
                self._send_to_failure_destination(batch, shard_id, "RetryAttemptsExhausted", attempts, result)
                return True
            self._stop.wait(min(RETRY_BACKOFF_SECONDS * attempts, 5.0))
        return not batch

    def _first_failed(self, batch: list[dict[str, Any]], result: InvokeResult) -> int | None:
        """Index to retry from, or None when the whole batch succeeded."""
        payload = result.payload
        if not self.settings.report_item_failures or not isinstance(payload, dict):
            return None
        failures = payload.get("batchItemFailures") or []
        if not failures:
            return None
        positions = {r["dynamodb"]["SequenceNumber"]: i for i, r in enumerate(batch)}
        indexes = [positions.get(str(f.get("itemIdentifier"))) for f in failures]
        if any(index is None for index in indexes):
            return 0  # Lambda treats an unknown or empty identifier as a failure of the whole batch
        return min(i for i in indexes if i is not None)

    def _send_to_failure_destination(
        self,
        batch: list[dict[str, Any]],
        shard_id: str,
        condition: str,
        attempts: int,
        result: InvokeResult | None = None,
    ) -> None:
        self.failure_records += 1
        self._log(f"stream poller: {condition}; {len(batch)} records to the on-failure destination")
        if self._s3 is None or self.settings.failure_bucket is None:
            return
        now = datetime.now(UTC)
        first, last = batch[0]["dynamodb"], batch[-1]["dynamodb"]
        function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.pool.config.function_name}"
        # The shape of Lambda's S3 on-failure record for stream sources: metadata plus the payload.
        record = {
            "requestContext": {
                "requestId": str(uuid.uuid4()),
                "functionArn": function_arn,
                "condition": condition,
                "approximateInvokeCount": attempts,
            },
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": None if result is None or result.ok else "Unhandled",
            },
            "version": "1.0",
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "DDBStreamBatchInfo": {
                "shardId": shard_id,
                "startSequenceNumber": first["SequenceNumber"],
                "endSequenceNumber": last["SequenceNumber"],
                "approximateArrivalOfFirstRecord": first.get("ApproximateCreationDateTime"),
                "approximateArrivalOfLastRecord": last.get("ApproximateCreationDateTime"),
                "batchSize": len(batch),
                "streamArn": self.settings.stream_arn,
            },
            "payload": json.dumps({"Records": batch}),
        }
        key = f"aws/lambda/local-esm/{shard_id}/{now:%Y/%m/%d}/{now:%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
        self._s3.put_object(Bucket=self.settings.failure_bucket, Key=key, Body=json.dumps(record).encode())

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint_key(self, shard_id: str) -> str:
        return f"{self.settings.function_id} {self.settings.stream_arn} {shard_id}"

    def _checkpoint(self, shard_id: str, sequence_number: str) -> None:
        self._checkpoints[self._checkpoint_key(shard_id)] = sequence_number
        if self._checkpoint_path is not None:
            # Every mapping of the stack keeps its checkpoints in the one file: merge into what the
            # others wrote instead of replacing it with this poller's own view.
            with _CHECKPOINT_FILE_LOCK, contextlib.suppress(OSError):
                merged = {**self._load_checkpoints(), **self._checkpoints}
                tmp = self._checkpoint_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(merged), encoding="utf-8")
                tmp.replace(self._checkpoint_path)

    def _load_checkpoints(self) -> dict[str, str]:
        if self._checkpoint_path is None:
            return {}
        try:
            data = json.loads(self._checkpoint_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
