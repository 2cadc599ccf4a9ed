"""Change approvals through the real handlers against the serialized moto server: a write of a protected key
becomes a proposal and changes nothing; reviewing, approving, rejecting, withdrawing and expiry; every way
around it refused; the break-glass override audited; unprotected keys as before."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.event_schemas import assert_valid_proposal_event
from tests.integration.conftest import http_event
from tests.integration.test_rbac import _Collect
from tests.streams import stream_records

pytestmark = pytest.mark.integration

WRITER = "state:read state:write"
APPROVER = "state:read state:approve"
# Break glass: on top of state:write, never instead of it.
OVERRIDER = "state:read state:write state:write:override"


@pytest.fixture
def audit_records():
    """The audit records written during the test, as the audit logger emits them."""
    from state_core.security import audit

    collector = _Collect(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    yield collector
    audit.audit_logger.removeHandler(collector)


@pytest.fixture
def service_log():
    from state_core.observability import logger

    collector = _Collect()
    logger.addHandler(collector)
    yield collector
    logger.removeHandler(collector)


@pytest.fixture
def run():
    return uuid.uuid4().hex[:10]


@pytest.fixture
def protected(policy_file, run):
    """Keys under `prot<run>:` need 2 approvals (expiring in 2 s under `prot<run>:short:`), and
    `solo<run>:` one; `user:${sub}:limits` one, whoever writes it."""
    policy_file(
        json.dumps(
            {
                "version": 1,
                "roles": {},
                "approvals": [
                    {"pattern": f"prot{run}:*", "approvals": 2},
                    {"pattern": f"prot{run}:short:*", "approvals": 1, "expires_after_seconds": 2},
                    {"pattern": f"solo{run}:*", "approvals": 1},
                    {"pattern": f"u{run}:${{sub}}:limits", "approvals": 1},
                ],
            }
        )
    )
    return f"prot{run}:"


def write(invoke, op, key, body=None, *, sub="alice", scopes=WRITER, headers=None):
    function = {"put": "put_state", "patch": "patch_state", "delete": "delete_state"}[op]
    content_type = "application/merge-patch+json" if op == "patch" else "application/json"
    event = http_event(op, key, body=body, sub=sub, scopes=scopes, headers=headers, content_type=content_type)
    return invoke(function, event)


def proposals(invoke, method, key, proposal_id=None, action=None, *, sub="bob", scopes=APPROVER, body=None, query=None):
    """A request to the approvals function: GET/DELETE .../proposals[/{id}], POST .../{id}/approve|reject."""
    event = http_event("get", key, body=body, sub=sub, scopes=scopes, query=query)
    path = f"/state/{key}/proposals" + (f"/{proposal_id}" if proposal_id else "") + (f"/{action}" if action else "")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["pathParameters"] = {"key": key, **({"id": proposal_id} if proposal_id else {})}
    return invoke("approvals", event)


def body_of(response):
    return json.loads(response["body"])


def current(invoke, key):
    response = invoke("get_state", http_event("get", key, query={"consistent": "true"}))
    return None if response["statusCode"] == 404 else body_of(response)


def propose_put(invoke, key, value, **kwargs):
    response = write(invoke, "put", key, {"value": value}, **kwargs)
    assert response["statusCode"] == 202, response
    return body_of(response)


def test_a_write_of_a_protected_key_becomes_a_proposal_and_changes_nothing(invoke, protected):
    key = f"{protected}flags"
    response = write(invoke, "put", key, {"value": {"beta": True}})

    assert response["statusCode"] == 202, response
    proposal = body_of(response)
    assert response["headers"]["Location"] == f"/state/{key}/proposals/{proposal['id']}"
    assert (proposal["status"], proposal["operation"], proposal["proposer"]) == ("open", "put", "alice")
    assert (proposal["base_version"], proposal["approvals_required"], proposal["approved_by"]) == (0, 2, [])
    assert current(invoke, key) is None

    listed = body_of(proposals(invoke, "GET", key))
    assert [p["id"] for p in listed["proposals"]] == [proposal["id"]]
    assert listed["next_cursor"] is None


def test_unprotected_keys_are_written_as_before(invoke, protected, run):
    response = write(invoke, "put", f"free{run}:flags", {"value": 1})

    assert response["statusCode"] == 201
    assert "Location" not in response.get("headers", {})


@pytest.mark.parametrize(
    ("op", "body", "headers"),
    [
        ("put", {"value": {"limit": 999}}, {"If-Match": '"1"'}),
        ("put", {"value": {"limit": 999}}, None),
        ("put", {"value": {"limit": 999}, "ttl_seconds": 1}, None),
        ("patch", {"limit": 999}, None),
        ("patch", {"limit": 999}, {"If-Match": '"1"'}),
        ("delete", None, None),
        ("delete", None, {"If-Match": '"1"'}),
    ],
)
def test_every_write_route_of_a_protected_key_only_proposes(invoke, protected, op, body, headers):
    key = f"{protected}limits"
    seeded = write(invoke, "put", key, {"value": {"limit": 1}}, scopes=OVERRIDER)
    assert seeded["statusCode"] == 201

    response = write(invoke, op, key, body, headers=headers)

    assert response["statusCode"] == 202, response
    assert body_of(response)["base_version"] == 1
    after = current(invoke, key)
    assert (after["version"], after["value"], after["expires_at"]) == (1, {"limit": 1}, None)


def test_a_proposal_refuses_what_the_write_would_refuse_and_stores_nothing(invoke, protected):
    key = f"{protected}rules"
    assert write(invoke, "put", key, {"value": 1}, headers={"If-Match": '"4"'})["statusCode"] == 412
    assert write(invoke, "patch", key, {"a": 1})["statusCode"] == 404
    assert write(invoke, "delete", key)["statusCode"] == 404
    assert write(invoke, "put", key, {"nope": 1})["statusCode"] == 422
    assert write(invoke, "put", key, {"value": 1}, scopes="state:read")["statusCode"] == 403

    assert body_of(proposals(invoke, "GET", key))["proposals"] == []


def test_review_shows_the_resulting_value_and_a_json_patch_against_the_base(invoke, protected):
    key = f"{protected}routing"
    write(invoke, "put", key, {"value": {"a": 1, "b": [1, 2]}}, scopes=OVERRIDER)
    patch = write(invoke, "patch", key, {"b": None, "c": "x"})
    proposal_id = body_of(patch)["id"]

    review = proposals(invoke, "GET", key, proposal_id, sub="carol", scopes="state:read")

    assert review["statusCode"] == 200, review
    body = body_of(review)
    assert body["value"] == {"a": 1, "c": "x"}
    assert body["patch"] == {"b": None, "c": "x"}
    assert sorted(body["diff"], key=lambda op: op["path"]) == [
        {"op": "remove", "path": "/b"},
        {"op": "add", "path": "/c", "value": "x"},
    ]
    assert proposals(invoke, "GET", key, proposal_id, scopes="state:write")["statusCode"] == 403


def test_two_approvals_by_others_apply_it_once_as_the_proposer_with_the_approvers(
    invoke, protected, state_table, monkeypatch
):
    key = f"{protected}payments"
    proposal = propose_put(invoke, key, {"iban": "X"})
    pid = proposal["id"]

    selfish = proposals(invoke, "POST", key, pid, "approve", sub="alice", scopes="state:read state:approve")
    assert selfish["statusCode"] == 403
    assert body_of(selfish)["type"].endswith("/self-approval")

    first = proposals(invoke, "POST", key, pid, "approve", sub="bob", body={"comment": "looks right"})
    assert first["statusCode"] == 200
    assert (body_of(first)["status"], body_of(first)["approved_by"]) == ("open", ["bob"])
    replay = proposals(invoke, "POST", key, pid, "approve", sub="bob")
    assert (body_of(replay)["status"], body_of(replay)["approved_by"]) == ("open", ["bob"])
    assert current(invoke, key) is None

    second = proposals(invoke, "POST", key, pid, "approve", sub="carol")
    assert second["statusCode"] == 200, second
    assert (body_of(second)["status"], body_of(second)["applied_version"]) == ("applied", 1)

    state = current(invoke, key)
    assert (state["version"], state["value"], state["updated_by"]) == (1, {"iban": "X"}, "alice")
    late = proposals(invoke, "POST", key, pid, "approve", sub="dave")
    assert late["statusCode"] == 409
    assert body_of(late)["proposal"]["status"] == "applied"
    assert current(invoke, key)["version"] == 1
    reviewed = body_of(proposals(invoke, "GET", key, pid))
    assert reviewed["approval_comments"] == {"bob": "looks right"}

    written = [r for r in stream_records(state_table, {key}) if r["dynamodb"]["Keys"]["sk"]["S"] == "state"]
    image = written[-1]["dynamodb"]["NewImage"]
    assert image["proposal_id"]["S"] == pid
    assert sorted(image["approved_by"]["SS"]) == ["bob", "carol"]
    assert image["updated_by"]["S"] == "alice"


def test_the_lifecycle_becomes_events_and_the_applied_version_carries_the_proposal(invoke, protected, state_table):
    from state_core.stream.events import build_change
    from state_core.stream.proposals import proposal_events

    key = f"{protected}events"
    pid = propose_put(invoke, key, 7)["id"]
    proposals(invoke, "POST", key, pid, "approve", sub="bob")
    proposals(invoke, "POST", key, pid, "approve", sub="carol")

    kinds, changed = [], []
    for position, record in enumerate(stream_records(state_table, {key})):
        if record["dynamodb"]["Keys"]["sk"]["S"].startswith("proposal#"):
            events = proposal_events(record, position=position, source="s", bus_name="b")
            for event in events:
                assert_valid_proposal_event(dict(event.entry))
            kinds += [(e.entry["DetailType"], json.loads(e.entry["Detail"]).get("approver")) for e in events]
        else:
            change = build_change(record, position=position, bus_name="b")
            if change is not None and change.event is not None:
                changed.append(json.loads(change.event.entry["Detail"]))
    assert kinds == [
        ("ProposalCreated", None),
        ("ProposalApproved", "bob"),
        ("ProposalApproved", "carol"),
        ("ProposalApplied", None),
    ]
    assert [(c["version"], c["actor"], c["proposal_id"], c["approved_by"]) for c in changed] == [
        (1, "alice", pid, ["bob", "carol"])
    ]


def test_a_key_that_moved_on_makes_the_proposal_stale_and_nothing_is_written(invoke, protected):
    key = f"{protected}stale"
    write(invoke, "put", key, {"value": "v1"}, scopes=OVERRIDER)
    pid = propose_put(invoke, key, "proposed")["id"]
    proposals(invoke, "POST", key, pid, "approve", sub="bob")
    moved = write(invoke, "put", key, {"value": "v2"}, scopes=OVERRIDER)
    assert moved["statusCode"] == 200

    response = proposals(invoke, "POST", key, pid, "approve", sub="carol")

    assert response["statusCode"] == 409, response
    problem = body_of(response)
    assert problem["type"].endswith("/proposal-stale")
    assert (problem["current_version"], problem["proposal"]["status"]) == (2, "stale")
    state = current(invoke, key)
    assert (state["version"], state["value"]) == (2, "v2")


def test_the_first_of_two_proposals_on_one_base_applied_makes_the_second_stale(invoke, protected, run):
    key = f"solo{run}:pair"
    first = propose_put(invoke, key, "first")["id"]
    second = propose_put(invoke, key, "second", sub="erin")["id"]

    assert body_of(proposals(invoke, "POST", key, first, "approve"))["status"] == "applied"
    refused = proposals(invoke, "POST", key, second, "approve")

    assert refused["statusCode"] == 409
    assert current(invoke, key)["value"] == "first"
    assert body_of(proposals(invoke, "GET", key))["proposals"] == []


def test_a_rejection_closes_it_and_a_withdrawal_is_the_proposers_alone(invoke, protected):
    key = f"{protected}closing"
    rejected = propose_put(invoke, key, 1)["id"]
    response = proposals(invoke, "POST", key, rejected, "reject", sub="bob", body={"comment": "no"})
    assert response["statusCode"] == 200
    assert (body_of(response)["status"], body_of(response)["comment"]) == ("rejected", "no")
    assert proposals(invoke, "POST", key, rejected, "approve", sub="carol")["statusCode"] == 409
    assert proposals(invoke, "POST", key, rejected, "reject", scopes="state:read")["statusCode"] == 403

    withdrawn = propose_put(invoke, key, 2)["id"]
    assert proposals(invoke, "DELETE", key, withdrawn, sub="mallory", scopes=WRITER)["statusCode"] == 403
    response = proposals(invoke, "DELETE", key, withdrawn, sub="alice", scopes=WRITER)
    assert (response["statusCode"], body_of(response)["status"]) == (200, "withdrawn")
    assert proposals(invoke, "POST", key, withdrawn, "approve", sub="bob")["statusCode"] == 409
    assert current(invoke, key) is None


def test_an_expired_proposal_answers_410_and_cannot_be_approved(invoke, protected):
    key = f"{protected}short:flag"
    pid = propose_put(invoke, key, True)["id"]
    time.sleep(2.1)

    assert proposals(invoke, "POST", key, pid, "approve")["statusCode"] == 410
    assert proposals(invoke, "GET", key, pid)["statusCode"] == 410
    assert body_of(proposals(invoke, "GET", key))["proposals"] == []
    assert current(invoke, key) is None


def test_bypass_through_another_keys_grant_or_proposal_id_fails(invoke, protected, run):
    key = f"{protected}a"
    other = f"{protected}b"
    pid = propose_put(invoke, key, 1)["id"]
    propose_put(invoke, other, 2)

    narrow = f"state:read state:approve:{other}"
    assert proposals(invoke, "POST", key, pid, "approve", scopes=narrow)["statusCode"] == 403
    assert proposals(invoke, "POST", other, pid, "approve")["statusCode"] == 404
    assert proposals(invoke, "GET", other, pid)["statusCode"] == 404
    assert proposals(invoke, "POST", key, "not-an-id", "approve")["statusCode"] == 404
    too_long = proposals(invoke, "POST", key, pid, "approve", body={"comment": "x" * 1001})
    assert too_long["statusCode"] == 400
    assert proposals(invoke, "POST", key, pid, "approve", body={"other": 1})["statusCode"] == 400
    assert proposals(invoke, "GET", key, query={"limit": "0"})["statusCode"] == 400
    assert proposals(invoke, "GET", key, query={"cursor": "zz"})["statusCode"] == 400
    assert body_of(proposals(invoke, "GET", key, pid))["approved_by"] == []


def test_sub_in_a_rule_protects_every_subjects_key_whoever_writes(invoke, protected, run):
    assert write(invoke, "put", f"u{run}:alice:limits", {"value": 1}, sub="admin")["statusCode"] == 202
    assert write(invoke, "put", f"u{run}:alice:limits", {"value": 1}, sub="alice")["statusCode"] == 202
    assert write(invoke, "put", f"u{run}:alice:other", {"value": 1})["statusCode"] == 201


def test_a_transaction_with_a_protected_key_is_refused_unless_overridden(invoke, protected, run):
    free, key = f"free{run}:t", f"{protected}t"
    operations = {"operations": [{"op": "put", "key": free, "value": 1}, {"op": "put", "key": key, "value": 1}]}
    event = http_event("transact", "x", body=operations)
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/state:transact"
    event["requestContext"]["http"]["method"] = "POST"
    event["pathParameters"] = None

    refused = invoke("transact_state", event)
    assert refused["statusCode"] == 403
    problem = body_of(refused)
    assert (problem["type"].rsplit("/", 1)[1], problem["protected_keys"]) == ("approval-required", [key])
    assert current(invoke, free) is None

    event["requestContext"]["authorizer"]["lambda"]["scopes"] = "state:read state:write state:write:override"
    assert invoke("transact_state", event)["statusCode"] == 200
    assert current(invoke, key)["value"] == 1


def test_the_override_writes_directly_audited_as_an_override(invoke, protected, audit_records, service_log):
    key = f"{protected}glass"
    response = write(invoke, "put", key, {"value": "secret-glass"}, scopes=OVERRIDER)

    assert response["statusCode"] == 201
    audit = [json.loads(line)["audit"] for line in audit_records.lines]
    assert [(a["action"], a["decision"], a["key"], a["version"]) for a in audit] == [("put", "override", key, 1)]
    assert any(r.getMessage() == "protected key written under state:write:override" for r in service_log.records)
    assert "secret-glass" not in "".join(audit_records.lines)


def test_the_audit_trail_has_one_record_per_proposal_decision_and_application(invoke, protected, audit_records):
    key = f"{protected}audited"
    pid = propose_put(invoke, key, {"x": "never-logged"})["id"]
    proposals(invoke, "POST", key, pid, "approve", sub="bob")
    proposals(invoke, "POST", key, pid, "approve", sub="carol")
    other = propose_put(invoke, key, {"x": 2})["id"]
    proposals(invoke, "POST", key, other, "reject", sub="bob")
    withdrawn = propose_put(invoke, key, {"x": 3})["id"]
    proposals(invoke, "DELETE", key, withdrawn, sub="alice", scopes=WRITER)

    audit = [json.loads(line)["audit"] for line in audit_records.lines]
    assert [(a["action"], a["subject"], a["proposal_id"], a["decision"]) for a in audit] == [
        ("propose", "alice", pid, "allow"),
        ("approve", "bob", pid, "allow"),
        ("approve", "carol", pid, "allow"),
        ("apply_proposal", "carol", pid, "allow"),
        ("propose", "alice", other, "allow"),
        ("reject", "bob", other, "allow"),
        ("propose", "alice", withdrawn, "allow"),
        ("withdraw", "alice", withdrawn, "allow"),
    ]
    assert audit[3]["version"] == 1
    assert "never-logged" not in "".join(audit_records.lines)
