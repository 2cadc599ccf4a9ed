"""A representative subset of the JWT attack suite and the RBAC rules over real HTTP, through the local
gateway (API Gateway's 401/403/413 answers, its authorizer cache) into the real authorizer and handlers,
with the access log and the audit records the deployed service would write."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from devstack.oidc import load_or_create_key, public_jwk
from tests.jwt_support import b64url, key_host, rsa_key, sign

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def attacker():
    with key_host([rsa_key()]) as running:
        yield running


@pytest.fixture(scope="module")
def dev_key(devstack):
    return load_or_create_key(devstack.state_dir)


def get(devstack, key, authorization=None, **headers):
    if authorization is not None:
        headers["Authorization"] = authorization
    return requests.get(f"{devstack.base_url}/state/{key}", headers=headers, timeout=30)


def access_record(devstack, request_id):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in (devstack.log_dir / "access.log").read_text().splitlines():
            record = json.loads(line)
            if record["requestId"] == request_id:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no access log record for {request_id}")


def audit_record(devstack, function, request_id):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        path = devstack.log_dir / f"{function}.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            if '"state-service-audit"' in line:
                document = json.loads(line)
                if document["audit"]["request_id"] == request_id:
                    return document["audit"]
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id}")


def forged_tokens(devstack, dev_key, attacker):
    now = int(time.time())
    claims = {"iss": devstack.issuer, "aud": "state-service", "sub": "mallory", "iat": now, "exp": now + 600}
    claims["scope"] = "state:read state:write"
    kid = public_jwk(dev_key)["kid"]
    valid = devstack.token("mallory")
    header, payload, _ = valid.split(".")
    pem = dev_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_input = f"{b64url(json.dumps({'alg': 'HS256', 'kid': kid}).encode())}.{payload}"
    hs256 = f"{hs_input}.{b64url(hmac.new(pem, hs_input.encode(), hashlib.sha256).digest())}"
    jku_key = rsa_key()
    return {
        "random-signature": f"{header}.{payload}.{b64url(uuid.uuid4().bytes * 16)}",
        "alg-none": f"{b64url(json.dumps({'alg': 'none', 'kid': kid}).encode())}.{payload}.",
        "hs256-with-public-key": hs256,
        "expired": devstack.token("mallory", extra_claims={"iat": now - 900, "exp": now - 120}),
        "wrong-audience": devstack.token("mallory", audience="someone-else"),
        "lifetime-over-maximum": devstack.token("mallory", ttl=7200),
        "jku-to-attacker": sign(jku_key, claims, jku=f"{attacker.base_url}/jwks.json"),
        "jwe": ".".join(b64url(part) for part in (b'{"alg":"RSA-OAEP","enc":"A256GCM"}', b"k", b"iv", b"ct", b"tag")),
        "unknown-kid": sign(rsa_key(), claims),
        "cognito-id-token": devstack.token("mallory", extra_claims={"token_use": "id"}),
        "keycloak-id-token": devstack.token("mallory", extra_claims={"typ": "ID"}),
    }


@pytest.mark.parametrize(
    ("authorization", "status", "message"),
    [(None, 401, "Unauthorized"), ("", 401, "Unauthorized"), ("Bearer", 403, "Forbidden")],
    ids=["no-header", "empty", "bearer-only"],
)
def test_missing_tokens_are_answered_by_the_gateway(devstack, authorization, status, message):
    response = get(devstack, "user:1", authorization)
    assert (response.status_code, response.json()) == (status, {"message": message})
    record = access_record(devstack, response.headers["apigw-requestid"])
    assert (record["status"], record["error"], record["integrationLatency"]) == (status, message, "-")


def test_forged_and_invalid_tokens_are_forbidden_and_reach_no_handler(devstack, dev_key, attacker):
    for name, token in forged_tokens(devstack, dev_key, attacker).items():
        response = get(devstack, "user:1", f"Bearer {token}")
        assert (response.status_code, response.json()) == (403, {"message": "Forbidden"}), name
        record = access_record(devstack, response.headers["apigw-requestid"])
        # No integration ran, so no handler, DynamoDB or Redis call was made for it (the authorizer has no
        # client of either: tests/integration/test_jwt_attacks.py asserts that structurally).
        assert record["integrationLatency"] == "-", name
        assert record["routeKey"] == "GET /state/{key}"
    assert attacker.requests == []


def test_a_header_section_over_the_gateway_limit_is_refused_before_the_authorizer(devstack):
    token = devstack.token("alice", headers={"x-padding": "a" * 11_000})
    response = get(devstack, "user:1", f"Bearer {token}")
    assert response.status_code == 413


def test_a_valid_token_within_the_leeway_reaches_the_handler(devstack):
    now = int(time.time())
    token = devstack.token("alice", extra_claims={"iat": now - 900, "exp": now - 10})
    response = get(devstack, f"user:alice:{uuid.uuid4().hex}", f"Bearer {token}")
    assert response.status_code == 404
    assert access_record(devstack, response.headers["apigw-requestid"])["integrationLatency"] != "-"


def test_the_access_log_has_exactly_the_template_format_fields(devstack, state_template):
    response = get(devstack, "user:1")
    record = access_record(devstack, response.headers["apigw-requestid"])
    api = state_template.resources["StateApi"]["Properties"]
    assert set(record) == set(json.loads(api["AccessLogSettings"]["Format"]))
    assert "Authorization" not in json.dumps(record)


def test_the_access_log_names_the_subject_of_allowed_requests_only(devstack):
    token = devstack.token("alice-logged", scope="state:read")
    for _ in range(2):  # the second answer comes from the authorizer cache
        response = get(devstack, f"user:{uuid.uuid4().hex}", f"Bearer {token}")
        assert response.status_code == 404
        assert access_record(devstack, response.headers["apigw-requestid"])["subject"] == "alice-logged"
    refused = devstack.token("mallory-logged", audience="someone-else")
    for authorization in (None, f"Bearer {refused}", f"Bearer {refused}"):
        response = get(devstack, "user:1", authorization)
        assert response.status_code in (401, 403)
        assert access_record(devstack, response.headers["apigw-requestid"])["subject"] == "-"


def test_a_read_only_token_cannot_write_and_the_denial_is_audited(devstack):
    key = f"user:alice:{uuid.uuid4().hex}"
    token = devstack.token("alice", scope="state:read")
    response = requests.put(
        f"{devstack.base_url}/state/{key}",
        data=json.dumps({"value": {"secret": "never-logged"}}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 403
    assert response.headers["Content-Type"] == "application/problem+json"
    record = audit_record(devstack, "PutStateFunction", response.headers["apigw-requestid"])
    assert (record["subject"], record["action"], record["key"], record["decision"], record["status"]) == (
        "alice",
        "put",
        key,
        "deny",
        403,
    )
    assert "never-logged" not in (devstack.log_dir / "PutStateFunction.log").read_text()


def test_a_role_from_the_shipped_policy_grants_writes_and_the_write_is_audited(devstack):
    key = f"team:{uuid.uuid4().hex}"
    token = devstack.token("ops", scope="", roles=["state-admin"])
    response = requests.put(
        f"{devstack.base_url}/state/{key}",
        data=json.dumps({"value": 1}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 201
    record = audit_record(devstack, "PutStateFunction", response.headers["apigw-requestid"])
    assert (record["decision"], record["status"], record["version"]) == ("allow", 201, 1)


def test_a_subject_pattern_grants_only_the_callers_keys(devstack):
    token = devstack.token("alice", scope="state:read:user:${sub}:*")
    assert get(devstack, f"user:alice:{uuid.uuid4().hex}", f"Bearer {token}").status_code == 404
    assert get(devstack, "user:bob:prefs", f"Bearer {token}").status_code == 403


def test_a_subject_holding_the_separator_cannot_reach_another_subjects_keys(devstack):
    key = "user:alice:settings:theme"

    def call(method, sub):
        token = devstack.token(sub, scope="", roles=["state-self-service"])
        return requests.request(
            method,
            f"{devstack.base_url}/state/{key}",
            data=json.dumps({"value": {"by": sub}}) if method == "PUT" else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )

    assert call("PUT", "alice").status_code in (200, 201)
    for method in ("PUT", "GET"):
        response = call(method, "alice:settings")
        assert response.status_code == 403, method
        assert response.headers["Content-Type"] == "application/problem+json"
    read = call("GET", "alice")
    assert (read.status_code, read.json()["value"]) == (200, {"by": "alice"})


def _cors(response):
    return [k for k in response.headers if k.lower().startswith("access-control-")]


@pytest.mark.parametrize("attack", ["foreign-origin", "rebound-host"])
def test_no_local_listener_serves_a_web_page(devstack, attack):
    # What a page the developer opens could send to each listener of `make dev`: from its own origin, or
    # from a name its attacker rebinds to 127.0.0.1 (same-origin then, so CORS would not even be asked).
    key = f"web-page-{uuid.uuid4().hex}"
    token = devstack.token("alice")
    requests_by_listener = {
        "gateway": ("PUT", f"{devstack.base_url}/state/{key}", {"Authorization": f"Bearer {token}"}),
        "moto": ("GET", f"{devstack.moto_url}/moto-api/data.json", {}),
        "issuer": ("GET", f"{devstack.issuer}/jwks.json", {}),
    }
    for listener, (method, url, headers) in requests_by_listener.items():
        port = url.split("/")[2].rsplit(":", 1)[1]
        if attack == "foreign-origin":
            headers = {**headers, "Origin": "http://evil.example"}
        else:
            headers = {**headers, "Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
        response = requests.request(method, url, headers=headers, json={"value": {"pwned": True}}, timeout=30)
        assert response.status_code == 403, listener
        assert _cors(response) == [], listener
        assert "pwned" not in response.text, listener
    # Nothing was written: the key does not exist for its rightful reader either.
    answer = get(devstack, key, f"Bearer {token}")
    assert answer.status_code == 404


def test_local_listeners_send_no_cors_headers_to_this_machine(devstack):
    token = devstack.token("alice")
    origin = {"Origin": "http://127.0.0.1:8000"}
    answers = [
        get(devstack, f"no-cors-{uuid.uuid4().hex}", f"Bearer {token}", **origin),
        requests.options(
            f"{devstack.base_url}/state/k", headers={**origin, "Access-Control-Request-Method": "PUT"}, timeout=30
        ),
        requests.get(f"{devstack.issuer}/jwks.json", headers=origin, timeout=30),
        requests.options(
            f"{devstack.moto_url}/", headers={**origin, "Access-Control-Request-Method": "POST"}, timeout=30
        ),
    ]
    assert [a.status_code for a in answers] == [404, 404, 200, 403]
    assert [_cors(a) for a in answers] == [[], [], [], []]
