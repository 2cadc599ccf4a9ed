"""PUT /state/{key}: create or replace a key's value."""

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core import api
from state_core.auth import WRITE
from state_core.codec import parse_json
from state_core.models import PutStateRequest
from state_core.observability import lambda_entry
from state_core.runtime import state_manager

router = APIGatewayHttpRouter()


@router.put(
    "/state/<key>",
    summary="Create or replace a key's value",
    responses={
        200: api.METADATA_RESPONSE,
        201: {**api.METADATA_RESPONSE, "description": "Created"},
        **api.error_responses(400, 403, 404, 412, 413, 415, 422, 503),
    },
)
def put_state(key: str):
    event = router.current_event
    key = api.request_key(event)
    principal = api.authorized_principal(event, WRITE, key)
    expect = api.expectation(event, allow_if_none_match=True)
    api.require_content_type(event, api.JSON_CONTENT_TYPE)
    request = api.validated(PutStateRequest, parse_json(api.body_bytes(event)))
    result = state_manager().put(
        key, request.value, actor=principal.subject, ttl_seconds=request.ttl_seconds, expect=expect
    )
    return api.state_response(201 if result.created else 200, result.record, None)


app = api.build_resolver(router)


@lambda_entry("put")
def lambda_handler(event, context):
    return app.resolve(event, context)
