"""DELETE /state/{key}: delete a key, leaving a tombstone that keeps its version count."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api.approvals import propose_if_protected
from state_core.observability import lambda_entry
from state_core.runtime import approvals, role_policy, state_manager
from state_core.security.principal import WRITE

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

router = APIGatewayHttpRouter()


@router.delete(
    "/state/<key>",
    summary="Delete a key",
    responses=edge.documented(
        lambda doc: {
            204: {"description": "Deleted; the ETag names the tombstone's version", "headers": doc.ETAG_HEADER},
            202: doc.PROPOSAL_CREATED_RESPONSE,
            **doc.error_responses(400, 403, 404, 412, 503),
        }
    ),
)
def delete_state(key: str) -> Response[str]:
    event = router.current_event
    key = edge.request_key(event)
    principal = edge.authorized_principal(event, WRITE, key, role_policy)
    expect = edge.expectation(event, allow_if_none_match=False)
    proposed = propose_if_protected(key, "delete", principal, role_policy(), approvals, expect=expect)
    if proposed is not None:
        return proposed
    tombstone = state_manager().delete(key, actor=principal.subject, expect=expect)
    return Response(status_code=204, headers={"ETag": edge.etag(tombstone.version)})


app = edge.build_resolver(router)


@lambda_entry("delete")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
