"""The published ProposalLifecycle event schema: well formed, registered as is, compatible with what was
published, and satisfied by every kind of proposal event (tests/unit/test_approval_rules.py and the approvals'
integration tests check each event they make against it too)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema_rs
import pytest

from devstack.template import load_yaml
from state_core.domain.approvals import Proposal
from state_core.storage.approvals import proposal_item
from state_core.stream.proposals import proposal_events
from tests.event_schemas import PROPOSALS, PUBLISHED, assert_valid_proposal_event, breaking_changes, load

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_schema_is_draft_04_as_the_eventbridge_registry_takes_it():
    schema = load(PROPOSALS)

    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema_rs.Draft4Validator(schema)
    assert jsonschema_rs.meta.is_valid(schema)


def test_the_template_registers_the_repository_schema_verbatim():
    resources = load_yaml(REPO_ROOT / "template.yaml")["Resources"]
    registered = resources["ProposalLifecycleEventSchema"]["Properties"]

    assert registered["Type"] == "JSONSchemaDraft4"
    assert json.loads(registered["Content"]) == load(PROPOSALS)


def test_the_current_schema_breaks_no_consumer_of_any_published_version():
    versions = sorted(PUBLISHED.glob("ProposalLifecycle.v*.json"))

    assert versions, "the first version is published with the schema"
    for path in versions:
        assert breaking_changes(load(path), load(PROPOSALS)) == [], path.name


def _record(event: str, old: Proposal | None = None, new: Proposal | None = None) -> dict:
    ddb: dict = {"SequenceNumber": "1", "Keys": {"pk": {"S": "flags:prod"}, "sk": {"S": "proposal#" + "0" * 28}}}
    if old is not None:
        ddb["OldImage"] = proposal_item(old)
    if new is not None:
        ddb["NewImage"] = proposal_item(new)
    return {"eventName": event, "dynamodb": ddb}


def _proposal(**changes) -> Proposal:
    base = {
        "key": "flags:prod",
        "proposal_id": "0" * 28,
        "op": "patch",
        "status": "open",
        "proposer": "alice",
        "created_at": "2026-12-02T05:00:00.000Z",
        "expires_at": 1_800_000_000.0,
        "base_version": 3,
        "required": 2,
    }
    return Proposal(**{**base, **changes})


def test_every_kind_of_proposal_event_satisfies_the_schema():
    opened = _proposal(ttl_seconds=60)
    approved = _proposal(approvers=("bob",), approval_comments={"bob": "fine"})
    closed = {
        "applied": {"applied_version": 4, "decided_by": "carol", "decided_at": "2026-12-02T05:01:00.000Z"},
        "rejected": {"decided_by": "carol", "decided_at": "2026-12-02T05:01:00.000Z", "comment": "no"},
        "withdrawn": {"decided_by": "alice", "decided_at": "2026-12-02T05:01:00.000Z"},
        "stale": {"current_version": 5},
        "expired": {},
    }
    records = [_record("INSERT", new=opened), _record("MODIFY", opened, approved), _record("REMOVE", old=approved)]
    records += [
        _record("MODIFY", approved, _proposal(approvers=("bob",), status=status, **fields))
        for status, fields in closed.items()
    ]
    kinds = set()
    for record in records:
        for event in proposal_events(record, position=0, source="state.service", bus_name="bus"):
            assert_valid_proposal_event(dict(event.entry))
            kinds.add(event.entry["DetailType"])

    assert kinds == set(load(PROPOSALS)["properties"]["detail-type"]["enum"])


def test_the_schema_refuses_an_event_carrying_a_value():
    entry = proposal_events(_record("INSERT", new=_proposal()), position=0, source="state.service", bus_name="b")[0]
    detail = json.loads(entry.entry["Detail"])

    with pytest.raises(AssertionError, match="value"):
        assert_valid_proposal_event({**entry.entry, "Detail": json.dumps({**detail, "value": {"x": 1}})})
