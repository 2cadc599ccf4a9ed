"""The stream's side of history and expiry, run by the publisher (publisher.py) for each batch.

- **History:** every state item image gets its history item (history.py), idempotently. This is the
  history's only writer (the request path writes the state item alone), so the history trails the state
  by the stream's lag; service/history.py answers reads in that window. A large value's blob is then
  claimed (its marker dropped): the history item refers to it from now on.
- **Expiry markers:** a version with an expiry gets the key's marker item (`pk = <key>, sk = expiry`,
  `ttl` = its expiry). State items never carry `ttl`: DynamoDB's TTL would delete the version counter with
  them. DynamoDB's TTL removes the marker (days late at worst; locally devstack's TTL emulator, ~1 s), and
  that REMOVE record turns the state into an `expired` tombstone with the next version, under the
  condition that the state is still the marker's version and expired (storage.state.StateStore.expire). A write
  that meets the expired key first does the same expiry itself (manager.py); the condition lets exactly
  one of them succeed, so there is exactly one `expired` change, hence one `expired` event.
- **Blobs:** a blob goes when nothing retained refers to it: when its history item leaves retention (the
  TTL REMOVE of `v#<version>`) and the state item does not use it, or when the state moves off a version
  whose history item is already gone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from state_core.domain.records import BlobRef, StateRecord
from state_core.domain.writes import ConditionFailed
from state_core.storage.batches import write_all
from state_core.storage.history import HistoryStore, entry_of_item, is_history_sort_key
from state_core.stream.events import StateChanged, StreamChange, image

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

EXPIRY_SORT_KEY = "expiry"


class StateExpiry(Protocol):
    """storage.state.StateStore's parts used here."""

    def expire(self, key: str, *, version: int, expires_at: float, now: datetime) -> StateRecord: ...
    def head(self, key: str) -> dict[str, Any] | None: ...


class BlobRemover(Protocol):
    def delete(self, key: str, refs: Iterable[BlobRef]) -> None: ...


def expiry_marker(record: StateRecord) -> dict[str, Any]:
    """The key's expiry marker for `record` (which has an expiry): DynamoDB's TTL removes it once due."""
    assert record.expires_at is not None
    return {
        "pk": {"S": record.key},
        "sk": {"S": EXPIRY_SORT_KEY},
        "version": {"N": str(record.version)},
        "expires_at": {"N": f"{record.expires_at:.3f}"},
        # TTL is whole epoch seconds; rounding up never removes a marker before its expiry.
        "ttl": {"N": str(math.ceil(record.expires_at))},
    }


def _versions(changes: Sequence[StreamChange]) -> list[tuple[StateRecord, str]]:
    """(state record, operation) of every change that made a version."""
    return [
        (change.record, change.event.detail.operation.value)
        for change in changes
        if change.record is not None and change.event is not None and isinstance(change.event.detail, StateChanged)
    ]


def _removed(record: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The sort key and old image of a REMOVE record, else None."""
    if record.get("eventName") != "REMOVE":
        return None
    ddb = record.get("dynamodb") or {}
    sort_key = ((ddb.get("Keys") or {}).get("sk") or {}).get("S")
    if sort_key is None or "OldImage" not in ddb:
        return None
    return str(sort_key), image(ddb["OldImage"])


class StreamLifecycle:
    def __init__(
        self,
        client: DynamoDBClient,
        table_name: str,
        *,
        history: HistoryStore,
        states: StateExpiry,
        blobs: BlobRemover,
        clock: Callable[[], datetime],
    ) -> None:
        self._client = client
        self._table = table_name
        self._history = history
        self._states = states
        self._blobs = blobs
        self._clock = clock

    def record_versions(self, changes: Sequence[StreamChange]) -> None:
        """History items and expiry markers for the batch's new versions. Raises on a DynamoDB error, so the
        batch is retried (both writes are idempotent; the events are at least once anyway)."""
        versions = _versions(changes)
        self._history.record(versions)
        # The key's last version with an expiry in the batch: what one marker write per version would leave.
        markers = {
            record.key: expiry_marker(record)
            for record, _ in versions
            if not record.deleted and record.expires_at is not None
        }
        write_all(self._client, self._table, [{"PutRequest": {"Item": marker}} for marker in markers.values()])

    def record_history(self, changes: Sequence[StreamChange]) -> None:
        """History items only, for a batch replayed out of order (devstack/replay.py): an old version's expiry
        marker would replace the key's current one."""
        self._history.record(_versions(changes))

    def on_removals(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Expiry markers and history items that DynamoDB's TTL removed."""
        for record in records:
            removed = _removed(record)
            if removed is None:
                continue
            sort_key, old = removed
            if sort_key == EXPIRY_SORT_KEY:
                self._expire(old)
            elif is_history_sort_key(sort_key):
                entry = entry_of_item(old)
                if entry.blob is not None:
                    self._release(entry.key, entry.blob)

    def release_replaced(self, key: str, previous_version: int | None, blob: BlobRef) -> None:
        """The state moved off `blob`: it goes now only if the replaced version's history item is gone."""
        if previous_version is not None and self._history.exists(key, previous_version):
            return  # the history item refers to it; its TTL removal releases it
        self._blobs.delete(key, [blob])

    def _release(self, key: str, blob: BlobRef) -> None:
        """A history item that referred to `blob` left retention: the blob goes unless the state uses it."""
        state = self._states.head(key)
        if state is not None and state.get("blob_id", {}).get("S") == blob.write_id:
            return
        self._blobs.delete(key, [blob])

    def _expire(self, marker: Mapping[str, Any]) -> None:
        # ConditionFailed: already expired by a write, rewritten, or deleted; nothing to do.
        with contextlib.suppress(ConditionFailed):
            self._states.expire(
                marker["pk"]["S"],
                version=int(marker["version"]["N"]),
                expires_at=float(marker["expires_at"]["N"]),
                now=self._clock(),
            )
