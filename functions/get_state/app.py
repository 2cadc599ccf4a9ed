"""GET /state/{key}: read a key's current state, or one of its versions (`?version=N`), or long-poll it
(`If-None-Match` with `Prefer: wait=N`); GET /state/{key}/history: list its versions. Both are reads with
`state:read` on the key, so one function and one read-only role serve them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core.api import edge
from state_core.api.history import page_body, page_limit, requested_version
from state_core.domain.errors import NotFound
from state_core.observability import lambda_entry
from state_core.runtime import change_waiter, history_reader, role_policy, state_manager
from state_core.security import audit
from state_core.security.principal import READ

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

router = APIGatewayHttpRouter()


@router.get(
    "/state/<key>",
    summary="Read a key's current state, or one of its versions; with If-None-Match and Prefer: wait=N, long-poll",
    responses=edge.documented(
        lambda doc: {
            200: {**doc.ENVELOPE_RESPONSE, "headers": {**doc.ETAG_HEADER, **doc.PREFERENCE_APPLIED_HEADER}},
            304: {"description": "Not modified", "headers": {**doc.ETAG_HEADER, **doc.PREFERENCE_APPLIED_HEADER}},
            **doc.error_responses(400, 403, 404, 503),
            410: doc.GONE_RESPONSE,
        }
    ),
)
def get_state(key: str) -> Response[str]:
    event = router.current_event
    # Noted first, so that a request refused for its key or version is still told apart in the audit.
    audit.note_action("get_version" if "version" in (event.query_string_parameters or {}) else "get")
    key = edge.request_key(event)
    edge.authorized_principal(event, READ, key, role_policy)
    # Both parsed before either is used: a malformed parameter is a 400 whichever read it would steer.
    version = requested_version(edge.query_parameter(event, "version"))
    consistent = edge.consistent_read_requested(event)
    if version is not None:
        record, value = history_reader().version(key, version)
        return edge.state_response(200, record, value)
    wait = edge.requested_wait(event)
    if wait is None or "if-none-match" not in event.headers:
        return edge.read_response(event, state_manager().get(key, consistent=consistent))
    # A long-poll: answered as soon as the key's version is not one the client holds, else 304 at the end.
    waiter = change_waiter()
    seconds = waiter.applicable_wait(wait)
    applied = {"Preference-Applied": f"wait={seconds}"}
    try:
        view = waiter.wait(
            key,
            unchanged=lambda version: edge.not_modified(event, version),
            wait_seconds=seconds,
            consistent=consistent,
        )
    except NotFound as missing:
        return edge.problem(missing, applied)
    response = edge.read_response(event, view)
    response.headers.update(applied)
    return response


@router.get(
    "/state/<key>/history",
    summary="List a key's versions, newest first",
    responses=edge.documented(lambda doc: {200: doc.HISTORY_RESPONSE, **doc.error_responses(400, 403, 404, 503)}),
)
def get_history(key: str) -> Response[str]:
    event = router.current_event
    audit.note_action("list_history")
    key = edge.request_key(event)
    edge.authorized_principal(event, READ, key, role_policy)
    limit = page_limit(edge.query_parameter(event, "limit"))
    page = history_reader().list(key, limit=limit, cursor=edge.query_parameter(event, "cursor"))
    return edge.json_response(200, page_body(page))


app = edge.build_resolver(router)


@lambda_entry("get")
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
