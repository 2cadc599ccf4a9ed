"""A transaction whose TransactWriteItems the table applied but whose answer was lost, and which botocore sends
again: it commits once (no second version, no 412), whether the table honours the request token or, as a
DynamoDB that did not would, the retry goes without it. Real handlers and moto; the lost answer is the
network's (tests.doubles.LostAnswer): the table really applies the first attempt."""

from __future__ import annotations

import uuid

import pytest

from tests.doubles import LostAnswer, hooked, without_token
from tests.integration.test_transactions import put, read, transact  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("honoured", [True, False], ids=["token-honoured", "token-ignored"])
@pytest.mark.parametrize("conditional", [False, True])
def test_a_transaction_whose_answer_was_lost_commits_once(transact, read, put, conditional, honoured):  # noqa: F811
    from state_core import runtime

    run = uuid.uuid4().hex[:10]
    counter, log = f"lost:{run}:counter", f"lost:{run}:log"
    put(counter, {"n": 1})
    condition = {"if_match": 1} if conditional else {}
    operations = [
        {"op": "patch", "key": counter, "patch": {"n": 2}, **condition},
        {"op": "put", "key": log, "value": {"entry": run}},
    ]
    lost = LostAnswer(operation="TransactWriteItems")
    client = runtime.dynamodb_client()
    hooks = [lost] if honoured else [without_token, lost]
    with hooked(client, *hooks):
        status, body, _ = transact(operations)

    assert lost.lost == 1
    assert [("ClientRequestToken" in sent) for sent in lost.sent] == [honoured, honoured]
    assert status == 200, body
    assert [r["version"] for r in body["results"]] == [2, 1]
    assert read(counter) == (2, {"n": 2})  # applied once: not version 3
    assert read(log) == (1, {"entry": run})
