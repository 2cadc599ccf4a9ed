"""The invocation's time budget (state_core/deadline.py): DynamoDB attempts start only while they, and the
backoff after them, fit in the function's remaining time, so a slow table answers 503 with Retry-After
instead of running the function into its timeout (a bare 500, the write's outcome unknown)."""

from __future__ import annotations

import time

import boto3
import pytest
from conftest import http_event

from state_core import deadline
from state_core.domain.errors import ServiceUnavailable
from state_core.runtime import DYNAMODB_ATTEMPT_BUDGET_SECONDS, DYNAMODB_CONFIG
from state_core.storage.state import StateStore
from tests.doubles import FailingService, LambdaContext

pytestmark = pytest.mark.integration


def slow_store(state_table, slow):
    client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
    deadline.guard(client, needed_seconds=DYNAMODB_ATTEMPT_BUDGET_SECONDS)
    client.meta.events.register("before-send.dynamodb", slow)
    return StateStore(client, state_table)


def test_a_slow_table_answers_503_while_the_invocation_still_has_time(state_table, key):
    # Given DynamoDB taking 1 s to fail each attempt, and 6 s left of the invocation (room for one attempt)
    slow = FailingService(delay=1.0)
    store = slow_store(state_table, slow)
    started = time.monotonic()
    # When the item is read, botocore's retry waits for the budget
    with deadline.budget(6.0), pytest.raises(ServiceUnavailable, match="in time"):
        store.get(key)
    # Then the read gave up after 1 attempt (a second one might not end in time), with time to spare
    assert slow.attempts == 1
    assert time.monotonic() - started < 6.0 - 0.3


def test_without_a_budget_botocore_makes_its_three_attempts(state_table, key):
    slow = FailingService(delay=0.05)
    store = slow_store(state_table, slow)
    with pytest.raises(ServiceUnavailable, match="busy or unavailable"):
        store.get(key)
    assert slow.attempts == 3


def test_a_put_with_too_little_time_left_answers_503_and_writes_nothing(invoke, key):
    # Given an invocation with 2 s left (less than one DynamoDB attempt may need)
    response = invoke("put_state", http_event("put", key, body={"value": {"n": 1}}), LambdaContext(remaining_ms=2_000))
    # Then the client is told to retry, and the key was never written
    assert response["statusCode"] == 503
    assert int(response["headers"]["Retry-After"]) > 0
    assert response["headers"]["Content-Type"] == "application/problem+json"
    assert invoke("get_state", http_event("get", key))["statusCode"] == 404
