"""Strict JSON parsing, canonical form, size and depth rules (DESIGN §3)."""

import json
import os

import pytest

from state_core.codec import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    StoredValue,
    canonical_json,
    check_depth,
    check_value_size,
    parse_json,
)
from state_core.errors import InvalidJson, PayloadTooLarge

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e400}',
        b'{"a": -1e999}',
        b'{"a": 1, "a": 2}',
        b'{"x": {"b": 1, "b": 1}}',
        b"{not json}",
        b"",
        b'{"a": "\xff"}',
        b"\xef\xbb\xbf{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": 1} trailing',
    ],
)
def test_invalid_json_is_refused(body):
    with pytest.raises(InvalidJson):
        parse_json(body)


def test_duplicate_member_name_is_refused_without_echoing_the_name():
    with pytest.raises(InvalidJson, match="duplicate member name") as refused:
        parse_json(b'{"secret-name": 1, "secret-name": 2}')
    assert "secret-name" not in refused.value.detail


def test_lone_surrogate_parses_but_has_no_canonical_form():
    value = parse_json(b'{"a": "\\ud800"}')
    with pytest.raises(InvalidJson, match="surrogate"):
        canonical_json(value)


def test_surrogate_pair_is_a_valid_character():
    assert canonical_json(parse_json(b'"\\ud83d\\ude00"')) == '"😀"'.encode()


def test_canonical_form_is_compact_and_keeps_non_ascii():
    assert canonical_json({"b": [1, 2.5, None], "é": "ü"}) == '{"b":[1,2.5,null],"é":"ü"}'.encode()


def test_body_over_the_pre_parse_limit_is_413_without_parsing():
    with pytest.raises(PayloadTooLarge):
        parse_json(b" " * (MAX_BODY_BYTES + 1))


def test_value_of_exactly_1_mib_is_allowed_and_one_byte_more_is_not():
    check_value_size(b"x" * MAX_VALUE_BYTES)
    with pytest.raises(PayloadTooLarge):
        check_value_size(b"x" * (MAX_VALUE_BYTES + 1))


def nested(depth):
    value = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_nesting_of_64_is_allowed_and_65_is_not():
    check_depth(nested(MAX_DEPTH))
    with pytest.raises(InvalidJson, match="deeper than 64"):
        check_depth(nested(MAX_DEPTH + 1))


def test_scalars_and_empty_containers_have_small_depth():
    check_depth(1)
    check_depth([[]] * 10, limit=2)
    with pytest.raises(InvalidJson):
        check_depth([[[]]], limit=2)


@pytest.mark.parametrize("raw", [b'{"a":1}' * 1000, os.urandom(5000)])
def test_stored_value_round_trips(raw):
    stored = StoredValue.encode(raw)
    assert stored.canonical() == raw
    assert stored.size == len(raw)
    assert len(stored.data) <= len(raw)


def test_incompressible_values_are_stored_as_is():
    raw = json.dumps(os.urandom(3000).hex()).encode()[:10]
    assert StoredValue.encode(raw).encoding == "identity"
