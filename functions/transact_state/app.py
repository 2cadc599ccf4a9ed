"""POST /state:transact: up to 25 puts, patches, deletes and checks on distinct keys, all or nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api import transact as edge_transact
from state_core.domain.codec import parse_json
from state_core.domain.transactions import idempotency_key, idempotency_partition, parse_transaction
from state_core.observability import lambda_entry
from state_core.runtime import role_policy, transactions
from state_core.security import audit

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

router = APIGatewayHttpRouter()

# The OpenAPI document's description of the route (docs/api.md, "Transactions", has the whole contract).
DESCRIPTION = """Applied all or nothing in one DynamoDB TransactWriteItems: 200 lists each key's new version, 412
names every operation whose condition failed with the key's current version (nothing written). Under an
`Idempotency-Key`, a retry within 10 minutes answers the first outcome (`Idempotent-Replayed: true`).

```sh
curl -si -X POST "$API/state:transact" -H "Authorization: Bearer $TOKEN" \\
     -H 'Content-Type: application/json' -H 'Idempotency-Key: order-1042' -d '{"operations": [
       {"op": "check", "key": "customer:42", "if_match": 3},
       {"op": "put", "key": "order:1042", "value": {"sku": "A-1", "qty": 2}, "if_none_match": "*"},
       {"op": "patch", "key": "inventory:A-1", "patch": {"reserved": 2}}]}'
```"""


@router.post(
    "/state:transact",
    summary="Apply up to 25 operations on distinct keys, all or nothing",
    description=DESCRIPTION,
    responses=edge.documented(
        lambda doc: {200: doc.TRANSACTION_RESPONSE, **doc.error_responses(400, 403, 412, 413, 415, 422, 503)}
    ),
)
def transact_state() -> Response[str]:
    event = router.current_event
    principal, policy = edge.authenticated_principal(event, role_policy)
    edge.require_content_type(event, edge.JSON_CONTENT_TYPE)
    token = idempotency_key(event.headers.get("idempotency-key"))
    transaction = parse_transaction(parse_json(edge.body_bytes(event)))
    audit.note_transaction([{"op": op.op, "key": op.key} for op in transaction.operations])
    edge_transact.authorize_all(principal, transaction, policy)
    outcome = transactions().transact(
        transaction,
        actor=principal.subject,
        render=edge_transact.render,
        idempotency_partition=None if token is None else idempotency_partition(principal.subject, token),
    )
    return edge_transact.response(outcome)


app = edge.build_resolver(router)


@lambda_entry("transact")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
