"""The state functions' Redis settings: TLS to any other host (with or without AUTH), never a secret in the
environment, no query string that could weaken the client, and no Redis without the key that signs its
entries."""

import pytest

from state_core.config import ServiceSettings, SettingsError

pytestmark = pytest.mark.unit

AUTH = "arn:aws:secretsmanager:us-east-1:000000000000:secret:redis-auth-AbCdEf"
SIGNING = "arn:aws:secretsmanager:us-east-1:000000000000:secret:signing-GhIjKl"


def settings(url, *, auth=AUTH, signing=SIGNING):
    return ServiceSettings.from_environ(
        {
            "STATE_TABLE_NAME": "state",
            "STATE_REDIS_URL": url,
            "STATE_REDIS_AUTH_SECRET_ARN": auth,
            "STATE_CACHE_SIGNING_SECRET_ARN": signing,
        }
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache.example.internal:6379/0",
        "redis://10.0.3.17:6379",
        "redis://[fd00::17]:6379",
        "redis://localhost.example.com:6379",
        "redis://128.0.0.1:6379",
    ],
)
def test_an_auth_token_over_plain_tcp_to_another_host_is_refused(url):
    with pytest.raises(SettingsError, match=r"must be rediss:// \(TLS\)"):
        settings(url)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://cache.example.internal:6379/0",
        "rediss://10.0.3.17:6379",
        "redis://127.0.0.1:6380/0",
        "redis://127.8.9.10:6379",
        "redis://localhost:6379",
        "redis://LOCALHOST:6379",
        "redis://[::1]:6379",
    ],
)
def test_an_auth_token_goes_over_tls_or_stays_on_this_machine(url):
    assert settings(url).redis_url == url


def test_without_an_auth_token_plain_tcp_to_another_host_is_refused_too():
    # The cached values and their signatures would cross the network readable, AUTH or not.
    with pytest.raises(SettingsError, match=r"must be rediss:// \(TLS\)"):
        settings("redis://cache.example.internal:6379", auth="")
    assert settings("redis://127.0.0.1:6380/0", auth="").redis_url == "redis://127.0.0.1:6380/0"


@pytest.mark.parametrize(
    "url",
    [
        "rediss://cache.example.internal:6379/0?ssl_cert_reqs=none",
        "rediss://cache.example.internal:6379?ssl_check_hostname=false",
        "rediss://cache.example.internal:6379/0?socket_timeout=30",
        "redis://127.0.0.1:6380/0?db=1",
        "rediss://cache.example.internal:6379#fragment",
    ],
)
def test_a_query_string_that_could_weaken_the_client_is_refused(url):
    with pytest.raises(SettingsError, match="must not carry a query string"):
        settings(url)


def test_a_password_in_the_url_is_refused():
    with pytest.raises(SettingsError, match="must not carry a password"):
        settings("rediss://:hunter2@cache.example.internal:6379", auth="")


@pytest.mark.parametrize("url", ["http://cache.example.internal:6379", "unix:///tmp/redis.sock", "cache:6379"])
def test_only_redis_urls_are_accepted(url):
    with pytest.raises(SettingsError, match="redis:// or rediss://"):
        settings(url)


def test_redis_without_a_signing_key_is_refused():
    with pytest.raises(SettingsError, match="STATE_CACHE_SIGNING_SECRET_ARN"):
        settings("rediss://cache.example.internal:6379", signing="")


def test_no_redis_needs_no_secret():
    plain = settings("", auth="", signing="")
    assert plain.redis_url == ""


def test_the_settings_never_hold_or_show_a_secret():
    shown = repr(settings("rediss://cache.example.internal:6379"))
    assert "password" not in shown.lower()
    assert not hasattr(settings("rediss://cache.example.internal:6379"), "redis_password")
