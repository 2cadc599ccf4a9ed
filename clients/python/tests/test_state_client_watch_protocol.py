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


def change(version: int, cursor: str | None = None, key: str = "k", subscription: str = "w") -> str:
    return frame(
        type="change", subscription=subscription, key=key, version=version, operation="updated",
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
    state.subscribe()
    state.on_frame(frame(type="subscribed", id="w", key="k", version=9, cursor="c9"))
    assert state.cursor == "c3"
    assert [e.version for e in state.on_frame(change(4)).events if isinstance(e, Change)] == [4]


def test_a_prefix_watch_resumes_with_the_watchs_cursor_and_the_versions_it_received() -> None:
    state = WatchState(key=None, prefix="user:")
    assert state.subscribe() == {"type": "subscribe", "id": "w", "prefix": "user:"}
    assert state.on_frame(frame(type="subscribed", id="w", prefix="user:", cursor="p0")).events == []
    assert len(state.on_frame(change(1, cursor="ka1", key="user:a")).events) == 1
    assert len(state.on_frame(change(2, cursor="ka2", key="user:a")).events) == 1
    assert len(state.on_frame(change(1, cursor="kb1", key="user:b")).events) == 1
    assert state.on_frame(change(1, key="user:a")).events == []
    # The watch's cursor, not a key's: the change messages' cursors are their keys'.
    assert state.cursor == "p0"
    resume = {"type": "subscribe", "id": "w", "prefix": "user:", "since": "p0", "versions": {"user:a": 2, "user:b": 1}}
    assert state.subscribe() == resume
    assert state.on_frame(frame(type="subscribed", id="w", prefix="user:", cursor="p0")).events == []
    # What the server replays that this watch already yielded is dropped; what it did not is yielded.
    assert state.on_frame(change(2, key="user:a")).events == []
    assert [e.version for e in state.on_frame(change(3, key="user:a")).events if isinstance(e, Change)] == [3]
    assert [e.key for e in state.on_frame(change(1, key="user:c")).events if isinstance(e, Change)] == ["user:c"]
    assert state.subscribe()["versions"] == {"user:a": 3, "user:b": 1, "user:c": 1}


def test_a_prefix_watch_takes_no_since_of_its_callers_and_needs_one_target() -> None:
    with pytest.raises(ValueError, match="since"):
        WatchState(key=None, prefix="user:", cursor="c1")
    with pytest.raises(ValueError, match="key= or prefix="):
        WatchState(key="k", prefix="user:")
    with pytest.raises(ValueError, match="key= or prefix="):
        WatchState(key=None, prefix=None)


def test_a_refused_prefix_resume_is_a_resync_and_the_watch_goes_on_from_the_new_cursor() -> None:
    state = WatchState(key=None, prefix="user:")
    state.subscribe()
    state.on_frame(frame(type="subscribed", id="w", prefix="user:", cursor="p0"))
    state.on_frame(change(4, key="user:a"))
    assert state.subscribe()["since"] == "p0"
    # The server answers a resume it refuses as a new watch, then says so (docs/watch.md).
    assert state.on_frame(frame(type="subscribed", id="w", prefix="user:", cursor="p1")).events == []
    events = state.on_frame(
        frame(type="resync", subscription="w", key=None, prefix="user:", reason="the cursor is older than the journal")
    ).events
    assert events == [Resync(key=None, reason="the cursor is older than the journal", prefix="user:")]
    # The versions kept so far were the old watch's: a version 1 of the same key is news after a relist.
    assert [e.version for e in state.on_frame(change(1, key="user:a")).events if isinstance(e, Change)] == [1]
    assert state.subscribe() == {
        "type": "subscribe", "id": "w", "prefix": "user:", "since": "p1", "versions": {"user:a": 1}
    }  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "key_length"), [(1_001, 8), (300, 250)], ids=["more-than-1000-keys", "more-than-64-KB"]
)
def test_a_prefix_watch_too_large_to_resume_begins_anew_and_says_so(keys: int, key_length: int) -> None:
    state = WatchState(key=None, prefix="user:")
    state.subscribe()
    state.on_frame(frame(type="subscribed", id="w", prefix="user:", cursor="p0"))
    for i in range(keys):
        state.on_frame(change(1, key=f"user:{i:0{key_length - 5}d}"))
    # Never a message the server refuses (it takes 1,000 keys in 64 KB): a new watch instead.
    fresh = state.subscribe()
    assert fresh == {"type": "subscribe", "id": "w", "prefix": "user:"}
    events = state.on_frame(frame(type="subscribed", id="w", prefix="user:", cursor="p1")).events
    assert len(events) == 1
    assert isinstance(events[0], Resync)
    assert (events[0].key, events[0].prefix) == (None, "user:")
    assert state.cursor == "p1"
    assert [e.version for e in state.on_frame(change(1, key="user:0")).events if isinstance(e, Change)] == [1]
    assert state.subscribe()["versions"] == {"user:0": 1}


def test_a_failed_prefix_subscribe_is_made_again_as_a_resume() -> None:
    state = WatchState(key=None, prefix="user:")
    state.subscribe()
    state.on_frame(frame(type="subscribed", id="w", prefix="user:", cursor="p0"))
    state.on_frame(change(2, key="user:a"))
    state.subscribe()  # a new connection: the same id is free there
    assert state.on_frame(frame(type="error", status=503, title="Service unavailable", id="w")).send == [
        {"type": "unsubscribe", "id": "w"}
    ]
    assert state.on_frame(frame(type="unsubscribed", id="w")).send == [
        {"type": "subscribe", "id": "w1", "prefix": "user:", "since": "p0", "versions": {"user:a": 2}}
    ]


def test_resync_is_an_event_and_the_watch_goes_on() -> None:
    state = WatchState(key="k", prefix=None, cursor="c1")
    state.subscribe()
    events = state.on_frame(frame(type="resync", subscription="w", key="k", prefix=None, reason="retention")).events
    assert events == [Resync(key="k", reason="retention")]
    assert state.subscribe()["since"] == "c1"


@pytest.mark.parametrize(
    "failure",
    [frame(type="error", status=503, title="Service unavailable", id="w"), frame(message="Internal server error")],
    ids=["error-503", "api-gateway-internal-error"],
)
def test_a_failed_subscribe_unsubscribes_then_subscribes_again_from_the_cursor_under_a_new_id(failure: str) -> None:
    state = WatchState(key="k", prefix=None, cursor="c5")
    state.subscribe()
    assert state.on_frame(failure).send == [{"type": "unsubscribe", "id": "w"}]
    again = state.on_frame(frame(type="unsubscribed", id="w")).send
    assert again == [{"type": "subscribe", "id": "w1", "key": "k", "since": "c5"}]
    # The failed subscription may still be live: whatever comes for it is ignored, even a version not yet had.
    assert state.on_frame(frame(type="subscribed", id="w", key="k", version=5, cursor="c5")).events == []
    assert state.on_frame(change(6, subscription="w")).events == []
    assert not state.subscribed
    assert state.on_frame(frame(type="error", status=503, title="Service unavailable", id="w")).send == []
    state.on_frame(frame(type="subscribed", id="w1", key="k", version=5, cursor="c5"))
    assert state.subscribed
    assert [e.version for e in state.on_frame(change(6, subscription="w1")).events if isinstance(e, Change)] == [6]
    assert state.on_frame(change(7, subscription="w")).events == []


def test_a_503_after_subscribed_is_a_failed_subscribe_resumed_from_the_last_change_yielded() -> None:
    """A replay failing partway: `subscribed` and some versions came, then `error` 503 for the subscription."""
    state = WatchState(key="k", prefix=None, cursor="c1")
    state.subscribe()
    state.on_frame(frame(type="subscribed", id="w", key="k", version=1, cursor="c1"))
    assert [e.version for e in state.on_frame(change(2)).events if isinstance(e, Change)] == [2]
    failed = state.on_frame(frame(type="error", status=503, title="Service unavailable", detail="retry", id="w"))
    assert failed.send == [{"type": "unsubscribe", "id": "w"}]
    assert not state.subscribed  # the loop waits for an answer at most 20 s again
    assert state.on_frame(change(3)).events == []  # the failed subscription's, left behind
    assert state.on_frame(frame(type="unsubscribed", id="w")).send == [
        {"type": "subscribe", "id": "w1", "key": "k", "since": "c2"}
    ]


def test_a_409_for_the_id_subscribed_again_is_recovered_under_the_next_id() -> None:
    """The id is in use on the server (a failed subscribe's leftover holding it): never raised."""
    state = WatchState(key="k", prefix=None, cursor="c1")
    state.subscribe()
    state.on_frame(frame(type="error", status=503, title="Service unavailable", id="w"))
    state.on_frame(frame(type="unsubscribed", id="w"))
    conflict = frame(type="error", status=409, title="Conflict", detail="subscription w1 already exists", id="w1")
    assert state.on_frame(conflict).send == [{"type": "unsubscribe", "id": "w1"}]
    assert state.on_frame(frame(type="unsubscribed", id="w1")).send == [
        {"type": "subscribe", "id": "w2", "key": "k", "since": "c1"}
    ]


def test_while_unsubscribing_a_refusal_of_the_old_id_goes_on_and_a_failure_drops_the_connection() -> None:
    state = WatchState(key="k", prefix=None, cursor="c1")
    state.subscribe()
    state.on_frame(frame(type="error", status=503, title="Service unavailable", id="w"))
    # An error for an id the server does not know: there is nothing to stop; subscribe anew.
    unknown = frame(type="error", status=404, title="Not found", detail="no subscription w", id="w")
    assert state.on_frame(unknown).send == [{"type": "subscribe", "id": "w1", "key": "k", "since": "c1"}]
    # The unsubscribe itself failing: the old subscription may be live; closing the connection removes it.
    for failure in (
        frame(type="error", status=503, title="Service unavailable", id="w1"),
        frame(message="Internal server error"),
    ):
        state = WatchState(key="k", prefix=None, cursor="c1")
        state.subscribe()
        state.on_frame(frame(type="error", status=503, title="Service unavailable", id="w"))
        state.on_frame(frame(type="unsubscribed", id="w"))
        state.on_frame(frame(type="error", status=503, title="Service unavailable", id="w1"))
        with pytest.raises(Reconnect):
            state.on_frame(failure)
        # On the next connection the watch subscribes afresh, the same id free there, nothing pending.
        assert state.subscribe() == {"type": "subscribe", "id": "w1", "key": "k", "since": "c1"}
        assert state.on_frame(frame(type="unsubscribed", id="w1")).send == []


def test_an_expiring_token_asks_for_a_refresh_and_closing_reconnects() -> None:
    state = WatchState(key="k", prefix=None)
    assert state.on_frame(frame(type="expiring", expires_at=1, detail="soon")).refresh_token
    with pytest.raises(Reconnect):
        state.on_frame(frame(type="closing", reason="token expired"))


def subscribing(key: str = "k") -> WatchState:
    state = WatchState(key=key, prefix=None)
    state.subscribe()
    return state


def test_refused_subscriptions_raise_typed_errors() -> None:
    with pytest.raises(Forbidden):
        subscribing().on_frame(frame(type="error", status=403, title="Forbidden", id="w"))
    with pytest.raises(BadRequest) as bad:
        subscribing().on_frame(frame(type="error", status=400, title="Bad", detail="why", id="w"))
    assert bad.value.detail == "why"


@pytest.mark.parametrize(
    "text",
    [
        "not json", "[]", frame(type="unknown"), frame(type="unsubscribed", id="w"),
        frame(type="error", status=503, title="Service unavailable", id="other"),
        frame(type="resync", subscription="other", key="k", reason="retention"), change(9, subscription="other"),
    ],
)  # fmt: skip
def test_frames_it_does_not_know_change_nothing(text: str) -> None:
    state = subscribing()
    step = state.on_frame(text)
    assert (step.events, step.send, step.refresh_token) == ([], [], False)
