"""The request bodies the service validates: PUT's `{"value": <any JSON>, "ttl_seconds": <whole seconds>}`.

Checked here by hand, not with the pydantic model that documents the body (api/models.py, which the OpenAPI
document is generated from): PUT is the one function with a body, and importing pydantic for two fields cost
it about 60 ms of every cold start. tests/unit/test_put_body.py holds the two to the same answers on every
body, generated ones included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from state_core.domain.errors import BadRequest, UnprocessableBody
from state_core.domain.records import MAX_TTL_SECONDS

_MODEL = "PutStateRequest"  # the documented schema's name, which the errors cite
_MEMBERS = ("value", "ttl_seconds")


@dataclass(frozen=True, slots=True)
class PutBody:
    value: Any
    ttl_seconds: int | None = None


def parse_put_body(data: Any) -> PutBody:
    """`data` (parsed JSON) as a PUT body; 422 when its shape is wrong, 400 when only `ttl_seconds` is (a bad
    parameter in a body of the right shape). Errors name the members, never their values."""
    if not isinstance(data, dict):
        raise UnprocessableBody(f"the body does not match {_MODEL}: body: must be a JSON object")
    unknown = [name for name in data if name not in _MEMBERS]
    # Names a client chose, so shown short and few: the answer never grows with what was sent.
    reasons = [f"{name[:40]!r}: not a member of the body" for name in unknown[:5]]
    if len(unknown) > 5:
        reasons.append(f"and {len(unknown) - 5} more members that are not")
    if "value" not in data:
        reasons.append("value: required")
    if reasons:
        raise UnprocessableBody(f"the body does not match {_MODEL}: {'; '.join(reasons)}")
    return PutBody(data["value"], _ttl_seconds(data.get("ttl_seconds")))


def _ttl_seconds(raw: Any) -> int | None:
    # JSON has one number type, and JSON Schema's "integer" is any number with a zero fractional part, so a
    # client may well send 3600.0; strings, booleans and 1.5 are refused.
    if raw is None:
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if type(raw) is not int or not 1 <= raw <= MAX_TTL_SECONDS:
        raise BadRequest(
            f"the body does not match {_MODEL}: ttl_seconds: must be a whole number of seconds from 1 to "
            f"{MAX_TTL_SECONDS}"
        )
    return raw
