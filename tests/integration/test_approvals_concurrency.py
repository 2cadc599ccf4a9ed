"""Approvals under concurrency, each approver a container of its own (its own DynamoDB client and Redis link)
against the serialized moto server and a real redis-server: 20 final approvals at once apply a change exactly
once; of two proposals on one base the first applied makes the second stale; a break-glass write racing the
final approval never loses an update."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from state_core.domain.approvals import ProposalClosed, ProposalStale
from state_core.domain.errors import ServiceUnavailable
from state_core.security.policy import ApprovalRule
from state_core.service.approvals import Approvals
from state_core.storage.approvals import ProposalStore
from state_core.storage.state import StateStore
from state_core.storage.transactions import TransactionStore
from tests.integration.test_transaction_faults import Container

pytestmark = pytest.mark.integration

APPROVERS = 20


class Approver(Container):
    def __init__(self, redis_url, table):
        super().__init__(redis_url, table)
        store = StateStore(self.client, table)
        from state_core.runtime import utc_now

        self.approvals = Approvals(
            ProposalStore(self.client, table, TransactionStore(self.client, table, store)),
            store,
            self.manager,
            clock=utc_now,
            metrics=self.metrics,
        )


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


def at_once(count, action):
    """Run action(n) for n in range(count) in threads released together; each outcome or exception, in order."""
    barrier = threading.Barrier(count)
    outcomes: list[object] = [None] * count

    def run(n):
        barrier.wait()
        try:
            outcomes[n] = action(n)
        except Exception as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_twenty_final_approvals_at_once_apply_the_change_exactly_once(state_table, redis_url):
    key = f"appr:{uuid.uuid4().hex}"
    containers = [Approver(redis_url, state_table) for _ in range(APPROVERS + 1)]
    proposer = containers[0]
    proposer.manager.put(key, {"limit": 1}, actor="seed")
    proposal = proposer.approvals.propose(key, "put", rule=ApprovalRule(2), proposer="alice", value={"limit": 2})
    proposer.approvals.approve(key, proposal.proposal_id, "first")

    outcomes = at_once(
        APPROVERS, lambda n: containers[n + 1].approvals.approve(key, proposal.proposal_id, f"approver-{n}")
    )

    unexpected = [o for o in outcomes if not isinstance(o, tuple | ProposalClosed | ServiceUnavailable)]
    assert unexpected == []
    applied_here = [o for o in outcomes if isinstance(o, tuple) and o[1]]
    assert len(applied_here) == 1
    assert all(o[0].status == "applied" for o in outcomes if isinstance(o, tuple))
    assert sum(c.metrics.count("ProposalsApplied") for c in containers) == 1
    assert proposer.value(key, consistent=True) == (2, {"limit": 2})
    # The cache holds the applied version too: the write-through of the one that applied it.
    assert proposer.value(key) == (2, {"limit": 2})
    final = proposer.approvals.get(key, proposal.proposal_id)
    assert (final.status, final.applied_version) == ("applied", 2)


def test_of_two_proposals_on_one_base_the_first_applied_makes_the_second_stale(state_table, redis_url):
    key = f"appr:{uuid.uuid4().hex}"
    one, two = Approver(redis_url, state_table), Approver(redis_url, state_table)
    one.manager.put(key, "base", actor="seed")
    first = one.approvals.propose(key, "put", rule=ApprovalRule(1), proposer="alice", value="first")
    second = two.approvals.propose(key, "patch", rule=ApprovalRule(1), proposer="erin", patch={"x": 1})
    # A PATCH of a non-object merges into {}: proposed against version 1 all the same.
    assert (first.base_version, second.base_version) == (1, 1)

    outcomes = at_once(
        2,
        lambda n: (one, two)[n].approvals.approve(key, (first, second)[n].proposal_id, "bob"),
    )

    applied = [o for o in outcomes if isinstance(o, tuple)]
    stale = [o for o in outcomes if isinstance(o, ProposalStale)]
    assert (len(applied), len(stale)) == (1, 1), outcomes
    assert stale[0].current_version == 2
    version, value = one.value(key, consistent=True)
    assert version == 2
    assert value == ("first" if applied[0][0].proposal_id == first.proposal_id else {"x": 1})


def test_an_override_racing_the_final_approval_never_loses_an_update(state_table, redis_url):
    for _ in range(5):
        key = f"appr:{uuid.uuid4().hex}"
        approver, glass = Approver(redis_url, state_table), Approver(redis_url, state_table)
        approver.manager.put(key, {"n": 0}, actor="seed")
        proposal = approver.approvals.propose(key, "put", rule=ApprovalRule(1), proposer="alice", value={"n": 1})

        def race(n, key=key, proposal=proposal, approver=approver, glass=glass):
            if n == 0:
                return approver.approvals.approve(key, proposal.proposal_id, "bob")
            return glass.manager.put(key, {"n": "glass"}, actor="breakglass")

        outcome, direct = at_once(2, race)

        version, value = approver.value(key, consistent=True)
        if isinstance(outcome, tuple):
            # Applied first: the override came after it, on top of it, and both versions exist.
            assert (version, value, direct.record.version) == (3, {"n": "glass"}, 3)
        else:
            # The override came first: the proposal is stale and wrote nothing.
            assert isinstance(outcome, ProposalStale), outcome
            assert (version, value) == (2, {"n": "glass"})
            assert approver.approvals.get(key, proposal.proposal_id).status == "stale"
        assert json.dumps(value)
