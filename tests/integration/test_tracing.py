"""Tracing on: a request's X-Ray documents, as the functions send them to a daemon, show the authorizer, the
handler, each DynamoDB call and each Redis command, indexed by the key and the API's request id; and never a
value. Each function runs in its own interpreter as in Lambda (the environment Lambda gives a traced function,
a real moto server, redis-server and dev issuer); the daemon is a UDP socket of the test's."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import http_event, load_event

from devstack.token import mint

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYER = REPO_ROOT / "layers" / "state_core"
SECRET_VALUE = "a-value-that-must-never-reach-a-trace"

# One interpreter per function, as Lambda runs it: the events to hand its handler in turn, each under the trace
# id Lambda would set for that invocation.
_RUNNER = """
import importlib.util, json, os, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from tests.doubles import LambdaContext
spec = importlib.util.spec_from_file_location("app", os.path.join(sys.argv[2], "app.py"))
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)
answers = []
for trace_id, event in json.load(sys.stdin):
    os.environ["_X_AMZN_TRACE_ID"] = f"Root={trace_id};Parent=53995c3f42cd8ad8;Sampled=1"
    answers.append(app.lambda_handler(event, LambdaContext()))
print(json.dumps(answers))
"""


def trace_id() -> str:
    return f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"


@pytest.fixture
def daemon() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An X-Ray daemon's UDP port: the documents it receives, parsed."""
    received: list[dict[str, Any]] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            header, _, body = data.decode().partition("\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            received.append(json.loads(body))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}", received
    stop.set()
    thread.join(timeout=2)
    sock.close()


def run_function(function: str, invocations: list[tuple[str, dict[str, Any]]], env: dict[str, str]) -> list[Any]:
    folder = REPO_ROOT / "functions" / function
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")},
        "PYTHONPATH": str(REPO_ROOT),
        "LAMBDA_TASK_ROOT": str(folder),
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "STATE_TRACING": "true",
        "POWERTOOLS_TRACE_DISABLED": "false",
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        **env,
    }
    finished = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(LAYER), str(folder)],
        input=json.dumps(invocations),
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return json.loads(finished.stdout.strip().splitlines()[-1])


def documents_of(received: list[dict[str, Any]], trace: str) -> list[dict[str, Any]]:
    """Every (sub)segment of one trace, the nested ones flattened."""
    found: list[dict[str, Any]] = []

    def walk(document: dict[str, Any]) -> None:
        found.append(document)
        for child in document.get("subsegments", []):
            walk({**child, "trace_id": document["trace_id"]})

    for document in received:
        if document.get("trace_id") == trace:
            walk(document)
    return found


def wait_for(received: list[dict[str, Any]], trace: str, predicate: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        documents = documents_of(received, trace)
        if predicate(documents):
            return documents
        time.sleep(0.05)
    return documents_of(received, trace)


@pytest.fixture
def redis_environment(moto_server: str, redis_server: Any) -> dict[str, str]:
    secrets = boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")
    arn = secrets.create_secret(Name=f"signing-{uuid.uuid4().hex[:8]}", SecretString="s" * 64)["ARN"]
    return {"STATE_REDIS_URL": redis_server.url, "STATE_CACHE_SIGNING_SECRET_ARN": arn}


def test_a_traced_read_shows_its_handler_dynamodb_and_redis_indexed_by_key(
    daemon: tuple[str, list[dict[str, Any]]], handler_environment: str, redis_environment: dict[str, str], key: str
):
    address, received = daemon
    env = {**redis_environment, "AWS_XRAY_DAEMON_ADDRESS": address}
    run_function("put_state", [(trace_id(), http_event("put", key, body={"value": SECRET_VALUE}))], env)
    read = http_event("get", key)
    miss, hit = trace_id(), trace_id()

    answers = run_function("get_state", [(miss, read), (hit, copy.deepcopy(read))], env)

    assert [answer["statusCode"] for answer in answers] == [200, 200]
    documents = wait_for(received, miss, lambda docs: any(d.get("name") == "dynamodb" for d in docs))
    (handler,) = [d for d in documents if d.get("name") == "## lambda_handler"]
    assert handler["annotations"]["key"] == key
    assert handler["annotations"]["operation"] == "get"
    assert handler["annotations"]["request_id"] == read["requestContext"]["requestId"]
    dynamodb = [d for d in documents if d.get("name") == "dynamodb"]
    assert dynamodb
    assert {d["aws"]["operation"] for d in dynamodb} >= {"GetItem"}
    assert {d["aws"].get("table_name") for d in dynamodb} == {handler_environment}
    assert all(d["namespace"] == "aws" for d in dynamodb)
    redis = [d for d in documents if d.get("name") == "Redis"]
    assert redis
    assert all(d["namespace"] == "remote" for d in redis)
    # Every subsegment hangs under the handler's, in one trace.
    ids = {d["id"] for d in documents}
    assert all(d.get("parent_id") in ids for d in [*dynamodb, *redis] if "parent_id" in d)
    # The cached read: Redis alone, no DynamoDB call.
    cached = wait_for(received, hit, lambda docs: any(d.get("name") == "## lambda_handler" for d in docs))
    assert [d for d in cached if d.get("name") == "Redis"]
    assert not [d for d in cached if d.get("name") == "dynamodb"]
    # Values never reach a trace: not the one written, not the one read back.
    assert SECRET_VALUE not in json.dumps(received)


def test_the_authorizers_trace_carries_the_requests_id(
    daemon: tuple[str, list[dict[str, Any]]], dev_issuer: Any, tmp_path: Path
):
    address, received = daemon
    token = mint("alice", "state:read", issuer=dev_issuer.issuer, state_dir=dev_issuer.state_dir)
    event = load_event("authorizer")
    event["headers"] = {"authorization": f"Bearer {token}"}
    event["identitySource"] = [f"Bearer {token}"]
    event["requestContext"]["requestId"] = uuid.uuid4().hex
    trace = trace_id()
    env = {
        "AWS_XRAY_DAEMON_ADDRESS": address,
        "STATE_OIDC_ISSUER": dev_issuer.issuer,
        "STATE_OIDC_AUDIENCE": "state-service",
    }

    (answer,) = run_function("authorizer", [(trace, event)], env)

    assert answer["isAuthorized"] is True
    documents = wait_for(received, trace, lambda docs: any(d.get("name") == "## lambda_handler" for d in docs))
    (handler,) = [d for d in documents if d.get("name") == "## lambda_handler"]
    assert handler["annotations"]["request_id"] == event["requestContext"]["requestId"]
    assert handler["annotations"]["operation"] == "authorize"
    # The token is no annotation, no metadata, nowhere in the trace.
    assert token not in json.dumps(documents)


_IMPORTED = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import app
print(sorted({name.split(".")[0] for name in sys.modules} & {"aws_xray_sdk", "wrapt"}))
"""


@pytest.mark.parametrize("function", ["get_state", "authorizer"])
def test_tracing_off_imports_no_tracing_code(function: str):
    """The X-Ray SDK (and its wrapt) cost a cold start hundreds of ms: imported with tracing on only."""
    folder = REPO_ROOT / "functions" / function
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "STATE_TRACING"))}

    def imported(env: dict[str, str]) -> list[str]:
        command = [sys.executable, "-c", _IMPORTED, str(LAYER), str(folder)]
        finished = subprocess.run(command, capture_output=True, text=True, env={**base, **env}, check=True)
        return json.loads(finished.stdout.strip().splitlines()[-1].replace("'", '"'))

    assert imported({"STATE_TRACING": "false", "LAMBDA_TASK_ROOT": str(folder)}) == []
    traced = {"STATE_TRACING": "true", "POWERTOOLS_TRACE_DISABLED": "false", "LAMBDA_TASK_ROOT": str(folder)}
    assert imported(traced) == ["aws_xray_sdk", "wrapt"]
