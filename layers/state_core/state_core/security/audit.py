"""The audit trail: one structured record for every request that reaches a state handler.

Records go through their own Powertools Logger (service `state-service-audit`), so they can be told apart
from diagnostics by one field (`{ $.service = "state-service-audit" }` in a subscription or metric filter;
the record itself is the `audit` member, e.g. `{ $.audit.decision = "deny" }`)
and are written whatever the functions' log level. `observability.lambda_entry` emits the record after
the handler answered: it sees the event (who, which key) and the response (status, ETag = version); the
handler's authorization step notes its decision here, and a handler that serves more than one kind of
request under one operation (`get`: the current state, an old version, the history) notes which one.
A record never holds a value or a token: only the subject, the action, the key (a listing: its prefix; a bulk
read: each key with its own status and version), the decision, the status and the version.

Requests that API Gateway answers itself (no token, rejected or cached-rejected token, unmatched route)
never reach a handler; the HTTP API's access log (template.yaml, `StateApi` AccessLogSettings) covers them.
"""

from __future__ import annotations

from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from aws_lambda_powertools import Logger

from state_core.domain.errors import InvalidKey
from state_core.domain.keys import validate_key
from state_core.domain.params import ETAG

AUDIT_SERVICE = "state-service-audit"
# The permission each audited action needs; operations not listed here (the authorizer) are not audited.
PERMISSIONS = {
    "get": "state:read",
    "get_version": "state:read",
    "list_history": "state:read",
    "put": "state:write",
    "patch": "state:write",
    "delete": "state:write",
    "list": "state:read",
    "batch_get": "state:read",
    # A transaction needs state:write on every key it writes and state:read on every key it only checks.
    "transact": "state:write",
    # The schema registry's function: publishing needs state:schema, reading a schema state:read.
    "schemas": "state:schema",
    "publish_schema": "state:schema",
    "get_schema": "state:read",
    "list_schemas": "state:read",
    "get_schema_check": "state:schema",
    # Change approvals (approvals.md): a write of a protected key becomes a proposal; deciding needs state:approve.
    "approvals": "state:approve",
    "propose": "state:write",
    "list_proposals": "state:read",
    "get_proposal": "state:read",
    "approve": "state:approve",
    "reject": "state:approve",
    "withdraw": "state:write",
    "apply_proposal": "state:approve",
}
Action = Literal[
    "get",
    "get_version",
    "list_history",
    "put",
    "patch",
    "delete",
    "list",
    "batch_get",
    "transact",
    "publish_schema",
    "get_schema",
    "list_schemas",
    "get_schema_check",
    "propose",
    "list_proposals",
    "get_proposal",
    "approve",
    "reject",
    "withdraw",
    "apply_proposal",
]

# `override`: a protected key written directly under state:write:override (break glass), never by a proposal.
Decision = Literal["allow", "deny", "override"]

# Level fixed at INFO: an audit trail must not vanish when someone turns POWERTOOLS_LOG_LEVEL to WARNING.
audit_logger = Logger(service=AUDIT_SERVICE, level="INFO")

_decision: ContextVar[Decision | None] = ContextVar("audit_decision", default=None)
_action: ContextVar[Action | None] = ContextVar("audit_action", default=None)
_prefix: ContextVar[str | None] = ContextVar("audit_prefix", default=None)
_items: ContextVar[list[dict[str, Any]] | None] = ContextVar("audit_items", default=None)
_transaction_id: ContextVar[str | None] = ContextVar("audit_transaction_id", default=None)
_replayed: ContextVar[bool | None] = ContextVar("audit_replayed", default=None)
_proposal: ContextVar[tuple[str, int | None] | None] = ContextVar("audit_proposal", default=None)


def begin() -> None:
    """Start a request: no decision yet, and the action is the operation's until a handler says otherwise."""
    _decision.set(None)
    _action.set(None)
    _prefix.set(None)
    _items.set(None)
    _transaction_id.set(None)
    _replayed.set(None)
    _proposal.set(None)


def note_proposal(proposal_id: str, applied_version: int | None = None) -> None:
    """The proposal this request created or decided; `applied_version` when the request applied it, which
    adds an `apply_proposal` record of its own to the request's."""
    _proposal.set((proposal_id, applied_version))


def note_transaction(operations: list[dict[str, Any]], transaction_id: str | None = None) -> None:
    """A transaction's operations, `{op, key}` each (once applied with each key's new `version`), in request
    order, and once it has one its id; never a value."""
    _items.set(operations)
    if transaction_id is not None:
        _transaction_id.set(transaction_id)


def note_replayed(replayed: bool) -> None:
    """Whether a transaction's answer is the first outcome of an earlier request under its Idempotency-Key:
    then this request applied nothing, and the transaction's own record is the earlier request's."""
    _replayed.set(replayed)


def note_action(action: Action) -> None:
    """What this request does, when its operation covers more than one action (`get_version` under `get`)."""
    _action.set(action)


def note_prefix(prefix: str) -> None:
    """The validated prefix a listing read (an invalid one is never noted: it could be anything)."""
    _prefix.set(prefix)


def note_items(items: list[dict[str, Any]]) -> None:
    """The per-key outcomes of a bulk read: `{key, status, version}` each, in request order; never a value."""
    _items.set(items)


def note_decision(decision: Decision) -> None:
    """The authorization decision for this request (set by `api.edge.authorized_principal`)."""
    _decision.set(decision)


def _version(response: Any) -> int | None:
    headers = response.get("headers") if isinstance(response, dict) else None
    for name, value in (headers or {}).items():
        if name.lower() == "etag" and isinstance(value, str):
            match = ETAG.match(value)
            return int(match.group(2)) if match else None
    return None


def _valid_key(raw_key: Any) -> str | None:
    try:
        return validate_key(raw_key)
    except InvalidKey:
        return None


def record(operation: str, event: dict[str, Any], response: Any, status: int | None = None) -> dict[str, Any]:
    """The audit record of one request: built from the event and the response, never from a body."""
    context = event.get("requestContext") or {}
    authorizer = (context.get("authorizer") or {}).get("lambda") or {}
    subject = authorizer.get("sub")
    raw_key = (event.get("pathParameters") or {}).get("key")
    if status is None and isinstance(response, dict) and isinstance(response.get("statusCode"), int):
        status = response["statusCode"]
    action = _action.get() or operation
    decision = _decision.get()
    proposal = _proposal.get()
    if decision is None and status in (401, 403):
        decision = "deny"  # refused before the decision was noted (no authorizer context)
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "request_id": context.get("requestId"),
        "subject": subject if isinstance(subject, str) else None,
        "action": action,
        "permission": PERMISSIONS.get(action),
        # Only a valid key is written: an invalid one (400 before any I/O) could be anything.
        "key": _valid_key(raw_key),
        # A listing's (validated) prefix; None for every other action.
        "prefix": _prefix.get(),
        # A bulk read's keys with their own outcomes, or a transaction's operations; None for every other action.
        "items": _items.get(),
        # A transaction's id, once it has one; None for every other action.
        "transaction_id": _transaction_id.get(),
        # A transaction's answer: true when it replayed an earlier request's outcome; None for every other action.
        "replayed": _replayed.get(),
        # The proposal a request created or decided (approvals.md); None for every other action.
        "proposal_id": proposal[0] if proposal is not None else None,
        "decision": decision,
        "status": status,
        "version": _version(response),
        "source_ip": (context.get("http") or {}).get("sourceIp"),
    }


def emit(operation: str, event: dict[str, Any], response: Any, status: int | None = None) -> None:
    """Write the audit record for a state operation (no-op for operations that are not audited)."""
    if operation in PERMISSIONS:
        # Nested: Powertools drops top-level keys whose value is None, and every field is always present.
        audit_logger.info("audit", extra={"audit": record(operation, event, response, status)})
        proposal = _proposal.get()
        if proposal is not None and proposal[1] is not None:
            # The application is a change of its own: one more record, in the proposal's name.
            applied = record(operation, event, response, status)
            applied.update(
                {"action": "apply_proposal", "permission": PERMISSIONS["apply_proposal"], "version": proposal[1]}
            )
            audit_logger.info("audit", extra={"audit": applied})


WatchAction = Literal["watch_connect", "watch_subscribe", "watch_unsubscribe", "watch_refresh", "watch_message"]


def emit_watch(
    action: WatchAction,
    event: dict[str, Any],
    *,
    subject: str | None,
    status: int,
    key: str | None = None,
    prefix: str | None = None,
) -> None:
    """The audit record of one WebSocket request (a connect or a message): who, which key or prefix, the
    decision and the status. Never the message body nor the token."""
    context = event.get("requestContext") or {}
    decision: Decision | None = "deny" if status in (401, 403) else ("allow" if status < 400 else None)
    audit_logger.info(
        "audit",
        extra={
            "audit": {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "request_id": context.get("requestId"),
                "connection_id": context.get("connectionId"),
                "subject": subject,
                "action": action,
                "permission": None if action in ("watch_connect", "watch_refresh") else "state:read",
                "key": _valid_key(key),
                "prefix": _valid_key(prefix),
                "decision": decision,
                "status": status,
                "source_ip": (context.get("identity") or {}).get("sourceIp"),
            }
        },
    )
