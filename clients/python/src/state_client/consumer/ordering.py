"""Each key's changes once and in version order, from StateChanged events delivered in any order.

EventBridge delivers at least once and in no particular order, and a consumer's batch may miss a version
whose event is late, was replayed, or went to another batch. Versions of a key count up by one with every
change (a delete and an expiry included), so the versions a batch skips are known exactly: the consumer
reads them from the history API (`GET /state/{key}?version=N`) and yields them in their place.

What the consumer yields for a version it reads from the history rather than from its event:

- the version's value (`Operation.WRITTEN`: the history read does not say whether it was a creation or an
  update), with its actor and time;
- `Operation.REMOVED` without a value when the read answers 404: a version below one that exists and has no
  value is a deletion or an expiry (the history read answers 404 for both and does not say which);
- `Operation.UNRETAINED` without a value when the read answers 410: the version left the history's
  retention, its content is lost. It is yielded rather than skipped so the handler sees the hole.

A read that fails otherwise (503 while the history trails the stream, a network error, 403) stops that
key at the version before it: its later versions are not yielded and its mark stays, the other keys go on,
and `ChangesPending` is raised once the batch is done so the events come again (a Lambda retries them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeIs

from state_client.errors import Gone, NotFound

if TYPE_CHECKING:
    from state_client.consumer.marks import MarkStore

DETAIL_TYPE = "StateChanged"


class Operation(StrEnum):
    """What a yielded change did. The first four come from the events themselves."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    EXPIRED = "expired"
    # Read from the history, not from an event: the history read does not tell these apart.
    WRITTEN = "written"  # created or updated; the value is there
    REMOVED = "removed"  # deleted or expired; no value
    UNRETAINED = "unretained"  # beyond the history's retention; content lost


class Origin(StrEnum):
    EVENT = "event"  # the change's own event was in the batch
    HISTORY = "history"  # its event was missing: read from the history API


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """The `detail` of one StateChanged event (docs/api.md, "Change events")."""

    event_id: str
    key: str
    version: int
    previous_version: int | None
    operation: Operation
    actor: str
    occurred_at: str
    value: Any = None
    has_value: bool = False
    value_omitted: bool = False

    @classmethod
    def parse(cls, event: Mapping[str, Any] | str | bytes) -> ChangeEvent:
        """An EventBridge event (with `detail-type` and `detail`), its bare `detail`, or either as JSON
        text (an SQS message body). Anything else is a ValueError naming what is wrong."""
        if isinstance(event, str | bytes):
            event = json.loads(event)
        if not isinstance(event, Mapping):
            raise ValueError("a StateChanged event is a JSON object")
        if "detail" in event:
            if event.get("detail-type") != DETAIL_TYPE:
                raise ValueError(
                    f"not a {DETAIL_TYPE} event: its detail-type is another ({_shown(event.get('detail-type'))})"
                )
            detail = event["detail"]
            if not isinstance(detail, Mapping):
                raise ValueError("the event's detail is not an object")
        else:
            detail = event
        return cls._of_detail(detail)

    @classmethod
    def _of_detail(cls, detail: Mapping[str, Any]) -> ChangeEvent:
        key, version, previous = detail.get("key"), detail.get("version"), detail.get("previous_version")
        if not isinstance(key, str) or not key:
            raise ValueError("detail.key is not a non-empty string")
        if not _is_version(version):
            raise ValueError(f"detail.version is not a version from 1 to {MAX_VERSION} ({_shown(version)})")
        if previous is not None and not _is_version(previous):
            raise ValueError(f"detail.previous_version is not a version ({_shown(previous)})")
        try:
            operation = Operation(str(detail.get("operation")))
        except ValueError:
            raise ValueError(f"detail.operation is not an event's ({_shown(detail.get('operation'))})") from None
        if operation not in _EVENT_OPERATIONS:
            raise ValueError(f"detail.operation is not an event's ({_shown(operation.value)})")
        return cls(
            event_id=str(detail.get("event_id", "")),
            key=key,
            version=version,
            previous_version=previous,
            operation=operation,
            actor=str(detail.get("actor", "")),
            occurred_at=str(detail.get("occurred_at", "")),
            value=detail.get("value"),
            has_value="value" in detail,
            value_omitted=bool(detail.get("value_omitted", False)),
        )


_EVENT_OPERATIONS = frozenset({Operation.CREATED, Operation.UPDATED, Operation.DELETED, Operation.EXPIRED})


# The API's bound on versions (docs/api.md, "Version history").
MAX_VERSION = 10**15 - 1


def _is_version(value: object) -> TypeIs[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_VERSION


def _shown(value: object) -> str:
    """What a refused event's field is, never what it holds: the message gets logged, and a malformed event
    may carry a value anywhere."""
    return "missing" if value is None else f"a {type(value).__name__}"


@dataclass(frozen=True, slots=True)
class Change:
    """One version of one key, as the consumer yields it. `has_value` tells a JSON `null` value from none
    (a deletion, an expiry, a removed or unretained version, or an omitted value that could not be read)."""

    key: str
    version: int
    operation: Operation
    origin: Origin
    value: Any = None
    has_value: bool = False
    actor: str | None = None
    # RFC 3339 text as the event or the envelope carries it.
    occurred_at: str | None = None
    event_id: str | None = None


class VersionRecord(Protocol):
    """What a version read returns: state_client's envelope has these."""

    @property
    def value(self) -> Any: ...

    @property
    def updated_by(self) -> str | None: ...

    @property
    def updated_at(self) -> Any: ...


class VersionReader(Protocol):
    """The one call the consumer makes: `StateClient.get_version` fits. It raises state_client's
    `NotFound` for a version without a value and `Gone` for one beyond retention."""

    def get_version(self, key: str, version: int, /) -> VersionRecord: ...


class ChangesPending(Exception):
    """Some keys stopped at a version their read could not get; their marks stay before it. Raised after the
    rest of the batch was consumed: deliver these keys' events again."""

    def __init__(self, errors: Mapping[str, BaseException]) -> None:
        self.errors = dict(errors)
        names = ", ".join(sorted(self.errors)[:5])
        super().__init__(f"{len(self.errors)} keys left pending on a failed history read: {names}")

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.errors)


@dataclass
class OrderedConsumer:
    """Yields each key's changes once, in version order, filling the versions a batch lacks from the
    history; a key's mark (the last version handed out and resumed past) lives in `marks`.

    A change counts as consumed when the caller asks for the next one: its mark is written then, so a
    handler that dies inside a change sees it again on the next delivery (at least once, never out of
    order). Two consumers of the same key never move its mark backwards; each still yields in order, but
    both may yield a version they raced for. One batch at a time per key (a single consumer, or keys
    partitioned between consumers) makes it exactly once while nothing dies.

    `new_keys`: where a key without a mark starts. "first" (default) backfills from version 1; "event"
    starts at the lowest version this batch holds for it, for a consumer attached to keys with a long past.
    """

    reader: VersionReader
    marks: MarkStore
    new_keys: Literal["first", "event"] = "first"
    # An event whose value was too large for it (`value_omitted`) is completed with a version read.
    fetch_omitted_values: bool = True

    def consume(self, events: Iterable[Mapping[str, Any] | str | bytes | ChangeEvent]) -> Iterator[Change]:
        """The changes of `events` (EventBridge events, bare details, JSON text or parsed ChangeEvents) and of
        the versions they skip, key by key in order of first appearance, each key's in version order.
        Raises ChangesPending at the end if a history read failed; ValueError at once for a malformed event,
        before anything is yielded."""
        by_key: dict[str, dict[int, ChangeEvent]] = {}
        for raw in events:
            event = raw if isinstance(raw, ChangeEvent) else ChangeEvent.parse(raw)
            by_key.setdefault(event.key, {}).setdefault(event.version, event)
        errors: dict[str, BaseException] = {}
        for key, versions in by_key.items():
            try:
                yield from self._key(key, versions)
            except _KeyStopped as stopped:
                errors[key] = stopped.cause
        if errors:
            raise ChangesPending(errors)

    def _key(self, key: str, events: dict[int, ChangeEvent]) -> Iterator[Change]:
        mark = self.marks.get(key)
        if mark == 0 and self.new_keys == "event":
            mark = min(events) - 1
        top = max(events)
        version = mark + 1
        while version <= top:
            event = events.get(version)
            yield self._of_event(event) if event is not None else self._from_history(key, version)
            # Resumed: the caller is done with `version`.
            if self.marks.advance(key, version):
                version += 1
            else:
                # Another consumer moved the mark to `version` or past it: go on after wherever it is.
                version = max(version, self.marks.get(key)) + 1

    def _of_event(self, event: ChangeEvent) -> Change:
        change = Change(
            key=event.key,
            version=event.version,
            operation=event.operation,
            origin=Origin.EVENT,
            value=event.value,
            has_value=event.has_value,
            actor=event.actor,
            occurred_at=event.occurred_at,
            event_id=event.event_id,
        )
        if not (event.value_omitted and self.fetch_omitted_values):
            return change
        try:
            record = self.reader.get_version(event.key, event.version)
        except Gone:
            # Replayed past the history's retention: the event's facts stand, its value is lost.
            return change
        except Exception as exc:
            raise _KeyStopped(exc) from exc
        return replace(change, value=record.value, has_value=True)

    def _from_history(self, key: str, version: int) -> Change:
        try:
            record = self.reader.get_version(key, version)
        except NotFound:
            return Change(key=key, version=version, operation=Operation.REMOVED, origin=Origin.HISTORY)
        except Gone:
            return Change(key=key, version=version, operation=Operation.UNRETAINED, origin=Origin.HISTORY)
        except Exception as exc:
            raise _KeyStopped(exc) from exc
        return Change(
            key=key,
            version=version,
            operation=Operation.WRITTEN,
            origin=Origin.HISTORY,
            value=record.value,
            has_value=True,
            actor=record.updated_by,
            occurred_at=_rfc3339(record.updated_at),
        )


class _KeyStopped(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _rfc3339(when: Any) -> str:
    if isinstance(when, datetime):
        return when.isoformat().replace("+00:00", "Z")
    return str(when)
