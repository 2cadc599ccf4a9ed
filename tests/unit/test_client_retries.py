"""The AWS clients' retry budgets, by behaviour: how many requests one failing call really sends.

botocore reads a bare `max_attempts` as retries after the first; both configs use `total_max_attempts`
so that the number written is the number sent (issue 7 found the DynamoDB one sending 4)."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from devstack.resources import DUMMY_CREDENTIALS
from state_core.runtime import DYNAMODB_CONFIG, EVENTS_CONFIG
from tests.doubles import FailingService

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("service", "config", "call"),
    [
        ("dynamodb", DYNAMODB_CONFIG, lambda client: client.get_item(TableName="t", Key={"pk": {"S": "k"}})),
        ("events", EVENTS_CONFIG, lambda client: client.put_events(Entries=[{"Source": "s", "DetailType": "d"}])),
    ],
)
def test_a_failing_call_is_sent_three_times(service, config, call, monkeypatch):
    # Given a client whose every request gets 503 (no backoff sleeps: they only slow the test)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    client = boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        **DUMMY_CREDENTIALS,
        config=config,
    )
    unavailable = FailingService()
    client.meta.events.register(f"before-send.{service}", unavailable)
    # When one call is made, it fails after three attempts
    with pytest.raises(ClientError):
        call(client)
    assert unavailable.attempts == 3
