"""devstack.template resolves the CloudFormation the local stack relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.template import load_template

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _tags(props: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in props["Tags"]}


def test_intrinsics_resolve_against_parameters_pseudo_parameters_and_physical_names() -> None:
    template = load_template(
        FIXTURES / "template" / "intrinsics.yaml",
        physical_names={"Table": "local-table", "Table.StreamArn": "arn:stream"},
    )
    props = template.properties("Thing")
    tags = _tags(props)
    assert props["Name"] == "state-service-local-dev-${Literal}"
    assert tags["arn"] == "arn:aws:dynamodb:us-east-1:000000000000:table/local-table"
    assert tags["stream"] == "arn:stream"
    assert tags["joined"] == "us-east-1-000000000000-aws-amazonaws.com"
    assert tags["second"] == "b"
    assert tags["split"] == "z"
    assert tags["sub-list"] == "dev-local-table"
    assert tags["flags"] == "both,neither"
    assert "Dropped" not in props  # AWS::NoValue drops the key


def test_parameter_overrides_flip_conditions() -> None:
    template = load_template(FIXTURES / "template" / "intrinsics.yaml", parameters={"Stage": "prod"})
    props = template.properties("Thing")
    assert props["Dropped"] == "kept"
    assert _tags(props)["flags"] == "not-both,either"


def test_gateway_fixture_exposes_routes_functions_and_authorizer() -> None:
    template = load_template(FIXTURES / "gateway" / "template.yaml")
    routes = {r.route_key: r for r in template.routes()}
    assert routes["GET /echo/{key}"].function == "EchoFunction"
    assert routes["GET /echo/{key}"].authorizer == "LambdaAuthorizer"
    assert routes["GET /open"].authorizer is None
    echo = template.function("EchoFunction")
    assert echo.handler == "app.lambda_handler"
    assert echo.timeout == 5
    assert echo.memory_size == 256
    assert echo.environment["FIXTURE_OWN"] == "echo"
    assert echo.environment["FIXTURE_GREETING"] == "hello"
    assert template.function("SlowFunction").timeout == 1
    authorizer = template.default_authorizer()
    assert authorizer is not None
    assert authorizer.function == "AuthorizerFunction"
    assert authorizer.identity_headers == ("Authorization",)
    assert authorizer.ttl_seconds == 60
    assert authorizer.simple_responses is True
    assert authorizer.payload_version == "2.0"


def test_state_table_create_kwargs_come_from_template_yaml(state_template) -> None:
    kwargs = state_template.table_create_kwargs("StateTable", "t1")
    assert kwargs["TableName"] == "t1"
    assert {k["AttributeName"]: k["KeyType"] for k in kwargs["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    assert kwargs["BillingMode"] == "PAY_PER_REQUEST"
    assert kwargs["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert state_template.table_ttl_attribute("StateTable") == "ttl"
