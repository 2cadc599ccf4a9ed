"""Which keys are sensitive (the policy file's `sensitive` section, STATE_ENCRYPT_ALL), and what the stream side
does with a sealed value: events and watch messages say it is omitted and never carry it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from state_core.config import ServiceSettings
from state_core.domain.codec import SEALED_PREFIX, StoredValue
from state_core.domain.errors import DecryptionFailed
from state_core.domain.records import BlobRef, StateRecord
from state_core.domain.sealing import canonical_of
from state_core.domain.watch import value_for_message
from state_core.security.envelope import KmsEnvelope, sensitive_matcher
from state_core.security.policy import PolicyError, parse_role_policy
from state_core.stream.events import Operation, state_changed
from tests.event_schemas import assert_valid_detail

pytestmark = pytest.mark.unit

SEALED = StoredValue(SEALED_PREFIX + "zlib", b"SV1 not really", 12)


def policy(**extra: Any) -> dict[str, Any]:
    return {"version": 1, "roles": {"r": ["state:read"]}, **extra}


def test_the_sensitive_section_is_optional_and_read_as_patterns():
    assert parse_role_policy(policy()).sensitive == ()
    assert parse_role_policy(policy(sensitive=["secret:*", "pin", "*"])).sensitive == ("secret:*", "pin", "*")


@pytest.mark.parametrize(
    "bad",
    [
        "secret:*",
        ["secret:*x"],
        ["user:${sub}:*"],
        ["a*b"],
        [""],
        ["key with space"],
        [1],
        ["**"],
    ],
)
def test_a_sensitive_pattern_that_could_leave_values_unprotected_refuses_the_whole_policy(bad):
    with pytest.raises(PolicyError, match="sensitive"):
        parse_role_policy(policy(sensitive=bad))


def test_patterns_match_exact_keys_prefixes_and_everything():
    matches = sensitive_matcher(["secret:*", "pin"], encrypt_all=False)

    assert matches("secret:a")
    assert matches("secret:")
    assert matches("pin")
    assert not matches("pin:2")
    assert not matches("secrets")
    assert sensitive_matcher(["*"], encrypt_all=False)("anything")
    assert not sensitive_matcher([], encrypt_all=False)("anything")
    assert sensitive_matcher([], encrypt_all=True)("anything")


def test_the_settings_read_the_key_and_encrypt_all():
    settings = ServiceSettings.from_environ(
        {"STATE_TABLE_NAME": "table", "STATE_KMS_KEY_ID": "alias/state-values", "STATE_ENCRYPT_ALL": "true"}
    )
    assert settings.kms_key_id == "alias/state-values"
    assert settings.encrypt_all is True
    defaults = ServiceSettings.from_environ({"STATE_TABLE_NAME": "table"})
    assert (defaults.kms_key_id, defaults.encrypt_all) == ("", False)


def test_a_sealed_value_is_never_served_as_json_without_being_opened():
    assert SEALED.sealed
    with pytest.raises(DecryptionFailed):
        canonical_of(SEALED, "secret:a", "w1", None)
    with pytest.raises(ValueError, match="unknown encoding"):
        SEALED.canonical()


def test_building_the_envelope_loads_no_crypto_and_calls_no_kms():
    def no_kms() -> Any:
        raise AssertionError("KMS client made")

    envelope = KmsEnvelope(table_name="t", key_id="k", sensitive=lambda key: False, kms=no_kms)
    plain = StoredValue.encode(b'{"a":1}')

    assert envelope.open("k", "w", plain) is plain  # a plain value passes through, no KMS


@pytest.mark.parametrize("data", [b"", b"SV", b"XX1\x00\x01k" + b"\x00" * 40, b"SV1\x00\x00" + b"\x00" * 40])
def test_a_malformed_envelope_is_a_decryption_failure_before_any_kms_call(data):
    def no_kms() -> Any:
        raise AssertionError("KMS client made")

    envelope = KmsEnvelope(table_name="t", key_id="k", sensitive=lambda key: True, kms=no_kms)

    with pytest.raises(DecryptionFailed):
        envelope.open("k", "w", StoredValue(SEALED_PREFIX + "zlib", data, 1))


def sealed_record(**overrides: Any) -> StateRecord:
    fields: dict[str, Any] = {
        "key": "secret:1",
        "version": 3,
        "value": SEALED,
        "created_at": "2026-11-28T05:00:00.000Z",
        "updated_at": "2026-11-28T06:00:00.000Z",
        "updated_by": "alice",
        "deleted": False,
        "expires_at": None,
        "write_id": "w1",
    }
    fields.update(overrides)
    return StateRecord(**fields)


@pytest.mark.parametrize(
    "record",
    [sealed_record(), sealed_record(value=None, blob=BlobRef("w1", 3, "00", SEALED_PREFIX + "identity", 900_000))],
    ids=["inline", "blob"],
)
def test_an_event_of_a_sensitive_key_says_why_it_carries_no_value(record):
    detail = state_changed(record, operation=Operation.UPDATED, previous_version=2, max_detail_bytes=65_536)

    body = json.loads(detail.detail())
    assert body["value_omitted"] is True
    assert body["value_omitted_reason"] == "sensitive"
    assert "value" not in body
    assert_valid_detail(detail.detail())


def test_a_watch_message_of_a_sensitive_key_carries_no_value():
    assert value_for_message(b'{"a":1}', None, sensitive=True) == (None, "sensitive")
    assert value_for_message(b'{"a":1}', None) == (b'{"a":1}', None)


def test_no_functions_cold_import_loads_the_cipher():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    functions = ("get_state", "put_state", "patch_state", "transact_state", "list_state", "batch_get_state")
    script = "; ".join(
        [
            "import importlib.util, sys",
            *(
                f"s = importlib.util.spec_from_file_location('{f}', 'functions/{f}/app.py'); "
                "s.loader.exec_module(importlib.util.module_from_spec(s))"
                for f in functions
            ),
            "print('cryptography.hazmat.primitives.ciphers.aead' in sys.modules,"
            " 'state_core.security.envelope' in sys.modules)",
        ]
    )
    env = {"PYTHONPATH": str(root / "layers" / "state_core"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, check=True)

    assert out.stdout.split() == ["False", "False"]
