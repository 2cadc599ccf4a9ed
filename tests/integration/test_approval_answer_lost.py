"""An approval whose UpdateItem the table applied but whose answer was lost. The functions share one DynamoDB
client per container, on which the state store stops botocore retrying an UpdateItem that may have landed;
any store's write on it then has an unknown outcome, which the caller hears as 503 write-outcome-unknown
(a 500 before), and can settle by reading the proposal. Real handlers and moto; the lost answer is the
network's (tests.doubles.LostAnswer): the table really applies the request."""

from __future__ import annotations

import pytest

from tests.doubles import LostAnswer, hooked, without_token
from tests.integration.test_approvals import (  # noqa: F401
    OVERRIDER,
    body_of,
    proposals,
    propose_put,
    protected,
    run,
    write,
)

pytestmark = pytest.mark.integration


def test_an_approval_whose_answer_was_lost_is_503_outcome_unknown_and_reading_settles_it(invoke, protected):  # noqa: F811
    from state_core import runtime

    key = f"{protected}limits"
    proposal = propose_put(invoke, key, {"limit": 5})
    lost = LostAnswer(operation="UpdateItem")
    client = runtime.dynamodb_client()
    runtime.state_store()  # as in every write function: the store's retry rule is on the shared client
    with hooked(client, lost):
        response = proposals(invoke, "POST", key, proposal["id"], "approve", sub="bob")

    assert lost.lost == 1
    assert response["statusCode"] == 503, response
    assert response["headers"]["Content-Type"] == "application/problem+json"
    assert body_of(response)["type"].endswith("/write-outcome-unknown")
    assert int(response["headers"]["Retry-After"]) > 0
    # The approval landed: reading the proposal shows it, and nothing else changed.
    read = body_of(proposals(invoke, "GET", key, proposal["id"]))
    assert (read["status"], read["approved_by"]) == ("open", ["bob"])


@pytest.mark.parametrize("honoured", [True, False], ids=["token-honoured", "token-ignored"])
def test_an_apply_whose_answer_was_lost_is_applied_once_and_written_through(invoke, protected, run, honoured):  # noqa: F811
    # The approval reaches the threshold and applies: its TransactWriteItems lands, the answer is lost, and
    # botocore sends it again (with its request token, or, as a DynamoDB that did not honour it would, the
    # retry meets what the first attempt wrote). Either way the approval applied it once, and a read from the
    # cache, which held the version before, has the new one at once.
    from state_core import runtime
    from tests.integration.conftest import http_event

    key = f"solo{run}:limits"
    assert write(invoke, "put", key, {"value": {"limit": 1}}, scopes=OVERRIDER)["statusCode"] == 201
    assert body_of(invoke("get_state", http_event("get", key)))["version"] == 1  # and now cached
    proposal = propose_put(invoke, key, {"limit": 7})
    lost = LostAnswer(operation="TransactWriteItems")
    client = runtime.dynamodb_client()
    hooks = [lost] if honoured else [without_token, lost]
    with hooked(client, *hooks):
        response = proposals(invoke, "POST", key, proposal["id"], "approve", sub="bob")

    assert lost.lost == 1
    assert response["statusCode"] == 200, response
    assert (body_of(response)["status"], body_of(response)["applied_version"]) == ("applied", 2)
    read = body_of(invoke("get_state", http_event("get", key)))
    assert (read["value"], read["version"]) == ({"limit": 7}, 2)
    history = body_of(invoke("get_state", http_event("get", key, query={"consistent": "true"})))
    assert history["version"] == 2  # applied once
