"""The approvals' edge (approvals.md): a write route's turn into a proposal when its key is protected, and the
proposals' answers. Whether a key is protected is a look at the role policy in memory: an unprotected key's
write costs nothing more, and this module's service is imported only for a protected one."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response

from state_core.api import edge
from state_core.security import audit
from state_core.security.principal import OVERRIDE

if TYPE_CHECKING:
    from state_core.domain.approvals import Proposal, ProposalOp
    from state_core.security.policy import RolePolicy
    from state_core.security.principal import Principal
    from state_core.service.approvals import Approvals
    from state_core.service.manager import Expectation


def propose_if_protected(  # noqa: PLR0913  the write's parts, keyword-only
    key: str,
    op: ProposalOp,
    principal: Principal,
    policy: RolePolicy,
    approvals: Callable[[], Approvals],
    *,
    expect: Expectation,
    value: Any = None,
    patch: Any = None,
    ttl_seconds: int | None = None,
) -> Response[str] | None:
    """202 with the proposal when `key` is protected and the caller has no break-glass grant on it; None when
    the write goes ahead as usual (unprotected, or an audited override)."""
    rule = policy.approval_rule(key)
    if rule is None:
        return None
    if principal.allows(OVERRIDE, key, policy):
        edge.note_override([key])
        return None
    audit.note_action("propose")
    proposal = approvals().propose(
        key,
        op,
        rule=rule,
        proposer=principal.subject,
        value=value,
        patch=patch,
        ttl_seconds=ttl_seconds,
        expect=expect,
    )
    audit.note_proposal(proposal.proposal_id)
    return proposal_response(202, proposal, location=True)


def proposal_response(
    status: int, proposal: Proposal, *, location: bool = False, body: dict[str, Any] | None = None
) -> Response[str]:
    # No ETag: the proposal is not a version of the key (its base_version says which one it is bound to).
    headers = {"Location": proposal.location} if location else {}
    return Response(
        status_code=status,
        content_type=edge.JSON_CONTENT_TYPE,
        body=json.dumps(body if body is not None else proposal.summary(), ensure_ascii=False),
        headers=headers,
    )
