"""POST /state:transact through the real handler against the serialized moto server: all or nothing, each
failed condition named, idempotency keys, RBAC, and every bad input refused with nothing written."""

from __future__ import annotations

import base64
import copy
import json
import os
import threading
import time
import uuid

import pytest

from devstack import failpoints
from tests.event_schemas import assert_valid_detail
from tests.integration.conftest import http_event, load_event
from tests.streams import stream_records

pytestmark = pytest.mark.integration


def tx_event(body, *, sub="alice", scopes="state:read state:write", roles=(), headers=None, raw=None):
    event = copy.deepcopy(load_event("transact_state"))
    event["headers"] = {
        name: value for name, value in event["headers"].items() if name not in ("idempotency-key", "content-length")
    }
    event["headers"].update({name.lower(): value for name, value in (headers or {}).items()})
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    event["requestContext"]["authorizer"] = {"lambda": {"sub": sub, "scopes": scopes, "roles": json.dumps(list(roles))}}
    event["body"] = raw if raw is not None else json.dumps(body)
    return event


@pytest.fixture
def transact(invoke):
    def call(operations, **kwargs):
        body = kwargs.pop("body", {"operations": operations})
        response = invoke("transact_state", tx_event(body, **kwargs))
        return response["statusCode"], json.loads(response["body"]), response.get("headers") or {}

    return call


@pytest.fixture
def armed(monkeypatch):
    monkeypatch.setenv("STATE_FAILPOINTS", "1")
    yield
    failpoints.disarm()


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


def versions(read, keys):
    return [None if (found := read(key)) is None else found[0] for key in keys]


def test_a_failed_condition_on_the_last_of_25_operations_writes_nothing_and_names_it(transact, read, put, keys):
    for key in keys[:25]:
        put(key, {"k": key})
    operations = [{"op": "put", "key": key, "value": {"new": True}, "if_match": 1} for key in keys[:24]]
    operations.append({"op": "patch", "key": keys[24], "patch": {"new": True}, "if_match": 7})

    status, body, _ = transact(operations)

    assert status == 412
    assert body["failed_operations"] == [{"index": 24, "key": keys[24], "current_version": 1}]
    assert versions(read, keys[:25]) == [1] * 25
    assert all(read(key)[1] == {"k": key} for key in keys[:25])


def test_every_failed_operation_is_named_with_the_current_version_and_existence_counts(transact, read, put, keys):
    put(keys[0], {"a": 1})
    put(keys[1], {"b": 1})

    status, body, _ = transact(
        [
            {"op": "put", "key": keys[0], "value": 1, "if_none_match": "*"},  # exists
            {"op": "check", "key": keys[1], "if_match": 1},  # holds
            {"op": "delete", "key": keys[2]},  # absent: a delete needs the key
            {"op": "patch", "key": keys[3], "patch": {"x": 1}},  # absent: a patch needs the key
            {"op": "check", "key": keys[4], "if_match": "*"},  # absent
            {"op": "put", "key": keys[5], "value": 1},  # holds
        ]
    )

    assert status == 412
    assert body["failed_operations"] == [
        {"index": 0, "key": keys[0], "current_version": 1},
        {"index": 2, "key": keys[2], "current_version": None},
        {"index": 3, "key": keys[3], "current_version": None},
        {"index": 4, "key": keys[4], "current_version": None},
    ]
    assert versions(read, keys[:6]) == [1, 1, None, None, None, None]


def test_a_key_changed_between_the_read_and_the_commit_cancels_everything_then_412(armed, transact, read, put, keys):
    # Given a transaction of 25 operations whose keys were read, and another writer that changes its last key
    # before it commits: the condition that fails is DynamoDB's, in the commit itself
    for key in keys[:25]:
        put(key, {"v": 1})
    failpoints.arm("transact_before_commit", "call", lambda *_, **__: put(keys[24], {"v": "other"}), count=1)

    # When the transaction commits with if_match on the version it saw
    status, body, _ = transact([{"op": "put", "key": key, "value": {"v": 2}, "if_match": 1} for key in keys[:25]])

    # Then DynamoDB cancelled the commit, the round read again and the explicit condition failed: 412, no write
    assert failpoints.fired("transact_before_commit") == 1
    assert status == 412
    assert body["failed_operations"] == [{"index": 24, "key": keys[24], "current_version": 2}]
    assert [read(key) for key in keys[:25]] == [(1, {"v": 1})] * 24 + [(2, {"v": "other"})]


def test_a_patch_that_loses_a_race_is_merged_again_into_the_newer_version(armed, transact, read, put, invoke, keys):
    put(keys[0], {"base": 1})
    put(keys[1], {"count": 1})

    def concurrent_patch(*_, **__):
        event = http_event("patch", keys[0], body={"other": 1}, content_type="application/merge-patch+json")
        assert invoke("patch_state", event)["statusCode"] == 200

    failpoints.arm("transact_before_commit", "call", concurrent_patch, count=1)

    status, body, _ = transact(
        [
            {"op": "patch", "key": keys[0], "patch": {"mine": 1}},
            {"op": "put", "key": keys[1], "value": {"count": 2}, "if_match": 1},
        ]
    )

    assert status == 200, body
    assert [r["version"] for r in body["results"]] == [3, 2]
    assert read(keys[0]) == (3, {"base": 1, "other": 1, "mine": 1})
    assert read(keys[1]) == (2, {"count": 2})


def test_an_idempotency_key_answers_a_retry_with_the_first_outcome_and_applies_once(transact, read, put, keys):
    put(keys[0], {"n": 0})
    token = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    operations = [{"op": "patch", "key": keys[0], "patch": {"n": 1}}, {"op": "put", "key": keys[1], "value": 1}]

    first = transact(operations, headers=token)
    again = transact(operations, headers=token)

    assert first[0] == again[0] == 200
    assert first[1] == again[1]
    assert "Idempotent-Replayed" not in first[2]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert versions(read, keys[:2]) == [2, 1]


def test_an_idempotency_key_reused_for_another_body_is_422_and_writes_nothing(transact, read, keys):
    token = {"Idempotency-Key": f"reuse-{uuid.uuid4().hex}"}
    assert transact([{"op": "put", "key": keys[0], "value": 1}], headers=token)[0] == 200

    status, body, _ = transact([{"op": "put", "key": keys[1], "value": 1}], headers=token)

    assert status == 422
    assert body["type"].endswith("/idempotency-key-reused")
    assert read(keys[1]) is None


def test_an_idempotency_key_is_scoped_to_its_subject(transact, read, keys):
    token = {"Idempotency-Key": f"shared-{uuid.uuid4().hex}"}
    operations = [{"op": "put", "key": keys[0], "value": 1}]

    assert transact(operations, headers=token, sub="alice")[0] == 200
    status, _, headers = transact(operations, headers=token, sub="bob")

    assert status == 200
    assert "Idempotent-Replayed" not in headers
    assert read(keys[0])[0] == 2


def test_a_412_is_remembered_too_so_a_retry_does_not_apply_later(transact, read, put, keys):
    token = {"Idempotency-Key": f"late-{uuid.uuid4().hex}"}
    operations = [{"op": "put", "key": keys[0], "value": 1, "if_match": 1}]
    assert transact(operations, headers=token)[0] == 412
    put(keys[0], {"now": "exists"})

    status, body, headers = transact(operations, headers=token)

    assert status == 412
    assert headers["Idempotent-Replayed"] == "true"
    assert body["failed_operations"] == [{"index": 0, "key": keys[0], "current_version": None}]
    assert read(keys[0]) == (1, {"now": "exists"})


def test_an_expired_idempotency_record_is_not_answered_though_dynamodb_has_not_removed_it(
    transact, read, client, state_table, keys
):
    from state_core.domain.transactions import idempotency_partition

    token = f"old-{uuid.uuid4().hex}"
    operations = [{"op": "put", "key": keys[0], "value": 1}]
    assert transact(operations, headers={"Idempotency-Key": token})[0] == 200
    client.update_item(
        TableName=state_table,
        Key={"pk": {"S": idempotency_partition("alice", token)}, "sk": {"S": "idempotency"}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": f"{time.time() - 1:.3f}"}},
    )

    status, _, headers = transact(operations, headers={"Idempotency-Key": token})

    assert status == 200
    assert "Idempotent-Replayed" not in headers
    assert read(keys[0])[0] == 2


def test_a_retry_sent_while_the_first_request_is_in_flight_applies_once(armed, invoke, read, put, keys):
    # Given a first request paused after its read, and its retry (same Idempotency-Key) that commits first
    put(keys[0], {"n": 0})
    token = {"Idempotency-Key": f"race-{uuid.uuid4().hex}"}
    body = {"operations": [{"op": "put", "key": keys[0], "value": {"n": 1}, "if_match": 1}]}
    failpoints.arm("transact_before_commit", "pause", 10, count=1)
    answers = {}
    first = threading.Thread(
        target=lambda: answers.update(first=invoke("transact_state", tx_event(body, headers=token)))
    )
    first.start()
    assert failpoints.wait_reached("transact_before_commit")
    answers["retry"] = invoke("transact_state", tx_event(body, headers=token))
    failpoints.release("transact_before_commit")
    first.join(timeout=20)

    # Then both answer the one outcome that was applied
    assert answers["retry"]["statusCode"] == answers["first"]["statusCode"] == 200
    assert json.loads(answers["retry"]["body"]) == json.loads(answers["first"]["body"])
    assert answers["first"]["headers"]["Idempotent-Replayed"] == "true"
    assert read(keys[0]) == (2, {"n": 1})


def test_one_key_the_caller_may_not_write_refuses_all_and_reveals_nothing(transact, read, put, policy_file, keys):
    policy_file(json.dumps({"version": 1, "roles": {"clerk": ["state:write:tx:*", "state:read:tx:*"]}}))
    run = keys[0].split(":")[1]
    existing, absent, forbidden = keys[0], keys[1], f"vault:{run}"
    put(existing, {"v": 1})

    answers = []
    for other in (existing, absent):
        answers.append(
            transact(
                [{"op": "put", "key": other, "value": 2}, {"op": "put", "key": forbidden, "value": 2}],
                roles=["clerk"],
                scopes="",
            )
        )

    assert [status for status, _, _ in answers] == [403, 403]
    assert answers[0][1]["detail"].replace(existing, "K") == answers[1][1]["detail"].replace(absent, "K")
    assert read(existing) == (1, {"v": 1})
    assert read(absent) is None


def test_a_check_needs_read_and_a_write_needs_write(transact, put, keys):
    put(keys[0], {"v": 1})
    assert transact([{"op": "check", "key": keys[0], "if_match": 1}], scopes="state:write")[0] == 403
    assert transact([{"op": "put", "key": keys[1], "value": 1}], scopes="state:read")[0] == 403
    assert transact([{"op": "check", "key": keys[0], "if_match": 1}], scopes="state:read")[0] == 200


def _big(size):
    # Random bytes as base64: compresses to about three quarters of its length.
    return base64.b64encode(os.urandom(size * 3 // 4)).decode()


BAD_BODIES = {
    "not-an-object": [1],
    "no-operations": {},
    "extra-member": {"operations": [{"op": "put", "key": "K0", "value": 1}], "atomic": True},
    "empty": {"operations": []},
    "not-a-list": {"operations": {"op": "put"}},
    "26-operations": {"operations": [{"op": "put", "key": f"K{n}", "value": n} for n in range(26)]},
    "duplicate-keys": {"operations": [{"op": "put", "key": "K0", "value": 1}, {"op": "delete", "key": "K0"}]},
    "unknown-op": {"operations": [{"op": "increment", "key": "K0"}]},
    "no-op": {"operations": [{"key": "K0", "value": 1}]},
    "bad-key": {"operations": [{"op": "put", "key": "a#b", "value": 1}]},
    "no-key": {"operations": [{"op": "put", "value": 1}]},
    "put-without-value": {"operations": [{"op": "put", "key": "K0"}]},
    "patch-with-value": {"operations": [{"op": "patch", "key": "K0", "value": {"a": 1}}]},
    "delete-with-value": {"operations": [{"op": "delete", "key": "K0", "value": 1}]},
    "patch-with-ttl": {"operations": [{"op": "patch", "key": "K0", "patch": {}, "ttl_seconds": 5}]},
    "patch-if-none-match": {"operations": [{"op": "patch", "key": "K0", "patch": {}, "if_none_match": "*"}]},
    "delete-if-none-match": {"operations": [{"op": "delete", "key": "K0", "if_none_match": "*"}]},
    "check-without-condition": {"operations": [{"op": "check", "key": "K0"}]},
    "both-conditions": {"operations": [{"op": "check", "key": "K0", "if_match": 1, "if_none_match": "*"}]},
    "version-zero": {"operations": [{"op": "put", "key": "K0", "value": 1, "if_match": 0}]},
    "version-string": {"operations": [{"op": "put", "key": "K0", "value": 1, "if_match": "1"}]},
    "etag-if-none-match": {"operations": [{"op": "put", "key": "K0", "value": 1, "if_none_match": '"1"'}]},
    "bad-ttl": {"operations": [{"op": "put", "key": "K0", "value": 1, "ttl_seconds": 1.5}]},
    "ops-not-objects": {"operations": ["put"]},
}


CANARY = "canary-value-7d1f"


@pytest.fixture
def logged():
    """Every line the audit trail and the functions' own logger write meanwhile."""
    from state_core.observability import logger
    from state_core.security import audit
    from tests.integration.test_rbac import _Collect

    collectors = [(log, _Collect(log.registered_formatter)) for log in (audit.audit_logger, logger)]
    for log, collector in collectors:
        log.addHandler(collector)
    yield lambda: [line for _, collector in collectors for line in collector.lines]
    for log, collector in collectors:
        log.removeHandler(collector)


def _with_canary(body):
    """`body` with every value and patch it holds replaced by ones carrying the canary."""
    for operation in body.get("operations", []) if isinstance(body, dict) else []:
        if isinstance(operation, dict) and "value" in operation:
            operation["value"] = {"card": CANARY}
        if isinstance(operation, dict) and "patch" in operation:
            operation["patch"] = {"card": CANARY}
    return body


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_every_malformed_transaction_is_400_and_writes_nothing(case, transact, read, keys, logged):
    body = _with_canary(json.loads(json.dumps(BAD_BODIES[case]).replace('"K', f'"{keys[0]}-')))

    status, problem, headers = transact(None, body=body)

    assert status == 400, problem
    assert problem["status"] == 400
    assert headers["Content-Type"] == "application/problem+json"
    assert all(read(f"{keys[0]}-{n}") is None for n in range(26))
    # Nothing of a value is answered or logged; the audit record names no operation of a body it refused
    lines = logged()
    assert CANARY not in json.dumps(problem)
    assert CANARY not in "".join(lines)
    audit = [json.loads(line)["audit"] for line in lines if '"audit"' in line]
    refused = [record for record in audit if record["action"] == "transact"]
    assert [(r["status"], r["items"], r["transaction_id"]) for r in refused] == [(400, None, None)]


@pytest.mark.parametrize(
    ("raw", "headers", "expected"),
    [
        ("{not json", {}, 400),
        ('{"operations": [{"op": "put", "key": "K", "value": NaN}]}', {}, 400),
        ('{"operations": [], "operations": []}', {}, 400),
        ('{"operations": [{"op": "put", "key": "K", "value": 1}]}', {"Content-Type": "text/plain"}, 415),
        ('{"operations": [{"op": "put", "key": "K", "value": 1}]}', {"Idempotency-Key": "has space"}, 400),
        ('{"operations": [{"op": "put", "key": "K", "value": 1}]}', {"Idempotency-Key": "x" * 256}, 400),
    ],
)
def test_malformed_requests_are_refused_before_anything_is_read(raw, headers, expected, invoke, read, keys):
    event = tx_event(None, raw=raw.replace('"K"', f'"{keys[0]}"'), headers=headers)

    response = invoke("transact_state", event)

    assert response["statusCode"] == expected
    assert read(keys[0]) is None


def test_a_value_that_does_not_fit_its_item_is_413_and_nothing_is_written(transact, read, keys):
    status, problem, _ = transact(
        [{"op": "put", "key": keys[0], "value": 1}, {"op": "put", "key": keys[1], "value": _big(600_000)}]
    )

    assert status == 413
    assert "operations[1]" in problem["detail"]
    assert read(keys[0]) is None


def test_a_body_over_the_request_limit_is_413(transact, read, keys):
    status, _, _ = transact(
        [{"op": "put", "key": keys[0], "value": "x"}, {"op": "put", "key": keys[1], "value": _big(1_200_000)}]
    )

    assert status == 413
    assert read(keys[0]) is None


def test_patches_that_grow_the_stored_total_past_the_limit_are_413(transact, read, put, keys):
    for key in keys[:11]:
        put(key, {"blob": _big(440_000)})  # about 330,000 bytes stored each

    status, problem, _ = transact([{"op": "patch", "key": key, "patch": {"more": 1}} for key in keys[:11]])

    assert status == 413, problem
    assert "3500000" in problem["detail"]
    assert versions(read, keys[:11]) == [1] * 11


def test_every_version_a_transaction_writes_carries_its_id_in_the_stream_and_events(transact, put, state_table, keys):
    from state_core.stream.events import build_change

    put(keys[0], {"v": 1})
    status, body, _ = transact([{"op": "put", "key": keys[0], "value": 2}, {"op": "delete", "key": keys[0] + "x"}])
    assert status == 412  # nothing written
    status, body, _ = transact([{"op": "put", "key": keys[0], "value": 2}, {"op": "put", "key": keys[1], "value": 1}])
    assert status == 200
    put(keys[0], {"v": 3})  # a single write after it carries no transaction id

    records = stream_records(state_table, {keys[0], keys[1]})
    changes = [build_change(record, position=n, bus_name="b") for n, record in enumerate(records)]
    details = [json.loads(change.event.entry["Detail"]) for change in changes if change and change.event]
    for detail in details:
        assert_valid_detail(detail)

    assert [(d["key"], d["version"], d.get("transaction_id")) for d in details] == [
        (keys[0], 1, None),
        (keys[0], 2, body["transaction_id"]),
        (keys[1], 1, body["transaction_id"]),
        (keys[0], 3, None),
    ]


def test_the_history_names_the_transaction_that_wrote_each_version(
    transact, put, invoke, state_table, client, store, keys
):
    from state_core.storage.history import HistoryStore
    from state_core.stream.lifecycle import StreamLifecycle
    from tests.doubles import utc_now
    from tests.streams import record_history

    def listed(key):
        listing = http_event("get", key)
        listing["rawPath"] = listing["requestContext"]["http"]["path"] = f"/state/{key}/history"
        listing["routeKey"] = listing["requestContext"]["routeKey"] = "GET /state/{key}/history"
        response = invoke("get_state", listing)
        assert response["statusCode"] == 200, response
        return [
            (v["version"], v["operation"], v.get("transaction_id")) for v in json.loads(response["body"])["versions"]
        ]

    put(keys[0], {"v": 1})
    first = transact([{"op": "put", "key": keys[0], "value": 2}, {"op": "check", "key": keys[1], "if_none_match": "*"}])
    put(keys[0], {"v": 3})
    second = transact([{"op": "delete", "key": keys[0]}, {"op": "put", "key": keys[1], "value": 1}])
    assert (first[0], second[0]) == (200, 200)
    first_id, second_id = first[1]["transaction_id"], second[1]["transaction_id"]
    # Before the stream records it, the current version is listed from the state item itself
    assert listed(keys[1]) == [(1, "created", second_id)]

    lifecycle = StreamLifecycle(
        client,
        state_table,
        history=HistoryStore(client, state_table, retention_seconds=86_400),
        states=store,
        blobs=store.blobs,
        clock=utc_now,
    )
    record_history(lifecycle, stream_records(state_table, {keys[0], keys[1]}))

    assert listed(keys[0]) == [
        (4, "deleted", second_id),
        (3, "updated", None),
        (2, "updated", first_id),
        (1, "created", None),
    ]
    assert listed(keys[1]) == [(1, "created", second_id)]  # a check writes no version


def test_each_transaction_leaves_one_audit_record_with_its_keys_and_outcome(transact, put, keys):
    from state_core.security import audit
    from tests.integration.test_rbac import _Collect

    collector = _Collect(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    try:
        put(keys[0], {"secret": "do-not-log"})
        collector.lines.clear()
        status, body, _ = transact(
            [
                {"op": "patch", "key": keys[0], "patch": {"secret": "still-not"}},
                {"op": "check", "key": keys[1], "if_none_match": "*"},
            ]
        )
        refused, _, _ = transact([{"op": "delete", "key": keys[2]}])
        denied, _, _ = transact([{"op": "put", "key": keys[3], "value": "x"}], scopes="state:read")
    finally:
        audit.audit_logger.removeHandler(collector)

    records = [json.loads(line)["audit"] for line in collector.lines]
    assert (status, refused, denied) == (200, 412, 403)
    assert len(records) == 3
    applied, failed, forbidden = records
    assert applied["action"] == "transact"
    assert applied["transaction_id"] == body["transaction_id"]
    assert applied["items"] == [
        {"op": "patch", "key": keys[0], "version": 2},
        {"op": "check", "key": keys[1], "version": None},
    ]
    assert (applied["status"], applied["decision"], applied["subject"]) == (200, "allow", "alice")
    assert (failed["status"], failed["items"], failed["transaction_id"]) == (
        412,
        [{"op": "delete", "key": keys[2]}],
        None,
    )
    assert (forbidden["status"], forbidden["decision"]) == (403, "deny")
    assert "not-log" not in "".join(collector.lines)
    assert "still-not" not in "".join(collector.lines)


def test_a_replayed_answer_is_audited_as_a_replay_not_as_the_transaction_again(transact, put, keys, logged):
    token = {"Idempotency-Key": f"audit-{uuid.uuid4().hex}"}
    put(keys[0], {"v": 1})
    first, body, _ = transact([{"op": "put", "key": keys[0], "value": 2, "if_match": 1}], headers=token)
    again, replayed, _ = transact([{"op": "put", "key": keys[0], "value": 2, "if_match": 1}], headers=token)
    assert (first, again, replayed) == (200, 200, body)

    records = [json.loads(line)["audit"] for line in logged() if '"audit"' in line]
    assert [(r["action"], r["status"], r["transaction_id"], r["replayed"]) for r in records] == [
        ("put", 201, None, None),
        ("transact", 200, body["transaction_id"], False),
        ("transact", 200, body["transaction_id"], True),
    ]


def test_a_key_found_past_its_expiry_is_expired_as_its_own_version_first(transact, invoke, read, state_table, keys):
    response = invoke("put_state", http_event("put", keys[0], body={"value": 1, "ttl_seconds": 1}))
    assert response["statusCode"] == 201
    time.sleep(1.2)

    status, body, _ = transact([{"op": "put", "key": keys[0], "value": 2, "if_none_match": "*"}])

    assert status == 200, body
    assert body["results"][0]["version"] == 3  # 2 is the expiry
    assert read(keys[0]) == (3, 2)
    records = stream_records(state_table, {keys[0]})
    images = [r["dynamodb"]["NewImage"] for r in records if "version" in r["dynamodb"].get("NewImage", {})]
    assert [(int(i["version"]["N"]), "expired" in i, "transaction_id" in i) for i in images] == [
        (1, False, False),
        (2, True, False),
        (3, False, True),
    ]


def test_the_transaction_value_limit_is_the_inline_limit():
    from state_core.domain.transactions import MAX_TRANSACTION_VALUE_BYTES
    from state_core.storage.state import INLINE_VALUE_BYTES

    assert MAX_TRANSACTION_VALUE_BYTES == INLINE_VALUE_BYTES


def test_a_patch_of_a_large_value_loads_its_blob_and_may_shrink_it_into_the_transaction(transact, read, put, keys):
    put(keys[0], {"blob": _big(600_000), "keep": 1})  # stored as a blob: it does not fit its item

    status, body, _ = transact([{"op": "patch", "key": keys[0], "patch": {"blob": None, "small": 2}}])

    assert status == 200, body
    assert read(keys[0]) == (2, {"keep": 1, "small": 2})


def test_a_patch_that_would_grow_a_value_past_its_item_is_413(transact, read, put, keys):
    put(keys[0], {"n": 1})

    status, problem, _ = transact([{"op": "patch", "key": keys[0], "patch": {"blob": _big(600_000)}}])

    assert status == 413
    assert "operations[0]" in problem["detail"]
    assert read(keys[0]) == (1, {"n": 1})
