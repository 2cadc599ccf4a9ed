"""Only this machine may talk to the local stack's listeners.

Binding to 127.0.0.1 keeps other hosts out but not the web pages a developer's browser opens: a page can
send requests to http://127.0.0.1:<port> (and read the answers if the listener sends CORS headers), and a
page on a name its attacker rebinds to 127.0.0.1 (DNS rebinding) is even same-origin, needing no CORS at
all. So every listener answers only requests whose Host is a loopback name or address with its own port
(a rebound page sends its own name) and that carry no Origin but a loopback one, and none sends CORS
headers. API Gateway without a CORS configuration sends none either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

FORBIDDEN_MESSAGE = "Forbidden: the local stack answers only requests from this machine"


def _is_loopback_name(hostname: str | None) -> bool:
    if not hostname:
        return False
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _split(authority_url: str) -> tuple[str | None, int | None] | None:
    try:
        parts = urlsplit(authority_url)
        return parts.hostname, parts.port
    except ValueError:  # a malformed port or bracket
        return None


def is_loopback_host(host: str | None, port: int) -> bool:
    """True for a Host header naming a loopback name or address with ``port``, e.g. ``127.0.0.1:3000``."""
    if not host or any(c in host for c in "/?#@\\ "):
        return False
    split = _split(f"http://{host}")
    if split is None:
        return False
    hostname, host_port = split
    return _is_loopback_name(hostname) and host_port == port


def is_loopback_origin(origin: str) -> bool:
    """True for an Origin of a page served from this machine (any port); ``null`` is not one."""
    split = _split(origin)
    if split is None or not origin.startswith(("http://", "https://")):
        return False
    return _is_loopback_name(split[0])


def refusal(host: str | None, origin: str | None, method: str, port: int, *, preflight: bool = False) -> str | None:
    """Why a request must be refused (for the listener's log), or None when it may be served.

    ``preflight=True`` lets OPTIONS through to a listener that answers it as its model does (the gateway:
    API Gateway without CORS has no OPTIONS route, so 404).
    """
    if not is_loopback_host(host, port):
        return "Host is not a loopback address with this listener's port"
    if origin is not None and not is_loopback_origin(origin):
        return "Origin is not a loopback one"
    if method == "OPTIONS" and not preflight:
        # No CORS: a preflight is never granted, whoever asks.
        return "preflight"
    return None


def is_cors_header(name: str) -> bool:
    return name.lower().startswith("access-control-")


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class LoopbackOnlyMiddleware:
    """WSGI: refuses what :func:`refusal` names with 403, and drops every CORS header from the answers."""

    def __init__(self, app: WSGIApp, port: Callable[[], int]) -> None:
        self._app = app
        self._port = port

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        reason = refusal(environ.get("HTTP_HOST"), environ.get("HTTP_ORIGIN"), environ["REQUEST_METHOD"], self._port())
        if reason is not None:
            body = FORBIDDEN_MESSAGE.encode()
            start_response(
                "403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
            )
            return [body]

        def start_without_cors(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [(k, v) for k, v in headers if not is_cors_header(k)], *exc_info)

        return self._app(environ, start_without_cors)


def aiohttp_middleware(port: Callable[[], int], forbidden: Callable[[], Any]) -> Any:
    """The same rules for an aiohttp application; ``forbidden()`` builds the listener's own 403."""
    from aiohttp import web

    @web.middleware
    async def loopback_only(request: web.Request, handler: Any) -> web.StreamResponse:
        if refusal(request.headers.get("Host"), request.headers.get("Origin"), request.method, port()) is not None:
            response: web.StreamResponse = forbidden()
        else:
            response = await handler(request)
        for name in [n for n in response.headers if is_cors_header(n)]:
            del response.headers[name]
        return response

    return loopback_only
