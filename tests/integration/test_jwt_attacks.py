"""The JWT attack suite: every case through the real authorizer handler, in process, against a
loopback issuer whose JWKS this test controls (down, slow, HTML, redirect, 1 MB, rotation), with an
attacker host that must never be contacted. A representative subset runs over HTTP in
tests/e2e/test_security_http.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time

import pytest
from cryptography.hazmat.primitives import serialization

from state_core.security.tokens import bearer_token
from tests.doubles import MonotonicClock
from tests.jwt_support import (
    ABSENT,
    AUDIENCE,
    REPO_ROOT,
    Authorizer,
    b64url,
    claims_for,
    ec_key,
    key_host,
    raw_token,
    rsa_key,
    sign,
)

pytestmark = pytest.mark.integration

DENY = {"isAuthorized": False}


@pytest.fixture(scope="module")
def issuer_key():
    return rsa_key()


@pytest.fixture(scope="module")
def issuer_ec_key():
    return ec_key()


@pytest.fixture(scope="module")
def attacker_key():
    return rsa_key()


@pytest.fixture(scope="module")
def host():
    with key_host() as running:
        yield running


@pytest.fixture(scope="module")
def attacker():
    with key_host() as running:
        yield running


@pytest.fixture
def configure(host, attacker, issuer_key, issuer_ec_key, attacker_key, monkeypatch):
    """configure(**env) -> the real authorizer, freshly loaded, trusting `host` as its issuer."""
    host.reset([issuer_key, issuer_ec_key])
    attacker.reset([attacker_key])

    def make(**env):
        for name in list(os.environ):
            if name.startswith(("STATE_OIDC_", "STATE_JWKS_")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("STATE_OIDC_ISSUER", host.issuer)
        monkeypatch.setenv("STATE_OIDC_AUDIENCE", AUDIENCE)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Authorizer()

    return make


@pytest.fixture
def authz(configure):
    return configure()


@pytest.fixture
def claims(host):
    return lambda **overrides: claims_for(host.issuer, **overrides)


@pytest.fixture
def valid(issuer_key, claims):
    return sign(issuer_key, claims())


def segments(token):
    return token.split(".")


def header_b64(header):
    return b64url(json.dumps(header).encode())


# -- the baseline -----------------------------------------------------------------------------------


def test_a_valid_rs256_token_is_allowed(authz, valid):
    assert authz.token(valid) == {
        "isAuthorized": True,
        "context": {"sub": "alice", "scopes": "state:read state:write", "roles": "[]"},
    }


def test_a_valid_es256_token_is_allowed(authz, issuer_ec_key, claims):
    assert authz.allows(sign(issuer_ec_key, claims()))


# -- the Authorization header -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer "},
        {"authorization": "Basic x"},
    ],
    ids=["no-header", "empty", "bearer-only", "bearer-space", "basic"],
)
def test_no_token_is_denied(authz, headers):
    assert authz(headers) == DENY


# -- signatures and algorithms ----------------------------------------------------------------------


def test_a_random_signature_is_denied(authz, valid):
    header, payload, _ = segments(valid)
    assert authz.token(f"{header}.{payload}.{b64url(os.urandom(256))}") == DENY


def test_a_signature_by_another_key_under_our_kid_is_denied(authz, attacker_key, issuer_key, claims):
    forged = sign(attacker_key, claims(), kid=issuer_key.kid)
    assert authz.token(forged) == DENY


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "original"])
def test_alg_none_in_any_case_is_denied(authz, valid, issuer_key, alg, signature):
    _, payload, original = segments(valid)
    header = header_b64({"alg": alg, "typ": "JWT", "kid": issuer_key.kid})
    assert authz.token(f"{header}.{payload}.{original if signature else ''}") == DENY


def _public_key_forms(key):
    public = key.private.public_key()
    return {
        "pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pkcs1-pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "der": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk": json.dumps(key.public_jwk()).encode(),
    }


@pytest.mark.parametrize("form", ["pem", "pkcs1-pem", "der", "jwk"])
@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_denied(authz, issuer_key, claims, form, alg):
    secret = _public_key_forms(issuer_key)[form]
    signing_input = (
        f"{header_b64({'alg': alg, 'typ': 'JWT', 'kid': issuer_key.kid})}.{b64url(json.dumps(claims()).encode())}"
    )
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    forged = f"{signing_input}.{b64url(hmac.new(secret, signing_input.encode(), digest).digest())}"
    assert authz.token(forged) == DENY


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256", "PS512"])
def test_algorithms_off_the_allow_list_are_denied_even_with_a_valid_signature(authz, issuer_key, claims, alg):
    assert authz.token(sign(issuer_key, claims(), alg=alg)) == DENY


def test_an_allowed_algorithm_with_a_key_published_for_another_one_is_denied(configure, issuer_key, claims):
    authz = configure(STATE_OIDC_ALGORITHMS="RS256,PS256")
    # The JWKS says the key is for RS256: a PS256 signature by it is not accepted.
    assert authz.token(sign(issuer_key, claims(), alg="PS256")) == DENY
    assert authz.allows(sign(issuer_key, claims()))


# -- kid ---------------------------------------------------------------------------------------------

KID_ATTACKS = [
    "../../../../../../etc/passwd",
    "/dev/null",
    "..\\..\\windows\\win.ini",
    "' OR '1'='1",
    "x'; DROP TABLE keys; --",
    "$(curl attacker)",
    "${jndi:ldap://127.0.0.1/a}",
    "kid\x00null",
    "kid\nnewline",
    "a" * 300,
    "",
    "unknown-kid",
    123,
    None,
    ["a"],
]


@pytest.mark.parametrize("kid", KID_ATTACKS, ids=[f"kid{i}" for i in range(len(KID_ATTACKS))])
def test_kid_path_traversal_injection_and_unknown_values_are_denied(authz, issuer_key, claims, kid):
    assert authz.token(sign(issuer_key, claims(), kid=kid)) == DENY


def test_a_token_without_kid_is_denied(authz, issuer_key, claims):
    token = raw_token(
        json.dumps({"alg": "RS256", "typ": "JWT"}).encode(), json.dumps(claims()).encode(), issuer_key.private
    )
    assert authz.token(token) == DENY


# -- key references in the header: never followed ---------------------------------------------------


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
@pytest.mark.parametrize("kid_of", ["attacker", "issuer"])
def test_headers_pointing_at_an_attacker_key_are_denied_without_contacting_it(
    authz, attacker, attacker_key, issuer_key, claims, header, kid_of
):
    value = {
        "jku": f"{attacker.base_url}/jwks.json",
        "x5u": f"{attacker.base_url}/cert.pem",
        "jwk": attacker_key.public_jwk(),
        "x5c": [base64.b64encode(b"not really a certificate, and never read").decode()],
    }[header]
    kid = attacker_key.kid if kid_of == "attacker" else issuer_key.kid
    forged = sign(attacker_key, claims(scope="state:write"), kid=kid, **{header: value})
    assert authz.token(forged) == DENY
    assert attacker.requests == []


# -- header semantics -------------------------------------------------------------------------------


@pytest.mark.parametrize("crit", [["http://example.com/unknown"], ["exp"], ["b64"], []])
def test_unknown_crit_is_denied(authz, issuer_key, claims, crit):
    assert authz.token(sign(issuer_key, claims(), crit=crit, **{"http://example.com/unknown": True})) == DENY


def test_jwe_five_segments_is_denied(authz):
    header = header_b64({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "k"})
    assert authz.token(f"{header}.{b64url(b'k' * 32)}.{b64url(b'iv')}.{b64url(b'ct')}.{b64url(b'tag')}") == DENY


@pytest.mark.parametrize("cty", ["JWT", "jwt", "application/jwt"])
def test_nested_tokens_are_denied(authz, issuer_key, claims, cty):
    assert authz.token(sign(issuer_key, claims(), cty=cty)) == DENY


@pytest.mark.parametrize(
    ("typ", "allowed"),
    [("at+jwt", True), ("application/at+jwt", True), ("AT+JWT", True), ("JWT", False), (None, False), ("jwt", False)],
)
def test_typ_is_checked_when_one_is_required(configure, issuer_key, claims, typ, allowed):
    authz = configure(STATE_OIDC_REQUIRED_TYP="at+jwt")
    assert authz.allows(sign(issuer_key, claims(), typ=typ)) is allowed


# -- the kind of token: access tokens only -------------------------------------------------------------

# Each way a token says it is an ID token: refused by default, accepted with STATE_OIDC_ACCEPT_ID_TOKENS.
ID_TOKEN_SHAPES = {
    "cognito-token_use": ({"token_use": "id"}, {}),
    "keycloak-payload-typ": ({"typ": "ID"}, {}),
    "at_hash": ({"at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q"}, {}),
    "c_hash": ({"c_hash": "LDktKdoQak3Pk0cnXxCltA"}, {}),
    "jose-typ": ({}, {"typ": "id_token+jwt"}),
    "jose-typ-media-type": ({}, {"typ": "application/id_token+jwt"}),
}
# Tokens that say they are neither an access token nor an ID token: refused whatever the opt-out.
OTHER_TOKEN_SHAPES = {
    "cognito-refresh": ({"token_use": "refresh"}, {}),
    "token_use-null": ({"token_use": None}, {}),
    "token_use-number": ({"token_use": 1}, {}),
    "keycloak-refresh": ({"typ": "Refresh"}, {}),
    "keycloak-offline": ({"typ": "Offline"}, {}),
    "keycloak-logout": ({"typ": "Logout"}, {}),
    "typ-not-a-string": ({"typ": ["Bearer"]}, {}),
    "logout-token": ({"events": {"http://schemas.openid.net/event/backchannel-logout": {}}}, {"typ": "logout+jwt"}),
    "security-event": ({}, {"typ": "secevent+jwt"}),
    "introspection-response": ({}, {"typ": "token-introspection+jwt"}),
    "dpop-proof": ({}, {"typ": "dpop+jwt"}),
}
# What access tokens look like (Cognito, Keycloak, RFC 9068, Okta and Cognito without typ).
ACCESS_TOKEN_SHAPES = {
    "cognito-access": ({"token_use": "access"}, {"typ": ABSENT}),
    "keycloak-bearer": ({"typ": "Bearer"}, {"typ": "JWT"}),
    "rfc9068": ({}, {"typ": "at+jwt"}),
    "rfc9068-media-type": ({}, {"typ": "application/at+jwt"}),
    "plain-jwt": ({}, {"typ": "jwt"}),
}


@pytest.mark.parametrize("shape", sorted(ID_TOKEN_SHAPES))
def test_id_tokens_are_denied_by_default_and_accepted_when_configured(configure, issuer_key, claims, shape):
    extra_claims, headers = ID_TOKEN_SHAPES[shape]
    token = sign(issuer_key, claims(**extra_claims), **headers)
    assert configure().token(token) == DENY
    assert configure(STATE_OIDC_ACCEPT_ID_TOKENS="false").token(token) == DENY
    assert configure(STATE_OIDC_ACCEPT_ID_TOKENS="true").allows(token)


@pytest.mark.parametrize("shape", sorted(OTHER_TOKEN_SHAPES))
@pytest.mark.parametrize("accept_id_tokens", ["false", "true"])
def test_refresh_logout_and_other_kinds_of_token_are_always_denied(
    configure, issuer_key, claims, shape, accept_id_tokens
):
    extra_claims, headers = OTHER_TOKEN_SHAPES[shape]
    authz = configure(STATE_OIDC_ACCEPT_ID_TOKENS=accept_id_tokens)
    assert authz.token(sign(issuer_key, claims(**extra_claims), **headers)) == DENY


@pytest.mark.parametrize("shape", sorted(ACCESS_TOKEN_SHAPES))
def test_access_tokens_are_allowed(authz, issuer_key, claims, shape):
    extra_claims, headers = ACCESS_TOKEN_SHAPES[shape]
    assert authz.allows(sign(issuer_key, claims(**extra_claims), **headers))


def test_a_cognito_id_token_for_our_app_client_is_denied(configure, issuer_key, claims):
    # The pool's ID token names the app client in `aud`: with the audience set to that client id (a
    # misconfiguration, since access tokens carry it in `client_id`), only its kind keeps it out.
    authz = configure(STATE_OIDC_AUDIENCE="4b1v2c3d4e5f6g7h8i9j0k", STATE_OIDC_ROLES_CLAIM="cognito:groups")
    id_token = claims(
        aud="4b1v2c3d4e5f6g7h8i9j0k",
        token_use="id",
        at_hash="HK6E_P6Dh8Y93mRNtsDB1Q",
        email="alice@example.com",
        **{"cognito:username": "alice", "cognito:groups": ["state-admin"]},
        scope=ABSENT,
    )
    assert authz.token(sign(issuer_key, id_token, typ=ABSENT)) == DENY


# -- time claims --------------------------------------------------------------------------------------


def test_expired_beyond_the_leeway_is_denied(authz, issuer_key, claims):
    now = int(time.time())
    assert authz.token(sign(issuer_key, claims(iat=now - 600, nbf=now - 600, exp=now - 31))) == DENY


def test_expired_within_the_leeway_is_allowed(authz, issuer_key, claims):
    now = int(time.time())
    assert authz.allows(sign(issuer_key, claims(iat=now - 600, nbf=now - 600, exp=now - 20)))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_nbf_or_iat_in_the_future_is_denied(authz, issuer_key, claims, claim):
    future = int(time.time()) + 120
    assert authz.token(sign(issuer_key, claims(**{claim: future}, exp=future + 600))) == DENY


def test_a_lifetime_over_the_maximum_is_denied_and_at_it_allowed(authz, issuer_key, claims):
    now = int(time.time())
    assert authz.token(sign(issuer_key, claims(iat=now, exp=now + 3601))) == DENY
    assert authz.allows(sign(issuer_key, claims(iat=now, exp=now + 3600)))


@pytest.mark.parametrize("lifetime", [-10, 0])
def test_a_token_that_expires_before_it_was_issued_is_denied(authz, issuer_key, claims, lifetime):
    # Issued 10 s ago and expired within the leeway: only the exp <= iat rule refuses it.
    issued = int(time.time()) - 10
    assert authz.token(sign(issuer_key, claims(iat=issued, nbf=issued, exp=issued + lifetime))) == DENY
    assert authz.allows(sign(issuer_key, claims(iat=issued, nbf=issued, exp=issued + 1)))


def test_the_maximum_lifetime_is_configurable(configure, issuer_key, claims):
    authz = configure(STATE_OIDC_MAX_LIFETIME_SECONDS="300")
    now = int(time.time())
    assert authz.token(sign(issuer_key, claims(iat=now, exp=now + 600))) == DENY


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("shape", ["string", "float", "negative", "true", "false", "null-ish", "huge"])
def test_numeric_claims_of_the_wrong_type_are_denied(authz, issuer_key, claims, claim, shape):
    now = int(time.time())
    good = {"exp": now + 600, "iat": now, "nbf": now}[claim]
    value = {
        "string": str(good),
        "float": good + 0.5,
        "negative": -good,
        "true": True,
        "false": False,
        "null-ish": "",
        "huge": 2**64,
    }[shape]
    assert authz.token(sign(issuer_key, claims(**{claim: value}))) == DENY


# -- issuer, audience, required claims ----------------------------------------------------------------


@pytest.mark.parametrize("variant", ["wrong", "prefix", "trailing-slash", "upper", "array"])
def test_a_wrong_issuer_is_denied(authz, host, issuer_key, claims, variant):
    iss = {
        "wrong": "http://127.0.0.1:1",
        "prefix": host.issuer[:-1],
        "trailing-slash": host.issuer + "/",
        "upper": host.issuer.upper(),
        "array": [host.issuer],
    }[variant]
    assert authz.token(sign(issuer_key, claims(iss=iss))) == DENY


@pytest.mark.parametrize(
    ("aud", "allowed"),
    [
        ("someone-else", False),
        (["someone-else", "another"], False),
        ([], False),
        ("", False),
        (AUDIENCE.upper(), False),
        ([AUDIENCE, 1], False),
        ({"aud": AUDIENCE}, False),
        ([AUDIENCE], True),
        (["someone-else", AUDIENCE], True),
    ],
)
def test_the_audience_must_name_us(authz, issuer_key, claims, aud, allowed):
    assert authz.allows(sign(issuer_key, claims(aud=aud))) is allowed


@pytest.mark.parametrize("claim", ["iss", "exp", "iat", "aud", "sub"])
def test_each_required_claim_missing_is_denied(authz, issuer_key, claims, claim):
    assert authz.token(sign(issuer_key, claims(**{claim: ABSENT}))) == DENY


def test_configured_required_claims_are_enforced(configure, issuer_key, claims):
    authz = configure(STATE_OIDC_REQUIRED_CLAIMS="iss exp iat jti")
    assert authz.token(sign(issuer_key, claims(jti=ABSENT))) == DENY
    assert authz.allows(sign(issuer_key, claims()))


@pytest.mark.parametrize("sub", ["", 42, ["alice"], None, "x" * 1025])
def test_a_subject_that_is_not_a_string_is_denied(authz, issuer_key, claims, sub):
    assert authz.token(sign(issuer_key, claims(sub=sub))) == DENY


@pytest.mark.parametrize(
    "sub",
    [
        'alice","status":"200',  # would forge fields of the access log, which API Gateway fills in unescaped
        "alice\\admin",
        "alice\nERROR forged line",
        "alice\x00",
        "alice\x7f",
        "alice\u2028x",
        "system:ttl",  # the service's own actor for expiries (history and events)
        "system:anything",
    ],
)
def test_a_subject_that_cannot_be_logged_verbatim_or_is_the_services_own_is_denied(authz, issuer_key, claims, sub):
    assert authz.token(sign(issuer_key, claims(sub=sub))) == DENY


@pytest.mark.parametrize(
    "sub",
    ["alice:settings", "f:3b1e0c5a:alice", "alice@example.com", "auth0|64f0c0ffee", "José", "a b", "ali*", "System:x"],
)
def test_subjects_that_only_get_no_sub_grants_are_still_allowed(authz, issuer_key, claims, sub):
    assert authz.token(sign(issuer_key, claims(sub=sub)))["context"]["sub"] == sub


@pytest.mark.parametrize(("claim", "value"), [("scope", 7), ("scope", ["state:read state:write"]), ("roles", "admin")])
def test_scopes_and_roles_of_the_wrong_shape_are_denied(authz, issuer_key, claims, claim, value):
    assert authz.token(sign(issuer_key, claims(**{claim: value}))) == DENY


# -- encoding ----------------------------------------------------------------------------------------


def test_duplicate_members_in_the_header_are_denied(authz, issuer_key, claims):
    payload = json.dumps(claims()).encode()
    for header in (
        f'{{"alg":"none","kid":"{issuer_key.kid}","alg":"RS256"}}',
        f'{{"alg":"RS256","kid":"{issuer_key.kid}","kid":"other"}}',
    ):
        assert authz.token(raw_token(header.encode(), payload, issuer_key.private)) == DENY


def test_duplicate_members_in_the_payload_are_denied(authz, issuer_key, claims):
    header = json.dumps({"alg": "RS256", "typ": "JWT", "kid": issuer_key.kid}).encode()
    body = json.dumps(claims(sub="alice"))[:-1] + ', "sub": "admin"}'
    assert authz.token(raw_token(header, body.encode(), issuer_key.private)) == DENY


def _non_canonical(segment):
    """The same bytes with non-zero unused bits in the last character."""
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for candidate in alphabet:
        variant = segment[:-1] + candidate
        if variant != segment and base64.urlsafe_b64decode(variant + "=" * (-len(variant) % 4)) == raw:
            return variant
    raise AssertionError("segment has no unused bits")


@pytest.mark.parametrize("which", ["header", "payload", "signature", "padding", "standard-alphabet"])
def test_non_canonical_base64url_is_denied(authz, issuer_key, claims, which):
    header = {"alg": "RS256", "typ": "JWT", "kid": issuer_key.kid}
    body = claims()
    # Pad the JSON so that each segment's length leaves unused bits in its last character.
    header_json, body_json = json.dumps(header).encode(), json.dumps(body).encode()
    header_json += b" " * (1 if len(header_json) % 3 == 0 else 0)
    body_json += b" " * (1 if len(body_json) % 3 == 0 else 0)
    h, p = b64url(header_json), b64url(body_json)
    if which == "header":
        token = raw_token(_non_canonical(h), p, issuer_key.private)
    elif which == "payload":
        token = raw_token(h, _non_canonical(p), issuer_key.private)
    elif which == "padding":
        token = raw_token(h + "=" * (-len(h) % 4), p, issuer_key.private)
    elif which == "standard-alphabet":
        token = raw_token(h, p, issuer_key.private).replace("-", "+").replace("_", "/")
        if "+" not in token and "/" not in token:
            pytest.skip("no - or _ in this token")
    else:
        token = raw_token(h, p, issuer_key.private)
        h2, p2, s2 = token.split(".")
        token = f"{h2}.{p2}.{_non_canonical(s2)}"
    assert authz.token(raw_token(h, p, issuer_key.private))["isAuthorized"] is True
    assert authz.token(token) == DENY


def test_a_header_section_over_the_gateway_limit_is_denied(authz, issuer_key, claims):
    assert authz.token(sign(issuer_key, claims(), **{"x-padding": "a" * 11_000})) == DENY


# -- the JWKS endpoint misbehaving and key rotation --------------------------------------------------


def _primed(authz, valid):
    """The authorizer with its keys fetched once, on a fake clock."""
    clock = MonotonicClock(1_000.0)
    authz.keys.clock = clock
    assert authz.allows(valid)
    return clock


@pytest.mark.parametrize("mode", ["down", "slow", "html", "redirect", "huge"])
def test_cached_keys_keep_working_when_the_jwks_endpoint_misbehaves(authz, host, attacker, valid, mode):
    clock = _primed(authz, valid)
    host.mode, host.redirect_to = mode, f"{attacker.base_url}/jwks.json"
    clock.now += 301  # the keys are due for a refresh, which fails
    started = time.monotonic()
    assert authz.allows(valid)
    assert time.monotonic() - started < 2.5  # the 1.5 s fetch limit, then the cached keys
    assert host.jwks_requests == 2
    started = time.monotonic()
    assert authz.allows(valid)  # within the cooldown: no second attempt, no second wait
    assert time.monotonic() - started < 0.5
    assert host.jwks_requests == 2
    assert attacker.requests == []


@pytest.mark.parametrize("mode", ["down", "slow", "html", "redirect", "huge"])
def test_without_cached_keys_a_misbehaving_jwks_denies_quickly(authz, host, attacker, valid, mode):
    host.mode, host.redirect_to = mode, f"{attacker.base_url}/jwks.json"
    started = time.monotonic()
    assert authz.token(valid) == DENY
    assert time.monotonic() - started < 2.5
    assert attacker.requests == []


def test_an_unknown_kid_flood_fetches_the_jwks_at_most_twice_a_minute(authz, host, attacker_key, claims, valid):
    clock = _primed(authz, valid)
    for step in range(600):  # 0 to 59.9 s
        clock.now = 1_000.0 + step * 0.1
        assert authz.token(sign(attacker_key, claims(), kid=f"made-up-{step}")) == DENY
    assert host.jwks_requests == 2
    assert authz.allows(valid)


def test_an_unknown_kid_flood_in_real_time_fetches_nothing_more(authz, host, attacker_key, claims, valid):
    assert authz.allows(valid)
    for step in range(300):
        assert authz.token(sign(attacker_key, claims(), kid=f"made-up-{step}")) == DENY
    assert host.jwks_requests == 1


def test_a_key_rotated_out_of_the_jwks_is_denied_after_the_cache_ttl(authz, host, issuer_key, claims):
    retiring = rsa_key()
    host.keys.append(retiring)
    clock = _primed(authz, sign(retiring, claims()))
    host.keys.remove(retiring)
    clock.now += 299
    assert authz.allows(sign(retiring, claims()))  # still cached
    clock.now += 1
    assert authz.token(sign(retiring, claims())) == DENY
    assert authz.allows(sign(issuer_key, claims()))
    assert host.jwks_requests == 2


def test_a_token_from_a_newly_published_key_is_allowed_with_one_fetch(authz, host, claims, valid):
    clock = _primed(authz, valid)
    fresh = rsa_key()
    host.keys.append(fresh)
    clock.now += 30  # the cooldown since the last fetch has passed
    assert authz.allows(sign(fresh, claims()))
    assert host.jwks_requests == 2
    assert authz.allows(sign(fresh, claims()))
    assert host.jwks_requests == 2


def test_a_new_key_within_the_cooldown_waits_for_it(authz, host, claims, valid):
    clock = _primed(authz, valid)
    fresh = rsa_key()
    host.keys.append(fresh)
    clock.now += 5
    assert authz.token(sign(fresh, claims())) == DENY
    assert host.jwks_requests == 1
    clock.now += 25
    assert authz.allows(sign(fresh, claims()))


def test_an_issuer_down_at_cold_start_is_asked_again_only_after_the_cooldown(authz, host, valid):
    # Given a cold authorizer whose issuer's discovery document is unavailable
    host.discovery_down = True
    clock = MonotonicClock(1_000.0)
    authz.module.issuer().clock = clock
    # When requests keep coming for the cooldown (30 s), each is refused at once with 1 discovery request
    started = time.monotonic()
    for step in range(300):
        clock.now = 1_000.0 + step * 0.1
        assert authz.token(valid) == DENY
    assert host.discovery_requests == 1
    assert time.monotonic() - started < 5
    # Then after the cooldown, with the issuer back, discovery is tried again and the token allowed
    host.discovery_down = False
    clock.now = 1_030.0
    assert authz.allows(valid)
    assert host.discovery_requests == 2


def test_a_cold_authorizer_accepts_a_new_key_with_one_fetch(authz, host, claims):
    fresh = rsa_key()
    host.keys.append(fresh)
    assert authz.allows(sign(fresh, claims()))
    assert host.jwks_requests == 1


def test_the_jwks_ttl_and_cooldown_are_configurable_within_limits(configure, monkeypatch):
    from state_core.config import AuthorizerSettings, SettingsError

    base = {"STATE_OIDC_ISSUER": "https://issuer.example.com", "STATE_OIDC_AUDIENCE": "a"}
    assert AuthorizerSettings.from_environ({**base, "STATE_JWKS_TTL_SECONDS": "60"}).jwks_ttl_seconds == 60
    for env in (
        {"STATE_JWKS_TTL_SECONDS": "301"},
        {"STATE_OIDC_ALGORITHMS": "RS256,HS256"},
        {"STATE_OIDC_ALGORITHMS": "none"},
    ):
        with pytest.raises(SettingsError):
            AuthorizerSettings.from_environ({**base, **env})


def test_an_http_issuer_off_loopback_is_refused(configure, monkeypatch, valid):
    authz = configure(STATE_OIDC_ISSUER="http://issuer.example.com")
    assert authz.token(valid) == DENY


# -- no storage behind the authorizer, no token in its logs -----------------------------------------


def test_the_authorizer_has_no_dynamodb_or_redis_client_at_all():
    """Every rejection makes no DynamoDB or Redis call because the authorizer cannot make one: neither it
    nor anything it imports loads boto3, redis or the state store."""
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('app', 'functions/authorizer/app.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        # Powertools imports the bare botocore package (for its user agent); no client or session.
        "bad = ('boto3', 'botocore.', 'redis', 'state_core.storage', 'state_core.service', 'state_core.runtime')\n"
        "print(sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "layers" / "state_core")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_no_token_appears_in_the_authorizer_logs(authz, issuer_key, attacker_key, claims, valid, capfd):
    import logging

    from state_core.observability import logger

    lines: list[str] = []
    collector = logging.Handler()
    collector.setFormatter(logger.registered_formatter)
    collector.emit = lambda record: lines.append(collector.format(record))
    previous = logger.log_level
    logger.addHandler(collector)
    logger.setLevel("DEBUG")
    try:
        forged = sign(attacker_key, claims(), kid=issuer_key.kid)
        authz.token(valid)
        authz.token(forged)
        authz.token(valid.rsplit(".", 1)[0] + ".")
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous)
    out, err = capfd.readouterr()
    text = "\n".join(lines) + out + err
    assert text.count('"token refused"') == 2
    for token in (valid, forged):
        for part in token.split("."):
            assert part not in text


# -- 10,000 mutated tokens ----------------------------------------------------------------------------

_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \x00é"


def _mutate(rng, token, attacker_key, issuer_key, host_issuer):
    try:
        return _structured_mutation(rng, token, attacker_key, issuer_key, host_issuer)
    except (ValueError, TypeError, KeyError, IndexError):  # an earlier mutation broke the structure
        i = rng.randrange(len(token))
        return token[:i] + rng.choice(_CHARS) + token[i + 1 :]


def _structured_mutation(rng, token, attacker_key, issuer_key, host_issuer):  # noqa: PLR0911  one return per mutation
    header, payload, signature = token.split(".")
    op = rng.randrange(10)
    if op == 0:
        i = rng.randrange(len(token))
        return token[:i] + rng.choice(_CHARS) + token[i + 1 :]
    if op == 1:
        i = rng.randrange(len(token))
        return token[:i] + token[i + 1 :]
    if op == 2:
        i = rng.randrange(len(token) + 1)
        return token[:i] + rng.choice(_CHARS) + token[i:]
    if op == 3:
        parts = [header, payload, signature]
        rng.shuffle(parts)
        return ".".join(parts)
    if op == 4:
        return token[: rng.randrange(len(token))]
    if op == 5:
        parts = [header, payload, signature]
        return ".".join(parts + [rng.choice(parts) for _ in range(rng.choice([1, 2, 3]))])
    if op == 6:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
        field, value = rng.choice(
            [
                ("alg", rng.choice(["none", "HS256", "RS512", "ES256", "PS256", "", None, 1])),
                ("kid", rng.choice(["", "x", "../x", issuer_key.kid + "x", None])),
                ("crit", ["exp"]),
                ("jku", "http://127.0.0.1:1/jwks.json"),
                ("cty", "JWT"),
                ("typ", rng.choice(["at+jwt", None, 5])),
            ]
        )
        decoded[field] = value
        return f"{b64url(json.dumps(decoded).encode())}.{payload}.{signature}"
    if op == 7:
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        field, value = rng.choice(
            [
                ("sub", rng.choice(["admin", "", None])),
                ("scope", "state:read state:write state:admin"),
                ("exp", rng.choice([str(decoded["exp"]), decoded["exp"] + 1, 0.5, True])),
                ("aud", rng.choice(["other", [], None])),
                ("iss", rng.choice([host_issuer + "/", "http://evil"])),
                ("roles", ["state-admin"]),
            ]
        )
        decoded[field] = value
        return f"{header}.{b64url(json.dumps(decoded).encode())}.{signature}"
    if op == 8:
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        decoded["sub"] = "mallory"
        return sign(attacker_key, decoded, kid=rng.choice([issuer_key.kid, attacker_key.kid]))
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return f"{header}.{payload}.{b64url(bytes(raw))}"


def test_ten_thousand_mutated_tokens_are_all_rejected(authz, host, issuer_key, attacker_key, claims, valid):
    rng = random.Random(20261128)
    assert authz.allows(valid)
    statuses = {401: 0, 403: 0}
    tried = 0
    while tried < 10_000:
        mutated = valid
        for _ in range(rng.choice([1, 1, 2, 3])):
            mutated = _mutate(rng, mutated, attacker_key, issuer_key, host.issuer) if mutated else "x"
        headers = {"authorization": f"Bearer {mutated}"}
        if bearer_token(headers) == valid:
            continue  # whitespace around the same token is the same token
        tried += 1
        # API Gateway answers 401 itself for an empty identity source; everything else reaches the
        # authorizer, whose denial is 403. An exception here would be a 500.
        status = 401 if not headers["authorization"].strip() else 403
        answer = authz(headers)
        assert answer == DENY, mutated
        statuses[status] += 1
    assert sum(statuses.values()) == 10_000
    assert authz.allows(valid)


# -- what a refusal counts --------------------------------------------------------------------------


def _denials(out: str) -> list[dict]:
    """The EMF records the authorizer printed that count a denial."""
    records = []
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "_aws" in record and "AuthorizationDenials" in record:
            records.append(record)
    return records


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("none", "no_token"),
        ("garbage", "malformed"),
        ("unknown kid", "unknown_key"),
        ("algorithm", "algorithm"),
        ("signature", "signature"),
        ("expired", "expired"),
        ("not yet valid", "not_yet_valid"),
        ("lifetime", "lifetime"),
        ("issuer", "issuer"),
        ("audience", "audience"),
        ("no subject", "claims"),
        ("id token", "not_access_token"),
    ],
)
def test_each_refusal_is_counted_with_its_reason_and_never_the_token(
    authz, issuer_key, attacker_key, claims, capsys, case, reason
):
    now = int(time.time())
    tokens = {
        "garbage": "not.a.jwt",
        "unknown kid": sign(issuer_key, claims(), kid="no-such-kid"),
        "algorithm": sign(issuer_key, claims(), alg="RS512"),
        "signature": sign(attacker_key, claims(), kid=issuer_key.kid),
        "expired": sign(issuer_key, claims(iat=now - 7200, exp=now - 3600)),
        "not yet valid": sign(issuer_key, claims(nbf=now + 3600)),
        "lifetime": sign(issuer_key, claims(exp=now + 10 * 86400)),
        "issuer": sign(issuer_key, claims(iss="https://issuer.example")),
        "audience": sign(issuer_key, claims(aud="someone-else")),
        "no subject": sign(issuer_key, claims(sub=ABSENT)),
        "id token": sign(issuer_key, claims(token_use="id")),
    }
    token = tokens.get(case)
    capsys.readouterr()
    answer = authz({} if token is None else {"authorization": f"Bearer {token}"})
    out = capsys.readouterr().out
    assert answer == DENY
    (record,) = _denials(out)
    assert record["AuthorizationDenials"] == [1.0]
    assert record["denial_reason"] == reason
    assert token is None or token not in out


def test_an_issuer_down_is_counted_as_a_denial_of_its_own(authz, host, valid, capsys):
    host.discovery_down = True
    capsys.readouterr()
    assert authz.token(valid) == DENY
    (record,) = _denials(capsys.readouterr().out)
    assert record["denial_reason"] == "issuer_unavailable"


def test_an_allowed_token_counts_no_denial(authz, valid, capsys):
    capsys.readouterr()
    assert authz.allows(valid)
    assert _denials(capsys.readouterr().out) == []
