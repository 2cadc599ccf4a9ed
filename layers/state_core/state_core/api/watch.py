"""The WebSocket edge: API Gateway's WebSocket proxy events in, the watch service called, answers out.

`$connect` authenticates (the HTTP authorizer's TokenVerifier, never a copy of it) and answers the
handshake: 200 (with `Sec-WebSocket-Protocol: state.v1` when the browser offered it) or a refusal status,
which API Gateway turns into a refused handshake. Every other route is a message of an open connection:
its answers go back over the socket (PostToConnection), so the integration's own answer is just 200.
Every request leaves an audit record; the token and the message bodies are never logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from state_core.domain.errors import BadRequest, ServiceUnavailable, StateError, Unauthenticated
from state_core.domain.watch import Connection, ConnectionGone, error_message, subscription_id_of
from state_core.observability import logger, metrics
from state_core.security import audit
from state_core.security.tokens import IssuerUnavailable, TokenRejected, bearer_token

if TYPE_CHECKING:
    from state_core.security.tokens import VerifiedToken
    from state_core.service.watch import WatchService

SUBPROTOCOL = "state.v1"
BEARER_SUBPROTOCOL = "bearer."

Verify = Callable[[str], "VerifiedToken"]


def _headers(event: Mapping[str, Any]) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in (event.get("headers") or {}).items()}


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/problem+json"},
        "body": json.dumps({"status": status, "title": title, "detail": detail}),
    }


def token_of(event: Mapping[str, Any]) -> tuple[str, bool]:
    """The bearer token of a handshake and whether the browser form (subprotocols) was used. A query string
    is refused whatever it holds: a token there would end up in access logs and browser histories."""
    if event.get("queryStringParameters") or event.get("multiValueQueryStringParameters"):
        raise BadRequest("a query string is refused: send the token in Authorization or Sec-WebSocket-Protocol")
    headers = _headers(event)
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    in_protocols = [p[len(BEARER_SUBPROTOCOL) :] for p in offered if p.startswith(BEARER_SUBPROTOCOL)]
    from_header = bearer_token(headers)
    if in_protocols and (from_header is not None or len(in_protocols) > 1):
        raise BadRequest("send exactly one token: in Authorization or in one bearer.<token> subprotocol")
    if in_protocols:
        if SUBPROTOCOL not in offered:
            raise BadRequest(f"the subprotocols must include {SUBPROTOCOL}")
        return in_protocols[0], True
    if from_header is None:
        _count_refusal("no bearer token", "no_token")
        raise Unauthenticated("no bearer token: Authorization: Bearer <jwt>, or subprotocols state.v1, bearer.<jwt>")
    return from_header, SUBPROTOCOL in offered


def _count_refusal(reason: str, code: str) -> None:
    """A refused token, counted as the authorizer counts one: with its code (DENIAL_REASONS) beside the metric."""
    logger.info("token refused", extra={"reason": reason, "denial_reason": code})
    metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
    metrics.add_metadata(key="denial_reason", value=code)


def _verified(verify: Verify, token: str) -> VerifiedToken:
    try:
        return verify(token)
    except TokenRejected as rejected:
        _count_refusal(str(rejected), rejected.reason)
        raise Unauthenticated("the token is not acceptable") from None
    except IssuerUnavailable as unavailable:
        logger.error("OIDC issuer unavailable", extra={"reason": str(unavailable)})
        raise ServiceUnavailable("the token cannot be checked now; retry shortly") from None


def connect(event: Mapping[str, Any], service: WatchService, verify: Verify) -> dict[str, Any]:
    connection_id = event["requestContext"]["connectionId"]
    subject = None
    try:
        token, browser = token_of(event)
        verified = _verified(verify, token)
        subject = verified.subject
        if verified.expires_at <= service.now():
            # Within the verifier's clock-skew leeway, but a connection past its exp would be closed at once.
            _count_refusal("the token has expired", "expired")
            raise Unauthenticated("the token has expired")
        service.connect(
            Connection(connection_id, verified.subject, verified.scopes, verified.roles, verified.expires_at)
        )
    except StateError as error:
        audit.emit_watch("watch_connect", dict(event), subject=subject, status=error.status)
        return _problem(error.status, error.title, error.detail)
    audit.emit_watch("watch_connect", dict(event), subject=subject, status=200)
    # Only state.v1 is echoed, never the subprotocol that carries the token.
    return {"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": SUBPROTOCOL}} if browser else {"statusCode": 200}


def disconnect(event: Mapping[str, Any], service: WatchService) -> dict[str, Any]:
    service.disconnect(event["requestContext"]["connectionId"])
    return {"statusCode": 200}


def on_message(event: Mapping[str, Any], service: WatchService, verify: Verify) -> dict[str, Any]:
    """subscribe, unsubscribe, refresh and anything else ($default): answers go over the socket."""
    connection_id = event["requestContext"]["connectionId"]
    body = event.get("body")
    if event.get("isBase64Encoded"):
        body = None  # binary frames are not messages of this protocol
    connection = service.store.connection(connection_id)
    if connection is None:
        audit.emit_watch("watch_message", dict(event), subject=None, status=401)
        service.poster.close(connection_id)
        return {"statusCode": 200}
    if connection.expires_at <= service.now():
        audit.emit_watch("watch_message", dict(event), subject=connection.subject, status=401)
        service.close(connection_id, "token-expired")
        return {"statusCode": 200}
    # pydantic only here: $connect, $disconnect and the fan-out never load it.
    from state_core.domain.watch_messages import Refresh, Subscribe, parse_client_message

    action: audit.WatchAction = "watch_message"
    key = prefix = None
    try:
        request = parse_client_message(body)
        if isinstance(request, Subscribe):
            action, key, prefix = "watch_subscribe", request.key, request.prefix
            service.subscribe(connection, request)
        elif isinstance(request, Refresh):
            action = "watch_refresh"
            verified = _verified(verify, request.token)
            fresh = Connection(connection_id, verified.subject, verified.scopes, verified.roles, verified.expires_at)
            service.refresh(connection, fresh)
        else:
            action = "watch_unsubscribe"
            service.unsubscribe(connection, request.id)
    except StateError as error:
        audit.emit_watch(action, dict(event), subject=connection.subject, status=error.status, key=key, prefix=prefix)
        try:
            service.poster.post(connection_id, error_message(error, subscription_id_of(body)))
        except ConnectionGone:
            service.disconnect(connection_id)
        return {"statusCode": 200}
    except ConnectionGone:
        service.disconnect(connection_id)
        return {"statusCode": 200}
    audit.emit_watch(action, dict(event), subject=connection.subject, status=200, key=key, prefix=prefix)
    return {"statusCode": 200}


def handle(event: Mapping[str, Any], service: Callable[[], WatchService], verify: Verify) -> dict[str, Any]:
    route = (event.get("requestContext") or {}).get("routeKey")
    if route == "$connect":
        return connect(event, service(), verify)
    if route == "$disconnect":
        return disconnect(event, service())
    return on_message(event, service(), verify)
