"""The AWS clients' retry budgets, by behaviour: how many requests one failing call really sends.

botocore reads a bare `max_attempts` as retries after the first; both configs use `total_max_attempts`
so that the number written is the number sent (issue 7 found the DynamoDB one sending 4)."""

from __future__ import annotations

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from devstack.resources import DUMMY_CREDENTIALS
from state_core.runtime import DYNAMODB_CONFIG, EVENTS_CONFIG

pytestmark = pytest.mark.unit


class Unavailable:
    """Answers every request with 503 before it leaves the process, and counts them."""

    def __init__(self) -> None:
        self.sent = 0

    def __call__(self, request, **_):
        self.sent += 1
        return AWSResponse(request.url, 503, {"Content-Type": "application/x-amz-json-1.1"}, Body(b"{}"))


class Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_):
        yield self._data


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
    unavailable = Unavailable()
    client.meta.events.register(f"before-send.{service}", unavailable)
    # When one call is made, it fails after three attempts
    with pytest.raises(ClientError):
        call(client)
    assert unavailable.sent == 3
