"""Version history and TTL through the whole local stack: HTTP -> table -> stream -> publish_changes
(history items, expiry markers) -> devstack's TTL emulator (moto never expires items) -> expiry as a version
-> its one `expired` event in `state-changes`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import requests
from test_change_events import Inbox

from state_core.service.history import encode_cursor
from tests.doubles import ApiClient
from tests.stack import start_devstack

pytestmark = pytest.mark.e2e

EVENT_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def api(devstack) -> ApiClient:
    return ApiClient(devstack)


@pytest.fixture(scope="module")
def inbox(devstack) -> Inbox:
    return Inbox(devstack.moto_url)


@pytest.fixture
def key() -> str:
    return f"hist:{uuid.uuid4().hex[:12]}"


def all_versions(api: ApiClient, key: str, limit: int) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        response = api.history(key, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([entry["version"] for entry in body["versions"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def caught_up(api: ApiClient, key: str, version: int) -> None:
    """Wait for the stream to record the key's versions up to `version`, its current one: until then (the
    stream's lag, only the publisher writes history) a listing starts at the newest recorded version (or is
    503 with Retry-After while none is), and a read of a missing one is 503."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        response = api.history(key)
        if response.status_code == 503:
            assert response.headers.get("Retry-After"), response.text
        else:
            assert response.status_code == 200, response.text
            if response.json()["versions"][0]["version"] == version:
                return
        assert time.monotonic() < deadline, "the stream never recorded the key's versions"
        time.sleep(0.05)


def create(api: ApiClient, key: str, value: Any, **fields: Any) -> dict[str, Any]:
    """Create `key` as a careful client does when the stack is loaded (its table slower than the functions'
    timeouts, so a write may answer 503 write-outcome-unknown): with If-None-Match: *, so a retry cannot apply
    twice; a 503 is retried after its Retry-After, and a 412 after one means an earlier attempt landed, so the
    key is read back. Returns the envelope."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    retried = False
    while True:
        response = api.put(key, value, headers={"If-None-Match": "*"}, **fields)
        if response.status_code == 201:
            return dict(response.json())
        if response.status_code == 412 and retried:
            read = api.get(key, consistent="true")
            assert read.status_code == 200, read.text
            return dict(read.json())
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, response.text
        retried = True
        time.sleep(float(response.headers.get("Retry-After") or 1))


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    return problem


def wait_until_expired(expires_at: str) -> None:
    moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()
    time.sleep(max(0.0, moment - time.time() + 0.05))


# ---------------------------------------------------------------------------------------------- history
def test_five_writes_each_version_reads_back_exactly_and_the_history_pages_newest_first(api, key):
    values = [{"n": 1}, [1, "two", None], "three", {"n": 4, "nested": {"x": [True, 1.5]}}, 5]
    for value in values:
        assert api.put(key, value).status_code in (200, 201)
    caught_up(api, key, len(values))

    for version, value in enumerate(values, start=1):
        response = api.get(key, version=str(version))
        assert response.status_code == 200, response.text
        assert response.json()["value"] == value
        assert response.json()["version"] == version
        assert response.headers["ETag"] == f'"{version}"'

    listing = api.history(key).json()
    assert [e["version"] for e in listing["versions"]] == [5, 4, 3, 2, 1]
    assert [e["operation"] for e in listing["versions"]] == ["updated"] * 4 + ["created"]
    assert all(e["actor"] == "alice" and e["size"] > 0 for e in listing["versions"])
    assert listing["next_cursor"] is None
    assert all_versions(api, key, limit=2) == [[5, 4], [3, 2], [1]]


def test_history_records_deletes_and_versions_keep_counting(api, key):
    api.put(key, {"a": 1})
    assert api.delete(key).status_code == 204
    assert api.put(key, {"a": 2}).status_code == 201
    caught_up(api, key, 3)
    listing = api.history(key).json()["versions"]
    assert [(e["version"], e["operation"], e["size"]) for e in listing][:2] == [(3, "created", 7), (2, "deleted", None)]
    assert_problem(api.get(key, version="2"), 404)  # a deletion has no value
    assert api.get(key, version="1").json()["value"] == {"a": 1}
    assert_problem(api.get(key, version="4"), 404)  # never existed


def test_a_large_version_is_read_from_its_blob_and_the_blob_goes_when_its_history_item_leaves(devstack, api, key):
    big = os.urandom(400_000).hex()  # incompressible: a blob of several chunks
    api.put(key, big)
    api.put(key, "small")
    caught_up(api, key, 2)
    assert api.get(key, version="1").json()["value"] == big

    ddb = devstack.client("dynamodb")
    item = ddb.get_item(TableName=devstack.table_name, Key={"pk": {"S": key}, "sk": {"S": "v#000000000001"}})["Item"]
    chunk = {"pk": {"S": f"chunk#{item['blob_id']['S']}#0000"}, "sk": {"S": "chunk"}}
    assert "Item" in ddb.get_item(TableName=devstack.table_name, Key=chunk)
    # Once the publisher has claimed the blob (dropped its marker), its own idempotent write of the history
    # item is done and cannot put the retention back after the change below.
    marker = {"pk": {"S": key}, "sk": {"S": f"blob#{item['blob_id']['S']}"}}
    deadline = time.monotonic() + EVENT_TIMEOUT
    while "Item" in ddb.get_item(TableName=devstack.table_name, Key=marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    # The history item leaves retention: its TTL is due, the TTL emulator removes it, and the stream's
    # REMOVE makes the publisher delete the blob, which the state (now "small") no longer uses.
    ddb.update_item(
        TableName=devstack.table_name,
        Key={"pk": {"S": key}, "sk": {"S": "v#000000000001"}},
        UpdateExpression="SET #ttl = :past",
        ExpressionAttributeNames={"#ttl": "ttl"},
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )
    deadline = time.monotonic() + EVENT_TIMEOUT
    while "Item" in ddb.get_item(TableName=devstack.table_name, Key=chunk) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "Item" not in ddb.get_item(TableName=devstack.table_name, Key=chunk)
    assert api.get(key).json()["value"] == "small"


@pytest.mark.parametrize("version", ["0", "-1", "abc", "1.5", "01x", ""])
def test_a_bad_version_is_400(api, key, version):
    api.put(key, 1)
    assert_problem(api.get(key, version=version), 400)


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "+1", " 1", "1_0"])
def test_a_version_or_limit_that_is_not_ascii_digits_is_400_not_500(api, key, text):
    # "\u00b2".isdigit() is true and int("\u00b2") raises: both were 500s.
    api.put(key, 1)
    assert_problem(api.get(key, version=text), 400)
    assert_problem(api.history(key, limit=text), 400)


def test_a_malformed_consistent_is_400_also_beside_a_version(api, key):
    api.put(key, 1)
    assert_problem(api.get(key, version="1", consistent="maybe"), 400)
    assert api.get(key, version="1", consistent="true").status_code == 200


def test_a_cursor_continuing_after_version_1_is_an_empty_last_page(api, key):
    for n in range(2):
        api.put(key, n)
    response = api.history(key, cursor=encode_cursor(key, 1))
    assert response.status_code == 200, response.text
    assert response.json() == {"key": key, "versions": [], "next_cursor": None}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten"])
def test_a_bad_limit_is_400(api, key, limit):
    api.put(key, 1)
    assert_problem(api.history(key, limit=limit), 400)


def test_an_unknown_cursor_and_a_cursor_for_another_key_are_400(api, key):
    other = key + "-other"
    for k in (key, other):
        for n in range(3):
            api.put(k, n)
    caught_up(api, other, 3)
    cursor = api.history(other, limit="1").json()["next_cursor"]
    assert cursor
    assert "another key" in assert_problem(api.history(key, cursor=cursor), 400)["detail"]
    assert_problem(api.history(key, cursor="bm90LWEtY3Vyc29y"), 400)
    assert_problem(api.history(key, cursor="%%%"), 400)


def test_reading_history_needs_state_read_on_the_key(devstack, api, key):
    api.put(key, 1)
    writer_only = ApiClient(devstack, scope="state:write")
    assert writer_only.history(key).status_code == 403
    assert writer_only.get(key, version="1").status_code == 403
    other_prefix = ApiClient(devstack, scope="state:read:other:*")
    assert other_prefix.history(key).status_code == 403


# --------------------------------------------------------------------------------------------------- TTL
def test_a_ttl_written_as_a_whole_number_with_a_fraction_is_accepted(api, key):
    # JSON Schema's integer, the OpenAPI document's type for ttl_seconds, includes 147499321.0.
    response = api.put(key, body=json.dumps({"value": 1, "ttl_seconds": 147499321.0}))
    assert response.status_code == 201, response.text
    assert response.json()["expires_at"] is not None


@pytest.mark.parametrize("ttl", [0, -1, "2", 1.5, True, 0.5, 10 * 365 * 24 * 3600 + 1.0])
def test_a_ttl_outside_1_s_to_10_years_is_400(api, key, ttl):
    assert_problem(api.put(key, body=json.dumps({"value": 1, "ttl_seconds": ttl})), 400)
    assert_problem(api.get(key), 404)


def expired_events(inbox: Inbox, key: str) -> list[dict[str, Any]]:
    inbox.poll()
    return [d for _, d in inbox.by_key.get(key, []) if d["operation"] == "expired"]


def test_a_key_never_touched_again_expires_with_the_next_version_and_one_event(api, inbox, key):
    created = create(api, key, {"short": True}, ttl_seconds=2)
    assert api.get(key).json()["value"] == {"short": True}  # readable at once (and now cached)
    wait_until_expired(created["expires_at"])

    assert_problem(api.get(key), 404)  # through the cache
    assert_problem(api.get(key, consistent="true"), 404)
    events = inbox.wait_for(key, 2, timeout=EVENT_TIMEOUT)
    assert [(e["version"], e["operation"]) for e in events] == [(1, "created"), (2, "expired")]
    assert events[1]["previous_version"] == 1
    assert events[1]["actor"] == "system:ttl"

    again = api.put(key, "again")
    assert again.status_code == 201, again.text
    assert again.json()["version"] == 3
    time.sleep(1.5)  # a second sweep finds nothing more to expire
    assert len(expired_events(inbox, key)) == 1
    caught_up(api, key, 3)
    history = api.history(key).json()["versions"]
    assert [(e["version"], e["operation"]) for e in history] == [(3, "created"), (2, "expired"), (1, "created")]


def test_a_key_rewritten_at_its_expiry_still_expires_once_and_keeps_counting(api, inbox, key):
    wait_until_expired(create(api, key, "short", ttl_seconds=2)["expires_at"])
    # Most likely before the marker's removal reaches the publisher: the PUT writes the expiry itself.
    again = api.put(key, "again")
    assert again.status_code == 201, again.text
    assert again.json()["version"] == 3

    events = inbox.wait_for(key, 3, timeout=EVENT_TIMEOUT)
    assert [(e["version"], e["operation"]) for e in events] == [(1, "created"), (2, "expired"), (3, "created")]
    time.sleep(2.5)  # the marker is removed by now; its late expiry finds version 3 and does nothing
    inbox.poll()
    assert len(expired_events(inbox, key)) == 1
    assert {d["version"] for _, d in inbox.by_key[key]} == {1, 2, 3}
    assert api.get(key).json()["version"] == 3


def test_patch_keeps_the_expiry_and_expires_at_is_in_the_envelope(api, key):
    expires_at = create(api, key, {"a": 1}, ttl_seconds=600)["expires_at"]
    assert expires_at is not None
    patched = api.patch(key, {"b": 2})
    assert patched.json()["expires_at"] == expires_at
    assert api.get(key).json()["expires_at"] == expires_at


# ------------------------------------------------------------------------------------------------- crash
@pytest.fixture(scope="module")
def crashing_stack(tmp_path_factory):
    # Every put worker dies right after its first DynamoDB write, before the cache and the history write.
    stack = start_devstack(
        tmp_path_factory.mktemp("crash-stack"),
        {"STATE_FAILPOINTS": "1", "STATE_FAILPOINTS_SPEC": "after_db_write_before_cache=kill*1"},
        expected_crashes=("Runtime.ExitError",),
    )
    try:
        yield stack
    finally:
        stack.stop()


def test_history_stays_complete_when_the_function_dies_after_the_write(crashing_stack):
    api = ApiClient(crashing_stack)
    ddb = crashing_stack.client("dynamodb")
    key = f"crash:{uuid.uuid4().hex[:12]}"
    outcomes, lags = [], []
    for n in range(4):
        outcomes.append(api.put(key, {"n": n}).status_code)
        sent = time.monotonic()
        # The version's history item appears without the dead function's help: from the stream.
        history_key = {"pk": {"S": key}, "sk": {"S": f"v#{n + 1:012d}"}}
        while "Item" not in ddb.get_item(TableName=crashing_stack.table_name, Key=history_key, ConsistentRead=True):
            assert time.monotonic() - sent < EVENT_TIMEOUT, f"version {n + 1} never reached the history"
            time.sleep(0.02)
        lags.append(time.monotonic() - sent)
    assert any(status >= 500 for status in outcomes), outcomes  # writes died after DynamoDB took them
    print(f"\nhistory after a crash, from the failed answer to its history item: {[round(x, 2) for x in lags]} s")

    assert api.get(key, consistent="true").json()["version"] == 4  # every write landed, acknowledged or not
    for n in range(4):
        assert api.get(key, version=str(n + 1)).json()["value"] == {"n": n}
    assert [v for page in all_versions(api, key, limit=3) for v in page] == [4, 3, 2, 1]
