"""A PATCH that keeps losing the version race (another writer lands between its read and its conditional
write, every time) answers 503 once its time budget is spent, and writes nothing of its own. Real moto; the
other writer is a second manager, run at the core's `after_patch_read` failpoint."""

from __future__ import annotations

import time
import uuid

import boto3
import pytest

from devstack import failpoints
from state_core.domain.errors import ServiceUnavailable
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.manager import PatchPolicy, StateManager
from state_core.storage.state import StateStore
from tests.doubles import RecordedMetrics, utc_now
from tests.integration.test_transaction_faults import armed  # noqa: F401

pytestmark = pytest.mark.integration

BUDGET_SECONDS = 0.3


def test_a_patch_that_keeps_losing_races_is_503_past_its_budget_and_writes_nothing(armed, state_table):  # noqa: F811
    key = f"budget:{uuid.uuid4().hex}"
    metrics = RecordedMetrics()
    store = StateStore(boto3.client("dynamodb", config=DYNAMODB_CONFIG), state_table)
    loser = StateManager(
        store, clock=utc_now, metrics=metrics, patch_policy=PatchPolicy(time_budget_seconds=BUDGET_SECONDS)
    )
    other = StateManager(store, clock=utc_now, metrics=RecordedMetrics())
    other.put(key, {"n": 0}, actor="other")
    writes = iter(range(1, 1000))
    failpoints.arm("after_patch_read", "call", lambda *_, **__: other.put(key, {"n": next(writes)}, actor="other"))

    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"lost \d+ races"):
        loser.patch(key, {"mine": True}, actor="loser")
    elapsed = time.monotonic() - started

    failpoints.disarm()
    current = other.get(key, consistent=True)
    assert b"mine" not in current.canonical_value
    assert metrics.count("Conflicts") >= 1
    # It gave up within its budget (a backoff that would end past it is not slept) rather than retry on.
    assert elapsed < BUDGET_SECONDS + 2.0
