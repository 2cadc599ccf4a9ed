"""Sending StateChanged events to EventBridge, and keeping those it could not send in a dead-letter queue.

- PutEvents in stream order (version order per key), batched by count and size (events.batches);
  `FailedEntryCount` is checked entry by entry and only the failed entries are retried, still in version
  order, with bounded attempts and jittered backoff (PublishPolicy), while the invocation has time for it;
- every event still failing then goes to the SQS dead-letter queue as its own message (the built entry,
  ready for `make replay`, which reads it back with dead_letter_entry);
- what could not even be dead-lettered is handed back to the caller, to fail the batch for the stream.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from state_core.domain.ports import Log, MetricsSink
from state_core.stream.events import ChangeEvent, batches

if TYPE_CHECKING:
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_sqs.client import SQSClient

# What a dead-letter message holds, so replays can tell formats apart if it ever changes.
DEAD_LETTER_FORMAT = "state-changed-dead-letter/1"


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


class EventSender:
    """PutEvents with per-entry retries, then the dead-letter queue for what still fails."""

    def __init__(
        self,
        events_client: EventBridgeClient,
        *,
        dead_letters: SQSClient,
        dead_letter_queue_url: str,
        metrics: MetricsSink,
        log: Log,
        policy: PublishPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._events = events_client
        self._dead_letters = dead_letters
        self._dlq_url = dead_letter_queue_url
        self._metrics = metrics
        self._log = log
        self._policy = policy or PublishPolicy()
        self._sleep = sleep

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
