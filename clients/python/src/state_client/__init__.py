"""Client for the JSON state service: `AsyncStateClient` and `StateClient` (docs/client.md)."""

from state_client._async import AsyncStateClient
from state_client._protocol import ModifyPolicy, RetryPolicy
from state_client._sync import StateClient
from state_client.auth import AuthError, ClientCredentials, TokenSource
from state_client.errors import (
    BadRequest,
    Forbidden,
    Gone,
    NotFound,
    PreconditionFailed,
    RateLimited,
    RetryableError,
    ServerError,
    StateError,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unprocessable,
    WriteOutcomeUnknown,
)
from state_client.models import (
    JSON,
    Change,
    Envelope,
    KeyInfo,
    OperationResult,
    Page,
    Resync,
    TransactionResult,
    VersionInfo,
    WatchEvent,
)

__all__ = [
    "JSON",
    "AsyncStateClient",
    "AuthError",
    "BadRequest",
    "Change",
    "ClientCredentials",
    "Envelope",
    "Forbidden",
    "Gone",
    "KeyInfo",
    "ModifyPolicy",
    "NotFound",
    "OperationResult",
    "Page",
    "PreconditionFailed",
    "RateLimited",
    "Resync",
    "RetryPolicy",
    "RetryableError",
    "ServerError",
    "StateClient",
    "StateError",
    "TokenSource",
    "TooLarge",
    "TransactionResult",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "VersionInfo",
    "WatchEvent",
    "WriteOutcomeUnknown",
]
