"""``python -m devstack`` creates the values key from template.yaml before anything it encrypts, and its state
functions get the key's ARN: a PUT reaches a handler whose environment names a key the emulator has."""

from __future__ import annotations

from typing import Any

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_the_running_stack_has_its_key_and_its_table_is_encrypted_with_it(devstack: Any) -> None:
    kms = devstack.client("kms")
    key = kms.describe_key(KeyId="alias/state-service-local/state-values")["KeyMetadata"]
    assert key["Enabled"] is True
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    table = devstack.client("dynamodb").describe_table(TableName=devstack.table_name)["Table"]
    assert table["SSEDescription"]["KMSMasterKeyArn"] == key["Arn"]
    assert f"resource      StateKey = {key['KeyId']}" in devstack.output
    # The functions start with it in their environment (a bad or missing key would fail their settings).
    response = requests.put(
        f"{devstack.base_url}/state/devstack-keys-probe",
        json={"value": {"probe": 1}},
        headers={"Authorization": f"Bearer {devstack.token()}"},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
