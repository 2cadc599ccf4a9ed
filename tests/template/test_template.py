"""Cheap invariants of template.yaml: the guarantees that a careless edit would break.

Read with the local stack's own CloudFormation-aware YAML loader, so the tests see
the template exactly as devstack does (short-form tags in long form, unresolved).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devstack.template import load_yaml

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_yaml(REPO_ROOT / "template.yaml")
RESOURCES: dict[str, dict[str, Any]] = TEMPLATE["Resources"]
GLOBAL_FUNCTION: dict[str, Any] = TEMPLATE["Globals"]["Function"]

# One Lambda per operation, each with its own least-privilege role (the history listing is a read).
ROUTES = {
    ("GET", "/state/{key}"): "GetStateFunction",
    ("PUT", "/state/{key}"): "PutStateFunction",
    ("PATCH", "/state/{key}"): "PatchStateFunction",
    ("DELETE", "/state/{key}"): "DeleteStateFunction",
    # A read of the same key with the same permission, served by the GET function.
    ("GET", "/state/{key}/history"): "GetStateFunction",
    # Listing by prefix reads many keys: a function and role of its own.
    ("GET", "/state"): "ListStateFunction",
    # The bulk read: up to 100 keys, a function and read-only role of its own.
    ("POST", "/state:batchGet"): "BatchGetStateFunction",
    # Many keys in one atomic TransactWriteItems: a function and role of its own.
    ("POST", "/state:transact"): "TransactStateFunction",
    # The value schema registry: a function of its own, its role confined to the registry's partitions.
    ("PUT", "/schemas/{name}"): "SchemasFunction",
    ("GET", "/schemas"): "SchemasFunction",
    ("GET", "/schemas/{name}"): "SchemasFunction",
    ("GET", "/schemas/{name}/checks/{check_id}"): "SchemasFunction",
    # Change approvals (docs/approvals.md): reviewing and deciding a protected key's proposals.
    ("GET", "/state/{key}/proposals"): "ApprovalsFunction",
    ("GET", "/state/{key}/proposals/{id}"): "ApprovalsFunction",
    ("POST", "/state/{key}/proposals/{id}/approve"): "ApprovalsFunction",
    ("POST", "/state/{key}/proposals/{id}/reject"): "ApprovalsFunction",
    ("DELETE", "/state/{key}/proposals/{id}"): "ApprovalsFunction",
}
# Least privilege: exactly the table actions each handler's core path needs.
TABLE_ACTIONS = {
    # Batch* reach the chunks of large values (blobs.py), which sit in the same table.
    # Query: the history listing. No PutItem: the request path never writes history (the stream does).
    "GetStateFunction": {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"},
    # Query on the write functions: the current value schemas, in the registry's partition only (see below).
    # GetItem and BatchGetItem on PUT and DELETE: a protected key is read to propose its change (approvals.md).
    "PutStateFunction": {
        "dynamodb:UpdateItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
    },
    "PatchStateFunction": {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:UpdateItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:Query",
    },
    "DeleteStateFunction": {"dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:BatchGetItem"},
    # TransactGetItems (snapshot) is authorized as GetItem on each item; no Query (no history listing).
    "BatchGetStateFunction": {"dynamodb:GetItem", "dynamodb:BatchGetItem"},
    # TransactWriteItems is authorized per item (UpdateItem, ConditionCheckItem, PutItem for the idempotency
    # record); the keys are read together (BatchGetItem), a large value and an idempotency record alone.
    "TransactStateFunction": {
        "dynamodb:BatchGetItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
    },
    # Only in the registry's partitions (see below): a publish is one TransactWriteItems.
    # Writes confined to the registry's partitions; reads of state items (and blobs) for a check's values.
    "SchemasFunction": {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:Query",
        "dynamodb:UpdateItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:BatchGetItem",
    },
    # Proposals in their keys' partitions: read, listed, decided and applied (TransactWriteItems of two
    # UpdateItems); the key's state and a large value's chunks read for the diff. No PutItem, no DeleteItem.
    "ApprovalsFunction": {"dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"},
}
STATE_FUNCTIONS = sorted(TABLE_ACTIONS)
AUTHORIZER_FUNCTION = "AuthorizerFunction"
PUBLISHER_FUNCTION = "PublishChangesFunction"
REPAIR_FUNCTION = "RepairCacheFunction"
LIST_FUNCTION = "ListStateFunction"
WATCH_FUNCTIONS = ("WatchSocketFunction", "WatchFanoutFunction")
# The event source mapping's stream reads, on the table's streams only (never the table).
STREAM_ACTIONS = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"}
TABLE = "StateTable"
EVENT_SAMPLES = {
    "get_state.json": "GET",
    "put_state.json": "PUT",
    "patch_state.json": "PATCH",
    "delete_state.json": "DELETE",
}


def resources_of_type(resource_type: str) -> dict[str, dict[str, Any]]:
    return {lid: res for lid, res in RESOURCES.items() if res["Type"] == resource_type}


FUNCTIONS = resources_of_type("AWS::Serverless::Function")


def props(logical_id: str) -> dict[str, Any]:
    return RESOURCES[logical_id].get("Properties") or {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_statements(policy_documents: list[Any]) -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for document in policy_documents:
        if isinstance(document, dict) and "Statement" in document:
            statements.extend(as_list(document["Statement"]))
    return statements


def role_policy_documents(role_id: str) -> list[Any]:
    """The role's inline policy documents, both branches of a conditional one (``!If [Condition, policy,
    !Ref AWS::NoValue]``) included."""
    documents: list[Any] = []
    pending = list(props(role_id).get("Policies") or [])
    while pending:
        policy = pending.pop(0)
        if isinstance(policy, dict) and "Fn::If" in policy:
            pending += [branch for branch in policy["Fn::If"][1:] if branch != {"Ref": "AWS::NoValue"}]
        else:
            documents.append(policy["PolicyDocument"])
    return documents


def function_statements(function_id: str) -> list[dict[str, Any]]:
    """Every IAM statement the function's role grants: its explicit role's inline
    policies plus any SAM ``Policies`` statements on the function itself."""
    documents: list[Any] = [
        entry for entry in as_list(props(function_id).get("Policies") or []) if isinstance(entry, dict)
    ]
    role = props(function_id).get("Role")
    if isinstance(role, dict) and "Fn::GetAtt" in role:
        role_id = role["Fn::GetAtt"][0]
        documents += role_policy_documents(role_id)
    return policy_statements(documents)


def all_statements() -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = []
    for lid, res in RESOURCES.items():
        if res["Type"] == "AWS::IAM::Role":
            statements += policy_statements(role_policy_documents(lid))
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            statements += policy_statements([props(lid)["PolicyDocument"]])
        elif res["Type"] == "AWS::Serverless::Function":
            statements += policy_statements(
                [p for p in as_list(props(lid).get("Policies") or []) if isinstance(p, dict)]
            )
    return statements


def refers_to(value: Any, logical_id: str) -> bool:
    """True when ``value`` mentions ``logical_id`` through Ref, GetAtt or Sub."""
    if isinstance(value, dict):
        if value.get("Ref") == logical_id:
            return True
        getatt = value.get("Fn::GetAtt")
        if isinstance(getatt, list) and getatt and getatt[0] == logical_id:
            return True
        sub = value.get("Fn::Sub")
        if isinstance(sub, str) and ("${" + logical_id + "}" in sub or "${" + logical_id + "." in sub):
            return True
        return any(refers_to(v, logical_id) for v in value.values())
    if isinstance(value, list):
        return any(refers_to(v, logical_id) for v in value)
    return False


def http_api_events(function_id: str) -> list[dict[str, Any]]:
    events = props(function_id).get("Events") or {}
    return [event["Properties"] for event in events.values() if event["Type"] == "HttpApi"]


def lambda_authorizer() -> dict[str, Any]:
    auth = props("StateApi")["Auth"]
    return auth["Authorizers"][auth["DefaultAuthorizer"]]


# --- functions ----------------------------------------------------------------------------------


def test_the_template_defines_the_four_state_functions_the_authorizer_and_the_publisher():
    assert set(FUNCTIONS) == {
        *STATE_FUNCTIONS,
        LIST_FUNCTION,
        AUTHORIZER_FUNCTION,
        PUBLISHER_FUNCTION,
        REPAIR_FUNCTION,
        *WATCH_FUNCTIONS,
    }


@pytest.mark.parametrize("function_id", sorted(FUNCTIONS))
def test_every_function_runs_python_3_13_with_the_state_core_layer(function_id):
    runtime = props(function_id).get("Runtime", GLOBAL_FUNCTION.get("Runtime"))
    layers = props(function_id).get("Layers", GLOBAL_FUNCTION.get("Layers"))

    assert runtime == "python3.13"
    assert {"Ref": "StateCoreLayer"} in layers
    assert RESOURCES["StateCoreLayer"]["Type"] == "AWS::Serverless::LayerVersion"
    assert props("StateCoreLayer")["CompatibleRuntimes"] == ["python3.13"]


@pytest.mark.parametrize("function_id", sorted(FUNCTIONS))
def test_every_function_logs_to_its_own_log_group_with_retention(function_id):
    log_group = props(function_id)["LoggingConfig"]["LogGroup"]
    log_group_id = log_group["Ref"]
    users = [fid for fid in FUNCTIONS if props(fid).get("LoggingConfig", {}).get("LogGroup") == log_group]

    assert RESOURCES[log_group_id]["Type"] == "AWS::Logs::LogGroup"
    assert props(log_group_id)["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert users == [function_id]


@pytest.mark.parametrize("function_id", sorted(set(FUNCTIONS) - {PUBLISHER_FUNCTION, "GetStateFunction"}))
def test_every_function_finishes_well_inside_api_gateways_30_seconds(function_id):
    timeout = props(function_id).get("Timeout", GLOBAL_FUNCTION.get("Timeout"))

    assert isinstance(timeout, int)
    assert timeout <= 15


def test_the_get_function_fits_a_25_second_long_poll_and_one_more_read():
    # The waiter ends its wait with a DynamoDB attempt's budget (runtime.DYNAMODB_ATTEMPT_BUDGET_SECONDS)
    # and a little more left, so the longest wait (25 s) must fit below the timeout with that margin, and
    # the timeout may not be much longer than API Gateway's 30 s: past it nobody hears the answer.
    from state_core.runtime import DYNAMODB_ATTEMPT_BUDGET_SECONDS
    from state_core.service.waiting import WaitPolicy

    timeout = props("GetStateFunction")["Timeout"]

    assert isinstance(timeout, int)
    assert WaitPolicy().max_wait_seconds + DYNAMODB_ATTEMPT_BUDGET_SECONDS + 0.2 <= timeout <= 35


def test_every_function_gets_the_environment_the_handlers_read():
    variables = GLOBAL_FUNCTION["Environment"]["Variables"]

    assert variables["STATE_TABLE_NAME"] == {"Ref": TABLE}
    assert variables["STATE_EVENT_BUS_NAME"] == {"Ref": "StateEventBus"}
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "StateService"
    assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_LOG_LEVEL", "POWERTOOLS_TRACE_DISABLED"} <= set(variables)
    # Redis's settings go only to the functions that use Redis (test_security_template).
    assert not any("REDIS" in name for name in variables)


# --- IAM ----------------------------------------------------------------------------------------


def test_no_iam_statement_grants_a_wildcard_action():
    statements = all_statements()
    actions = [action for statement in statements for action in as_list(statement["Action"])]

    assert statements
    assert all(isinstance(action, str) and "*" not in action for action in actions), actions
    assert not any("NotAction" in statement for statement in statements)


@pytest.mark.parametrize("function_id", STATE_FUNCTIONS)
def test_each_state_function_gets_only_its_table_actions_on_the_table(function_id):
    table_statements = [s for s in function_statements(function_id) if refers_to(s.get("Resource"), TABLE)]
    actions = {action for s in table_statements for action in as_list(s["Action"])}

    assert actions == TABLE_ACTIONS[function_id]
    assert all(s["Effect"] == "Allow" for s in table_statements)
    index = [{"Fn::Sub": "${StateTable.Arn}/index/ListIndex"}]
    assert all(
        as_list(s["Resource"]) == [{"Fn::GetAtt": [TABLE, "Arn"]}]
        # The schema registry's check queries the listing index for the keys a version governs.
        or (function_id == "SchemasFunction" and as_list(s["Resource"]) == index and s["Action"] == ["dynamodb:Query"])
        for s in table_statements
    )


@pytest.mark.parametrize("function_id", sorted(FUNCTIONS))
def test_no_function_may_touch_dynamodb_beyond_its_table_statements(function_id):
    for statement in function_statements(function_id):
        actions = set(as_list(statement["Action"]))
        if actions == {"dynamodb:ListStreams"}:
            # It has no resource-level permissions (it lists stream ARNs, nothing of their records).
            assert as_list(statement["Resource"]) == ["*"]
        elif actions <= STREAM_ACTIONS:
            assert as_list(statement["Resource"]) == [{"Fn::Sub": "${StateTable.Arn}/stream/*"}]
        elif actions == {"dynamodb:Query"} and function_id in (LIST_FUNCTION, "SchemasFunction"):
            assert as_list(statement["Resource"]) == [{"Fn::Sub": "${StateTable.Arn}/index/ListIndex"}]
        elif any(action.startswith("dynamodb:") for action in actions):
            # The watch functions also keep their connections and subscriptions in the watch table.
            allowed = [[{"Fn::GetAtt": [TABLE, "Arn"]}]]
            if function_id in WATCH_FUNCTIONS:
                allowed.append([{"Fn::GetAtt": ["WatchTable", "Arn"]}])
            assert as_list(statement["Resource"]) in allowed


def test_the_list_function_may_query_only_the_listing_index_and_read_state_items():
    statements = function_statements(LIST_FUNCTION)
    dynamodb = {
        action: as_list(s["Resource"])
        for s in statements
        for action in as_list(s["Action"])
        if action.startswith("dynamodb:")
    }
    secrets = [s for s in statements if "secretsmanager:GetSecretValue" in as_list(s["Action"])]

    # Never Scan, never a write; Query on the index alone (not the table's key space).
    assert dynamodb == {
        "dynamodb:Query": [{"Fn::Sub": "${StateTable.Arn}/index/ListIndex"}],
        "dynamodb:BatchGetItem": [{"Fn::GetAtt": [TABLE, "Arn"]}],
    }
    assert [as_list(s["Resource"]) for s in secrets] == [[{"Ref": "ListCursorKey"}]]
    assert props(LIST_FUNCTION)["Environment"]["Variables"] == {
        "STATE_LIST_CURSOR_SECRET_ARN": {"Ref": "ListCursorKey"}
    }
    # It never uses Redis, so it never joins Redis's VPC.
    assert "VpcConfig" not in props(LIST_FUNCTION)


def test_the_listing_index_is_sparse_and_projects_only_what_a_listing_shows():
    (index,) = props(TABLE)["GlobalSecondaryIndexes"]
    key_schema = {(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]}

    assert index["IndexName"] == "ListIndex"
    assert key_schema == {("list_shard", "HASH"), ("pk", "RANGE")}
    assert index["Projection"]["ProjectionType"] == "INCLUDE"
    assert "value" not in index["Projection"]["NonKeyAttributes"]


def test_the_authorizer_has_no_access_to_the_table():
    statements = function_statements(AUTHORIZER_FUNCTION)
    actions = [action for s in statements for action in as_list(s["Action"])]

    assert not any(refers_to(s.get("Resource"), TABLE) for s in statements)
    assert not any(action.startswith("dynamodb:") for action in actions)


def test_the_authorizer_never_runs_in_a_vpc():
    assert "VpcConfig" not in props(AUTHORIZER_FUNCTION)
    assert "VpcConfig" not in GLOBAL_FUNCTION


@pytest.mark.parametrize("function_id", [f for f in STATE_FUNCTIONS if f != "SchemasFunction"])
def test_state_functions_join_the_redis_vpc_only_when_redis_is_configured(function_id):
    # Not the schema registry's function: it never touches Redis.
    vpc_config = props(function_id)["VpcConfig"]

    assert vpc_config["Fn::If"][0] == "HasRedis"
    assert vpc_config["Fn::If"][2] == {"Ref": "AWS::NoValue"}


# --- table --------------------------------------------------------------------------------------


def test_the_table_survives_stack_deletion_and_replacement():
    table = RESOURCES[TABLE]

    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table.get("DeletionPolicy") == "Retain"
    assert table.get("UpdateReplacePolicy") == "Retain"
    assert props(TABLE)["DeletionProtectionEnabled"] is True
    assert props(TABLE)["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_the_table_streams_new_and_old_images_for_the_change_events():
    assert props(TABLE)["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"


def test_the_table_has_no_local_secondary_index_and_a_pk_sk_key():
    key_schema = {(k["AttributeName"], k["KeyType"]) for k in props(TABLE)["KeySchema"]}

    assert "LocalSecondaryIndexes" not in props(TABLE)
    assert key_schema == {("pk", "HASH"), ("sk", "RANGE")}
    assert "TableName" not in props(TABLE)


# --- API ----------------------------------------------------------------------------------------


def test_routes_are_exactly_the_ones_of_the_contract():
    routes = {
        (event["Method"].upper(), event["Path"]): function_id
        for function_id in FUNCTIONS
        for event in http_api_events(function_id)
    }

    assert routes == ROUTES
    for function_id in FUNCTIONS:
        for event in http_api_events(function_id):
            assert event["ApiId"] == {"Ref": "StateApi"}


def test_the_authorizer_function_serves_no_route():
    assert http_api_events(AUTHORIZER_FUNCTION) == []


def test_every_route_goes_through_the_lambda_authorizer():
    auth = props("StateApi")["Auth"]
    authorizer = lambda_authorizer()

    assert authorizer["FunctionArn"] == {"Fn::GetAtt": [AUTHORIZER_FUNCTION, "Arn"]}
    for function_id in STATE_FUNCTIONS:
        for event in http_api_events(function_id):
            override = (event.get("Auth") or {}).get("Authorizer", auth["DefaultAuthorizer"])
            assert override == auth["DefaultAuthorizer"]


def test_the_authorizer_cache_is_keyed_by_the_token_and_lives_at_most_60_seconds():
    # A cached allow outlives the token's exp by up to the TTL, hence the cap.
    authorizer = lambda_authorizer()
    identity = authorizer["Identity"]

    assert identity["Headers"] == ["Authorization"]
    assert 0 <= identity["ReauthorizeEvery"] <= 60
    assert authorizer["AuthorizerPayloadFormatVersion"] == "2.0"
    assert authorizer["EnableSimpleResponses"] is True


# --- limits -------------------------------------------------------------------------------------


def test_the_stage_throttles_every_route_with_parameterised_limits():
    settings = props("StateApi")["DefaultRouteSettings"]
    parameters = TEMPLATE["Parameters"]

    assert settings == {
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
    }
    assert (parameters["ApiThrottlingBurstLimit"]["Default"], parameters["ApiThrottlingRateLimit"]["Default"]) == (
        1000,
        500,
    )


def reserved_concurrency(function_id: str, **parameters: str) -> Any:
    from devstack.template import NO_VALUE, load_template

    value = props(function_id).get("ReservedConcurrentExecutions", GLOBAL_FUNCTION.get("ReservedConcurrentExecutions"))
    resolved = load_template(REPO_ROOT / "template.yaml", parameters=parameters).resolve(value)
    return None if resolved is NO_VALUE else resolved


RESERVATION_PARAMETERS = {
    **dict.fromkeys([*STATE_FUNCTIONS, LIST_FUNCTION], "StateFunctionReservedConcurrency"),
    AUTHORIZER_FUNCTION: "AuthorizerReservedConcurrency",
    PUBLISHER_FUNCTION: "PublisherReservedConcurrency",
    REPAIR_FUNCTION: "PublisherReservedConcurrency",
    # The watch's routes share the state functions' setting (Globals); its fan-out, the stream functions'.
    "WatchSocketFunction": "StateFunctionReservedConcurrency",
    "WatchFanoutFunction": "PublisherReservedConcurrency",
}


@pytest.mark.parametrize("function_id", sorted(FUNCTIONS))
def test_reserved_concurrency_is_a_parameter_whose_default_reserves_nothing(function_id):
    parameter = RESERVATION_PARAMETERS[function_id]

    # Lambda reads a reservation of 0 as "never run": 0 must mean no ReservedConcurrentExecutions at all.
    assert TEMPLATE["Parameters"][parameter]["Default"] == 0
    assert reserved_concurrency(function_id) is None
    assert reserved_concurrency(function_id, **{parameter: "0"}) is None
    assert reserved_concurrency(function_id, **{parameter: "25"}) == "25"
    # Each function's reservation is its own parameter's: a flood of tokens cannot take the state functions'.
    for other in set(RESERVATION_PARAMETERS.values()) - {parameter}:
        assert reserved_concurrency(function_id, **{other: "25"}) is None


# --- sample events ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "method"), sorted(EVENT_SAMPLES.items()))
def test_each_sample_event_is_a_template_route_with_an_authorizer_context(sample, method):
    event = json.loads((REPO_ROOT / "events" / sample).read_text(encoding="utf-8"))
    context = event["requestContext"]["authorizer"]["lambda"]

    assert event["version"] == "2.0"
    assert event["routeKey"] == f"{method} /state/{{key}}"
    assert (method, "/state/{key}") in ROUTES
    assert context["sub"]
    assert all(isinstance(value, str) for value in context.values())


def test_the_listing_sample_is_its_route_with_an_authorizer_context():
    event = json.loads((REPO_ROOT / "events" / "list_state.json").read_text(encoding="utf-8"))

    assert event["routeKey"] == event["requestContext"]["routeKey"] == "GET /state"
    assert ROUTES[("GET", "/state")] == LIST_FUNCTION
    assert "pathParameters" not in event
    assert event["requestContext"]["authorizer"]["lambda"]["sub"]


def test_the_bulk_read_sample_is_its_route_with_an_authorizer_context():
    event = json.loads((REPO_ROOT / "events" / "batch_get_state.json").read_text(encoding="utf-8"))

    assert event["routeKey"] == event["requestContext"]["routeKey"] == "POST /state:batchGet"
    assert ROUTES[("POST", "/state:batchGet")] == "BatchGetStateFunction"
    assert "pathParameters" not in event
    assert json.loads(event["body"])["keys"]
    assert event["requestContext"]["authorizer"]["lambda"]["sub"]


def test_the_authorizer_sample_is_a_request_payload_2_0():
    event = json.loads((REPO_ROOT / "events" / "authorizer.json").read_text(encoding="utf-8"))

    assert (event["version"], event["type"]) == ("2.0", "REQUEST")
    assert event["identitySource"] == [event["headers"]["authorization"]]


# --- change events -----------------------------------------------------------------------------


def stream_event() -> dict[str, Any]:
    (event,) = [e["Properties"] for e in props(PUBLISHER_FUNCTION)["Events"].values() if e["Type"] == "DynamoDB"]
    return event


def test_the_publisher_is_fed_by_the_tables_stream_with_partial_failures_bisect_and_bounded_retries():
    event = stream_event()

    assert event["Stream"] == {"Fn::GetAtt": [TABLE, "StreamArn"]}
    assert event["StartingPosition"] in ("TRIM_HORIZON", "LATEST")
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["BisectBatchOnFunctionError"] is True
    assert 0 <= event["MaximumRetryAttempts"] <= 10_000
    assert 60 <= event["MaximumRecordAgeInSeconds"] < 86_400  # before the stream's 24 h retention trims it
    assert 1 <= event["BatchSize"] <= 1000
    assert 0 <= event["MaximumBatchingWindowInSeconds"] <= 300


def test_only_state_items_proposals_and_the_removals_of_expiry_markers_and_history_items_reach_the_publisher():
    patterns = [json.loads(f["Pattern"]) for f in stream_event()["FilterCriteria"]["Filters"]]

    assert patterns == [
        {"dynamodb": {"Keys": {"sk": {"S": ["state"]}}}},
        {"eventName": ["REMOVE"], "dynamodb": {"Keys": {"sk": {"S": ["expiry"]}}}},
        {"eventName": ["REMOVE"], "dynamodb": {"Keys": {"sk": {"S": [{"prefix": "v#"}]}}}},
        # Proposals of protected keys, for their lifecycle events (stream/proposals.py).
        {"dynamodb": {"Keys": {"sk": {"S": [{"prefix": "proposal#"}]}}}},
    ]


def test_failed_stream_batches_go_to_an_encrypted_private_bucket_with_a_lifecycle():
    destination = stream_event()["DestinationConfig"]["OnFailure"]
    bucket_id = destination["Destination"]["Fn::GetAtt"][0]
    bucket = props(bucket_id)
    block = bucket["PublicAccessBlockConfiguration"]

    assert RESOURCES[bucket_id]["Type"] == "AWS::S3::Bucket"
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(
        block[name] is True
        for name in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    )
    assert bucket["LifecycleConfiguration"]["Rules"]
    assert RESOURCES[bucket_id].get("DeletionPolicy") == "Retain"


def test_the_publisher_gets_exactly_what_it_sends_to():
    statements = function_statements(PUBLISHER_FUNCTION)
    by_action = {action: statement["Resource"] for statement in statements for action in as_list(statement["Action"])}

    assert by_action["events:PutEvents"] == {"Fn::GetAtt": ["StateEventBus", "Arn"]}
    assert by_action["sqs:SendMessage"] == {"Fn::GetAtt": ["PublishChangesDeadLetterQueue", "Arn"]}
    assert by_action["s3:PutObject"] == {"Fn::Sub": "${StreamFailureBucket.Arn}/*"}
    assert by_action["s3:ListBucket"] == {"Fn::GetAtt": ["StreamFailureBucket", "Arn"]}
    assert set(by_action) >= STREAM_ACTIONS
    # On the table itself only what collecting unreferenced value blobs needs (blobs.py), and history
    # items, expiry markers and expiries (stream/lifecycle.py). Never a Scan.
    table_actions = {
        action
        for s in statements
        if refers_to(s.get("Resource"), TABLE) and "Fn::Sub" not in s["Resource"]
        for action in as_list(s["Action"])
    }
    assert table_actions == {
        "dynamodb:Query",
        "dynamodb:BatchWriteItem",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
    }


def test_the_publishers_dead_letter_queue_keeps_events_14_days():
    assert props("PublishChangesDeadLetterQueue")["MessageRetentionPeriod"] == 1_209_600


def test_the_publisher_gets_its_source_bus_queue_and_value_limit_from_the_template():
    variables = props(PUBLISHER_FUNCTION)["Environment"]["Variables"]

    assert variables["STATE_EVENT_SOURCE"] == {"Ref": "EventSource"}
    assert variables["STATE_EVENTS_DLQ_URL"] == {"Ref": "PublishChangesDeadLetterQueue"}
    assert int(variables["STATE_EVENT_MAX_VALUE_BYTES"]) == 65_536
    assert GLOBAL_FUNCTION["Environment"]["Variables"]["STATE_EVENT_BUS_NAME"] == {"Ref": "StateEventBus"}


def test_the_publisher_joins_the_redis_vpc_only_when_redis_is_configured():
    vpc_config = props(PUBLISHER_FUNCTION)["VpcConfig"]

    assert vpc_config["Fn::If"][0] == "HasRedis"
    assert vpc_config["Fn::If"][2] == {"Ref": "AWS::NoValue"}


def test_an_example_rule_sends_every_state_changed_event_to_the_state_changes_queue():
    rule = props("StateChangesRule")
    (target,) = rule["Targets"]
    (statement,) = props("StateChangesQueuePolicy")["PolicyDocument"]["Statement"]

    assert rule["EventBusName"] == {"Ref": "StateEventBus"}
    assert rule["EventPattern"] == {"source": [{"Ref": "EventSource"}], "detail-type": ["StateChanged"]}
    assert target["Arn"] == {"Fn::GetAtt": ["StateChangesQueue", "Arn"]}
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": ["StateChangesRule", "Arn"]}


def test_alarms_watch_the_dead_letter_queue_and_the_publishers_iterator_age():
    alarms = [props(lid) for lid in resources_of_type("AWS::CloudWatch::Alarm")]
    # Metric-math alarms (rates, sums) have no MetricName of their own; tests/template/test_observability_template.py
    # covers them.
    watched = {(a["Namespace"], a["MetricName"]) for a in alarms if "MetricName" in a}

    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in watched
    assert ("AWS/Lambda", "IteratorAge") in watched


def test_the_transaction_sample_is_its_route_with_an_authorizer_context():
    event = json.loads((REPO_ROOT / "events" / "transact_state.json").read_text(encoding="utf-8"))

    assert event["routeKey"] == event["requestContext"]["routeKey"] == "POST /state:transact"
    assert ("POST", "/state:transact") in ROUTES
    assert event["requestContext"]["authorizer"]["lambda"]["sub"]


SCHEMA_READERS = ("PutStateFunction", "PatchStateFunction", "TransactStateFunction")


@pytest.mark.parametrize("function_id", [*SCHEMA_READERS, "SchemasFunction"])
def test_the_schema_registry_is_reached_only_in_its_own_partitions(function_id):
    """A write function's Query, and everything the registry's function does, is confined by the leading
    key to the registry's partitions: neither can read or write a key's items that way."""
    statements = [s for s in function_statements(function_id) if refers_to(s.get("Resource"), TABLE)]
    confined = [s for s in statements if "Condition" in s]

    if function_id == "SchemasFunction":
        # Every write is confined; what is not confined only reads (a check reads the values it judges).
        assert [s["Condition"] for s in confined] == [
            {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["#schema*"]}}
        ]
        index = [{"Fn::Sub": "${StateTable.Arn}/index/ListIndex"}]
        unconfined = [s for s in statements if s not in confined]
        assert {a for s in unconfined if as_list(s["Resource"]) != index for a in as_list(s["Action"])} == {
            "dynamodb:GetItem",
            "dynamodb:BatchGetItem",
        }
        assert {a for s in unconfined if as_list(s["Resource"]) == index for a in as_list(s["Action"])} == {
            "dynamodb:Query"
        }
    else:
        assert [as_list(s["Action"]) for s in confined] == [["dynamodb:Query"]]
        assert confined[0]["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["#schemas"]}}
        assert not any("dynamodb:Query" in as_list(s["Action"]) for s in statements if s not in confined)
