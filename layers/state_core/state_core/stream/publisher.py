"""The publisher of StateChanged events: one batch of the table's stream at a time. The cache repair runs
on its own mapping (repair.py).

For one batch of stream records it:

1. turns the records into changes (events.build_change), in stream order;
2. records history and expiries (lifecycle.py), then removes blobs nothing refers to any more
   (blob_collection.py);
3. sends the events, retrying the entries EventBridge refuses, and puts every event that still fails into
   the dead-letter queue (sender.py), reporting success for it: the stream moves on, nothing is dropped
   silently;
4. reports as batch item failures only the records it could not even dead-letter (or could not build),
   so Lambda retries from there and, after its retries, writes them to the on-failure destination.

A DynamoDB error in step 2's history upkeep fails the whole invocation instead, and Lambda retries the
batch: every step is idempotent, and events are delivered at least once anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from state_core.domain.ports import Log
from state_core.stream.events import (
    DEFAULT_EVENT_SOURCE,
    DEFAULT_MAX_DETAIL_BYTES,
    ChangeEvent,
    StreamChange,
    build_change,
)
from state_core.stream.proposals import is_proposal_record, proposal_events


class Sender(Protocol):
    """sender.EventSender."""

    def send(
        self, events: Sequence[ChangeEvent], remaining_seconds: Callable[[], float] | None = None
    ) -> list[tuple[ChangeEvent, str]]: ...
    def dead_letter(self, failed: Sequence[tuple[ChangeEvent, str]]) -> list[ChangeEvent]: ...


class Lifecycle(Protocol):
    """lifecycle.StreamLifecycle: history items, expiry markers and their removals."""

    def record_versions(self, changes: Sequence[StreamChange]) -> None: ...
    def on_removals(self, records: Sequence[Mapping[str, Any]]) -> None: ...


class BlobCollector(Protocol):
    """blob_collection.BlobCollection."""

    def collect(self, changes: Iterable[StreamChange]) -> None: ...


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    published: int
    dead_lettered: int
    failed_sequence_numbers: list[str]  # for batchItemFailures, in stream order


class ChangePublisher:
    """Publishes a batch of stream records; see the module docstring for the steps."""

    def __init__(
        self,
        sender: Sender,
        *,
        bus_name: str,
        log: Log,
        lifecycle: Lifecycle | None = None,
        blobs: BlobCollector | None = None,
        source: str = DEFAULT_EVENT_SOURCE,
        max_detail_bytes: int = DEFAULT_MAX_DETAIL_BYTES,
    ) -> None:
        self._sender = sender
        self._bus = bus_name
        self._log = log
        self._lifecycle = lifecycle
        self._blobs = blobs
        self._source = source
        self._max_detail_bytes = max_detail_bytes

    def publish(
        self, records: Sequence[Mapping[str, Any]], remaining_seconds: Callable[[], float] | None = None
    ) -> PublishOutcome:
        """Publish the events of `records` (Lambda's DynamoDB stream records, in stream order)."""
        changes, unbuildable = self._changes(records)
        if self._lifecycle is not None:
            # Before anything is collected or published; a DynamoDB error fails the batch, which Lambda
            # retries (both are idempotent), so no version is ever missing from the history.
            self._lifecycle.record_versions(changes)
            self._lifecycle.on_removals(records)
        if self._blobs is not None:
            self._blobs.collect(changes)
        events = [change.event for change in changes if change.event is not None]
        failed = self._sender.send(events, remaining_seconds)
        undelivered = self._sender.dead_letter(failed)
        failures = [s for s in unbuildable if s] + [event.sequence_number for event in undelivered]
        order = {str((r.get("dynamodb") or {}).get("SequenceNumber", "")): i for i, r in enumerate(records)}
        return PublishOutcome(
            published=len(events) - len(failed),
            dead_lettered=len(failed) - len(undelivered),
            failed_sequence_numbers=sorted(set(failures), key=lambda s: order.get(s, -1)),
        )

    def _changes(self, records: Sequence[Mapping[str, Any]]) -> tuple[list[StreamChange], list[str]]:
        """The batch's changes, and the sequence numbers of the records that could not be read."""
        changes: list[StreamChange] = []
        unbuildable: list[str] = []
        for position, record in enumerate(records):
            try:
                if is_proposal_record(record):
                    # A proposal's lifecycle: events only, no state (nothing for history, blobs or the cache).
                    sequence_number = str(record["dynamodb"]["SequenceNumber"])
                    changes += [
                        StreamChange(sequence_number, None, event)
                        for event in proposal_events(record, position=position, source=self._source, bus_name=self._bus)
                    ]
                    continue
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
        return changes, unbuildable
