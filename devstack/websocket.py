"""API Gateway WebSocket API, locally, on aiohttp, with its ``@connections`` management API.

Built from the template's ``AWS::ApiGatewayV2`` resources (an Api with ProtocolType WEBSOCKET, its Routes,
AWS_PROXY Integrations to the template's functions, an optional Lambda REQUEST Authorizer on ``$connect``,
RouteResponses that make a route two-way, and the Stage), so the deployed and the local API cannot drift.
It reproduces what a client or a function could notice: the proxy events of ``$connect``, messages and
``$disconnect``; a ``$connect`` answer other than 2xx refusing the handshake with its status; the
``Sec-WebSocket-Protocol`` the ``$connect`` answer names echoed in the handshake; route selection by the
RouteSelectionExpression with ``$default`` as the fallback and API Gateway's ``Forbidden`` frame without one;
an integration's answer sent back only on a two-way route; the 128 KB message limit (close 1009), the idle
timeout and the maximum connection duration; and ``POST``/``GET``/``DELETE /@connections/{id}`` with the
status codes and error headers botocore's ``apigatewaymanagementapi`` client turns into its exceptions.
docs/local-stack.md lists what differs from AWS.

Like every local listener it answers only this machine (devstack/loopback.py); the management API checks no
SigV4 signature (AWS requires one allowing ``execute-api:ManageConnections``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from devstack.loopback import refusal
from devstack.template import ACCOUNT_ID, REGION, StateTemplate, TemplateError
from devstack.workers import InvokeResult, WorkerConfig, WorkerPool, max_concurrency_from_env

DEFAULT_WS_PORT = 3001
WS_PORT_ENV = "LOCAL_WS_PORT"
IDLE_TIMEOUT_ENV = "LOCAL_WS_IDLE_TIMEOUT_SECONDS"
MAX_DURATION_ENV = "LOCAL_WS_MAX_CONNECTION_SECONDS"

# API Gateway's WebSocket quotas (none adjustable): "Message payload size: 128 KB", "WebSocket frame size:
# 32 KB", "Idle Connection Timeout: 10 minutes", "Connection duration: 2 hours", and an integration
# timeout of at most 29 seconds.
MAX_MESSAGE_BYTES = 128 * 1024
MAX_FRAME_BYTES = 32 * 1024
IDLE_TIMEOUT_SECONDS = 600.0
MAX_CONNECTION_SECONDS = 7200.0
INTEGRATION_TIMEOUT_SECONDS = 29.0

API = "AWS::ApiGatewayV2::Api"
ROUTE = "AWS::ApiGatewayV2::Route"
INTEGRATION = "AWS::ApiGatewayV2::Integration"
AUTHORIZER = "AWS::ApiGatewayV2::Authorizer"
ROUTE_RESPONSE = "AWS::ApiGatewayV2::RouteResponse"
STAGE = "AWS::ApiGatewayV2::Stage"

# The fields of the local access log (logs/websocket-access.log), one JSON line per connect, message,
# disconnect and management call: never a body, a header or a token.
ACCESS_LOG_FIELDS = (
    "requestId",
    "connectionId",
    "sourceIp",
    "requestTime",
    "eventType",
    "routeKey",
    "status",
    "integrationLatency",
    "authorizerError",
    "integrationError",
    "error",
)

_MANAGEMENT_PATH = re.compile(r"^(?:/(?P<stage>[^/]+))?/@connections/(?P<id>[^/]+)$")
_SELECTION = re.compile(r"^\$\{?request\.body\.(?P<path>[A-Za-z0-9_.$-]+)\}?$")
_FUNCTION_ARN = re.compile(r":function:(?P<name>[^:/]+)")


# --- the template's WebSocket API ---------------------------------------------------------------


@dataclass(frozen=True)
class WsAuthorizer:
    logical_id: str
    function: str
    # "route.request.header.<name>" and "route.request.querystring.<name>": each must be present.
    identity_sources: tuple[str, ...]


@dataclass(frozen=True)
class WsRoute:
    route_key: str
    function: str
    two_way: bool  # a RouteResponse exists: the integration's answer goes back to the client
    authorizer: WsAuthorizer | None


@dataclass(frozen=True)
class WebSocketApiSpec:
    logical_id: str
    api_id: str
    stage: str
    selection_path: tuple[str, ...]  # $request.body.<a>.<b>
    routes: dict[str, WsRoute]

    @property
    def functions(self) -> set[str]:
        found = {r.function for r in self.routes.values()}
        found |= {r.authorizer.function for r in self.routes.values() if r.authorizer is not None}
        return found


def api_id_for(logical_id: str) -> str:
    # API Gateway's ids are 10 lower-case alphanumerics; stable per logical id, so a restarted stack keeps them.
    return hashlib.sha256(logical_id.encode()).hexdigest()[:10]


def find_websocket_api(template: StateTemplate) -> str | None:
    """The logical id of the template's WebSocket API, if it has one (the local stack serves one)."""
    found = [
        lid
        for lid, res in template.resources_of_type(API).items()
        if str((res.get("Properties") or {}).get("ProtocolType", "")).upper() == "WEBSOCKET"
    ]
    if len(found) > 1:
        raise TemplateError(f"the local stack serves one WebSocket API; the template declares {found}")
    return found[0] if found else None


def register_websocket_api(template: StateTemplate, logical_id: str, local_base_url: str) -> None:
    """Give the API's resources their ids, and point its deployed URLs at the local listener.

    ``!Ref`` of an ApiGatewayV2 resource is its id, ``!GetAtt Api.ApiEndpoint`` the ``wss://`` URL; a
    function's environment naming ``https://<api>.execute-api.<region>.amazonaws.com/<stage>`` (the
    management endpoint) gets ``http://127.0.0.1:<port>/<stage>`` instead.
    """
    api_id = api_id_for(logical_id)
    host = f"{api_id}.execute-api.{REGION}.amazonaws.com"
    names: dict[str, str] = {
        logical_id: api_id,
        f"{logical_id}.ApiId": api_id,
        f"{logical_id}.ApiEndpoint": f"wss://{host}",
    }
    for rtype in (ROUTE, INTEGRATION, AUTHORIZER, ROUTE_RESPONSE, "AWS::ApiGatewayV2::Deployment"):
        for lid in template.resources_of_type(rtype):
            names[lid] = api_id_for(lid)
    template.set_physical_names(names)
    for lid in template.resources_of_type(STAGE):
        name = template.properties(lid).get("StageName")
        if isinstance(name, str):
            template.set_physical_names({lid: name})
    local = local_base_url.removeprefix("http://")
    template.url_rewrites.update({f"https://{host}": f"http://{local}", f"wss://{host}": f"ws://{local}"})


def _function_of(template: StateTemplate, uri: Any, owner: str) -> str:
    by_name = {spec.function_name: lid for lid, spec in template.functions().items()}
    found = _FUNCTION_ARN.search(str(uri))
    if found is None or found.group("name") not in by_name:
        raise TemplateError(f"{owner}: {uri!r} names no function of the template")
    return by_name[found.group("name")]


def websocket_api_spec(template: StateTemplate, logical_id: str) -> WebSocketApiSpec:
    """The routes of the WebSocket API (after ``register_websocket_api``)."""
    api_id = api_id_for(logical_id)
    props = template.properties(logical_id)
    expression = str(props.get("RouteSelectionExpression", ""))
    selection = _SELECTION.match(expression)
    if selection is None:
        raise TemplateError(f"{logical_id}: RouteSelectionExpression {expression!r} is not $request.body.<field>")

    def of_api(rtype: str) -> dict[str, dict[str, Any]]:
        resolved = {lid: template.properties(lid) for lid in template.resources_of_type(rtype)}
        return {lid: p for lid, p in resolved.items() if p.get("ApiId") == api_id}

    integrations: dict[str, str] = {}
    for lid, p in of_api(INTEGRATION).items():
        if p.get("IntegrationType") != "AWS_PROXY":
            raise TemplateError(f"{lid}: only AWS_PROXY (Lambda proxy) integrations run locally")
        integrations[api_id_for(lid)] = _function_of(template, p.get("IntegrationUri"), lid)
    authorizers: dict[str, WsAuthorizer] = {}
    for lid, p in of_api(AUTHORIZER).items():
        if p.get("AuthorizerType") != "REQUEST":
            raise TemplateError(f"{lid}: only Lambda REQUEST authorizers run locally")
        sources = p.get("IdentitySource") or []
        authorizers[api_id_for(lid)] = WsAuthorizer(
            lid,
            _function_of(template, p.get("AuthorizerUri"), lid),
            tuple([sources] if isinstance(sources, str) else sources),
        )
    two_way = {str(p.get("RouteId")) for p in of_api(ROUTE_RESPONSE).values()}
    routes: dict[str, WsRoute] = {}
    for lid, p in of_api(ROUTE).items():
        key = str(p["RouteKey"])
        target = str(p.get("Target", ""))
        integration = integrations.get(target.removeprefix("integrations/"))
        if integration is None:
            raise TemplateError(f"{lid}: Target {target!r} is no integration of {logical_id}")
        authorizer = None
        if p.get("AuthorizationType") == "CUSTOM":
            authorizer = authorizers.get(str(p.get("AuthorizerId")))
            if authorizer is None or key != "$connect":
                raise TemplateError(f"{lid}: a Lambda authorizer goes on $connect, by AuthorizerId")
        routes[key] = WsRoute(key, integration, api_id_for(lid) in two_way, authorizer)
    stages = [p.get("StageName") for p in of_api(STAGE).values()]
    if not stages or not isinstance(stages[0], str):
        raise TemplateError(f"{logical_id}: no Stage with a StageName")
    return WebSocketApiSpec(logical_id, api_id, stages[0], tuple(selection.group("path").split(".")), routes)


# --- frames -------------------------------------------------------------------------------------


class FrameSizeGuard:
    """Between aiohttp's protocol and its WebSocket parser: reads each frame's header as the bytes pass, since
    aiohttp hands over whole messages only. API Gateway closes a connection with 1009 when a data frame is over
    32 KB, whatever the message's size, and browsers send a message as one frame: the limit a browser meets."""

    def __init__(self, parser: Any, queue: Any, limit: int = MAX_FRAME_BYTES) -> None:
        self._parser = parser
        self._queue = queue
        self._limit = limit
        self._pending = b""  # the start of a header split across reads
        self._skip = 0  # the current frame's payload bytes still to come
        self._refused = False

    def _first_oversized(self, data: bytes) -> int | None:
        """Where in ``data`` the first frame over the limit starts (negative: in an earlier read), or None."""
        carried = len(self._pending)
        buffer = self._pending + data if carried else data
        self._pending = b""
        pos = 0
        while pos < len(buffer):
            if self._skip:
                step = min(self._skip, len(buffer) - pos)
                self._skip -= step
                pos += step
                continue
            if len(buffer) - pos < 2:
                self._pending = buffer[pos:]
                return None
            opcode, length, masked = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F, buffer[pos + 1] & 0x80
            extended = 2 if length == 126 else 8 if length == 127 else 0
            header = 2 + extended + (4 if masked else 0)
            if len(buffer) - pos < header:
                self._pending = buffer[pos:]
                return None
            if extended:
                length = int.from_bytes(buffer[pos + 2 : pos + 2 + extended], "big")
            if opcode in (0x0, 0x1, 0x2) and length > self._limit:  # continuation, text, binary
                return pos - carried
            pos += header
            self._skip = length
        return None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._refused:
            return True, b""
        data = bytes(data)
        oversized = self._first_oversized(data)
        if oversized is None:
            result: tuple[bool, bytes] = self._parser.feed_data(data)
            return result
        self._refused = True
        if oversized > 0:
            self._parser.feed_data(data[:oversized])  # the frames before it are delivered
        # As aiohttp fails a message over max_msg_size: receive() closes with this code.
        self._queue.set_exception(WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, f"frame over {self._limit} bytes"))
        return True, b""

    def feed_eof(self) -> None:
        self._parser.feed_eof()


# --- connections --------------------------------------------------------------------------------


class GoneError(Exception):
    """The connection is closed or closing: PostToConnection's 410."""


@dataclass
class Connection:
    connection_id: str
    ws: web.WebSocketResponse
    connected_at: float
    source_ip: str
    user_agent: str
    domain: str
    authorizer: dict[str, Any] | None
    last_active: float
    # Posts to one connection go out in the order they arrived, as API Gateway keeps sequential posts in
    # order; posts to different connections never wait for each other.
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set when this side closes (idle, duration, DELETE, limits): (code, reason) for $disconnect.
    closed_by_server: tuple[int, str] | None = None

    async def send(self, data: str | bytes) -> None:
        async with self.send_lock:
            if self.ws.closed or self.closed_by_server is not None:
                raise GoneError(self.connection_id)
            try:
                if isinstance(data, str):
                    await self.ws.send_str(data)
                else:
                    await self.ws.send_bytes(data)
            except (ConnectionError, RuntimeError) as exc:
                raise GoneError(self.connection_id) from exc

    async def close(self, code: int, reason: str) -> None:
        if self.closed_by_server is None:
            self.closed_by_server = (code, reason)
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode())


@dataclass
class WebSocketStats:
    connects: int = 0
    refused: int = 0
    messages: int = 0
    authorizer_invocations: int = 0
    disconnect_invocations: int = 0
    posts: int = 0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _connection_id() -> str:
    # API Gateway's connection ids look like "L0SM9cOFvHcCIhw=": base64 of random bytes.
    return base64.b64encode(os.urandom(8)).decode("ascii")


def _request_id() -> str:
    return base64.b64encode(os.urandom(11)).decode("ascii")


def _message(status: int, message: str, error_type: str | None = None) -> web.Response:
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    # botocore's rest-json parser takes the error code from this header: GoneException, PayloadTooLarge...
    headers = {"x-amzn-ErrorType": error_type} if error_type else None
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class WebSocketGateway:
    """The local WebSocket API and its ``@connections`` endpoint. ``start()``/``stop()`` run in a loop."""

    template: StateTemplate
    api_logical_id: str
    state_dir: Path
    endpoint_url: str | None = None
    common_env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = DEFAULT_WS_PORT
    max_concurrency: int | None = None
    idle_timeout: float = field(default_factory=lambda: _env_float(IDLE_TIMEOUT_ENV, IDLE_TIMEOUT_SECONDS))
    max_duration: float = field(default_factory=lambda: _env_float(MAX_DURATION_ENV, MAX_CONNECTION_SECONDS))
    integration_timeout: float = INTEGRATION_TIMEOUT_SECONDS
    stats: WebSocketStats = field(default_factory=WebSocketStats)
    pools: dict[str, WorkerPool] = field(default_factory=dict)
    connections: dict[str, Connection] = field(default_factory=dict)

    @classmethod
    def for_template(cls, template: StateTemplate, state_dir: Path, **settings: Any) -> WebSocketGateway | None:
        logical_id = find_websocket_api(template)
        if logical_id is None:
            return None
        return cls(template=template, api_logical_id=logical_id, state_dir=state_dir, **settings)

    def __post_init__(self) -> None:
        self._access_log: Any = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.spec: WebSocketApiSpec | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Where clients connect: ``ws://127.0.0.1:<port>/<stage>``."""
        stage = self.spec.stage if self.spec else ""
        return f"ws://{self.host}:{self.port}/{stage}"

    @property
    def management_url(self) -> str:
        """What functions get for ``https://<api>.execute-api.<region>.amazonaws.com/<stage>``."""
        stage = self.spec.stage if self.spec else ""
        return f"{self.base_url}/{stage}"

    async def start(self) -> None:
        """Listen, then resolve the template against the bound port (port 0: any free one)."""
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES + 1)
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=2048)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        register_websocket_api(self.template, self.api_logical_id, self.base_url)
        self.spec = websocket_api_spec(self.template, self.api_logical_id)
        log_dir = self.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._access_log = (log_dir / "websocket-access.log").open("a", buffering=1, encoding="utf-8")
        concurrency = self.max_concurrency or max_concurrency_from_env()
        for logical_id in sorted(self.spec.functions):
            config = WorkerConfig.from_spec(
                self.template.function(logical_id),
                log_dir=log_dir,
                endpoint_url=self.endpoint_url,
                overrides=dict(self.common_env),
            )
            self.pools[logical_id] = WorkerPool(config, max_concurrency=concurrency)

    async def stop(self) -> None:
        # Going away: each connection's $disconnect runs while the workers are still there.
        await asyncio.gather(
            *(c.close(WSCloseCode.GOING_AWAY, "Going away") for c in list(self.connections.values())),
            return_exceptions=True,
        )
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for pool in self.pools.values():
            await asyncio.to_thread(pool.close)
        if self._access_log is not None:
            self._access_log.close()
            self._access_log = None

    def _access(self, record: dict[str, Any]) -> None:
        if self._access_log is None:
            return
        record.setdefault("requestTime", time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()))
        self._access_log.write(json.dumps({name: record.get(name, "-") for name in ACCESS_LOG_FIELDS}) + "\n")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- request handling ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.spec is not None
        refused = refusal(request.headers.get("Host"), request.headers.get("Origin"), request.method, self.port)
        if refused is not None:
            return _message(403, "Forbidden")
        raw_path = request.raw_path.split("?", 1)[0]
        management = _MANAGEMENT_PATH.match(raw_path)
        if management is not None:
            stage = management.group("stage")
            if stage is not None and unquote(stage) != self.spec.stage:
                return _message(403, "Forbidden", "ForbiddenException")
            connection_id = unquote(management.group("id"))
            response = await self._manage(request, connection_id)
            self._access(
                {
                    "connectionId": connection_id,
                    "sourceIp": request.remote,
                    "routeKey": f"{request.method} /@connections",
                    "status": response.status,
                }
            )
            return response
        if unquote(raw_path).rstrip("/") != f"/{self.spec.stage}":
            # API Gateway's answer to a path outside its stage.
            return _message(403, "Forbidden")
        if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
            return _message(426, "Upgrade Required")
        return await self._connect(request)

    # -- $connect ------------------------------------------------------------------------------

    def _context(self, route_key: str, event_type: str, connection_id: str, request_id: str) -> dict[str, Any]:
        assert self.spec is not None
        now = time.time()
        return {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "messageDirection": "IN",
            "stage": self.spec.stage,
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "connectionId": connection_id,
            "apiId": self.spec.api_id,
        }

    def _connect_event(
        self, request: web.Request, connection_id: str, request_id: str, connected_at: float
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The $connect proxy event (headers as sent, in their case) and the query's last values."""
        peer = request.remote or "127.0.0.1"
        headers: dict[str, str] = {}
        multi_headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers[name] = value
            multi_headers.setdefault(name, []).append(value)
        headers.setdefault("X-Forwarded-For", peer)
        multi_headers.setdefault("X-Forwarded-For", [peer])
        raw_query = request.raw_path.split("?", 1)[1] if "?" in request.raw_path else ""
        query: dict[str, str] = {}
        multi_query: dict[str, list[str]] = {}
        for name, value in parse_qsl(raw_query, keep_blank_values=True):
            query[name] = value
            multi_query.setdefault(name, []).append(value)
        context = self._context("$connect", "CONNECT", connection_id, request_id)
        context["connectedAt"] = int(connected_at * 1000)
        context["domainName"] = request.headers.get("Host", f"{self.host}:{self.port}")
        context["identity"] = {"sourceIp": peer, "userAgent": request.headers.get("User-Agent", "")}
        event: dict[str, Any] = {"headers": headers, "multiValueHeaders": multi_headers}
        if query:
            event["queryStringParameters"] = query
            event["multiValueQueryStringParameters"] = multi_query
        event["requestContext"] = context
        event["isBase64Encoded"] = False
        return event, query

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        assert self.spec is not None
        connection_id = _connection_id()
        connected_at = time.time()
        event, query = self._connect_event(request, connection_id, _request_id(), connected_at)
        context = event["requestContext"]
        headers = event["headers"]
        log: dict[str, Any] = {
            "requestId": context["requestId"],
            "connectionId": connection_id,
            "sourceIp": context["identity"]["sourceIp"],
            "requestTime": context["requestTime"],
            "eventType": "CONNECT",
            "routeKey": "$connect",
        }

        def refuse(response: web.Response, **why: Any) -> web.Response:
            self.stats.refused += 1
            self._access({**log, **why, "status": response.status})
            return response

        route = self.spec.routes.get("$connect")
        authorizer_context: dict[str, Any] | None = None
        protocol: str | None = None
        if route is not None:
            if route.authorizer is not None:
                decision = await self._authorize(route.authorizer, event, headers, query, log)
                if isinstance(decision, web.Response):
                    return refuse(decision)
                authorizer_context = decision
                context["authorizer"] = authorizer_context
            result = await self._invoke(route.function, event)
            log["integrationLatency"] = round(result.duration_ms, 1)
            if not result.ok:
                return refuse(_message(500, "Internal server error"), integrationError=result.error_type)
            status, answer_headers, body = _proxy_answer(result.payload)
            if status is None:
                return refuse(_message(502, "Internal server error"), integrationError="malformed response")
            if not 200 <= status < 300:
                return refuse(web.Response(status=status, text=body or "", content_type="application/json"))
            protocol = next((v for k, v in answer_headers.items() if k.lower() == "sec-websocket-protocol"), None)

        ws = web.WebSocketResponse(
            protocols=(protocol,) if protocol else (),
            # aiohttp refuses a message of exactly max_msg_size; API Gateway takes one of 128 KB.
            max_msg_size=MAX_MESSAGE_BYTES + 1,
            # Pings are answered below, without counting as activity.
            autoping=False,
            heartbeat=None,
        )
        await ws.prepare(request)
        # The guard goes in after the handshake: a client sends no frame before the 101 (RFC 6455 4.1), so
        # aiohttp's parser has seen none yet. aiohttp offers no public hook for this.
        handler = request.protocol
        handler._payload_parser = FrameSizeGuard(handler._payload_parser, ws._reader)
        connection = Connection(
            connection_id=connection_id,
            ws=ws,
            connected_at=connected_at,
            source_ip=context["identity"]["sourceIp"],
            user_agent=context["identity"]["userAgent"],
            domain=context["domainName"],
            authorizer=authorizer_context,
            last_active=time.time(),
        )
        self.connections[connection_id] = connection
        self.stats.connects += 1
        self._access({**log, "status": 101})
        try:
            await self._serve(connection)
        finally:
            # Gone first: a post from now on answers 410, as it would once API Gateway saw the close.
            self.connections.pop(connection_id, None)
            # Its own task: a handler cancelled at shutdown still gets its $disconnect.
            self._spawn(self._disconnect(connection))
        return ws

    async def _serve(self, connection: Connection) -> None:
        ws = connection.ws
        while not ws.closed:
            now = time.time()
            idle_at = connection.last_active + self.idle_timeout
            end_at = connection.connected_at + self.max_duration
            if now >= min(idle_at, end_at):
                await connection.close(WSCloseCode.GOING_AWAY, "Going away")
                return
            try:
                msg = await ws.receive(timeout=min(idle_at, end_at) - now)
            except TimeoutError:
                continue
            if msg.type == WSMsgType.PING:
                # Answered, but not activity: only messages keep a connection from idling (the strict
                # reading: a client that sends messages to stay connected works on AWS either way).
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
            elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                connection.last_active = time.time()
                self.stats.messages += 1
                self._spawn(self._on_message(connection, msg.data, binary=msg.type == WSMsgType.BINARY))
            elif msg.type == WSMsgType.ERROR:
                # aiohttp has closed with the error's code (1009 for a message over the limit).
                if connection.closed_by_server is None:
                    code = getattr(msg.data, "code", None) or ws.close_code or WSCloseCode.PROTOCOL_ERROR
                    connection.closed_by_server = (int(code), "Message too big" if code == 1009 else str(msg.data))
                return
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return

    async def _authorize(
        self,
        authorizer: WsAuthorizer,
        event: dict[str, Any],
        headers: dict[str, str],
        query: dict[str, str],
        log: dict[str, Any],
    ) -> dict[str, Any] | web.Response:
        assert self.spec is not None
        lower_headers = {k.lower(): v for k, v in headers.items()}
        for source in authorizer.identity_sources:
            if source.startswith("route.request.header."):
                value = lower_headers.get(source.removeprefix("route.request.header.").lower())
            elif source.startswith("route.request.querystring."):
                value = query.get(source.removeprefix("route.request.querystring."))
            else:
                continue  # stage variables and context: always present locally
            if not value:
                # A missing identity source: 401 without invoking the authorizer.
                return _message(401, "Unauthorized")
        method_arn = f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{self.spec.api_id}/{self.spec.stage}/$connect"
        auth_event = {
            "type": "REQUEST",
            "methodArn": method_arn,
            "headers": event["headers"],
            "multiValueHeaders": event["multiValueHeaders"],
            "queryStringParameters": event.get("queryStringParameters", {}),
            "multiValueQueryStringParameters": event.get("multiValueQueryStringParameters", {}),
            "stageVariables": {},
            "requestContext": dict(event["requestContext"]),
        }
        self.stats.authorizer_invocations += 1
        started = time.perf_counter()
        result = await self._invoke(authorizer.function, auth_event)
        if not result.ok:
            # An authorizer that throws "Unauthorized" means 401, as in API Gateway; any other failure, 500.
            if result.error == "handler" and result.error_message == "Unauthorized":
                return _message(401, "Unauthorized")
            log["authorizerError"] = result.error_type
            return _message(500, "Internal server error")
        answer = result.payload
        allowed = _policy_allows(answer, method_arn)
        if allowed is None:
            log["authorizerError"] = "malformed authorizer response"
            return _message(500, "Internal server error")
        if not allowed:
            return _message(403, "Forbidden")
        extra = answer.get("context") or {}
        if not isinstance(extra, dict) or any(
            not isinstance(v, str | int | float | bool) or v is None for v in extra.values()
        ):
            # API Gateway accepts only string, number and boolean context values.
            log["authorizerError"] = "malformed authorizer context"
            return _message(500, "Internal server error")
        return {
            **extra,
            "principalId": answer.get("principalId"),
            "integrationLatency": round((time.perf_counter() - started) * 1000),
        }

    # -- messages ------------------------------------------------------------------------------

    def _select(self, data: str | bytes, binary: bool) -> str:
        assert self.spec is not None
        if binary:
            return "$default"
        try:
            value: Any = json.loads(data)
        except ValueError:
            return "$default"
        for part in self.spec.selection_path:
            if not isinstance(value, dict) or part not in value:
                return "$default"
            value = value[part]
        if isinstance(value, dict | list) or value is None:
            return "$default"
        key = json.dumps(value) if isinstance(value, bool) else str(value)
        # $connect and $disconnect are the connection's own: no message selects them.
        return key if key in self.spec.routes and not key.startswith("$") else "$default"

    async def _on_message(self, connection: Connection, data: str | bytes, *, binary: bool) -> None:
        assert self.spec is not None
        request_id = _request_id()
        selected = self._select(data, binary)
        route = self.spec.routes.get(selected)
        log: dict[str, Any] = {
            "requestId": request_id,
            "connectionId": connection.connection_id,
            "sourceIp": connection.source_ip,
            "eventType": "MESSAGE",
            "routeKey": selected,
        }
        if route is None:
            self._access({**log, "status": 403, "error": "Forbidden"})
            # No route and no $default: API Gateway answers on the socket, not with a close.
            await self._reply(
                connection, {"message": "Forbidden", "connectionId": connection.connection_id, "requestId": request_id}
            )
            return
        context = self._context(route.route_key, "MESSAGE", connection.connection_id, request_id)
        context["messageId"] = base64.b64encode(os.urandom(11)).decode("ascii")
        context["connectedAt"] = int(connection.connected_at * 1000)
        context["domainName"] = connection.domain
        context["identity"] = {"sourceIp": connection.source_ip, "userAgent": connection.user_agent}
        if connection.authorizer is not None:
            context["authorizer"] = connection.authorizer
        body = base64.b64encode(data).decode("ascii") if isinstance(data, bytes) else data
        event = {"requestContext": context, "body": body, "isBase64Encoded": isinstance(data, bytes)}
        result = await self._invoke(route.function, event)
        log["integrationLatency"] = round(result.duration_ms, 1)
        if not result.ok:
            self._access({**log, "status": 500, "integrationError": result.error_type})
            await self._reply(
                connection,
                {"message": "Internal server error", "connectionId": connection.connection_id, "requestId": request_id},
            )
            return
        self._access({**log, "status": 200})
        if route.two_way:
            _, _, answer = _proxy_answer(result.payload)
            if answer is not None:
                with contextlib.suppress(GoneError):
                    await connection.send(answer)

    async def _reply(self, connection: Connection, payload: dict[str, Any]) -> None:
        with contextlib.suppress(GoneError):
            await connection.send(json.dumps(payload, separators=(",", ":")))

    # -- $disconnect ---------------------------------------------------------------------------

    async def _disconnect(self, connection: Connection) -> None:
        assert self.spec is not None
        route = self.spec.routes.get("$disconnect")
        if route is None:
            return
        if connection.closed_by_server is not None:
            code, reason = connection.closed_by_server
        else:
            code = connection.ws.close_code or WSCloseCode.ABNORMAL_CLOSURE
            reason = (
                f"Client-side close frame status set to {code}"
                if code != 1005
                else "Client-side close frame status not set"
            )
        request_id = _request_id()
        context = self._context("$disconnect", "DISCONNECT", connection.connection_id, request_id)
        context["connectedAt"] = int(connection.connected_at * 1000)
        context["domainName"] = connection.domain
        context["identity"] = {"sourceIp": connection.source_ip, "userAgent": connection.user_agent}
        context["disconnectStatusCode"] = int(code)
        context["disconnectReason"] = reason
        if connection.authorizer is not None:
            context["authorizer"] = connection.authorizer
        headers = {"Host": connection.domain, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
        event = {
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "requestContext": context,
            "isBase64Encoded": False,
        }
        self.stats.disconnect_invocations += 1
        log: dict[str, Any] = {
            "requestId": request_id,
            "connectionId": connection.connection_id,
            "sourceIp": connection.source_ip,
            "eventType": "DISCONNECT",
            "routeKey": "$disconnect",
            "error": f"{code} {reason}",
        }
        # Best effort, as in API Gateway: nobody is there to hear of a failure.
        try:
            result = await self._invoke(route.function, event)
        except Exception as exc:
            self._access({**log, "status": 500, "integrationError": type(exc).__name__})
            return
        log["integrationLatency"] = round(result.duration_ms, 1)
        if not result.ok:
            log["integrationError"] = result.error_type
        self._access({**log, "status": 200 if result.ok else 500})

    async def _invoke(self, function: str, event: dict[str, Any]) -> InvokeResult:
        try:
            return await asyncio.wait_for(self.pools[function].invoke(event), timeout=self.integration_timeout)
        except TimeoutError:
            return InvokeResult(ok=False, error="timeout", error_type="IntegrationTimeout")

    # -- @connections --------------------------------------------------------------------------

    async def _manage(self, request: web.Request, connection_id: str) -> web.StreamResponse:
        connection = self.connections.get(connection_id)
        if request.method not in ("POST", "GET", "DELETE"):
            return _message(404, "Not Found")
        if request.method == "POST":
            declared = request.content_length
            if declared is not None and declared > MAX_MESSAGE_BYTES:
                return _message(413, "Message too long", "PayloadTooLargeException")
            data = await _read_at_most(request, MAX_MESSAGE_BYTES + 1)
            if len(data) > MAX_MESSAGE_BYTES:
                return _message(413, "Message too long", "PayloadTooLargeException")
        if connection is None or connection.closed_by_server is not None or connection.ws.closed:
            return _message(410, "Gone", "GoneException")
        if request.method == "GET":
            return web.json_response(
                {
                    "connectedAt": _iso(connection.connected_at),
                    "identity": {"sourceIp": connection.source_ip, "userAgent": connection.user_agent},
                    "lastActiveAt": _iso(connection.last_active),
                }
            )
        if request.method == "DELETE":
            # Answered at once; the close handshake and $disconnect follow, as in API Gateway.
            connection.closed_by_server = (WSCloseCode.OK, "Connection deleted")
            self._spawn(connection.ws.close(code=WSCloseCode.OK, message=b"Connection deleted"))
            return web.Response(status=204)
        self.stats.posts += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            payload: str | bytes = data
        else:
            payload = text
        try:
            await connection.send(payload)
        except GoneError:
            return _message(410, "Gone", "GoneException")
        return web.Response(status=200)


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _proxy_answer(payload: Any) -> tuple[int | None, dict[str, str], str | None]:
    """(status, headers, body) of a Lambda proxy answer; status None when it is malformed."""
    if not isinstance(payload, dict) or "statusCode" not in payload:
        # Like API Gateway's proxy integration: a bare result is a 200 with that result as the body.
        if payload is None:
            return 200, {}, None
        return 200, {}, payload if isinstance(payload, str) else json.dumps(payload)
    status = payload["statusCode"]
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return None, {}, None
    headers = {str(k): str(v) for k, v in (payload.get("headers") or {}).items()}
    body = payload.get("body")
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)
    if body is not None and payload.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8", "replace")
    return status, headers, body


def _policy_allows(answer: Any, method_arn: str) -> bool | None:
    """Whether an IAM policy answer allows ``execute-api:Invoke`` on the method; None when malformed."""
    if not isinstance(answer, dict) or not isinstance(answer.get("policyDocument"), dict):
        return None
    statements = answer["policyDocument"].get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        return None
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict):
            return None
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        matches = any(fnmatch.fnmatchcase("execute-api:Invoke", str(a)) for a in actions) and any(
            fnmatch.fnmatchcase(method_arn, str(r)) for r in resources
        )
        if not matches:
            continue
        if statement.get("Effect") == "Deny":
            return False  # an explicit deny wins
        if statement.get("Effect") == "Allow":
            allowed = True
    return allowed
