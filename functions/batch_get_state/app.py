"""POST /state:batchGet: read up to 100 keys in one request, each answered as a single GET would answer it
(its envelope, or its own 403 or 404), in request order; with `"snapshot": true`, all of them as of one point
in time. A function of its own: a read-only role like GET's, and a request that can run longer and answer more."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api.batch import BatchItem, batch_get_body, parse_batch_get_body
from state_core.domain.codec import parse_json
from state_core.domain.errors import CorruptStoredValue, Forbidden, StateError
from state_core.observability import lambda_entry, logger, metrics
from state_core.runtime import role_policy, state_manager
from state_core.security import audit
from state_core.security.principal import READ

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from state_core.service.manager import StateView

router = APIGatewayHttpRouter()

# The OpenAPI document's description of the route (docs/api.md, "Bulk reads", has the whole contract).
DESCRIPTION = """Each key is answered as `GET /state/{key}` would answer it, in request order, with its own status
(200 with its envelope, 403, 404); the request is 200 whenever its body is valid. A key the caller may not read
is a 403 item whether or not it exists. `"snapshot": true` reads all the keys at one point in time
(TransactGetItems), never from the cache.

```sh
curl -s -X POST "$API/state:batchGet" -H "Authorization: Bearer $TOKEN" \\
     -H 'Content-Type: application/json' -d '{"keys": ["order:1001", "inventory:sku-7"], "snapshot": true}'
```"""


@router.post(
    "/state:batchGet",
    summary="Read up to 100 keys at once, each as GET would, or all as of one point in time (snapshot)",
    description=DESCRIPTION,
    responses=edge.documented(
        lambda doc: {200: doc.BATCH_GET_RESPONSE, **doc.error_responses(400, 403, 413, 415, 503)}
    ),
)
def batch_get() -> Response[str]:
    event = router.current_event
    # The body is checked before anyone is authorized or anything read: a malformed one is a 400 either way.
    edge.require_content_type(event, edge.JSON_CONTENT_TYPE)
    request = parse_batch_get_body(parse_json(edge.body_bytes(event)))
    principal, policy = edge.authenticated_principal(event, role_policy)
    # A key the caller may not read is never read: its 403 is the same whether or not it exists.
    allowed = [key for key in request.keys if principal.allows(READ, key, policy)]
    answers: dict[str, StateView | StateError] = {}
    if allowed:
        audit.note_decision("allow")
        views = state_manager().get_many(allowed, consistent=request.consistent, snapshot=request.snapshot)
        answers.update(zip(allowed, views, strict=True))
    denied = len(request.keys) - len(allowed)
    if denied:
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=denied)
    items = [
        BatchItem(key, answers[key] if key in answers else Forbidden(f"{READ} is not granted on key {key}"))
        for key in request.keys
    ]
    for item in items:
        if isinstance(item.answer, CorruptStoredValue):
            logger.error("stored value unreadable", extra={"key": item.key, "reason": item.answer.detail})
            metrics.add_metric(name="CorruptStoredValues", unit="Count", value=1)
    answer = batch_get_body(items, snapshot=request.snapshot)
    audit.note_items(answer.outcomes)
    metrics.add_metric(name="BatchGetKeys", unit="Count", value=len(items))
    if answer.omitted:
        metrics.add_metric(name="BatchGetValuesOmitted", unit="Count", value=answer.omitted)
    return edge.json_response(200, answer.body)


app = edge.build_resolver(router)


@lambda_entry("batch_get")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
