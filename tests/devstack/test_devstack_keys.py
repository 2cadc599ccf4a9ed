"""The local stack creates the template's KMS key in the emulator (policy, rotation, alias), encrypts its table,
queues and bucket with it as the template says, and hands its ARN to the functions: a worker, with exactly the
environment the template gives a state function, uses the key with this table's encryption context."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.jwt_support import REPO_ROOT

pytestmark = pytest.mark.integration

ALIAS = "alias/state-service-local/state-values"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """A moto server of its own: the stack's queues, bucket and rules have fixed names."""
    from devstack.moto_server import SerializedMotoServer

    server = SerializedMotoServer(port=0).start()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def created(emulator: str) -> tuple[Any, dict[str, str]]:
    from devstack.resources import create_resources
    from devstack.template import load_template

    template = load_template(REPO_ROOT / "template.yaml")
    table_names = {"StateTable": f"keys-{uuid.uuid4().hex[:8]}", "WatchTable": f"keys-w-{uuid.uuid4().hex[:8]}"}
    names = create_resources(template, emulator, table_names=table_names)
    return template, names


def _client(endpoint: str, service: str) -> Any:
    from devstack.resources import client

    return client(service, endpoint)


def test_the_key_exists_as_the_template_declares_it(emulator: str, created: tuple[Any, dict[str, str]]) -> None:
    template, names = created
    kms = _client(emulator, "kms")
    key = kms.describe_key(KeyId=ALIAS)["KeyMetadata"]
    assert key["Arn"] == names["StateKey.Arn"]
    assert key["KeyId"] == names["StateKey"]
    assert key["Enabled"] is True
    assert (key["KeySpec"], key["KeyUsage"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    policy = json.loads(kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"])
    assert policy == template.properties("StateKey")["KeyPolicy"]


def test_the_tables_queues_and_bucket_are_encrypted_with_it(emulator: str, created: tuple[Any, dict[str, str]]) -> None:
    _, names = created
    arn = names["StateKey.Arn"]
    table = _client(emulator, "dynamodb").describe_table(TableName=names["StateTable"])["Table"]
    assert table["SSEDescription"]["SSEType"] == "KMS"
    assert table["SSEDescription"]["KMSMasterKeyArn"] == arn
    sqs = _client(emulator, "sqs")
    for queue in ("PublishChangesDeadLetterQueue", "StateChangesQueue"):
        attributes = sqs.get_queue_attributes(QueueUrl=names[queue], AttributeNames=["KmsMasterKeyId"])
        assert attributes["Attributes"]["KmsMasterKeyId"] == arn, queue
    encryption = _client(emulator, "s3").get_bucket_encryption(Bucket=names["StreamFailureBucket"])
    (rule,) = encryption["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": arn}


def test_a_restarted_stack_keeps_its_key(emulator: str, created: tuple[Any, dict[str, str]]) -> None:
    """What the first start encrypted must stay readable: the key is found again by its alias, never replaced."""
    from devstack.resources import create_resources
    from devstack.template import load_template

    template, names = created
    again = create_resources(
        load_template(REPO_ROOT / "template.yaml"),
        emulator,
        table_names={"StateTable": names["StateTable"], "WatchTable": names["WatchTable"]},
    )
    assert again["StateKey.Arn"] == names["StateKey.Arn"]
    kms = _client(emulator, "kms")
    # Not a second key left behind either (the emulator's DynamoDB keeps a default key of its own).
    description = template.properties("StateKey")["Description"]
    ours = [
        k["KeyId"]
        for k in kms.list_keys()["Keys"]
        if kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["Description"] == description
    ]
    assert ours == [names["StateKey"]]


def test_a_worker_gets_the_key_and_uses_it_with_its_tables_context(
    emulator: str, created: tuple[Any, dict[str, str]], tmp_path: Any
) -> None:
    from devstack.workers import WorkerConfig, WorkerPool

    template, names = created
    spec = template.function("PutStateFunction")
    # The state function's own environment, with a handler that only uses the key.
    spec = dataclasses.replace(spec, code_uri=REPO_ROOT / "tests" / "fixtures" / "keys", handler="app.lambda_handler")
    pool = WorkerPool(WorkerConfig.from_spec(spec, log_dir=tmp_path, endpoint_url=emulator), max_concurrency=1)
    try:
        result = pool.invoke_sync({}, timeout=30)
        assert result.ok, result
        assert result.payload["key_id"] == names["StateKey.Arn"]
        assert result.payload["encrypt_all"] == "false"
        assert result.payload["key_arn"] == names["StateKey.Arn"]
        assert result.payload["round_trip"] is True
    finally:
        pool.close()
    # The data key is bound to the table: the emulator refuses it under another table's context.
    kms = _client(emulator, "kms")
    ciphertext = base64.b64decode(result.payload["ciphertext"])
    kms.decrypt(CiphertextBlob=ciphertext, EncryptionContext={"table": names["StateTable"]})
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=ciphertext, EncryptionContext={"table": "another-table"})
