"""``make replay``: re-publish StateChanged events that did not make it to the bus.

Two sources, both written by the change-event path so that no event is lost for good:

1. the publisher's dead-letter queue: each message holds the built PutEvents entry; it is sent
   again and the message deleted once EventBridge accepted it (a refused entry stays queued);
2. the stream's S3 on-failure bucket: each object is Lambda's invocation record with the batch's
   stream records; they go through the same ChangePublisher as in the function (events built
   again, failed entries retried and dead-lettered), and the object is deleted once every record
   is published or dead-lettered. Given the table (``--table``), the replay first writes the
   batch's history items, which only the publisher writes and which the failed batch never did
   (not its expiry markers: the batch is old, and an old version's marker would replace the
   key's current one).

Replays are safe to repeat: an event's ``event_id`` is derived from key, version and operation,
so a consumer drops the duplicates a replay may cause. Both sources can be written by more than the
publisher (anyone allowed sqs:SendMessage or s3:PutObject there), and a replay publishes with the
operator's credentials: a dead letter is sent only if it is a StateChanged entry for this bus and source,
a failure record is read only up to the size Lambda can produce, and anything else is kept and counted
(``*_rejected``), never sent and never the end of the run. Local stack by default; for a deployed
stack pass ``--endpoint-url ''`` and the stack's outputs (EventBusName, EventsDeadLetterQueueUrl,
StreamFailureBucketName) with your AWS credentials.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from devstack.event_tail import local_endpoint
from devstack.resources import DUMMY_CREDENTIALS, local_table_name
from devstack.template import REGION, REPO_ROOT

if TYPE_CHECKING:
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import ObjectTypeDef
    from mypy_boto3_sqs.client import SQSClient

    from state_core.stream.events import StreamChange

# Lambda's invocation payloads are at most 6 MB; an on-failure record wraps one with a little metadata.
MAX_FAILURE_RECORD_BYTES = 8 * 1_048_576
# EventBridge's own limit on an entry.
MAX_ENTRY_BYTES = 256 * 1024
_ENTRY_FIELDS = {"Source", "DetailType", "Detail", "EventBusName"}


@dataclass
class ReplayReport:
    dead_letters_replayed: int = 0
    dead_letters_kept: int = 0
    failure_records_replayed: int = 0
    failure_records_kept: int = 0
    dead_letters_rejected: int = 0
    failure_records_rejected: int = 0


def replayable_entry(body: str, *, bus_name: str, source: str) -> PutEventsRequestEntryTypeDef | None:
    """The dead letter's PutEvents entry if it is one the publisher could have written for this bus and
    source (a StateChanged detail naming a key and a version), else None."""
    from state_core.stream.events import StateChanged
    from state_core.stream.sender import dead_letter_entry

    try:
        entry = dead_letter_entry(body)
        detail = json.loads(entry["Detail"])
    except (ValueError, KeyError, TypeError):
        return None
    if (
        not isinstance(entry, dict)
        or set(entry) != _ENTRY_FIELDS
        or entry["EventBusName"] != bus_name
        or entry["Source"] != source
        or entry["DetailType"] != StateChanged.detail_type
        or len(entry["Detail"].encode("utf-8")) > MAX_ENTRY_BYTES
        or not isinstance(detail, dict)
        or not isinstance(detail.get("key"), str)
        or not isinstance(detail.get("version"), int)
    ):
        return None
    # Exactly the four string fields checked above: a PutEvents entry.
    return cast("PutEventsRequestEntryTypeDef", entry)


def _client(service: str, endpoint_url: str) -> Any:
    """A boto3 client (Any: callers annotate it with their service's stub type)."""
    import boto3

    if endpoint_url:
        return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION, **DUMMY_CREDENTIALS)
    return boto3.client(service)


def replay(
    *,
    endpoint_url: str,
    bus_name: str,
    dead_letter_queue_url: str,
    failure_bucket: str,
    event_source: str = "state.service",
    events_client: Any = None,
    table_name: str | None = None,
) -> ReplayReport:
    """Replay both sources once; `events_client` may be swapped (tests inject failures through it)."""
    if str(REPO_ROOT / "layers" / "state_core") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "layers" / "state_core"))
    from state_core.stream.publisher import ChangePublisher
    from state_core.stream.sender import EventSender

    events: EventBridgeClient = events_client or _client("events", endpoint_url)
    sqs: SQSClient = _client("sqs", endpoint_url)
    s3: S3Client = _client("s3", endpoint_url)
    report = ReplayReport()

    # 1. Dead letters: until the queue answers empty (visibility hides what this run already saw).
    while True:
        messages = sqs.receive_message(
            QueueUrl=dead_letter_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
        ).get("Messages", [])
        if not messages:
            break
        accepted = []
        for message in messages:
            entry = replayable_entry(message["Body"], bus_name=bus_name, source=event_source)
            if entry is None:
                # Kept for a person to look at (it reappears after the visibility timeout); its body is
                # not logged, since a genuine one holds a value.
                report.dead_letters_rejected += 1
                _LOG.warning(
                    "dead letter is not a StateChanged entry of this stack; kept, not sent: %s", message["MessageId"]
                )
                continue
            accepted.append((message, entry))
        if not accepted:
            continue
        response = events.put_events(Entries=[entry for _, entry in accepted])
        for (message, _), result in zip(accepted, response.get("Entries") or [], strict=False):
            if result.get("ErrorCode"):
                report.dead_letters_kept += 1  # reappears after the visibility timeout, for the next run
                continue
            sqs.delete_message(QueueUrl=dead_letter_queue_url, ReceiptHandle=message["ReceiptHandle"])
            report.dead_letters_replayed += 1

    # 2. Failure records: whole stream batches, through the function's own publisher.
    log = _StructuredLog(logging.getLogger("replay"))
    sender = EventSender(
        events, dead_letters=sqs, dead_letter_queue_url=dead_letter_queue_url, metrics=_NoMetrics(), log=log
    )
    lifecycle = None if table_name is None else _HistoryOnly(_client("dynamodb", endpoint_url), table_name)
    publisher = ChangePublisher(sender, bus_name=bus_name, log=log, source=event_source, lifecycle=lifecycle)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=failure_bucket):
        for item in page.get("Contents") or []:
            records = _failure_records(s3, failure_bucket, item)
            if records is None:
                report.failure_records_rejected += 1
                _LOG.warning("failure record is not a stream batch Lambda wrote; kept: %s", item["Key"])
                continue
            outcome = publisher.publish(records)
            if outcome.failed_sequence_numbers:
                report.failure_records_kept += 1
                continue
            s3.delete_object(Bucket=failure_bucket, Key=item["Key"])
            report.failure_records_replayed += 1
    return report


def _failure_records(s3: S3Client, bucket: str, item: ObjectTypeDef) -> list[Any] | None:
    """The stream records of a failure object, or None if it is too large or not an invocation record."""
    if int(item.get("Size") or 0) > MAX_FAILURE_RECORD_BYTES:
        return None
    body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"]
    # Read at most one byte past the limit, whatever the listing said (the object may have been replaced).
    raw = body.read(MAX_FAILURE_RECORD_BYTES + 1)
    body.close()
    if len(raw) > MAX_FAILURE_RECORD_BYTES:
        return None
    try:
        record = json.loads(raw)
        payload = record.get("payload")
        batch = json.loads(payload) if isinstance(payload, str) else payload or {}
        records = batch.get("Records") or []
    except (ValueError, AttributeError, TypeError):
        return None
    return records if isinstance(records, list) and all(isinstance(r, dict) for r in records) else None


_LOG = logging.getLogger("replay")


class _HistoryOnly:
    """The publisher's lifecycle step reduced to the history items (and blob claims) of the batch."""

    def __init__(self, dynamodb: Any, table_name: str) -> None:
        from datetime import UTC, datetime

        from state_core.storage.history import HistoryStore
        from state_core.storage.state import StateStore
        from state_core.stream.lifecycle import StreamLifecycle

        retention_days = int(os.environ.get("STATE_HISTORY_RETENTION_DAYS", "90"))
        store = StateStore(dynamodb, table_name)
        self._lifecycle = StreamLifecycle(
            dynamodb,
            table_name,
            history=HistoryStore(dynamodb, table_name, retention_seconds=retention_days * 86_400),
            states=store,
            blobs=store.blobs,
            clock=lambda: datetime.now(UTC),
        )

    def record_versions(self, changes: Sequence[StreamChange]) -> None:
        self._lifecycle.record_history(changes)

    def on_removals(self, records: Sequence[Mapping[str, Any]]) -> None:
        pass  # an old batch's removals are the live publisher's business, long since done or retried


class _NoMetrics:
    def add_metric(self, name: str, unit: Any, value: float) -> None:
        pass


class _StructuredLog:
    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log.warning("%s %s", msg, kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log.error("%s %s", msg, kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-url", default=local_endpoint(), help="AWS emulator ('' for real AWS)")
    parser.add_argument("--bus", default=local_table_name("state"), help="EventBusName output")
    parser.add_argument("--dlq-url", default="", help="EventsDeadLetterQueueUrl output")
    bucket = local_table_name("StreamFailureBucket").lower()
    parser.add_argument("--bucket", default=bucket, help="StreamFailureBucketName output")
    parser.add_argument("--source", default="state.service", help="the EventSource parameter")
    parser.add_argument(
        "--table", default=local_table_name("StateTable"), help="TableName output: the replayed versions' history"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    dlq_url = (
        args.dlq_url
        or _client("sqs", args.endpoint_url).get_queue_url(QueueName=local_table_name("PublishChangesDeadLetterQueue"))[
            "QueueUrl"
        ]
    )
    report = replay(
        endpoint_url=args.endpoint_url,
        bus_name=args.bus,
        dead_letter_queue_url=dlq_url,
        failure_bucket=args.bucket,
        event_source=args.source,
        table_name=args.table or None,
    )
    print(json.dumps(report.__dict__))


if __name__ == "__main__":
    main()
