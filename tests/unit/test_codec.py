"""Strict JSON parsing, canonical form, size and depth rules: a read returns what was written, byte for byte."""

import json
import os
import tracemalloc
import zlib

import pytest

from state_core.domain.codec import (
    ENCODING_IDENTITY,
    ENCODING_ZLIB,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    StoredValue,
    canonical_json,
    check_depth,
    check_value_size,
    parse_json,
)
from state_core.domain.errors import CorruptStoredValue, InvalidJson, PayloadTooLarge

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


# --- stored values someone else may have written: bounded, checked, never trusted -------------------------


def _bomb(inflated_bytes: int) -> bytes:
    """zlib data that inflates to `inflated_bytes` of spaces (about 1000:1)."""
    compressor = zlib.compressobj(9)
    chunk = b" " * 1_048_576
    parts = [compressor.compress(chunk) for _ in range(inflated_bytes // len(chunk))]
    return b"".join(parts) + compressor.flush()


def test_a_decompression_bomb_is_refused_after_at_most_the_size_limit():
    bomb = _bomb(512 * 1_048_576)  # 512 MiB of output from about half a megabyte
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(CorruptStoredValue, match="inflates beyond"):
            StoredValue(ENCODING_ZLIB, bomb, 10).canonical()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_VALUE_BYTES


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (StoredValue(ENCODING_ZLIB, zlib.compress(b'{"a":1}') + b"junk", 7), "followed by other bytes"),
        (StoredValue(ENCODING_ZLIB, zlib.compress(b'{"a":1}')[:-3], 7), "truncated"),
        (StoredValue(ENCODING_ZLIB, b"not zlib at all", 7), "not valid zlib"),
        (StoredValue(ENCODING_ZLIB, zlib.compress(b'{"a":1}'), 6), "declared size"),
        (StoredValue(ENCODING_IDENTITY, b'{"a":1}', 8), "declared size"),
        (StoredValue(ENCODING_IDENTITY, b"x" * (MAX_VALUE_BYTES + 1), MAX_VALUE_BYTES + 1), "beyond the limit"),
        (StoredValue("br", b'{"a":1}', 7), "unknown encoding"),
    ],
)
def test_a_stored_value_that_fails_its_checks_is_corrupt_not_a_value(stored, reason):
    with pytest.raises(CorruptStoredValue, match=reason) as raised:
        stored.canonical()
    assert raised.value.status == 503


def test_a_value_of_exactly_the_limit_still_inflates():
    raw = json.dumps("a" * (MAX_VALUE_BYTES - 2)).encode()
    assert len(raw) == MAX_VALUE_BYTES
    assert StoredValue.encode(raw).canonical() == raw
