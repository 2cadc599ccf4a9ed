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
    for name in (
        "STATE_OIDC_AUDIENCE_CLAIM",
        "STATE_OIDC_SCOPE_CLAIM",
        "STATE_OIDC_SCOPE_PREFIX",
        "STATE_OIDC_SUBJECT_CLAIM",
        "STATE_OIDC_ROLES_CLAIM",
        "STATE_OIDC_ALGORITHMS",
        "STATE_OIDC_REQUIRED_TYP",
        "STATE_OIDC_MAX_LIFETIME_SECONDS",
    ):
        assert name in environment


# --- Redis's credentials: secret ARNs only, only where Redis is used ---------------------------------------

REDIS_FUNCTIONS = (
    "GetStateFunction",
    "PutStateFunction",
    "PatchStateFunction",
    "DeleteStateFunction",
    "PublishChangesFunction",
)
AUTH_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:000000000000:secret:redis-auth-AbCdEf"
SIGNING_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:000000000000:secret:signing-GhIjKl"


@pytest.fixture(scope="module")
def with_redis():
    from devstack.template import load_template

    return load_template(
        REPO_ROOT / "template.yaml",
        parameters={"RedisEndpoint": "rediss://cache.example.internal:6379", "RedisAuthSecretArn": AUTH_SECRET_ARN},
        physical_names={"CacheSigningKey": SIGNING_SECRET_ARN},
    )


def _resolved_secret_references(value):
    """Every CloudFormation dynamic reference to a secret in `value`: it would put the secret's plaintext
    in the function's configuration."""
    text = json.dumps(value)
    return [part for part in ("{{resolve:secretsmanager", "{{resolve:ssm-secure") if part in text]


def test_the_authorizer_gets_no_redis_setting_and_no_secret(with_redis):
    environment = with_redis.function("AuthorizerFunction").environment
    assert not [name for name in environment if "REDIS" in name or "SECRET" in name]
    assert not _resolved_secret_references(environment)


def test_no_function_environment_holds_a_resolved_secret(template):
    assert not _resolved_secret_references(template.raw["Globals"])
    for logical_id, resource in template.resources_of_type("AWS::Serverless::Function").items():
        assert not _resolved_secret_references(resource["Properties"].get("Environment") or {}), logical_id


def test_the_redis_functions_get_only_the_secrets_arns_and_settings_that_validate(with_redis):
    from state_core.config import ServiceSettings

    for logical_id in REDIS_FUNCTIONS:
        environment = with_redis.function(logical_id).environment
        assert environment["STATE_REDIS_AUTH_SECRET_ARN"] == AUTH_SECRET_ARN, logical_id
        assert environment["STATE_CACHE_SIGNING_SECRET_ARN"] == SIGNING_SECRET_ARN, logical_id
        assert "STATE_REDIS_PASSWORD" not in environment
        settings = ServiceSettings.from_environ({**environment, "STATE_TABLE_NAME": "state"})
        assert settings.redis_url == "rediss://cache.example.internal:6379"


def test_without_redis_no_function_names_a_secret(template):
    for logical_id in REDIS_FUNCTIONS:
        environment = template.function(logical_id).environment
        assert environment["STATE_REDIS_URL"] == ""
        assert environment["STATE_REDIS_AUTH_SECRET_ARN"] == environment["STATE_CACHE_SIGNING_SECRET_ARN"] == ""
    assert not template.condition("HasRedis")


def test_only_the_redis_functions_roles_may_read_exactly_the_two_secrets(with_redis):
    reads = {}
    for logical_id, resource in with_redis.resources.items():
        if resource["Type"] not in ("AWS::IAM::Role", "AWS::IAM::Policy"):
            continue
        properties = with_redis.properties(logical_id)
        documents = [p["PolicyDocument"] for p in properties.get("Policies") or []]
        documents += [properties["PolicyDocument"]] if "PolicyDocument" in properties else []
        for document in documents:
            for statement in document["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                if any(action.startswith("secretsmanager:") for action in actions):
                    reads[logical_id] = (actions, statement["Resource"], properties.get("Roles"))
    assert set(reads) == {"RedisSecretsPolicy"}
    actions, resources, roles = reads["RedisSecretsPolicy"]
    assert actions == ["secretsmanager:GetSecretValue"]
    assert resources == [SIGNING_SECRET_ARN, AUTH_SECRET_ARN]
    functions = with_redis.resources
    expected = {functions[f]["Properties"]["Role"]["Fn::GetAtt"][0] for f in REDIS_FUNCTIONS}
    assert {with_redis.resolve(role) for role in [{"Ref": r} for r in expected]} == set(roles)
    assert with_redis.resources["RedisSecretsPolicy"]["Condition"] == "HasRedis"


def test_the_signing_key_is_generated_by_the_stack_and_reachable_from_the_vpc(template):
    secret = template.resources["CacheSigningKey"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Condition"] == "HasRedis"
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["PasswordLength"] >= 32
    assert "SecretString" not in secret["Properties"]
    endpoint = template.resources["SecretsManagerInterfaceEndpoint"]
    assert endpoint["Condition"] == "CreatePublisherEndpoints"
    assert endpoint["Properties"]["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.secretsmanager"}
