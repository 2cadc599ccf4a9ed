"""The dev issuer's token endpoint (OAuth2 client credentials, RFC 6749 section 4.4) over real HTTP: what it
grants, to whom, and every request it refuses. That the authorizer accepts its tokens, and the client
library's refresh across their expiry, is in clients/python/tests/test_state_client_auth.py."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from devstack.oidc import DevClient, DevIssuer, parse_clients, public_jwk
from tests.servers import served_on_a_thread

pytestmark = pytest.mark.integration

CLIENTS = {
    "reader": DevClient(secret="s3cret+:/é", scope="state:read state:read:user:*"),
    "admin": DevClient(secret="admin-secret", scope="state:read state:write", roles=("ops",)),
}
TTL = 120


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIssuer]:
    served = DevIssuer(Path(tmp_path_factory.mktemp("issuer-token")), port=0, clients=CLIENTS, token_ttl=TTL)
    with served_on_a_thread(served, "dev-issuer-token", stop_timeout=10):
        yield served


def basic(client_id: str, secret: str) -> dict[str, str]:
    from urllib.parse import quote_plus

    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


READER, ADMIN = basic("reader", "s3cret+:/é"), basic("admin", "admin-secret")


def post(issuer: DevIssuer, data: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{issuer.issuer}/token", data=data, headers=headers, timeout=10)


def claims(issuer: DevIssuer, token: str) -> dict[str, Any]:
    key = jwt.PyJWK(public_jwk(issuer.key))
    return jwt.decode(token, key, algorithms=["RS256"], audience="state-service", issuer=issuer.issuer)


def test_discovery_names_the_token_endpoint(issuer: DevIssuer) -> None:
    document = requests.get(f"{issuer.issuer}/.well-known/openid-configuration", timeout=10).json()
    assert document["token_endpoint"] == f"{issuer.issuer}/token"
    assert document["grant_types_supported"] == ["client_credentials"]


def test_a_client_authenticated_by_basic_gets_a_token_of_its_scopes(issuer: DevIssuer) -> None:
    response = post(issuer, {"grant_type": "client_credentials"}, basic("reader", "s3cret+:/é"))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", TTL, "state:read state:read:user:*")
    decoded = claims(issuer, body["access_token"])
    assert (decoded["sub"], decoded["scope"], decoded["exp"] - decoded["iat"]) == ("reader", body["scope"], TTL)
    assert "roles" not in decoded


def test_a_client_posting_its_secret_gets_a_narrower_scope_it_asks_for(issuer: DevIssuer) -> None:
    form = {"grant_type": "client_credentials", "client_id": "admin", "client_secret": "admin-secret"}
    response = post(issuer, {**form, "scope": "state:read"})
    assert response.status_code == 200, response.text
    decoded = claims(issuer, response.json()["access_token"])
    assert (decoded["scope"], decoded["roles"]) == ("state:read", ["ops"])


@pytest.mark.parametrize(
    ("form", "headers", "status", "error"),
    [
        ({"grant_type": "client_credentials"}, basic("reader", "wrong"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, basic("nobody", "s3cret+:/é"), 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, {"Authorization": "Basic !!!"}, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, {}, 401, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": "admin"}, {}, 401, "invalid_client"),
        (  # two client authentication methods in one request (RFC 6749 section 2.3)
            {"grant_type": "client_credentials", "client_id": "admin", "client_secret": "admin-secret"},
            basic("admin", "admin-secret"), 401, "invalid_client",
        ),
        ({"grant_type": "password"}, basic("admin", "admin-secret"), 400, "unsupported_grant_type"),
        ({}, ADMIN, 400, "invalid_request"),  # no body, no form
        ({"grant_type": "client_credentials", "scope": "state:admin"}, READER, 400, "invalid_scope"),
        ({"grant_type": "client_credentials", "audience": "other"}, ADMIN, 400, "invalid_target"),
    ],
)  # fmt: skip
def test_refused_requests_get_no_token(issuer: DevIssuer, form, headers, status, error) -> None:
    response = post(issuer, form, headers)
    assert response.status_code == status
    assert response.json() == {"error": error}
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_a_json_body_is_an_invalid_request(issuer: DevIssuer) -> None:
    response = requests.post(
        f"{issuer.issuer}/token", json={"grant_type": "client_credentials"}, headers=basic("admin", "admin-secret"),
        timeout=10,
    )  # fmt: skip
    assert (response.status_code, response.json()) == (400, {"error": "invalid_request"})


@pytest.mark.parametrize(
    "text", ["[]", '{"a": {"scope": "x"}}', '{"a": {"secret": ""}}', '{"a": "secret"}', "not json"]
)
def test_a_malformed_client_list_is_refused_at_start(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  json's own error is a ValueError too
        parse_clients(text)
