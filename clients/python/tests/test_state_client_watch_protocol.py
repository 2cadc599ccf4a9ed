"""The watch's protocol handling (state_client/_watch.py), frame by frame: what the server's rarer messages
make the client do (duplicates, resync, a failed subscribe, an expiring token, errors). The common path runs
against the real stack in test_state_client_watch.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from state_client import BadRequest, Change, Forbidden, Resync
from state_client._watch import Reconnect, WatchState

pytestmark = pytest.mark.unit


def frame(**message: Any) -> str:
    return json.dumps(message)


def change(version: int, cursor: str | None = None, key: str = "k") -> str:
    return frame(
        type="change", subscription="w", key=key, version=version, operation="updated",
        occurred_at="2026-12-01T22:00:00.000Z", value=version, cursor=cursor or f"c{version}",
    )  # fmt: skip


def test_a_fresh_key_watch_takes_the_subscribed_cursor_and_drops_what_it_already_has() -> None:
    state = WatchState(key="k", prefix=None)
    assert state.subscribe() == {"type": "subscribe", "id": "w", "key": "k"}
    state.on_frame(frame(type="subscribed", id="w", key="k", version=7, cursor="c7"))
    assert (state.cursor, state.subscribed) == ("c7", True)
    assert state.on_frame(change(7)).events == []  # not after the start version
    events = state.on_frame(change(8)).events
    assert [e.version for e in events if isinstance(e, Change)] == [8]
    assert state.on_frame(change(8)).events == []  # a duplicate delivery
    assert state.cursor == "c8"
    assert state.subscribe() == {"type": "subscribe", "id": "w", "key": "k", "since": "c8"}


def test_a_resumed_watch_keeps_its_own_cursor() -> None:
    state = WatchState(key="k", prefix=None, cursor="c3")
    state.on_frame(frame(type="subscribed", id="w", key="k", version=9, cursor="c9"))
    assert state.cursor == "c3"
    assert [e.version for e in state.on_frame(change(4)).events if isinstance(e, Change)] == [4]


def test_a_prefix_watch_has_no_cursor_and_tracks_versions_per_key() -> None:
    state = WatchState(key=None, prefix="user:")
    assert state.subscribe() == {"type": "subscribe", "id": "w", "prefix": "user:"}
    state.on_frame(frame(type="subscribed", id="w", prefix="user:"))
    assert len(state.on_frame(change(1, key="user:a")).events) == 1
    assert len(state.on_frame(change(1, key="user:b")).events) == 1
    assert state.on_frame(change(1, key="user:a")).events == []
    assert state.cursor is None
    with pytest.raises(ValueError, match="since"):
        WatchState(key=None, prefix="user:", cursor="c1")
    with pytest.raises(ValueError, match="key= or prefix="):
        WatchState(key="k", prefix="user:")


def test_resync_is_an_event_and_the_watch_goes_on() -> None:
    state = WatchState(key="k", prefix=None, cursor="c1")
    events = state.on_frame(frame(type="resync", subscription="w", key="k", reason="retention")).events
    assert events == [Resync(key="k", reason="retention")]


@pytest.mark.parametrize(
    "failure",
    [frame(type="error", status=503, title="Service unavailable", id="w"), frame(message="Internal server error")],
    ids=["error-503", "api-gateway-internal-error"],
)
def test_a_failed_subscribe_unsubscribes_then_subscribes_again_from_the_cursor(failure: str) -> None:
    state = WatchState(key="k", prefix=None, cursor="c5")
    assert state.on_frame(failure).send == [{"type": "unsubscribe", "id": "w"}]
    again = state.on_frame(frame(type="unsubscribed", id="w")).send
    assert again == [{"type": "subscribe", "id": "w", "key": "k", "since": "c5"}]


def test_an_expiring_token_asks_for_a_refresh_and_closing_reconnects() -> None:
    state = WatchState(key="k", prefix=None)
    assert state.on_frame(frame(type="expiring", expires_at=1, detail="soon")).refresh_token
    with pytest.raises(Reconnect):
        state.on_frame(frame(type="closing", reason="token expired"))


def test_refused_subscriptions_raise_typed_errors() -> None:
    with pytest.raises(Forbidden):
        WatchState(key="k", prefix=None).on_frame(frame(type="error", status=403, title="Forbidden", id="w"))
    with pytest.raises(BadRequest) as bad:
        WatchState(key="k", prefix=None).on_frame(frame(type="error", status=400, title="Bad", detail="why", id="w"))
    assert bad.value.detail == "why"


@pytest.mark.parametrize("text", ["not json", "[]", frame(type="unknown"), frame(type="unsubscribed", id="w")])
def test_frames_it_does_not_know_change_nothing(text: str) -> None:
    state = WatchState(key="k", prefix=None)
    step = state.on_frame(text)
    assert (step.events, step.send, step.refresh_token) == ([], [], False)
