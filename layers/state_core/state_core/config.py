"""Per-function configuration, parsed from the environment once per container and validated.

The domain core never reads the environment; `runtime.py` parses these models and passes plain values in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def _is_loopback(host: str | None) -> bool:
    import ipaddress  # only where Redis is configured: every function (the authorizer too) imports this module

    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Settings(BaseModel):
    # Validators are built on first use, not at import: each function parses one of these models, and
    # building all three cost ~20 ms of every function's cold start.
    model_config = ConfigDict(frozen=True, extra="ignore", defer_build=True)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Self:
        return cls.model_validate(dict(environ))


class ServiceSettings(_Settings):
    """The state functions (get, put, patch, delete)."""

    table_name: str = Field(validation_alias="STATE_TABLE_NAME", min_length=3)
    # Empty: no cache, no locks (Redis is optional: DynamoDB alone is correct, only slower). `rediss://` for
    # TLS; the AUTH token comes separately.
    redis_url: str = Field(default="", validation_alias="STATE_REDIS_URL")
    # Secrets Manager ARNs, never the secrets: an environment is readable by anyone allowed
    # lambda:GetFunctionConfiguration, so the token and the cache's signing key are fetched at first use.
    redis_auth_secret_arn: str = Field(default="", validation_alias="STATE_REDIS_AUTH_SECRET_ARN")
    cache_signing_secret_arn: str = Field(default="", validation_alias="STATE_CACHE_SIGNING_SECRET_ARN")
    # Tens of milliseconds: a hung Redis costs at most this once per breaker window.
    redis_timeout_ms: int = Field(default=50, ge=5, le=1000, validation_alias="STATE_REDIS_TIMEOUT_MS")
    # Short: a writer whose breaker is open skips its write-through, so a recovered Redis must be retried
    # well within the 1 s the contract allows for stale reads. A dead Redis then costs one timeout per
    # container per window (50 ms every 0.5 s).
    redis_breaker_seconds: float = Field(default=0.5, ge=0.1, le=300.0, validation_alias="STATE_REDIS_BREAKER_SECONDS")
    # Bounds Redis memory, and how long an entry a failover rolled back can be served
    # (docs/design.md, "Lifetimes and memory").
    cache_ttl_seconds: int = Field(default=300, ge=60, le=86_400, validation_alias="STATE_CACHE_TTL_SECONDS")
    lock_lease_ms: int = Field(default=2000, ge=100, le=10_000, validation_alias="STATE_LOCK_LEASE_MS")
    lock_wait_ms: int = Field(default=2000, ge=0, le=5_000, validation_alias="STATE_LOCK_WAIT_MS")
    # A PATCH that cannot win within its budget (at least 5 s) answers 503 rather than retry without end.
    patch_time_budget_seconds: float = Field(
        default=5.0, ge=5.0, le=25.0, validation_alias="STATE_PATCH_TIME_BUDGET_SECONDS"
    )
    # The role policy (JSON); empty means the policy shipped in the layer (state_core/security/policy.json).
    policy_file: str = Field(default="", validation_alias="STATE_POLICY_FILE")
    # Every version is kept this long (the current version always, from the state item).
    history_retention_days: int = Field(default=90, ge=1, le=3650, validation_alias="STATE_HISTORY_RETENTION_DAYS")

    @model_validator(mode="after")
    def _redis_is_trusted_only_over_a_safe_link(self) -> ServiceSettings:
        if not self.redis_url:
            return self
        from urllib.parse import urlsplit

        parts = urlsplit(self.redis_url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError("STATE_REDIS_URL must be a redis:// or rediss:// URL")
        if parts.password is not None:
            raise ValueError(
                "STATE_REDIS_URL must not carry a password (the environment is readable by anyone allowed "
                "lambda:GetFunctionConfiguration); name the AUTH token's secret in STATE_REDIS_AUTH_SECRET_ARN"
            )
        if self.redis_auth_secret_arn and parts.scheme == "redis" and not _is_loopback(parts.hostname):
            # Over plain TCP the AUTH token (and every value) crosses the network readable and forgeable.
            raise ValueError(
                "STATE_REDIS_URL must be rediss:// (TLS) when an AUTH token is configured "
                "(STATE_REDIS_AUTH_SECRET_ARN); redis:// is accepted only for a loopback host"
            )
        if not self.cache_signing_secret_arn:
            # Without a key nothing read from Redis could be told from what an intruder wrote there.
            raise ValueError("STATE_REDIS_URL needs STATE_CACHE_SIGNING_SECRET_ARN: cache entries are signed")
        return self


class PublisherSettings(_Settings):
    """publish_changes: the stream's event publisher (its table and history settings are ServiceSettings')."""

    event_bus_name: str = Field(validation_alias="STATE_EVENT_BUS_NAME", min_length=1)
    event_source: str = Field(default="state.service", min_length=1, validation_alias="STATE_EVENT_SOURCE")
    dead_letter_queue_url: str = Field(validation_alias="STATE_EVENTS_DLQ_URL", min_length=1)
    # The value rides in the detail only while the detail stays under this (default 64 KB).
    # Capped well below EventBridge's 256 KB per entry, so an entry always fits a request.
    max_detail_bytes: int = Field(default=65_536, ge=1_024, le=200_000, validation_alias="STATE_EVENT_MAX_VALUE_BYTES")


class AuthorizerSettings(_Settings):
    """The Lambda authorizer."""

    issuer: str = Field(validation_alias="STATE_OIDC_ISSUER", min_length=1)
    audience: str = Field(validation_alias="STATE_OIDC_AUDIENCE", min_length=1)
    # Small leeway on exp/nbf/iat for clock skew; capped at 60 s so an expired token is not honoured for long.
    leeway_seconds: int = Field(default=30, ge=0, le=60, validation_alias="STATE_OIDC_LEEWAY_SECONDS")
    # Asymmetric algorithms only: `none` and HMAC (which a public key could "sign") can never be configured.
    algorithms: tuple[str, ...] = Field(default=("RS256", "ES256"), validation_alias="STATE_OIDC_ALGORITHMS")
    # e.g. `at+jwt` (RFC 9068); empty accepts no typ, `JWT` or `at+jwt` (tokens.py).
    required_typ: str = Field(default="", validation_alias="STATE_OIDC_REQUIRED_TYP")
    # ID tokens (Cognito `token_use: id`, Keycloak `typ: ID`, `at_hash`) are refused unless this is true:
    # an ID token's audience is the client that signed the user in, not this API.
    accept_id_tokens: bool = Field(default=False, validation_alias="STATE_OIDC_ACCEPT_ID_TOKENS")
    # exp - iat; a stolen long-lived token is refused even if signed.
    max_lifetime_seconds: int = Field(
        default=3600, ge=60, le=86_400, validation_alias="STATE_OIDC_MAX_LIFETIME_SECONDS"
    )
    # On top of these, the audience and subject claims are always required.
    required_claims: tuple[str, ...] = Field(
        default=("iss", "exp", "iat"), validation_alias="STATE_OIDC_REQUIRED_CLAIMS"
    )
    # Cognito access tokens carry no `aud`; their app client id is in `client_id`.
    audience_claim: Literal["aud", "client_id"] = Field(default="aud", validation_alias="STATE_OIDC_AUDIENCE_CLAIM")
    # Cognito's resource-server identifier in front of custom scopes (`https://api.example.com/state:read`).
    scope_prefix: str = Field(default="", validation_alias="STATE_OIDC_SCOPE_PREFIX")
    # `scope` (space-separated string, RFC 8693/9068) or `scp` (Okta, an array); either shape is accepted.
    scope_claim: Literal["scope", "scp"] = Field(default="scope", validation_alias="STATE_OIDC_SCOPE_CLAIM")
    subject_claim: str = Field(default="sub", min_length=1, validation_alias="STATE_OIDC_SUBJECT_CLAIM")
    # `roles`, `groups`, `cognito:groups`, or a namespaced claim such as Auth0's `https://example.com/roles`.
    roles_claim: str = Field(default="roles", min_length=1, validation_alias="STATE_OIDC_ROLES_CLAIM")
    # Keys cached at most 300 s, so a key the issuer removes is refused soon; refetches for unknown kids at
    # most every cooldown, so made-up kids cannot flood the issuer.
    jwks_ttl_seconds: float = Field(default=300, gt=0, le=300, validation_alias="STATE_JWKS_TTL_SECONDS")
    jwks_cooldown_seconds: float = Field(default=30, ge=1, le=300, validation_alias="STATE_JWKS_COOLDOWN_SECONDS")

    @field_validator("algorithms", "required_claims", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Environment lists are comma- or space-separated."""
        if isinstance(value, str):
            return tuple(part for part in value.replace(",", " ").split() if part)
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if unknown or not value:
            raise ValueError(f"algorithms must be a non-empty subset of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return value
