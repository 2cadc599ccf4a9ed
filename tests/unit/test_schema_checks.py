"""The pure rules of a schema check: its id, its checkpoint, and what it shows of offending keys."""

from __future__ import annotations

import uuid

import pytest

from state_core.domain.errors import BadRequest
from state_core.domain.schemas import (
    CheckProgress,
    OffendingKey,
    SchemaCheck,
    Violation,
    cursor_at,
    validate_check_id,
)

pytestmark = pytest.mark.unit


def test_a_check_id_is_32_lower_case_hex_digits():
    check_id = uuid.uuid4().hex
    assert validate_check_id(check_id) == check_id
    for bad in ("", check_id.upper(), check_id[:-1], check_id + "0", "../" + check_id[3:], check_id[:-1] + "\n"):
        with pytest.raises(BadRequest):
            validate_check_id(bad)


@pytest.mark.parametrize("last", [None, "user:bob", "a:b:c", "x"])
def test_a_checkpoint_keeps_the_last_key_whole_even_with_colons(last):
    progress = CheckProgress(cursor=cursor_at(2, 15, last))
    assert progress.position() == (2, 15, last)
    assert not progress.done


def test_a_finished_pass_is_done():
    assert CheckProgress(cursor="done").done
    assert CheckProgress().position() == (0, 0, None)


def test_what_a_check_shows_names_keys_and_counts_never_values():
    check = SchemaCheck(
        id="0" * 32,
        name="prefs",
        version=2,
        patterns=("user:*",),
        state="refused",
        created_at="2026-12-02T00:00:00.000Z",
        created_by="alice",
        settle_until=0.0,
        progress=CheckProgress(checked=10, offending=1, cursor="done"),
        finished_at="2026-12-02T00:00:20.000Z",
    )
    offending = OffendingKey("user:bob", 4, (Violation("/n", '(value) is not of type "integer"'),))

    assert check.finished
    assert check.summary() == {
        "id": "0" * 32,
        "name": "prefs",
        "version": 2,
        "patterns": ["user:*"],
        "state": "refused",
        "keys_checked": 10,
        "offending_key_count": 1,
        "created_at": "2026-12-02T00:00:00.000Z",
        "created_by": "alice",
        "finished_at": "2026-12-02T00:00:20.000Z",
    }
    assert offending.summary() == {
        "key": "user:bob",
        "violation_count": 4,
        "violations": [{"pointer": "/n", "message": '(value) is not of type "integer"'}],
    }
