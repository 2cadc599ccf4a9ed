"""The Lambda authorizer against the dev OIDC issuer's real discovery document and JWKS."""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.oidc import public_jwk
from devstack.token import mint

pytestmark = pytest.mark.integration


@pytest.fixture
def token(dev_issuer):
    def make(**kwargs):
        kwargs.setdefault("issuer", dev_issuer.issuer)
        kwargs.setdefault("state_dir", dev_issuer.state_dir)
        return mint(kwargs.pop("sub", "alice"), kwargs.pop("scope", "state:read state:write"), **kwargs)

    return make


def mallory_claims(dev_issuer):
    """Claims an attacker would want accepted: valid in every respect but the signature."""
    now = int(time.time())
    return {
        "iss": dev_issuer.issuer,
        "aud": "state-service",
        "sub": "mallory",
        "iat": now,
        "exp": now + 600,
        "scope": "state:write",
    }


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def test_valid_token_is_allowed_with_the_principal_in_the_context(authorize, token):
    answer = authorize(bearer(token(roles=["ops"])))
    assert answer == {
        "isAuthorized": True,
        "context": {"sub": "alice", "scopes": "state:read state:write", "roles": '["ops"]'},
    }


def test_scheme_is_case_insensitive(authorize, token):
    assert authorize({"authorization": f"bearer {token()}"})["isAuthorized"] is True


@pytest.mark.parametrize(
    "header", [{}, {"authorization": ""}, {"authorization": "Bearer"}, {"authorization": "Basic abc"}]
)
def test_missing_or_malformed_authorization_is_denied(authorize, header):
    assert authorize(header) == {"isAuthorized": False}


def test_expired_token_is_denied(authorize, token):
    assert authorize(bearer(token(ttl=-120)))["isAuthorized"] is False


def test_token_expired_within_the_leeway_is_allowed(authorize, token):
    assert authorize(bearer(token(ttl=-5)))["isAuthorized"] is True


def test_token_from_another_issuer_is_denied(authorize, token):
    assert authorize(bearer(token(issuer="http://127.0.0.1:1")))["isAuthorized"] is False


def test_token_for_another_audience_is_denied(authorize, token):
    assert authorize(bearer(token(audience="someone-else")))["isAuthorized"] is False


def test_token_not_yet_valid_is_denied(authorize, token):
    future = int(time.time()) + 600
    assert authorize(bearer(token(extra_claims={"nbf": future})))["isAuthorized"] is False
    assert authorize(bearer(token(extra_claims={"iat": future})))["isAuthorized"] is False


def test_token_without_a_subject_is_denied(authorize, token):
    assert authorize(bearer(token(sub="", extra_claims={})))["isAuthorized"] is False


def test_token_signed_by_another_key_with_our_kid_is_denied(authorize, dev_issuer):
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = mallory_claims(dev_issuer)
    forged = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": public_jwk(dev_issuer.key)["kid"]})
    assert authorize(bearer(forged))["isAuthorized"] is False


def test_alg_none_is_denied(authorize, token):
    _, payload, _ = token().split(".")
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    assert authorize(bearer(f"{none_header}.{payload}."))["isAuthorized"] is False


def test_hs256_signed_with_the_public_key_is_denied(authorize, dev_issuer):
    public_pem = dev_issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = mallory_claims(dev_issuer)
    header = {"alg": "HS256", "kid": public_jwk(dev_issuer.key)["kid"]}
    segments = [base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=") for part in (header, claims)]
    signature = hmac.new(public_pem, b".".join(segments), hashlib.sha256).digest()
    forged = b".".join([*segments, base64.urlsafe_b64encode(signature).rstrip(b"=")]).decode()
    assert authorize(bearer(forged))["isAuthorized"] is False


def test_garbage_token_is_denied(authorize):
    assert authorize(bearer("not.a.jwt"))["isAuthorized"] is False
