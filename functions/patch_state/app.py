"""PATCH /state/{key}: JSON Merge Patch (RFC 7396) of a key's value."""

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from state_core import api
from state_core.auth import WRITE
from state_core.codec import parse_json
from state_core.observability import lambda_entry
from state_core.runtime import state_manager

router = APIGatewayHttpRouter()


@router.patch(
    "/state/<key>",
    summary="Merge-patch a key's value (RFC 7396)",
    responses={200: api.ENVELOPE_RESPONSE, **api.error_responses(400, 403, 404, 412, 413, 415, 422, 503)},
)
def patch_state(key: str):
    event = router.current_event
    key = api.request_key(event)
    principal = api.authorized_principal(event, WRITE, key)
    expect = api.expectation(event, allow_if_none_match=False)
    api.require_content_type(event, api.MERGE_PATCH_CONTENT_TYPE, api.JSON_CONTENT_TYPE)
    patch = parse_json(api.body_bytes(event))
    result, merged = state_manager().patch(key, patch, actor=principal.subject, expect=expect)
    return api.state_response(200, result.record, merged)


app = api.build_resolver(router)


@lambda_entry("patch")
def lambda_handler(event, context):
    return app.resolve(event, context)
