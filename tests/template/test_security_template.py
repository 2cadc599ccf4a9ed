"""Template invariants for security: the access log (fields shared with the local gateway), the audit log
group, and the authorizer's issuer configuration; the functions' roles (least privilege)."""

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


# --- Redis's credentials: secret ARNs only, only where Redis is used ---------------------------------------

REDIS_FUNCTIONS = (
    "GetStateFunction",
    "BatchGetStateFunction",
    "PutStateFunction",
    "PatchStateFunction",
    "DeleteStateFunction",
    "TransactStateFunction",
    "ApprovalsFunction",
    "RepairCacheFunction",
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
    # Besides Redis's two: the listing's role reads its cursor key, and nothing else.
    assert set(reads) == {"RedisSecretsPolicy", "ListStateRole"}
    assert reads["ListStateRole"][0] == ["secretsmanager:GetSecretValue"]
    assert reads["ListStateRole"][1] == with_redis.resolve({"Ref": "ListCursorKey"})
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


# --- least privilege of the functions' roles --------------------------------------------------------

# Actions IAM cannot scope to a resource: the only ones a statement may grant on "*".
NO_RESOURCE_LEVEL_ACTIONS = frozenset(
    {
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "dynamodb:ListStreams",
    }
)
LOG_ACTIONS = frozenset({"logs:CreateLogStream", "logs:PutLogEvents"})
# The conditions a deployment can be in: no Redis and no tracing (the default), and both.
DEPLOYMENTS = {
    "default": {},
    "redis-and-tracing": {
        "RedisEndpoint": "rediss://redis.example:6379",
        "RedisSubnetIds": "subnet-0a,subnet-0b",
        "RedisSecurityGroupIds": "sg-0c",
        "RedisVpcId": "vpc-0d",
        "RedisRouteTableIds": "rtb-0e",
        "EnableTracing": "true",
    },
}


def _loaded(parameters):
    from devstack.template import load_template

    return load_template(REPO_ROOT / "template.yaml", parameters=parameters)


def _function_roles(template):
    """{function: (role logical id, log group logical id)} from the raw template."""
    found = {}
    for function_id in template.function_ids():
        properties = template.resources[function_id]["Properties"]
        role = properties["Role"]
        assert isinstance(role, dict), f"{function_id}: a Role of the template"
        assert set(role) == {"Fn::GetAtt"}, f"{function_id}: a Role of the template"
        group = properties["LoggingConfig"]["LogGroup"]
        found[function_id] = (role["Fn::GetAtt"][0], group["Ref"])
    return found


def _statements(template, role_id):
    for policy in template.properties(role_id).get("Policies", []):
        statements = policy["PolicyDocument"]["Statement"]
        yield from (statements if isinstance(statements, list) else [statements])


def _as_list(value):
    return value if isinstance(value, list) else [value]


def test_every_function_has_a_role_and_a_log_group_of_its_own(template):
    roles = _function_roles(template)
    assert len({role for role, _ in roles.values()}) == len(roles)
    assert len({group for _, group in roles.values()}) == len(roles)
    for role, group in roles.values():
        assert template.resources[role]["Type"] == "AWS::IAM::Role"
        assert template.resources[group]["Type"] == "AWS::Logs::LogGroup"
        assert template.resources[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_no_function_role_has_a_managed_policy(template):
    # AWSLambdaVPCAccessExecutionRole and AWSLambdaBasicExecutionRole grant logs on every group.
    for role, _ in _function_roles(template).values():
        properties = template.resources[role]["Properties"]
        assert "ManagedPolicyArns" not in properties, role
        assert "PermissionsBoundary" not in properties, role


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_function_roles_grant_logs_only_on_their_own_group_and_nothing_wide(deployment):
    template = _loaded(DEPLOYMENTS[deployment])
    groups = set(template.resources_of_type("AWS::Logs::LogGroup"))
    assert "AuditLogGroup" in groups
    for function_id, (role, own_group) in _function_roles(template).items():
        own_arn = template.resolve({"Fn::GetAtt": [own_group, "Arn"]})
        other_arns = {template.resolve({"Fn::GetAtt": [g, "Arn"]}) for g in groups - {own_group}}
        for statement in _statements(template, role):
            actions = _as_list(statement["Action"])
            resources = _as_list(statement["Resource"])
            context = f"{function_id}: {statement}"
            assert statement["Effect"] == "Allow", context
            assert "NotAction" not in statement, context
            assert "NotResource" not in statement, context
            for action in actions:
                assert "*" not in action, context
                if action.startswith("logs:"):
                    assert action in LOG_ACTIONS, context
                    assert resources == [own_arn], context
            assert not other_arns & set(resources), context
            if "*" in resources:
                assert set(actions) <= NO_RESOURCE_LEVEL_ACTIONS, context
            for resource in resources:
                # Wildcards only after a resource type of this account and region (never a bare service).
                if resource != "*" and "*" in resource:
                    assert resource.endswith("/*"), context


def test_network_interface_and_tracing_permissions_only_when_used():
    without_redis = _loaded({})
    for function_id, (role, _) in _function_roles(without_redis).items():
        condition = without_redis.resources[function_id].get("Condition")
        if condition is not None and not without_redis.condition(condition):
            continue  # not created without Redis (the cache repair), nor is its role
        actions = {a for s in _statements(without_redis, role) for a in _as_list(s["Action"])}
        assert not any(a.startswith(("ec2:", "xray:")) for a in actions), function_id

    template = _loaded(DEPLOYMENTS["redis-and-tracing"])
    in_vpc = {lid for lid in template.function_ids() if "VpcConfig" in template.properties(lid)}
    # Outside the VPC: the authorizer (only the issuer's JWKS), the listing and the watch functions (no Redis).
    # And the schema registry (DynamoDB only).
    outside = {
        "AuthorizerFunction",
        "ListStateFunction",
        "WatchSocketFunction",
        "WatchFanoutFunction",
        "SchemasFunction",
    }
    assert in_vpc == {lid for lid in template.function_ids() if lid not in outside}
    for function_id, (role, _) in _function_roles(template).items():
        statements = list(_statements(template, role))
        actions = {a for s in statements for a in _as_list(s["Action"])}
        assert {"xray:PutTraceSegments", "xray:PutTelemetryRecords"} <= actions, function_id
        if function_id not in in_vpc:
            assert not any(a.startswith("ec2:") for a in actions), function_id
            continue
        create = [s for s in statements if "ec2:CreateNetworkInterface" in _as_list(s["Action"])]
        by_type = {r.rsplit(":", 1)[-1].split("/")[0]: s for s in create for r in _as_list(s["Resource"])}
        assert set(by_type) == {"subnet", "security-group", "network-interface"}, function_id
        assert by_type["subnet"]["Condition"] == {"StringEquals": {"ec2:SubnetID": ["subnet-0a", "subnet-0b"]}}
        assert by_type["security-group"]["Condition"] == {"StringEquals": {"ec2:SecurityGroupID": ["sg-0c"]}}
        for statement in statements:
            for resource in _as_list(statement["Resource"]):
                if resource.startswith("arn:aws:ec2:"):
                    assert resource.startswith("arn:aws:ec2:us-east-1:000000000000:"), resource


def test_resource_policies_allow_only_a_service_for_one_source():
    template = _loaded({})
    policies = {
        **template.resources_of_type("AWS::SQS::QueuePolicy"),
        **template.resources_of_type("AWS::S3::BucketPolicy"),
    }
    assert policies
    for logical_id in policies:
        for statement in _as_list(template.properties(logical_id)["PolicyDocument"]["Statement"]):
            if statement["Effect"] == "Deny":
                continue
            assert set(statement["Principal"]) == {"Service"}, logical_id
            assert "aws:SourceArn" in statement["Condition"].get("ArnEquals", {}), logical_id


TOOLS_PYTHON = REPO_ROOT / ".venv-tools" / "bin" / "python"


@pytest.mark.skipif(not TOOLS_PYTHON.exists(), reason="SAM CLI not installed (make tools)")
@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_the_sam_transform_adds_no_role_and_no_managed_policy(template, deployment):
    import subprocess

    completed = subprocess.run(
        [str(TOOLS_PYTHON), str(REPO_ROOT / "scripts" / "sam_transform.py"), str(REPO_ROOT / "template.yaml"),
         json.dumps(DEPLOYMENTS[deployment])],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    resources = json.loads(completed.stdout)["Resources"]
    roles = {lid for lid, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    assert roles == {role for role, _ in _function_roles(template).values()}
    for lid in roles:
        assert "ManagedPolicyArns" not in resources[lid]["Properties"], lid
        assert resources[lid]["Properties"] == template.raw["Resources"][lid]["Properties"], lid
    for lid, resource in resources.items():
        if resource["Type"] == "AWS::Lambda::Function":
            assert resource["Properties"]["Role"]["Fn::GetAtt"][0] in roles, lid
        if resource["Type"] == "AWS::Lambda::Permission":
            # Invocations only from this API (its routes, or its authorizers).
            source_arn = resource["Properties"]["SourceArn"]
            if resource["Properties"]["Principal"] == "events.amazonaws.com":
                # The watch sweep's schedule: only its own rule.
                assert source_arn == {"Fn::GetAtt": ["WatchFanoutFunctionSweep", "Arn"]}, lid
                continue
            source = source_arn["Fn::Sub"]
            if isinstance(source, str):
                # The WebSocket watch API's integration (written in the template, not by SAM).
                assert source.endswith(":${WatchApi}/*"), lid
                continue
            assert source[1]["__ApiId__"] == {"Ref": "StateApi"}, lid
