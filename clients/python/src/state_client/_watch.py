"""The watch protocol (docs/watch.md) without I/O: what to send and what to yield for each message, shared
by the async and the sync watch loops. One subscription per connection; the loops reconnect and resume."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from state_client.errors import StateError, error_for
from state_client.models import Change, Resync, WatchEvent

DEFAULT_WATCH_URL = "ws://127.0.0.1:3001/watch"
SUBSCRIPTION_ID = "w"
# docs/watch.md: a subscribe not answered within 20 s left nothing usable behind.
SUBSCRIBE_TIMEOUT = 20.0


def watch_url_from_env(watch_url: str | None) -> str:
    return watch_url or os.environ.get("STATE_WATCH_URL") or DEFAULT_WATCH_URL


class Reconnect(Exception):  # a signal to the loop, not an error the caller sees
    """Drop this connection and open another (a subscribe that failed, or the server closing)."""


@dataclass
class Step:
    """What one message asks of the loop: frames to send, events to yield, whether a fresh token is due."""

    send: list[dict[str, Any]] = field(default_factory=list)
    events: list[WatchEvent] = field(default_factory=list)
    refresh_token: bool = False


@dataclass
class WatchState:
    """One watch across connections: the cursor to resume from and the last version yielded per key, so a
    version sent twice (docs/watch.md: a crashed fan-out, a lost post's answer) is yielded once."""

    key: str | None
    prefix: str | None
    cursor: str | None = None
    subscribed: bool = False
    last_version: dict[str, int] = field(default_factory=dict)
    _resubscribing: bool = False

    def __post_init__(self) -> None:
        if (self.key is None) == (self.prefix is None):
            raise ValueError("watch takes key= or prefix=")
        if self.prefix is not None and self.cursor is not None:
            raise ValueError("since= is for key watches (docs/watch.md: a prefix watch has no cursor)")

    def subscribe(self) -> dict[str, Any]:
        self.subscribed = False
        message: dict[str, Any] = {"type": "subscribe", "id": SUBSCRIPTION_ID}
        if self.key is not None:
            message["key"] = self.key
            if self.cursor is not None:
                message["since"] = self.cursor
        else:
            message["prefix"] = self.prefix
        return message

    def on_frame(self, text: str | bytes) -> Step:  # noqa: PLR0911  one branch per message type
        try:
            message = json.loads(text)
        except ValueError:
            return Step()
        if not isinstance(message, dict):
            return Step()
        kind = message.get("type")
        if kind is None and "message" in message:
            # API Gateway's own frame for a failed integration: the subscribe may have half happened.
            return self._resubscribe()
        if kind == "subscribed":
            if self.key is not None and self.cursor is None and isinstance(message.get("cursor"), str):
                # A fresh watch starts after the key's current version; a resumed one replays from its cursor.
                self.cursor = message["cursor"]
                if isinstance(message.get("version"), int):
                    self.last_version[self.key] = max(self.last_version.get(self.key, 0), message["version"])
            self.subscribed = True
            return Step()
        if kind == "change":
            return self._change(message)
        if kind == "resync":
            return Step(events=[Resync(key=str(message.get("key")), reason=str(message.get("reason", "")))])
        if kind == "expiring":
            return Step(refresh_token=True)
        if kind == "closing":
            raise Reconnect(str(message.get("reason", "closing")))
        if kind == "unsubscribed" and self._resubscribing:
            self._resubscribing = False
            return Step(send=[self.subscribe()])
        if kind == "error":
            return self._error(message)
        return Step()

    def _change(self, message: dict[str, Any]) -> Step:
        change = Change.from_json(message)
        if change.version <= self.last_version.get(change.key, 0):
            return Step()  # a duplicate delivery
        self.last_version[change.key] = change.version
        if self.key is not None:
            self.cursor = change.cursor
        return Step(events=[change])

    def _error(self, message: dict[str, Any]) -> Step:
        status = message.get("status")
        status = status if isinstance(status, int) else 500
        if status >= 500 and message.get("id") in (SUBSCRIPTION_ID, None) and not self.subscribed:
            return self._resubscribe()
        raise error_for(status, message)

    def _resubscribe(self) -> Step:
        # API Gateway may process a socket's messages concurrently: unsubscribe, wait for its answer, then
        # subscribe again with the cursor of the last change yielded.
        self._resubscribing = True
        self.subscribed = False
        return Step(send=[{"type": "unsubscribe", "id": SUBSCRIPTION_ID}])


class Backoff:
    """Jittered exponential waits between reconnections, reset once a subscription is in place."""

    def __init__(self, base: float = 0.2, cap: float = 10.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next(self) -> float:
        self.attempt += 1
        return random.uniform(self.base, min(self.cap, self.base * 2**self.attempt))  # noqa: S311  not crypto

    def reset(self) -> None:
        self.attempt = 0


def handshake_error(status: int) -> StateError:
    return error_for(status, {"title": "WebSocket handshake refused"})
