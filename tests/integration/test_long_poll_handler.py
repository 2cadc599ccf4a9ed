"""The long-poll through the real GET handler in-process, on the serialized moto server without Redis (the
polling path): what `Prefer` and `If-None-Match` a client may send and what each gets, the invocation's
deadline, authorization before any wait, and the audit record."""

import json
import logging
import threading
import time
import uuid

import pytest

from state_core.security import audit
from tests.doubles import LambdaContext
from tests.integration.conftest import http_event

pytestmark = pytest.mark.integration

# Enough of the invocation for the longest wait (the GET function's timeout is 32 s).
LONG = LambdaContext(remaining_ms=32_000)
QUICK_SECONDS = 0.5


class _Collect(logging.Handler):
    def __init__(self, formatter):
        super().__init__(level=logging.DEBUG)
        self.lines = []
        self.setFormatter(formatter)

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def audit_lines():
    collector = _Collect(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    yield collector.lines
    audit.audit_logger.removeHandler(collector)


@pytest.fixture
def key():
    return f"user:alice:{uuid.uuid4().hex}"


def put(invoke, key, value):
    response = invoke("put_state", http_event("put", key, body={"value": value}))
    assert response["statusCode"] in (200, 201), response
    return response


def get(invoke, key, *, context=LONG, scopes="state:read state:write", query=None, **headers):
    started = time.monotonic()
    response = invoke("get_state", http_event("get", key, headers=headers, scopes=scopes, query=query), context)
    return response, time.monotonic() - started


def header(response, name):
    return {k.lower(): v for k, v in (response.get("headers") or {}).items()}.get(name.lower())


def later(seconds, action):
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


# --- Prefer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefer",
    ["wait=-1", "wait=1.5", "wait=abc", "wait=", "wait", "wait=\u00b2", "wait=1 2", 'wait="1', "wait=abc, wait=5"],
)
def test_a_malformed_wait_is_ignored_and_answered_at_once(invoke, key, prefer):
    put(invoke, key, 1)
    response, took = get(invoke, key, **{"If-None-Match": '"1"', "Prefer": prefer})
    assert response["statusCode"] == 304
    assert header(response, "Preference-Applied") is None
    assert took < QUICK_SECONDS


def test_wait_zero_answers_at_once_and_says_so(invoke, key):
    put(invoke, key, 1)
    response, took = get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "wait=0"})
    assert (response["statusCode"], header(response, "Preference-Applied")) == (304, "wait=0")
    assert took < QUICK_SECONDS


def test_the_304_comes_when_the_wait_ends(invoke, key):
    put(invoke, key, 1)
    response, took = get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "respond-async, wait=2"})
    assert (response["statusCode"], header(response, "ETag"), header(response, "Preference-Applied")) == (
        304,
        '"1"',
        "wait=2",
    )
    assert 2 <= took < 2.5


def test_a_huge_wait_is_clamped_to_25_seconds_and_still_wakes_on_a_change(invoke, key):
    put(invoke, key, 1)
    timer = later(0.5, lambda: put(invoke, key, 2))
    response, took = get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "wait=" + "9" * 40})
    timer.join()
    assert (response["statusCode"], header(response, "Preference-Applied")) == (200, "wait=25")
    assert json.loads(response["body"])["value"] == 2
    assert took < 0.5 + 0.5 + 0.3  # the write, then within the 0.5 s poll


def test_the_wait_ends_in_time_to_answer_before_the_invocations_deadline(invoke, key):
    put(invoke, key, 1)
    # 7 s left: one more DynamoDB attempt's budget (5.3 s) and the margin leave a 1 s wait.
    response, took = get(
        invoke,
        key,
        context=LambdaContext(remaining_ms=7_000),
        **{
            "If-None-Match": '"1"',
            "Prefer": "wait=20",
        },
    )
    assert (response["statusCode"], header(response, "Preference-Applied")) == (304, "wait=1")
    assert 1 <= took < 1.5


def test_only_the_first_wait_counts(invoke, key):
    put(invoke, key, 1)
    response, took = get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "wait=1, wait=20"})
    assert (response["statusCode"], header(response, "Preference-Applied")) == (304, "wait=1")
    assert took < 1.5


# --- If-None-Match --------------------------------------------------------------------------------------


def test_without_if_none_match_the_wait_is_not_applied(invoke, key):
    put(invoke, key, 1)
    response, took = get(invoke, key, Prefer="wait=10")
    assert (response["statusCode"], header(response, "Preference-Applied")) == (200, None)
    assert took < QUICK_SECONDS


def test_a_version_other_than_the_current_one_answers_at_once(invoke, key):
    put(invoke, key, 1)
    put(invoke, key, 2)
    response, took = get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "wait=10"})
    assert (response["statusCode"], header(response, "ETag"), header(response, "Preference-Applied")) == (
        200,
        '"2"',
        "wait=10",
    )
    assert took < QUICK_SECONDS


@pytest.mark.parametrize("if_none_match", ['W/"2"', '"1", "2"', ' "7" , W/"2" ', 'garbage, "2"'])
def test_weak_and_listed_etags_wait_while_they_name_the_current_version(invoke, key, if_none_match):
    put(invoke, key, 1)
    put(invoke, key, 2)
    timer = later(0.6, lambda: put(invoke, key, 3))
    response, took = get(invoke, key, **{"If-None-Match": if_none_match, "Prefer": "wait=10"})
    timer.join()
    assert (response["statusCode"], header(response, "ETag")) == (200, '"3"')
    assert 0.6 <= took < 0.6 + 0.5 + 0.3


def test_garbage_if_none_match_names_no_version_and_answers_at_once(invoke, key):
    put(invoke, key, 1)
    response, took = get(invoke, key, **{"If-None-Match": "1, W/1, *x", "Prefer": "wait=10"})
    assert response["statusCode"] == 200
    assert took < QUICK_SECONDS


def test_star_waits_while_the_key_exists_and_answers_404_when_it_is_deleted(invoke, key):
    put(invoke, key, 1)

    def change_then_delete():
        put(invoke, key, 2)  # still exists: `*` goes on waiting
        time.sleep(0.6)
        invoke("delete_state", http_event("delete", key))

    timer = later(0.3, change_then_delete)
    response, took = get(invoke, key, **{"If-None-Match": "*", "Prefer": "wait=10"})
    timer.join()
    assert (response["statusCode"], header(response, "Preference-Applied")) == (404, "wait=10")
    assert response["headers"]["Content-Type"] == "application/problem+json"
    assert 0.9 <= took < 0.9 + 0.5 + 0.3


def test_a_key_that_does_not_exist_is_404_at_once(invoke, key):
    response, took = get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "wait=10"})
    assert (response["statusCode"], header(response, "Preference-Applied")) == (404, "wait=10")
    assert took < QUICK_SECONDS


def test_a_version_query_never_waits(invoke, key):
    put(invoke, key, 1)
    response, took = get(invoke, key, query={"version": "1"}, **{"If-None-Match": '"1"', "Prefer": "wait=10"})
    assert response["statusCode"] == 200
    assert took < QUICK_SECONDS


def test_malformed_parameters_are_still_400_before_any_wait(invoke, key):
    put(invoke, key, 1)
    response, took = get(invoke, key, query={"consistent": "yes"}, **{"If-None-Match": '"1"', "Prefer": "wait=10"})
    assert response["statusCode"] == 400
    assert took < QUICK_SECONDS


# --- authorization and audit ----------------------------------------------------------------------------


def test_a_caller_without_read_is_refused_before_any_wait(invoke, key, audit_lines):
    put(invoke, key, 1)
    audit_lines.clear()
    response, took = get(invoke, key, scopes="state:write", **{"If-None-Match": '"1"', "Prefer": "wait=10"})
    assert (response["statusCode"], header(response, "Preference-Applied")) == (403, None)
    assert took < QUICK_SECONDS
    (line,) = audit_lines
    record = json.loads(line)["audit"]
    assert (record["action"], record["decision"], record["status"]) == ("get", "deny", 403)


def test_each_long_poll_leaves_one_get_record_with_its_outcome(invoke, key, audit_lines):
    put(invoke, key, "secret-value-never-logged")
    audit_lines.clear()
    get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "wait=1"})
    timer = later(0.3, lambda: put(invoke, key, 2))
    get(invoke, key, **{"If-None-Match": '"1"', "Prefer": "wait=10"})
    timer.join()
    invoke("delete_state", http_event("delete", key))
    get(invoke, key, **{"If-None-Match": '"3"', "Prefer": "wait=10"})

    records = [json.loads(line)["audit"] for line in audit_lines if json.loads(line)["audit"]["action"] == "get"]
    assert [(r["status"], r["version"], r["decision"], r["key"]) for r in records] == [
        (304, 1, "allow", key),
        (200, 2, "allow", key),
        (404, None, "allow", key),
    ]
    assert not any("secret-value-never-logged" in line for line in audit_lines)
