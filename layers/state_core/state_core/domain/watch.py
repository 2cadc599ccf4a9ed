"""The WebSocket watch: its messages, cursors, targets and the collaborators the watch service is handed.

Pure: no I/O. The client's messages are validated with pydantic (unknown members refused, nothing coerced);
the server's messages are built as compact JSON here, and their pydantic models document them (the AsyncAPI
document, docs/asyncapi.yaml, is checked against these models by a test). A change's value is spliced in
as its canonical JSON, never parsed and re-encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from state_core.domain.errors import BadRequest, PayloadTooLarge, StateError
from state_core.domain.keys import KEY_PATTERN

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

# API Gateway carries at most 128 KB in one WebSocket message; a change whose message would be larger goes
# out without its value (`value_omitted`), leaving room for the message's other fields.
MAX_MESSAGE_BYTES = 128 * 1024
MAX_VALUE_IN_MESSAGE_BYTES = MAX_MESSAGE_BYTES - 4 * 1024
# A client's message is small: a subscription, or a token (tokens.MAX_TOKEN_BYTES) in a refresh.
MAX_CLIENT_MESSAGE_BYTES = 16 * 1024
SUBSCRIPTION_ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
# A prefix: key characters ending at a segment boundary (`:`), so the fan-out finds the subscriptions of a
# changed key by its few segment prefixes instead of scanning.
PREFIX_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,254}:"
_PREFIX = re.compile(PREFIX_PATTERN + r"\Z")
_KEY = re.compile(KEY_PATTERN + r"\Z")
KEY_TARGET, PREFIX_TARGET = "k#", "p#"
_CURSOR_FORMAT = "w1"

SubscriptionId = Annotated[StrictStr, Field(pattern=rf"^{SUBSCRIPTION_ID_PATTERN}$")]


class SubscriptionExists(StateError):
    status, title, slug = 409, "Conflict", "subscription-exists"


class Resync(StateError):
    """The cursor is older than the history holds: the client lists, then watches from what it read."""

    status, title, slug = 410, "Gone", "resync"


# --------------------------------------------------------------------------------------- client messages
class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class Subscribe(_ClientMessage):
    """Watch one key, or every key under a prefix ending in `:`; `since` resumes after a cursor."""

    type: Literal["subscribe"]
    id: SubscriptionId
    key: StrictStr | None = Field(default=None, pattern=rf"^{KEY_PATTERN}$")
    prefix: StrictStr | None = Field(default=None, pattern=rf"^{PREFIX_PATTERN}$")
    since: StrictStr | None = Field(default=None, max_length=512)

    @model_validator(mode="after")
    def _one_target(self) -> Subscribe:
        if (self.key is None) == (self.prefix is None):
            raise ValueError("a subscription names exactly one of key and prefix")
        return self

    @property
    def target(self) -> str:
        return KEY_TARGET + self.key if self.key is not None else PREFIX_TARGET + str(self.prefix)


class Unsubscribe(_ClientMessage):
    type: Literal["unsubscribe"]
    id: SubscriptionId


class Refresh(_ClientMessage):
    """A fresh token for the same subject, before the current one expires."""

    type: Literal["refresh"]
    token: StrictStr = Field(min_length=1, max_length=10_240)


ClientMessage = Subscribe | Unsubscribe | Refresh
CLIENT_MESSAGES: dict[str, type[_ClientMessage]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "refresh": Refresh,
}


def parse_client_message(body: str | None) -> ClientMessage:
    """The client's message; BadRequest (PayloadTooLarge) naming what is wrong, never echoing a token."""
    if body is None or not body.strip():
        raise BadRequest("a message is a JSON object with a type")
    if len(body.encode("utf-8", "surrogatepass")) > MAX_CLIENT_MESSAGE_BYTES:
        raise PayloadTooLarge(f"a message is at most {MAX_CLIENT_MESSAGE_BYTES} bytes")
    from state_core.domain.codec import object_without_duplicates, reject_constant

    try:
        raw = json.loads(body, object_pairs_hook=object_without_duplicates, parse_constant=reject_constant)
    except StateError as exc:
        raise BadRequest(f"the message is not valid JSON: {exc.detail}") from None
    except (ValueError, RecursionError):
        raise BadRequest("the message is not valid JSON") from None
    if not isinstance(raw, dict):
        raise BadRequest("a message is a JSON object with a type")
    kind = raw.get("type")
    model = CLIENT_MESSAGES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise BadRequest(f"type must be one of {', '.join(CLIENT_MESSAGES)}")
    try:
        message = model.model_validate(raw)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'message'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        )
        raise BadRequest(f"invalid {raw['type']} message: {reasons}") from None
    assert isinstance(message, Subscribe | Unsubscribe | Refresh)
    return message


def subscription_id_of(body: str | None) -> str | None:
    """The `id` of a refused message, when it has a valid one (so the error can name it), else None."""
    try:
        raw = json.loads(body or "")
    except (ValueError, RecursionError):
        return None
    ident = raw.get("id") if isinstance(raw, dict) else None
    return ident if isinstance(ident, str) and re.fullmatch(SUBSCRIPTION_ID_PATTERN, ident) else None


# --------------------------------------------------------------------------------------- server messages
class _ServerMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Subscribed(_ServerMessage):
    type: Literal["subscribed"]
    id: str
    key: str | None = None
    prefix: str | None = None
    version: int | None = Field(default=None, description="The key's version the watch starts after.")


class Unsubscribed(_ServerMessage):
    type: Literal["unsubscribed"]
    id: str


class Change(_ServerMessage):
    type: Literal["change"]
    subscription: str
    key: str
    version: int
    operation: Literal["created", "updated", "deleted", "expired"]
    occurred_at: str
    value: Any = None
    value_omitted: bool | None = None
    reason: str | None = None
    cursor: str


class ResyncMessage(_ServerMessage):
    type: Literal["resync"]
    subscription: str
    key: str
    reason: str


class Error(_ServerMessage):
    type: Literal["error"]
    status: int
    title: str
    detail: str
    id: str | None = None


class Expiring(_ServerMessage):
    type: Literal["expiring"]
    expires_at: int
    detail: str


class Closing(_ServerMessage):
    type: Literal["closing"]
    reason: str


SERVER_MESSAGES: dict[str, type[_ServerMessage]] = {
    "subscribed": Subscribed,
    "unsubscribed": Unsubscribed,
    "change": Change,
    "resync": ResyncMessage,
    "error": Error,
    "expiring": Expiring,
    "closing": Closing,
}


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


def value_for_message(value_json: bytes | None, size: int | None) -> tuple[bytes | None, str | None]:
    """The value a change message carries and, when it carries none although the version has one, why."""
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


def decode_cursor(key: str, cursor: str) -> int:
    """The version a cursor of `key` continues after; BadRequest if garbled or of another key."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        fmt, version_text, cursor_key, check = text.split(" ")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("since is not a cursor this service issued") from None
    intact = check == _check(f"{fmt} {version_text} {cursor_key}") and fmt == _CURSOR_FORMAT
    if not intact or not version_text.isascii() or not version_text.isdigit() or len(version_text) > 12:
        raise BadRequest("since is not a cursor this service issued")
    if cursor_key != key:
        raise BadRequest("since is a cursor of another key")
    return int(version_text)


# ----------------------------------------------------------------------------------------------- targets
def targets_of(key: str) -> list[str]:
    """The subscription targets a change of `key` concerns: the key, and each of its segment prefixes."""
    parts = key.split(":")
    return [KEY_TARGET + key] + [PREFIX_TARGET + ":".join(parts[:n]) + ":" for n in range(1, len(parts))]


def is_prefix(text: str) -> bool:
    return _PREFIX.match(text) is not None


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
    connection_id: str
    subscription_id: str
    key: str | None
    prefix: str | None

    @property
    def target(self) -> str:
        return KEY_TARGET + self.key if self.key is not None else PREFIX_TARGET + str(self.prefix)


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
    def add_subscription(self, subscription: Subscription, expires_at: int) -> bool: ...
    def subscription(self, connection_id: str, subscription_id: str) -> Subscription | None: ...
    def remove_subscription(self, subscription: Subscription) -> None: ...
    def subscribers(self, target: str) -> list[tuple[str, str]]: ...
    def claim(self, s: Subscription, key: str, version: int, token: str, now: float) -> Watermark | None: ...
    def unclaim(self, s: Subscription, key: str, version: int, token: str) -> None: ...
    def take_lease(self, s: Subscription, key: str, token: str, until: float, now: float) -> Watermark | None: ...
    def start_at(self, s: Subscription, key: str, version: int, token: str) -> None: ...
    def advance(self, s: Subscription, key: str, version: int, token: str) -> None: ...
    def note_pending(self, s: Subscription, key: str, version: int, now: float) -> bool: ...
    def release(self, s: Subscription, key: str, token: str) -> int | None: ...


class ConnectionPoster(Protocol):
    """API Gateway's @connections API (storage/connections.py)."""

    def post(self, connection_id: str, data: bytes) -> None: ...
    def close(self, connection_id: str) -> None: ...
