"""A publish whose transaction the table applied but whose answer was lost: botocore sends it again (a read
timeout is retryable), the table cancels the retry on the registry's revision, which the first attempt moved.
That is the publish succeeding, not a conflict with another publisher. Real moto; the lost answer is the
network's (tests.doubles.LostAnswer), the table really applies the first attempt."""

import uuid

import boto3
import pytest

from state_core.domain.schemas import SchemaConflict
from state_core.runtime import DYNAMODB_CONFIG
from state_core.service.schemas import SchemaRegistry
from state_core.storage.schemas import SchemaStore
from tests.doubles import LostAnswer, utc_now

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object"}


@pytest.fixture
def prefix() -> str:
    return f"retried{uuid.uuid4().hex[:10]}:"


def registry_on(client, table: str) -> SchemaRegistry:
    return SchemaRegistry(SchemaStore(client, table), clock=utc_now)


def test_a_publish_whose_answer_was_lost_is_published_once(state_table, prefix):
    lost = LostAnswer(operation="TransactWriteItems")
    client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
    client.meta.events.register("before-send.dynamodb", lost)
    name = f"lost-{uuid.uuid4().hex[:10]}"

    published, created, check = registry_on(client, state_table).publish(
        name, {"schema": SCHEMA, "patterns": [f"{prefix}*"]}, actor="owner", mode="forward"
    )

    assert lost.lost == 1
    assert len(lost.sent) == 2  # botocore's retry reached the table and was cancelled
    assert (published.version, created, check) == (1, True, None)
    store = SchemaStore(boto3.client("dynamodb"), state_table)
    assert [v.version for v in store.versions(name)] == [1]


def test_a_publish_another_publisher_overtook_is_still_a_conflict(state_table, prefix):
    # Between this publisher's read of the registry and its transaction, another publish moves the
    # registry: the cancellation is a real conflict, and nothing of this publish is written.
    other = registry_on(boto3.client("dynamodb"), state_table)
    name, other_name = f"slow-{uuid.uuid4().hex[:10]}", f"fast-{uuid.uuid4().hex[:10]}"

    def overtake(request, **_):
        if request.headers.get("X-Amz-Target", b"").endswith(b"TransactWriteItems"):
            client.meta.events.unregister("before-send.dynamodb", overtake)
            other.publish(other_name, {"schema": SCHEMA, "patterns": [f"{prefix}b*"]}, actor="fast", mode="forward")

    client = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
    client.meta.events.register("before-send.dynamodb", overtake)
    with pytest.raises(SchemaConflict):
        registry_on(client, state_table).publish(
            name, {"schema": SCHEMA, "patterns": [f"{prefix}a*"]}, actor="slow", mode="forward"
        )
    store = SchemaStore(boto3.client("dynamodb"), state_table)
    assert store.versions(name) == []
    assert [v.version for v in store.versions(other_name)] == [1]
