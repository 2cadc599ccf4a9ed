"""The local stack's listeners answer only this machine: a web page the developer opens gets no CORS
grant from any of them (it cannot read their answers), and a page on a name rebound to 127.0.0.1 (DNS
rebinding, same-origin without CORS) is refused by its Host header. Redis, which speaks no HTTP, ignores
what a page's HTTP POST to it carries.

Real servers over real sockets: the serialized moto server, the dev OIDC issuer, redis-server. The
gateway's own checks are in test_gateway.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
import redis
import requests

from devstack.loopback import is_loopback_host, is_loopback_origin
from tests.servers import served_on_a_thread

pytestmark = pytest.mark.integration

EVIL_ORIGIN = "http://evil.example"


def cors_headers(response: requests.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


# --- the rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("127.0.0.2:5000", True),
        ("127.0.0.1:5001", False),  # another listener's port: not this one's name
        ("127.0.0.1", False),
        ("evil.example:5000", False),
        ("localhost.evil.example:5000", False),
        ("127.0.0.1.nip.io:5000", False),
        ("0.0.0.0:5000", False),
        ("127.0.0.1:5000@evil.example", False),
        ("[::1:5000", False),
        ("", False),
        (None, False),
    ],
)
def test_a_host_is_loopback_only_with_a_loopback_name_and_the_listeners_port(host, expected):
    assert is_loopback_host(host, 5000) is expected


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("http://127.0.0.1:3000", True),
        ("http://localhost:5173", True),
        ("https://[::1]", True),
        ("http://evil.example", False),
        ("http://127.0.0.1.evil.example", False),
        ("null", False),
        ("file://", False),
        ("", False),
    ],
)
def test_an_origin_is_loopback_only_for_a_page_served_from_this_machine(origin, expected):
    assert is_loopback_origin(origin) is expected


# --- moto ---------------------------------------------------------------------------------------


def test_moto_still_serves_the_sdk(moto_server: str, state_table: str) -> None:
    ddb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    assert ddb.describe_table(TableName=state_table)["Table"]["TableName"] == state_table


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL_ORIGIN},
        {"Host": "evil.example:{port}"},
        {"Host": "evil.example:{port}", "Origin": "http://evil.example:{port}"},
    ],
    ids=["foreign-origin", "rebound-host", "rebound-host-same-origin"],
)
def test_moto_refuses_a_web_page_reading_the_local_data(moto_server: str, state_table: str, headers) -> None:
    headers = {k: v.format(port=port_of(moto_server)) for k, v in headers.items()}
    response = requests.get(f"{moto_server}/moto-api/data.json", headers=headers, timeout=10)
    assert response.status_code == 403
    assert state_table not in response.text
    assert cors_headers(response) == {}


def test_moto_refuses_a_preflight_and_grants_no_origin(moto_server: str, state_table: str) -> None:
    preflight = requests.options(
        f"{moto_server}/moto-api/reset",
        headers={"Origin": EVIL_ORIGIN, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 403
    assert cors_headers(preflight) == {}
    # Even a page served from this machine gets no CORS grant (only same-origin reads, and none exist). Asked
    # of the small config document: data.json, every test's items in one dump, can outlast any timeout.
    local = requests.get(f"{moto_server}/moto-api/config", headers={"Origin": "http://127.0.0.1:1"}, timeout=10)
    assert local.ok
    assert cors_headers(local) == {}
    ddb = boto3.client("dynamodb", endpoint_url=moto_server, region_name="us-east-1")
    assert ddb.describe_table(TableName=state_table)["Table"]["TableStatus"] == "ACTIVE"


# --- the dev OIDC issuer ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from devstack.oidc import DevIssuer

    issuer = DevIssuer(Path(tmp_path_factory.mktemp("issuer-state")), port=0)
    with served_on_a_thread(issuer, "dev-issuer", stop_timeout=10):
        yield issuer.issuer


def test_the_dev_issuer_serves_this_machine_without_cors(dev_issuer: str) -> None:
    response = requests.get(f"{dev_issuer}/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 200
    assert response.json()["issuer"] == dev_issuer
    assert cors_headers(response) == {}


@pytest.mark.parametrize(
    "headers",
    [{"Origin": EVIL_ORIGIN}, {"Host": "evil.example:{port}"}],
    ids=["foreign-origin", "rebound-host"],
)
def test_the_dev_issuer_refuses_web_pages(dev_issuer: str, headers) -> None:
    headers = {k: v.format(port=port_of(dev_issuer)) for k, v in headers.items()}
    for path in ("/.well-known/openid-configuration", "/jwks.json", "/token"):
        response = requests.get(f"{dev_issuer}{path}", headers=headers, timeout=10)
        assert response.status_code == 403, path
        assert cors_headers(response) == {}
    # Nor may a page's form post the dev client's credentials to the token endpoint.
    form = {"grant_type": "client_credentials", "client_id": "dev-client", "client_secret": "dev-secret"}
    response = requests.post(f"{dev_issuer}/token", data=form, headers=headers, timeout=10)
    assert response.status_code == 403
    assert "access_token" not in response.text


def test_the_dev_issuer_mints_only_for_a_client_with_its_credentials(dev_issuer: str) -> None:
    # Over HTTP: the public documents, and tokens for the client credentials grant (test_dev_issuer_token.py).
    for method in ("GET", "POST"):
        for path in ("/authorize", "/oauth2/token", "/mint"):
            assert requests.request(method, f"{dev_issuer}{path}", timeout=10).status_code in (404, 405)
    assert requests.get(f"{dev_issuer}/token", timeout=10).status_code == 405
    assert (
        requests.post(f"{dev_issuer}/token", data={"grant_type": "client_credentials"}, timeout=10).status_code == 401
    )


# --- redis ----------------------------------------------------------------------------------------------


def test_redis_listens_on_loopback_in_protected_mode_at_a_safe_version(redis_server) -> None:
    from devstack.redis_server import MIN_VERSION, redis_version

    client = redis.Redis.from_url(redis_server.url)
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("protected-mode")["protected-mode"] == "yes"
    assert redis_version(redis_server.binary) >= MIN_VERSION


def test_redis_runs_nothing_a_web_pages_http_post_carries(redis_server) -> None:
    # What fetch("http://127.0.0.1:<redis port>/", {method: "POST", mode: "no-cors", body}) sends: Redis
    # reads the request line and headers as commands, then the body.
    client = redis.Redis.from_url(redis_server.url)
    client.delete("cross-protocol")
    body = b"SET cross-protocol pwned\r\n"
    request = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://evil.example\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (redis_server.port, len(body), body)
    )
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall(request)
        sock.settimeout(5)
        received = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break  # Redis closed the connection on "POST"
            received += chunk
    assert client.get("cross-protocol") is None
    assert b"+OK" not in received
