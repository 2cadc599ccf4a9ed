"""What the service reads and returns: API models (pydantic, for validation and the OpenAPI document)
and the record of a key's current state as the store holds it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt

from state_core.domain.codec import StoredValue
from state_core.storage.blobs import BlobRef

# TTLs from 1 s to 10 years: a bound keeps every expiry a representable time (10**30 s is not one), and
# 10 years is as good as no expiry.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


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


def rfc3339(moment: datetime) -> str:
    """UTC with millisecond precision and a `Z`, e.g. 2026-11-28T06:00:00.123Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A key's current item. A tombstone (`deleted`) keeps the version counter and has no value.

    A large value lives in a blob: `blob` names it, and `value` holds it only once it has been loaded.
    """

    key: str
    version: int
    deleted: bool
    value: StoredValue | None
    created_at: str | None
    updated_at: str
    updated_by: str
    expires_at: float | None  # epoch seconds, millisecond precision
    blob: BlobRef | None = None

    def is_live(self, now: datetime) -> bool:
        """Present, not deleted, not expired. Expiry is decided here, at read time, never by DynamoDB's TTL."""
        return not self.deleted and (self.expires_at is None or self.expires_at > now.timestamp())

    def metadata(self) -> StateMetadata:
        return StateMetadata(**self.metadata_fields())

    def metadata_fields(self) -> dict[str, Any]:
        """StateMetadata's fields in its order, as plain values: responses are built from these without
        a pydantic model on the request path (the model documents them in the OpenAPI document)."""
        return {
            "key": self.key,
            "version": self.version,
            "created_at": self.created_at or self.updated_at,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "expires_at": None if self.expires_at is None else rfc3339(datetime.fromtimestamp(self.expires_at, UTC)),
        }
