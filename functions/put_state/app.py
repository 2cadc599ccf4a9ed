"""PUT /state/{key}: create or replace a key's value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api.approvals import propose_if_protected
from state_core.api.bodies import parse_put_body
from state_core.domain.codec import parse_json
from state_core.observability import lambda_entry
from state_core.runtime import approvals, role_policy, state_manager
from state_core.security.principal import WRITE

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

router = APIGatewayHttpRouter()


@router.put(
    "/state/<key>",
    summary="Create or replace a key's value",
    responses=edge.documented(
        lambda doc: {
            200: doc.METADATA_RESPONSE,
            201: {**doc.METADATA_RESPONSE, "description": "Created"},
            202: doc.PROPOSAL_CREATED_RESPONSE,
            **doc.error_responses(400, 403, 404, 412, 413, 415, 422, 503),
        }
    ),
)
def put_state(key: str) -> Response[str]:
    event = router.current_event
    key = edge.request_key(event)
    principal = edge.authorized_principal(event, WRITE, key, role_policy)
    expect = edge.expectation(event, allow_if_none_match=True)
    edge.require_content_type(event, edge.JSON_CONTENT_TYPE)
    request = parse_put_body(parse_json(edge.body_bytes(event)))
    proposed = propose_if_protected(
        key,
        "put",
        principal,
        role_policy(),
        approvals,
        expect=expect,
        value=request.value,
        ttl_seconds=request.ttl_seconds,
    )
    if proposed is not None:
        return proposed
    result = state_manager().put(
        key, request.value, actor=principal.subject, ttl_seconds=request.ttl_seconds, expect=expect
    )
    return edge.state_response(201 if result.created else 200, result.record, None)


app = edge.build_resolver(router)


@lambda_entry("put")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
