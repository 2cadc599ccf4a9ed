"""Key rules (DESIGN §3) and RBAC by permission and key pattern (DESIGN §4)."""

import pytest

from state_core.auth import READ, WRITE, Principal, authorize
from state_core.errors import Forbidden, InvalidKey, Unauthenticated
from state_core.keys import validate_key

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("key", ["a", "user:123:prefs", "A.b-c_d:e", "9", "a" * 256])
def test_valid_keys_pass(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "a" * 257, ":a", "-a", "_a", ".a", "a b", "a;b", "é", "a/b", "a\n", "a\x00", "ключ", "a%20"]
)
def test_invalid_keys_are_400(key):
    with pytest.raises(InvalidKey):
        validate_key(key)


def principal(scopes, sub="alice"):
    return Principal(subject=sub, scopes=frozenset(scopes.split()))


def test_unrestricted_scope_grants_every_key():
    authorize(principal("state:read"), READ, "anything:1")


def test_read_scope_does_not_grant_write():
    with pytest.raises(Forbidden):
        authorize(principal("state:read"), WRITE, "a")


@pytest.mark.parametrize(
    ("key", "allowed"), [("user:1", True), ("userx:1", False), ("USER:1", False), ("admin:1", False)]
)
def test_prefix_pattern_grants_only_its_prefix(key, allowed):
    assert principal("state:write:user:*").allows(WRITE, key) is allowed


def test_exact_pattern_grants_only_that_key():
    p = principal("state:read:user:123")
    assert p.allows(READ, "user:123")
    assert not p.allows(READ, "user:1234")


def test_sub_placeholder_expands_to_the_callers_subject():
    p = principal("state:write:user:${sub}:*")
    assert p.allows(WRITE, "user:alice:prefs")
    assert not p.allows(WRITE, "user:bob:prefs")


def test_subject_that_is_no_key_fragment_grants_nothing():
    p = principal("state:write:user:${sub}:*", sub="a b")
    assert not p.allows(WRITE, "user:a b:x")


def test_principal_comes_from_the_authorizer_context():
    p = Principal.from_authorizer_context({"sub": "alice", "scopes": "state:read state:write", "roles": '["ops"]'})
    assert p.subject == "alice"
    assert p.scopes == {"state:read", "state:write"}
    assert p.roles == ("ops",)


@pytest.mark.parametrize("context", [None, {}, {"scopes": "state:read"}, {"sub": ""}])
def test_request_without_authorizer_context_is_refused(context):
    with pytest.raises(Unauthenticated):
        Principal.from_authorizer_context(context)
