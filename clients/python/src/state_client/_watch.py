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
# The first subscription's id; each subscribe made again after a failure takes the next one (w1, w2, ...):
# docs/watch.md, "A subscribe that failed".
SUBSCRIPTION_ID = "w"
# docs/watch.md: a subscribe not answered within 20 s left nothing usable behind.
SUBSCRIBE_TIMEOUT = 20.0
# docs/watch.md: a prefix resume names at most 1,000 keys, in a client message of at most 64 KB. A watch that
# received more keys than fit subscribes anew and says so with a `Resync` of the prefix.
MAX_RESUME_KEYS = 1_000
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024


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
    version sent twice (docs/watch.md: a crashed fan-out, a lost post's answer) is yielded once.

    A key watch's cursor is the last change's (or the first `subscribed`'s). A prefix watch's is the watch's,
    from `subscribed`; it resumes with it and the last version yielded of each key received since
    (docs/watch.md, "Resuming a prefix").

    A subscribe that failed (`error` 5xx, before or after `subscribed`; 409, its id in use; API Gateway's id-less
    frame) may have left its subscription behind, live. The watch unsubscribes that id, waits for
    `unsubscribed`, then subscribes again from where it is under a new id, and ignores whatever still comes
    for an id it does not hold; the drop rule above stays the last guard."""

    key: str | None
    prefix: str | None
    cursor: str | None = None
    subscribed: bool = False
    last_version: dict[str, int] = field(default_factory=dict)
    # How many subscribes were made again after a failure: the current id's number (0: SUBSCRIPTION_ID).
    _attempt: int = 0
    # The id of the subscription this watch holds on the connection (None while it unsubscribes a failed one).
    _held: str | None = None
    # The id of a failed subscription being unsubscribed, whose `unsubscribed` the next subscribe waits for.
    _unsubscribing: str | None = None
    # Why this subscribe could not resume the prefix watch (None: it could, or nothing to resume).
    _restarted: str | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.prefix is None):
            raise ValueError("watch takes key= or prefix=")
        if self.prefix is not None and self.cursor is not None:
            raise ValueError(
                "since= is for key watches: a prefix resumes with the watch's cursor and the versions it"
                " received, which the watch keeps itself across reconnections"
            )

    @property
    def subscription_id(self) -> str:
        return SUBSCRIPTION_ID if self._attempt == 0 else f"{SUBSCRIPTION_ID}{self._attempt}"

    def subscribe(self) -> dict[str, Any]:
        """The subscribe message, on a new connection or again after a failed subscribe."""
        self.subscribed = False
        self._held, self._unsubscribing = self.subscription_id, None
        message: dict[str, Any] = {"type": "subscribe", "id": self._held}
        if self.key is not None:
            message["key"] = self.key
            if self.cursor is not None:
                message["since"] = self.cursor
            return message
        message["prefix"] = self.prefix
        self._restarted = None
        if self.cursor is not None:
            resume = {**message, "since": self.cursor, "versions": dict(self.last_version)}
            if len(self.last_version) > MAX_RESUME_KEYS:
                self._restarted = f"more than {MAX_RESUME_KEYS} keys received: too many to resume"
            elif len(json.dumps(resume).encode("utf-8")) > MAX_CLIENT_MESSAGE_BYTES:
                self._restarted = "the keys received do not fit in one resume message"
            else:
                return resume
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
            # API Gateway's own frame for a failed integration: the subscribe may have half happened. While a
            # failed one is being unsubscribed, it is the unsubscribe that failed: the connection goes, and
            # everything of it with it ($disconnect).
            if self._unsubscribing is not None:
                raise Reconnect(str(message.get("message")))
            return self._resubscribe()
        if kind == "expiring":
            return Step(refresh_token=True)
        if kind == "closing":
            raise Reconnect(str(message.get("reason", "closing")))
        if kind == "unsubscribed":
            return self._unsubscribed(message)
        if kind == "error":
            return self._error(message)
        # Anything else concerns one subscription: one this watch no longer holds (a failed subscribe's, live
        # still, or a post in flight at its unsubscribe) is ignored.
        concerns = message.get("id") if kind == "subscribed" else message.get("subscription")
        if self._held is None or concerns != self._held:
            return Step()
        if kind == "subscribed":
            return self._subscribed(message)
        if kind == "change":
            return self._change(message)
        if kind == "resync":
            return self._resync(message)
        return Step()

    def _subscribed(self, message: dict[str, Any]) -> Step:
        self.subscribed = True
        cursor = message.get("cursor")
        if not isinstance(cursor, str):
            return Step()
        if self.key is not None:
            if self.cursor is None:
                # A fresh watch starts after the key's current version; a resumed one replays from its cursor.
                self.cursor = cursor
                if isinstance(message.get("version"), int):
                    self.last_version[self.key] = max(self.last_version.get(self.key, 0), message["version"])
            return Step()
        # The watch's cursor: the same on a resume, a new one when the server (or this client) began anew.
        self.cursor = cursor
        if self._restarted is None:
            return Step()
        reason, self._restarted = self._restarted, None
        self.last_version.clear()
        return Step(events=[Resync(key=None, reason=reason, prefix=self.prefix)])

    def _resync(self, message: dict[str, Any]) -> Step:
        key, prefix = message.get("key"), message.get("prefix")
        reason = str(message.get("reason", ""))
        if isinstance(key, str):
            return Step(events=[Resync(key=key, reason=reason)])
        # The whole prefix resume was refused: the subscription goes on as a new watch from the cursor its
        # `subscribed` carried, and the versions kept so far belong to the old one.
        self.last_version.clear()
        return Step(events=[Resync(key=None, reason=reason, prefix=prefix if isinstance(prefix, str) else self.prefix)])

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
        ident = message.get("id")
        if self._unsubscribing is not None and ident == self._unsubscribing:
            if status >= 500:
                # The unsubscribe may not have happened: dropping the connection removes the subscription.
                raise Reconnect(f"unsubscribe of failed subscription {ident} answered {status}")
            return self._unsubscribed({"id": ident})  # refused (an id the server does not know): nothing to stop
        if ident is None:
            # An error naming no subscription: a subscribe not yet answered failed, or another message did.
            if status >= 500 and self._held is not None and not self.subscribed:
                return self._resubscribe()
            if status >= 500 and self._unsubscribing is not None:
                raise Reconnect(f"error {status} while unsubscribing failed subscription {self._unsubscribing}")
            raise error_for(status, message)
        if ident != self._held:
            return Step()  # about a subscription this watch no longer holds
        if status >= 500 or status == 409:
            # 5xx before or after `subscribed` (a replay failing partway): the subscription may be live, without
            # all of its replay. 409: its id is in use, by a failed subscribe's leftover. Either way: again, anew.
            return self._resubscribe()
        raise error_for(status, message)

    def _resubscribe(self) -> Step:
        # The failed subscription may still be live: unsubscribe it and wait for the answer (API Gateway may
        # process a socket's messages concurrently), then subscribe again with the cursor of the last change
        # yielded, under a new id (docs/watch.md, "A subscribe that failed").
        if self._held is None:
            return Step()  # nothing subscribed on this connection yet
        self._unsubscribing, self._held = self._held, None
        self.subscribed = False
        return Step(send=[{"type": "unsubscribe", "id": self._unsubscribing}])

    def _unsubscribed(self, message: dict[str, Any]) -> Step:
        if self._unsubscribing is None or message.get("id") != self._unsubscribing:
            return Step()
        self._attempt += 1
        return Step(send=[self.subscribe()])


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
