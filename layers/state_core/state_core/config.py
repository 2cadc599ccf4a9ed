"""Per-function configuration, parsed from the environment once per container and validated.

The domain core never reads the environment; `runtime.py` parses these settings and passes plain values in.

Plain frozen dataclasses with a small parser rather than pydantic models: every function (the authorizer too)
parses one of these before its first answer, and importing pydantic costs about half of `import boto3` (60-80
ms here) for what a few bounds checks do (docs/decisions.md).
Each field says where it comes from and what it accepts; a bad environment is refused as a whole, with every
variable that is wrong and why, and never with a value that could be a secret.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, Self

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


class SettingsError(ValueError):
    """The environment is invalid: every wrong variable, and what it must be."""


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a setting comes from and how its text becomes a value (ValueError: what it must be)."""

    variable: str
    parse: Callable[[str], Any]
    required: bool


def _setting(variable: str, parse: Callable[[str], Any], default: Any = dataclasses.MISSING) -> Any:
    source = _Source(variable, parse, required=default is dataclasses.MISSING)
    return dataclasses.field(default=default, metadata={"source": source})


def _shown(text: str) -> str:
    """A numeric or enumerated value, shown back to help: short, so nothing long (or secret) is echoed."""
    return repr(text) if len(text) <= 24 else f"{text[:24]!r}..."


def text(variable: str, default: str | None = None, *, min_length: int = 0) -> Any:
    def parse(raw: str) -> str:
        if len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters")
        return raw

    return _setting(variable, parse, dataclasses.MISSING if default is None else default)


def integer(variable: str, default: int, *, low: int, high: int) -> Any:
    def parse(raw: str) -> int:
        try:
            value = int(raw) if raw.strip().isascii() else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, not {_shown(raw)}")
        return value

    return _setting(variable, parse, default)


def number(variable: str, default: float, *, low: float, high: float, low_inclusive: bool = True) -> Any:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        above_low = value >= low if low_inclusive else value > low
        if not (math.isfinite(value) and above_low and value <= high):
            bounds = f"from {low} to {high}" if low_inclusive else f"above {low} and at most {high}"
            raise ValueError(f"must be a number {bounds}, not {_shown(raw)}")
        return value

    return _setting(variable, parse, default)


def flag(variable: str, default: bool) -> Any:
    def parse(raw: str) -> bool:
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError(f"must be true or false, not {_shown(raw)}")
        return word in _TRUE

    return _setting(variable, parse, default)


def choice(variable: str, default: str, *, choices: tuple[str, ...]) -> Any:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {_shown(raw)}")
        return raw

    return _setting(variable, parse, default)


def words(variable: str, default: tuple[str, ...], *, allowed: tuple[str, ...] | None = None) -> Any:
    """A list, comma- or space-separated; not empty, and within `allowed` if given."""

    def parse(raw: str) -> tuple[str, ...]:
        items = tuple(part for part in raw.replace(",", " ").split() if part)
        if not items:
            raise ValueError("must name at least one item (comma- or space-separated)")
        if allowed is not None and any(item not in allowed for item in items):
            raise ValueError(f"must be a subset of {', '.join(allowed)}")
        return items

    return _setting(variable, parse, default)


class _Settings:
    """Parsing shared by the settings classes (each a frozen dataclass whose fields are declared above)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Self:
        values: dict[str, Any] = {}
        problems: list[str] = []
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]  # every subclass is a dataclass
            source: _Source = field.metadata["source"]
            raw = environ.get(source.variable)
            if raw is None:
                if source.required:
                    problems.append(f"{source.variable} is required")
                continue
            try:
                values[field.name] = source.parse(raw)
            except ValueError as wrong:
                problems.append(f"{source.variable} {wrong}")
        if problems:
            raise SettingsError(f"invalid {cls.__name__}: {'; '.join(problems)}")
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Rules across fields; SettingsError if one is broken."""


def _is_loopback(host: str | None) -> bool:
    import ipaddress  # only where Redis is configured

    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class ServiceSettings(_Settings):
    """The state functions (get, put, patch, delete)."""

    table_name: str = text("STATE_TABLE_NAME", min_length=3)
    # Empty: no cache, no locks (Redis is optional: DynamoDB alone is correct, only slower). `rediss://` for
    # TLS; the AUTH token comes separately.
    redis_url: str = text("STATE_REDIS_URL", "")
    # Secrets Manager ARNs, never the secrets: an environment is readable by anyone allowed
    # lambda:GetFunctionConfiguration, so the token and the cache's signing key are fetched at first use.
    redis_auth_secret_arn: str = text("STATE_REDIS_AUTH_SECRET_ARN", "")
    cache_signing_secret_arn: str = text("STATE_CACHE_SIGNING_SECRET_ARN", "")
    # Tens of milliseconds: a hung Redis costs at most this once per breaker window.
    redis_timeout_ms: int = integer("STATE_REDIS_TIMEOUT_MS", 50, low=5, high=1000)
    # Short: a writer whose breaker is open skips its write-through, so a recovered Redis must be retried
    # well within the 1 s the contract allows for stale reads. A dead Redis then costs one timeout per
    # container per window (50 ms every 0.5 s).
    redis_breaker_seconds: float = number("STATE_REDIS_BREAKER_SECONDS", 0.5, low=0.1, high=300.0)
    # Bounds Redis memory, and how long an entry a failover rolled back can be served
    # (docs/design.md, "Lifetimes and memory").
    cache_ttl_seconds: int = integer("STATE_CACHE_TTL_SECONDS", 300, low=60, high=86_400)
    lock_lease_ms: int = integer("STATE_LOCK_LEASE_MS", 2000, low=100, high=10_000)
    lock_wait_ms: int = integer("STATE_LOCK_WAIT_MS", 2000, low=0, high=5_000)
    # A PATCH that cannot win within its budget (at least 5 s) answers 503 rather than retry without end.
    patch_time_budget_seconds: float = number("STATE_PATCH_TIME_BUDGET_SECONDS", 5.0, low=5.0, high=25.0)
    # The role policy (JSON); empty means the policy shipped in the layer (state_core/security/policy.json).
    policy_file: str = text("STATE_POLICY_FILE", "")
    # Every version is kept this long (the current version always, from the state item).
    history_retention_days: int = integer("STATE_HISTORY_RETENTION_DAYS", 90, low=1, high=3650)
    # The key that signs listing cursors (Secrets Manager ARN, read at the first listing); only list_state has it.
    list_cursor_secret_arn: str = text("STATE_LIST_CURSOR_SECRET_ARN", "")
    # A schema check reads no value until writes checked without its version can no longer land: the
    # registry's 5 s cache, a write function's timeout (10 s) and a margin (docs/schemas.md, "Evolution").
    schema_check_settle_seconds: float = number("STATE_SCHEMA_CHECK_SETTLE_SECONDS", 17.0, low=0.0, high=900.0)
    # The KMS key (id, ARN or alias) that sensitive values are sealed under (security/envelope.py). Empty: a
    # sensitive value cannot be written (500 encryption-not-configured); values sealed before still open if
    # the function may decrypt with their key.
    kms_key_id: str = text("STATE_KMS_KEY_ID", "")
    # Every value is sensitive, whatever the policy file's `sensitive` patterns say.
    encrypt_all: bool = flag("STATE_ENCRYPT_ALL", False)

    def check(self) -> None:
        """Redis is trusted only over a safe link, and only with signed entries."""
        if not self.redis_url:
            return
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(self.redis_url)
            host, password = parts.hostname, parts.password
        except ValueError:  # an unparseable port or host; the URL itself is not shown (it could hold a password)
            raise SettingsError("STATE_REDIS_URL is not a valid URL") from None
        if parts.scheme not in ("redis", "rediss"):
            raise SettingsError("STATE_REDIS_URL must be a redis:// or rediss:// URL")
        if password is not None:
            raise SettingsError(
                "STATE_REDIS_URL must not carry a password (the environment is readable by anyone allowed "
                "lambda:GetFunctionConfiguration); name the AUTH token's secret in STATE_REDIS_AUTH_SECRET_ARN"
            )
        if parts.query or parts.fragment:
            # redis-py lets a URL's query override the client's own arguments: ssl_cert_reqs=none would turn
            # certificate checks off, a socket_timeout the fast failure. Those settings have variables of their own.
            raise SettingsError("STATE_REDIS_URL must not carry a query string or a fragment")
        if parts.scheme == "redis" and not _is_loopback(host):
            # Over plain TCP the AUTH token, the cached values and their signatures cross the network readable
            # and alterable.
            raise SettingsError(
                "STATE_REDIS_URL must be rediss:// (TLS); redis:// is accepted only for a loopback host"
            )
        if not self.cache_signing_secret_arn:
            # Without a key nothing read from Redis could be told from what an intruder wrote there.
            raise SettingsError("STATE_REDIS_URL needs STATE_CACHE_SIGNING_SECRET_ARN: cache entries are signed")


@dataclasses.dataclass(frozen=True)
class PublisherSettings(_Settings):
    """publish_changes: the stream's event publisher (its table and history settings are ServiceSettings')."""

    event_bus_name: str = text("STATE_EVENT_BUS_NAME", min_length=1)
    dead_letter_queue_url: str = text("STATE_EVENTS_DLQ_URL", min_length=1)
    event_source: str = text("STATE_EVENT_SOURCE", "state.service", min_length=1)
    # The value rides in the detail only while the detail stays under this (default 64 KB).
    # Capped well below EventBridge's 256 KB per entry, so an entry always fits a request.
    max_detail_bytes: int = integer("STATE_EVENT_MAX_VALUE_BYTES", 65_536, low=1_024, high=200_000)


@dataclasses.dataclass(frozen=True)
class WatchSettings(_Settings):
    """The WebSocket watch (watch_socket, watch_fanout): its table and the stage's @connections endpoint."""

    watch_table_name: str = text("STATE_WATCH_TABLE_NAME", min_length=3)
    # https://<api id>.execute-api.<region>.amazonaws.com/<stage>: where PostToConnection goes.
    endpoint: str = text("STATE_WS_ENDPOINT", min_length=1)


@dataclasses.dataclass(frozen=True)
class AuthorizerSettings(_Settings):
    """The Lambda authorizer."""

    issuer: str = text("STATE_OIDC_ISSUER", min_length=1)
    audience: str = text("STATE_OIDC_AUDIENCE", min_length=1)
    # Small leeway on exp/nbf/iat for clock skew; capped at 60 s so an expired token is not honoured for long.
    leeway_seconds: int = integer("STATE_OIDC_LEEWAY_SECONDS", 30, low=0, high=60)
    # Asymmetric algorithms only: `none` and HMAC (which a public key could "sign") can never be configured.
    algorithms: tuple[str, ...] = words("STATE_OIDC_ALGORITHMS", ("RS256", "ES256"), allowed=ASYMMETRIC_ALGORITHMS)
    # e.g. `at+jwt` (RFC 9068); empty accepts no typ, `JWT` or `at+jwt` (tokens.py).
    required_typ: str = text("STATE_OIDC_REQUIRED_TYP", "")
    # ID tokens (Cognito `token_use: id`, Keycloak `typ: ID`, `at_hash`) are refused unless this is true:
    # an ID token's audience is the client that signed the user in, not this API.
    accept_id_tokens: bool = flag("STATE_OIDC_ACCEPT_ID_TOKENS", False)
    # exp - iat; a stolen long-lived token is refused even if signed.
    max_lifetime_seconds: int = integer("STATE_OIDC_MAX_LIFETIME_SECONDS", 3600, low=60, high=86_400)
    # On top of these, the audience and subject claims are always required.
    required_claims: tuple[str, ...] = words("STATE_OIDC_REQUIRED_CLAIMS", ("iss", "exp", "iat"))
    # Cognito access tokens carry no `aud`; their app client id is in `client_id`.
    audience_claim: Literal["aud", "client_id"] = choice(
        "STATE_OIDC_AUDIENCE_CLAIM", "aud", choices=("aud", "client_id")
    )
    # Cognito's resource-server identifier in front of custom scopes (`https://api.example.com/state:read`).
    scope_prefix: str = text("STATE_OIDC_SCOPE_PREFIX", "")
    # `scope` (space-separated string, RFC 8693/9068) or `scp` (Okta, an array); either shape is accepted.
    scope_claim: Literal["scope", "scp"] = choice("STATE_OIDC_SCOPE_CLAIM", "scope", choices=("scope", "scp"))
    subject_claim: str = text("STATE_OIDC_SUBJECT_CLAIM", "sub", min_length=1)
    # `roles`, `groups`, `cognito:groups`, or a namespaced claim such as Auth0's `https://example.com/roles`.
    roles_claim: str = text("STATE_OIDC_ROLES_CLAIM", "roles", min_length=1)
    # Keys cached at most 300 s, so a key the issuer removes is refused soon; refetches for unknown kids at
    # most every cooldown, so made-up kids cannot flood the issuer.
    jwks_ttl_seconds: float = number("STATE_JWKS_TTL_SECONDS", 300, low=0, high=300, low_inclusive=False)
    jwks_cooldown_seconds: float = number("STATE_JWKS_COOLDOWN_SECONDS", 30, low=1, high=300)
