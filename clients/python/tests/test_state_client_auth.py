"""Where the client's token comes from, against the local stack's real authorizer and dev issuer: OAuth2
client credentials fetched, cached and refreshed across the tokens' 5 s lifetime; callables (sync and
async) asked again after the gateway rejected their token."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest

from state_client import AsyncStateClient, AuthError, ClientCredentials, Forbidden, StateClient
from tests.stack import DevStack

pytestmark = pytest.mark.e2e


def expiry(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def test_client_credentials_are_refreshed_before_each_token_expires(stack: DevStack, key: str, token_ttl: int) -> None:
    credentials = ClientCredentials("dev-client", "dev-secret", issuer=stack.issuer, scope="state:read state:write")
    tokens: list[str] = []

    async def scenario() -> Any:
        async with AsyncStateClient(stack.base_url, token=credentials) as state, httpx.AsyncClient() as http:
            until = time.monotonic() + 2.5 * token_ttl
            while time.monotonic() < until:
                # The token the client holds now is the one its next request sends.
                token = await credentials.token_async(http)
                assert expiry(token) > time.time(), "a request would go out with an expired token"
                tokens.append(token)
                await state.modify(key, lambda n: (n or 0) + 1)
                await asyncio.sleep(0.25)
            return await state.get(key)

    final = asyncio.run(scenario())
    assert final.value == len(tokens)
    assert final.updated_by == "dev-client"  # the token's subject is the client
    assert len(set(tokens)) >= 3  # refreshed at least twice over 2.5 lifetimes


def test_the_sync_client_uses_the_token_endpoint_as_given(stack: DevStack, key: str) -> None:
    credentials = ClientCredentials("dev-client", "dev-secret", token_url=f"{stack.issuer}/token")
    with StateClient(stack.base_url, token=credentials) as state:
        state.set(key, 1)
        credentials.invalidate()
        assert state.get(key).value == 1


@pytest.mark.parametrize("secret", ["wrong", ""])
def test_refused_client_credentials_raise_auth_error(stack: DevStack, key: str, secret: str) -> None:
    credentials = ClientCredentials("dev-client", secret, issuer=stack.issuer)
    with StateClient(stack.base_url, token=credentials) as state, pytest.raises(AuthError) as refused:
        state.get(key)
    assert refused.value.status == 401
    assert "dev-secret" not in repr(credentials)


def test_a_callable_is_asked_again_once_after_the_gateway_rejects_its_token(stack: DevStack, key: str) -> None:
    handed: list[str] = []
    tokens = iter([stack.token(ttl=-120), stack.token()])  # expired beyond the authorizer's leeway, then fresh

    def provider() -> str:
        handed.append(next(tokens))
        return handed[-1]

    with StateClient(stack.base_url, token=provider) as state:
        assert state.set(key, {"a": 1}).version == 1
    assert len(handed) == 2

    def always_expired() -> str:
        handed.append(stack.token(ttl=-120))
        return handed[-1]

    handed.clear()
    with StateClient(stack.base_url, token=always_expired) as state, pytest.raises(Forbidden):
        state.get(key)
    assert len(handed) == 2  # once more, not forever


def test_an_async_callable_supplies_the_async_clients_token(stack: DevStack, key: str) -> None:
    async def provider() -> str:
        await asyncio.sleep(0)
        return stack.token("carol")

    async def scenario() -> str | None:
        async with AsyncStateClient(stack.base_url, token=provider) as state:
            return (await state.set(key, 1)).updated_by

    assert asyncio.run(scenario()) == "carol"


def test_the_base_url_comes_from_state_api_url(stack: DevStack, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_API_URL", stack.base_url + "/")
    with StateClient(token=stack.token()) as state:
        assert state.base_url == stack.base_url
        assert state.set(key, 2).version == 1
