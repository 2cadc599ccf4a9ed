"""Pure logic of authorization: the role policy grammar, role grants in RBAC, and the JWKS cache's timing rules
(with a fake fetch and a fake clock, no sockets)."""

import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from state_core.security.jwks import JwksCache, JwksUnavailable, check_fetchable, parse_key_set
from state_core.security.policy import PolicyError, parse_role_policy
from state_core.security.principal import READ, WRITE, Principal
from tests.doubles import MonotonicClock

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "grant",
    [
        "state:read",
        "state:write",
        "state:read:*",
        "state:write:user:*",
        "state:read:user:${sub}:*",
        "state:read:user:${sub}",
        "state:read:${sub}:${sub}:*",
        "state:read:x${sub}:*",
    ],
)
def test_well_formed_grants_are_accepted(grant):
    assert parse_role_policy({"version": 1, "roles": {"r": [grant]}}).roles["r"] == (grant,)


@pytest.mark.parametrize(
    "grant",
    [
        "state:read:",
        "state:readx",
        "state:read:us er",
        "state:read:a*b",
        "state:read:${user}",
        "state:*",
        "read",
        # `${sub}` must end its segment, or a subject could be a prefix of another's (`ali` of `alice`).
        "state:read:user:${sub}*",
        "state:write:user:${sub}-x:*",
        "state:read:user:${sub}.${sub}",
        "state:read:user:${sub}${sub}",
    ],
)
def test_malformed_grants_make_the_policy_invalid(grant):
    with pytest.raises(PolicyError):
        parse_role_policy({"version": 1, "roles": {"r": [grant]}})


def test_roles_grant_through_the_policy_and_unknown_roles_grant_nothing():
    policy = parse_role_policy({"version": 1, "roles": {"self": ["state:write:user:${sub}:*"], "ro": ["state:read"]}})
    alice = Principal(subject="alice", scopes=frozenset(), roles=("self", "ghost"))
    assert alice.allows(WRITE, "user:alice:x", policy)
    assert not alice.allows(WRITE, "user:bob:x", policy)
    assert not alice.allows(READ, "other", policy)
    assert not alice.allows(WRITE, "user:alice:x")  # no policy, no role grants


def _jwk(kid, **extra):
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public)), "kid": kid, **extra}


def test_symmetric_encryption_and_off_list_keys_are_skipped():
    document = {
        "keys": [
            _jwk("good"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            _jwk("enc", use="enc"),
            _jwk("rs512", alg="RS512"),
            {"kid": "broken", "kty": "RSA", "n": "x"},
            _jwk(None),
        ]
    }
    assert set(parse_key_set(document, ["RS256"])) == {"good"}


def test_a_failed_refresh_keeps_the_last_good_keys_and_waits_for_the_cooldown():
    clock, answers, calls = MonotonicClock(), [{"keys": [_jwk("a")]}], []

    def fetch(url):
        calls.append(url)
        if not answers:
            raise JwksUnavailable("down")
        return answers.pop(0)

    cache = JwksCache("https://issuer.example.com/jwks", algorithms=["RS256"], fetch=fetch, clock=clock)
    assert cache.signing_key("a") is not None
    clock.now = 300
    assert cache.signing_key("a") is not None  # refresh failed: last good set
    clock.now = 310
    assert cache.signing_key("a") is not None
    assert cache.signing_key("unknown") is None
    assert len(calls) == 2  # nothing within the cooldown


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://issuer.example.com/jwks", True),
        ("http://127.0.0.1:3001/jwks", True),
        ("http://localhost/jwks", True),
        ("http://issuer.example.com/jwks", False),
        ("http://127.0.0.1.evil.example/jwks", False),
        ("file:///etc/passwd", False),
        ("ftp://issuer.example.com/jwks", False),
    ],
)
def test_only_https_or_loopback_http_is_fetched(url, ok):
    if ok:
        check_fetchable(url)
    else:
        with pytest.raises(ValueError, match="https"):
            check_fetchable(url)
