"""The listing's pure rules: which key ranges a caller's grants cover under a prefix, the key ranges
themselves, the write shards, and the signed cursors."""

from __future__ import annotations

import base64
import itertools
import random
import string

import pytest

from state_core.domain.errors import BadRequest
from state_core.domain.listing import LIST_SHARDS, KeyRange, all_shards, list_shard
from state_core.security.list_cursor import ListCursors
from state_core.security.principal import READ, Principal

pytestmark = pytest.mark.unit

ALPHABET = string.ascii_letters + string.digits + "_.:-"


def ranges(scopes: str, prefix: str, sub: str = "alice") -> list[tuple[str, str, bool]]:
    principal = Principal(subject=sub, scopes=frozenset(scopes.split()))
    return [(r.low, r.high, r.exact) for r in principal.ranges_under(READ, prefix)]


def keys_in(key_ranges: list[KeyRange], keys: list[str]) -> set[str]:
    return {key for key in keys if any(r.low <= key <= r.high for r in key_ranges)}


@pytest.mark.parametrize(
    ("scopes", "prefix", "expected"),
    [
        # a grant on every key covers the whole prefix
        ("state:read", "user:", [("user:", "user:~", False)]),
        ("state:read:*", "user:", [("user:", "user:~", False)]),
        # a wider grant covers the prefix; a narrower one narrows it
        ("state:read:user:*", "user:alice:", [("user:alice:", "user:alice:~", False)]),
        ("state:read:user:alice:*", "user:", [("user:alice:", "user:alice:~", False)]),
        ("state:read:user:${sub}:*", "user:", [("user:alice:", "user:alice:~", False)]),
        ("state:read:user:${sub}", "user:", [("user:alice", "user:alice", True)]),
        # a grant pattern that only shares text with the prefix covers nothing
        ("state:read:a:b:*", "a:c", []),
        ("state:read:user:bob:*", "user:alice:", []),
        # exact keys: only under the prefix, each its own range
        ("state:read:a:1 state:read:a:2 state:read:b:1", "a:", [("a:1", "a:1", True), ("a:2", "a:2", True)]),
        # an exact key the prefix extends is not covered ("a" does not start with "a:")
        ("state:read:a", "a:", []),
        # nested grants collapse into the widest; an exact key inside a prefix grant adds nothing
        ("state:read:a:* state:read:a:b:* state:read:a:b:c", "a", [("a:", "a:~", False)]),
        ("state:read:a:b:* state:read:a:b:c state:read:a:c", "a:", [("a:b:", "a:b:~", False), ("a:c", "a:c", True)]),
        # write grants never list
        ("state:write state:write:a:*", "a:", []),
        # the empty prefix: only a grant on every key
        ("state:read", "", [("-", "~", False)]),
        ("state:read:user:*", "", []),
        ("state:read:a", "", []),
    ],
)
def test_grants_become_the_ranges_they_cover_under_the_prefix(scopes, prefix, expected):
    assert ranges(scopes, prefix) == expected


@pytest.mark.parametrize("sub", ["alice:x", "", "a*", "a b", "x" * 300, "ali/ce"])
def test_a_sub_grant_covers_nothing_for_a_subject_that_is_not_one_key_segment(sub):
    assert ranges("state:read:user:${sub}:*", "user:", sub=sub) == []
    assert ranges("state:read:user:${sub}", "user:", sub=sub) == []


def test_the_ranges_hold_exactly_the_keys_the_grants_allow_under_the_prefix():
    """Against `allows`, the rule every key is checked with: no allowed key is left out of the ranges, and
    nothing in them is outside the prefix. Random grants and keys over a small alphabet, so they collide."""
    rng = random.Random(7)
    parts = ["a", "b", "ab", "alice", ":", "bob"]

    def word() -> str:
        return "".join(rng.choice(parts) for _ in range(rng.randint(1, 4))).lstrip(":") or "a"

    for _ in range(400):
        patterns = [f"state:read:{word()}{rng.choice(['', '*', ':*'])}" for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.2:
            patterns.append("state:read:${sub}:*")
        principal = Principal(subject=rng.choice(["alice", "bob", "a:b"]), scopes=frozenset(patterns))
        prefix = rng.choice(["", word(), word() + ":"])
        keys = [word() for _ in range(40)] + [prefix + word() for _ in range(40)]
        covered = principal.ranges_under(READ, prefix)
        allowed_under = {k for k in keys if k.startswith(prefix) and principal.allows(READ, k)}
        if prefix == "" and not any(r.low == "-" and r.high == "~" for r in covered):
            assert covered == []
            continue
        assert allowed_under <= keys_in(covered, keys), (patterns, prefix)
        assert all(k.startswith(prefix) for k in keys_in(covered, keys)), (patterns, prefix)
        # disjoint, in key order
        assert all(a.high < b.low for a, b in itertools.pairwise(covered)), covered


def test_a_prefix_range_holds_exactly_the_keys_that_start_with_it():
    rng = random.Random(3)
    for _ in range(2000):
        prefix = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 4)))
        key = "".join(rng.choice(ALPHABET[:6] + ALPHABET[-4:] + prefix) for _ in range(rng.randint(1, 7)))
        key_range = KeyRange.prefix(prefix)
        assert (key_range.low <= key <= key_range.high) == key.startswith(prefix), (prefix, key)


def test_after_continues_strictly_after_a_key_and_nothing_is_skipped():
    rng = random.Random(4)
    key_range = KeyRange.prefix("a")
    for _ in range(2000):
        last = "a" + "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 5)))
        other = "a" + "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 5)))
        rest = key_range.after(last)
        assert rest is not None
        assert (rest.low <= other <= rest.high) == (other > last), (last, other)
    assert KeyRange.key("a").after("a") is None
    assert KeyRange.key("b").after("a") == KeyRange.key("b")


def test_shards_are_stable_spread_and_an_exact_key_has_one():
    assert list_shard("user:alice:prefs") == list_shard("user:alice:prefs")
    assert all_shards() == tuple(f"{n:02d}" for n in range(LIST_SHARDS))
    counts: dict[str, int] = {}
    for n in range(16_000):
        shard = list_shard(f"user:{n}:prefs")
        counts[shard] = counts.get(shard, 0) + 1
    assert set(counts) == set(all_shards())
    assert max(counts.values()) < 1.15 * 1000
    assert min(counts.values()) > 0.85 * 1000
    assert KeyRange.key("a:b").shards() == (list_shard("a:b"),)
    assert KeyRange.prefix("a").shards() == all_shards()


# -- cursors --------------------------------------------------------------------------------------------


def test_a_cursor_continues_only_for_its_caller_and_prefix():
    cursors = ListCursors(b"k" * 32)
    cursor = cursors.issue("alice", "user:", "user:alice:9")

    assert cursors.last_key(cursor, subject="alice", prefix="user:") == "user:alice:9"
    for subject, prefix in (("bob", "user:"), ("alice", "user"), ("alice", "user:alice:"), ("alice", "")):
        with pytest.raises(BadRequest):
            cursors.last_key(cursor, subject=subject, prefix=prefix)
    with pytest.raises(BadRequest):
        ListCursors(b"j" * 32).last_key(cursor, subject="alice", prefix="user:")


def test_every_altered_cursor_is_refused():
    cursors = ListCursors(b"k" * 32)
    raw = base64.urlsafe_b64decode(cursors.issue("alice", "p", "p9") + "==")
    for position in range(len(raw)):
        for bit in (0x01, 0x80):
            altered = bytearray(raw)
            altered[position] ^= bit
            text = base64.urlsafe_b64encode(bytes(altered)).decode().rstrip("=")
            with pytest.raises(BadRequest):
                cursors.last_key(text, subject="alice", prefix="p")


def test_fields_cannot_slide_into_each_other():
    """(subject "a", prefix "bc") and (subject "ab", prefix "c") sign different messages."""
    cursors = ListCursors(b"k" * 32)
    cursor = cursors.issue("a", "bc", "bc1")
    with pytest.raises(BadRequest):
        cursors.last_key(cursor, subject="ab", prefix="c")


def test_a_short_signing_key_is_refused():
    with pytest.raises(ValueError, match="shorter"):
        ListCursors(b"short")
