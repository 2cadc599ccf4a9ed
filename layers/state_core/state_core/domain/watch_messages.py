"""The WebSocket watch's messages as pydantic models: the client's, validated (unknown members refused,
nothing coerced), and the server's, which document what domain/watch.py builds by hand (the AsyncAPI
document, docs/asyncapi.yaml, is checked against these by a test). Imported only where a client's message
is parsed, so $connect and the fan-out never load pydantic."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from state_core.domain.errors import BadRequest, PayloadTooLarge, StateError
from state_core.domain.keys import KEY_PATTERN
from state_core.domain.watch import (
    KEY_TARGET,
    MAX_CLIENT_MESSAGE_BYTES,
    MAX_RESUME_KEYS,
    PREFIX_PATTERN,
    PREFIX_TARGET,
    SUBSCRIPTION_ID_PATTERN,
)

SubscriptionId = Annotated[StrictStr, Field(pattern=rf"^{SUBSCRIPTION_ID_PATTERN}$")]
WatchedKey = Annotated[StrictStr, Field(pattern=rf"^{KEY_PATTERN}$")]
Version = Annotated[StrictInt, Field(ge=0, le=10**12)]


# --------------------------------------------------------------------------------------- client messages
class _ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class Subscribe(_ClientMessage):
    """Watch one key, or every key under a prefix ending in `:`; `since` resumes after a cursor. A prefix's
    resume also names, in `versions`, the last version processed of each key received since the watch began."""

    type: Literal["subscribe"]
    id: SubscriptionId
    key: StrictStr | None = Field(default=None, pattern=rf"^{KEY_PATTERN}$")
    prefix: StrictStr | None = Field(default=None, pattern=rf"^{PREFIX_PATTERN}$")
    since: StrictStr | None = Field(default=None, max_length=512)
    versions: dict[WatchedKey, Version] | None = Field(default=None, max_length=MAX_RESUME_KEYS)

    @model_validator(mode="after")
    def _one_target(self) -> Subscribe:
        if (self.key is None) == (self.prefix is None):
            raise ValueError("a subscription names exactly one of key and prefix")
        if self.versions is not None and (self.prefix is None or self.since is None):
            raise ValueError("versions belong to a prefix subscription with since")
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


# --------------------------------------------------------------------------------------- server messages
class _ServerMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Subscribed(_ServerMessage):
    type: Literal["subscribed"]
    id: str
    key: str | None = None
    prefix: str | None = None
    version: int | None = Field(default=None, description="The key's version the watch starts after.")
    cursor: str | None = Field(
        default=None, description="A key's: the cursor of that version. A prefix's: the watch's, to resume with."
    )


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
    """A key's versions (with `key`), or a prefix's (with `prefix` only), that cannot be replayed."""

    type: Literal["resync"]
    subscription: str
    key: str | None = None
    prefix: str | None = None
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
