"""The local WebSocket API behaves like API Gateway's where a client or a function could notice.

Runs the WebSocket gateway in-process against a fixture template (tests/fixtures/websocket/) whose functions
are tiny handlers of their own: these tests pin the gateway, not the service's handlers. Clients are
aiohttp's; the management API is driven with botocore's real ``apigatewaymanagementapi`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from devstack.template import load_template
from devstack.websocket import MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, WebSocketGateway, api_id_for
from tests.servers import served_on_a_thread

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "websocket" / "template.yaml"
ALLOW = {"Authorization": "Bearer allow-alice"}


@dataclass
class RunningSockets:
    gateway: WebSocketGateway
    loop: asyncio.AbstractEventLoop
    record_file: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    def management(self, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint or self.gateway.management_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def connection_ids(self) -> set[str]:
        """The open connections, read on the gateway's own loop (the dict changes as connections come and go)."""

        async def snapshot() -> set[str]:
            return set(self.gateway.connections)

        return asyncio.run_coroutine_threadsafe(snapshot(), self.loop).result(timeout=10)

    def records(self) -> list[dict[str, Any]]:
        """The events the fixture's $connect and $disconnect functions got, in order."""
        if not self.record_file.exists():
            return []
        # A function may be writing its line right now: only whole lines (ended by a newline) are records.
        lines = self.record_file.read_text(encoding="utf-8").split("\n")[:-1]
        return [json.loads(line) for line in lines if line.strip()]

    def disconnects(self) -> list[dict[str, Any]]:
        return [r["requestContext"] for r in self.records() if r["requestContext"]["eventType"] == "DISCONNECT"]

    def wait_disconnect(self, connection_id: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [d for d in self.disconnects() if d["connectionId"] == connection_id]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no $disconnect for {connection_id}")


def running_sockets(state_dir: Path, template_path: Path = FIXTURE, **settings: Any) -> Iterator[RunningSockets]:
    record_file = state_dir / "disconnects.jsonl"
    gateway = WebSocketGateway.for_template(
        load_template(template_path),
        state_dir,
        port=0,
        max_concurrency=4,
        common_env={"FIXTURE_RECORD_FILE": str(record_file)},
        **settings,
    )
    assert gateway is not None
    with served_on_a_thread(gateway, "websocket-gateway", stop_timeout=60) as loop:
        yield RunningSockets(gateway, loop, record_file)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSockets]:
    yield from running_sockets(tmp_path_factory.mktemp("websocket-state"))


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def receive_json(socket: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> Any:
    msg = await socket.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def connection_id_of(socket: aiohttp.ClientWebSocketResponse) -> str:
    await socket.send_str(json.dumps({"type": "echo"}))
    answer = await receive_json(socket)
    return str(answer["event"]["requestContext"]["connectionId"])


# --- the template -------------------------------------------------------------------------------


def test_the_routes_come_from_the_templates_apigatewayv2_resources(ws: RunningSockets) -> None:
    spec = ws.gateway.spec
    assert spec is not None
    assert spec.stage == "prod"
    assert spec.selection_path == ("type",)
    assert {key: (r.function, r.two_way) for key, r in spec.routes.items()} == {
        "$connect": ("ConnectFunction", False),
        "$disconnect": ("DisconnectFunction", False),
        "$default": ("EchoFunction", True),
        "echo": ("EchoFunction", True),
        "oneway": ("EchoFunction", False),
        "post": ("EchoFunction", False),
        "fail": ("EchoFunction", True),
    }
    connect = spec.routes["$connect"].authorizer
    assert connect is not None
    assert connect.function == "AuthorizerFunction"
    assert connect.identity_sources == ("route.request.header.Authorization",)


def test_functions_get_the_management_endpoint_as_the_local_url(ws: RunningSockets) -> None:
    async def scenario() -> dict[str, str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            await socket.send_str(json.dumps({"type": "echo"}))
            return dict((await receive_json(socket))["env"])

    env = run(scenario())
    assert env["FIXTURE_WS_ENDPOINT"] == ws.gateway.management_url
    assert env["FIXTURE_WS_API_ENDPOINT"] == f"ws://127.0.0.1:{ws.gateway.port}"
    assert api_id_for("SocketApi") in ws.gateway.template.resolve({"Ref": "SocketApi"})


# --- $connect -----------------------------------------------------------------------------------


def test_connect_event_is_api_gateways_proxy_event(ws: RunningSockets) -> None:
    async def scenario() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws.url + "?a=1&a=2&b=x", headers={**ALLOW, "User-Agent": "fixture-agent"}) as socket,
        ):
            await socket.send_str("plain text")
            return dict((await receive_json(socket))["event"])

    message = run(scenario())
    context = message["requestContext"]
    assert context["eventType"] == "MESSAGE"
    assert context["routeKey"] == "$default"
    assert context["stage"] == "prod"
    assert context["apiId"] == api_id_for("SocketApi")
    assert context["messageDirection"] == "IN"
    assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "fixture-agent"}
    assert context["messageId"]
    assert context["requestId"]
    assert isinstance(context["connectedAt"], int)
    assert isinstance(context["requestTimeEpoch"], int)
    connection_id = context["connectionId"]
    assert len(connection_id) == 12
    assert connection_id.endswith("=")
    # The authorizer's context reaches every route of the connection, with the principal.
    assert context["authorizer"]["principalId"] == "alice"
    assert context["authorizer"]["sub"] == "alice"
    assert message["body"] == "plain text"
    assert message["isBase64Encoded"] is False
    assert "headers" not in message
    assert "queryStringParameters" not in message


def test_connect_route_sees_headers_query_and_authorizer_context(ws: RunningSockets) -> None:
    async def scenario() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws.url + "?x=1&a=1&a=2", headers=ALLOW) as socket,
        ):
            return await connection_id_of(socket)

    connection_id = run(scenario())
    connect = next(r for r in ws.records() if r["requestContext"]["connectionId"] == connection_id)
    assert connect["requestContext"]["eventType"] == "CONNECT"
    assert connect["requestContext"]["routeKey"] == "$connect"
    assert connect["headers"]["Authorization"] == "Bearer allow-alice"
    assert connect["multiValueHeaders"]["Authorization"] == ["Bearer allow-alice"]
    assert connect["headers"]["Upgrade"].lower() == "websocket"
    assert connect["queryStringParameters"] == {"x": "1", "a": "2"}
    assert connect["multiValueQueryStringParameters"] == {"x": ["1"], "a": ["1", "2"]}
    assert connect["requestContext"]["authorizer"]["principalId"] == "alice"
    assert connect["isBase64Encoded"] is False
    assert "body" not in connect
    record = ws.wait_disconnect(connection_id)
    assert record["eventType"] == "DISCONNECT"
    assert record["routeKey"] == "$disconnect"
    assert record["authorizer"]["sub"] == "alice"
    assert record["disconnectStatusCode"] == 1000
    assert record["authorizer"]["methodArn"].endswith(f":{api_id_for('SocketApi')}/prod/$connect")
    assert record["authorizer"]["type"] == "REQUEST"


@pytest.mark.parametrize("status", [400, 403, 429, 500])
def test_a_non_2xx_connect_answer_refuses_the_handshake_with_its_status(ws: RunningSockets, status: int) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws.url + f"?status={status}", headers=ALLOW)
            return refused.value.status

    assert run(scenario()) == status


def test_a_bare_connect_answer_is_accepted(ws: RunningSockets) -> None:
    async def scenario() -> str:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url + "?bare=1", headers=ALLOW) as s:
            return await connection_id_of(s)

    assert run(scenario())


def test_the_subprotocol_the_connect_answer_names_is_echoed(ws: RunningSockets) -> None:
    async def scenario() -> tuple[str | None, str | None]:
        async with aiohttp.ClientSession() as session:
            # A browser passes its token as a subprotocol; $connect names the one to accept.
            async with session.ws_connect(
                ws.url + "?protocol=state.v1", headers=ALLOW, protocols=("state.v1", "bearer.secret")
            ) as chosen:
                first = chosen.protocol
            async with session.ws_connect(ws.url, headers=ALLOW, protocols=("state.v1",)) as unnamed:
                second = unnamed.protocol
            return first, second

    assert run(scenario()) == ("state.v1", None)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": ""}, 401),
        ({"Authorization": "Bearer unauthorized"}, 401),
        ({"Authorization": "Bearer deny"}, 403),
        ({"Authorization": "Bearer boom"}, 500),
        ({"Authorization": "Bearer malformed"}, 500),
    ],
    ids=["missing", "empty", "unauthorized", "deny", "raises", "malformed"],
)
def test_the_connect_authorizer_refuses_as_api_gateway(
    ws: RunningSockets, headers: dict[str, str], status: int
) -> None:
    before = ws.gateway.stats.authorizer_invocations

    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws.url, headers=headers)
            return refused.value.status

    assert run(scenario()) == status
    called = ws.gateway.stats.authorizer_invocations - before
    # A missing identity source is refused without invoking the authorizer.
    assert called == (0 if not headers.get("Authorization") else 1)


@pytest.mark.parametrize("path", ["/", "/dev", "/prod/extra"])
def test_a_path_outside_the_stage_is_forbidden(ws: RunningSockets, path: str) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"ws://127.0.0.1:{ws.gateway.port}{path}", headers=ALLOW)
            return refused.value.status

    assert run(scenario()) == 403


def test_a_foreign_origin_is_refused(ws: RunningSockets) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws.url, headers=ALLOW, origin="https://evil.example")
            return refused.value.status

    assert run(scenario()) == 403


# --- messages -----------------------------------------------------------------------------------


def test_route_selection_named_default_non_json_and_two_way(ws: RunningSockets) -> None:
    async def scenario() -> list[Any]:
        seen: list[Any] = []
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            for body in (
                {"type": "echo"},
                {"type": "no-such-route"},
                {"type": {"nested": 1}},
                {"other": "echo"},
                [1, 2],
            ):
                await socket.send_str(json.dumps(body))
                seen.append((await receive_json(socket))["route"])
            await socket.send_str("not json {")
            seen.append((await receive_json(socket))["route"])
            await socket.send_bytes(b"\x00\x01binary")
            answer = await receive_json(socket)
            seen.append((answer["route"], answer["event"]["isBase64Encoded"], answer["event"]["body"]))
            # One-way: the integration runs, nothing comes back; the next two-way answer is the next frame.
            await socket.send_str(json.dumps({"type": "oneway"}))
            await socket.send_str(json.dumps({"type": "echo", "n": 2}))
            answer = await receive_json(socket)
            seen.append((answer["route"], json.loads(answer["event"]["body"])))
        return seen

    assert run(scenario()) == [
        "echo",
        "$default",
        "$default",
        "$default",
        "$default",
        "$default",
        ("$default", True, "AAFiaW5hcnk="),
        ("echo", {"type": "echo", "n": 2}),
    ]


@pytest.mark.parametrize("key", ["$connect", "$disconnect", "$default"])
def test_a_message_never_selects_the_connections_own_routes(ws: RunningSockets, key: str) -> None:
    async def scenario() -> str:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            await socket.send_str(json.dumps({"type": key}))
            return str((await receive_json(socket))["route"])

    before = len(ws.records())
    assert run(scenario()) == "$default"
    # Only this connection's own $connect (and later its $disconnect) ran: no event of the message's making.
    assert all(r["requestContext"]["eventType"] in ("CONNECT", "DISCONNECT") for r in ws.records()[before:])


def test_an_integration_failure_sends_api_gateways_error_frame(ws: RunningSockets) -> None:
    async def scenario() -> tuple[Any, bool]:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            await socket.send_str(json.dumps({"type": "fail"}))
            answer = await receive_json(socket)
            # The connection stays open.
            await socket.send_str(json.dumps({"type": "echo"}))
            return answer, (await receive_json(socket))["route"] == "echo"

    answer, still_open = run(scenario())
    assert answer["message"] == "Internal server error"
    assert set(answer) == {"message", "connectionId", "requestId"}
    assert still_open


def test_no_route_and_no_default_answers_forbidden_on_the_socket(tmp_path: Path) -> None:
    import yaml

    from devstack.template import CloudFormationLoader

    raw = yaml.load(FIXTURE.read_text(encoding="utf-8"), Loader=CloudFormationLoader)  # noqa: S506
    for name in ("DefaultRoute", "DefaultRouteResponse"):
        del raw["Resources"][name]
    for function in ("ConnectFunction", "DisconnectFunction", "EchoFunction", "AuthorizerFunction"):
        code = raw["Resources"][function]["Properties"]["CodeUri"]
        raw["Resources"][function]["Properties"]["CodeUri"] = str(FIXTURE.parent / code)
    template_path = tmp_path / "template.yaml"
    template_path.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML, with the long-form intrinsics

    for running in running_sockets(tmp_path, template_path):

        async def scenario(url: str) -> Any:
            async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=ALLOW) as socket:
                await socket.send_str(json.dumps({"type": "nothing"}))
                return await receive_json(socket)

        answer = run(scenario(running.url))
        assert answer["message"] == "Forbidden"
        assert set(answer) == {"message", "connectionId", "requestId"}


def test_a_message_over_128_kb_closes_the_connection_with_1009(ws: RunningSockets) -> None:
    async def scenario() -> tuple[int | None, str]:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(ws.url, headers=ALLOW, max_msg_size=0)
            connection_id = await connection_id_of(socket)
            # Frames within the frame limit, a message one byte over the message limit.
            send_raw(socket, fragmented(b"x" * (MAX_MESSAGE_BYTES + 1)))
            msg = await socket.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            await socket.close()
            return socket.close_code, connection_id

    code, connection_id = run(scenario())
    assert code == 1009
    assert ws.wait_disconnect(connection_id)["disconnectStatusCode"] == 1009


def masked_frame(payload: bytes, opcode: int, *, fin: bool) -> bytes:
    """One client frame, built by hand: aiohttp's client sends every message as a single frame."""
    import os
    import struct

    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = struct.pack("!BB", first, 0x80 | len(payload))
    elif len(payload) < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, len(payload))
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def fragmented(message: bytes) -> bytes:
    """A text message as frames of at most 32 KB each, as API Gateway wants a long message sent."""
    chunks = [message[i : i + MAX_FRAME_BYTES] for i in range(0, len(message), MAX_FRAME_BYTES)]
    last = len(chunks) - 1
    return b"".join(masked_frame(c, 0x1 if i == 0 else 0x0, fin=i == last) for i, c in enumerate(chunks))


def send_raw(socket: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
    socket._writer.transport.write(data)


def test_a_frame_over_32_kb_closes_the_connection_with_1009(ws: RunningSockets) -> None:
    async def scenario() -> tuple[int | None, str]:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(ws.url, headers=ALLOW)
            connection_id = await connection_id_of(socket)
            # One frame of 32 KB + 1, in one message well under 128 KB: what a browser sends.
            await socket.send_str(json.dumps({"type": "echo", "pad": "x" * MAX_FRAME_BYTES}))
            msg = await socket.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            await socket.close()
            return socket.close_code, connection_id

    code, connection_id = run(scenario())
    assert code == 1009
    assert ws.wait_disconnect(connection_id)["disconnectStatusCode"] == 1009


def test_a_message_split_into_32_kb_frames_is_delivered_whole(ws: RunningSockets) -> None:
    body = json.dumps({"type": "echo", "pad": "y" * (100 * 1024)}).encode()

    async def scenario() -> Any:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            # Four frames and then a whole second message in one write, split mid-header in another: the
            # guard follows frame boundaries across reads.
            stream = fragmented(body) + masked_frame(json.dumps({"type": "echo", "n": 2}).encode(), 0x1, fin=True)
            send_raw(socket, stream[:3])
            await asyncio.sleep(0.05)
            send_raw(socket, stream[3:])
            # Messages are dispatched concurrently, as API Gateway invokes per message: answers in any order.
            answers = [json.loads((await receive_json(socket))["event"]["body"]) for _ in range(2)]
            return sorted(answers, key=lambda answer: "pad" in answer)

    small, large = run(scenario())
    assert small == {"type": "echo", "n": 2}
    assert large == json.loads(body)


def test_a_message_at_the_limit_is_delivered(ws: RunningSockets) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            body = json.dumps({"type": "oneway", "pad": ""})
            send_raw(socket, fragmented((body[:-2] + "x" * (MAX_MESSAGE_BYTES - len(body)) + '"}').encode()))
            await socket.send_str(json.dumps({"type": "echo"}))
            return len((await receive_json(socket))["route"])

    assert run(scenario()) == 4


# --- @connections -------------------------------------------------------------------------------


def test_post_get_delete_through_botocore(ws: RunningSockets) -> None:
    client = ws.management()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(ws.url, headers={**ALLOW, "User-Agent": "agent/1"})
            connection_id = await connection_id_of(socket)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: client.post_to_connection(ConnectionId=connection_id, Data=b"hi"))
            msg = await socket.receive(timeout=10)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "hi")
            info = await loop.run_in_executor(None, lambda: client.get_connection(ConnectionId=connection_id))
            assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "agent/1"}
            assert info["ConnectedAt"] <= info["LastActiveAt"]
            await loop.run_in_executor(None, lambda: client.delete_connection(ConnectionId=connection_id))
            msg = await socket.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            await socket.close()
            # Gone from now on, for every operation.
            for call in (
                lambda: client.post_to_connection(ConnectionId=connection_id, Data=b"late"),
                lambda: client.get_connection(ConnectionId=connection_id),
                lambda: client.delete_connection(ConnectionId=connection_id),
            ):
                with pytest.raises(client.exceptions.GoneException):
                    await loop.run_in_executor(None, call)
            record = ws.wait_disconnect(connection_id)
            assert record["disconnectStatusCode"] == 1000

    run(scenario())


def test_an_unknown_connection_is_gone(ws: RunningSockets) -> None:
    client = ws.management()
    for connection_id in ("AAAAAAAAAAA=", "a/b+c==", "x" * 200):
        with pytest.raises(client.exceptions.GoneException):
            client.post_to_connection(ConnectionId=connection_id, Data=b"x")
        with pytest.raises(client.exceptions.GoneException):
            client.get_connection(ConnectionId=connection_id)


def test_the_management_api_answers_without_the_stage_too(ws: RunningSockets) -> None:
    client = ws.management(ws.gateway.base_url)
    with pytest.raises(client.exceptions.GoneException):
        client.get_connection(ConnectionId="AAAAAAAAAAA=")
    wrong_stage = ws.management(ws.gateway.base_url + "/dev")
    with pytest.raises(wrong_stage.exceptions.ForbiddenException):
        wrong_stage.get_connection(ConnectionId="AAAAAAAAAAA=")


def test_a_post_over_128_kb_is_payload_too_large(ws: RunningSockets) -> None:
    client = ws.management()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            connection_id = await connection_id_of(socket)
            loop = asyncio.get_running_loop()
            with pytest.raises(client.exceptions.PayloadTooLargeException):
                await loop.run_in_executor(
                    None,
                    lambda: client.post_to_connection(ConnectionId=connection_id, Data=b"x" * (MAX_MESSAGE_BYTES + 1)),
                )
            # At the limit it goes through, as one frame.
            await loop.run_in_executor(
                None, lambda: client.post_to_connection(ConnectionId=connection_id, Data=b"y" * MAX_MESSAGE_BYTES)
            )
            msg = await socket.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.TEXT
            assert len(msg.data) == MAX_MESSAGE_BYTES

    run(scenario())


def test_a_function_posts_through_the_endpoint_its_environment_names(ws: RunningSockets) -> None:
    async def scenario() -> tuple[str, Any]:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            connection_id = await connection_id_of(socket)
            await socket.send_str(json.dumps({"type": "post"}))
            return connection_id, await receive_json(socket)

    connection_id, posted = run(scenario())
    assert posted == {"posted": connection_id}


def test_sequential_posts_to_one_connection_arrive_in_order(ws: RunningSockets) -> None:
    async def scenario() -> list[str]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws.url, headers=ALLOW) as socket,
        ):
            connection_id = await connection_id_of(socket)
            url = f"{ws.gateway.management_url}/@connections/{quote(connection_id, safe='')}"
            for n in range(50):
                async with session.post(url, data=str(n).encode()) as response:
                    assert response.status == 200
            return [(await socket.receive(timeout=10)).data for _ in range(50)]

    assert run(scenario()) == [str(n) for n in range(50)]


# --- closing ------------------------------------------------------------------------------------


def test_client_close_invokes_disconnect_once(ws: RunningSockets) -> None:
    async def scenario() -> str:
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(ws.url, headers=ALLOW)
            connection_id = await connection_id_of(socket)
            await socket.close(code=4000, message=b"bye")
            return connection_id

    connection_id = run(scenario())
    record = ws.wait_disconnect(connection_id)
    assert record["disconnectStatusCode"] == 4000
    time.sleep(0.5)
    assert [d["connectionId"] for d in ws.disconnects()].count(connection_id) == 1
    with pytest.raises(ws.management().exceptions.GoneException):
        ws.management().get_connection(ConnectionId=connection_id)


def test_idle_timeout_and_max_duration_close_the_connection(tmp_path: Path) -> None:
    for running in running_sockets(tmp_path, idle_timeout=1.0, max_duration=3.0):

        async def scenario(url: str) -> tuple[float, int | None, float, int | None]:
            async with aiohttp.ClientSession() as session:
                idle = await session.ws_connect(url, headers=ALLOW, autoping=False)
                started = time.monotonic()
                # Pings are answered but keep nothing alive.
                await idle.ping(b"are you there")
                pong = await idle.receive(timeout=5)
                assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
                await asyncio.sleep(0.5)
                await idle.ping()
                msg = await idle.receive(timeout=10)
                if msg.type == aiohttp.WSMsgType.PONG:
                    msg = await idle.receive(timeout=10)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                idle_after = time.monotonic() - started
                await idle.close()
                # Messages keep it from idling, but not past the maximum duration.
                busy = await session.ws_connect(url, headers=ALLOW)
                started = time.monotonic()
                closed_after = 0.0
                while time.monotonic() - started < 10:
                    with contextlib.suppress(aiohttp.ClientError):
                        await busy.send_str(json.dumps({"type": "oneway"}))
                    try:
                        msg = await busy.receive(timeout=0.3)
                    except TimeoutError:
                        continue
                    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                    closed_after = time.monotonic() - started
                    break
                await busy.close()
                return idle_after, idle.close_code, closed_after, busy.close_code

        idle_after, idle_code, busy_after, busy_code = run(scenario(running.url))
        assert 0.8 <= idle_after <= 3.0
        assert idle_code == 1001
        assert 2.5 <= busy_after <= 5.0
        assert busy_code == 1001


def test_a_thousand_connections_each_receive_a_post(ws: RunningSockets) -> None:
    count = 1000

    async def scenario() -> tuple[int, float]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            sockets: list[aiohttp.ClientWebSocketResponse] = []
            semaphore = asyncio.Semaphore(100)

            async def connect() -> aiohttp.ClientWebSocketResponse:
                async with semaphore:
                    return await session.ws_connect(ws.url, headers=ALLOW)

            before = ws.connection_ids()
            sockets = list(await asyncio.gather(*(connect() for _ in range(count))))
            ids = ws.connection_ids() - before
            assert len(ids) == count
            started = time.monotonic()

            async def post(connection_id: str) -> int:
                url = f"{ws.gateway.management_url}/@connections/{quote(connection_id, safe='')}"
                async with session.post(url, data=b'{"hello": 1}') as response:
                    return response.status

            statuses = await asyncio.gather(*(post(cid) for cid in ids))
            assert set(statuses) == {200}, set(statuses)
            received = await asyncio.gather(*(s.receive(timeout=30) for s in sockets))
            elapsed = time.monotonic() - started
            await asyncio.gather(*(s.close() for s in sockets))
            return sum(1 for m in received if m.type == aiohttp.WSMsgType.TEXT and m.data == '{"hello": 1}'), elapsed

    delivered, elapsed = run(scenario())
    assert delivered == count
    assert elapsed < 30


# --- hostile and odd requests -------------------------------------------------------------------


def test_a_plain_http_request_to_the_stage_is_not_upgraded(ws: RunningSockets) -> None:
    import requests

    response = requests.get(f"{ws.gateway.base_url}/prod", timeout=10)
    assert response.status_code == 426
    assert response.json() == {"message": "Upgrade Required"}


def test_a_failing_connect_function_refuses_with_500(ws: RunningSockets) -> None:
    async def scenario() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                # The fixture's int("abc") raises: the integration failed.
                await session.ws_connect(ws.url + "?status=abc", headers=ALLOW)
            return refused.value.status

    assert run(scenario()) == 500


def test_a_binary_post_arrives_as_a_binary_frame(ws: RunningSockets) -> None:
    client = ws.management()

    async def scenario() -> Any:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws.url, headers=ALLOW) as socket:
            connection_id = await connection_id_of(socket)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(
                None, lambda: client.post_to_connection(ConnectionId=connection_id, Data=b"\xff\x00\xfe")
            )
            msg = await socket.receive(timeout=10)
            return msg.type, msg.data

    assert run(scenario()) == (aiohttp.WSMsgType.BINARY, b"\xff\x00\xfe")


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_other_methods_on_a_connection_are_not_found(ws: RunningSockets, method: str) -> None:
    import requests

    response = requests.request(method, f"{ws.gateway.management_url}/@connections/AAAAAAAAAAA=", timeout=10)
    assert response.status_code == 404


def test_a_foreign_host_cannot_reach_the_management_api(ws: RunningSockets) -> None:
    import requests

    # DNS rebinding: a page on evil.example resolved to 127.0.0.1 must not post to connections.
    response = requests.post(
        f"{ws.gateway.management_url}/@connections/AAAAAAAAAAA=",
        data=b"x",
        headers={"Host": f"evil.example:{ws.gateway.port}"},
        timeout=10,
    )
    assert response.status_code == 403


def test_the_access_log_records_every_step_without_bodies_or_tokens(ws: RunningSockets) -> None:
    secret = "allow-carol-and-a-secret-token-text"

    async def scenario() -> str:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await session.ws_connect(ws.url, headers={"Authorization": "Bearer deny"})
            async with session.ws_connect(ws.url, headers={"Authorization": f"Bearer {secret}"}) as socket:
                await socket.send_str(json.dumps({"type": "echo", "value": "a-value-never-logged"}))
                answer = await receive_json(socket)
                await socket.send_str(json.dumps({"type": "fail"}))
                await receive_json(socket)
                return str(answer["event"]["requestContext"]["connectionId"])

    connection_id = run(scenario())
    ws.wait_disconnect(connection_id)
    log_path = ws.record_file.parent / "logs" / "websocket-access.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines()]
        mine = [(r["eventType"], r["routeKey"], r["status"]) for r in records if r["connectionId"] == connection_id]
        if ("DISCONNECT", "$disconnect", 200) in mine:
            break
        time.sleep(0.05)
    assert mine == [
        ("CONNECT", "$connect", 101),
        ("MESSAGE", "echo", 200),
        ("MESSAGE", "fail", 500),
        ("DISCONNECT", "$disconnect", 200),
    ]
    assert any(r["eventType"] == "CONNECT" and r["status"] == 403 for r in records)
    assert secret not in text
    assert "a-value-never-logged" not in text
