"""Change approvals (approvals.md): a write to a protected key becomes a proposal bound to the key's version
at that time, and it is applied only when enough other subjects approved it, against exactly that version.

- **Proposing** reads the key (strongly consistent), checks the write's conditions and value rules as the
  write itself would, and stores the proposal with the value it would write; nothing else changes.
- **Approving** is one conditional update: the proposal open and unexpired, the approver neither its
  proposer nor already counted. A replayed approval finds itself counted and changes nothing.
- **Applying**, by whichever approval finds the threshold reached: one TransactWriteItems of the key's next
  version, conditioned on the base version, and the proposal's `applied`, conditioned on it still being open.
  So of any number of concurrent final approvals exactly one applies; the others find it applied. A key
  that moved on makes the proposal `stale` (409), and nothing is written.
- **Expiry** is decided at read time (`expires_at`); the first access after it records `expired` (410).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from state_core.domain.approvals import (
    DEFAULT_PAGE_SIZE,
    MAX_PROPOSAL_STORED_BYTES,
    Proposal,
    ProposalClosed,
    ProposalClosedError,
    ProposalExpired,
    ProposalOp,
    ProposalStale,
    ProposalWrites,
    SelfApproval,
    new_proposal_id,
)
from state_core.domain.codec import canonical_json, check_depth
from state_core.domain.errors import (
    Forbidden,
    NotFound,
    OutcomeUnknown,
    PayloadTooLarge,
    PreconditionFailed,
    ServiceUnavailable,
)
from state_core.domain.merge_patch import apply_merge_patch
from state_core.domain.records import rfc3339
from state_core.domain.transactions import Operation, PlannedOperation, TransactionConflict
from state_core.service.manager import Expectation, PatchPolicy, StateManager

if TYPE_CHECKING:
    from state_core.domain.codec import StoredValue
    from state_core.domain.ports import MetricsSink, StateReads
    from state_core.domain.records import StateRecord
    from state_core.security.policy import ApprovalRule


class Approvals:
    """Proposals of protected keys; `manager` lends the single-key writes' value rules, expiry and cache steps."""

    def __init__(  # noqa: PLR0913  one collaborator each, keyword-only
        self,
        proposals: ProposalWrites,
        states: StateReads,
        manager: StateManager,
        *,
        clock: Callable[[], datetime],
        metrics: MetricsSink,
        policy: PatchPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._proposals = proposals
        self._states = states
        self._manager = manager
        self._clock = clock
        self._metrics = metrics
        self._policy = policy or PatchPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security

    # ------------------------------------------------------------------------------------------- proposing
    def propose(
        self,
        key: str,
        op: ProposalOp,
        *,
        rule: ApprovalRule,
        proposer: str,
        value: Any = None,
        patch: Any = None,
        ttl_seconds: int | None = None,
        expect: Expectation | None = None,
    ) -> Proposal:
        """Store a proposal of `op` on `key` against its current version (or the If-Match given, which must be
        the current one); the same value rules and preconditions as the write itself, and nothing written."""
        expect = expect or Expectation()
        stored: StoredValue | None = None
        patch_text: bytes | None = None
        schema = None
        if op == "put":
            stored = self._manager.encode(value)
            schema = self._manager.check_schema(key, value)
        elif op == "patch":
            check_depth(patch)
            patch_text = canonical_json(patch)
        now = self._clock()
        current = self._current(key, now)
        live = current is not None and current.is_live(now)
        version = current.version if current is not None else 0
        live_version = version if live else None
        if expect.if_none_match_any and live:
            raise PreconditionFailed(f"key {key} exists (version {version})", current_version=version)
        if expect.if_match is not None and (
            not live or (isinstance(expect.if_match, int) and expect.if_match != version)
        ):
            raise PreconditionFailed(f"key {key} is at version {live_version}", current_version=live_version)
        if op in ("patch", "delete") and not live:
            raise NotFound(f"key {key} does not exist")
        if op == "patch":
            assert current is not None
            assert current.value is not None
            merged = apply_merge_patch(json.loads(self._manager.canonical(current)), patch)
            stored = self._manager.encode_canonical(canonical_json(merged))
            schema = self._manager.check_schema(key, merged)
        held = (len(stored.data) if stored is not None else 0) + len(patch_text or b"")
        if held > MAX_PROPOSAL_STORED_BYTES:
            raise PayloadTooLarge(
                f"a proposal holds at most {MAX_PROPOSAL_STORED_BYTES} bytes of value (compressed) and patch, not"
                f" {held}: a protected key's value must fit its item"
            )
        proposal = Proposal(
            key=key,
            proposal_id=new_proposal_id(now),
            op=op,
            status="open",
            proposer=proposer,
            created_at=rfc3339(now),
            expires_at=(now + timedelta(seconds=rule.expires_after_seconds)).timestamp(),
            base_version=version,
            required=rule.approvals,
            value=stored,
            patch=patch_text,
            ttl_seconds=ttl_seconds,
            schema=schema,
        )
        self._proposals.create(proposal)
        self._metrics.add_metric(name="ProposalsCreated", unit="Count", value=1)
        return proposal

    def _current(self, key: str, now: datetime) -> StateRecord | None:
        """The key's state item, a due expiry written first (it is a version of its own)."""
        current = self._states.get(key)
        if current is not None and not current.deleted and current.expires_at is not None and not current.is_live(now):
            self._manager.expire(key, current, now)
            current = self._states.get(key)
        return current

    # ------------------------------------------------------------------------------------------- reviewing
    def list_open(
        self, key: str, *, limit: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> tuple[list[Proposal], str | None]:
        return self._proposals.list_open(key, now=self._clock(), limit=limit, after=after)

    def get(self, key: str, proposal_id: str) -> Proposal:
        """The proposal; NotFound (no such proposal of this key), ProposalExpired (410, recorded on first sight)."""
        proposal = self._proposals.get(key, proposal_id)
        if proposal is None:
            raise NotFound(f"key {key} has no proposal {proposal_id}")
        if proposal.is_expired(self._clock()):
            self._expire(proposal)
        return proposal

    def review(self, key: str, proposal_id: str) -> tuple[Proposal, Any, bool]:
        """The proposal, the base version's value (None: absent) and whether that base is still current. An
        open proposal whose key moved on can never apply: it is recorded stale on sight."""
        proposal = self.get(key, proposal_id)
        current = self._states.get(key)
        version = current.version if current is not None else 0
        base_value = None
        if current is not None and current.value is not None and current.is_live(self._clock()):
            base_value = json.loads(self._manager.canonical(current))
        if proposal.status == "open" and version != proposal.base_version:
            proposal = self._mark_stale(proposal, version)
        return proposal, base_value, version == proposal.base_version

    # -------------------------------------------------------------------------------------------- deciding
    def approve(self, key: str, proposal_id: str, approver: str, comment: str | None = None) -> tuple[Proposal, bool]:
        """Count `approver` (once) and apply the proposal when that reaches its threshold: the proposal, and
        whether this call applied it (an approval that finds it applied by another answers it too)."""
        proposal = self._open(key, proposal_id)
        if approver == proposal.proposer:
            raise SelfApproval("the proposer of a change cannot approve it")
        if approver not in proposal.approvers:
            try:
                proposal = self._proposals.approve(key, proposal_id, approver, self._clock(), comment)
                self._metrics.add_metric(name="ProposalApprovals", unit="Count", value=1)
            except ProposalClosedError:
                proposal = self._open(key, proposal_id)  # closed, expired or removed meanwhile: answers why
                if approver not in proposal.approvers:
                    raise ServiceUnavailable("the proposal changed while it was being approved; retry") from None
        if len(proposal.approvers) >= proposal.required:
            return self._apply(proposal)
        return proposal, False

    def reject(self, key: str, proposal_id: str, by: str, comment: str | None = None) -> Proposal:
        self._open(key, proposal_id)
        try:
            closed = self._proposals.close(key, proposal_id, "rejected", now=self._clock(), by=by, comment=comment)
        except ProposalClosedError:
            raise ProposalClosed(self.get(key, proposal_id)) from None
        self._metrics.add_metric(name="ProposalRejections", unit="Count", value=1)
        return closed

    def withdraw(self, key: str, proposal_id: str, by: str) -> Proposal:
        proposal = self._open(key, proposal_id)
        if proposal.proposer != by:
            raise Forbidden("only the proposer can withdraw a proposal")
        try:
            return self._proposals.close(key, proposal_id, "withdrawn", now=self._clock(), by=by, proposer=by)
        except ProposalClosedError:
            raise ProposalClosed(self.get(key, proposal_id)) from None

    def _open(self, key: str, proposal_id: str) -> Proposal:
        proposal = self.get(key, proposal_id)
        if proposal.status != "open":
            raise ProposalClosed(proposal)
        return proposal

    def _expire(self, proposal: Proposal) -> None:
        if proposal.status == "open":
            try:
                self._proposals.close(proposal.key, proposal.proposal_id, "expired", now=self._clock(), by=None)
                self._metrics.add_metric(name="ProposalsExpired", unit="Count", value=1)
            except ProposalClosedError:
                fresh = self._proposals.get(proposal.key, proposal.proposal_id)
                if fresh is not None and fresh.status not in ("open", "expired"):
                    raise ProposalClosed(fresh) from None  # decided just before it expired
        raise ProposalExpired(f"proposal {proposal.proposal_id} expired at {rfc3339(_at(proposal.expires_at))}")

    # -------------------------------------------------------------------------------------------- applying
    def _apply(self, proposal: Proposal) -> tuple[Proposal, bool]:
        deadline = self._monotonic() + self._policy.time_budget_seconds
        attempt = 0
        while True:
            attempt += 1
            now = self._clock()
            current = self._current(proposal.key, now)
            version = current.version if current is not None else 0
            if version != proposal.base_version:
                return _answer(self._mark_stale(proposal, version)), False
            step = _step(proposal, current, now)
            try:
                record = self._proposals.apply(proposal, step, now=now, attempt=attempt)
            except TransactionConflict as conflict:
                reasons = [*conflict.reasons, "None", "None"]
                if reasons[1] == "ConditionalCheckFailed":
                    return self._settled(proposal), False  # another approval applied it (or it was closed)
                if reasons[0] != "ConditionalCheckFailed":
                    # Another transaction held an item: back off and read again, within the budget.
                    delay = self._policy.delay(attempt, self._rng)
                    if self._monotonic() + delay > deadline:
                        raise ServiceUnavailable("the proposal's key is busy; approve again shortly") from None
                    self._sleep(delay)
                continue
            except (OutcomeUnknown, ServiceUnavailable):
                settled = self._proposals.get(proposal.key, proposal.proposal_id)
                if settled is not None and settled.status == "applied":
                    # Ours landed though its answer was lost: its write-through, as any acknowledged write's.
                    landed = self._states.get(proposal.key)
                    if landed is not None and landed.version == settled.applied_version:
                        self._manager.write_through(landed)
                    return settled, True
                raise
            assert record is not None or step.operation.op == "delete"
            if record is not None:
                self._manager.write_through(record)
            self._metrics.add_metric(name="ProposalsApplied", unit="Count", value=1)
            applied = replace(proposal, status="applied", applied_version=step.next_version, decided_at=rfc3339(now))
            return applied, True

    def _settled(self, proposal: Proposal) -> Proposal:
        """The proposal after someone else closed it: applied answers as applied, anything else as closed."""
        fresh = self._proposals.get(proposal.key, proposal.proposal_id)
        if fresh is None:
            raise NotFound(f"key {proposal.key} has no proposal {proposal.proposal_id}")
        return _answer(fresh)

    def _mark_stale(self, proposal: Proposal, version: int) -> Proposal:
        """Record the open proposal stale (its key moved on from its base); the proposal as it ends up (another
        approval may have applied it first, which is what moved the key)."""
        try:
            stale = self._proposals.close(
                proposal.key, proposal.proposal_id, "stale", now=self._clock(), by=None, current_version=version
            )
        except ProposalClosedError:
            fresh = self._proposals.get(proposal.key, proposal.proposal_id)
            return fresh if fresh is not None else proposal
        self._metrics.add_metric(name="ProposalsStale", unit="Count", value=1)
        return stale


def _answer(proposal: Proposal) -> Proposal:
    """An approval's answer for a proposal closed under it: applied is success, stale 409 with the key's
    version, anything else 409 naming how it closed."""
    if proposal.status == "applied":
        return proposal
    if proposal.status == "stale":
        raise ProposalStale(proposal, proposal.current_version or None)
    raise ProposalClosed(proposal)


def _step(proposal: Proposal, current: StateRecord | None, now: datetime) -> PlannedOperation:
    """The proposal as a transaction's planned operation over `current` (exactly its base version)."""
    operation = Operation(0, proposal.op, proposal.key, ttl_seconds=proposal.ttl_seconds)
    if proposal.op == "put":
        expires_at = None if proposal.ttl_seconds is None else now.timestamp() + proposal.ttl_seconds
        return PlannedOperation(operation, current, proposal.value, expires_at, proposal.schema)
    if proposal.op == "patch":
        assert current is not None
        return PlannedOperation(
            operation, replace(current, value=None), proposal.value, current.expires_at, proposal.schema
        )
    return PlannedOperation(operation, current)


def _at(epoch: float) -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(epoch, UTC)
