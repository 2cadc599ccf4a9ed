"""The client's requests and the errors it reads from answers, without a server: which requests count as
safe to send again, how keys and preconditions are written, how each status and problem type maps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from state_client import (
    BadRequest,
    Envelope,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    RateLimited,
    ServerError,
    StateError,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unprocessable,
    VersionInfo,
    WriteOutcomeUnknown,
)
from state_client import _protocol as p
from state_client.errors import PROBLEM_TYPE_BASE, error_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"type": "x/invalid-key"}, BadRequest), (415, None, BadRequest), (401, {"message": "Unauthorized"},
        Unauthorized), (403, {"message": "Forbidden"}, Forbidden), (404, None, NotFound), (410, None, Gone),
        (412, {"current_version": 4}, PreconditionFailed), (413, None, TooLarge), (422, None, Unprocessable),
        (429, {"message": "Too Many Requests"}, RateLimited), (503, {"type": PROBLEM_TYPE_BASE
        + "service-unavailable"}, Unavailable), (503, {"type": PROBLEM_TYPE_BASE + "write-outcome-unknown"},
        WriteOutcomeUnknown), (500, None, ServerError), (504, {"message": "Endpoint request timed out"},
        ServerError), (418, None, StateError),
    ],
)  # fmt: skip
def test_each_status_maps_to_its_error(status: int, body: dict | None, expected: type[StateError]) -> None:
    error = error_for(status, body, retry_after=3)
    assert type(error) is expected
    assert error.status == status
    if isinstance(error, PreconditionFailed):
        assert error.current_version == 4
    if isinstance(error, RateLimited | Unavailable):
        assert error.retry_after == 3
    if body and "message" in body:
        assert error.title == body["message"]


def test_a_precondition_failed_on_an_absent_key_has_no_current_version() -> None:
    error = error_for(412, {"current_version": None})
    assert isinstance(error, PreconditionFailed)
    assert error.current_version is None


@pytest.mark.parametrize(
    ("header", "expected"), [("5", 5.0), ("0", 0.0), ("-1", None), ("1.5", None), ("٣", None), ("soon", None)]
)
def test_retry_after_is_whole_seconds_or_a_date(header: str, expected: float | None) -> None:
    raw = [(b"Retry-After", header.encode())]  # as the bytes a server sends
    assert p.retry_after(httpx.Response(503, headers=raw)) == expected


def test_which_writes_are_safe_to_send_again() -> None:
    def call(**kw: object) -> p.Call:
        return p.set_call("k", 1, ttl_seconds=None, if_match=kw.get("if_match"), if_none_match=kw.get("if_none_match"))

    assert call(if_match=3).retry_safe
    assert call(if_match='"3"').headers["If-Match"] == '"3"'
    assert call(if_none_match="*").retry_safe
    assert not call().retry_safe
    assert not call(if_match="*").retry_safe
    assert p.get_call("k").retry_safe
    assert not p.update_call("k", {}, if_match=None).retry_safe
    assert not p.delete_call("k", if_match=None).retry_safe
    assert p.delete_call("k", if_match=2).retry_safe


def test_a_key_is_one_path_segment_whatever_it_holds() -> None:
    assert p.get_call("../admin?x=1#y").path == "/state/..%2Fadmin%3Fx%3D1%23y"
    assert p.history_call("a:b", limit=None, cursor=None).path == "/state/a%3Ab/history"


def test_a_value_is_sent_as_utf8_without_escapes() -> None:
    assert p.set_call("k", "é", ttl_seconds=5, if_match=None, if_none_match=None).content == (
        '{"value":"é","ttl_seconds":5}'.encode()
    )


def test_modify_keeps_the_ttl_rounded_up() -> None:
    now = datetime.now(UTC)
    current = Envelope("k", 1, 3, now, now, "alice", now + timedelta(seconds=10.2))
    write = p.modify_write(current, 2, "k")
    assert (write.headers["If-Match"], write.retry_safe) == ('"3"', True)
    assert b'"ttl_seconds":11' in (write.content or b"")
    created = p.modify_write(None, 1, "k")
    assert created.headers["If-None-Match"] == "*"


def test_a_transaction_is_always_sent_under_an_idempotency_key_and_so_may_be_sent_again() -> None:
    call = p.transaction_call([{"op": "delete", "key": "k"}], idempotency_key="retry-1")

    assert (call.method, call.path, call.headers["Idempotency-Key"]) == ("POST", "/state:transact", "retry-1")
    assert call.resend_after_network_failure
    unknown = error_for(503, {"type": PROBLEM_TYPE_BASE + "write-outcome-unknown"})
    assert p.should_retry(unknown, safe=call.retry_safe, idempotent=call.idempotent)
    assert not p.should_retry(unknown, safe=True)  # a single write whose answer was lost: never again
    assert not p.should_retry(error_for(412, {}), safe=call.retry_safe, idempotent=True)


def test_a_transactions_412_names_its_failed_operations() -> None:
    failed = [{"index": 2, "key": "k", "current_version": 4}]
    error = error_for(412, {"failed_operations": failed, "current_version": None})

    assert isinstance(error, PreconditionFailed)
    assert error.failed_operations == failed
    assert error_for(412, {"current_version": 4}).failed_operations == []  # type: ignore[attr-defined]


def test_a_history_entry_names_the_transaction_that_wrote_it() -> None:
    entry = {"version": 2, "operation": "updated", "actor": "a", "occurred_at": "2026-01-01T00:00:00.000Z", "size": 3}

    assert VersionInfo.from_json({**entry, "transaction_id": "9c1e"}).transaction_id == "9c1e"
    assert VersionInfo.from_json(entry).transaction_id is None
