"""The role policy's approvals section (which keys are protected, how strictly), the approve and override
grants, and the proposal lifecycle events built from stream records: pure rules, no I/O."""

from __future__ import annotations

import json

import pytest

from state_core.domain.approvals import Proposal, parse_decision_body, validate_proposal_id
from state_core.domain.errors import BadRequest, NotFound
from state_core.security.policy import DEFAULT_PROPOSAL_SECONDS, PolicyError, parse_role_policy
from state_core.security.principal import APPROVE, OVERRIDE, WRITE, Principal
from state_core.storage.approvals import proposal_item
from state_core.stream.proposals import proposal_events
from tests.event_schemas import assert_valid_proposal_event

pytestmark = pytest.mark.unit


def policy(*rules, roles=None):
    return parse_role_policy({"version": 1, "roles": roles or {}, "approvals": list(rules)})


def test_the_strictest_matching_rule_protects_a_key():
    loaded = policy(
        {"pattern": "flags:*", "approvals": 1, "expires_after_seconds": 60},
        {"pattern": "flags:prod:*", "approvals": 3},
        {"pattern": "limits", "approvals": 2},
    )

    strict = loaded.approval_rule("flags:prod:checkout")
    assert (strict.approvals, strict.expires_after_seconds) == (3, 60)
    assert loaded.approval_rule("flags:dev").approvals == 1
    assert loaded.approval_rule("limits").expires_after_seconds == DEFAULT_PROPOSAL_SECONDS
    assert loaded.approval_rule("limits:x") is None
    assert loaded.approval_rule("other") is None


def test_sub_in_a_rule_is_any_one_segment_whoever_writes():
    loaded = policy({"pattern": "user:${sub}:limits", "approvals": 1}, {"pattern": "team:${sub}:*", "approvals": 1})

    assert loaded.approval_rule("user:alice:limits") is not None
    assert loaded.approval_rule("user:bob:limits") is not None
    assert loaded.approval_rule("user:a:b:limits") is None
    assert loaded.approval_rule("user::limits") is None
    assert loaded.approval_rule("team:blue:anything:deep") is not None


def test_a_policy_without_approvals_protects_nothing():
    loaded = parse_role_policy({"version": 1, "roles": {"r": ["state:read"]}})

    assert loaded.approval_rule("anything") is None
    assert not loaded.protects_any_key


@pytest.mark.parametrize(
    "rule",
    [
        {"pattern": "a*b", "approvals": 1},
        {"pattern": "user:${sub}x", "approvals": 1},
        {"pattern": "", "approvals": 1},
        {"pattern": "x" * 300, "approvals": 1},
        {"pattern": "a", "approvals": 0},
        {"pattern": "a", "approvals": 21},
        {"pattern": "a", "approvals": True},
        {"pattern": "a", "approvals": 1.5},
        {"pattern": "a", "approvals": 1, "expires_after_seconds": 0},
        {"pattern": "a", "approvals": 1, "expires_after_seconds": 91 * 86_400},
        {"pattern": "a", "approvals": 1, "extra": 1},
        {"approvals": 1},
        "a",
    ],
)
def test_a_malformed_rule_makes_the_policy_invalid(rule):
    with pytest.raises(PolicyError):
        policy(rule)


def test_the_approvals_section_must_be_a_list():
    with pytest.raises(PolicyError):
        parse_role_policy({"version": 1, "roles": {}, "approvals": {"pattern": "a"}})


def test_override_is_its_own_permission_never_a_write_grant_on_a_key_named_override():
    glass = Principal("ops", frozenset({"state:write:override"}))
    narrow = Principal("ops", frozenset({"state:write:override:flags:*"}))

    assert glass.allows(OVERRIDE, "flags:prod")
    assert not glass.allows(WRITE, "override")
    assert not glass.allows(WRITE, "flags:prod")
    assert narrow.allows(OVERRIDE, "flags:prod")
    assert not narrow.allows(OVERRIDE, "limits")
    assert not Principal("w", frozenset({"state:write"})).allows(OVERRIDE, "flags:prod")


def test_approve_is_granted_by_pattern_by_scope_or_by_role():
    loaded = parse_role_policy({"version": 1, "roles": {"reviewer": ["state:approve:flags:*"]}})
    reviewer = Principal("bob", frozenset(), roles=("reviewer",))

    assert reviewer.allows(APPROVE, "flags:prod", loaded)
    assert not reviewer.allows(APPROVE, "limits", loaded)
    assert Principal("carol", frozenset({"state:approve"})).allows(APPROVE, "anything")


@pytest.mark.parametrize(
    ("body", "comment"), [(None, None), ({}, None), ({"comment": "ok"}, "ok"), ({"comment": None}, None)]
)
def test_a_decision_body_is_empty_or_a_comment(body, comment):
    assert parse_decision_body(body) == comment


@pytest.mark.parametrize("body", [[], "x", {"comment": 1}, {"comment": "x" * 1001}, {"comment": "a", "b": 1}])
def test_any_other_decision_body_is_400(body):
    with pytest.raises(BadRequest):
        parse_decision_body(body)


@pytest.mark.parametrize("raw", [None, "", "0" * 27, "0" * 29, "G" * 28, "../" + "0" * 25])
def test_a_malformed_proposal_id_is_simply_not_found(raw):
    with pytest.raises(NotFound):
        validate_proposal_id(raw)


def _proposal(**changes):
    base = {
        "key": "flags:prod",
        "proposal_id": "0" * 28,
        "op": "put",
        "status": "open",
        "proposer": "alice",
        "created_at": "2026-12-02T05:00:00.000Z",
        "expires_at": 1_800_000_000.0,
        "base_version": 3,
        "required": 2,
    }
    return Proposal(**{**base, **changes})


def _record(event, old=None, new=None, sequence="1"):
    ddb = {"SequenceNumber": sequence, "Keys": {"pk": {"S": "flags:prod"}, "sk": {"S": "proposal#" + "0" * 28}}}
    if old is not None:
        ddb["OldImage"] = proposal_item(old)
    if new is not None:
        ddb["NewImage"] = proposal_item(new)
    return {"eventName": event, "dynamodb": ddb}


def kinds(record):
    events = proposal_events(record, position=0, source="state.service", bus_name="bus")
    for event in events:
        assert_valid_proposal_event(dict(event.entry))
    return [(e.entry["DetailType"], json.loads(e.entry["Detail"]).get("approver")) for e in events]


def test_each_lifecycle_step_is_an_event_and_ids_are_stable():
    opened = _proposal()
    approved = _proposal(approvers=("bob",))
    assert kinds(_record("INSERT", new=opened)) == [("ProposalCreated", None)]
    assert kinds(_record("MODIFY", opened, approved)) == [("ProposalApproved", "bob")]
    assert kinds(_record("MODIFY", approved, approved)) == []
    for status, kind in [
        ("applied", "ProposalApplied"),
        ("rejected", "ProposalRejected"),
        ("withdrawn", "ProposalWithdrawn"),
        ("stale", "ProposalStale"),
        ("expired", "ProposalExpired"),
    ]:
        assert kinds(_record("MODIFY", approved, _proposal(approvers=("bob",), status=status))) == [(kind, None)]
    # DynamoDB's TTL removing an open proposal nobody looked at since it expired; a closed one says nothing.
    assert kinds(_record("REMOVE", old=approved)) == [("ProposalExpired", None)]
    assert kinds(_record("REMOVE", old=_proposal(status="applied"))) == []

    first = proposal_events(_record("INSERT", new=opened), position=0, source="s", bus_name="b")
    again = proposal_events(_record("INSERT", new=opened, sequence="9"), position=3, source="s", bus_name="b")
    assert json.loads(first[0].entry["Detail"])["event_id"] == json.loads(again[0].entry["Detail"])["event_id"]


def test_lifecycle_events_never_carry_the_value():
    from state_core.domain.codec import StoredValue

    secret = StoredValue.encode(b'{"iban":"DE00-secret"}')
    events = proposal_events(
        _record("INSERT", new=_proposal(value=secret)), position=0, source="state.service", bus_name="bus"
    )

    assert "secret" not in events[0].entry["Detail"]
    assert json.loads(events[0].entry["Detail"])["proposal_id"] == "0" * 28
