"""The local event source mapping's filter matching (devstack/stream_poller.py): exact values and the
`prefix` operator the template uses for history items' removals; anything else is refused (ValueError), so a
filter the emulator cannot evaluate never silently matches the wrong records."""

from __future__ import annotations

import pytest

from devstack.stream_poller import _check_pattern, matches

pytestmark = pytest.mark.unit

HISTORY_REMOVALS = {"eventName": ["REMOVE"], "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "v#"}]}}}}


def record(event_name: str, sort_key: str) -> dict:
    return {"eventName": event_name, "dynamodb": {"Keys": {"pk": {"S": "k"}, "sk": {"S": sort_key}}}}


def test_a_prefix_pattern_matches_sort_keys_that_start_with_it():
    _check_pattern(HISTORY_REMOVALS)
    assert matches(HISTORY_REMOVALS, record("REMOVE", "v#000000000001"))
    assert not matches(HISTORY_REMOVALS, record("REMOVE", "state"))
    assert not matches(HISTORY_REMOVALS, record("INSERT", "v#000000000001"))


@pytest.mark.parametrize("operator", [{"anything-but": ["x"]}, {"prefix": 1}, {"prefix": "a", "suffix": "b"}, ["x"]])
def test_other_operators_are_refused_rather_than_matched_wrongly(operator):
    with pytest.raises(ValueError, match="not supported"):
        _check_pattern({"dynamodb": {"Keys": {"sk": {"S": [operator]}}}})
