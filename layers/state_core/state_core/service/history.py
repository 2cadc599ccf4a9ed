"""Reading a key's history: `GET /state/{key}?version=N` and `GET /state/{key}/history`.

Only the stream writes history items (stream/lifecycle.py), in version order per key, so the history
trails the state by the stream's lag. The rules: the current version always comes from the state item (its
history item may not be written yet, or have left retention); an older version comes from its history item.
A version that never existed, or that is a deletion or an expiry, is NotFound; one that existed but whose
history item has left retention is Gone; shortly after the key's latest write, a missing older version is
ServiceUnavailable (retry), since its history item may still be on its way from the stream. A first page
that would skip versions between the newest recorded one and the current one starts at the newest recorded
one instead (the history as of the stream's position: it trails the state, never has a hole), and is 503
only while the stream has recorded none of the key's versions. Pages run newest
first and continue after an opaque cursor bound to their key.

The stores come in through the domain's ports (StateReads, HistoryReads), which storage/state.py and
storage/history.py implement.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from state_core.domain.errors import BadRequest, Gone, NotFound, ServiceUnavailable
from state_core.domain.history import MAX_HISTORY_VERSION, HistoryEntry, rfc3339_epoch
from state_core.domain.params import ascii_int
from state_core.domain.sealing import canonical_of

if TYPE_CHECKING:
    from state_core.domain.ports import HistoryReads, StateReads, ValueCipher
    from state_core.domain.records import StateRecord

# How far the history may trail the state: the stream's lag (the publisher writes every history item; about
# a second, measured locally in benchmarks/results/). Within this window after the key's latest write, a missing
# older version answers 503 (retry) rather than a premature 410, and a listing stops short of it.
HISTORY_LAG_GRACE_SECONDS = 60
_CURSOR_VERSION = "h1"


# ----------------------------------------------------------------------------------------------- cursors
def _key_tag(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _check(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:8]


def encode_cursor(key: str, version: int) -> str:
    """Opaque: base64url of the format, a tag of the key, the last version listed, and a check over them
    (a garbled or truncated cursor is refused, not read as another position). Not a secret: a caller that
    forges a cursor for a key it may read can only skip to versions it may read anyway."""
    text = f"{_CURSOR_VERSION}:{_key_tag(key)}:{version}"
    text = f"{text}:{_check(text)}"
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(key: str, cursor: str) -> int:
    """The version a cursor continues after; BadRequest if it is garbled or belongs to another key."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        fmt, tag, version_text, check = text.split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor is not a cursor this service issued") from None
    version = ascii_int(version_text, low=1, high=MAX_HISTORY_VERSION)
    intact = check == _check(f"{fmt}:{tag}:{version_text}")
    if not intact or fmt != _CURSOR_VERSION or version is None:
        raise BadRequest("cursor is not a cursor this service issued")
    if tag != _key_tag(key):
        raise BadRequest("cursor belongs to another key")
    return version


# ------------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True, slots=True)
class HistoryPage:
    key: str
    entries: list[HistoryEntry]
    next_cursor: str | None


class HistoryReader:
    """`GET /state/{key}?version=N` and `GET /state/{key}/history`."""

    def __init__(
        self,
        states: StateReads,
        history: HistoryReads,
        *,
        clock: Callable[[], datetime],
        cipher: ValueCipher | None = None,
    ) -> None:
        self._states = states
        self._history = history
        self._clock = clock
        self._cipher = cipher

    def version(self, key: str, version: int) -> tuple[StateRecord, bytes]:
        """Version `version` of `key` as a record and its canonical value.

        NotFound if the version never existed (or is a deletion or expiry, which has no value); Gone if it
        existed but its history item has left retention; ServiceUnavailable within the lag grace after the
        key's latest write, when the history may not have caught up yet.
        """
        state = self._states.get(key)
        if state is None or version > state.version:
            raise NotFound(f"key {key} has no version {version}")
        if version == state.version:
            if state.deleted or state.value is None:  # StateStore.get loads a large value's blob
                raise NotFound(f"version {version} of key {key} is a deletion and has no value")
            return state, canonical_of(state.value, key, state.write_id, self._cipher)
        found = self._history.get(key, version)
        if found is None:
            if self._within_lag_grace(state.updated_at):
                raise ServiceUnavailable(f"version {version} of key {key} is not in the history yet; retry shortly")
            raise Gone(f"version {version} of key {key} is beyond the history's retention")
        if not found.has_value:
            raise NotFound(f"version {version} of key {key} is a deletion and has no value")
        value = found.value
        if value is None and found.blob is not None:
            value = self._states.load_blob(found.blob)
            if value is None:
                raise Gone(f"version {version} of key {key} is beyond the history's retention")
        assert value is not None
        return replace(found, value=value).record(), canonical_of(value, key, found.write_id, self._cipher)

    def list(self, key: str, *, limit: int, cursor: str | None) -> HistoryPage:
        """Versions newest first. The first page starts with the current version, taken from the state
        item (its history item may have left retention, or trail it by the stream's lag), unless versions
        under it are still on their way from the stream: then it starts at the newest recorded one."""
        before = None if cursor is None else decode_cursor(key, cursor)
        entries, more = self._history.page(key, limit=limit, before=before)
        if before is None:
            current = self._history.current(key)
            if current is None and not entries:
                raise NotFound(f"key {key} has no history")
            newest_recorded = entries[0].version if entries else 0
            lagging = (
                current is not None
                and newest_recorded < current.version - 1
                and self._within_lag_grace(current.occurred_at)
            )
            # The stream records a key's versions in order, so a gap under the current version is its lag. Then
            # the page starts at the newest recorded version: it trails the state but has no hole, and a key
            # written faster than the stream's lag still lists (a 503 there would not end while writes go on).
            if lagging and not entries:
                # Nothing recorded yet: an empty page, or the current version alone, would look complete.
                raise ServiceUnavailable(f"the history of key {key} has not caught up yet; retry shortly")
            if not lagging and current is not None and newest_recorded < current.version:
                entries = [current, *entries]
                if len(entries) > limit:
                    entries, more = entries[:limit], True
        next_cursor = encode_cursor(key, entries[-1].version) if more and entries else None
        return HistoryPage(key=key, entries=entries, next_cursor=next_cursor)

    def _within_lag_grace(self, latest_write: str) -> bool:
        return self._clock().timestamp() - rfc3339_epoch(latest_write) < HISTORY_LAG_GRACE_SECONDS
