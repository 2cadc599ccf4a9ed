"""The values key in template.yaml: one customer managed key, rotated, encrypting every resource that can hold a
value; what each function may do with it (and that the authorizer may do nothing); the encryption context that
ties every use by a function to this stack's table; the settings the functions get; Redis over TLS only; the
alarm on decryption failures."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.jwt_support import REPO_ROOT

pytestmark = pytest.mark.unit

KEY_ARN = "arn:aws:kms:us-east-1:000000000000:key/0f0e0d0c-0b0a-4909-8807-060504030201"
TABLE = "state-service-local-StateTable-Z9Y8X7"
OTHER_TABLE = "someone-elses-table"
TABLE_CONTEXT = "kms:EncryptionContext:table"
# What the service's own envelope encryption calls; anything else a function's role grants on the key is the
# AWS services' (SQS, S3) on its behalf.
CRYPTO_ACTIONS = frozenset(
    {
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPair",
        "kms:GenerateDataKeyPairWithoutPlaintext",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
    }
)
# The schema registry reads the stored values a new version is checked against.
READERS = {"GetStateFunction", "BatchGetStateFunction", "ListStateFunction", "SchemasFunction"}
# The approvals function applies the value a proposal holds and decrypts the base value for a review.
WRITERS = {"PutStateFunction", "PatchStateFunction", "TransactStateFunction", "ApprovalsFunction"}
# Every function the stack can have, so a new function must be placed in one of the sets here.
NO_VALUE_KEY = {
    "AuthorizerFunction",
    "DeleteStateFunction",
    "PublishChangesFunction",
    "RepairCacheFunction",
    "WatchSocketFunction",
    "WatchFanoutFunction",
}
WITH_REDIS = {
    "RedisEndpoint": "rediss://redis.example:6379",
    "RedisSubnetIds": "subnet-0a,subnet-0b",
    "RedisSecurityGroupIds": "sg-0c",
    "RedisVpcId": "vpc-0d",
    "RedisRouteTableIds": "rtb-0e",
    "EnableTracing": "true",
}


def _loaded(parameters: dict[str, str] | None = None) -> Any:
    from devstack.template import load_template

    return load_template(
        REPO_ROOT / "template.yaml",
        parameters=parameters or {},
        physical_names={"StateKey": KEY_ARN.rsplit("/", 1)[1], "StateKey.Arn": KEY_ARN, "StateTable": TABLE},
    )


@pytest.fixture(scope="module", params=["default", "redis-and-tracing"])
def template(request: pytest.FixtureRequest) -> Any:
    return _loaded(WITH_REDIS if request.param == "redis-and-tracing" else {})


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _created(template: Any, logical_id: str) -> bool:
    condition = template.resources[logical_id].get("Condition")
    return condition is None or template.condition(condition)


def _kms_statements_by_role(template: Any) -> dict[str, list[dict[str, Any]]]:
    """Every Allow statement naming a kms: action, per role: the role's inline policies and the policies
    attached to it."""
    found: dict[str, list[dict[str, Any]]] = {lid: [] for lid in template.resources_of_type("AWS::IAM::Role")}
    for logical_id, resource in template.resources.items():
        if resource["Type"] not in ("AWS::IAM::Role", "AWS::IAM::Policy") or not _created(template, logical_id):
            continue
        properties = template.properties(logical_id)
        documents = [policy["PolicyDocument"] for policy in properties.get("Policies") or []]
        if "PolicyDocument" in properties:
            documents.append(properties["PolicyDocument"])
        roles = (
            [logical_id]
            if resource["Type"] == "AWS::IAM::Role"
            else [raw["Ref"] for raw in resource["Properties"]["Roles"]]
        )
        for document in documents:
            for statement in _as_list(document["Statement"]):
                actions = _as_list(statement.get("Action") or statement.get("NotAction"))
                if any(action == "*" or action.startswith("kms:") for action in actions):
                    for role in roles:
                        found[role].append(statement)
    return found


def _role_of(template: Any, function_id: str) -> str:
    role: str = template.resources[function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    return role


def _key_uses(template: Any, function_id: str) -> list[dict[str, Any]]:
    return _kms_statements_by_role(template)[_role_of(template, function_id)]


# --- the key --------------------------------------------------------------------------------------------------


def test_one_customer_managed_key_rotated_every_year_and_never_deleted_with_the_stack(template):
    assert set(template.resources_of_type("AWS::KMS::Key")) == {"StateKey"}
    key = template.resources["StateKey"]
    assert (key["DeletionPolicy"], key["UpdateReplacePolicy"]) == ("Retain", "Retain")
    properties = template.properties("StateKey")
    assert properties["EnableKeyRotation"] is True
    assert properties["RotationPeriodInDays"] <= 365
    assert properties.get("KeySpec", "SYMMETRIC_DEFAULT") == "SYMMETRIC_DEFAULT"
    assert properties.get("Enabled", True) is True
    (alias,) = template.resources_of_type("AWS::KMS::Alias").values()
    assert alias["Properties"]["TargetKeyId"] == {"Ref": "StateKey"}
    assert template.resolve(alias["Properties"]["AliasName"]).startswith("alias/state-service-local/")


def test_every_resource_that_can_hold_a_value_is_encrypted_with_the_key(template):
    key = {"Fn::GetAtt": ["StateKey", "Arn"]}
    table = template.resources["StateTable"]["Properties"]["SSESpecification"]
    assert table == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": key}
    (rule,) = template.resources["StreamFailureBucket"]["Properties"]["BucketEncryption"][
        "ServerSideEncryptionConfiguration"
    ]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
    queues = template.resources_of_type("AWS::SQS::Queue")
    assert {"PublishChangesDeadLetterQueue", "StateChangesQueue"} <= set(queues)
    for logical_id, queue in queues.items():
        assert queue["Properties"]["KmsMasterKeyId"] == key, logical_id
        assert "SqsManagedSseEnabled" not in queue["Properties"], logical_id
    assert template.resources["AuditLogGroup"]["Properties"]["KmsKeyId"] == key
    assert template.resources["AlarmTopic"]["Properties"]["KmsMasterKeyId"] == key


# --- the key policy -------------------------------------------------------------------------------------------


def _key_policy(template: Any) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = template.properties("StateKey")["KeyPolicy"]["Statement"]
    return statements


def test_the_key_policy_names_only_the_account_and_three_aws_services(template):
    principals = {json.dumps(s["Principal"], sort_keys=True) for s in _key_policy(template)}
    assert principals == {
        json.dumps({"AWS": "arn:aws:iam::000000000000:root"}),
        json.dumps({"Service": "logs.us-east-1.amazonaws.com"}),
        json.dumps({"Service": "cloudwatch.amazonaws.com"}),
        json.dumps({"Service": "events.amazonaws.com"}),
    }
    for statement in _key_policy(template):
        assert statement["Effect"] == "Allow"
        assert statement["Resource"] == "*"  # in a key policy: this key
        assert "NotPrincipal" not in statement
        assert "NotResource" not in statement


def test_the_key_policy_keeps_the_key_administrable_by_the_account(template):
    root = {"AWS": "arn:aws:iam::000000000000:root"}
    (admin,) = [s for s in _key_policy(template) if s["Principal"] == root and "NotAction" in s]
    assert "Condition" not in admin
    # Administration: kms:PutKeyPolicy and the like stay with the account, so the key never locks itself out.
    assert not {"kms:PutKeyPolicy", "kms:DescribeKey", "kms:EnableKeyRotation"} & set(admin["NotAction"])
    assert set(admin["NotAction"]) == CRYPTO_ACTIONS


def test_the_key_policy_grants_the_accounts_principals_cryptography_only_under_a_condition(template):
    root = {"AWS": "arn:aws:iam::000000000000:root"}
    for statement in _key_policy(template):
        assert statement["Effect"] == "Allow"
        if statement["Principal"] != root or "NotAction" in statement:
            continue
        assert set(statement["Action"]) <= CRYPTO_ACTIONS, statement
        condition = statement["Condition"]
        # Either a table must be named in the context (the roles pin which), or an AWS service of the stack's
        # resources asks on the principal's behalf, in this account.
        if "Null" in condition:
            assert condition == {"Null": {TABLE_CONTEXT: "false"}}, statement
        else:
            assert condition["StringEquals"]["kms:CallerAccount"] == "000000000000", statement
            services = {s.split(".")[0] for s in condition["StringEquals"]["kms:ViaService"]}
            assert services == {"dynamodb", "sqs", "s3", "sns"}, statement


def test_the_key_policy_lets_logs_use_the_key_only_for_log_groups_of_this_account_and_region(template):
    (logs,) = [s for s in _key_policy(template) if s["Principal"] == {"Service": "logs.us-east-1.amazonaws.com"}]
    assert logs["Condition"] == {
        "ArnLike": {"kms:EncryptionContext:aws:logs:arn": "arn:aws:logs:us-east-1:000000000000:log-group:*"}
    }


def test_the_key_policy_lets_cloudwatch_publish_to_the_alarm_topic_and_eventbridge_to_the_queue(template):
    by_service = {s["Principal"].get("Service"): s for s in _key_policy(template)}
    assert set(by_service["cloudwatch.amazonaws.com"]["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    events = by_service["events.amazonaws.com"]
    assert set(events["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey"}
    # Only rules of this stack's own bus.
    bus = template.properties("StateEventBus")["Name"]
    assert events["Condition"] == {"ArnLike": {"aws:SourceArn": f"arn:aws:events:us-east-1:000000000000:rule/{bus}/*"}}


# --- what each function may do with the key -------------------------------------------------------------------


def test_every_function_is_placed_in_exactly_one_kind(template):
    functions = {lid for lid in template.function_ids() if _created(template, lid)}
    assert functions <= READERS | WRITERS | NO_VALUE_KEY
    assert functions >= READERS | WRITERS


def _value_key_actions(template: Any, function_id: str) -> set[str]:
    """The actions granted on the values key under this stack's table context."""
    actions: set[str] = set()
    for statement in _key_uses(template, function_id):
        if TABLE_CONTEXT in (statement.get("Condition") or {}).get("StringEquals", {}):
            actions |= set(_as_list(statement["Action"]))
    return actions


def test_readers_may_only_decrypt_and_writers_also_generate_data_keys(template):
    for function_id in READERS:
        assert _value_key_actions(template, function_id) == {"kms:Decrypt"}, function_id
    for function_id in WRITERS:
        assert _value_key_actions(template, function_id) == {"kms:Decrypt", "kms:GenerateDataKey"}, function_id
    for function_id in NO_VALUE_KEY & set(template.function_ids()):
        if _created(template, function_id):
            assert _value_key_actions(template, function_id) == set(), function_id


def test_the_authorizer_has_no_kms_permission_at_all(template):
    assert _key_uses(template, "AuthorizerFunction") == []
    role = _role_of(template, "AuthorizerFunction")
    for logical_id, resource in template.resources_of_type("AWS::IAM::Policy").items():
        assert {"Ref": role} not in resource["Properties"]["Roles"], logical_id


def _allows(
    statement: dict[str, Any], action: str, context: dict[str, str], via: str | None = None, key: str = KEY_ARN
) -> bool:
    """Whether a role statement allows `action` on `key` for a request with this encryption context (and
    made through `via`, an AWS service, or directly): the statement's conditions evaluated as IAM would for
    the condition operators the template uses; an operator it does not know allows nothing (so a new one fails
    the tests that expect a grant, never the ones that expect none)."""
    if statement["Effect"] != "Allow" or action not in _as_list(statement["Action"]):
        return False
    if key not in _as_list(statement["Resource"]):
        return False
    request = {f"kms:EncryptionContext:{k}": v for k, v in context.items()}
    if via is not None:
        request["kms:ViaService"] = via
    for operator, tests in (statement.get("Condition") or {}).items():
        if operator != "StringEquals":
            return False
        for name, wanted in tests.items():
            if request.get(name) not in _as_list(wanted):
                return False
    return True


def test_no_function_can_use_the_key_with_another_tables_context(template):
    for function_id in template.function_ids():
        if not _created(template, function_id):
            continue
        statements = _key_uses(template, function_id)
        for action in CRYPTO_ACTIONS:
            for context in ({"table": OTHER_TABLE}, {}, {"table": TABLE + "*"}, {"table": TABLE[:-1]}):
                for via in (None, "dynamodb.us-east-1.amazonaws.com"):
                    allowed = [s for s in statements if _allows(s, action, context, via)]
                    assert not allowed, (function_id, action, context, allowed)


def test_every_key_statement_of_a_role_names_the_key_and_pins_its_context(template):
    for role, statements in _kms_statements_by_role(template).items():
        for statement in statements:
            assert statement["Effect"] == "Allow", role
            assert "NotAction" not in statement, role
            assert "NotResource" not in statement, role
            assert _as_list(statement["Resource"]) == [KEY_ARN], role
            for action in _as_list(statement["Action"]):
                assert "*" not in action, (role, action)
            # Only exact string matches (no wildcards a StringLike would allow).
            assert set(statement["Condition"]) == {"StringEquals"}, role
            pinned = statement["Condition"]["StringEquals"]
            context = {name for name in pinned if name.startswith("kms:EncryptionContext:")}
            assert len(context) == 1, role
            (value,) = _as_list(pinned[context.pop()])
            assert "*" not in value, role
            assert "?" not in value, role


def test_the_publisher_may_send_to_its_encrypted_queue_and_bucket_and_nothing_else(template):
    statements = _key_uses(template, "PublishChangesFunction")
    queue = template.resolve({"Fn::GetAtt": ["PublishChangesDeadLetterQueue", "Arn"]})
    bucket = template.resolve({"Fn::GetAtt": ["StreamFailureBucket", "Arn"]})
    sqs, s3 = "sqs.us-east-1.amazonaws.com", "s3.us-east-1.amazonaws.com"
    assert any(_allows(s, "kms:GenerateDataKey", {"aws:sqs:arn": queue}, sqs) for s in statements)
    assert any(_allows(s, "kms:GenerateDataKey", {"aws:s3:arn": bucket}, s3) for s in statements)
    # Not directly, not for the example consumer's queue, not to read the bucket back.
    other_queue = template.resolve({"Fn::GetAtt": ["StateChangesQueue", "Arn"]})
    assert not any(_allows(s, "kms:GenerateDataKey", {"aws:sqs:arn": queue}) for s in statements)
    assert not any(_allows(s, "kms:Decrypt", {"aws:sqs:arn": other_queue}, sqs) for s in statements)
    assert not any(_allows(s, "kms:Decrypt", {"aws:s3:arn": bucket}, s3) for s in statements)


# --- moving to another key -----------------------------------------------------------------------------------

NEW_KEY = "arn:aws:kms:us-east-1:000000000000:key/1a2b3c4d-0000-4000-8000-00000000abcd"


def test_values_move_to_another_key_while_the_previous_one_still_opens_old_values():
    template = _loaded({"ValuesKmsKeyArn": NEW_KEY, "PreviousValuesKmsKeyArn": KEY_ARN})
    context = {"table": TABLE}
    for function_id in READERS | WRITERS:
        assert template.function(function_id).environment["STATE_KMS_KEY_ID"] == NEW_KEY, function_id
        statements = _key_uses(template, function_id)
        for key in (NEW_KEY, KEY_ARN):
            assert any(_allows(s, "kms:Decrypt", context, key=key) for s in statements), (function_id, key)
            assert not any(_allows(s, "kms:Decrypt", {"table": OTHER_TABLE}, key=key) for s in statements)
        # New data keys only from the new key, and only for the writers.
        assert any(_allows(s, "kms:GenerateDataKey", context, key=NEW_KEY) for s in statements) == (
            function_id in WRITERS
        )
        assert not any(_allows(s, "kms:GenerateDataKey", context, key=KEY_ARN) for s in statements), function_id
    assert _key_uses(template, "AuthorizerFunction") == []


def test_once_moved_the_previous_key_is_no_longer_usable():
    template = _loaded({"ValuesKmsKeyArn": NEW_KEY})
    for function_id in READERS | WRITERS:
        for statement in _key_uses(template, function_id):
            if TABLE_CONTEXT in statement["Condition"]["StringEquals"]:
                assert _as_list(statement["Resource"]) == [NEW_KEY], function_id


@pytest.mark.parametrize("parameter", ["ValuesKmsKeyArn", "PreviousValuesKmsKeyArn"])
@pytest.mark.parametrize(
    "value", ["alias/state-values", "arn:aws:kms:us-east-1:000000000000:alias/x", "*", "arn:aws:kms:*:*:key/*"]
)
def test_a_key_is_named_by_its_arn_only(parameter: str, value: str):
    pattern = re.compile(_loaded().raw["Parameters"][parameter]["AllowedPattern"])
    assert pattern.fullmatch("")
    assert pattern.fullmatch(NEW_KEY)
    assert not pattern.fullmatch(value)


# --- the functions' settings ----------------------------------------------------------------------------------


def test_every_function_that_uses_the_key_is_told_which_and_whether_every_value_is_sensitive(template):
    for function_id in READERS | WRITERS:
        environment = template.function(function_id).environment
        assert environment["STATE_KMS_KEY_ID"] == KEY_ARN, function_id
        assert environment["STATE_ENCRYPT_ALL"] == "false", function_id


def test_encrypt_all_values_is_a_parameter_passed_to_the_functions():
    parameter = _loaded().raw["Parameters"]["EncryptAllValues"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("false", ["false", "true"])
    everything = _loaded({"EncryptAllValues": "true"})
    for function_id in READERS | WRITERS:
        assert everything.function(function_id).environment["STATE_ENCRYPT_ALL"] == "true", function_id


# --- Redis over TLS only --------------------------------------------------------------------------------------


def _redis_endpoint_pattern() -> re.Pattern[str]:
    return re.compile(_loaded().raw["Parameters"]["RedisEndpoint"]["AllowedPattern"])


@pytest.mark.parametrize(
    "value", ["", "rediss://cache.example.internal:6379", "rediss://master.x.y.use1.cache.amazonaws.com:6379/0"]
)
def test_the_redis_endpoint_may_be_empty_or_tls(value):
    assert _redis_endpoint_pattern().fullmatch(value)


@pytest.mark.parametrize(
    "value",
    [
        "redis://cache.example.internal:6379",
        "REDIS://cache.example.internal:6379",
        "rediss://:hunter2@cache.example.internal:6379",
        "rediss://cache.example.internal:6379?ssl_cert_reqs=none",
        "rediss://cache.example.internal:6379#x",
        "rediss://",
        "http://cache.example.internal:6379",
    ],
)
def test_the_redis_endpoint_refuses_plain_tcp_passwords_and_query_strings(value):
    assert not _redis_endpoint_pattern().fullmatch(value)


# --- the alarm on decryption failures -------------------------------------------------------------------------

_QUERY = re.compile(r"SELECT SUM\((\w+)\) FROM SCHEMA\((\w+), operation, service\)")


def test_decryption_failures_raise_an_alarm_on_the_alarm_topic():
    raw = _loaded().raw
    alarm = raw["Resources"]["DecryptionFailuresAlarm"]["Properties"]
    (query,) = alarm["Metrics"]
    namespace = raw["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    match = _QUERY.fullmatch(query["Expression"])
    assert match is not None
    assert match.groups() == ("DecryptionFailures", namespace)
    assert query["ReturnData"] is True
    assert query["Period"] == 300
    assert alarm["Threshold"] == {"Ref": "DecryptionFailuresAlarmThreshold"}
    assert raw["Parameters"]["DecryptionFailuresAlarmThreshold"]["Default"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    topic = {"Fn::If": ["HasAlarmTopic", {"Ref": "AlarmTopicArn"}, {"Ref": "AlarmTopic"}]}
    assert alarm["AlarmActions"] == alarm["OKActions"] == [topic]
    dashboard = raw["Resources"]["ServiceDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    assert "SELECT SUM(DecryptionFailures) FROM SCHEMA(StateService, operation, service)" in dashboard


def test_the_alarm_watches_a_metric_the_code_emits():
    from tests.template.test_observability_template import emitted_metrics

    if "DecryptionFailures" not in emitted_metrics():
        pytest.skip("the envelope encryption path does not emit DecryptionFailures yet")
