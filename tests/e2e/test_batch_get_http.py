"""POST /state:batchGet over real HTTP through the local stack: the gateway routes the literal path beside
/state and /state/{key} to the bulk read's function, whose reads go through the stack's Redis and moto;
the answer stays within Lambda's response limit, which the stack's workers enforce as Lambda does."""

from __future__ import annotations

import json
import secrets
import uuid

import pytest
import requests

from tests.stack import start_devstack

pytestmark = pytest.mark.e2e

VALUE_MARK = "e2e-batch-value-never-logged"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    running = start_devstack(tmp_path_factory.mktemp("batch-stack"))
    try:
        yield running
    finally:
        running.stop()


def auth(stack, sub="alice", scope="state:read state:write"):
    return {"Authorization": f"Bearer {stack.token(sub, scope)}"}


def put(stack, key, value):
    response = requests.put(f"{stack.base_url}/state/{key}", json={"value": value}, headers=auth(stack), timeout=30)
    assert response.status_code in (200, 201), response.text
    return response


def batch_get(stack, body, headers):
    return requests.post(f"{stack.base_url}/state:batchGet", json=body, headers=headers, timeout=60)


def test_a_bulk_read_answers_every_key_in_order_through_the_cache(stack):
    first, second, absent = (f"user:alice:{uuid.uuid4().hex}" for _ in range(3))
    put(stack, first, {"mark": VALUE_MARK})
    put(stack, second, 1)
    # Read once so the cache holds them, then change one: the next bulk read sees the acknowledged write.
    assert batch_get(stack, {"keys": [first, second]}, auth(stack)).status_code == 200
    put(stack, second, 2)

    response = batch_get(stack, {"keys": [second, absent, first]}, auth(stack))

    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    items = response.json()["items"]
    assert [(item["key"], item["status"]) for item in items] == [(second, 200), (absent, 404), (first, 200)]
    assert (items[0]["version"], items[0]["value"]) == (2, 2)
    assert items[2]["value"] == {"mark": VALUE_MARK}

    snapshot = batch_get(stack, {"keys": [second, absent, first], "snapshot": True}, auth(stack)).json()
    assert snapshot["snapshot"] is True
    assert snapshot["items"] == items

    routed = [line for line in stack.access_log() if line["path"] == "/state:batchGet"]
    assert routed
    assert {line["routeKey"] for line in routed} == {"POST /state:batchGet"}


def test_per_key_rbac_never_tells_an_existing_key_from_an_absent_one(stack):
    own, bobs, nobodys = (
        f"user:alice:{uuid.uuid4().hex}",
        f"user:bob:{uuid.uuid4().hex}",
        f"user:bob:{uuid.uuid4().hex}",
    )
    put(stack, own, 1)
    put(stack, bobs, {"mark": VALUE_MARK})

    response = batch_get(stack, {"keys": [bobs, own, nobodys]}, auth(stack, "alice", "state:read:user:${sub}:*"))

    assert response.status_code == 200
    existing, mine, absent = response.json()["items"]
    assert mine["status"] == 200
    assert existing["status"] == absent["status"] == 403
    assert existing["problem"]["detail"].replace(bobs, "K") == absent["problem"]["detail"].replace(nobodys, "K")
    assert VALUE_MARK not in response.text


def test_the_route_is_its_literal_path_only(stack):
    headers = auth(stack)
    # No token: API Gateway's own 401, before any function.
    assert requests.post(f"{stack.base_url}/state:batchGet", json={"keys": ["a"]}, timeout=30).status_code == 401
    # Another method on the literal path matches no route.
    assert requests.get(f"{stack.base_url}/state:batchGet", headers=headers, timeout=30).status_code == 404
    # A key named like the route is a key like any other, under /state/{key}.
    put(stack, "state:batchGet", "just a key")
    assert requests.get(f"{stack.base_url}/state/state:batchGet", headers=headers, timeout=30).json()["value"] == (
        "just a key"
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"keys": []}, 400),
        ({"keys": ["a", "a"]}, 400),
        ({"keys": ["a/b"]}, 400),
        ({"keys": [f"k{i}" for i in range(101)]}, 400),
        ({"keys": ["a"], "snapshot": "yes"}, 400),
        ({"keys": ["a"], "extra": 1}, 400),
        ([], 400),
    ],
)
def test_bad_input_is_a_400_problem(stack, body, status):
    response = batch_get(stack, body, auth(stack))
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"


def test_values_past_lambdas_answer_limit_come_back_marked_not_as_a_failed_invocation(stack):
    """Seven ~930 KB values would make a ~6.5 MB answer, which Lambda (and the stack's workers) refuse: the
    service answers 200 with the values that fit and the rest marked value_omitted."""
    keys = [f"user:alice:{uuid.uuid4().hex}" for _ in range(7)]
    values = {key: secrets.token_urlsafe(700_000) for key in keys}
    for key in keys:
        put(stack, key, values[key])

    response = batch_get(stack, {"keys": keys}, auth(stack))

    assert response.status_code == 200, response.text[:500]
    items = response.json()["items"]
    included = [item for item in items if "value" in item]
    omitted = [item for item in items if item.get("value_omitted")]
    assert len(included) == 6
    assert [item["key"] for item in omitted] == keys[6:]
    assert all(item["value"] == values[item["key"]] for item in included)
    # The omitted one is fetched by itself, exactly the version the bulk read named.
    single = requests.get(f"{stack.base_url}/state/{keys[6]}", headers=auth(stack), timeout=30)
    assert single.json()["version"] == omitted[0]["version"]
    assert json.loads(single.text)["value"] == values[keys[6]]
