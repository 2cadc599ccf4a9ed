"""The HTTP API's bodies as pydantic models: PUT's request is validated with its model; the others
document the responses (built without a model on the request path) in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from state_core.domain.records import MAX_TTL_SECONDS


def _whole_number(value: Any) -> Any:
    # JSON has one number type, and JSON Schema's "integer" is any number with a zero fractional part, so a
    # client may well send 3600.0. Strings, bools and 1.5 still reach StrictInt and are refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


TtlSeconds = Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS), BeforeValidator(_whole_number)]


class PutStateRequest(BaseModel):
    """Body of `PUT /state/{key}`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # only PUT validates it

    value: Any = Field(description="Any JSON value; its canonical form is at most 1 MiB.")
    ttl_seconds: TtlSeconds | None = Field(
        default=None,
        description="Expire the key this many seconds after the write.",
    )


class StateMetadata(BaseModel):
    """The envelope without its value: what PUT answers."""

    # Responses are built from StateRecord.metadata_fields(); the model documents them (OpenAPI).
    model_config = ConfigDict(defer_build=True)

    key: str
    version: int = Field(description="1 on first write, +1 on every change, never reused.")
    created_at: str = Field(description="RFC 3339 UTC time the key was (re)created.")
    updated_at: str
    updated_by: str = Field(description="Subject of the caller that made the last change.")
    expires_at: str | None = Field(description="RFC 3339 UTC expiry, or null when the key has no TTL.")


class StateEnvelope(StateMetadata):
    """What GET and PATCH answer."""

    value: Any = Field(description="The stored JSON value.")


class Problem(BaseModel):
    """RFC 9457 problem document, the body of every error the service itself answers."""

    model_config = ConfigDict(defer_build=True)

    type: str
    title: str
    status: int
    detail: str
    current_version: int | None = Field(default=None, description="On 412: the key's current version.")


class GatewayMessage(BaseModel):
    """API Gateway's own answer (401, 403, 404, 413, 429), e.g. {"message": "Unauthorized"}."""

    model_config = ConfigDict(defer_build=True)

    message: str
