"""Proposals of protected keys (approvals.md): `GET /state/{key}/proposals` (the open ones, a page at a time),
`GET /state/{key}/proposals/{id}` (with the resulting value and a JSON Patch diff), `POST .../approve` and
`POST .../reject` (state:approve on the key), `DELETE .../proposals/{id}` (the proposer withdraws). Reading
needs state:read on the key; a proposal is only ever found under its own key."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api.approvals import proposal_response
from state_core.domain.approvals import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, parse_decision_body, validate_proposal_id
from state_core.domain.codec import parse_json
from state_core.domain.errors import BadRequest
from state_core.domain.params import ascii_int
from state_core.observability import lambda_entry
from state_core.runtime import approvals, role_policy
from state_core.security import audit
from state_core.security.principal import APPROVE, READ, WRITE

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

router = APIGatewayHttpRouter()


def _proposal_id() -> str:
    return validate_proposal_id((router.current_event.path_parameters or {}).get("id"))


def _comment() -> str | None:
    event = router.current_event
    if not event.body:
        return None
    edge.require_content_type(event, edge.JSON_CONTENT_TYPE)
    return parse_decision_body(parse_json(edge.body_bytes(event)))


@router.get(
    "/state/<key>/proposals",
    summary="The key's open proposals, oldest first, a page at a time",
    responses=edge.documented(lambda doc: {200: doc.PROPOSAL_LIST_RESPONSE, **doc.error_responses(400, 403, 503)}),
)
def list_proposals(key: str) -> Response[str]:
    event = router.current_event
    audit.note_action("list_proposals")
    key = edge.request_key(event)
    raw_limit = edge.query_parameter(event, "limit")
    limit = DEFAULT_PAGE_SIZE if raw_limit is None else ascii_int(raw_limit, low=1, high=MAX_PAGE_SIZE)
    if limit is None:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    cursor = edge.query_parameter(event, "cursor")
    if cursor is not None:
        try:
            cursor = validate_proposal_id(cursor)
        except Exception:
            raise BadRequest("cursor is not one this listing gave") from None
    edge.authorized_principal(event, READ, key, role_policy)
    page, after = approvals().list_open(key, limit=limit, after=cursor)
    body = {"proposals": [proposal.summary() for proposal in page], "next_cursor": after}
    return edge.json_response(200, json.dumps(body, ensure_ascii=False))


@router.get(
    "/state/<key>/proposals/<id>",
    summary="A proposal with the value it would write and a JSON Patch (RFC 6902) against its base version",
    responses=edge.documented(
        lambda doc: {200: doc.PROPOSAL_REVIEW_RESPONSE, **doc.error_responses(400, 403, 404, 410, 503)}
    ),
)
def get_proposal(key: str, id: str) -> Response[str]:
    event = router.current_event
    audit.note_action("get_proposal")
    key = edge.request_key(event)
    proposal_id = _proposal_id()
    edge.authorized_principal(event, READ, key, role_policy)
    audit.note_proposal(proposal_id)
    proposal, base_value, base_is_current = approvals().review(key, proposal_id)
    value = json.loads(proposal.value.canonical()) if proposal.value is not None else None
    body: dict[str, Any] = {
        **proposal.summary(),
        "value": value,
        "patch": json.loads(proposal.patch) if proposal.patch is not None else None,
        "diff": _diff(base_value, value, proposal.op) if base_is_current and proposal.status == "open" else None,
    }
    return proposal_response(200, proposal, body=body)


def _diff(base: Any, result: Any, op: str) -> list[dict[str, Any]]:
    """RFC 6902 operations from the base value to the result (the root replaced when either is absent)."""
    if op == "delete":
        return [{"op": "remove", "path": ""}]
    if base is None:
        return [{"op": "add", "path": "", "value": result}]
    # Only reviewing needs it: its import stays out of every other route's cold start.
    import jsonpatch

    operations: list[dict[str, Any]] = jsonpatch.make_patch(base, result).patch
    return operations


@router.post(
    "/state/<key>/proposals/<id>/approve",
    summary="Approve a proposal; the approval that reaches its threshold applies it",
    responses=edge.documented(
        lambda doc: {200: doc.PROPOSAL_RESPONSE, **doc.error_responses(400, 403, 404, 409, 410, 415, 503)}
    ),
)
def approve(key: str, id: str) -> Response[str]:
    event = router.current_event
    audit.note_action("approve")
    key = edge.request_key(event)
    proposal_id = _proposal_id()
    comment = _comment()
    principal = edge.authorized_principal(event, APPROVE, key, role_policy)
    audit.note_proposal(proposal_id)
    proposal, applied_here = approvals().approve(key, proposal_id, principal.subject, comment)
    if applied_here:
        audit.note_proposal(proposal_id, proposal.applied_version)
    return proposal_response(200, proposal)


@router.post(
    "/state/<key>/proposals/<id>/reject",
    summary="Reject a proposal (closes it)",
    responses=edge.documented(
        lambda doc: {200: doc.PROPOSAL_RESPONSE, **doc.error_responses(400, 403, 404, 409, 410, 415, 503)}
    ),
)
def reject(key: str, id: str) -> Response[str]:
    event = router.current_event
    audit.note_action("reject")
    key = edge.request_key(event)
    proposal_id = _proposal_id()
    comment = _comment()
    principal = edge.authorized_principal(event, APPROVE, key, role_policy)
    audit.note_proposal(proposal_id)
    return proposal_response(200, approvals().reject(key, proposal_id, principal.subject, comment))


@router.delete(
    "/state/<key>/proposals/<id>",
    summary="Withdraw a proposal (its proposer only)",
    responses=edge.documented(
        lambda doc: {200: doc.PROPOSAL_RESPONSE, **doc.error_responses(400, 403, 404, 409, 410, 503)}
    ),
)
def withdraw(key: str, id: str) -> Response[str]:
    event = router.current_event
    audit.note_action("withdraw")
    key = edge.request_key(event)
    proposal_id = _proposal_id()
    principal = edge.authorized_principal(event, WRITE, key, role_policy)
    audit.note_proposal(proposal_id)
    return proposal_response(200, approvals().withdraw(key, proposal_id, principal.subject))


app = edge.build_resolver(router)


@lambda_entry("approvals")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
