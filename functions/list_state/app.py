"""GET /state?prefix=P&limit=&cursor=&include=value: list the keys under a prefix that the caller may read.

A function of its own (one per operation): its role may query the listing index, read the table's state
items for include=value, and read the listing cursors' signing key; it needs no Redis and runs outside any
VPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api.listing import include_values, list_limit, list_page_body, list_prefix
from state_core.domain.errors import Forbidden
from state_core.observability import lambda_entry, logger, metrics
from state_core.runtime import key_lister, role_policy
from state_core.security import audit
from state_core.security.principal import READ

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

router = APIGatewayHttpRouter()


@router.get(
    "/state",
    summary="List the keys under a prefix that the caller may read, in key order",
    responses=edge.documented(lambda doc: {200: doc.LIST_RESPONSE, **doc.error_responses(400, 403, 503)}),
)
def list_state() -> Response[str]:
    event = router.current_event
    # Every parameter is checked before anything is read or decided: a malformed one is a 400 either way.
    prefix = list_prefix(edge.query_parameter(event, "prefix"))
    audit.note_prefix(prefix)
    logger.append_keys(prefix=prefix)
    limit = list_limit(edge.query_parameter(event, "limit"))
    with_values = include_values(edge.query_parameter(event, "include"))
    cursor = edge.query_parameter(event, "cursor")
    principal, policy = edge.authenticated_principal(event, role_policy)
    ranges = principal.ranges_under(READ, prefix, policy)
    if not ranges:
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        raise Forbidden(f"{READ} is not granted on any key under prefix {prefix!r}")
    audit.note_decision("allow")
    page = key_lister().page(
        subject=principal.subject,
        prefix=prefix,
        ranges=ranges,
        allows=lambda key: principal.allows(READ, key, policy),
        limit=limit,
        cursor=cursor,
        include_values=with_values,
    )
    return edge.json_response(200, list_page_body(page))


app = edge.build_resolver(router)


@lambda_entry("list")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
