"""The WebSocket watch: its messages, cursors, targets and the collaborators the watch service is handed.

Pure: no I/O. The server's messages are built as compact JSON here (a change's value spliced in as its
canonical JSON, never parsed and re-encoded); the client's are parsed by watch_messages.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from state_core.domain.errors import BadRequest, StateError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

# API Gateway carries at most 128 KB in one WebSocket message; a change whose message would be larger goes
# out without its value (`value_omitted`), leaving room for the message's other fields.
MAX_MESSAGE_BYTES = 128 * 1024
MAX_VALUE_IN_MESSAGE_BYTES = MAX_MESSAGE_BYTES - 4 * 1024
# A client's message is small: a subscription (a prefix's resume names up to MAX_RESUME_KEYS versions), or a
# token (tokens.MAX_TOKEN_BYTES) in a refresh. API Gateway takes messages of up to 128 KB.
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
SUBSCRIPTION_ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
# A prefix: key characters ending at a segment boundary (`:`), so the fan-out finds the subscriptions of a
# changed key by its few segment prefixes instead of scanning.
PREFIX_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,254}:"
KEY_TARGET, PREFIX_TARGET = "k#", "p#"
_CURSOR_FORMAT = "w1"
_PREFIX_CURSOR_FORMAT = "p1"
# A prefix subscription can resume for this long after its watch began: the journal of the prefix's changes
# (which keys changed, so that a resume finds the keys changed while it was away, deleted ones too) is kept
# this long, and a resume reads it from the watch's start.
RESUME_RETENTION_SECONDS = 86_400
# The service's functions stamp times with their own clocks (synchronized, but not to the millisecond): a
# resume looks this far before the watch's start, so a version written just after it is never taken for one
# written before. It can only replay a key's versions the client never received, never one it did.
CLOCK_MARGIN_SECONDS = 5.0
# What one resume may cost: the client's versions it names, and the journal entries it reads. Beyond either,
# resync (list the prefix, then subscribe afresh).
MAX_RESUME_KEYS = 1_000
MAX_JOURNAL_READ = 2_000


class SubscriptionExists(StateError):
    status, title, slug = 409, "Conflict", "subscription-exists"


# ----------------------------------------------------------------------------------------------- messages
# The messages' pydantic models are in watch_messages.py, imported only where a client's message is parsed:
# pydantic costs ~80 ms of import, which $connect and the fan-out (which build messages by hand) never pay.
CLIENT_MESSAGE_TYPES = ("subscribe", "unsubscribe", "refresh")
SERVER_MESSAGE_TYPES = ("subscribed", "unsubscribed", "change", "resync", "error", "expiring", "closing")


def subscription_id_of(body: str | None) -> str | None:
    """The `id` of a refused message, when it has a valid one (so the error can name it), else None."""
    try:
        raw = json.loads(body or "")
    except (ValueError, RecursionError):
        return None
    ident = raw.get("id") if isinstance(raw, dict) else None
    return ident if isinstance(ident, str) and re.fullmatch(SUBSCRIPTION_ID_PATTERN, ident) else None


def message(fields: dict[str, Any]) -> bytes:
    """A server message as compact JSON, members without a value left out."""
    return json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":")).encode("utf-8")


def error_message(error: StateError, subscription_id: str | None = None) -> bytes:
    return message(
        {"type": "error", "status": error.status, "title": error.title, "detail": error.detail, "id": subscription_id}
    )


@dataclass(frozen=True, slots=True)
class ChangeNote:
    """One version of a key, ready to be sent to its watchers. `value_json` is the canonical value, None for
    a deletion or an expiry, or when it is omitted (`omitted` then says why)."""

    key: str
    version: int
    operation: str
    occurred_at: str
    value_json: bytes | None
    omitted: str | None = None

    def to_subscription(self, subscription_id: str) -> bytes:
        head = message(
            {
                "type": "change",
                "subscription": subscription_id,
                "key": self.key,
                "version": self.version,
                "operation": self.operation,
                "occurred_at": self.occurred_at,
                "value_omitted": True if self.omitted else None,
                "reason": self.omitted,
                "cursor": encode_cursor(self.key, self.version),
            }
        )
        if self.value_json is None:
            return head
        return head[:-1] + b',"value":' + self.value_json + b"}"


def value_for_message(
    value_json: bytes | None, size: int | None, *, sensitive: bool = False
) -> tuple[bytes | None, str | None]:
    """The value a change message carries and, when it carries none although the version has one, why. A
    sensitive (sealed) value is never delivered: the watcher GETs it, which checks its read permission again."""
    if sensitive:
        return None, "sensitive"
    if value_json is None:
        return None, ("too-large" if size else None)
    if len(value_json) > MAX_VALUE_IN_MESSAGE_BYTES:
        return None, "too-large"
    return value_json, None


# ----------------------------------------------------------------------------------------------- cursors
def _check(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:8]


def encode_cursor(key: str, version: int) -> str:
    """Opaque to clients: a key and a version, with a check so a garbled cursor is refused. Not a secret:
    a forged cursor of a key one may read only replays versions one may read anyway."""
    text = f"{_CURSOR_FORMAT} {version} {key}"
    return base64.urlsafe_b64encode(f"{text} {_check(text)}".encode("ascii")).decode("ascii").rstrip("=")


def _decoded(cursor: str) -> tuple[str, str, str]:
    """The fields of an intact cursor (format, position, target); BadRequest if garbled."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        fmt, position, target, check = text.split(" ")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("since is not a cursor this service issued") from None
    intact = check == _check(f"{fmt} {position} {target}")
    if not intact or not position.isascii() or not position.isdigit() or len(position) > 15:
        raise BadRequest("since is not a cursor this service issued")
    return fmt, position, target


def encode_prefix_cursor(prefix: str, started_at: float) -> str:
    """A prefix watch's cursor: the prefix and when the watch began (milliseconds). With it, the client sends
    back the last version it processed of each key (`versions`): the rest is found in the prefix's journal."""
    text = f"{_PREFIX_CURSOR_FORMAT} {int(started_at * 1000)} {prefix}"
    return base64.urlsafe_b64encode(f"{text} {_check(text)}".encode("ascii")).decode("ascii").rstrip("=")


def decode_prefix_cursor(prefix: str, cursor: str) -> float:
    """When the watch a cursor of `prefix` belongs to began; BadRequest if garbled, a key's, or another prefix's."""
    fmt, position, target = _decoded(cursor)
    if fmt != _PREFIX_CURSOR_FORMAT:
        raise BadRequest("since is not a cursor of a prefix subscription")
    if target != prefix:
        raise BadRequest("since is a cursor of another prefix")
    return int(position) / 1000


def decode_cursor(key: str, cursor: str) -> int:
    """The version a cursor of `key` continues after; BadRequest if garbled or of another key."""
    fmt, version_text, cursor_key = _decoded(cursor)
    if fmt != _CURSOR_FORMAT or len(version_text) > 12:
        raise BadRequest("since is not a cursor of a key subscription")
    if cursor_key != key:
        raise BadRequest("since is a cursor of another key")
    return int(version_text)


# ----------------------------------------------------------------------------------------------- targets
def targets_of(key: str) -> list[str]:
    """The subscription targets a change of `key` concerns: the key, and each of its segment prefixes."""
    parts = key.split(":")
    return [KEY_TARGET + key] + [PREFIX_TARGET + ":".join(parts[:n]) + ":" for n in range(1, len(parts))]


# ----------------------------------------------------------------------------------- the watch's records
@dataclass(frozen=True, slots=True)
class Connection:
    """A connection and the principal its token proved (never the token): what delivery authorizes with."""

    connection_id: str
    subject: str
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    expires_at: int  # the token's exp
    warned: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    """`resumed_from` (a resumed prefix subscription's): the time before which a key's versions count as
    received unless the client named the key in its `versions`; such a subscription starts each key from
    there, never from the first version it happens to meet."""

    connection_id: str
    subscription_id: str
    key: str | None
    prefix: str | None
    resumed_from: float | None = None

    @property
    def target(self) -> str:
        return KEY_TARGET + self.key if self.key is not None else PREFIX_TARGET + str(self.prefix)


@dataclass(frozen=True, slots=True)
class Journal:
    """A watched prefix's journal: kept since `since`, for as long as `until` (epoch seconds) is ahead."""

    since: float
    until: float


@dataclass(frozen=True, slots=True)
class Watermark:
    """Where one subscription stands on one key: the last version sent, and who holds its lease."""

    delivered: int | None
    claim: str | None
    lease_by: str | None
    lease_until: float | None
    pending: int | None

    def leased(self, now: float) -> bool:
        return self.lease_by is not None and (self.lease_until or 0) > now


class ConnectionGone(Exception):
    """PostToConnection answered 410: the client is gone."""


class LeaseLost(Exception):
    """A lease holder took longer than its lease and another deliverer took over."""


class SubscriptionGone(Exception):
    """The subscription was removed (unsubscribed, abandoned, disconnected) while a deliverer held its lease."""


class GiveBackFailed(Exception):
    """A claimed version could be neither posted nor given back: only a retry of the whole batch (which claims
    it again with the same token) still sends it."""


class PostThrottled(Exception):
    """PostToConnection kept being throttled (429) through its retries."""


class WatchStore(Protocol):
    """Connections, subscriptions, the index of subscriptions by target, and watermarks (storage/watch.py)."""

    def put_connection(self, connection: Connection) -> None: ...
    def connection(self, connection_id: str) -> Connection | None: ...
    def connections(self, connection_ids: Iterable[str]) -> dict[str, Connection]: ...
    def replace_principal(self, connection: Connection) -> bool: ...
    def mark_warned(self, connection_id: str) -> None: ...
    def expiring(self, before: float) -> Iterator[Connection]: ...
    def forget_connection(self, connection_id: str) -> None: ...
    def add_subscription(
        self, subscription: Subscription, expires_at: int, known: dict[str, int] | None = None
    ) -> bool: ...
    def subscription(self, connection_id: str, subscription_id: str) -> Subscription | None: ...
    def known_versions(self, subscription: Subscription) -> dict[str, int] | None: ...
    def remove_subscription(self, subscription: Subscription) -> None: ...
    def subscribers(self, target: str) -> list[Subscription]: ...
    def open_journal(self, prefix: str, until: float, now: float) -> Journal: ...
    def journal_of(self, prefix: str) -> Journal | None: ...
    def journal_if_kept(self, prefix: str, notes: list[ChangeNote], now: float) -> bool: ...
    def journal(self, prefix: str, after: float, limit: int) -> list[tuple[str, int]]: ...
    def claim(self, s: Subscription, key: str, version: int, token: str, now: float) -> Watermark | None: ...
    def unclaim(self, s: Subscription, key: str, version: int, token: str) -> None: ...
    def take_lease(self, s: Subscription, key: str, token: str, until: float, now: float) -> Watermark | None: ...
    def start_at(self, s: Subscription, key: str, version: int, token: str) -> None: ...
    def renew(self, s: Subscription, key: str, token: str, delivered: int, until: float) -> None: ...
    def advance(self, s: Subscription, key: str, version: int, token: str) -> None: ...
    def note_pending(self, s: Subscription, key: str, version: int, now: float) -> bool: ...
    def release(self, s: Subscription, key: str, token: str) -> int | None: ...
    def clear_watermark(self, s: Subscription, key: str, token: str) -> None: ...
    def mark_behind(self, s: Subscription, key: str, version: int) -> None: ...
    def behind(self, now: float) -> Iterator[tuple[Subscription, str]]: ...


class ConnectionPoster(Protocol):
    """API Gateway's @connections API (storage/connections.py)."""

    def post(self, connection_id: str, data: bytes) -> None: ...
    def close(self, connection_id: str) -> None: ...
