"""HTTP edge shared by the state handlers: the resolver with its one error mapping, the principal from the
authorizer context, preconditions and bodies read from the request, and responses built from core results.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from state_core.domain.codec import MAX_BODY_BYTES, check_body_size
from state_core.domain.errors import (
    BadRequest,
    CorruptStoredValue,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ServiceUnavailable,
    StateError,
    UnsupportedMediaType,
)
from state_core.domain.keys import validate_key
from state_core.domain.params import ETAG
from state_core.domain.records import StateRecord
from state_core.observability import annotate, logger, metrics
from state_core.security import audit
from state_core.security.policy import PolicyError, RolePolicy
from state_core.security.principal import Principal, authorize
from state_core.service.manager import Expectation, StateView

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

PROBLEM_CONTENT_TYPE = "application/problem+json"
JSON_CONTENT_TYPE = "application/json"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"
PROBLEM_TYPE_BASE = "https://state.service/problems/"


_documenting = False


@contextmanager
def documenting() -> Iterator[None]:
    """While the OpenAPI generator loads the handlers: their routes declare their responses."""
    global _documenting
    _documenting = True
    try:
        yield
    finally:
        _documenting = False


def documented(
    declare: Callable[[ModuleType], dict[int, OpenAPIResponse]],
) -> dict[int, OpenAPIResponse] | None:
    """A route's `responses=`: `declare(state_core.api.openapi)` for the OpenAPI generator, None at run time.
    The resolver only reads them to write the document, and building them costs the response models and
    pydantic at every cold start."""
    if not _documenting:
        return None
    from state_core.api import openapi

    return declare(openapi)


def problem(error: StateError, headers: dict[str, str] | None = None) -> Response[str]:
    """The one place a domain error becomes an RFC 9457 problem document (with `headers` added)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    headers = dict(headers or {})
    if isinstance(error, PreconditionFailed):
        body["current_version"] = error.current_version
        if error.current_version is not None:
            headers["ETag"] = etag(error.current_version)
    # A transaction's 412 names each failed operation, a schema's 422 each violation, a publish's 409 its reasons.
    extensions = getattr(error, "extensions", None)
    if extensions is not None:
        body.update(extensions())
    if isinstance(error, ServiceUnavailable):
        headers["Retry-After"] = str(error.retry_after_seconds)
    return Response(
        status_code=error.status,
        content_type=PROBLEM_CONTENT_TYPE,
        body=json.dumps(body, ensure_ascii=False),
        headers=headers,
    )


def build_resolver(router: APIGatewayHttpRouter) -> APIGatewayHttpResolver:
    """An HTTP API (payload 2.0) resolver around one function's router, with the shared error mapping."""
    app = APIGatewayHttpResolver()
    app.include_router(router)

    @app.exception_handler(StateError)  # type: ignore[untyped-decorator]
    def _state_error(error: StateError) -> Response[str]:
        if isinstance(error, CorruptStoredValue):
            # Stored data failed its checks: an operator has to look (restore or rewrite the key).
            logger.error("stored value unreadable", extra={"reason": error.detail})
            metrics.add_metric(name="CorruptStoredValues", unit="Count", value=1)
        logger.info("request refused", extra={"status": error.status, "reason": error.slug})
        return problem(error)

    @app.not_found
    def _no_route(_: Exception) -> Response[str]:
        # API Gateway routed the request here, so the key segment is what Powertools could not match.
        key = (app.current_event.path_parameters or {}).get("key", "")
        validate_key(key)
        return problem(NotFound("no such route"))

    return app


def request_key(event: APIGatewayProxyEventV2) -> str:
    """The validated key from the path (API Gateway has already URL-decoded it)."""
    key = validate_key((event.path_parameters or {}).get("key", ""))
    logger.append_keys(key=key)
    annotate(key=key)
    return key


def authorized_principal(
    event: APIGatewayProxyEventV2, permission: str, key: str, role_policy: Callable[[], RolePolicy]
) -> Principal:
    """The caller, if it holds `permission` on `key` by scope or by role; Forbidden/Unauthenticated
    otherwise. The decision goes into the request's audit record. `role_policy` (runtime.role_policy in
    the handlers) loads the policy on the first call: a policy that does not load refuses the request."""
    principal, policy = authenticated_principal(event, role_policy)
    try:
        authorize(principal, permission, key, policy)
    except Forbidden:
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        raise
    audit.note_decision("allow")
    return principal


def note_override(keys: list[str]) -> None:
    """A protected key written directly under state:write:override (break glass): a decision of its own in
    the audit record, a metric the template alarms on, and a warning naming the keys (never a value)."""
    audit.note_decision("override")
    metrics.add_metric(name="ApprovalOverrides", unit="Count", value=1)
    logger.warning("protected key written under state:write:override", extra={"keys": keys[:25]})


def authenticated_principal(
    event: APIGatewayProxyEventV2, role_policy: Callable[[], RolePolicy]
) -> tuple[Principal, RolePolicy]:
    """The caller and the role policy, the decision noted as a denial until the caller allows it. A policy
    that does not load refuses the request (fail closed, not even scopes are honoured)."""
    audit.note_decision("deny")
    context = event.request_context.authorizer.get_lambda if event.request_context.authorizer else None
    principal = Principal.from_authorizer_context(context)
    logger.append_keys(actor=principal.subject)
    try:
        policy = role_policy()
    except PolicyError as exc:
        # Fail closed: without a valid policy no request is allowed, not even by scope.
        logger.error("role policy unavailable; refusing every request", extra={"reason": str(exc)})
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        raise Forbidden("the service's role policy is unavailable") from exc
    return principal, policy


def body_bytes(event: APIGatewayProxyEventV2) -> bytes:
    """The raw request body; over the pre-parse limit it is refused (413) before decoding or parsing."""
    body = event.body or ""
    if event.is_base64_encoded:
        # 4 base64 characters carry 3 bytes: refuse on the encoded length, before decoding.
        if len(body) // 4 * 3 > MAX_BODY_BYTES + 3:
            raise PayloadTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
        try:
            raw = base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise BadRequest("the body is not valid base64") from exc
    else:
        raw = body.encode("utf-8", "surrogatepass")
    check_body_size(raw)
    return raw


def require_content_type(event: APIGatewayProxyEventV2, *allowed: str) -> None:
    """415 unless the media type (parameters such as charset ignored) is one of `allowed`.
    A body without a Content-Type is taken as JSON."""
    header = event.headers.get("content-type")
    if header is None:
        return
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type not in allowed:
        raise UnsupportedMediaType(f"Content-Type must be one of {', '.join(allowed)}, not {media_type}")
    charset = re.search(r";\s*charset\s*=\s*\"?([^\s;\"]+)", header, re.IGNORECASE)
    if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("bodies are UTF-8 JSON")


def expectation(event: APIGatewayProxyEventV2, *, allow_if_none_match: bool) -> Expectation:
    """If-Match (one strong ETag or `*`) and, on PUT, If-None-Match: `*`."""
    if_match = event.headers.get("if-match")
    if_none_match = event.headers.get("if-none-match")
    expected: int | Literal["*"] | None = None
    if if_match is not None:
        if if_match.strip() == "*":
            expected = "*"
        else:
            match = ETAG.match(if_match)
            if match is None or match.group(1):
                raise BadRequest('If-Match must be * or one strong ETag such as "3"')
            expected = int(match.group(2))
    if if_none_match is not None:
        if not allow_if_none_match or if_none_match.strip() != "*":
            raise BadRequest("If-None-Match on a write must be * (create only), and only on PUT")
        if expected is not None:
            raise BadRequest("If-Match and If-None-Match cannot be combined")
    return Expectation(if_match=expected, if_none_match_any=if_none_match is not None)


def etag(version: int) -> str:
    return f'"{version}"'


def not_modified(event: APIGatewayProxyEventV2, version: int) -> bool:
    """True if If-None-Match names the current version (weak comparison, RFC 9110 §13.1.2) or is `*`."""
    header = event.headers.get("if-none-match")
    if header is None:
        return False
    if header.strip() == "*":
        return True
    for candidate in header.split(","):
        match = ETAG.match(candidate)
        if match is not None and int(match.group(2)) == version:
            return True
    return False


# RFC 7240's grammar for one preference: token [BWS "=" BWS word] *(OWS ";" [OWS parameter]), where a word
# is a token or a quoted string; parameters are read past (none is defined for `wait`).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 - RFC 9110's token, not a secret
_WORD = rf'(?:{_TOKEN}|"(?:[^"\\\x00-\x1f\x7f]|\\[\t\x20-\x7e])*")'
_PREFERENCE = re.compile(
    rf"[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_WORD}))?(?:[ \t]*;[ \t]*(?:{_TOKEN}(?:[ \t]*=[ \t]*{_WORD})?)?)*[ \t]*\Z"
)
_NAME = re.compile(rf"[ \t]*({_TOKEN})")
# Commas outside quoted strings separate preferences (API Gateway also joins repeated headers with them).
_ELEMENTS = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")+')
# Longer than any wait anyone means: clamped without converting an unbounded digit string.
_MAX_WAIT_DIGITS = 9


def requested_wait(event: APIGatewayProxyEventV2) -> int | None:
    """The seconds of RFC 7240's `Prefer: wait=<delta-seconds>`, or None when the request names no wait or a
    malformed one. As RFC 7240 asks, a preference is never an error: the first `wait` counts (later ones are
    ignored), and one that is not delta-seconds (negative, fractional, empty, other scripts' digits) is
    ignored like any preference the service does not understand, so the request is answered at once."""
    header = event.headers.get("prefer")
    if not header:
        return None
    for element in _ELEMENTS.findall(header):
        name = _NAME.match(element)
        if name is None or name.group(1).lower() != "wait":
            continue
        match = _PREFERENCE.match(element)
        word = match.group(2) if match is not None else None
        if word is None:
            return None
        digits = word[1:-1] if word.startswith('"') else word
        if re.fullmatch(r"[0-9]+", digits) is None:
            return None
        stripped = digits.lstrip("0") or "0"
        return int(stripped) if len(stripped) <= _MAX_WAIT_DIGITS else 10**_MAX_WAIT_DIGITS
    return None


def query_parameter(event: APIGatewayProxyEventV2, name: str) -> str | None:
    """A query parameter given once; given twice (API Gateway joins them with commas) it is ambiguous, 400."""
    value = (event.query_string_parameters or {}).get(name)
    if value is not None and "," in value:
        raise BadRequest(f"{name} must be given once")
    return value


def json_response(status: int, body: str) -> Response[str]:
    return Response(status_code=status, content_type=JSON_CONTENT_TYPE, body=body)


def consistent_read_requested(event: APIGatewayProxyEventV2) -> bool:
    value = query_parameter(event, "consistent")
    if value is None:
        return False
    if value not in ("true", "false"):
        raise BadRequest("consistent must be true or false")
    return value == "true"


def envelope_body(record: StateRecord, canonical_value: bytes | None) -> str:
    """The envelope as JSON; the value's canonical JSON is spliced in as stored, never re-encoded."""
    metadata = json.dumps(record.metadata_fields(), separators=(",", ":"), ensure_ascii=False)
    if canonical_value is None:
        return metadata
    return f'{metadata[:-1]},"value":{canonical_value.decode("utf-8")}}}'


def state_response(status: int, record: StateRecord, canonical_value: bytes | None) -> Response[str]:
    return Response(
        status_code=status,
        content_type=JSON_CONTENT_TYPE,
        body=envelope_body(record, canonical_value),
        headers={"ETag": etag(record.version)},
    )


def read_response(event: APIGatewayProxyEventV2, view: StateView) -> Response[str]:
    """200 with the envelope, or 304 when the client already holds this version."""
    if not_modified(event, view.record.version):
        return Response(status_code=304, headers={"ETag": etag(view.record.version)})
    return state_response(200, view.record, view.canonical_value)
