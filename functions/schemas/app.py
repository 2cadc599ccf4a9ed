"""The value schema registry: `PUT /schemas/{name}` publishes a schema's next version, `GET /schemas` lists the
current versions, `GET /schemas/{name}?version=N` reads one version. Publishing needs `state:schema` on every
key the schema's patterns (old and new) match; reading needs `state:read` on some key they match.

A checked publish over stored values answers 202 with a check (`GET /schemas/{name}/checks/{id}`, which
needs `state:schema` on every key of its patterns). The check runs here too, in invocations of its own: this
function invokes itself asynchronously with `{"schema_check": {"name", "id"}}`, and each invocation advances
the check until its time runs short, then hands over to the next."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.domain.codec import parse_json
from state_core.domain.errors import BadRequest, Forbidden, NotFound
from state_core.domain.keys import validate_key
from state_core.domain.params import ascii_int
from state_core.domain.schemas import DEFAULT_CHECK_PAGE, MAX_CHECK_PAGE, validate_check_id, validate_name
from state_core.observability import lambda_entry, logger, metrics
from state_core.runtime import role_policy, schema_check_launcher, schema_registry
from state_core.security import audit
from state_core.security.principal import READ, SCHEMA

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from state_core.domain.schemas import SchemaCheck, SchemaVersion
    from state_core.security.policy import RolePolicy
    from state_core.security.principal import Principal

router = APIGatewayHttpRouter()

# A schema version number in a query: digits, within DynamoDB's number and the registry's growth.
MAX_SCHEMA_VERSION = 1_000_000_000
# Offending keys per page of a check.
# A check that recorded no progress for this long after settling lost its runner (an invocation that died
# and was not retried): reading it starts another. Longer than an invocation (15 minutes at most).
STALLED_CHECK_SECONDS = 960.0


def _readable(principal: Principal, policy: RolePolicy, schema: SchemaVersion) -> bool:
    return any(principal.allows_some_key_of(READ, pattern, policy) for pattern in schema.patterns)


def _body(schema: SchemaVersion, *, with_document: bool) -> dict[str, Any]:
    body = schema.summary()
    if with_document:
        body["schema"] = json.loads(schema.document)
    return body


@router.put(
    "/schemas/<name>",
    summary="Publish a value schema's next version (JSON Schema 2020-12) and the key patterns it governs",
    responses=edge.documented(
        lambda doc: {
            200: doc.SCHEMA_RESPONSE,
            201: {**doc.SCHEMA_RESPONSE, "description": "Published its first version"},
            202: doc.SCHEMA_CHECK_STARTED_RESPONSE,
            **doc.error_responses(400, 403, 409, 413, 415, 503),
        }
    ),
)
def put_schema(name: str) -> Response[str]:
    event = router.current_event
    audit.note_action("publish_schema")
    name = validate_name((event.path_parameters or {}).get("name", ""))
    mode = edge.query_parameter(event, "mode") or "checked"
    if mode not in ("checked", "forward"):
        raise BadRequest("mode must be forward (or absent)")
    edge.require_content_type(event, edge.JSON_CONTENT_TYPE)
    body = parse_json(edge.body_bytes(event))
    principal, policy = edge.authenticated_principal(event, role_policy)
    registry = schema_registry()
    patterns = body.get("patterns") if isinstance(body, dict) else None
    wanted = [p for p in patterns if isinstance(p, str)] if isinstance(patterns, list) else []
    # The patterns it governs now as well: a narrower grant must not take over another owner's schema.
    for pattern in [*wanted, *registry.previous_patterns(name)]:
        if not principal.allows_pattern(SCHEMA, pattern, policy):
            metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
            raise Forbidden(f"{SCHEMA} is not granted on every key of {pattern}")
    audit.note_decision("allow")
    published, created, check = registry.publish(name, body, actor=principal.subject, mode=mode)
    audit.note_items([{"schema": published.name, "version": published.version, "mode": published.mode}])
    if check is not None:
        metrics.add_metric(name="SchemaChecksStarted", unit="Count", value=1)
        _launch(check)
        location = f"/schemas/{check.name}/checks/{check.id}"
        return Response(
            status_code=202,
            content_type=edge.JSON_CONTENT_TYPE,
            body=json.dumps({**check.summary(), "offending_keys": [], "next_cursor": None}),
            headers={"Location": location},
        )
    metrics.add_metric(name="SchemasPublished", unit="Count", value=1)
    return edge.json_response(201 if created else 200, json.dumps(_body(published, with_document=True)))


def _launch(check: SchemaCheck) -> None:
    """Hand the check to an invocation of its own. If that fails the check is recorded all the same, and
    reading it once it has stalled starts it again."""
    launcher = schema_check_launcher()
    if launcher is None:
        return
    try:
        launcher(check.name, check.id)
    except Exception as exc:  # any failure to hand over leaves a stalled check, restarted when read
        logger.warning("schema check not handed over", extra={"check": check.id, "reason": type(exc).__name__})
        metrics.add_metric(name="SchemaCheckLaunchErrors", unit="Count", value=1)


@router.get(
    "/schemas/<name>/checks/<check_id>",
    summary="A check of a schema version against stored values: its state, progress and offending keys",
    responses=edge.documented(lambda doc: {200: doc.SCHEMA_CHECK_RESPONSE, **doc.error_responses(400, 404, 503)}),
)
def get_check(name: str, check_id: str) -> Response[str]:
    event = router.current_event
    audit.note_action("get_schema_check")
    parameters = event.path_parameters or {}
    name = validate_name(parameters.get("name", ""))
    check_id = validate_check_id(parameters.get("check_id", ""))
    raw_limit = edge.query_parameter(event, "limit")
    limit = DEFAULT_CHECK_PAGE if raw_limit is None else ascii_int(raw_limit, low=1, high=MAX_CHECK_PAGE)
    if limit is None:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_CHECK_PAGE}")
    cursor = edge.query_parameter(event, "cursor")
    after = None if cursor is None else validate_key(cursor)
    principal, policy = edge.authenticated_principal(event, role_policy)
    registry = schema_registry()
    check = registry.get_check(name, check_id)
    # The offending keys are the publisher's to see: the right to publish over every key of the patterns.
    if not all(principal.allows_pattern(SCHEMA, pattern, policy) for pattern in check.patterns):
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        raise NotFound(f"schema {name} has no check {check_id}")
    audit.note_decision("allow")
    if registry.stalled(check, after_seconds=STALLED_CHECK_SECONDS):
        _launch(check)
    offending, more = registry.offending_keys(check, after=after, limit=limit)
    audit.note_items([{"schema": check.name, "version": check.version, "check": check.id}])
    page = {
        **check.summary(),
        "offending_keys": [o.summary() for o in offending],
        "next_cursor": offending[-1].key if more and offending else None,
    }
    return edge.json_response(200, json.dumps(page))


@router.get(
    "/schemas",
    summary="The current version of every schema governing a key the caller may read",
    responses=edge.documented(lambda doc: {200: doc.SCHEMA_LIST_RESPONSE, **doc.error_responses(400, 503)}),
)
def list_schemas() -> Response[str]:
    event = router.current_event
    audit.note_action("list_schemas")
    principal, policy = edge.authenticated_principal(event, role_policy)
    audit.note_decision("allow")
    visible = [s for s in schema_registry().list_current() if _readable(principal, policy, s)]
    return edge.json_response(200, json.dumps({"schemas": [_body(s, with_document=False) for s in visible]}))


@router.get(
    "/schemas/<name>",
    summary="A schema's current version, or an older one with ?version=N",
    responses=edge.documented(lambda doc: {200: doc.SCHEMA_RESPONSE, **doc.error_responses(400, 403, 404, 503)}),
)
def get_schema(name: str) -> Response[str]:
    event = router.current_event
    audit.note_action("get_schema")
    name = validate_name((event.path_parameters or {}).get("name", ""))
    raw_version = edge.query_parameter(event, "version")
    version = None if raw_version is None else ascii_int(raw_version, low=1, high=MAX_SCHEMA_VERSION)
    if raw_version is not None and version is None:
        raise BadRequest(f"version must be an integer from 1 to {MAX_SCHEMA_VERSION}")
    principal, policy = edge.authenticated_principal(event, role_policy)
    registry = schema_registry()
    current = registry.get(name, None)
    # Readable by the keys it governs now: an unreadable schema answers as an absent one (no probing of names).
    if not _readable(principal, policy, current):
        metrics.add_metric(name="AuthorizationDenials", unit="Count", value=1)
        raise NotFound(f"schema {name} has no any version")
    audit.note_decision("allow")
    schema = current if version is None or version == current.version else registry.get(name, version)
    audit.note_items([{"schema": schema.name, "version": schema.version}])
    return edge.json_response(200, json.dumps(_body(schema, with_document=True)))


app = edge.build_resolver(router)


def run_check(request: Any, context: LambdaContext) -> dict[str, Any]:
    """One step of a check (an asynchronous invocation of this function by itself); hands over to the next
    while the check is unfinished."""
    if (
        not isinstance(request, dict)
        or not isinstance(request.get("name"), str)
        or not isinstance(request.get("id"), str)
    ):
        raise BadRequest('a check step is {"schema_check": {"name": ..., "id": ...}}')
    name, check_id = validate_name(request["name"]), validate_check_id(request["id"])
    check = schema_registry().run_check(
        name, check_id, seconds_left=lambda: context.get_remaining_time_in_millis() / 1000
    )
    logger.info(
        "schema check step",
        extra={"check": check.id, "state": check.state, "checked": check.progress.checked},
    )
    if not check.finished:
        _launch(check)
    return check.summary()


@lambda_entry("schemas")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "schema_check" in event:
        return run_check(event["schema_check"], context)
    return app.resolve(event, context)
