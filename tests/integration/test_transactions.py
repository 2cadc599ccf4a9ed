"""POST /state:transact through the real handler against the serialized moto server: all or nothing, each
failed condition named, idempotency keys, RBAC, and every bad input refused with nothing written."""

from __future__ import annotations

import copy
import json
import uuid

import pytest

from tests.integration.conftest import http_event, load_event

pytestmark = pytest.mark.integration


def tx_event(body, *, sub="alice", scopes="state:read state:write", headers=None, raw=None):
    event = copy.deepcopy(load_event("transact_state"))
    event["headers"] = {
        name: value for name, value in event["headers"].items() if name not in ("idempotency-key", "content-length")
    }
    event["headers"].update({name.lower(): value for name, value in (headers or {}).items()})
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    event["requestContext"]["authorizer"] = {"lambda": {"sub": sub, "scopes": scopes, "roles": "[]"}}
    event["body"] = raw if raw is not None else json.dumps(body)
    return event


@pytest.fixture
def transact(invoke):
    def call(operations, **kwargs):
        response = invoke("transact_state", tx_event({"operations": operations}, **kwargs))
        return response["statusCode"], json.loads(response["body"]), response.get("headers") or {}

    return call


@pytest.fixture
def read(invoke):
    def call(key):
        response = invoke("get_state", http_event("get", key, query={"consistent": "true"}))
        if response["statusCode"] == 404:
            return None
        body = json.loads(response["body"])
        return body["version"], body["value"]

    return call


@pytest.fixture
def put(invoke):
    def call(key, value):
        response = invoke("put_state", http_event("put", key, body={"value": value}))
        assert response["statusCode"] in (200, 201), response
        return json.loads(response["body"])["version"]

    return call


@pytest.fixture
def keys():
    run = uuid.uuid4().hex[:12]
    return [f"tx:{run}:{n}" for n in range(30)]


def test_a_transaction_writes_every_key_and_answers_each_next_version(transact, read, put, keys):
    put(keys[1], {"stock": 5})
    put(keys[2], {"old": True})
    put(keys[3], {"n": 1})

    status, body, _ = transact(
        [
            {"op": "put", "key": keys[0], "value": {"order": 1}, "if_none_match": "*"},
            {"op": "patch", "key": keys[1], "patch": {"reserved": 2}, "if_match": 1},
            {"op": "delete", "key": keys[2]},
            {"op": "check", "key": keys[3], "if_match": 1},
        ]
    )

    assert status == 200, body
    assert [(r["op"], r["key"], r["version"], r["created"]) for r in body["results"]] == [
        ("put", keys[0], 1, True),
        ("patch", keys[1], 2, False),
        ("delete", keys[2], 2, False),
        ("check", keys[3], 1, False),
    ]
    assert body["transaction_id"]
    assert read(keys[0]) == (1, {"order": 1})
    assert read(keys[1]) == (2, {"stock": 5, "reserved": 2})
    assert read(keys[2]) is None
    assert read(keys[3]) == (1, {"n": 1})
