"""PATCH /state/{key}: JSON Merge Patch (RFC 7396) of a key's value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api.approvals import propose_if_protected
from state_core.domain.codec import parse_json
from state_core.observability import lambda_entry
from state_core.runtime import approvals, role_policy, state_manager
from state_core.security.principal import WRITE

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

router = APIGatewayHttpRouter()


@router.patch(
    "/state/<key>",
    summary="Merge-patch a key's value (RFC 7396)",
    responses=edge.documented(
        lambda doc: {
            200: doc.ENVELOPE_RESPONSE,
            202: doc.PROPOSAL_CREATED_RESPONSE,
            **doc.error_responses(400, 403, 404, 412, 413, 415, 422, 503),
        }
    ),
)
def patch_state(key: str) -> Response[str]:
    event = router.current_event
    key = edge.request_key(event)
    principal = edge.authorized_principal(event, WRITE, key, role_policy)
    expect = edge.expectation(event, allow_if_none_match=False)
    edge.require_content_type(event, edge.MERGE_PATCH_CONTENT_TYPE, edge.JSON_CONTENT_TYPE)
    patch = parse_json(edge.body_bytes(event))
    proposed = propose_if_protected(key, "patch", principal, role_policy(), approvals, expect=expect, patch=patch)
    if proposed is not None:
        return proposed
    result, merged = state_manager().patch(key, patch, actor=principal.subject, expect=expect)
    return edge.state_response(200, result.record, merged)


app = edge.build_resolver(router)


@lambda_entry("patch")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
