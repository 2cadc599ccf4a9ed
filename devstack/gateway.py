"""API Gateway HTTP API, locally, on aiohttp.

Reproduces what a client of the deployed API can notice, so tests over it hold for AWS: route
matching and its 404, the stage's throttling (429 per route, before the
authorizer), the Lambda REQUEST authorizer (payload 2.0, simple responses) with
its 401/403/500 answers and its result cache keyed by the identity header,
payload format 2.0 events and responses, base64 bodies for non-text content
types, the request-size limits and the 30 s integration timeout. Like API Gateway
without a CORS configuration it sends no CORS headers (OPTIONS matches no route:
404), and it answers only requests from this machine (devstack/loopback.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from devstack.loopback import refusal
from devstack.template import ACCOUNT_ID, REGION, AuthorizerSpec, Route, StateTemplate
from devstack.workers import InvokeResult, WorkerConfig, WorkerPool, max_concurrency_for

# API Gateway HTTP API quotas: "Total combined size of request line and header
# values: 10240 bytes" and "Payload size: 10 MB" (neither adjustable).
MAX_HEADER_BYTES = 10_240
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# "Maximum integration timeout: 30 seconds"; past it API Gateway answers 503.
INTEGRATION_TIMEOUT_SECONDS = 30.0

# The stage's default route throttling, overridden for a test (a low burst) or a load run (a high one).
THROTTLING_BURST_ENV = "LOCAL_THROTTLING_BURST_LIMIT"
THROTTLING_RATE_ENV = "LOCAL_THROTTLING_RATE_LIMIT"

API_ID = "local"
STAGE = "$default"

# The fields of the HTTP API's access log, as template.yaml's StateApi AccessLogSettings Format names them
# (a unit test keeps the two equal). A value API Gateway does not have is "-", as in its own log.
ACCESS_LOG_FIELDS = (
    "requestId",
    "sourceIp",
    "subject",
    "requestTime",
    "httpMethod",
    "path",
    "routeKey",
    "protocol",
    "status",
    "responseLatency",
    "integrationLatency",
    "authorizerError",
    "integrationError",
    "error",
)

# Media types API Gateway passes as text; every other body (including
# application/merge-patch+json and a body with no Content-Type) arrives base64
# with isBase64Encoded true.
_TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/xml",
    }
)


def is_text_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_TYPES


def _message(status: int, message: str, **headers: str) -> web.Response:
    # API Gateway's own error bodies: {"message":"..."} as `application/json`, without a charset parameter
    # (aiohttp's json_response would add one, and the OpenAPI document declares API Gateway's media type).
    body = json.dumps({"message": message}, separators=(",", ":")).encode("utf-8")
    return web.Response(status=status, body=body, content_type="application/json", headers=headers or None)


# --- routing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledRoute:
    route: Route
    pattern: re.Pattern[str]
    literal_segments: int

    @classmethod
    def compile(cls, route: Route) -> CompiledRoute:
        parts = []
        literal = 0
        for segment in route.path.strip("/").split("/"):
            if segment.startswith("{") and segment.endswith("+}"):
                # Greedy path variable: the rest of the path.
                parts.append(f"(?P<{segment[1:-2]}>.+)")
            elif segment.startswith("{") and segment.endswith("}"):
                # A path variable matches exactly one segment.
                parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(segment))
                literal += 1
        return cls(route, re.compile("^/" + "/".join(parts) + "$"), literal)


class Router:
    """Most specific route wins, as in API Gateway: literals beat variables, a method beats ANY."""

    def __init__(self, routes: list[Route]) -> None:
        compiled = [CompiledRoute.compile(r) for r in routes if r.path != "$default"]
        compiled.sort(
            key=lambda c: (-c.literal_segments, "+}" in c.route.path, c.route.method == "ANY"),
        )
        self._routes = compiled
        self._default = next((r for r in routes if r.path == "$default"), None)

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        for compiled in self._routes:
            if compiled.route.method not in (method, "ANY"):
                continue
            found = compiled.pattern.match(raw_path)
            if found:
                return compiled.route, {k: unquote(v) for k, v in found.groupdict().items()}
        if self._default is not None:
            return self._default, {}
        return None


# --- throttling ---------------------------------------------------------------------------------


class TokenBucket:
    """API Gateway's throttling of a route: a bucket holding up to ``burst`` requests, refilled at ``rate``
    a second; a request takes one or is answered 429. Hand-written because the point is API Gateway's
    semantics (burst 0 refuses everything), not a general rate limiter."""

    def __init__(self, burst: int, rate: float, clock: Any = time.monotonic) -> None:
        self.burst = burst
        self.rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def throttling_from_env(default: tuple[int, float] | None) -> tuple[int, float] | None:
    """The template's (burst, rate) with either half replaced from the environment."""
    burst_text, rate_text = os.environ.get(THROTTLING_BURST_ENV), os.environ.get(THROTTLING_RATE_ENV)
    if not burst_text and not rate_text:
        return default
    if default is None:
        if not (burst_text and rate_text):
            raise ValueError(f"set both {THROTTLING_BURST_ENV} and {THROTTLING_RATE_ENV}: the template sets none")
        default = (0, 0.0)
    burst = int(burst_text) if burst_text else default[0]
    rate = float(rate_text) if rate_text else default[1]
    if burst < 0 or rate < 0:
        raise ValueError("throttling limits cannot be negative")
    return burst, rate


# --- the gateway --------------------------------------------------------------------------------


@dataclass
class _CachedDecision:
    expires_at: float
    allowed: bool
    context: Any


@dataclass
class GatewayStats:
    authorizer_invocations: int = 0
    integration_invocations: int = 0
    throttled: int = 0


@dataclass
class Gateway:
    """The local HTTP API. ``start()``/``stop()`` run inside an asyncio loop."""

    template: StateTemplate
    state_dir: Path
    endpoint_url: str | None = None
    env_overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # per function logical id
    common_env: dict[str, str] = field(default_factory=dict)  # for every function
    host: str = "127.0.0.1"
    port: int = 3000
    max_concurrency: int | None = None
    integration_timeout: float = INTEGRATION_TIMEOUT_SECONDS
    # (burst, rate) for every route; None: the environment's, else the template's stage settings.
    throttling: tuple[int, float] | None = None
    pools: dict[str, WorkerPool] = field(default_factory=dict)
    stats: GatewayStats = field(default_factory=GatewayStats)

    def __post_init__(self) -> None:
        self.log_dir = self.state_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.routes = self.template.routes()
        self.router = Router(self.routes)
        self.authorizers: dict[str, AuthorizerSpec] = self.template.authorizers()
        self._auth_cache: dict[tuple[str, tuple[str, ...]], _CachedDecision] = {}
        if self.throttling is None:
            self.throttling = throttling_from_env(self.template.stage_throttling())
        self._buckets: dict[str, TokenBucket] = {}
        self._runner: web.AppRunner | None = None
        self._async_invocations: set[asyncio.Task[InvokeResult]] = set()
        self._access_log = (self.log_dir / "access.log").open("a", buffering=1, encoding="utf-8")
        needed = {r.function for r in self.routes} | {a.function for a in self.authorizers.values()}
        for logical_id in sorted(needed):
            spec = self.template.function(logical_id)
            overrides = {**self.common_env, **self.env_overrides.get(logical_id, {})}
            config = WorkerConfig.from_spec(
                spec, log_dir=self.log_dir, endpoint_url=self.endpoint_url, overrides=overrides
            )
            concurrency = self.max_concurrency or max_concurrency_for(logical_id)
            self.pools[logical_id] = WorkerPool(config, max_concurrency=concurrency)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def make_app(self) -> web.Application:
        # client_max_size above the payload limit: this gateway answers 413 itself,
        # with API Gateway's body, before aiohttp would.
        app = web.Application(client_max_size=MAX_PAYLOAD_BYTES + 1)
        # Lambda's Invoke API, for a function that hands work to itself asynchronously (the schema
        # registry's checks); API Gateway has no route under this path, so no client route is shadowed.
        app.router.add_route("POST", "/2015-03-31/functions/{function}/invocations", self.invoke_api)
        # Every path reaches handle(), which routes as API Gateway does: `.` would not match a decoded
        # newline (%0A), and aiohttp would answer its own text/plain 404.
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)
        return app

    async def start(self) -> None:
        # aiohttp's parser limits (8190 bytes a line, 128 headers) sit below API
        # Gateway's 10,240 bytes in total, so they are raised: the size check below
        # is the one that answers, with API Gateway's status.
        self._runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handler_cancellation=True,
            max_line_size=4 * MAX_HEADER_BYTES,
            max_field_size=4 * MAX_HEADER_BYTES,
            max_headers=MAX_HEADER_BYTES // 4,
            # No lingering: after a 413 the rest of an oversized body is not read
            # and discarded for seconds, the connection is closed instead.
            lingering_time=0,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        # Known only now (the port may have been chosen by the system); no worker has started yet.
        for pool in self.pools.values():
            environment = {**pool.config.environment, "AWS_ENDPOINT_URL_LAMBDA": self.base_url}
            pool.config = replace(pool.config, environment=environment)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for pool in self.pools.values():
            await asyncio.to_thread(pool.close)
        self._access_log.close()

    # -- Lambda's Invoke API (asynchronous invocations only) -----------------------------------------

    async def invoke_api(self, request: web.Request) -> web.Response:
        """`InvocationType: Event`: Lambda queues the event and answers 202 at once; the function runs it
        in one of its environments, as any invocation."""
        name = request.match_info["function"]
        pool = next((p for p in self.pools.values() if name in (p.config.function_name, p.config.logical_id)), None)
        if pool is None:
            return _message(404, f"Function not found: {name}")
        if request.headers.get("X-Amz-Invocation-Type") != "Event":
            return _message(400, "the local stack invokes functions asynchronously only (InvocationType Event)")
        try:
            event = json.loads(await request.read() or b"{}")
        except ValueError:
            return _message(400, "the payload is not JSON")
        task = asyncio.create_task(pool.invoke(event))
        self._async_invocations.add(task)
        task.add_done_callback(self._async_invocations.discard)
        return web.Response(status=202)

    # -- request handling ----------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.time()
        request_id = _request_id()
        log: dict[str, Any] = {
            "requestId": request_id,
            "sourceIp": request.remote,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(started)),
            "httpMethod": request.method,
            "path": request.path,
            "routeKey": "-",
            "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
        }
        try:
            response = await self._handle(request, request_id, started, log)
        except Exception as exc:  # a bug here must still answer like API Gateway
            log["gatewayError"] = type(exc).__name__
            response = _message(500, "Internal Server Error")
        response.headers["apigw-requestid"] = request_id
        log["status"] = response.status
        log["responseLatency"] = round((time.time() - started) * 1000, 1)
        # The access log never holds the Authorization header or a body.
        record = {name: log.get(name, "-") for name in ACCESS_LOG_FIELDS}
        self._access_log.write(json.dumps(record) + "\n")
        return response

    async def _handle(  # noqa: C901, PLR0911  API Gateway's request pipeline, one early answer per refusal
        self, request: web.Request, request_id: str, started: float, log: dict[str, Any]
    ) -> web.StreamResponse:
        refused = refusal(
            request.headers.get("Host"), request.headers.get("Origin"), request.method, self.port, preflight=True
        )
        if refused is not None:
            # Only this machine: a web page the developer opens must not reach the local stack, not even
            # through DNS rebinding (devstack/loopback.py). API Gateway's own 403 body.
            log["error"] = f"Forbidden: {refused}"
            return _message(403, "Forbidden")
        if _header_bytes(request) > MAX_HEADER_BYTES:
            # API Gateway refuses the request before routing. Its documented answer
            # for an oversized request (gateway response REQUEST_TOO_LARGE) is 413.
            log["error"] = "headers too large"
            return _too_large(request)
        declared = request.content_length
        if declared is not None and declared > MAX_PAYLOAD_BYTES:
            log["error"] = "payload too large"
            return _too_large(request)

        raw_path = request.raw_path.split("?", 1)[0]
        matched = self.router.match(request.method, raw_path)
        if matched is None:
            log["error"] = "Not Found"  # $context.error.message: the body API Gateway answers with
            return _unread(request, _message(404, "Not Found"))
        route, path_parameters = matched
        log["routeKey"] = route.route_key
        if self.throttling is not None:
            # Per route, as the stage's default route settings apply, and before the authorizer: a flood of
            # new tokens costs no authorizer invocation beyond the limit.
            bucket = self._buckets.get(route.route_key)
            if bucket is None:
                bucket = self._buckets[route.route_key] = TokenBucket(*self.throttling)
            if not bucket.take():
                self.stats.throttled += 1
                log["error"] = "Too Many Requests"
                return _unread(request, _message(429, "Too Many Requests"))

        body = await _read_body(request)
        if body is None:
            log["error"] = "payload too large"
            return _too_large(request)

        event = self._event(request, route, path_parameters, body, request_id, started)

        authorizer_context: Any = None
        if route.authorizer is not None:
            authorizer = self.authorizers.get(route.authorizer)
            if authorizer is None:
                log["authorizerError"] = f"unknown authorizer {route.authorizer}"
                return _message(500, "Internal Server Error")
            decision = await self._authorize(authorizer, request, event, log)
            if isinstance(decision, web.Response):
                return decision
            authorizer_context = decision
            event["requestContext"]["authorizer"] = {"lambda": authorizer_context}
            # `$context.authorizer.sub`: who made the request, once the authorizer allowed it.
            if isinstance(authorizer_context, dict) and isinstance(authorizer_context.get("sub"), str):
                log["subject"] = authorizer_context["sub"]

        pool = self.pools[route.function]
        self.stats.integration_invocations += 1
        try:
            result = await asyncio.wait_for(pool.invoke(event), timeout=self.integration_timeout)
        except TimeoutError:
            log["integrationError"] = "integration timeout"
            return _message(503, "Service Unavailable")
        log["integrationLatency"] = round(result.duration_ms, 1)
        if not result.ok:
            log["integrationError"] = result.error_type or result.error
            return _message(500, "Internal Server Error")
        try:
            return _lambda_response(result.payload)
        except (TypeError, ValueError, KeyError) as exc:
            log["integrationError"] = f"malformed response: {type(exc).__name__}"
            return _message(500, "Internal Server Error")

    async def _authorize(
        self, authorizer: AuthorizerSpec, request: web.Request, event: dict[str, Any], log: dict[str, Any]
    ) -> Any:
        identity = tuple(request.headers.get(h, "") for h in authorizer.identity_headers)
        if not identity or any(not v.strip() for v in identity):
            # A missing or empty identity source: 401 without calling the authorizer.
            log["error"] = "Unauthorized"
            return _message(401, "Unauthorized")
        cache_key = (authorizer.name, identity)
        now = time.monotonic()
        cached = self._auth_cache.get(cache_key)
        if cached is not None and cached.expires_at > now:
            if not cached.allowed:
                log["error"] = "Forbidden"
                return _message(403, "Forbidden")
            return cached.context

        auth_event = self._authorizer_event(event, identity)
        pool = self.pools[authorizer.function]
        self.stats.authorizer_invocations += 1
        result: InvokeResult = await pool.invoke(auth_event)
        if not result.ok:
            log["authorizerError"] = result.error_type or result.error
            return _message(500, "Internal Server Error")
        answer = result.payload
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("isAuthorized"), bool)
            or not isinstance(answer.get("context", {}), dict | None)
        ):
            log["authorizerError"] = "malformed authorizer response"
            return _message(500, "Internal Server Error")
        allowed: bool = answer["isAuthorized"]
        context = answer.get("context")
        if authorizer.ttl_seconds > 0:
            if len(self._auth_cache) > 10_000:  # bound the cache: drop expired answers
                self._auth_cache = {k: v for k, v in self._auth_cache.items() if v.expires_at > now}
            # Allows and denies are both cached, per identity value, for the TTL.
            self._auth_cache[cache_key] = _CachedDecision(now + authorizer.ttl_seconds, allowed, context)
        if not allowed:
            log["error"] = "Forbidden"
            return _message(403, "Forbidden")
        return context

    # -- payload format 2.0 --------------------------------------------------------------------

    def _event(  # noqa: PLR0917  the parts of one request, built in one place
        self,
        request: web.Request,
        route: Route,
        path_parameters: dict[str, str],
        body: bytes,
        request_id: str,
        started: float,
    ) -> dict[str, Any]:
        raw_path = request.raw_path.split("?", 1)[0]
        raw_query = request.raw_path.split("?", 1)[1] if "?" in request.raw_path else ""
        headers: dict[str, str] = {}
        cookies: list[str] = []
        for name, value in request.headers.items():
            lower = name.lower()
            if lower == "cookie":
                # Payload 2.0 moves cookies out of the headers into "cookies".
                cookies.extend(c.strip() for c in value.split(";") if c.strip())
                continue
            # Repeated headers arrive comma-joined in payload 2.0.
            headers[lower] = f"{headers[lower]},{value}" if lower in headers else value
        peer = request.remote or "127.0.0.1"
        host = headers.get("host", f"{self.host}:{self.port}")
        headers.setdefault("x-forwarded-for", peer)
        headers.setdefault("x-forwarded-proto", "http")
        headers.setdefault("x-forwarded-port", str(self.port))
        headers.setdefault("x-amzn-trace-id", f"Root=1-{int(started):08x}-{uuid.uuid4().hex[:24]}")
        domain = host.split(":", 1)[0]

        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route.route_key if route.path != "$default" else "$default",
            "rawPath": raw_path,
            "rawQueryString": raw_query,
        }
        if cookies:
            event["cookies"] = cookies
        event["headers"] = headers
        query = _query_parameters(raw_query)
        if query:
            event["queryStringParameters"] = query
        event["requestContext"] = {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": host,
            "domainPrefix": domain.split(".", 1)[0],
            "http": {
                "method": request.method,
                "path": raw_path,
                "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
                "sourceIp": peer,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": event["routeKey"],
            "stage": STAGE,
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(started)),
            "timeEpoch": int(started * 1000),
        }
        if path_parameters:
            event["pathParameters"] = path_parameters
        event["isBase64Encoded"] = False
        if body:
            text = None
            if is_text_content_type(headers.get("content-type")):
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
            if text is not None:
                event["body"] = text
            else:
                event["body"] = base64.b64encode(body).decode("ascii")
                event["isBase64Encoded"] = True
        return event

    def _authorizer_event(self, event: dict[str, Any], identity: tuple[str, ...]) -> dict[str, Any]:
        context = event["requestContext"]
        path = context["http"]["path"]
        route_arn = f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{API_ID}/{STAGE}/{context['http']['method']}{path}"
        auth_event: dict[str, Any] = {
            "version": "2.0",
            "type": "REQUEST",
            "routeArn": route_arn,
            "identitySource": list(identity),
            "routeKey": event["routeKey"],
            "rawPath": event["rawPath"],
            "rawQueryString": event["rawQueryString"],
            "cookies": event.get("cookies", []),
            "headers": event["headers"],
            "queryStringParameters": event.get("queryStringParameters", {}),
            "requestContext": {k: v for k, v in context.items() if k != "authorizer"},
            "pathParameters": event.get("pathParameters", {}),
            "stageVariables": {},
        }
        return auth_event


def _request_id() -> str:
    # API Gateway's request ids look like "JLw3KhbXIAMEMVA=".
    return base64.b64encode(os.urandom(11)).decode("ascii")


def _header_bytes(request: web.Request) -> int:
    line = len(f"{request.method} {request.raw_path} HTTP/{request.version.major}.{request.version.minor}")
    return line + sum(len(k) + len(v) for k, v in request.raw_headers)


def _too_large(request: web.Request) -> web.Response:
    return _unread(request, _message(413, "Request Entity Too Large"))


def _unread(request: web.Request, response: web.Response) -> web.Response:
    """An answer given before the request's body was read. The unread body stays on the socket and is not
    drained (no lingering), so the connection is closed: said in the answer (`Connection: close`), else a
    client's pool sends its next request on a connection already gone."""
    if request.body_exists:
        response.force_close()
    return response


async def _read_body(request: web.Request) -> bytes | None:
    """The body, or None when it is over the payload limit (reading no more than limit + 1)."""
    if not request.body_exists:
        return b""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(min(65_536, MAX_PAYLOAD_BYTES + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            return None
        chunks.append(chunk)


def _query_parameters(raw_query: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        # Repeated parameters arrive comma-joined in payload 2.0.
        values[name] = f"{values[name]},{value}" if name in values else value
    return values


def _lambda_response(payload: Any) -> web.Response:
    """Map a payload 2.0 response to HTTP, with API Gateway's inference rules."""
    if not (isinstance(payload, dict) and "statusCode" in payload):
        # No statusCode: 200, application/json, the result itself as the body.
        body = payload if isinstance(payload, str) else json.dumps(payload)
        return web.Response(status=200, text=body, content_type="application/json")
    status = payload["statusCode"]
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError("statusCode")
    response = web.Response(status=status)
    headers: Mapping[str, Any] = payload.get("headers") or {}
    multi: Mapping[str, Any] = payload.get("multiValueHeaders") or {}
    for name, values in multi.items():
        for value in values or []:
            response.headers.add(name, str(value))
    for name, value in headers.items():
        if name in response.headers:
            response.headers[name] = f"{response.headers[name]},{value}"
        else:
            response.headers[name] = str(value)
    for cookie in payload.get("cookies") or []:
        response.headers.add("Set-Cookie", str(cookie))
    raw_body: Any = payload.get("body")
    if raw_body is not None:
        body = raw_body if isinstance(raw_body, str) else json.dumps(raw_body)
        response.body = base64.b64decode(body) if payload.get("isBase64Encoded") else body.encode("utf-8")
        if "Content-Type" not in response.headers:
            response.headers["Content-Type"] = "application/json"
    return response
