"""PUT's body as a pydantic model: the documented contract the OpenAPI document is generated from (and the
reference tests/unit/test_put_body.py holds the request path's own check, api/bodies.py, to). The responses'
models are in api/openapi.py. Neither is imported by a function."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from state_core.api.batch import MAX_BATCH_KEYS
from state_core.domain.keys import KEY_PATTERN
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

    model_config = ConfigDict(extra="forbid", defer_build=True)

    value: Any = Field(description="Any JSON value; its canonical form is at most 1 MiB.")
    ttl_seconds: TtlSeconds | None = Field(
        default=None,
        description="Expire the key this many seconds after the write.",
    )


class BatchGetRequest(BaseModel):
    """Body of `POST /state:batchGet`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    keys: list[Annotated[str, Field(pattern=f"^{KEY_PATTERN}$")]] = Field(
        min_length=1,
        max_length=MAX_BATCH_KEYS,
        json_schema_extra={"uniqueItems": True},
        description="1 to 100 distinct keys; the answer lists them in this order.",
    )
    snapshot: bool = Field(
        default=False,
        description="true: read every key from DynamoDB in one transaction (TransactGetItems), one point in time"
        " across the keys; never from the cache.",
    )
    consistent: bool = Field(
        default=False, description="true: read DynamoDB with strongly consistent reads, bypassing the cache."
    )


IfMatch = Annotated[StrictInt, Field(ge=1)] | Literal["*"]


class _Operation(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    key: str = Field(pattern=f"^{KEY_PATTERN}$", description="A state key; each key at most once in a transaction.")


class PutOperation(_Operation):
    op: Literal["put"]
    value: Any = Field(description="Any JSON value; stored (compressed) it must fit its item, 350,000 bytes.")
    ttl_seconds: TtlSeconds | None = None
    if_match: IfMatch | None = Field(default=None, description='The key is at this version ("*": it exists).')
    if_none_match: Literal["*"] | None = Field(default=None, description="The key does not exist.")


class PatchOperation(_Operation):
    op: Literal["patch"]
    patch: Any = Field(description="A JSON Merge Patch (RFC 7396). The key must exist.")
    if_match: IfMatch | None = None


class DeleteOperation(_Operation):
    op: Literal["delete"]
    if_match: IfMatch | None = Field(default=None, description="The key must exist, at this version if given.")


class CheckOperation(_Operation):
    op: Literal["check"]
    if_match: IfMatch | None = Field(default=None, description="One of if_match and if_none_match is required.")
    if_none_match: Literal["*"] | None = None


class TransactRequest(BaseModel):
    """Body of `POST /state:transact`: 1-25 operations on distinct keys, applied all or nothing."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    operations: list[
        Annotated[PutOperation | PatchOperation | DeleteOperation | CheckOperation, Field(discriminator="op")]
    ] = Field(min_length=1, max_length=25)
