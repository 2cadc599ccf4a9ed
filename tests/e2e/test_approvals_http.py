"""Change approvals through the whole local stack, with dev tokens for several subjects: a protected key's
write becomes a proposal, reviewed with its diff, approved by two others and applied as the proposer's
version with the approvers in its history and its StateChanged event; self-approval, a replayed approval,
a stale base, rejection, withdrawal, expiry, the break glass and every bypass over real HTTP. One stack for
the module, started with a role policy that protects `prot:` (2 approvals) and `short:` (1 s)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests

from tests.doubles import ApiClient
from tests.e2e.test_change_events import Inbox
from tests.stack import DevStack, start_devstack

pytestmark = pytest.mark.e2e

POLICY = {
    "version": 1,
    "roles": {"approver": ["state:read", "state:approve"], "breakglass": ["state:write:override"]},
    "approvals": [
        {"pattern": "prot:*", "approvals": 2},
        {"pattern": "short:*", "approvals": 1, "expires_after_seconds": 1},
    ],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    directory = tmp_path_factory.mktemp("approvals-stack")
    policy = directory / "policy.json"
    policy.write_text(json.dumps(POLICY))
    running = start_devstack(directory / "state", {"STATE_POLICY_FILE": str(policy)})
    try:
        yield running
    finally:
        running.stop()


class Caller(ApiClient):
    """A subject with a dev token, and the proposals' routes."""

    def __init__(
        self, stack: DevStack, sub: str, scope: str = "state:read state:write", roles: list[str] | None = None
    ):
        super().__init__(stack, scope=scope, sub=sub)
        if roles is not None:
            self.session.headers["Authorization"] = f"Bearer {stack.token(sub=sub, scope=scope, roles=roles)}"

    def proposals(self, key: str, **params: str) -> requests.Response:
        return self.session.get(f"{self.url(key)}/proposals", params=params, timeout=30)

    def proposal(self, key: str, proposal_id: str) -> requests.Response:
        return self.session.get(f"{self.url(key)}/proposals/{proposal_id}", timeout=30)

    def decide(self, key: str, proposal_id: str, action: str, comment: str | None = None) -> requests.Response:
        body = None if comment is None else json.dumps({"comment": comment})
        headers = {"Content-Type": "application/json"} if body else {}
        url = f"{self.url(key)}/proposals/{proposal_id}/{action}"
        return self.session.post(url, data=body, headers=headers, timeout=30)

    def withdraw(self, key: str, proposal_id: str) -> requests.Response:
        return self.session.delete(f"{self.url(key)}/proposals/{proposal_id}", timeout=30)


@pytest.fixture(scope="module")
def alice(stack) -> Caller:
    return Caller(stack, "alice")


@pytest.fixture(scope="module")
def bob(stack) -> Caller:
    return Caller(stack, "bob", scope="", roles=["approver"])


@pytest.fixture(scope="module")
def carol(stack) -> Caller:
    return Caller(stack, "carol", scope="state:read state:approve")


@pytest.fixture(scope="module")
def glass(stack) -> Caller:
    return Caller(stack, "ops", roles=["breakglass"])


def fresh(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def test_propose_review_approve_twice_and_apply_as_the_proposer(stack, alice, bob, carol, glass):
    key = fresh("prot:limits:")
    assert glass.put(key, {"max": 10}).status_code == 201

    proposed = alice.put(key, {"max": 50}, headers={"If-Match": '"1"'})
    assert proposed.status_code == 202, proposed.text
    proposal = proposed.json()
    assert proposed.headers["Location"] == f"/state/{key}/proposals/{proposal['id']}"
    assert (proposal["base_version"], proposal["approvals_required"]) == (1, 2)
    assert alice.get(key).json()["value"] == {"max": 10}

    listed = bob.proposals(key).json()
    assert [p["id"] for p in listed["proposals"]] == [proposal["id"]]
    review = bob.proposal(key, proposal["id"]).json()
    assert (review["value"], review["diff"]) == ({"max": 50}, [{"op": "replace", "path": "/max", "value": 50}])

    assert alice.decide(key, proposal["id"], "approve").status_code == 403  # no state:approve
    selfish = Caller(stack, "alice", scope="state:read state:approve").decide(key, proposal["id"], "approve")
    assert (selfish.status_code, selfish.json()["type"].rsplit("/", 1)[1]) == (403, "self-approval")

    assert bob.decide(key, proposal["id"], "approve", "ok by me").json()["approved_by"] == ["bob"]
    replayed = bob.decide(key, proposal["id"], "approve")
    assert (replayed.status_code, replayed.json()["approved_by"], replayed.json()["status"]) == (200, ["bob"], "open")
    assert alice.get(key).json()["version"] == 1

    applied = carol.decide(key, proposal["id"], "approve")
    assert applied.status_code == 200, applied.text
    assert (applied.json()["status"], applied.json()["applied_version"]) == ("applied", 2)
    state = alice.get(key).json()
    assert (state["version"], state["value"], state["updated_by"]) == (2, {"max": 50}, "alice")

    inbox = Inbox(stack.moto_url)
    events = inbox.wait_for(key, 2)
    assert [(e["version"], e.get("proposal_id"), e.get("approved_by")) for e in events] == [
        (1, None, None),
        (2, proposal["id"], ["bob", "carol"]),
    ]
    assert events[1]["actor"] == "alice"
    deadline = time.monotonic() + 20
    while True:
        versions = alice.history(key).json()["versions"]
        if len(versions) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [(v["version"], v["actor"], v.get("approved_by")) for v in versions] == [
        (2, "alice", ["bob", "carol"]),
        (1, "ops", None),
    ]


def test_a_stale_base_gives_409_with_the_current_version_and_writes_nothing(alice, bob, carol, glass):
    key = fresh("prot:routing:")
    glass.put(key, "v1")
    pid = alice.put(key, "v2-proposed").json()["id"]
    bob.decide(key, pid, "approve")
    assert glass.put(key, "v2-direct").status_code == 200

    stale = carol.decide(key, pid, "approve")

    assert stale.status_code == 409
    assert (stale.json()["type"].rsplit("/", 1)[1], stale.json()["current_version"]) == ("proposal-stale", 2)
    assert alice.get(key).json()["value"] == "v2-direct"


def test_reject_withdraw_and_expiry(alice, bob, carol):
    key = fresh("prot:pay:")
    assert alice.delete(key).status_code == 404  # nothing to delete: no proposal either
    first = alice.put(key, {"iban": "X"}).json()["id"]
    assert bob.decide(key, first, "reject", "wrong account").json()["status"] == "rejected"
    assert carol.decide(key, first, "approve").status_code == 409

    second = alice.put(key, {"iban": "Y"}).json()["id"]
    assert bob.withdraw(key, second).status_code == 403
    assert alice.withdraw(key, second).json()["status"] == "withdrawn"
    assert alice.get(key).status_code == 404

    short = fresh("short:flag:")
    expiring = alice.put(short, True).json()["id"]
    time.sleep(1.2)
    assert bob.decide(short, expiring, "approve").status_code == 410
    assert bob.proposal(short, expiring).status_code == 410
    assert alice.get(short).status_code == 404


def test_bypass_attempts_fail_and_the_override_writes_directly(stack, alice, bob, glass):
    key = fresh("prot:flags:")
    other = fresh("prot:flags:")
    assert glass.put(key, {"on": False}).status_code == 201
    for attempt in (
        alice.put(key, {"on": True}, headers={"If-Match": '"1"'}),
        alice.put(key, {"on": True}, ttl_seconds=1),
        alice.patch(key, {"on": True}),
        alice.delete(key),
        alice.delete(key, headers={"If-Match": '"1"'}),
    ):
        assert attempt.status_code == 202, attempt.text
    pid = alice.put(key, {"on": True}).json()["id"]

    narrow = Caller(stack, "dave", scope=f"state:read state:approve:{other}")
    assert narrow.decide(key, pid, "approve").status_code == 403
    assert bob.decide(other, pid, "approve").status_code == 404
    transact = alice.session.post(
        f"{alice.base_url}/state:transact",
        data=json.dumps({"operations": [{"op": "put", "key": key, "value": {"on": True}}]}),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert (transact.status_code, transact.json()["protected_keys"]) == (403, [key])
    time.sleep(1.1)  # past the TTL a proposal asked for: it was never applied, so nothing expires
    state = alice.get(key).json()
    assert (state["version"], state["value"], state["expires_at"]) == (1, {"on": False}, None)
    assert len(bob.proposals(key).json()["proposals"]) == 6

    direct = glass.put(key, {"on": "glass"})
    assert direct.status_code == 200
    assert alice.get(key).json()["value"] == {"on": "glass"}
