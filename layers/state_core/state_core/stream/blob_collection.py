"""Removing value blobs nothing refers to any more, as the stream shows their keys change.

For each batch: the blob each change replaced goes (with history, only once the replaced version's
history item is gone: lifecycle.py), and so does any unclaimed blob of the key that neither its current
state nor its history names (a write that died between its chunks and its state item), aged by the
stream record's time. Best effort: a failure is logged and counted, and `make sweep-blobs` is the backstop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from state_core.domain.ports import Log, MetricsSink
from state_core.stream.events import StateChanged

if TYPE_CHECKING:
    from state_core.domain.records import BlobRef
    from state_core.stream.events import StreamChange


class BlobCleanup(Protocol):
    """blobs.BlobStore's cleanup side."""

    def delete(self, key: str, refs: Iterable[BlobRef]) -> None: ...
    def collect(self, key: str, *, as_of: datetime) -> list[str]: ...


class ReplacedBlobs(Protocol):
    """lifecycle.StreamLifecycle's part: a replaced blob goes only once no history item refers to it."""

    def release_replaced(self, key: str, previous_version: int | None, blob: BlobRef) -> None: ...


class BlobCollection:
    def __init__(
        self,
        blobs: BlobCleanup,
        *,
        lifecycle: ReplacedBlobs | None,
        metrics: MetricsSink,
        log: Log,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._blobs = blobs
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._log = log
        self._clock = clock

    def collect(self, changes: Iterable[StreamChange]) -> None:
        """The blobs `changes` (a batch, in stream order) left without referrers; see the module docstring."""
        latest: dict[str, StreamChange] = {}
        for change in changes:
            if change.record is None:
                continue
            latest[change.record.key] = change
            if change.replaced_blob is not None:
                with self._cleanup_guard():
                    if self._lifecycle is None:
                        self._blobs.delete(change.record.key, [change.replaced_blob])
                    else:
                        # History items refer to blobs too: the replaced one may still be retained.
                        detail = change.event.detail if change.event is not None else None
                        previous = detail.previous_version if isinstance(detail, StateChanged) else None
                        self._lifecycle.release_replaced(change.record.key, previous, change.replaced_blob)
        for key, change in latest.items():
            if change.recorded_at is None:
                continue  # without the record's time an abandoned write cannot be told from a recent one
            # The record's time, not the clock: every write of the key up to the record has been claimed by
            # now (stream order), while writes after it may not be, however far the stream lags behind. The
            # clock only caps it, should DynamoDB's clock run ahead of the writers'.
            as_of = min(change.recorded_at, self._clock())
            with self._cleanup_guard():
                self._blobs.collect(key, as_of=as_of)

    @contextmanager
    def _cleanup_guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._log.warning("blob cleanup failed", error=type(exc).__name__)
            self._metrics.add_metric(name="BlobCleanupErrors", unit="Count", value=1)
