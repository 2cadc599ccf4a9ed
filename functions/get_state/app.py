"""GET /state/{key}: read a key's current state, or one of its versions (`?version=N`);
GET /state/{key}/history: list its versions (issue 9). Both are reads with `state:read` on the key."""

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core import api, audit
from state_core.auth import READ
from state_core.history import page_limit, requested_version
from state_core.observability import lambda_entry
from state_core.runtime import history_reader, state_manager

router = APIGatewayHttpRouter()


@router.get(
    "/state/<key>",
    summary="Read a key's current state, or one of its versions",
    responses={
        200: api.ENVELOPE_RESPONSE,
        304: {"description": "Not modified"},
        **api.ERROR_RESPONSES,
        410: api.GONE_RESPONSE,
    },
)
def get_state(key: str):
    event = router.current_event
    # Noted first, so that a request refused for its key or version is still told apart in the audit.
    audit.note_action("get_version" if "version" in (event.query_string_parameters or {}) else "get")
    key = api.request_key(event)
    api.authorized_principal(event, READ, key)
    version = requested_version(api.query_parameter(event, "version"))
    if version is not None:
        record, value = history_reader().version(key, version)
        return api.state_response(200, record, value)
    view = state_manager().get(key, consistent=api.consistent_read_requested(event))
    return api.read_response(event, view)


@router.get(
    "/state/<key>/history",
    summary="List a key's versions, newest first",
    responses={200: api.HISTORY_RESPONSE, **api.ERROR_RESPONSES},
)
def get_history(key: str):
    event = router.current_event
    audit.note_action("list_history")
    key = api.request_key(event)
    api.authorized_principal(event, READ, key)
    limit = page_limit(api.query_parameter(event, "limit"))
    page = history_reader().list(key, limit=limit, cursor=api.query_parameter(event, "cursor"))
    return api.json_response(200, page.body())


app = api.build_resolver(router)


@lambda_entry("get")
def lambda_handler(event, context):
    return app.resolve(event, context)
