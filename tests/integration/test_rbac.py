"""RBAC by key pattern and role, enforced by the real handlers on the validated key, with the
role policy file, the audit record of every request, and tokens shaped like Cognito's, Auth0's and
Okta's going through the real authorizer into the handlers."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import pytest
from conftest import http_event

from state_core.observability import logger as service_logger
from state_core.security import audit
from state_core.security.policy import PolicyError, parse_role_policy
from tests.jwt_support import ABSENT, AUDIENCE, Authorizer, claims_for, key_host, rsa_key, sign

pytestmark = pytest.mark.integration

SECRET_VALUE = "s3cret-value-never-logged"


class _Collect(logging.Handler):
    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def audit_records():
    """The audit records written during the test, as the JSON documents the audit logger emits."""
    collector = _Collect(audit.audit_logger.registered_formatter)
    audit.audit_logger.addHandler(collector)
    yield collector
    audit.audit_logger.removeHandler(collector)


@pytest.fixture
def service_log():
    collector = _Collect()
    service_logger.addHandler(collector)
    yield collector
    service_logger.removeHandler(collector)


def call(invoke, operation, key, *, scopes="", roles=(), sub="alice", **kwargs):
    body = {"get": None, "delete": None, "put": {"value": {"secret": SECRET_VALUE}}, "patch": {"a": 1}}[operation]
    event = http_event(operation, key, body=body, scopes=scopes, sub=sub, **kwargs)
    if "authorizer" in event["requestContext"]:
        event["requestContext"]["authorizer"]["lambda"]["roles"] = json.dumps(list(roles))
    return invoke(f"{operation}_state", event)


def status(response):
    return response["statusCode"]


# -- scopes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["put", "patch", "delete"])
def test_a_read_only_token_cannot_write(invoke, operation):
    assert status(call(invoke, operation, f"user:{uuid.uuid4().hex}", scopes="state:read")) == 403


@pytest.mark.parametrize(("key", "expected"), [("user:1", 201), ("userx:1", 403), ("USER:1", 403), ("admin:1", 403)])
def test_a_prefix_grant_covers_only_its_prefix(invoke, key, expected):
    key = key + uuid.uuid4().hex if expected == 201 else key
    assert status(call(invoke, "put", key, scopes="state:write:user:*")) == expected


@pytest.mark.parametrize(("key", "expected"), [("user:alice:prefs", 200), ("user:bob:prefs", 403)])
def test_a_subject_grant_covers_only_the_callers_keys(invoke, key, expected):
    scopes = "state:write:user:${sub}:* state:read:user:${sub}:*"
    assert status(call(invoke, "put", key, scopes=scopes)) in ((200, 201) if expected == 200 else (403,))
    assert status(call(invoke, "get", key, scopes=scopes)) == expected


def test_a_subject_that_is_not_a_key_fragment_grants_nothing(invoke):
    scopes = "state:read:user:${sub}:*"
    assert status(call(invoke, "get", "user:auth0:prefs", scopes=scopes, sub="auth0|prefs")) == 403


@pytest.mark.parametrize(
    "sub",
    [
        "alice:settings",  # would cover user:alice:settings:*, which is alice's
        "f:3b1e0c5a-7d1f-4c39-9f0e-2a4c6b8d0e11:alice",  # a Keycloak federated subject
        "alice@example.com",
        "ali*",
    ],
)
def test_a_subject_that_is_not_one_key_segment_gets_nothing_from_the_self_service_role(invoke, sub):
    key = f"user:alice:settings:{uuid.uuid4().hex}"
    assert status(call(invoke, "put", key, roles=["state-self-service"], sub="alice")) == 201
    assert status(call(invoke, "put", key, roles=["state-self-service"], sub=sub)) == 403
    assert status(call(invoke, "get", key, roles=["state-self-service"], sub=sub)) == 403
    # Nor its "own" keys: 403, or 400 where the subject cannot even be part of a key.
    own = f"user:{sub}:{uuid.uuid4().hex}"
    assert status(call(invoke, "put", own, roles=["state-self-service"], sub=sub)) in (400, 403)
    assert status(call(invoke, "get", own, roles=["state-self-service"], sub=sub)) in (400, 403)
    assert status(call(invoke, "get", key, roles=["state-self-service"], sub="alice")) == 200


def test_a_token_scope_whose_sub_does_not_end_its_segment_grants_nothing(invoke):
    key = f"user:alice:{uuid.uuid4().hex}"
    assert status(call(invoke, "put", key, scopes="state:write")) == 201
    assert status(call(invoke, "get", key, scopes="state:read:user:${sub}*", sub="ali")) == 403
    assert status(call(invoke, "get", key, scopes="state:read:user:${sub}*", sub="alice")) == 403
    assert status(call(invoke, "get", key, scopes="state:read:user:${sub}:*", sub="alice")) == 200


def test_an_exact_grant_covers_one_key(invoke):
    key = f"cfg:{uuid.uuid4().hex}"
    assert status(call(invoke, "put", key, scopes=f"state:write:{key}")) == 201
    assert status(call(invoke, "put", key + "x", scopes=f"state:write:{key}")) == 403


# -- roles and the policy file ------------------------------------------------------------------------


def test_roles_in_the_shipped_policy_grant_their_permissions(invoke):
    key = f"user:alice:{uuid.uuid4().hex}"
    assert status(call(invoke, "put", key, roles=["state-admin"])) == 201
    assert status(call(invoke, "get", key, roles=["state-reader"])) == 200
    assert status(call(invoke, "put", key, roles=["state-reader"])) == 403
    assert status(call(invoke, "put", key, roles=["state-self-service"])) == 200
    assert status(call(invoke, "get", key, roles=["state-self-service"], sub="bob")) == 403
    assert status(call(invoke, "get", key, roles=["no-such-role"])) == 403


def test_a_configured_policy_file_maps_roles_to_permissions(invoke, policy_file):
    policy_file(json.dumps({"version": 1, "roles": {"support": ["state:read:user:*"], "ops": ["state:write:ops:*"]}}))
    assert status(call(invoke, "get", f"user:{uuid.uuid4().hex}", roles=["support"])) == 404  # allowed, absent
    assert status(call(invoke, "put", f"user:{uuid.uuid4().hex}", roles=["support"])) == 403
    assert status(call(invoke, "put", f"ops:{uuid.uuid4().hex}", roles=["ops", "support"])) == 201
    assert status(call(invoke, "put", f"user:{uuid.uuid4().hex}", roles=["state-admin"])) == 403  # not in this file


BROKEN_POLICIES = {
    "not-json": "{roles: ",
    "unknown-permission": json.dumps({"version": 1, "roles": {"r": ["state:admin"]}}),
    "bad-pattern": json.dumps({"version": 1, "roles": {"r": ["state:read:user/*"]}}),
    "star-inside": json.dumps({"version": 1, "roles": {"r": ["state:read:us*er"]}}),
    "unknown-member": json.dumps({"version": 1, "roles": {}, "allow_all": True}),
    "wrong-version": json.dumps({"version": 2, "roles": {}}),
    "grants-not-a-list": json.dumps({"version": 1, "roles": {"r": "state:read"}}),
    "sub-not-ending-its-segment": json.dumps({"version": 1, "roles": {"r": ["state:read:user:${sub}*"]}}),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_POLICIES))
def test_a_broken_policy_fails_closed_with_a_clear_error_log(invoke, policy_file, service_log, broken):
    policy_file(BROKEN_POLICIES[broken])
    for operation in ("get", "put", "patch", "delete"):
        response = call(invoke, operation, f"user:{uuid.uuid4().hex}", scopes="state:read state:write", roles=["x"])
        assert status(response) == 403
    errors = [r for r in service_log.records if r.levelno == logging.ERROR]
    assert len(errors) == 4
    assert "role policy" in errors[0].getMessage()
    assert "role policy" in errors[0].__dict__["reason"]


def test_a_missing_policy_file_fails_closed(invoke, policy_file, monkeypatch, service_log):
    path = policy_file("{}")
    path.unlink()
    assert status(call(invoke, "get", "user:1", scopes="state:read")) == 403
    (error,) = [r for r in service_log.records if r.levelno == logging.ERROR]
    assert str(path) in error.__dict__["reason"]


def test_the_shipped_policy_is_valid():
    from state_core.security.policy import DEFAULT_POLICY_FILE, load_role_policy

    assert load_role_policy(DEFAULT_POLICY_FILE).roles


def test_policy_errors_name_the_problem_without_echoing_values():
    with pytest.raises(PolicyError, match=r"role r: 'state:delete'"):
        parse_role_policy({"version": 1, "roles": {"r": ["state:delete"]}})


# -- the audit record ---------------------------------------------------------------------------------


def test_an_allowed_write_leaves_one_audit_record_without_the_value(invoke, audit_records):
    key = f"user:alice:{uuid.uuid4().hex}"
    response = call(invoke, "put", key, scopes="state:write")
    assert status(response) == 201
    assert len(audit_records.lines) == 1
    document = json.loads(audit_records.lines[0])
    assert (document["service"], document["message"]) == ("state-service-audit", "audit")
    record = document["audit"]
    assert {k: record[k] for k in ("subject", "action", "permission", "key", "decision", "status", "version")} == {
        "subject": "alice",
        "action": "put",
        "permission": "state:write",
        "key": key,
        "decision": "allow",
        "status": 201,
        "version": 1,
    }
    assert record["request_id"]
    assert record["time"].endswith("Z")
    assert SECRET_VALUE not in audit_records.lines[0]


def test_a_denied_request_leaves_a_deny_record(invoke, audit_records):
    call(invoke, "delete", "admin:1", scopes="state:read")
    (line,) = audit_records.lines
    record = json.loads(line)["audit"]
    assert (record["decision"], record["status"], record["key"], record["version"]) == ("deny", 403, "admin:1", None)


def test_a_read_of_an_absent_key_is_allowed_with_status_404(invoke, audit_records):
    call(invoke, "get", f"user:{uuid.uuid4().hex}", scopes="state:read")
    record = json.loads(audit_records.lines[-1])["audit"]
    assert (record["decision"], record["status"], record["version"]) == ("allow", 404, None)


def test_an_invalid_key_is_audited_without_the_key(invoke, audit_records):
    call(invoke, "get", "bad key\n", scopes="state:read")
    record = json.loads(audit_records.lines[-1])["audit"]
    assert (record["decision"], record["status"], record["key"]) == (None, 400, None)


def test_a_request_without_authorizer_context_is_audited_as_denied(invoke, audit_records):
    call(invoke, "get", "user:1", authorizer=False)
    record = json.loads(audit_records.lines[-1])["audit"]
    assert (record["decision"], record["status"], record["subject"]) == ("deny", 401, None)


def _history_event(key, **kwargs):
    event = http_event("get", key, **kwargs)
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/state/{key}/history"
    event["routeKey"] = event["requestContext"]["routeKey"] = "GET /state/{key}/history"
    return event


def test_reading_the_state_an_old_version_and_the_history_are_audited_as_distinct_actions(invoke, audit_records):
    key = f"user:alice:{uuid.uuid4().hex}"
    assert status(call(invoke, "put", key, scopes="state:write")) == 201
    requests = {
        "current": http_event("get", key, scopes="state:read"),
        "version": http_event("get", key, scopes="state:read", query={"version": "1"}),
        "history": _history_event(key, scopes="state:read"),
        "history-denied": _history_event(key, scopes="state:read:other:*"),
        "bad-version": http_event("get", key, scopes="state:read", query={"version": "x"}),
    }
    seen = {}
    for name, event in requests.items():
        response = invoke("get_state", event)
        record = json.loads(audit_records.lines[-1])["audit"]
        assert record["request_id"] == event["requestContext"]["requestId"]
        seen[name] = (
            record["action"],
            record["permission"],
            record["decision"],
            record["status"],
            response["statusCode"],
        )
    assert seen == {
        "current": ("get", "state:read", "allow", 200, 200),
        "version": ("get_version", "state:read", "allow", 200, 200),
        "history": ("list_history", "state:read", "allow", 200, 200),
        "history-denied": ("list_history", "state:read", "deny", 403, 403),
        "bad-version": ("get_version", "state:read", "allow", 400, 400),
    }


def test_the_audit_log_is_written_whatever_the_service_log_level(invoke, audit_records):
    previous = service_logger.log_level
    service_logger.setLevel("ERROR")
    try:
        call(invoke, "get", "user:1", scopes="state:read")
    finally:
        service_logger.setLevel(previous)
    assert len(audit_records.lines) == 1


# -- issuers as people run them -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer_key():
    return rsa_key()


@pytest.fixture(scope="module")
def host(issuer_key):
    with key_host([issuer_key]) as running:
        yield running


@pytest.fixture
def authorizer_for(host, issuer_key, monkeypatch):
    """authorizer_for(issuer_path, **env) -> the real authorizer trusting `host` under that issuer URL."""
    host.reset([issuer_key])

    def make(issuer: str, **env: str) -> Authorizer:
        host.issuer = issuer
        for name in list(os.environ):
            if name.startswith(("STATE_OIDC_", "STATE_JWKS_")):
                monkeypatch.delenv(name)
        monkeypatch.setenv("STATE_OIDC_ISSUER", issuer)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return Authorizer()

    return make


def through(invoke, authz, token, operation, key):
    """The token through the real authorizer, then its context through the real handler."""
    answer = authz.token(token)
    assert answer["isAuthorized"] is True, answer
    event = http_event(operation, key, body={"value": 1} if operation == "put" else None)
    event["requestContext"]["authorizer"] = {"lambda": answer["context"]}
    return invoke(f"{operation}_state", event)


def test_a_cognito_access_token(invoke, authorizer_for, host, issuer_key):
    issuer = f"{host.base_url}/us-east-1_AbCdEf123"
    authz = authorizer_for(
        issuer,
        STATE_OIDC_AUDIENCE="4b1v2c3d4e5f6g7h8i9j0k",
        STATE_OIDC_AUDIENCE_CLAIM="client_id",
        STATE_OIDC_SCOPE_PREFIX="https://state.example.com/",
        STATE_OIDC_ROLES_CLAIM="cognito:groups",
        STATE_OIDC_SUBJECT_CLAIM="username",
    )
    now = int(time.time())
    cognito = {
        "sub": "a1b2c3d4-0000-4000-8000-000000000001",
        "cognito:groups": ["state-reader"],
        "iss": issuer,
        "version": 2,
        "client_id": "4b1v2c3d4e5f6g7h8i9j0k",
        "origin_jti": str(uuid.uuid4()),
        "event_id": str(uuid.uuid4()),
        "token_use": "access",
        "scope": "https://state.example.com/state:write:user:${sub}:* openid state:write",
        "auth_time": now,
        "exp": now + 3600,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "username": "alice",
    }
    token = sign(issuer_key, cognito, typ=ABSENT)  # Cognito's header has only kid and alg
    assert authz.token(token)["context"] == {
        "sub": "alice",
        # The unprefixed `state:write` is not from our resource server: ignored.
        "scopes": "state:write:user:${sub}:*",
        "roles": '["state-reader"]',
    }
    assert status(through(invoke, authz, token, "put", f"user:alice:{uuid.uuid4().hex}")) == 201
    assert status(through(invoke, authz, token, "put", "user:bob:prefs")) == 403
    assert status(through(invoke, authz, token, "get", f"other:{uuid.uuid4().hex}")) == 404  # by role
    assert authz.token(sign(issuer_key, {**cognito, "client_id": "another-app"})) == {"isAuthorized": False}


def test_an_auth0_access_token(invoke, authorizer_for, host, issuer_key):
    issuer = f"{host.base_url}/"  # Auth0 issuers end with a slash
    authz = authorizer_for(
        issuer,
        STATE_OIDC_AUDIENCE="https://state.example.com",
        STATE_OIDC_ROLES_CLAIM="https://state.example.com/roles",
        STATE_OIDC_REQUIRED_TYP="at+jwt",
        STATE_OIDC_MAX_LIFETIME_SECONDS="86400",
    )
    now = int(time.time())
    auth0 = {
        "iss": issuer,
        "sub": "auth0|64f0c0ffee",
        "aud": ["https://state.example.com", f"{host.base_url}/userinfo"],
        "iat": now,
        "exp": now + 86400,
        "scope": "openid profile state:read",
        "azp": "m2mclientid",
        "https://state.example.com/roles": ["state-admin"],
    }
    token = sign(issuer_key, auth0, typ="at+jwt")
    assert status(through(invoke, authz, token, "put", f"team:{uuid.uuid4().hex}")) == 201  # by role
    # `auth0|...` cannot appear in a key, so `${sub}` grants nothing for it (docs/security.md: map a key-safe claim).
    self_only = sign(
        issuer_key, {**auth0, "https://state.example.com/roles": [], "scope": "state:read:user:${sub}:*"}, typ="at+jwt"
    )
    assert status(through(invoke, authz, self_only, "get", "user:auth0:x")) == 403
    assert authz.token(sign(issuer_key, auth0, typ="JWT")) == {"isAuthorized": False}


def test_an_okta_access_token(invoke, authorizer_for, host, issuer_key):
    issuer = f"{host.base_url}/oauth2/default"
    authz = authorizer_for(
        issuer,
        STATE_OIDC_AUDIENCE="api://state",
        STATE_OIDC_SCOPE_CLAIM="scp",
        STATE_OIDC_ROLES_CLAIM="groups",
        STATE_OIDC_SUBJECT_CLAIM="uid",
    )
    now = int(time.time())
    okta = {
        "ver": 1,
        "jti": "AT.x",
        "iss": issuer,
        "aud": "api://state",
        "iat": now,
        "exp": now + 3600,
        "cid": "0oa1b2c3",
        "uid": "00u1alice",
        "scp": ["openid", "state:read:user:${sub}:*"],
        "sub": "alice@example.com",
        "groups": ["Everyone"],
    }
    token = sign(issuer_key, okta)
    assert authz.token(token)["context"]["scopes"] == "openid state:read:user:${sub}:*"
    assert status(through(invoke, authz, token, "get", "user:00u1alice:prefs")) == 404  # allowed, absent
    assert status(through(invoke, authz, token, "get", "user:alice:prefs")) == 403
    assert status(through(invoke, authz, token, "put", "user:00u1alice:prefs")) == 403


def test_issuer_config_cannot_weaken_the_core_checks(authorizer_for, host, issuer_key):
    authz = authorizer_for(host.base_url, STATE_OIDC_AUDIENCE=AUDIENCE, STATE_OIDC_REQUIRED_CLAIMS="")
    for missing in ("iss", "exp", "iat", "aud", "sub"):
        assert authz.token(sign(issuer_key, claims_for(host.base_url, **{missing: ABSENT}))) == {"isAuthorized": False}
