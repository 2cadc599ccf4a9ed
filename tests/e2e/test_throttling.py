"""The stage's throttling over real HTTP (docs/operations.md, "Limits and throttling"): past a route's burst the gateway
answers 429 {"message":"Too Many Requests"} as API Gateway does, before the authorizer, so nothing is
written and no token is checked. A stack of its own with a low burst; the template's limits (the default)
are high enough for every other test, which the rest of the e2e suite shows."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.stack import start_devstack

pytestmark = pytest.mark.e2e

BURST = 3


@pytest.fixture(scope="module")
def throttled_stack(tmp_path_factory):
    # A burst of 3 and almost no refill: exactly the burst gets through.
    stack = start_devstack(
        tmp_path_factory.mktemp("devstack-throttled"),
        extra_env={"LOCAL_THROTTLING_BURST_LIMIT": str(BURST), "LOCAL_THROTTLING_RATE_LIMIT": "0.001"},
    )
    try:
        yield stack
    finally:
        stack.stop()


def test_a_burst_of_new_tokens_over_the_limit_is_429_and_writes_nothing(throttled_stack):
    stack = throttled_stack
    # A different subject, so a different token, per request: each one that got through invokes the authorizer.
    writers = [(f"throttle-{uuid.uuid4().hex}", stack.token(f"flooder-{i}")) for i in range(12)]

    def put(writer):
        key, token = writer
        return requests.put(
            f"{stack.base_url}/state/{key}",
            headers={"Authorization": f"Bearer {token}"},
            json={"value": {"n": 1}},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=len(writers)) as pool:
        answers = list(pool.map(put, writers))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * BURST + [429] * (len(writers) - BURST)
    for answer in answers:
        if answer.status_code == 429:
            assert answer.json() == {"message": "Too Many Requests"}
            assert answer.headers["Content-Type"].startswith("application/json")

    # Nothing of a refused request is in the table.
    ddb = stack.client("dynamodb")
    for (key, _), answer in zip(writers, answers, strict=True):
        items = ddb.query(
            TableName=stack.table_name,
            KeyConditionExpression="pk = :key",
            ExpressionAttributeValues={":key": {"S": key}},
        )["Items"]
        assert bool(items) == (answer.status_code == 201), key

    # The access log shows API Gateway's answer; the authorizer ran only for those that got through.
    request_ids = {a.headers["apigw-requestid"]: a.status_code for a in answers}
    deadline = time.monotonic() + 5
    records = []
    while time.monotonic() < deadline and len(records) < len(request_ids):
        lines = (stack.log_dir / "access.log").read_text().splitlines()
        records = [r for r in map(json.loads, lines) if r["requestId"] in request_ids]
        time.sleep(0.05)
    assert len(records) == len(request_ids)
    for record in records:
        if record["status"] == 429:
            assert record["error"] == "Too Many Requests"
            assert record["authorizerError"] == "-"
            assert record["integrationLatency"] == "-"
    # Each invocation starts with Lambda's START line; this stack has served nothing else.
    invocations = (stack.log_dir / "AuthorizerFunction.log").read_text().count("START RequestId:")
    assert invocations == BURST
