"""The watch protocol: docs/asyncapi.yaml against the code's models, cursors, targets and message parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from state_core.domain.errors import BadRequest, PayloadTooLarge
from state_core.domain.watch import (
    CLIENT_MESSAGE_TYPES,
    MAX_CLIENT_MESSAGE_BYTES,
    MAX_RESUME_KEYS,
    MAX_VALUE_IN_MESSAGE_BYTES,
    SERVER_MESSAGE_TYPES,
    ChangeNote,
    decode_cursor,
    decode_prefix_cursor,
    encode_cursor,
    encode_prefix_cursor,
    targets_of,
    value_for_message,
)
from state_core.domain.watch_messages import CLIENT_MESSAGES, SERVER_MESSAGES, parse_client_message
from state_core.runtime import CONNECTIONS_CONFIG
from state_core.service.watch import LEASE_SECONDS, POST_SECONDS
from state_core.storage.connections import BACKOFF_BASE_SECONDS, POST_ATTEMPTS

pytestmark = pytest.mark.unit

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


@pytest.fixture(scope="module")
def document():
    return yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))


def _model_fields(model):
    fields = model.model_fields
    return set(fields), {name for name, field in fields.items() if field.is_required()}


def test_the_document_is_asyncapi_3_and_names_every_message_of_the_code(document):
    assert document["asyncapi"].startswith("3.")
    messages = document["components"]["messages"]
    assert set(messages) == set(CLIENT_MESSAGES) | set(SERVER_MESSAGES)
    for name, message in messages.items():
        assert message["name"] == name
        assert message["payload"]["properties"]["type"] == {"const": name}


@pytest.mark.parametrize("name", sorted({*CLIENT_MESSAGES, *SERVER_MESSAGES}))
def test_each_messages_fields_and_required_fields_match_its_model(document, name):
    model = CLIENT_MESSAGES.get(name) or SERVER_MESSAGES[name]
    payload = document["components"]["messages"][name]["payload"]
    fields, required = _model_fields(model)
    assert set(payload["properties"]) == fields
    assert set(payload.get("required", [])) == required


def test_the_models_are_the_message_types_the_code_names():
    assert tuple(CLIENT_MESSAGES) == CLIENT_MESSAGE_TYPES
    assert tuple(SERVER_MESSAGES) == SERVER_MESSAGE_TYPES


def test_clients_send_the_client_messages_and_receive_the_servers(document):
    sent, received = set(), set()
    for operation in document["operations"].values():
        names = {ref["$ref"].rsplit("/", 1)[1] for ref in operation["messages"]}
        (sent if operation["action"] == "send" else received).update(names)
    assert sent == set(CLIENT_MESSAGES)
    assert received == set(SERVER_MESSAGES)


def test_a_change_message_is_valid_against_its_model_and_carries_the_value_as_stored():
    note = ChangeNote("a:b", 3, "updated", "2026-12-01T00:00:00.000Z", b'{"x":[1,2]}')
    body = json.loads(note.to_subscription("s"))
    SERVER_MESSAGES["change"].model_validate(body)
    assert body["value"] == {"x": [1, 2]}
    assert decode_cursor("a:b", body["cursor"]) == 3


def test_a_value_over_what_a_message_carries_is_omitted_with_the_reason():
    assert value_for_message(b"1" * (MAX_VALUE_IN_MESSAGE_BYTES + 1), None) == (None, "too-large")
    assert value_for_message(b"1", None) == (b"1", None)
    assert value_for_message(None, None) == (None, None)


def test_targets_are_the_key_and_its_segment_prefixes():
    assert targets_of("a:b:c") == ["k#a:b:c", "p#a:", "p#a:b:"]
    assert targets_of("a") == ["k#a"]


@pytest.mark.parametrize("cursor", ["", "x", encode_cursor("a", 1)[:-2], encode_cursor("a", 1) + "A"])
def test_a_garbled_cursor_is_refused(cursor):
    with pytest.raises(BadRequest):
        decode_cursor("a", cursor)


def test_a_prefix_cursor_names_its_prefix_and_when_its_watch_began():
    assert decode_prefix_cursor("a:b:", encode_prefix_cursor("a:b:", 1_700_000_000.123)) == 1_700_000_000.123


@pytest.mark.parametrize(
    ("prefix", "cursor"),
    [
        ("a:", encode_prefix_cursor("b:", 1.0)),  # another prefix's
        ("a:", encode_cursor("a:", 1)),  # a key's
        ("a:", encode_prefix_cursor("a:", 1.0)[:-2]),  # garbled
    ],
)
def test_a_prefix_cursor_of_another_prefix_or_a_keys_is_refused(prefix, cursor):
    with pytest.raises(BadRequest):
        decode_prefix_cursor(prefix, cursor)


def test_a_key_subscription_refuses_a_prefix_cursor():
    with pytest.raises(BadRequest):
        decode_cursor("a:", encode_prefix_cursor("a:", 1.0))


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "id": "s", "key": "a", "since": "c", "versions": {"a": 1}},  # a key's
        {"type": "subscribe", "id": "s", "prefix": "a:", "versions": {"a:b": 1}},  # without since
        {"type": "subscribe", "id": "s", "prefix": "a:", "since": "c", "versions": {"a b": 1}},  # not a key
        {"type": "subscribe", "id": "s", "prefix": "a:", "since": "c", "versions": {"a:b": -1}},
        {"type": "subscribe", "id": "s", "prefix": "a:", "since": "c", "versions": {"a:b": "1"}},
        {"type": "subscribe", "id": "s", "prefix": "a:", "since": "c", "versions": {"a:b": 1.5}},
        {"type": "subscribe", "id": "s", "prefix": "a:", "since": "c", "versions": {"a:b": True}},
        {"type": "subscribe", "id": "s", "prefix": "a:", "since": "c", "versions": [1]},
        {
            "type": "subscribe", "id": "s", "prefix": "a:", "since": "c",
            "versions": {f"a:{n}": 1 for n in range(MAX_RESUME_KEYS + 1)},
        },
    ],
)  # fmt: skip
def test_versions_are_refused_unless_they_are_a_bounded_map_of_keys_to_versions_on_a_prefix_resume(message):
    with pytest.raises(BadRequest):
        parse_client_message(json.dumps(message))


def test_a_cursor_of_another_key_is_refused():
    with pytest.raises(BadRequest, match="another key"):
        decode_cursor("a", encode_cursor("b", 1))


def test_a_refused_refresh_never_echoes_its_token():
    with pytest.raises(BadRequest) as refused:
        parse_client_message(json.dumps({"type": "refresh", "token": "secret-token", "extra": "x"}))
    assert "secret-token" not in refused.value.detail


def test_the_watch_handlers_import_no_pydantic_until_a_message_is_parsed():
    import subprocess
    import sys

    code = (
        "import sys; import state_core.api.watch, state_core.stream.watch, state_core.service.watch; "
        "print('pydantic' in sys.modules)"
    )
    root = ASYNCAPI.parents[1]
    environment = {**os.environ, "PYTHONPATH": f"{root / 'layers' / 'state_core'}{os.pathsep}{root}"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60, env=environment
    )
    assert out.stdout.strip() == "False"


def test_an_oversized_message_is_refused_before_parsing():
    with pytest.raises(PayloadTooLarge):
        parse_client_message("{" + " " * MAX_CLIENT_MESSAGE_BYTES + "}")


def test_a_post_fits_in_the_lease_its_holder_renewed_just_before_it() -> None:
    """A lease holder renews before each post and relies on the post ending before the lease: the poster's
    attempts, each bounded by the @connections client's timeouts, with their backoff, take at most
    POST_SECONDS, and that leaves room in the lease."""
    assert CONNECTIONS_CONFIG.retries == {"mode": "standard", "total_max_attempts": 1}  # no retries underneath
    per_attempt = CONNECTIONS_CONFIG.connect_timeout + CONNECTIONS_CONFIG.read_timeout
    backoff = sum(BACKOFF_BASE_SECONDS * 2**attempt for attempt in range(POST_ATTEMPTS - 1))
    assert POST_ATTEMPTS * per_attempt + backoff <= POST_SECONDS <= LEASE_SECONDS - 5
