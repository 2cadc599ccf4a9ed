"""The watch's fan-out from the table's stream: each state version becomes a change note for its watchers.

Its own event source mapping (like the cache repair): watchers never wait for EventBridge, nor events for
watchers. Records of a key arrive in order on one shard, one invocation per shard at a time, so the notes of
a key come in version order; the watch service sends each connection's changes one after the other. The
claim token of a note is its stream record's sequence number: a retried batch claims the same versions
with the same tokens, so a crash between a claim and its post sends that version again rather than never.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from state_core.domain.codec import SEALED_PREFIX
from state_core.domain.watch import ChangeNote, value_for_message
from state_core.storage.state import record_of_item
from state_core.stream.events import Operation, image, is_state_record, new_state_image, operation_of


def change_notes(records: Iterable[Mapping[str, Any]]) -> list[tuple[ChangeNote, str]]:
    """(note, claim token) of every state version in `records`, in stream order."""
    notes: list[tuple[ChangeNote, str]] = []
    for stream_record in records:
        if not is_state_record(stream_record):
            continue
        new = new_state_image(stream_record)
        if new is None:
            continue
        ddb = stream_record["dynamodb"]
        old = image(ddb["OldImage"]) if "OldImage" in ddb else None
        if old is not None and "version" not in old:
            old = None
        record = record_of_item(new)
        operation = operation_of(old, new)
        if record.deleted or operation in (Operation.DELETED, Operation.EXPIRED):
            value_json, omitted = None, None
        else:
            # A large value's blob is never fetched here: the watcher reads it with GET.
            sealed = record.value is not None and record.value.sealed
            value_json, omitted = value_for_message(
                record.value.canonical() if record.value is not None and not sealed else None,
                record.blob.size or 1 if record.blob is not None else None,
                sensitive=sealed or (record.blob is not None and record.blob.encoding.startswith(SEALED_PREFIX)),
            )
        note = ChangeNote(record.key, record.version, operation.value, record.updated_at, value_json, omitted)
        notes.append((note, f"s{ddb['SequenceNumber']}"))
    return notes
