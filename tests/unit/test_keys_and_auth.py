"""Key rules and RBAC by permission and key pattern."""

import pytest

from state_core.domain.errors import Forbidden, InvalidKey, Unauthenticated
from state_core.domain.keys import validate_key
from state_core.security.principal import READ, WRITE, Principal, authorize

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


@pytest.mark.parametrize(
    "sub",
    [
        "alice",  # a Cognito username
        "a1b2c3d4-0000-4000-8000-000000000001",  # Cognito's sub, Keycloak's sub (UUIDs)
        "00u1alice",  # Okta's uid
        "alice.smith_2",
        "a" * 256,
    ],
)
def test_a_subject_that_is_one_key_segment_gets_its_sub_grants(sub):
    p = principal("state:write:user:${sub}:* state:read:team:${sub}", sub=sub)
    assert p.allows(WRITE, f"user:{sub}:prefs")
    assert p.allows(READ, f"team:{sub}")


@pytest.mark.parametrize(
    ("sub", "victims_key"),
    [
        ("alice:settings", "user:alice:settings:theme"),  # the separator: alice's own key
        ("f:3b1e0c5a-7d1f-4c39-9f0e-2a4c6b8d0e11:alice", "user:f:3b1e0c5a-7d1f-4c39-9f0e-2a4c6b8d0e11:alice:x"),
        ("alice@example.com", "user:alice@example.com:x"),  # an e-mail (a Cognito username may be one)
        ("*", "user:*:x"),
        ("ali*", "user:ali*:x"),
        ("", "user::x"),
        ("a" * 257, f"user:{'a' * 257}:x"),
        ("auth0|64f0c0ffee", "user:auth0|64f0c0ffee:x"),
        ("alice\n", "user:alice\n:x"),
        ("ålice", "user:ålice:x"),
    ],
)
def test_a_subject_that_is_not_one_key_segment_gets_nothing_from_sub_grants(sub, victims_key):
    p = principal("state:write:user:${sub}:* state:read:user:${sub}:* state:read:user:${sub}", sub=sub)
    for key in (victims_key, f"user:{sub}", "user:alice:settings:theme", "user:alice:x"):
        assert not p.allows(WRITE, key)
        assert not p.allows(READ, key)


def test_a_subject_holding_the_separator_cannot_reach_into_another_subjects_keys():
    alice = principal("state:write:user:${sub}:*", sub="alice")
    widened = principal("state:write:user:${sub}:*", sub="alice:settings")
    assert alice.allows(WRITE, "user:alice:settings:theme")
    assert not widened.allows(WRITE, "user:alice:settings:theme")


@pytest.mark.parametrize(
    ("scope", "key"),
    [
        ("state:read:user:${sub}*", "user:alice:x"),  # subject `ali` would have been a prefix of `alice`
        ("state:read:user:${sub}x:*", "user:alix:x"),
        ("state:read:user:${sub}.*", "user:ali.x"),
        ("state:read:a*b", "a*b"),
        ("state:read:", ""),
        ("state:read:user:*:x", "user:*:x"),
        ("state:read:user/*", "user/x"),
        ("state:readx", "user:x"),
    ],
)
def test_a_token_scope_that_is_no_well_formed_grant_grants_nothing(scope, key):
    p = principal(scope, sub="ali")
    assert p.patterns_for(READ) == []
    assert not p.allows(READ, key)


def test_principal_comes_from_the_authorizer_context():
    p = Principal.from_authorizer_context({"sub": "alice", "scopes": "state:read state:write", "roles": '["ops"]'})
    assert p.subject == "alice"
    assert p.scopes == {"state:read", "state:write"}
    assert p.roles == ("ops",)


@pytest.mark.parametrize("context", [None, {}, {"scopes": "state:read"}, {"sub": ""}])
def test_request_without_authorizer_context_is_refused(context):
    with pytest.raises(Unauthenticated):
        Principal.from_authorizer_context(context)
