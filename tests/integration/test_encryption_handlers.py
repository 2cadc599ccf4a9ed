"""Sensitive keys through the real handlers (runtime wiring, the policy file's `sensitive` patterns,
STATE_KMS_KEY_ID): what a client sees when a value does not open or no key is configured, and that nothing of
the value reaches the answer or the log."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.integration.conftest import http_event

pytestmark = pytest.mark.integration

CANARY = "canary-3b9d-handler-do-not-leak"
POLICY = json.dumps(
    {"version": 1, "roles": {"state-admin": ["state:read", "state:write"]}, "sensitive": ["vault:*", "pin"]}
)


def _fresh_runtime() -> None:
    from state_core import runtime

    for builder in (runtime.service_settings, runtime.role_policy, runtime.value_cipher, runtime.state_store):
        builder.cache_clear()
    runtime.state_manager.cache_clear()
    runtime.history_reader.cache_clear()


@pytest.fixture
def keyed(moto_server: str, handler_environment: str, policy_file: Any, monkeypatch: Any) -> Iterator[str]:
    arn = boto3.client("kms").create_key(Description="handler values key")["KeyMetadata"]["Arn"]
    monkeypatch.setenv("STATE_KMS_KEY_ID", arn)
    policy_file(POLICY)
    _fresh_runtime()
    yield arn
    monkeypatch.delenv("STATE_KMS_KEY_ID")
    monkeypatch.delenv("STATE_POLICY_FILE", raising=False)
    _fresh_runtime()


@pytest.fixture
def service_log(caplog: Any) -> Any:
    caplog.set_level(logging.DEBUG)
    return caplog


def item(table: str, key: str) -> dict[str, Any]:
    found: dict[str, Any] = boto3.client("dynamodb").get_item(
        TableName=table, Key={"pk": {"S": key}, "sk": {"S": "state"}}, ConsistentRead=True
    )["Item"]
    return found


def test_a_sensitive_key_is_sealed_through_the_api_and_reads_back(invoke, keyed, handler_environment, service_log):
    key = f"vault:{uuid.uuid4().hex}"
    put = invoke("put_state", http_event("put", key, body={"value": {"card": CANARY}}))
    assert put["statusCode"] == 201

    stored = item(handler_environment, key)
    assert stored["encoding"]["S"].startswith("aes256gcm+")
    assert CANARY.encode() not in bytes(stored["value"]["B"])
    got = invoke("get_state", http_event("get", key))
    assert got["statusCode"] == 200
    assert json.loads(got["body"])["value"] == {"card": CANARY}
    plain = f"open:{uuid.uuid4().hex}"
    invoke("put_state", http_event("put", plain, body={"value": {"x": 1}}))
    assert item(handler_environment, plain)["encoding"]["S"] in ("zlib", "identity")
    assert CANARY not in service_log.text


def test_a_moved_ciphertext_is_a_503_problem_naming_no_value(invoke, keyed, handler_environment, service_log):
    first, second = f"vault:{uuid.uuid4().hex}", f"vault:{uuid.uuid4().hex}"
    invoke("put_state", http_event("put", first, body={"value": {"card": CANARY}}))
    invoke("put_state", http_event("put", second, body={"value": {"card": "other"}}))
    boto3.client("dynamodb").update_item(
        TableName=handler_environment,
        Key={"pk": {"S": second}, "sk": {"S": "state"}},
        UpdateExpression="SET #value = :value",
        ExpressionAttributeNames={"#value": "value"},
        ExpressionAttributeValues={":value": item(handler_environment, first)["value"]},
    )

    got = invoke("get_state", http_event("get", second, query={"consistent": "true"}))

    assert got["statusCode"] == 503
    assert got["headers"]["Content-Type"].startswith("application/problem+json")
    problem = json.loads(got["body"])
    assert problem["type"].endswith("value-decryption-failed")
    assert CANARY not in got["body"]
    assert CANARY not in service_log.text


def test_a_sensitive_write_without_a_key_is_a_500_and_writes_nothing(
    invoke, keyed, handler_environment, monkeypatch, service_log
):
    monkeypatch.setenv("STATE_KMS_KEY_ID", "")
    _fresh_runtime()
    key = "pin"
    before = boto3.client("dynamodb").get_item(
        TableName=handler_environment, Key={"pk": {"S": key}, "sk": {"S": "state"}}
    )

    put = invoke("put_state", http_event("put", key, body={"value": CANARY}))

    assert put["statusCode"] == 500
    assert json.loads(put["body"])["type"].endswith("encryption-not-configured")
    after = boto3.client("dynamodb").get_item(
        TableName=handler_environment, Key={"pk": {"S": key}, "sk": {"S": "state"}}
    )
    assert before.get("Item") == after.get("Item")
    assert CANARY not in service_log.text
