"""The AWS clients' retry budgets, by behaviour: how many requests one failing call really sends.

botocore reads a bare `max_attempts` as retries after the first; both configs use `total_max_attempts`
so that the number written is the number sent (a bare `max_attempts=3` sends a call 4 times). A state write
(the conditional UpdateItem) is the exception: it is sent again only when the failure proves it was not
applied."""

from __future__ import annotations

import zlib

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from devstack.resources import DUMMY_CREDENTIALS
from state_core.domain.errors import OutcomeUnknown, ServiceUnavailable
from state_core.runtime import DYNAMODB_CONFIG, EVENTS_CONFIG
from state_core.storage.state import AnswerLost, StateStore
from tests.doubles import FailingService, utc_now

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


def dynamodb_meeting(fault, monkeypatch):
    """A DynamoDB client as the functions configure it, whose every request meets `fault`, and a StateStore
    on it (which sets the client's retries of state writes)."""
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        **DUMMY_CREDENTIALS,
        config=DYNAMODB_CONFIG,
    )
    client.meta.events.register("before-send.dynamodb", fault)
    return client, StateStore(client, "t")


@pytest.mark.parametrize(
    "fault",
    [
        FailingService(400, "ThrottlingException"),
        FailingService(400, "ProvisionedThroughputExceededException"),
        FailingService(400, "RequestLimitExceeded"),
        FailingService(raises=ConnectTimeoutError),
        FailingService(raises=EndpointConnectionError),
    ],
    ids=["throttled", "provisioned", "request-limit", "connect-timeout", "no-connection"],
)
def test_a_state_write_refused_or_never_sent_is_retried_three_times_then_503(fault, monkeypatch):
    # Given DynamoDB refusing every write before applying it, or no connection at all
    _, store = dynamodb_meeting(fault, monkeypatch)
    # When a write is made, botocore retries it (nothing was applied), then the client is told to retry
    with pytest.raises(ServiceUnavailable) as busy:
        store.delete("k", actor="a", now=utc_now(), version=None)
    assert not isinstance(busy.value, OutcomeUnknown)
    assert fault.operations == ["UpdateItem"] * 3


@pytest.mark.parametrize(
    "fault",
    [
        FailingService(500, "InternalServerError"),
        FailingService(503, "ServiceUnavailable"),
        FailingService(raises=ReadTimeoutError),
        FailingService(raises=ConnectionClosedError),
    ],
    ids=["internal-error", "unavailable", "read-timeout", "connection-closed"],
)
def test_a_state_write_whose_outcome_is_unknown_is_sent_once(fault, monkeypatch):
    # Given a write that reaches DynamoDB, but whose answer is an error or never comes
    _, store = dynamodb_meeting(fault, monkeypatch)
    # When it fails, it is not sent again (it may have been applied): the read back fails too, so the
    # client is told the outcome is unknown
    with pytest.raises(OutcomeUnknown):
        store.delete("k", actor="a", now=utc_now(), version=None)
    assert fault.operations.count("UpdateItem") == 1
    assert fault.operations.count("GetItem") == 3


def test_the_idempotent_writes_beside_the_state_item_keep_their_retries(monkeypatch):
    # Given the client a StateStore writes with, answering 503 to everything
    unavailable = FailingService()
    client, _ = dynamodb_meeting(unavailable, monkeypatch)
    # When a history item is put (idempotent: the same item each time), botocore still retries it
    with pytest.raises(ClientError):
        client.put_item(TableName="t", Item={"pk": {"S": "k"}, "sk": {"S": "v#1"}})
    with pytest.raises(ClientError):
        client.batch_write_item(RequestItems={"t": [{"DeleteRequest": {"Key": {"pk": {"S": "k"}}}}]})
    assert unavailable.operations == ["PutItem"] * 3 + ["BatchWriteItem"] * 3


class _Answer:
    """An HTTP answer as botocore hands it to needs-retry."""

    def __init__(self, status_code: int, content: bytes = b"{}", crc32: str | None = None) -> None:
        self.status_code, self.content = status_code, content
        self.headers = {} if crc32 is None else {"x-amz-crc32": crc32}


def _ask_whether_to_retry(client, caught=None, response=None):
    operation = client.meta.service_model.operation_model("UpdateItem")
    return client.meta.events.emit(
        "needs-retry.dynamodb.UpdateItem",
        response=response,
        endpoint=None,
        operation=operation,
        attempts=1,
        caught_exception=caught,
        request_dict={"context": {}},
    )


@pytest.mark.parametrize(
    ("caught", "response"),
    [
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), None),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), None),
        (None, (_Answer(503), {"Error": {"Code": "ServiceUnavailable"}})),
        (None, (_Answer(200, b"{}", crc32="1"), {})),  # landed, but botocore would resend it
    ],
    ids=["read-timeout", "connection-closed", "5xx", "2xx-crc-mismatch"],
)
def test_the_write_hook_never_answers_botocores_retry_question(caught, response, monkeypatch):
    """The Lambda runtime brings its own botocore, and older releases take any answer that is not None,
    False included, as "retry after sleeping that long". So for a write that may have landed the hook must
    not answer at all: it raises, whichever botocore asks."""
    client, _ = dynamodb_meeting(FailingService(), monkeypatch)
    with pytest.raises(AnswerLost):
        _ask_whether_to_retry(client, caught, response)


def test_the_write_hook_lets_a_plain_success_through(monkeypatch):
    # botocore asks after every answer, successes included: a 2xx whose checksum holds is no loss.
    client, _ = dynamodb_meeting(FailingService(), monkeypatch)
    body = b'{"Attributes":{}}'
    for answer in (_Answer(200, body), _Answer(200, body, crc32=str(zlib.crc32(body) & 0xFFFFFFFF))):
        replies = _ask_whether_to_retry(client, response=(answer, {}))
        assert all(reply is None for _, reply in replies)
