"""Template invariants for issue 4: the access log (fields shared with the local gateway), the audit log
group, and the authorizer's issuer configuration."""

import json

import pytest

from devstack.gateway import ACCESS_LOG_FIELDS
from state_core.config import AuthorizerSettings
from tests.jwt_support import REPO_ROOT

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def template():
    from devstack.template import load_template

    return load_template(REPO_ROOT / "template.yaml")


def test_the_gateway_writes_the_fields_of_the_templates_access_log_format(template):
    settings = template.resources["StateApi"]["Properties"]["AccessLogSettings"]
    assert tuple(json.loads(settings["Format"])) == ACCESS_LOG_FIELDS
    assert settings["DestinationArn"] == {"Fn::GetAtt": ["AuditLogGroup", "Arn"]}


def test_the_access_log_names_the_caller_the_authorizer_allowed(template):
    fields = json.loads(template.resources["StateApi"]["Properties"]["AccessLogSettings"]["Format"])
    # The Lambda authorizer's simple-response context member `sub` (tokens.VerifiedToken).
    assert fields["subject"] == "$context.authorizer.sub"


def test_the_audit_log_group_has_retention_and_outlives_the_stack(template):
    group = template.resources["AuditLogGroup"]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == {"Ref": "AuditLogRetentionDays"}
    assert (group["DeletionPolicy"], group["UpdateReplacePolicy"]) == ("Retain", "Retain")


def test_the_access_log_never_holds_the_authorization_header(template):
    text = template.resources["StateApi"]["Properties"]["AccessLogSettings"]["Format"].lower()
    assert "authorization" not in text
    assert "header" not in text


def test_the_authorizer_gets_every_issuer_setting_from_parameters(template):
    environment = template.function("AuthorizerFunction").environment
    settings = AuthorizerSettings.from_environ({**environment, "STATE_OIDC_ISSUER": "https://issuer.example.com"})
    assert settings.algorithms == ("RS256", "ES256")
    assert settings.max_lifetime_seconds == 3600
    assert settings.accept_id_tokens is False
    for name in (
        "STATE_OIDC_AUDIENCE_CLAIM",
        "STATE_OIDC_SCOPE_CLAIM",
        "STATE_OIDC_SCOPE_PREFIX",
        "STATE_OIDC_SUBJECT_CLAIM",
        "STATE_OIDC_ROLES_CLAIM",
        "STATE_OIDC_ALGORITHMS",
        "STATE_OIDC_REQUIRED_TYP",
        "STATE_OIDC_ACCEPT_ID_TOKENS",
        "STATE_OIDC_MAX_LIFETIME_SECONDS",
    ):
        assert name in environment
