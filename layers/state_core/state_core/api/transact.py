"""The transaction route's edge: authorizing every operation, answering an outcome (first or replayed)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aws_lambda_powertools.event_handler import Response

from state_core.api import edge
from state_core.domain.approvals import ApprovalRequired
from state_core.domain.errors import Forbidden
from state_core.domain.transactions import Outcome, Transaction, TransactionPreconditionFailed, TransactionResult
from state_core.observability import metrics
from state_core.security import audit
from state_core.security.principal import OVERRIDE, READ, WRITE, Principal, authorize

if TYPE_CHECKING:
    from state_core.security.policy import RolePolicy

# Says that the answer is the first outcome of an earlier request with the same Idempotency-Key.
REPLAYED_HEADER = "Idempotent-Replayed"


def authorize_all(principal: Principal, transaction: Transaction, policy: RolePolicy) -> None:
    """state:write on every key the transaction writes, state:read on every key it checks; any denial refuses
    the whole request before anything is read, so the answer says nothing about which keys exist."""
    for operation in transaction.operations:
        try:
            authorize(principal, WRITE if operation.writes else READ, operation.key, policy)
        except Forbidden:
            metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
            raise Forbidden(
                f"operations[{operation.index}]: {WRITE if operation.writes else READ} is not granted on key"
                f" {operation.key}; nothing was read or written"
            ) from None
    # A transaction cannot become a proposal (its other keys would wait on it): a protected key in it is refused
    # unless the caller holds the break-glass permission on it, which is audited as an override.
    protected = [op for op in transaction.operations if op.writes and policy.approval_rule(op.key) is not None]
    refused = [op.key for op in protected if not principal.allows(OVERRIDE, op.key, policy)]
    if refused:
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        raise ApprovalRequired(
            f"{', '.join(refused[:5])}{' and more' if len(refused) > 5 else ''}: a change of a protected key needs"
            " approval and cannot be part of a transaction; write it on its own (PUT, PATCH or DELETE) to propose"
            " it; nothing was read or written",
            refused,
        )
    if protected:
        edge.note_override([op.key for op in protected])
        return
    audit.note_decision("allow")


def render(answer: TransactionResult | TransactionPreconditionFailed) -> Outcome:
    """The outcome as the client gets it, and as an Idempotency-Key remembers it (no value is in either)."""
    if isinstance(answer, TransactionResult):
        return Outcome(200, json.dumps(answer.body(), separators=(",", ":"), ensure_ascii=False))
    return Outcome(answer.status, edge.problem(answer).body or "")


def response(outcome: Outcome) -> Response[str]:
    headers = {REPLAYED_HEADER: "true"} if outcome.replayed else {}
    audit.note_replayed(outcome.replayed)
    content_type = edge.JSON_CONTENT_TYPE if outcome.status < 400 else edge.PROBLEM_CONTENT_TYPE
    if outcome.status == 200:
        audit.note_transaction(audit_keys_of(outcome), json.loads(outcome.body).get("transaction_id"))
    return Response(status_code=outcome.status, content_type=content_type, body=outcome.body, headers=headers)


def audit_keys_of(outcome: Outcome) -> list[dict[str, object]]:
    return [{"op": r["op"], "key": r["key"], "version": r["version"]} for r in json.loads(outcome.body)["results"]]
