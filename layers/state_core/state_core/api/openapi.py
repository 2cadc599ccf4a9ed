"""The routes' responses as the OpenAPI document declares them, with the pydantic models of their bodies.

Only scripts/openapi.py imports this (through edge.documented): the handlers build their bodies without
these models and the resolver does not validate, so at run time they would only cost every function's
cold start pydantic and the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from state_core.api.edge import JSON_CONTENT_TYPE, PROBLEM_CONTENT_TYPE

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.types import (
        OpenAPIResponse,
        OpenAPIResponseContentModel,
        OpenAPIResponseContentSchema,
        OpenAPIResponseHeader,
    )


class SchemaStampModel(BaseModel):
    """The value schema a version's value was checked against when it was written."""

    model_config = ConfigDict(defer_build=True)

    name: str
    version: int


_SCHEMA_STAMP = (
    "The value schema (name, version) the value was checked against when written; absent when no schema"
    " governed the key."
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
    schema_: SchemaStampModel | None = Field(default=None, alias="schema", description=_SCHEMA_STAMP)


class StateEnvelope(StateMetadata):
    """What GET and PATCH answer."""

    value: Any = Field(description="The stored JSON value.")


class FailedOperationModel(BaseModel):
    """An operation of a transaction whose condition failed."""

    model_config = ConfigDict(defer_build=True)

    index: int = Field(description="Its position in `operations`, from 0.")
    key: str
    current_version: int | None = Field(description="The key's current version; null if it does not exist.")


class Problem(BaseModel):
    """RFC 9457 problem document, the body of every error the service itself answers."""

    model_config = ConfigDict(defer_build=True)

    type: str
    title: str
    status: int
    detail: str
    current_version: int | None = Field(default=None, description="On 412: the key's current version.")
    failed_operations: list[FailedOperationModel] | None = Field(
        default=None, description="On a transaction's 412: each operation whose condition failed."
    )


class GatewayMessage(BaseModel):
    """API Gateway's own answer (401, 403, 404, 413, 429), e.g. {"message": "Unauthorized"}."""

    model_config = ConfigDict(defer_build=True)

    message: str


class HistoryEntryModel(BaseModel):
    """One version in `GET /state/{key}/history`."""

    model_config = ConfigDict(defer_build=True)

    version: int
    operation: Literal["created", "updated", "deleted", "expired"]
    actor: str = Field(description="Subject of the caller that made the change (system:ttl for an expiry).")
    occurred_at: str = Field(description="RFC 3339 UTC time of the change.")
    size: int | None = Field(description="Bytes of the value's canonical JSON; null for a deletion or expiry.")
    transaction_id: str | None = Field(
        default=None, description="Only on a version a transaction wrote (POST /state:transact): its id."
    )
    proposal_id: str | None = Field(
        default=None, description="Only on a version an approved proposal applied (its actor is the proposer)."
    )
    approved_by: list[str] | None = Field(default=None, description="With proposal_id: who approved it.")
    schema_: SchemaStampModel | None = Field(default=None, alias="schema", description=_SCHEMA_STAMP)


class HistoryPageModel(BaseModel):
    """A page of a key's versions, newest first."""

    model_config = ConfigDict(defer_build=True)

    key: str
    versions: list[HistoryEntryModel]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ListedKeyModel(BaseModel):
    """One key in `GET /state?prefix=`."""

    model_config = ConfigDict(defer_build=True)

    key: str
    version: int
    updated_at: str = Field(description="RFC 3339 UTC time of the key's last change.")
    size: int = Field(description="Bytes of the value's canonical JSON.")
    expires_at: str | None = Field(description="RFC 3339 UTC expiry, or null when the key has no TTL.")
    value: Any = Field(default=None, description="With include=value: the stored JSON value (absent otherwise).")
    value_omitted: bool | None = Field(
        default=None,
        description="With include=value: true when the value is not in the page (a large value, stored as a"
        " blob, or one that fails its checks): read it with GET /state/{key}.",
    )
    schema_: SchemaStampModel | None = Field(
        default=None, alias="schema", description=f"With include=value and the value listed: {_SCHEMA_STAMP}"
    )


class ListPageModel(BaseModel):
    """A page of the keys under a prefix that the caller may read, in key order."""

    model_config = ConfigDict(defer_build=True)

    prefix: str
    keys: list[ListedKeyModel]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (same caller, same prefix) for the next page; null on the last page."
    )


class BatchGetItemModel(BaseModel):
    """One key's answer in `POST /state:batchGet`: its envelope (status 200), or its own problem document."""

    model_config = ConfigDict(defer_build=True)

    key: str
    status: Literal[200, 403, 404, 503] = Field(
        description="200: the key's envelope; 403: not readable by the caller (never says whether it exists);"
        " 404: absent, deleted or expired; 503: its stored value is unreadable."
    )
    version: int | None = Field(default=None, description="On 200.")
    created_at: str | None = Field(default=None, description="On 200.")
    updated_at: str | None = Field(default=None, description="On 200.")
    updated_by: str | None = Field(default=None, description="On 200.")
    expires_at: str | None = Field(default=None, description="On 200: the RFC 3339 UTC expiry, or null.")
    schema_: SchemaStampModel | None = Field(default=None, alias="schema", description=f"On 200: {_SCHEMA_STAMP}")
    value: Any = Field(default=None, description="On 200: the stored JSON value, unless value_omitted.")
    value_omitted: bool | None = Field(
        default=None,
        description="On 200: true when the value would take the answer past its size limit (6 MB): read it"
        " with GET /state/{key}?version=<version>, which answers exactly this version.",
    )
    problem: Problem | None = Field(default=None, description="On 403, 404, 503: the key's problem document.")


class BatchGetResponseModel(BaseModel):
    """The answer of `POST /state:batchGet`: one item per requested key, in request order."""

    model_config = ConfigDict(defer_build=True)

    snapshot: bool = Field(description="Whether the items were read as of one point in time.")
    items: list[BatchGetItemModel]


_ERROR_DESCRIPTIONS = {
    400: "Invalid key, JSON, body, header or query parameter",
    401: "No bearer token (API Gateway)",
    403: "Not allowed for this key; or the token was refused (API Gateway)",
    404: "Absent, deleted or expired; or no such route (API Gateway)",
    412: "Precondition failed",
    413: "Value or body too large; or the request is over API Gateway's limits",
    409: (
        "A schema publish refused: patterns overlapping another schema's, or another publish came first; or a"
        " proposal no longer open (proposal-closed) or whose key moved on from its base version (proposal-stale)"
    ),
    410: "The proposal expired (proposal-expired)",
    415: "Unsupported media type",
    422: "Body of the wrong shape; or a value its key's schema refuses (schema-violation: each violation listed)",
    429: "Throttled by the API's stage limits (API Gateway); retry later",
    503: (
        "Nothing written: DynamoDB slow or unavailable, or PATCH lost its retries (service-unavailable);"
        " or a write whose outcome is unknown (write-outcome-unknown): read the key, or retry with If-Match."
        " Or the stored value is unreadable (stored-value-unreadable). See Retry-After"
    ),
}
# What API Gateway answers itself, before or instead of a function, with its own {"message": ...} body.
_GATEWAY_STATUSES = frozenset({401, 403, 404, 413, 429})
# What a function answers, as an RFC 9457 problem document.
_SERVICE_STATUSES = frozenset({400, 403, 404, 409, 410, 412, 413, 415, 422, 503})


def error_responses(*statuses: int) -> dict[int, OpenAPIResponse]:
    """The OpenAPI responses of the error statuses an operation can answer, the gateway's included."""
    responses: dict[int, OpenAPIResponse] = {}
    for status in sorted({*statuses, *_GATEWAY_STATUSES}):
        content: dict[str, OpenAPIResponseContentSchema | OpenAPIResponseContentModel] = {}
        if status in _SERVICE_STATUSES:
            content[PROBLEM_CONTENT_TYPE] = {"model": Problem}
        if status in _GATEWAY_STATUSES:
            content[JSON_CONTENT_TYPE] = {"model": GatewayMessage}
        responses[status] = {"description": _ERROR_DESCRIPTIONS[status], "content": content}
        if status == 503:
            responses[status]["headers"] = RETRY_AFTER_HEADER
    return responses


def _required_header(description: str, pattern: str) -> OpenAPIResponseHeader:
    # Powertools' OpenAPIResponseHeader lacks OpenAPI's `required`, which it passes through to the document.
    return cast(
        "OpenAPIResponseHeader",
        {"description": description, "required": True, "schema": {"type": "string", "pattern": pattern}},
    )


# The version as a strong entity tag: on every answer that names a version (200, 201, 204, 304).
ETAG_HEADER = {"ETag": _required_header('The version as a strong entity tag, e.g. "3".', '^"[0-9]+"$')}
RETRY_AFTER_HEADER = {"Retry-After": _required_header("Seconds to wait before retrying.", "^[0-9]+$")}
# A long-poll's answer (If-None-Match with `Prefer: wait=N`, RFC 7240): the wait it was given.
PREFERENCE_APPLIED_HEADER = {
    "Preference-Applied": cast(
        "OpenAPIResponseHeader",
        {
            "description": "On a long-poll's answer: the wait applied, e.g. wait=25 (longer waits are clamped).",
            "schema": {"type": "string", "pattern": "^wait=[0-9]+$"},
        },
    )
}
ENVELOPE_RESPONSE: OpenAPIResponse = {
    "description": "The state",
    "headers": ETAG_HEADER,
    "content": {JSON_CONTENT_TYPE: {"model": StateEnvelope}},
}
GONE_RESPONSE: OpenAPIResponse = {
    "description": "The version existed but is beyond the history's retention",
    "content": {PROBLEM_CONTENT_TYPE: {"model": Problem}},
}
HISTORY_RESPONSE: OpenAPIResponse = {
    "description": "A page of the key's versions, newest first",
    "content": {JSON_CONTENT_TYPE: {"model": HistoryPageModel}},
}
LIST_RESPONSE: OpenAPIResponse = {
    "description": "A page of the keys under the prefix that the caller may read, in key order",
    "content": {JSON_CONTENT_TYPE: {"model": ListPageModel}},
}
METADATA_RESPONSE: OpenAPIResponse = {
    "description": "The state's metadata",
    "headers": ETAG_HEADER,
    "content": {JSON_CONTENT_TYPE: {"model": StateMetadata}},
}
BATCH_GET_RESPONSE: OpenAPIResponse = {
    "description": "One item per requested key, in request order, each with its own status",
    "content": {JSON_CONTENT_TYPE: {"model": BatchGetResponseModel}},
}


class TransactionResultItemModel(BaseModel):
    """One operation of an applied transaction, in request order."""

    model_config = ConfigDict(defer_build=True)

    index: int
    op: Literal["put", "patch", "delete", "check"]
    key: str
    version: int | None = Field(
        description="The key's new version (a delete: its tombstone's); a check: the version it checked, null if"
        " it checked that the key does not exist."
    )
    created: bool = Field(description="A put or patch that started a new life of the key (as PUT's 201).")


class TransactionResultModel(BaseModel):
    """An applied transaction."""

    model_config = ConfigDict(defer_build=True)

    transaction_id: str = Field(description="Also in each written version's StateChanged event and history item.")
    results: list[TransactionResultItemModel]


TRANSACTION_RESPONSE: OpenAPIResponse = {
    "description": "Applied, all of it; or, with Idempotent-Replayed: true, the first outcome of this Idempotency-Key",
    "content": {JSON_CONTENT_TYPE: {"model": TransactionResultModel}},
}


class SchemaSummaryModel(BaseModel):
    """A value schema's version: its name, number, the key patterns it governs and how it was published."""

    model_config = ConfigDict(defer_build=True)

    name: str
    version: int
    patterns: list[str] = Field(description="Exact keys, or key prefixes followed by *.")
    mode: Literal["checked", "forward"] = Field(
        description="forward: published with ?mode=forward, for future writes only (stored values not checked);"
        " checked: every value stored under its patterns satisfied it (or none was stored)."
    )
    created_at: str
    created_by: str


class SchemaModel(SchemaSummaryModel):
    schema_: dict[str, Any] | bool = Field(alias="schema", description="The JSON Schema (draft 2020-12).")


class SchemaListModel(BaseModel):
    model_config = ConfigDict(defer_build=True)

    schemas: list[SchemaSummaryModel]


class OffendingViolationModel(BaseModel):
    model_config = ConfigDict(defer_build=True)

    pointer: str = Field(description="JSON Pointer (RFC 6901) into the value.")
    message: str = Field(description="The validator's message; the value itself shows as (value).")


class OffendingKeyModel(BaseModel):
    """A key whose current value the checked version refuses."""

    model_config = ConfigDict(defer_build=True)

    key: str
    violation_count: int
    violations: list[OffendingViolationModel] = Field(description="The first 3 of its violations.")


class SchemaCheckModel(BaseModel):
    """A check of a schema version against the values already stored under its patterns."""

    model_config = ConfigDict(defer_build=True)

    id: str = Field(description="32 hexadecimal digits.")
    name: str
    version: int = Field(description="The version being checked: published only if the check passes.")
    patterns: list[str]
    state: Literal["settling", "running", "passed", "refused"] = Field(
        description="settling: waiting for writes checked without the version to land; running: reading values;"
        " passed: every value satisfied it, the version is published; refused: some did not, it is not."
    )
    keys_checked: int
    offending_key_count: int = Field(description="Offending keys found so far (the first 1,000 are listed).")
    created_at: str
    created_by: str
    finished_at: str | None
    offending_keys: list[OffendingKeyModel] = Field(description="A page of offending keys, in key order.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page of offending keys.")


SCHEMA_CHECK_RESPONSE: OpenAPIResponse = {
    "description": "The check as it stands, with a page of the offending keys found so far",
    "content": {JSON_CONTENT_TYPE: {"model": SchemaCheckModel}},
}
SCHEMA_CHECK_STARTED_RESPONSE: OpenAPIResponse = {
    "description": "Stored values are governed: the version is pending until its check (Location) ends",
    "headers": {"Location": _required_header("The check: /schemas/{name}/checks/{id}.", "^/schemas/")},
    "content": {JSON_CONTENT_TYPE: {"model": SchemaCheckModel}},
}
SCHEMA_RESPONSE: OpenAPIResponse = {
    "description": "The schema's version",
    "content": {JSON_CONTENT_TYPE: {"model": SchemaModel}},
}
SCHEMA_LIST_RESPONSE: OpenAPIResponse = {
    "description": "The current version of every schema governing a key the caller may read, by name",
    "content": {JSON_CONTENT_TYPE: {"model": SchemaListModel}},
}


class ProposalModel(BaseModel):
    """A proposed change of a protected key (approvals.md)."""

    model_config = ConfigDict(defer_build=True)

    id: str
    key: str
    operation: Literal["put", "patch", "delete"]
    status: Literal["open", "applied", "rejected", "withdrawn", "expired", "stale"]
    proposer: str
    created_at: str
    expires_at: str = Field(description="RFC 3339 UTC; after it the proposal answers 410.")
    base_version: int = Field(description="The key's version the change applies to (0: the key was never written).")
    approvals_required: int
    approved_by: list[str] = Field(description="The subjects whose approval counted, each once.")
    approval_comments: dict[str, str] = Field(description="Approvers' comments, by subject.")
    ttl_seconds: int | None = Field(description="A PUT's TTL, counted from when the change is applied.")
    decided_by: str | None = Field(description="Who rejected or withdrew it.")
    decided_at: str | None
    comment: str | None = Field(description="The rejection's or withdrawal's comment.")
    applied_version: int | None = Field(description="The version its application wrote.")
    current_version: int | None = Field(description="When stale: the key's version that made it so.")


class ProposalReviewModel(ProposalModel):
    """A proposal with what it would write: the resulting value and a JSON Patch (RFC 6902) against the base."""

    value: Any = Field(description="The value the change writes (null for a delete).")
    patch: Any = Field(default=None, description="A PATCH's merge patch (RFC 7396), as proposed.")
    diff: list[dict[str, Any]] | None = Field(
        description="RFC 6902 operations from the base version's value to `value`; null once the key moved on."
    )


class ProposalListModel(BaseModel):
    model_config = ConfigDict(defer_build=True)

    proposals: list[ProposalModel] = Field(description="Open proposals, oldest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last one.")


PROPOSAL_CREATED_RESPONSE: OpenAPIResponse = {
    "description": "The key is protected: the change is a proposal waiting for approvals (Location names it)",
    "content": {JSON_CONTENT_TYPE: {"model": ProposalModel}},
    "headers": {"Location": {"description": "/state/{key}/proposals/{id}", "schema": {"type": "string"}}},
}
PROPOSAL_RESPONSE: OpenAPIResponse = {
    "description": "The proposal",
    "content": {JSON_CONTENT_TYPE: {"model": ProposalModel}},
}
PROPOSAL_REVIEW_RESPONSE: OpenAPIResponse = {
    "description": "The proposal with its resulting value and diff",
    "content": {JSON_CONTENT_TYPE: {"model": ProposalReviewModel}},
}
PROPOSAL_LIST_RESPONSE: OpenAPIResponse = {
    "description": "A page of the key's open proposals",
    "content": {JSON_CONTENT_TYPE: {"model": ProposalListModel}},
}
