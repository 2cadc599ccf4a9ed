"""Per-function configuration, parsed from the environment once per container and validated.

The domain core never reads the environment; `runtime.py` parses these models and passes plain values in.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]):  # type: ignore[no-untyped-def]
        return cls.model_validate(dict(environ))


class ServiceSettings(_Settings):
    """The state functions (get, put, patch, delete)."""

    table_name: str = Field(validation_alias="STATE_TABLE_NAME", min_length=3)
    redis_url: str = Field(default="", validation_alias="STATE_REDIS_URL")
    # DESIGN §3: a PATCH that cannot win within its budget (at least 5 s) answers 503.
    patch_time_budget_seconds: float = Field(
        default=5.0, ge=5.0, le=25.0, validation_alias="STATE_PATCH_TIME_BUDGET_SECONDS"
    )


class AuthorizerSettings(_Settings):
    """The Lambda authorizer."""

    issuer: str = Field(validation_alias="STATE_OIDC_ISSUER", min_length=1)
    audience: str = Field(validation_alias="STATE_OIDC_AUDIENCE", min_length=1)
    # DESIGN §4: small leeway on exp/nbf/iat; issue 2 caps it at 60 s.
    leeway_seconds: int = Field(default=30, ge=0, le=60, validation_alias="STATE_OIDC_LEEWAY_SECONDS")
