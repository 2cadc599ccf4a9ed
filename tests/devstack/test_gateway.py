"""The local gateway behaves like API Gateway HTTP API where a client could notice.

Runs the gateway in-process against a fixture template (tests/fixtures/gateway/)
whose functions echo the event they got: these tests pin the gateway, not the
real handlers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from devstack.gateway import (
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    THROTTLING_BURST_ENV,
    THROTTLING_RATE_ENV,
    Gateway,
    TokenBucket,
    throttling_from_env,
)
from devstack.template import load_template
from tests.jwt_support import REPO_ROOT
from tests.servers import served_on_a_thread

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "gateway" / "template.yaml"
ALLOW = {"Authorization": "Bearer allow-alice"}


@dataclass
class RunningGateway:
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    state_dir: Path

    @property
    def base_url(self) -> str:
        return self.gateway.base_url

    def url(self, path: str) -> str:
        return self.base_url + path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    yield from running_gateway(tmp_path_factory.mktemp("gateway-state"))


def running_gateway(state_dir: Path, **settings: Any) -> Iterator[RunningGateway]:
    template = load_template(FIXTURE)
    gateway = Gateway(
        template=template,
        state_dir=state_dir,
        endpoint_url="http://127.0.0.1:9",
        port=0,
        max_concurrency=4,
        integration_timeout=30.0,
        **settings,
    )
    with served_on_a_thread(gateway, "gateway", stop_timeout=30) as loop:
        yield RunningGateway(gateway, loop, state_dir)


def echo(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- routing and authorizer ---------------------------------------------------------------------


def test_an_answer_over_lambdas_payload_limit_is_a_500_as_on_aws(gw: RunningGateway) -> None:
    assert echo(requests.get(gw.url("/echo/k?pad=5000000"), headers=ALLOW, timeout=30))["pad"]
    response = requests.get(gw.url("/echo/k?pad=6300000"), headers=ALLOW, timeout=30)
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}


def test_unmatched_route_is_api_gateways_404(gw: RunningGateway) -> None:
    response = requests.get(gw.url("/nope/a"), headers=ALLOW, timeout=10)
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [("/nope/a", ALLOW, 404), ("/echo/k", {}, 401), ("/echo/k", {"Authorization": "Bearer deny"}, 403)],
    ids=["404", "401", "403"],
)
def test_the_gateways_own_answers_are_application_json_as_api_gateway_sends_them(
    gw: RunningGateway, path: str, headers: dict[str, str], status: int
) -> None:
    # The OpenAPI document declares these bodies as application/json, API Gateway's media type, with no
    # charset parameter, and API Gateway's compact body.
    response = requests.get(gw.url(path), headers=headers, timeout=10)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == json.dumps({"message": response.json()["message"]}, separators=(",", ":")).encode()


@pytest.mark.parametrize("raw", ["%0A", "a%0Ab", "%1A%F3%B0%8B%AF", "%0D%0A"])
def test_a_path_variable_with_encoded_control_characters_reaches_the_route(gw: RunningGateway, raw: str) -> None:
    # API Gateway matches routes on the raw path: the decoded newline is the function's to refuse (400).
    response = requests.get(gw.url(f"/echo/{raw}"), headers=ALLOW, timeout=10)
    assert echo(response)["event"]["pathParameters"] == {"key": unquote(raw)}


def test_path_variable_matches_exactly_one_segment(gw: RunningGateway) -> None:
    response = requests.get(gw.url("/echo/a/b"), headers=ALLOW, timeout=10)
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}], ids=["missing", "empty"])
def test_missing_or_empty_authorization_is_401_without_calling_the_authorizer(
    gw: RunningGateway, headers: dict[str, str]
) -> None:
    before = gw.gateway.stats.authorizer_invocations
    response = requests.get(gw.url("/echo/k"), headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized"}
    assert gw.gateway.stats.authorizer_invocations == before


def test_denied_token_is_403(gw: RunningGateway) -> None:
    response = requests.get(gw.url("/echo/k"), headers={"Authorization": "Bearer deny"}, timeout=10)
    assert response.status_code == 403
    assert response.json() == {"message": "Forbidden"}


@pytest.mark.parametrize("token", ["boom", "malformed"])
def test_failing_or_malformed_authorizer_is_500(gw: RunningGateway, token: str) -> None:
    response = requests.get(gw.url("/echo/k"), headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}


def test_route_with_auth_none_skips_the_authorizer(gw: RunningGateway) -> None:
    body = echo(requests.get(gw.url("/open"), timeout=10))
    assert "authorizer" not in body["event"]["requestContext"]


def test_authorizer_result_is_cached_per_authorization_header(gw: RunningGateway) -> None:
    headers = {"Authorization": "Bearer allow-cache-test"}
    first = echo(requests.get(gw.url("/echo/one"), headers=headers, timeout=10))
    invocations = gw.gateway.stats.authorizer_invocations
    second = echo(requests.get(gw.url("/echo/two"), headers=headers, timeout=10))
    # Within ReauthorizeEvery the second request reuses the first answer, context included.
    assert gw.gateway.stats.authorizer_invocations == invocations
    assert second["event"]["requestContext"]["authorizer"] == first["event"]["requestContext"]["authorizer"]
    # A different header value is a different cache entry.
    echo(requests.get(gw.url("/echo/one"), headers={"Authorization": "Bearer allow-other"}, timeout=10))
    assert gw.gateway.stats.authorizer_invocations == invocations + 1


def test_authorizer_receives_the_request_payload_2_0(gw: RunningGateway) -> None:
    body = echo(requests.get(gw.url("/echo/k"), headers={"Authorization": "Bearer allow-shape"}, timeout=10))
    context = body["event"]["requestContext"]["authorizer"]["lambda"]
    assert context["type"] == "REQUEST"
    assert context["version"] == "2.0"
    assert context["routeKey"] == "GET /echo/{key}"


# --- payload format 2.0 -------------------------------------------------------------------------


def test_event_has_api_gateways_payload_2_0_fields(gw: RunningGateway) -> None:
    response = requests.get(
        gw.url("/echo/user%3A123?b=1&a=x&a=y"),
        headers={**ALLOW, "X-Custom": "one", "Cookie": "s=1; t=2"},
        timeout=10,
    )
    body = echo(response)
    event = body["event"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /echo/{key}"
    assert event["rawPath"] == "/echo/user%3A123"
    assert event["rawQueryString"] == "b=1&a=x&a=y"
    assert event["queryStringParameters"] == {"a": "x,y", "b": "1"}
    assert event["pathParameters"] == {"key": "user:123"}
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["headers"]["x-custom"] == "one"
    assert "cookie" not in event["headers"]
    assert all(name == name.lower() for name in event["headers"])
    assert event["isBase64Encoded"] is False
    assert "body" not in event
    context = event["requestContext"]
    assert context["stage"] == "$default"
    assert context["routeKey"] == "GET /echo/{key}"
    assert context["http"]["method"] == "GET"
    assert context["http"]["path"] == "/echo/user%3A123"
    assert context["http"]["sourceIp"] == "127.0.0.1"
    assert context["accountId"] == "000000000000"
    assert context["authorizer"]["lambda"]["sub"] == "alice"
    assert isinstance(context["timeEpoch"], int)
    assert response.headers["apigw-requestid"] == context["requestId"]
    # And the function ran with its template environment and a Lambda-like context.
    assert body["env"]["FIXTURE_GREETING"] == "hello"
    assert body["env"]["FIXTURE_OWN"] == "echo"
    assert body["env"]["FIXTURE_STACK"] == "state-service-local-us-east-1"
    assert body["env"]["FIXTURE_MODE"] == "is-local"
    assert body["env"]["AWS_LAMBDA_FUNCTION_NAME"] == body["function_name"]
    assert body["env"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert 0 < body["remaining_ms"] <= 5000


def test_request_ids_are_unique(gw: RunningGateway) -> None:
    ids = {
        echo(requests.get(gw.url("/echo/k"), headers=ALLOW, timeout=10))["event"]["requestContext"]["requestId"]
        for _ in range(5)
    }
    assert len(ids) == 5


def test_repeated_headers_are_comma_joined(gw: RunningGateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.gateway.port), timeout=10) as sock:
        sock.sendall(
            f"GET /echo/k HTTP/1.1\r\nHost: 127.0.0.1:{gw.gateway.port}\r\n".encode()
            + b"Authorization: Bearer allow-alice\r\nX-Rep: a\r\nX-Rep: b\r\nConnection: close\r\n\r\n"
        )
        raw = _read_all(sock)
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert body["event"]["headers"]["x-rep"] == "a,b"


def test_json_body_arrives_as_text(gw: RunningGateway) -> None:
    payload = '{"value": {"é": 1}}'
    response = requests.put(
        gw.url("/echo/k"),
        data=payload.encode(),
        headers={**ALLOW, "Content-Type": "application/json; charset=utf-8"},
        timeout=10,
    )
    event = echo(response)["event"]
    assert event["isBase64Encoded"] is False
    assert event["body"] == payload


def test_merge_patch_body_arrives_base64_encoded(gw: RunningGateway) -> None:
    payload = b'{"a": null}'
    response = requests.patch(
        gw.url("/echo/k"), data=payload, headers={**ALLOW, "Content-Type": "application/merge-patch+json"}, timeout=10
    )
    event = echo(response)["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_response_payload_2_0_is_mapped_to_http(gw: RunningGateway) -> None:
    response = requests.get(gw.url("/echo/k"), headers=ALLOW, timeout=10)
    assert response.headers["x-echo"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert response.raw.headers.getlist("x-multi") == ["a", "b"] or response.headers["x-multi"] == "a, b"
    assert response.cookies.get("c1") == "v1"
    assert response.cookies.get("c2") == "v2"


def test_response_without_status_code_is_a_200_json_body(gw: RunningGateway) -> None:
    response = requests.get(gw.url("/echo/k?raw=1"), headers=ALLOW, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"raw": True, "key": "k"}


# --- limits -------------------------------------------------------------------------------------


def test_headers_over_10240_bytes_are_refused(gw: RunningGateway) -> None:
    before = gw.gateway.stats.authorizer_invocations
    big = {**ALLOW, "X-Big": "x" * MAX_HEADER_BYTES}
    response = requests.get(gw.url("/echo/k"), headers=big, timeout=10)
    assert response.status_code == 413
    assert response.json() == {"message": "Request Entity Too Large"}
    assert gw.gateway.stats.authorizer_invocations == before
    # Just under the limit passes.
    ok = requests.get(gw.url("/echo/k"), headers={**ALLOW, "X-Big": "x" * 9000}, timeout=10)
    assert ok.status_code == 200


def test_declared_payload_over_10_mb_is_refused_without_reading_it(gw: RunningGateway) -> None:
    with socket.create_connection(("127.0.0.1", gw.gateway.port), timeout=10) as sock:
        # Only the headers are sent: an answer proves the body was never waited for.
        sock.sendall(
            f"PUT /echo/k HTTP/1.1\r\nHost: 127.0.0.1:{gw.gateway.port}\r\n".encode()
            + b"Authorization: Bearer allow-alice\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {MAX_PAYLOAD_BYTES + 1}\r\n\r\n".encode()
        )
        raw = _read_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body) == {"message": "Request Entity Too Large"}


def test_chunked_payload_over_10_mb_is_refused(gw: RunningGateway) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    try:
        response = requests.put(
            gw.url("/echo/k"), data=chunks(), headers={**ALLOW, "Content-Type": "text/plain"}, timeout=30
        )
    except requests.ConnectionError:
        pytest.skip("the client could not read the early answer (connection closed while sending)")
    assert response.status_code == 413
    assert response.json() == {"message": "Request Entity Too Large"}


def test_payload_just_under_the_limit_is_accepted(gw: RunningGateway) -> None:
    data = b"y" * (MAX_PAYLOAD_BYTES - 1024)
    response = requests.put(
        gw.url("/echo/k"), data=data, headers={**ALLOW, "Content-Type": "application/octet-stream"}, timeout=30
    )
    event = echo(response)["event"]
    assert event["isBase64Encoded"] is True
    # Echoed as its size and digest: the body itself would take the answer past Lambda's limit.
    assert event["body_bytes"] == len(data)
    assert event["body_sha256"] == hashlib.sha256(data).hexdigest()


# --- Lambda's process model ---------------------------------------------------------------------


def test_handler_exception_is_500_and_the_traceback_stays_in_the_log(gw: RunningGateway) -> None:
    response = requests.get(gw.url("/fail"), headers=ALLOW, timeout=10)
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}
    assert "secret-detail" not in response.text
    log = (gw.state_dir / "logs" / "FailFunction.log").read_text()
    assert "RuntimeError: secret-detail-that-must-not-reach-the-client" in log


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_worker_outlives_a_signal_to_the_stacks_process_group(gw: RunningGateway, signal_number: int) -> None:
    """`make dev`'s Ctrl-C and a test's stop signal every process of the stack's group; the stack stops its
    workers itself, once the WebSocket connections' $disconnect ran on them."""
    pid = echo(requests.get(gw.url("/echo/k"), headers=ALLOW, timeout=30))["pid"]
    os.kill(pid, signal_number)
    time.sleep(0.3)
    state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    assert state not in ("Z", "X")  # neither a zombie nor dead: still the function's worker
    assert echo(requests.get(gw.url("/echo/k"), headers=ALLOW, timeout=30))


def test_timed_out_worker_is_replaced_and_the_next_call_works(gw: RunningGateway) -> None:
    first = requests.get(gw.url("/slow?sleep=0"), headers=ALLOW, timeout=10)
    pid = first.json()["pid"]
    started = time.monotonic()
    timed_out = requests.get(gw.url("/slow?sleep=5"), headers=ALLOW, timeout=10)
    assert timed_out.status_code == 500
    assert timed_out.json() == {"message": "Internal Server Error"}
    assert time.monotonic() - started < 4  # killed at its 1 s Timeout, not after 5 s
    after = requests.get(gw.url("/slow?sleep=0"), headers=ALLOW, timeout=10)
    assert after.status_code == 200
    assert after.json()["pid"] != pid
    assert "Task timed out after 1.00 seconds" in (gw.state_dir / "logs" / "SlowFunction.log").read_text()


def test_no_answer_within_the_integration_timeout_is_503(gw: RunningGateway) -> None:
    # API Gateway waits 30 s; the fixture shortens the wait to keep the test fast.
    saved = gw.gateway.integration_timeout
    gw.gateway.integration_timeout = 0.3
    try:
        response = requests.get(gw.url("/slow?sleep=0.8"), headers=ALLOW, timeout=10)
    finally:
        gw.gateway.integration_timeout = saved
    assert response.status_code == 503
    assert response.json() == {"message": "Service Unavailable"}


def test_a_worker_runs_one_event_at_a_time(gw: RunningGateway) -> None:
    def call(_: int) -> dict[str, Any]:
        return echo(requests.get(gw.url("/echo/k?sleep=0.3"), headers=ALLOW, timeout=30))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(8)))
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for result in results:
        by_pid.setdefault(result["pid"], []).append((result["started"], result["finished"]))
    # More than one worker served them (concurrency), at most the pool's maximum,
    assert 1 < len(by_pid) <= 4
    # and no two invocations overlapped inside one worker.
    for spans in by_pid.values():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end


def test_access_log_has_one_json_line_per_request_without_secrets(gw: RunningGateway) -> None:
    requests.get(gw.url("/echo/logged"), headers={"Authorization": "Bearer allow-secret-token"}, timeout=10)
    requests.get(gw.url("/echo/k"), headers={"Authorization": "Bearer boom"}, timeout=10)
    text = (gw.state_dir / "logs" / "access.log").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"requestId", "routeKey", "status", "sourceIp"} <= set(lines[-1])
    assert lines[-1]["status"] == 500
    assert "authorizerError" in lines[-1]
    assert (lines[-2]["subject"], lines[-1]["subject"]) == ("secret-token", "-")
    assert "allow-secret-token" not in text


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


# --- only this machine, no CORS -----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Host": "evil.example:{port}"},
        {"Host": "evil.example:{port}", "Origin": "http://evil.example:{port}"},
        {"Host": "127.0.0.1:1"},
    ],
    ids=["foreign-origin", "rebound-host", "rebound-host-same-origin", "other-port"],
)
def test_web_pages_are_refused_before_the_authorizer(gw: RunningGateway, headers: dict[str, str]) -> None:
    headers = {k: v.format(port=gw.gateway.port) for k, v in {**ALLOW, **headers}.items()}
    before = (gw.gateway.stats.authorizer_invocations, gw.gateway.stats.integration_invocations)
    response = requests.put(gw.url("/echo/web-page"), headers=headers, json={"value": 1}, timeout=10)
    assert response.status_code == 403
    assert response.json() == {"message": "Forbidden"}
    assert not [k for k in response.headers if k.lower().startswith("access-control-")]
    assert (gw.gateway.stats.authorizer_invocations, gw.gateway.stats.integration_invocations) == before


def test_no_cors_like_api_gateway_without_a_cors_configuration(gw: RunningGateway) -> None:
    # A preflight matches no route (there is no OPTIONS route): 404, and no grant.
    preflight = requests.options(
        gw.url("/echo/k"),
        headers={"Origin": "http://127.0.0.1:5173", "Access-Control-Request-Method": "PUT"},
        timeout=10,
    )
    assert preflight.status_code == 404
    assert preflight.json() == {"message": "Not Found"}
    # A page served from this machine is answered, without CORS headers.
    response = requests.get(gw.url("/echo/k"), headers={**ALLOW, "Origin": "http://localhost:5173"}, timeout=10)
    assert response.status_code == 200
    for answer in (preflight, response):
        assert not [k for k in answer.headers if k.lower().startswith("access-control-")]


# --- throttling ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def throttled_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # A burst of 3, refilled at one request every 4 s: the test decides what gets through.
    yield from running_gateway(tmp_path_factory.mktemp("throttled-gateway-state"), throttling=(3, 0.25))


def test_a_burst_over_the_limit_is_429_before_the_authorizer(throttled_gw: RunningGateway) -> None:
    gateway = throttled_gw.gateway
    stats = gateway.stats
    before = (stats.authorizer_invocations, stats.integration_invocations, stats.throttled)

    def put(i: int) -> requests.Response:
        # A new token each time: every request that got through would invoke the authorizer.
        headers = {"Authorization": f"Bearer allow-flood-{i}-{time.monotonic_ns()}"}
        return requests.put(throttled_gw.url(f"/echo/flood-{i}"), headers=headers, json={"value": i}, timeout=30)

    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(put, range(12)))

    passed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(passed) + len(refused) == len(answers)
    assert 3 <= len(passed) <= 4  # the burst, and at most one token refilled meanwhile
    for answer in refused:
        assert answer.json() == {"message": "Too Many Requests"}
        assert answer.headers["Content-Type"].startswith("application/json")
    # Neither the authorizer nor the function ran for a refused request.
    after = (stats.authorizer_invocations, stats.integration_invocations, stats.throttled)
    assert after == (before[0] + len(passed), before[1] + len(passed), before[2] + len(refused))
    records = [json.loads(line) for line in (throttled_gw.state_dir / "logs" / "access.log").read_text().splitlines()]
    throttled = [r for r in records if r["status"] == 429]
    assert len(throttled) == len(refused)
    assert {(r["routeKey"], r["error"], r["authorizerError"]) for r in throttled} == {
        ("PUT /echo/{key}", "Too Many Requests", "-")
    }


def test_every_route_has_its_own_bucket_and_it_refills_at_the_rate(throttled_gw: RunningGateway) -> None:
    put = lambda: requests.put(throttled_gw.url("/echo/refill"), headers=ALLOW, json={}, timeout=30)  # noqa: E731
    while put().status_code == 200:  # empty the PUT route's bucket (the previous test may have)
        pass
    # Another route is not throttled by the PUT route's traffic.
    assert requests.get(throttled_gw.url("/echo/other"), headers=ALLOW, timeout=30).status_code == 200
    assert put().status_code == 429
    time.sleep(4.2)  # one request's worth at 0.25 a second
    assert put().status_code == 200
    assert put().status_code == 429


def test_the_token_bucket_follows_api_gateways_limits() -> None:
    now = [0.0]
    bucket = TokenBucket(burst=2, rate=10.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 0.1  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] += 60  # never more than the burst
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    # A burst limit of 0 refuses everything, whatever the rate.
    closed = TokenBucket(burst=0, rate=1000.0, clock=lambda: now[0])
    now[0] += 60
    assert not closed.take()


def test_throttling_comes_from_the_template_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(THROTTLING_BURST_ENV, raising=False)
    monkeypatch.delenv(THROTTLING_RATE_ENV, raising=False)
    state = load_template(REPO_ROOT / "template.yaml")
    assert throttling_from_env(state.stage_throttling()) == (1000, 500.0)
    assert throttling_from_env(load_template(FIXTURE).stage_throttling()) is None
    monkeypatch.setenv(THROTTLING_BURST_ENV, "5")
    assert throttling_from_env(state.stage_throttling()) == (5, 500.0)
    monkeypatch.setenv(THROTTLING_RATE_ENV, "0.5")
    assert throttling_from_env(None) == (5, 0.5)


def test_the_get_function_may_run_enough_workers_for_fifty_long_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack.workers import max_concurrency_for

    monkeypatch.delenv("LOCAL_MAX_CONCURRENCY", raising=False)
    monkeypatch.delenv("LOCAL_MAX_CONCURRENCY_GetStateFunction", raising=False)
    assert max_concurrency_for("GetStateFunction") == 64
    assert max_concurrency_for("PutStateFunction") == 8
    monkeypatch.setenv("LOCAL_MAX_CONCURRENCY", "100")
    assert max_concurrency_for("GetStateFunction") == 100
    monkeypatch.setenv("LOCAL_MAX_CONCURRENCY_GetStateFunction", "3")
    assert max_concurrency_for("GetStateFunction") == 3


def test_a_request_answered_before_its_body_is_read_does_not_leave_a_dead_connection_to_reuse(
    tmp_path: Path,
) -> None:
    # A throttled PUT is answered 429 before its body is read, and the gateway does not read it afterwards
    # (no lingering): it closes the connection, and says so, so a client's pool never sends the next
    # request on a connection the gateway has already dropped.
    import httpx

    for gateway in running_gateway(tmp_path, throttling=(0, 0.0)):
        with httpx.Client(base_url=gateway.url("")) as client:
            for _ in range(30):
                response = client.put("/echo/k", content=b"x" * 65536, headers=ALLOW)
                assert response.status_code == 429
                assert response.headers.get("Connection") == "close"
            # A request without a body keeps its connection.
            assert client.get("/echo/k", headers=ALLOW).headers.get("Connection") != "close"
