"""Fixtures for driving the real Lambda handlers in-process against the serialized moto server."""

import base64
import copy
import importlib.util
import json
import os
import uuid
from pathlib import Path

import pytest

from tests.doubles import LambdaContext

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = REPO_ROOT / "events"


def load_event(name):
    """One sample event from events/, the same files `sam local invoke -e` uses."""
    return json.loads((EVENTS / f"{name}.json").read_text())


def http_event(
    operation,
    key,
    *,
    body=None,
    content_type="application/json",
    headers=None,
    query=None,
    scopes="state:read state:write",
    sub="alice",
    authorizer=True,
    base64_body=False,
):
    """A variation of events/<operation>_state.json for `key`."""
    event = copy.deepcopy(load_event(f"{operation}_state"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/state/{key}"
    event["pathParameters"] = {"key": key}
    event["headers"] = {
        name: value
        for name, value in event["headers"].items()
        if name not in ("if-match", "if-none-match", "content-type", "content-length")
    }
    event["headers"].update({name.lower(): value for name, value in (headers or {}).items()})
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    if content_type is not None and body is not None:
        event["headers"]["content-type"] = content_type
    event.pop("body", None)
    event["isBase64Encoded"] = False
    if body is not None:
        raw = body if isinstance(body, bytes | str) else json.dumps(body)
        if base64_body or isinstance(raw, bytes):
            raw_bytes = raw if isinstance(raw, bytes) else raw.encode()
            event["body"], event["isBase64Encoded"] = base64.b64encode(raw_bytes).decode(), True
        else:
            event["body"] = raw
    event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    event["queryStringParameters"] = query or None
    if authorizer:
        roles = "[]"
        event["requestContext"]["authorizer"] = {"lambda": {"sub": sub, "scopes": scopes, "roles": roles}}
    else:
        event["requestContext"].pop("authorizer", None)
    return event


@pytest.fixture(scope="session")
def handler_environment(moto_server, state_table):
    os.environ.update(
        {
            "STATE_TABLE_NAME": state_table,
            "POWERTOOLS_SERVICE_NAME": "state-service",
            "POWERTOOLS_METRICS_NAMESPACE": "StateService",
            "STATE_TRACING": "false",
        }
    )
    return state_table


@pytest.fixture(scope="session")
def invoke(handler_environment):
    """invoke(function_dir, event[, context]) -> response dict, through the function's real lambda_handler."""
    handlers = {}

    def call(function, event, context=None):
        if function not in handlers:
            # Every function's module is app.py: load each under its own name.
            spec = importlib.util.spec_from_file_location(
                f"{function}_app", REPO_ROOT / "functions" / function / "app.py"
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            handlers[function] = module.lambda_handler
        return handlers[function](event, context or LambdaContext())

    return call


@pytest.fixture
def key():
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def clock():
    """A clock standing at a fixed time until the test advances it."""
    from tests.doubles import Clock

    return Clock()


@pytest.fixture
def client(moto_server):
    """A DynamoDB client as the functions configure theirs (timeouts, 3 attempts)."""
    import boto3

    from state_core.runtime import DYNAMODB_CONFIG

    return boto3.client("dynamodb", endpoint_url=moto_server, config=DYNAMODB_CONFIG)


@pytest.fixture
def store(client, state_table):
    """The real StateStore on the state table."""
    from state_core.storage.state import StateStore

    return StateStore(client, state_table)


@pytest.fixture(scope="session")
def authorize(dev_issuer):
    """authorize(headers) -> the authorizer's answer, through its real lambda_handler."""
    os.environ.update(
        {
            "STATE_OIDC_ISSUER": dev_issuer.issuer,
            "STATE_OIDC_AUDIENCE": "state-service",
            "POWERTOOLS_SERVICE_NAME": "state-service",
            "POWERTOOLS_METRICS_NAMESPACE": "StateService",
        }
    )
    spec = importlib.util.spec_from_file_location("authorizer_app", REPO_ROOT / "functions" / "authorizer" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def call(headers):
        event = copy.deepcopy(load_event("authorizer"))
        event["headers"] = headers
        event["identitySource"] = [headers.get("authorization", "")]
        return module.lambda_handler(event, LambdaContext())

    return call


@pytest.fixture
def policy_file(monkeypatch, tmp_path, handler_environment):
    """policy_file(text) -> points STATE_POLICY_FILE at a file with `text`, for this test only."""
    from state_core import runtime

    def use(text: str):
        path = tmp_path / f"policy-{uuid.uuid4().hex}.json"
        path.write_text(text)
        monkeypatch.setenv("STATE_POLICY_FILE", str(path))
        runtime.service_settings.cache_clear()
        runtime.role_policy.cache_clear()
        return path

    yield use
    monkeypatch.delenv("STATE_POLICY_FILE", raising=False)
    runtime.service_settings.cache_clear()
    runtime.role_policy.cache_clear()
