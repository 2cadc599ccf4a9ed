"""Value schemas through the real handlers against the moto server: publishing and reading versions, RBAC,
and enforcement on PUT, PATCH (the merged result) and transactions, with nothing written on a violation.

The registry is shared by the whole session's table: every test governs keys under its own fresh prefix."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest

from tests.integration.conftest import http_event, load_event
from tests.integration.test_batch_get import _Collect
from tests.integration.test_transactions import tx_event

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
ADMIN = "state:read state:write state:schema"

PROFILE = {
    "type": "object",
    "required": ["theme"],
    "properties": {
        "theme": {"type": "string", "enum": ["dark", "light"]},
        "handle": {"type": "string", "pattern": "^[a-z]+$"},
        "address": {"type": "object", "properties": {"zip": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def schema_event(
    method: str,
    name: str | None,
    *,
    body: Any = None,
    raw: str | None = None,
    query: dict[str, str] | None = None,
    scopes: str = ADMIN,
    sub: str = "alice",
) -> dict[str, Any]:
    event = copy.deepcopy(load_event("put_state"))
    path = "/schemas" if name is None else f"/schemas/{name}"
    route = "/schemas" if name is None else "/schemas/{name}"
    event["routeKey"] = event["requestContext"]["routeKey"] = f"{method} {route}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    event["pathParameters"] = None if name is None else {"name": name}
    event["headers"] = {k: v for k, v in event["headers"].items() if k not in ("if-none-match", "content-length")}
    event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    event["queryStringParameters"] = query or None
    event["requestContext"]["authorizer"] = {"lambda": {"sub": sub, "scopes": scopes, "roles": "[]"}}
    event.pop("body", None)
    if raw is not None or body is not None:
        event["body"] = raw if raw is not None else json.dumps(body)
    return event


@pytest.fixture
def prefix() -> str:
    return f"sch{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def name() -> str:
    return f"profile-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def call(invoke):
    def send(event: dict[str, Any], function: str = "schemas") -> tuple[int, Any]:
        response = invoke(function, event)
        body = json.loads(response["body"]) if response.get("body") else None
        if response["statusCode"] >= 400:
            assert response["headers"]["Content-Type"] == PROBLEM, response
        return response["statusCode"], body

    return send


@pytest.fixture
def publish(call):
    def send(name: str, schema: Any, patterns: list[str], **kwargs: Any) -> tuple[int, Any]:
        return call(schema_event("PUT", name, body={"schema": schema, "patterns": patterns}, **kwargs))

    return send


def put(call, key: str, value: Any, **kwargs: Any) -> tuple[int, Any]:
    return call(http_event("put", key, body={"value": value}, **kwargs), "put_state")


def patch(call, key: str, body: Any) -> tuple[int, Any]:
    return call(http_event("patch", key, body=body, content_type="application/merge-patch+json"), "patch_state")


def get(call, key: str) -> tuple[int, Any]:
    return call(http_event("get", key, query={"consistent": "true"}), "get_state")


# ------------------------------------------------------------------------------------------ versions


def test_publish_versions_and_read_each_of_them(call, publish, name, prefix):
    status, first = publish(name, PROFILE, [f"{prefix}*"])
    assert status == 201
    assert (first["name"], first["version"], first["patterns"], first["mode"]) == (name, 1, [f"{prefix}*"], "checked")
    assert first["schema"] == PROFILE
    assert first["created_by"] == "alice"

    looser = {**PROFILE, "required": []}
    status, second = publish(name, looser, [f"{prefix}*", "sch-exact-" + prefix[:-1]])
    assert (status, second["version"]) == (200, 2)

    assert call(schema_event("GET", name))[1]["version"] == 2
    status, old = call(schema_event("GET", name, query={"version": "1"}))
    assert (status, old["version"], old["schema"]) == (200, 1, PROFILE)
    assert call(schema_event("GET", name, query={"version": "3"}))[0] == 404
    listed = call(schema_event("GET", None))[1]["schemas"]
    mine = [s for s in listed if s["name"] == name]
    assert [(s["version"], "schema" in s) for s in mine] == [(2, False)]


@pytest.mark.parametrize(
    ("query", "raw_name"),
    [
        ({"version": "0"}, None),
        ({"version": "x"}, None),
        ({"version": "٣"}, None),
        ({"version": "99999999999"}, None),
        (None, "Bad Name"),
        (None, "-leading"),
        (None, "x" * 65),
    ],
)
def test_a_bad_version_or_name_in_a_read_is_400(call, publish, name, prefix, query, raw_name):
    assert publish(name, PROFILE, [f"{prefix}*"])[0] == 201

    status, problem = call(schema_event("GET", raw_name or name, query=query))

    assert status == 400, problem


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"schema": {"type": "nope"}, "patterns": ["P*"]}, "not a valid JSON Schema"),
        ({"schema": {"$ref": "http://169.254.169.254/latest/meta-data"}, "patterns": ["P*"]}, "not fetched"),
        ({"schema": "string", "patterns": ["P*"]}, "object or a boolean"),
        ({"schema": {"$schema": "http://json-schema.org/draft-04/schema#"}, "patterns": ["P*"]}, "2020-12"),
        ({"schema": {"pattern": "(?=a)b"}, "patterns": ["P*"]}, "not a valid JSON Schema"),
        ({"schema": {"pattern": "(a)\\1"}, "patterns": ["P*"]}, "not a valid JSON Schema"),
        ({"schema": {}, "patterns": []}, "patterns"),
        ({"schema": {}, "patterns": ["*"]}, "pattern"),
        ({"schema": {}, "patterns": ["P*x"]}, "pattern"),
        ({"schema": {}, "patterns": ["P* "]}, "pattern"),
        ({"schema": {}, "patterns": ["P*", "P*"]}, "distinct"),
        ({"schema": {}, "patterns": [f"P{n}" for n in range(21)]}, "patterns"),
        ({"schema": {}, "patterns": "P*"}, "patterns"),
        ({"schema": {}}, "patterns"),
        ({"patterns": ["P*"]}, "body"),
        ({"schema": {}, "patterns": ["P*"], "extra": 1}, "body"),
        ([], "body"),
        ({"schema": {"description": "x" * 70_000}, "patterns": ["P*"]}, "bytes"),
    ],
)
def test_a_bad_publish_is_400_and_publishes_nothing(call, name, prefix, body, fragment):
    body = json.loads(json.dumps(body).replace('"P', f'"{prefix}'))

    status, problem = call(schema_event("PUT", name, body=body))

    assert status == 400, problem
    assert fragment in problem["detail"]
    assert call(schema_event("GET", name))[0] == 404


def test_bad_bodies_and_modes_are_refused_before_anything(call, name, prefix):
    body = {"schema": PROFILE, "patterns": [f"{prefix}*"]}
    assert call(schema_event("PUT", name, raw="{not json"))[0] == 400
    assert call(schema_event("PUT", name, raw='{"schema": {}, "schema": {}, "patterns": []}'))[0] == 400
    assert call(schema_event("PUT", name, body=body, query={"mode": "backward"}))[0] == 400
    assert call(schema_event("PUT", "Bad Name", body=body))[0] == 400
    assert call(schema_event("GET", name))[0] == 404


# ------------------------------------------------------------------------------------------ RBAC


def test_publishing_needs_state_schema_on_every_key_of_every_pattern(call, publish, name, prefix):
    body = PROFILE
    assert publish(name, body, [f"{prefix}*"], scopes="state:read state:write")[0] == 403
    assert publish(name, body, [f"{prefix}*"], scopes=f"state:schema:{prefix}a*")[0] == 403
    assert publish(name, body, [f"{prefix}a*", f"{prefix}b"], scopes=f"state:schema:{prefix}a*")[0] == 403
    assert call(schema_event("GET", name))[0] == 404  # nothing published

    assert publish(name, body, [f"{prefix}a*"], scopes=f"state:schema:{prefix}a*")[0] == 201
    # A narrower grant cannot take the schema over: its current patterns need the right too.
    assert publish(name, body, [f"{prefix}a:x*"], scopes=f"state:schema:{prefix}a:*")[0] == 403
    assert publish(name, body, [f"{prefix}a:x*"], scopes=f"state:schema:{prefix}*")[1]["version"] == 2


def test_reading_a_schema_needs_read_on_some_key_it_governs(call, publish, name, prefix):
    assert publish(name, PROFILE, [f"{prefix}team:*"])[0] == 201

    assert call(schema_event("GET", name, scopes=f"state:read:{prefix}team:alpha"))[0] == 200
    assert call(schema_event("GET", name, scopes=f"state:read:{prefix}*"))[0] == 200
    assert call(schema_event("GET", name, scopes=f"state:read:{prefix}other:*"))[0] == 404
    assert call(schema_event("GET", name, query={"version": "1"}, scopes="state:write"))[0] == 404
    listed = call(schema_event("GET", None, scopes=f"state:read:{prefix}other:*"))[1]["schemas"]
    assert name not in [s["name"] for s in listed]


def test_patterns_another_schema_governs_are_refused_with_the_overlap_named(publish, name, prefix):
    assert publish(name, PROFILE, [f"{prefix}team:*"])[0] == 201
    other = name + "-other"

    for patterns in ([f"{prefix}*"], [f"{prefix}team:a*"], [f"{prefix}team:alpha"]):
        status, problem = publish(other, {}, patterns)
        assert status == 409, problem
        assert any(name in reason for reason in problem["reasons"])

    assert publish(other, {}, [f"{prefix}tea"])[0] == 201  # not under `team:`


# ------------------------------------------------------------------------------------------ enforcement


@pytest.mark.parametrize(
    ("value", "pointer", "words"),
    [
        ({"theme": "dark", "handle": 1}, "/handle", "type"),
        ({}, "", "required"),
        ({"theme": "dark", "handle": "Not Lower"}, "/handle", "match"),
        ({"theme": "blue"}, "/theme", "one of"),
        ({"theme": "dark", "address": {"zip": 12345}}, "/address/zip", "type"),
        ({"theme": "dark", "tags": ["a", 2, "c"]}, "/tags/1", "type"),
    ],
    ids=["type", "required", "pattern", "enum", "nested", "array-item"],
)
def test_a_put_violating_the_schema_is_422_with_pointer_and_message_and_nothing_written(
    call, publish, name, prefix, value, pointer, words
):
    assert publish(name, PROFILE, [f"{prefix}*"])[0] == 201
    key = f"{prefix}alice"

    status, problem = put(call, key, value)

    assert status == 422, problem
    assert problem["type"].endswith("/schema-violation")
    assert problem["schema"] == {"name": name, "version": 1}
    assert problem["violation_count"] == 1
    [violation] = problem["violations"]
    assert violation["pointer"] == pointer
    assert words in violation["message"]
    assert get(call, key)[0] == 404


def test_a_patch_is_judged_on_its_merged_result_and_writes_nothing_when_it_fails(call, publish, name, prefix):
    key = f"{prefix}bob"
    assert publish(name, PROFILE, [f"{prefix}*"])[0] == 201
    assert put(call, key, {"theme": "dark", "tags": ["x"]})[0] == 201

    # The patch alone lacks `theme`, the merged result has it: accepted.
    assert patch(call, key, {"handle": "bob"})[0] == 200
    status, problem = patch(call, key, {"theme": None, "tags": ["x", 7]})
    assert status == 422, problem
    assert sorted(v["pointer"] for v in problem["violations"]) == ["", "/tags/1"]
    status, envelope = get(call, key)
    assert (envelope["version"], envelope["value"]) == (2, {"theme": "dark", "tags": ["x"], "handle": "bob"})


def test_a_violation_message_never_quotes_the_value(call, publish, name, prefix):
    assert publish(name, PROFILE, [f"{prefix}*"])[0] == 201
    secret = "hunter2-do-not-echo"

    status, problem = put(call, f"{prefix}eve", {"theme": secret, "handle": secret, "tags": [{"pw": secret}]})

    assert status == 422
    assert secret not in json.dumps(problem)


def test_at_most_20_violations_are_listed_then_their_count(call, publish, name, prefix):
    assert publish(name, {"type": "array", "items": {"type": "string"}}, [f"{prefix}*"])[0] == 201

    status, problem = put(call, f"{prefix}many", list(range(30)))

    assert status == 422
    assert len(problem["violations"]) == 20
    assert problem["violation_count"] == 30
    assert problem["violations"][0]["pointer"] == "/0"


def test_a_schema_governs_only_its_patterns(call, publish, name, prefix):
    assert publish(name, PROFILE, [f"{prefix}user:*", f"{prefix}exact"])[0] == 201

    assert put(call, f"{prefix}user:x", {"theme": 1})[0] == 422
    assert put(call, f"{prefix}exact", {"theme": 1})[0] == 422
    assert put(call, f"{prefix}exactly", {"theme": 1})[0] == 201
    assert put(call, f"{prefix}use", {"theme": 1})[0] == 201
    assert put(call, f"{prefix}user:x", {"theme": "light"})[0] == 201


def test_a_new_version_is_enforced_from_its_publish(call, publish, name, prefix):
    key = f"{prefix}k"
    assert publish(name, {"type": "object"}, [f"{prefix}*"])[0] == 201
    assert put(call, key, {"n": 1})[0] == 201
    publish(
        name, {"type": "object", "properties": {"n": {"type": "string"}}}, [f"{prefix}*"], query={"mode": "forward"}
    )

    status, problem = put(call, key, {"n": 2})

    assert status == 422
    assert problem["schema"]["version"] == 2


def test_a_transaction_with_a_violating_operation_is_422_naming_it_and_writes_nothing(
    call, invoke, publish, name, prefix
):
    assert publish(name, PROFILE, [f"{prefix}*"])[0] == 201
    existing = f"{prefix}t1"
    assert put(call, existing, {"theme": "dark"})[0] == 201
    free = f"free{uuid.uuid4().hex}"
    operations = [
        {"op": "put", "key": free, "value": {"anything": True}},
        {"op": "patch", "key": existing, "patch": {"theme": None}},
    ]

    response = invoke("transact_state", tx_event({"operations": operations}))
    problem = json.loads(response["body"])

    assert response["statusCode"] == 422, problem
    assert problem["index"] == 1
    assert problem["violations"] == [{"pointer": "", "message": '"theme" is a required property'}]
    assert get(call, free)[0] == 404
    assert get(call, existing)[1]["version"] == 1

    operations[1] = {"op": "put", "key": f"{prefix}t2", "value": {"theme": "mauve"}}
    response = invoke("transact_state", tx_event({"operations": operations}))
    assert response["statusCode"] == 422
    assert json.loads(response["body"])["index"] == 1
    assert get(call, free)[0] == 404


def test_a_retried_transaction_answers_its_first_outcome_though_a_schema_now_refuses_its_value(
    call, invoke, publish, name, prefix
):
    # Given a transaction applied under an Idempotency-Key, and then a schema published for future writes
    # that its value no longer satisfies
    operations = [{"op": "put", "key": f"{prefix}r1", "value": {"theme": "mauve"}}]
    token = {"Idempotency-Key": f"schema-{uuid.uuid4().hex}"}
    first = invoke("transact_state", tx_event({"operations": operations}, headers=token))
    assert first["statusCode"] == 200, first
    assert publish(name, PROFILE, [f"{prefix}*"], query={"mode": "forward"})[0] == 201
    assert invoke("transact_state", tx_event({"operations": operations}))["statusCode"] == 422

    # When the client retries it: the first outcome, not a judgement of the value as if it were new
    again = invoke("transact_state", tx_event({"operations": operations}, headers=token))

    assert (again["statusCode"], again["body"]) == (200, first["body"])
    assert again["headers"]["Idempotent-Replayed"] == "true"
    assert get(call, f"{prefix}r1")[1]["version"] == 1


@pytest.fixture
def audit_records():
    from state_core.security import audit

    collector = _Collect(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    yield lambda: [json.loads(line)["audit"] for line in collector.lines]
    audit.audit_logger.removeHandler(collector)


def test_schema_management_leaves_audit_records_never_the_schema(call, publish, name, prefix, audit_records):
    assert publish(name, PROFILE, [f"{prefix}*"], scopes="state:read")[0] == 403
    assert publish(name, PROFILE, [f"{prefix}*"])[0] == 201
    assert call(schema_event("GET", name))[0] == 200
    assert call(schema_event("GET", None))[0] == 200

    records = audit_records()[-4:]
    assert [(r["action"], r["permission"], r["decision"], r["status"]) for r in records] == [
        ("publish_schema", "state:schema", "deny", 403),
        ("publish_schema", "state:schema", "allow", 201),
        ("get_schema", "state:read", "allow", 200),
        ("list_schemas", "state:read", "allow", 200),
    ]
    assert records[1]["items"] == [{"schema": name, "version": 1, "mode": "checked"}]
    assert "enum" not in json.dumps(records)
