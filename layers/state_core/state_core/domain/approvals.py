"""Change approvals: a proposed change of a protected key, its states, and the errors its routes answer.
No I/O here (approvals.md has the rules).

A proposal moves from `open` to exactly one of `applied`, `rejected`, `withdrawn`, `expired` or `stale`, each
move a conditional write on `status = open`, so two deciders can never both close it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from state_core.domain.codec import StoredValue
from state_core.domain.errors import BadRequest, Conflict, Forbidden, Gone, NotFound
from state_core.domain.records import SchemaStamp, rfc3339

if TYPE_CHECKING:
    from state_core.domain.records import StateRecord
    from state_core.domain.transactions import PlannedOperation

ProposalOp = Literal["put", "patch", "delete"]
Status = Literal["open", "applied", "rejected", "withdrawn", "expired", "stale"]
STATUSES: tuple[Status, ...] = ("open", "applied", "rejected", "withdrawn", "expired", "stale")

# Time-ordered (milliseconds, 12 hex digits) then random (64 bits): listings come in the order proposed, and
# an id cannot be guessed.
PROPOSAL_ID = re.compile(r"[0-9a-f]{28}\Z")
# A decision's comment: shown to reviewers, never logged.
MAX_COMMENT_CHARACTERS = 1000
# A proposal item holds the resulting value and a patch's own text: together they must fit the item (400 KB)
# with room for the rest, the inline limit of a state item (a proposal never writes a large value's blob).
MAX_PROPOSAL_STORED_BYTES = 350_000
# A closed proposal stays readable this long after its expiry, then DynamoDB's TTL removes it.
RETENTION_AFTER_EXPIRY_SECONDS = 30 * 86_400
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class ProposalClosedError(Exception):
    """A conditional move of a proposal found it not open any more, expired, or not the caller's to make (an
    approver already counted, the proposer approving): the caller reads the proposal to tell which."""


def new_proposal_id(now: datetime) -> str:
    return f"{int(now.timestamp() * 1000):012x}{secrets.token_hex(8)}"


def validate_proposal_id(raw: str | None) -> str:
    if raw is None or PROPOSAL_ID.match(raw) is None:
        raise NotFound("no such proposal")
    return raw


@dataclass(frozen=True, slots=True)
class Proposal:
    """One proposed change of `key`: `value` is the value it would write (put and patch, the patch merged into
    the base version), `patch` a patch's own canonical JSON; `base_version` 0 means the key was never written."""

    key: str
    proposal_id: str
    op: ProposalOp
    status: Status
    proposer: str
    created_at: str
    expires_at: float
    base_version: int
    required: int
    approvers: tuple[str, ...] = ()
    value: StoredValue | None = None
    patch: bytes | None = None
    ttl_seconds: int | None = None
    decided_by: str | None = None
    decided_at: str | None = None
    comment: str | None = None
    applied_version: int | None = None
    current_version: int | None = None
    approval_comments: dict[str, str] = field(default_factory=dict)
    # The value schema the value was checked against when proposed: the applied version carries it.
    schema: SchemaStamp | None = None

    def is_expired(self, now: datetime) -> bool:
        return self.status == "expired" or (self.status == "open" and self.expires_at <= now.timestamp())

    @property
    def location(self) -> str:
        return f"/state/{self.key}/proposals/{self.proposal_id}"

    def summary(self) -> dict[str, Any]:
        """The proposal as the routes show it, without its value."""
        return {
            "id": self.proposal_id,
            "key": self.key,
            "operation": self.op,
            "status": self.status,
            "proposer": self.proposer,
            "created_at": self.created_at,
            "expires_at": rfc3339(datetime.fromtimestamp(self.expires_at, UTC)),
            "base_version": self.base_version,
            "approvals_required": self.required,
            "approved_by": sorted(self.approvers),
            "approval_comments": dict(sorted(self.approval_comments.items())),
            "ttl_seconds": self.ttl_seconds,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "comment": self.comment,
            "applied_version": self.applied_version,
            "current_version": self.current_version,
        }


def parse_decision_body(data: Any) -> str | None:
    """An approval's or rejection's body: nothing, or `{"comment": "<text>"}`. 400 for anything else."""
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) - {"comment"}:
        raise BadRequest('the body must be empty or a JSON object with one member, "comment"')
    comment = data.get("comment")
    if comment is None:
        return None
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARACTERS:
        raise BadRequest(f"comment must be a string of at most {MAX_COMMENT_CHARACTERS} characters")
    return comment


class ApprovalRequired(Forbidden):
    """A protected key in a request that cannot become a proposal (a transaction)."""

    title, slug = "Approval required", "approval-required"

    def __init__(self, detail: str, keys: list[str]) -> None:
        super().__init__(detail)
        self.keys = keys

    def extensions(self) -> dict[str, Any]:
        return {"protected_keys": self.keys}


class SelfApproval(Forbidden):
    title, slug = "Self-approval refused", "self-approval"


class ProposalExpired(Gone):
    title, slug = "Proposal expired", "proposal-expired"


class ProposalClosed(Conflict):
    """The proposal is no longer open: it names how it was closed."""

    title, slug = "Proposal closed", "proposal-closed"

    def __init__(self, proposal: Proposal) -> None:
        super().__init__(f"proposal {proposal.proposal_id} is {proposal.status}")
        self.proposal = proposal

    def extensions(self) -> dict[str, Any]:
        return {"proposal": self.proposal.summary()}


class ProposalStale(Conflict):
    """The key moved on from the proposal's base version: nothing was written."""

    title, slug = "Proposal stale", "proposal-stale"

    def __init__(self, proposal: Proposal, current_version: int | None) -> None:
        super().__init__(
            f"key {proposal.key} is at version {current_version or 0}, not the proposal's base version"
            f" {proposal.base_version}; nothing was written"
        )
        self.proposal = proposal
        self.current_version = current_version

    def extensions(self) -> dict[str, Any]:
        return {"current_version": self.current_version, "proposal": self.proposal.summary()}


class ProposalWrites(Protocol):
    """The proposals' table (storage.approvals.ProposalStore)."""

    def create(self, proposal: Proposal) -> None: ...
    def get(self, key: str, proposal_id: str) -> Proposal | None: ...
    def list_open(
        self, key: str, *, now: datetime, limit: int, after: str | None
    ) -> tuple[list[Proposal], str | None]: ...
    def approve(self, key: str, proposal_id: str, approver: str, now: datetime, comment: str | None) -> Proposal: ...
    def close(
        self,
        key: str,
        proposal_id: str,
        status: Status,
        *,
        now: datetime,
        by: str | None,
        comment: str | None = None,
        current_version: int | None = None,
        proposer: str | None = None,
    ) -> Proposal: ...
    def apply(
        self, proposal: Proposal, step: PlannedOperation, *, now: datetime, attempt: int
    ) -> StateRecord | None: ...
