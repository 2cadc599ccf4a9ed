"""The sender of StateChanged events. The cache repair runs on its own mapping (repair.py).

For one batch of stream records it:

1. records history and expiries (lifecycle.py) and collects blobs nothing refers to any more;
2. sends the events with PutEvents, in stream order (version order per key), batched by count and size;
   `FailedEntryCount` is checked entry by entry and only the failed entries are retried, still in
   version order, with bounded attempts and jittered backoff;
3. puts every event that is still failing into its own SQS dead-letter queue (the built event, ready for
   `make replay`), and reports success for it: the stream moves on, nothing is dropped silently;
4. reports as batch item failures only the records it could not even dead-letter (or could not build),
   so Lambda retries from there and, after its retries, writes them to the on-failure destination.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from state_core.domain.ports import Log, MetricsSink
from state_core.domain.records import BlobRef
from state_core.stream.events import (
    DEFAULT_EVENT_SOURCE,
    DEFAULT_MAX_DETAIL_BYTES,
    ChangeEvent,
    StreamChange,
    batches,
    build_change,
)

if TYPE_CHECKING:
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_sqs.client import SQSClient

# What a dead-letter message holds, so replays can tell formats apart if it ever changes.
DEAD_LETTER_FORMAT = "state-changed-dead-letter/1"


class BlobCollector(Protocol):
    """blobs.BlobStore's cleanup side."""

    def delete(self, key: str, refs: Iterable[BlobRef]) -> None: ...
    def collect(self, key: str, *, as_of: datetime) -> list[str]: ...


class Lifecycle(Protocol):
    """lifecycle.StreamLifecycle: history items, expiry markers and their removals."""

    def record_versions(self, changes: Sequence[StreamChange]) -> None: ...
    def on_removals(self, records: Sequence[Mapping[str, Any]]) -> None: ...
    def release_replaced(self, key: str, previous_version: int | None, blob: BlobRef) -> None: ...


@dataclass(frozen=True, slots=True)
class PublishPolicy:
    """Retries of entries EventBridge refused (botocore already retries whole-request errors and
    throttling itself). Four attempts with 0.2-2 s jittered backoff cost at most ~3.5 s of waiting; a
    batch that still fails then is an outage, and the dead-letter queue is the better place to wait."""

    max_attempts: int = 4
    base_backoff_seconds: float = 0.2
    max_backoff_seconds: float = 2.0
    # Stop retrying (and dead-letter) when less than this is left of the invocation: a timeout would
    # make Lambda retry the whole batch, publishing its successes again.
    reserve_seconds: float = 5.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: spreads the retries of concurrent shards instead of synchronizing them."""
        return random.uniform(0, min(self.max_backoff_seconds, self.base_backoff_seconds * 2**attempt))  # noqa: S311


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    published: int
    dead_lettered: int
    failed_sequence_numbers: list[str]  # for batchItemFailures, in stream order


class ChangePublisher:
    """Publishes a batch of stream records; see the module docstring for the steps."""

    def __init__(
        self,
        events_client: EventBridgeClient,
        *,
        bus_name: str,
        dead_letters: SQSClient,
        dead_letter_queue_url: str,
        metrics: MetricsSink,
        blobs: BlobCollector | None = None,
        lifecycle: Lifecycle | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        log: Log,
        source: str = DEFAULT_EVENT_SOURCE,
        max_detail_bytes: int = DEFAULT_MAX_DETAIL_BYTES,
        policy: PublishPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._events = events_client
        self._bus = bus_name
        self._dead_letters = dead_letters
        self._dlq_url = dead_letter_queue_url
        self._blobs = blobs
        self._lifecycle = lifecycle
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._source = source
        self._max_detail_bytes = max_detail_bytes
        self._policy = policy or PublishPolicy()
        self._sleep = sleep

    def publish(
        self, records: Sequence[Mapping[str, Any]], remaining_seconds: Callable[[], float] | None = None
    ) -> PublishOutcome:
        """Publish the events of `records` (Lambda's DynamoDB stream records, in stream order)."""
        changes: list[StreamChange] = []
        unbuildable: list[str] = []
        for position, record in enumerate(records):
            try:
                change = build_change(
                    record,
                    position=position,
                    source=self._source,
                    bus_name=self._bus,
                    max_detail_bytes=self._max_detail_bytes,
                )
            except (KeyError, ValueError, TypeError) as exc:
                # A record we cannot read is a bug, not an outage: let Lambda retry it and, after its
                # retries, keep the whole record in the on-failure destination (S3).
                sequence_number = str((record.get("dynamodb") or {}).get("SequenceNumber", ""))
                self._log.error("unreadable stream record", sequence_number=sequence_number, error=repr(exc))
                unbuildable.append(sequence_number)
                continue
            if change is not None:
                changes.append(change)
        if self._lifecycle is not None:
            # Before anything is collected or published; a DynamoDB error fails the batch, which Lambda
            # retries (both are idempotent), so no version is ever missing from the history.
            self._lifecycle.record_versions(changes)
            self._lifecycle.on_removals(records)
        self.collect_blobs(changes)
        events = [change.event for change in changes if change.event is not None]
        failed = self.send(events, remaining_seconds)
        undelivered = self.dead_letter(failed)
        failures = [s for s in unbuildable if s] + [event.sequence_number for event in undelivered]
        order = {str((r.get("dynamodb") or {}).get("SequenceNumber", "")): i for i, r in enumerate(records)}
        return PublishOutcome(
            published=len(events) - len(failed),
            dead_lettered=len(failed) - len(undelivered),
            failed_sequence_numbers=sorted(set(failures), key=lambda s: order.get(s, -1)),
        )

    def collect_blobs(self, changes: Iterable[StreamChange]) -> None:
        """Remove value blobs nothing refers to any more: the one each change replaced (with history, only
        if the replaced version's history item is already gone: lifecycle.py), and any unclaimed blob of
        the key that neither its current state nor its history names (writes that died between their
        chunks and their state item), aged by the stream record's time. Best effort: `make sweep-blobs`
        is the backstop."""
        blobs = self._blobs
        if blobs is None:
            return
        latest: dict[str, StreamChange] = {}
        for change in changes:
            if change.record is None:
                continue
            latest[change.record.key] = change
            if change.replaced_blob is not None:
                with self._cleanup_guard():
                    if self._lifecycle is None:
                        blobs.delete(change.record.key, [change.replaced_blob])
                    else:
                        # History items refer to blobs too: the replaced one may still be retained.
                        previous = change.event.detail.previous_version if change.event is not None else None
                        self._lifecycle.release_replaced(change.record.key, previous, change.replaced_blob)
        for key, change in latest.items():
            if change.recorded_at is None:
                continue  # without the record's time an abandoned write cannot be told from a recent one
            # The record's time, not the clock: every write of the key up to the record has been claimed by
            # now (stream order), while writes after it may not be, however far the stream lags behind. The
            # clock only caps it, should DynamoDB's clock run ahead of the writers'.
            as_of = min(change.recorded_at, self._clock())
            with self._cleanup_guard():
                blobs.collect(key, as_of=as_of)

    @contextmanager
    def _cleanup_guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._log.warning("blob cleanup failed", error=type(exc).__name__)
            self._metrics.add_metric(name="BlobCleanupErrors", unit="Count", value=1)

    def send(
        self, events: Sequence[ChangeEvent], remaining_seconds: Callable[[], float] | None = None
    ) -> list[tuple[ChangeEvent, str]]:
        """PutEvents with per-entry retries; returns the events still failing, with their last error."""
        pending = sorted(events, key=lambda e: e.position)
        errors: dict[int, str] = {}
        for attempt in range(self._policy.max_attempts):
            if attempt:
                delay = self._policy.backoff(attempt - 1)
                if remaining_seconds is not None and remaining_seconds() - delay < self._policy.reserve_seconds:
                    break
                self._metrics.add_metric(name="EventsRetried", unit="Count", value=len(pending))
                self._sleep(delay)
            still_failing: list[ChangeEvent] = []
            for batch in batches(pending):
                for event, error in self._put(batch):
                    errors[event.position] = error
                    still_failing.append(event)
            accepted = len(pending) - len(still_failing)
            if accepted:
                self._metrics.add_metric(name="EventsPublished", unit="Count", value=accepted)
            # Version order per key: retried entries keep their stream positions.
            pending = sorted(still_failing, key=lambda e: e.position)
            if not pending:
                break
        return [(event, errors[event.position]) for event in pending]

    def _put(self, batch: list[ChangeEvent]) -> list[tuple[ChangeEvent, str]]:
        """One PutEvents request; the entries it did not accept, with their error codes."""
        try:
            response = self._events.put_events(Entries=[event.entry for event in batch])
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
            self._log.warning("PutEvents failed", entries=len(batch), error=code or type(exc).__name__)
            return [(event, code or type(exc).__name__) for event in batch]
        if not response.get("FailedEntryCount"):
            return []
        # Entries in the response line up with the request's; a failed one has an ErrorCode.
        failed = [
            (event, str(result.get("ErrorCode")))
            for event, result in zip(batch, response.get("Entries") or [], strict=False)
            if result.get("ErrorCode")
        ]
        self._log.warning("PutEvents refused entries", entries=len(batch), failed=len(failed))
        return failed

    def dead_letter(self, failed: Sequence[tuple[ChangeEvent, str]]) -> list[ChangeEvent]:
        """Keep each failed event in the dead-letter queue; returns those that could not be kept."""
        undelivered: list[ChangeEvent] = []
        for event, error in failed:
            body = json.dumps(
                {
                    "format": DEAD_LETTER_FORMAT,
                    "entry": event.entry,
                    "event_id": event.detail.event_id,
                    "key": event.detail.key,
                    "version": event.detail.version,
                    "sequence_number": event.sequence_number,
                    "error_code": error,
                },
                separators=(",", ":"),
                ensure_ascii=False,
            )
            try:
                self._dead_letters.send_message(QueueUrl=self._dlq_url, MessageBody=body)
            except (ClientError, BotoCoreError) as exc:
                self._log.error("dead-lettering failed", key=event.detail.key, error=type(exc).__name__)
                undelivered.append(event)
                continue
            self._metrics.add_metric(name="EventsDeadLettered", unit="Count", value=1)
            # Keys are fine in logs; the value never is (the entry holds it, so it is not logged).
            self._log.error("event dead-lettered", key=event.detail.key, version=event.detail.version, error_code=error)
        if undelivered:
            self._metrics.add_metric(name="EventsFailed", unit="Count", value=len(undelivered))
        return undelivered


def dead_letter_entry(body: str) -> dict[str, Any]:
    """The PutEvents entry kept in a dead-letter message (for replays)."""
    message = json.loads(body)
    if message.get("format") != DEAD_LETTER_FORMAT:
        raise ValueError(f"not a dead-lettered StateChanged event: {message.get('format')!r}")
    entry: dict[str, Any] = message["entry"]
    return entry
