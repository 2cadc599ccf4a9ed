"""A key both protected and sensitive: its proposals hold the proposed value and patch sealed, bound to the key
and the proposal, and the applied change is sealed as any write of the key is (KMS in the emulator)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import pytest

from state_core.domain.errors import DecryptionFailed
from state_core.runtime import utc_now
from state_core.security.policy import ApprovalRule
from state_core.service.approvals import Approvals
from state_core.storage.approvals import ProposalStore, proposal_sort_key
from state_core.storage.transactions import TransactionStore
from tests.integration.test_encryption import CANARY, Sealed

pytestmark = pytest.mark.integration

RULE = ApprovalRule(approvals=1)


@pytest.fixture(scope="module")
def kms_key(moto_server: str) -> str:
    return str(boto3.client("kms").create_key(Description="state values (proposals test)")["KeyMetadata"]["Arn"])


class SealedApprovals(Sealed):
    def __init__(self, table: str, key_id: str, redis_url: str) -> None:
        super().__init__(table, key_id, redis_url)
        transactions = TransactionStore(self.dynamodb, table, self.store)
        self.approvals = Approvals(
            ProposalStore(self.dynamodb, table, transactions, cipher=self.cipher),
            self.store,
            self.manager,
            clock=utc_now,
            metrics=self.metrics,
        )

    def proposal_item(self, key: str, proposal_id: str) -> dict[str, Any]:
        found = self.dynamodb.get_item(
            TableName=self.table, Key={"pk": {"S": key}, "sk": {"S": proposal_sort_key(proposal_id)}}
        )
        return dict(found["Item"])


@pytest.fixture
def sealed(state_table: str, kms_key: str, redis_server: Any) -> SealedApprovals:
    return SealedApprovals(state_table, kms_key, redis_server.url)


def test_a_proposed_value_and_patch_are_sealed_in_the_proposal_and_open_for_review_and_apply(sealed):
    key = f"secret:{uuid.uuid4().hex}"
    sealed.manager.put(key, {"card": "old"}, actor="alice")
    put = sealed.approvals.propose(key, "put", rule=RULE, proposer="alice", value={"card": CANARY})
    patch = sealed.approvals.propose(key, "patch", rule=RULE, proposer="alice", patch={"pin": CANARY})

    for proposal in (put, patch):
        item = sealed.proposal_item(key, proposal.proposal_id)
        assert item["encoding"]["S"].startswith("aes256gcm+")
        assert CANARY.encode() not in b"".join(bytes(v["B"]) for v in item.values() if "B" in v)
    assert "patch_encoding" in sealed.proposal_item(key, patch.proposal_id)

    reviewed, _, _ = sealed.approvals.review(key, patch.proposal_id)
    assert reviewed.patch is not None
    assert json.loads(reviewed.patch) == {"pin": CANARY}
    applied, did_apply = sealed.approvals.approve(key, put.proposal_id, "bob")
    assert did_apply
    assert applied.status == "applied"
    item = sealed.item(key)
    assert item["encoding"]["S"].startswith("aes256gcm+")
    assert json.loads(sealed.manager.get(key, consistent=True).canonical_value) == {"card": CANARY}


def test_a_proposals_ciphertext_copied_to_another_proposal_fails_loudly(sealed):
    key = f"secret:{uuid.uuid4().hex}"
    sealed.manager.put(key, {"card": "old"}, actor="alice")
    first = sealed.approvals.propose(key, "put", rule=RULE, proposer="alice", value={"card": CANARY})
    second = sealed.approvals.propose(key, "put", rule=RULE, proposer="carol", value={"card": "other"})
    stolen = sealed.proposal_item(key, first.proposal_id)["value"]
    sealed.dynamodb.update_item(
        TableName=sealed.table,
        Key={"pk": {"S": key}, "sk": {"S": proposal_sort_key(second.proposal_id)}},
        UpdateExpression="SET #v = :v",
        ExpressionAttributeNames={"#v": "value"},
        ExpressionAttributeValues={":v": stolen},
    )
    with pytest.raises(DecryptionFailed):
        sealed.approvals.get(key, second.proposal_id)
