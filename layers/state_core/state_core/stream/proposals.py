"""Proposal lifecycle events from the table's stream (approvals.md): pure functions, no I/O.

A proposal item's stream record becomes the events of what changed between its old and new image:
`ProposalCreated` (inserted), `ProposalApproved` (one per subject added to its approvers),
`ProposalApplied`, `ProposalRejected`, `ProposalWithdrawn`, `ProposalStale`, `ProposalExpired` (its status
left `open`), and `ProposalExpired` again for an open proposal DynamoDB's TTL removed without anyone having
looked at it since it expired. The events name the proposal and who did what, never a value: a consumer reads
the proposal (`GET /state/{key}/proposals/{id}`) for that. Ids are derived from the key, the proposal, the
kind and the approver, so a redelivered record gives the same ids.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from state_core.storage.approvals import is_proposal_sort_key, proposal_of_item
from state_core.stream.events import ChangeEvent, image

if TYPE_CHECKING:
    from mypy_boto3_events.type_defs import PutEventsRequestEntryTypeDef

    from state_core.domain.approvals import Proposal

_EVENT_ID_NAMESPACE = uuid.UUID("9d0c1a55-2f4e-4f0b-8a61-3c2b7e5d4a10")
_CLOSED_EVENTS = {
    "applied": "ProposalApplied",
    "rejected": "ProposalRejected",
    "withdrawn": "ProposalWithdrawn",
    "stale": "ProposalStale",
    "expired": "ProposalExpired",
}


@dataclass(frozen=True, slots=True)
class ProposalChanged:
    """The detail of one proposal lifecycle event. `version` is the key's base version (what a dead letter
    names), `approver` the subject a ProposalApproved counts."""

    detail_type: str
    event_id: str
    key: str
    version: int
    proposal: dict[str, Any]
    approver: str | None = None

    def detail(self) -> str:
        body: dict[str, Any] = {"event_id": self.event_id, **self.proposal}
        body["proposal_id"] = body.pop("id")
        if self.approver is not None:
            body["approver"] = self.approver
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def is_proposal_record(record: Mapping[str, Any]) -> bool:
    keys = (record.get("dynamodb") or {}).get("Keys") or {}
    return is_proposal_sort_key(str((keys.get("sk") or {}).get("S") or ""))


def proposal_events(record: Mapping[str, Any], *, position: int, source: str, bus_name: str) -> list[ChangeEvent]:
    """The lifecycle events of one proposal item's stream record (none when nothing of interest changed)."""
    ddb = record["dynamodb"]
    sequence_number = str(ddb["SequenceNumber"])
    old = proposal_of_item(image(ddb["OldImage"])) if "OldImage" in ddb else None
    if record.get("eventName") == "REMOVE":
        if old is None or old.status != "open":
            return []
        return [_event("ProposalExpired", old, sequence_number, position, source=source, bus_name=bus_name)]
    if "NewImage" not in ddb or "proposal_id" not in ddb["NewImage"]:
        return []
    new = proposal_of_item(image(ddb["NewImage"]))
    if old is None:
        return [_event("ProposalCreated", new, sequence_number, position, source=source, bus_name=bus_name)]
    events = [
        _event("ProposalApproved", new, sequence_number, position, source=source, bus_name=bus_name, approver=subject)
        for subject in sorted(set(new.approvers) - set(old.approvers))
    ]
    if old.status == "open" and new.status in _CLOSED_EVENTS:
        events.append(
            _event(_CLOSED_EVENTS[new.status], new, sequence_number, position, source=source, bus_name=bus_name)
        )
    return events


def _event(
    detail_type: str,
    proposal: Proposal,
    sequence_number: str,
    position: int,
    *,
    source: str,
    bus_name: str,
    approver: str | None = None,
) -> ChangeEvent:
    name = f"{proposal.key}\n{proposal.proposal_id}\n{detail_type}\n{approver or ''}"
    detail = ProposalChanged(
        detail_type=detail_type,
        event_id=str(uuid.uuid5(_EVENT_ID_NAMESPACE, name)),
        key=proposal.key,
        version=proposal.base_version,
        proposal=proposal.summary(),
        approver=approver,
    )
    entry: PutEventsRequestEntryTypeDef = {
        "Source": source,
        "DetailType": detail_type,
        "Detail": detail.detail(),
        "EventBusName": bus_name,
    }
    return ChangeEvent(sequence_number, position, detail, entry)
