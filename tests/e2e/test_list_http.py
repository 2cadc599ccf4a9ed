"""GET /state?prefix= over real HTTP through the local stack: the gateway routes it by the template to the
list function, which reads the index of the stack's moto table with its cursor key from the stack's
Secrets Manager. The emulator's own request recording (moto's recorder) shows every DynamoDB call any part
of the stack made while the listings ran: never a Scan of the state table."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests

from tests.stack import start_devstack

pytestmark = pytest.mark.e2e

VALUE_MARK = "e2e-listed-value-never-logged"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("list-stack")
    running = start_devstack(state_dir, {"MOTO_RECORDER_FILEPATH": str(state_dir / "moto-recording.jsonl")})
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def prefix():
    return f"le{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def keys(stack, prefix):
    """Three users' keys under the prefix, written over HTTP by a writer allowed everywhere."""
    writer = {"Authorization": f"Bearer {stack.token('writer', 'state:write')}"}
    written = []
    for who in ("alice", "bob", "carol"):
        for n in range(4):
            key = f"{prefix}user:{who}:{n}"
            response = requests.put(
                f"{stack.base_url}/state/{key}",
                json={"value": {"mark": VALUE_MARK, "n": n}},
                headers=writer,
                timeout=30,
            )
            assert response.status_code == 201, response.text
            written.append(key)
    deleted = f"{prefix}user:alice:gone"
    requests.put(f"{stack.base_url}/state/{deleted}", json={"value": 1}, headers=writer, timeout=30)
    assert requests.delete(f"{stack.base_url}/state/{deleted}", headers=writer, timeout=30).status_code == 204
    return written


def auth(stack, sub, scope):
    return {"Authorization": f"Bearer {stack.token(sub, scope)}"}


def list_state(stack, headers, **params):
    return requests.get(f"{stack.base_url}/state", params=params, headers=headers, timeout=30)


def pages(stack, headers, **params):
    listed, cursor, count = [], None, 0
    while True:
        response = list_state(stack, headers, **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        page = response.json()
        listed += page["keys"]
        count += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return listed, count


def recorded_dynamodb_calls(stack, action):
    """The DynamoDB operations the emulator served while `action` ran (every component of the stack)."""
    recorder = f"{stack.moto_url}/moto-api/recorder"
    requests.post(f"{recorder}/reset-recording", timeout=10).raise_for_status()
    requests.post(f"{recorder}/start-recording", timeout=10).raise_for_status()
    try:
        action()
    finally:
        requests.post(f"{recorder}/stop-recording", timeout=10).raise_for_status()
    text = requests.get(f"{recorder}/download-recording", timeout=10).text
    calls = []
    for line in text.splitlines():
        entry = json.loads(line)
        headers = {name.lower(): value for name, value in entry["headers"].items()}
        target = headers.get("x-amz-target", "")
        if target.startswith("DynamoDB_"):
            body = base64.b64decode(entry["body"]) if entry["body_encoded"] else (entry["body"] or "")
            calls.append((target.split(".", 1)[1], json.loads(body or "{}")))
    return calls


def test_a_sub_grant_lists_only_the_callers_keys_page_by_page_and_never_scans(stack, prefix, keys):
    alice = auth(stack, "alice", f"state:read:{prefix}user:${{sub}}:*")
    found: dict[str, object] = {}

    def listing():
        found["listed"], found["pages"] = pages(stack, alice, prefix=f"{prefix}user:", limit="3")

    calls = recorded_dynamodb_calls(stack, listing)

    assert [entry["key"] for entry in found["listed"]] == [f"{prefix}user:alice:{n}" for n in range(4)]
    assert found["pages"] == 2
    # Of the state table: the local stack's TTL emulator scans the watch table (which has no stream to
    # follow) on its own schedule, and that is not the listing's doing.
    state_table = stack.table_name
    assert {name for name, _ in calls} >= {"Query"}
    assert not [body for name, body in calls if name == "Scan" and body.get("TableName") == state_table]
    queries = [body for name, body in calls if name == "Query" and body.get("IndexName") == "ListIndex"]
    # Narrowed to alice's range: 16 shard queries a page, never bob's or carol's keys.
    assert 2 * 16 <= len(queries) <= 2 * 16 + 6
    assert all(q["ExpressionAttributeValues"][":low"]["S"].startswith(f"{prefix}user:alice:") for q in queries)


def test_values_pages_and_the_audit_record(stack, prefix, keys):
    admin = auth(stack, "admin", "state:read")
    response = list_state(stack, admin, prefix=prefix, include="value", limit="5")
    request_id = response.headers.get("apigw-requestid")

    assert response.status_code == 200
    page = response.json()
    assert [entry["key"] for entry in page["keys"]] == sorted(keys)[:5]
    assert page["keys"][0]["value"] == {"mark": VALUE_MARK, "n": 0}
    listed, _ = pages(stack, admin, prefix=prefix, limit="5")
    assert [entry["key"] for entry in listed] == sorted(keys)
    assert request_id
    deadline = time.monotonic() + 5
    records = []
    while time.monotonic() < deadline and not records:
        log = (stack.log_dir / "ListStateFunction.log").read_text()
        records = [json.loads(line)["audit"] for line in log.splitlines() if '"state-service-audit"' in line]
        records = [r for r in records if r["request_id"] == request_id]
        time.sleep(0.05)
    (record,) = records
    assert (record["action"], record["prefix"], record["decision"], record["status"]) == ("list", prefix, "allow", 200)
    assert VALUE_MARK not in log


def test_refusals_over_http(stack, prefix, keys):
    alice = auth(stack, "alice", f"state:read:{prefix}user:${{sub}}:*")
    bob = auth(stack, "bob", f"state:read:{prefix}user:${{sub}}:*")
    admin = auth(stack, "admin", "state:read")

    refused = list_state(stack, alice, prefix=f"{prefix}user:bob:")
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert list_state(stack, alice, prefix="").status_code == 403
    assert list_state(stack, admin, prefix=prefix, limit="0").status_code == 400
    assert list_state(stack, admin, prefix="bad prefix").status_code == 400
    assert list_state(stack, admin, prefix=prefix, include="everything").status_code == 400

    cursor = list_state(stack, alice, prefix=f"{prefix}user:", limit="1").json()["next_cursor"]
    assert cursor
    # Another caller with the very same grants, the same caller with another prefix, a tampered cursor.
    assert list_state(stack, bob, prefix=f"{prefix}user:", limit="1", cursor=cursor).status_code == 400
    assert list_state(stack, alice, prefix=f"{prefix}user:a", limit="1", cursor=cursor).status_code == 400
    tampered = cursor[:-1] + ("A" if cursor[-1] != "A" else "B")
    assert list_state(stack, alice, prefix=f"{prefix}user:", limit="1", cursor=tampered).status_code == 400
    assert list_state(stack, alice, prefix=f"{prefix}user:", limit="1", cursor=cursor).status_code == 200
