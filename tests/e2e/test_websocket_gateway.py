"""The WebSocket API through the whole local stack: ``python -m devstack`` with a template that declares one
(the WebSocket fixture, tests/fixtures/websocket/) on its own port, its URL in the banner, the functions'
management endpoint resolved to it, botocore's client against @connections, and $disconnect on stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest

from tests.stack import DevStack, start_devstack

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "websocket" / "template.yaml"
ALLOW = {"Authorization": "Bearer allow-bob"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    running = start_devstack(
        tmp_path_factory.mktemp("websocket-stack"), {"STATE_TEMPLATE": str(FIXTURE), "REDIS_URL": "none"}
    )
    try:
        yield running
    finally:
        running.stop()


def test_the_banner_names_the_websocket_url_and_its_routes(stack: DevStack) -> None:
    assert f"websocket     {stack.ws_base_url.replace('http', 'ws')}/prod" in "\n".join(stack.output)
    assert "ws route      $connect -> ConnectFunction" in stack.output


def test_connect_message_post_and_delete_through_the_running_stack(stack: DevStack) -> None:
    management = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=f"{stack.ws_base_url}/prod",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(stack.ws_base_url.replace("http", "ws") + "/prod", headers=ALLOW)
            await socket.send_str(json.dumps({"type": "echo"}))
            answer: dict[str, Any] = json.loads((await socket.receive(timeout=30)).data)
            connection_id = answer["event"]["requestContext"]["connectionId"]
            # The function got the management endpoint as the local listener, and can post through it.
            assert answer["env"]["FIXTURE_WS_ENDPOINT"] == f"{stack.ws_base_url}/prod"
            await socket.send_str(json.dumps({"type": "post"}))
            assert json.loads((await socket.receive(timeout=30)).data) == {"posted": connection_id}
            await loop.run_in_executor(
                None, lambda: management.post_to_connection(ConnectionId=connection_id, Data=b"from-test")
            )
            assert (await socket.receive(timeout=30)).data == "from-test"
            await loop.run_in_executor(None, lambda: management.delete_connection(ConnectionId=connection_id))
            closed = await socket.receive(timeout=30)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await socket.close()
            with pytest.raises(management.exceptions.GoneException):
                await loop.run_in_executor(None, lambda: management.get_connection(ConnectionId=connection_id))

    asyncio.run(asyncio.wait_for(scenario(), timeout=120))


def test_a_refused_connect_never_opens(stack: DevStack) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(stack.ws_base_url.replace("http", "ws") + "/prod")
            return refused.value.status

    assert asyncio.run(scenario()) == 401
