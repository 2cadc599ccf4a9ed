"""Settings from the environment: every variable parsed and bounded, defaults where unset, and a bad
environment refused as a whole with each wrong variable named, never echoing a long (possibly secret) value."""

import pytest

from state_core.config import AuthorizerSettings, PublisherSettings, ServiceSettings, SettingsError

pytestmark = pytest.mark.unit

SERVICE = {"STATE_TABLE_NAME": "state"}
AUTHORIZER = {"STATE_OIDC_ISSUER": "https://issuer.example.com", "STATE_OIDC_AUDIENCE": "state"}


def test_defaults_fill_what_the_environment_leaves_unset():
    settings = ServiceSettings.from_environ(SERVICE)
    assert settings.table_name == "state"
    assert settings.redis_url == ""
    assert (settings.redis_timeout_ms, settings.redis_breaker_seconds, settings.cache_ttl_seconds) == (50, 0.5, 300)
    assert (settings.lock_lease_ms, settings.lock_wait_ms, settings.patch_time_budget_seconds) == (2000, 2000, 5.0)
    assert settings.history_retention_days == 90
    authorizer = AuthorizerSettings.from_environ(AUTHORIZER)
    assert authorizer.algorithms == ("RS256", "ES256")
    assert authorizer.required_claims == ("iss", "exp", "iat")
    assert authorizer.accept_id_tokens is False
    assert (authorizer.audience_claim, authorizer.scope_claim) == ("aud", "scope")


def test_values_are_parsed_to_their_types():
    settings = ServiceSettings.from_environ(
        {**SERVICE, "STATE_REDIS_TIMEOUT_MS": " 75 ", "STATE_REDIS_BREAKER_SECONDS": "1.5", "STATE_LOCK_WAIT_MS": "0"}
    )
    assert (settings.redis_timeout_ms, settings.redis_breaker_seconds, settings.lock_wait_ms) == (75, 1.5, 0)
    authorizer = AuthorizerSettings.from_environ(
        {
            **AUTHORIZER,
            "STATE_OIDC_ALGORITHMS": "RS256, PS256  EdDSA",
            "STATE_OIDC_ACCEPT_ID_TOKENS": "Yes",
            "STATE_OIDC_AUDIENCE_CLAIM": "client_id",
            "STATE_OIDC_SCOPE_CLAIM": "scp",
            "STATE_JWKS_TTL_SECONDS": "0.5",
        }
    )
    assert authorizer.algorithms == ("RS256", "PS256", "EdDSA")
    assert authorizer.accept_id_tokens is True
    assert (authorizer.audience_claim, authorizer.scope_claim, authorizer.jwks_ttl_seconds) == ("client_id", "scp", 0.5)


def test_settings_are_immutable():
    settings = ServiceSettings.from_environ(SERVICE)
    with pytest.raises(AttributeError):
        settings.table_name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STATE_TABLE_NAME", "", "STATE_TABLE_NAME must be at least 3 characters"),
        ("STATE_REDIS_TIMEOUT_MS", "4", "STATE_REDIS_TIMEOUT_MS must be a whole number from 5 to 1000, not '4'"),
        ("STATE_REDIS_TIMEOUT_MS", "1001", "from 5 to 1000, not '1001'"),
        ("STATE_REDIS_TIMEOUT_MS", "50.0", "whole number"),
        ("STATE_REDIS_TIMEOUT_MS", "fifty", "whole number"),
        ("STATE_REDIS_TIMEOUT_MS", "--5", "whole number"),
        ("STATE_REDIS_TIMEOUT_MS", "\u0665\u0660", "whole number"),  # digits, but not ASCII ones
        ("STATE_REDIS_BREAKER_SECONDS", "nan", "STATE_REDIS_BREAKER_SECONDS must be a number from 0.1 to 300.0"),
        ("STATE_REDIS_BREAKER_SECONDS", "inf", "number from 0.1 to 300.0"),
        ("STATE_PATCH_TIME_BUDGET_SECONDS", "4.9", "number from 5.0 to 25.0"),
        ("STATE_CACHE_TTL_SECONDS", "59", "from 60 to 86400"),
        ("STATE_HISTORY_RETENTION_DAYS", "0", "from 1 to 3650"),
    ],
)
def test_a_bad_service_variable_is_refused_by_name(variable, value, message):
    with pytest.raises(SettingsError, match="invalid ServiceSettings") as refused:
        ServiceSettings.from_environ({**SERVICE, variable: value})
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STATE_OIDC_ALGORITHMS", "RS256,HS256", "must be a subset of RS256"),
        ("STATE_OIDC_ALGORITHMS", "none", "must be a subset of RS256"),
        ("STATE_OIDC_ALGORITHMS", " , ", "must name at least one item"),
        ("STATE_OIDC_REQUIRED_CLAIMS", "", "must name at least one item"),
        ("STATE_OIDC_ACCEPT_ID_TOKENS", "maybe", "must be true or false, not 'maybe'"),
        ("STATE_OIDC_AUDIENCE_CLAIM", "azp", "must be one of aud, client_id, not 'azp'"),
        ("STATE_OIDC_SCOPE_CLAIM", "Scope", "must be one of scope, scp"),
        ("STATE_JWKS_TTL_SECONDS", "0", "must be a number above 0 and at most 300, not '0'"),
        ("STATE_JWKS_TTL_SECONDS", "301", "above 0 and at most 300"),
        ("STATE_JWKS_COOLDOWN_SECONDS", "0.5", "from 1 to 300"),
        ("STATE_OIDC_LEEWAY_SECONDS", "61", "from 0 to 60"),
        ("STATE_OIDC_MAX_LIFETIME_SECONDS", "59", "from 60 to 86400"),
        ("STATE_OIDC_SUBJECT_CLAIM", "", "must be at least 1 characters"),
        ("STATE_OIDC_ISSUER", "", "STATE_OIDC_ISSUER must be at least 1 characters"),
    ],
)
def test_a_bad_authorizer_variable_is_refused_by_name(variable, value, message):
    with pytest.raises(SettingsError, match="invalid AuthorizerSettings") as refused:
        AuthorizerSettings.from_environ({**AUTHORIZER, variable: value})
    assert message in str(refused.value)


def test_every_wrong_variable_is_named_at_once():
    with pytest.raises(SettingsError) as refused:
        PublisherSettings.from_environ({"STATE_EVENT_MAX_VALUE_BYTES": "1023"})
    message = str(refused.value)
    assert "STATE_EVENT_BUS_NAME is required" in message
    assert "STATE_EVENTS_DLQ_URL is required" in message
    assert "STATE_EVENT_MAX_VALUE_BYTES must be a whole number from 1024 to 200000, not '1023'" in message


def test_a_refused_value_is_never_echoed_at_length():
    secretish = "s3cr3t-" * 20
    with pytest.raises(SettingsError) as refused:
        AuthorizerSettings.from_environ({**AUTHORIZER, "STATE_OIDC_AUDIENCE_CLAIM": secretish})
    assert secretish not in str(refused.value)
    assert secretish[:24] in str(refused.value)


def test_a_settings_error_is_a_value_error_so_callers_that_fail_closed_keep_working():
    assert issubclass(SettingsError, ValueError)


def test_unrelated_variables_are_ignored():
    assert ServiceSettings.from_environ({**SERVICE, "STATE_UNKNOWN": "x", "PATH": "/bin"}).table_name == "state"


def test_the_functions_settings_never_import_pydantic():
    """Settings are parsed by every function before its first answer; pydantic would cost ~80 ms of cold start."""
    import subprocess
    import sys
    from pathlib import Path

    layer = Path(__file__).resolve().parents[2] / "layers" / "state_core"
    code = (
        f"import sys; sys.path.insert(0, {str(layer)!r}); import state_core.config, state_core.security.policy; "
        "print('pydantic' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
