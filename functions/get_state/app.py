"""GET /state/{key}: read a key's current state."""

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core import api
from state_core.auth import READ
from state_core.observability import lambda_entry
from state_core.runtime import state_manager

router = APIGatewayHttpRouter()


@router.get(
    "/state/<key>",
    summary="Read a key's current state",
    responses={200: api.ENVELOPE_RESPONSE, 304: {"description": "Not modified"}, **api.ERROR_RESPONSES},
)
def get_state(key: str):
    event = router.current_event
    key = api.request_key(event)
    api.authorized_principal(event, READ, key)
    view = state_manager().get(key, consistent=api.consistent_read_requested(event))
    return api.read_response(event, view)


app = api.build_resolver(router)


@lambda_entry("get")
def lambda_handler(event, context):
    return app.resolve(event, context)
