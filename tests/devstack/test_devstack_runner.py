"""``python -m devstack`` brings up the whole stack from template.yaml, the one source of its infrastructure."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import jwt
import pytest
import requests

from tests.stack import start_devstack

pytestmark = pytest.mark.e2e


def test_dev_issuer_serves_discovery_and_jwks(devstack: Any) -> None:
    discovery = requests.get(f"{devstack.issuer}/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == devstack.issuer
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]
    keys = requests.get(discovery["jwks_uri"], timeout=10).json()["keys"]
    token = devstack.token()
    assert jwt.get_unverified_header(token)["kid"] == keys[0]["kid"]
    assert keys[0]["use"] == "sig"
    assert keys[0]["alg"] == "RS256"


def test_token_cli_uses_the_running_stacks_issuer(devstack: Any, repo_root: Any) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack.token",
            "--sub",
            "carol",
            "--scope",
            "state:read",
            "--roles",
            "a,b",
            "--state-dir",
            str(devstack.state_dir),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    claims = jwt.decode(out, options={"verify_signature": False})
    assert claims["iss"] == devstack.issuer
    assert claims["sub"] == "carol"
    assert claims["scope"] == "state:read"
    assert claims["roles"] == ["a", "b"]
    assert claims["aud"] == "state-service"


def test_stack_creates_the_template_resources(devstack: Any) -> None:
    ddb = devstack.client("dynamodb")
    table = ddb.describe_table(TableName=devstack.table_name)["Table"]
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"


def test_request_without_token_is_401_and_with_token_reaches_the_handler(devstack: Any) -> None:
    url = f"{devstack.base_url}/state/devstack-runner-probe"
    assert requests.get(url, timeout=30).status_code == 401
    response = requests.get(url, headers={"Authorization": f"Bearer {devstack.token()}"}, timeout=30)
    # The real authorizer accepted the dev issuer's token; the handler answered.
    assert response.status_code not in (401, 403, 500), response.text
    assert (devstack.log_dir / "access.log").exists()


def _secrets(devstack: Any) -> Any:
    return devstack.client("secretsmanager")


def _cached_fields(redis_client: Any, key: str) -> set[bytes]:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not redis_client.exists(f"st:{{{key}}}"):
        time.sleep(0.05)
    return set(redis_client.hgetall(f"st:{{{key}}}"))


def test_the_stacks_redis_wants_the_token_the_functions_read_from_secrets_manager(devstack: Any) -> None:
    import redis

    url = next(line.split()[1] for line in devstack.output if line.startswith("redis "))
    arn = next(line.split()[2] for line in devstack.output if line.startswith("redis auth "))
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url).ping()
    token = _secrets(devstack).get_secret_value(SecretId=arn)["SecretString"]
    assert not any(token in line for line in devstack.output)

    key = "devstack-runner-signed"
    headers = {"Authorization": f"Bearer {devstack.token()}"}
    assert requests.put(f"{devstack.base_url}/state/{key}", json={"value": 1}, headers=headers, timeout=30).ok
    # The write-through of a key nothing cached leaves a fence; the read fills the value.
    assert requests.get(f"{devstack.base_url}/state/{key}", headers=headers, timeout=30).ok
    # The functions got in with the token and signed what they wrote.
    assert _cached_fields(redis.Redis.from_url(url, password=token), key) == {b"v", b"m", b"d", b"s"}


def test_a_password_in_redis_url_goes_to_secrets_manager_not_to_the_functions(tmp_path_factory: Any) -> None:
    import secrets

    import redis

    from devstack.redis_server import RedisServer

    password = secrets.token_urlsafe(24)
    with RedisServer(password=password) as server:
        stack = start_devstack(
            tmp_path_factory.mktemp("devstack-redis-password"),
            extra_env={"REDIS_URL": f"redis://:{password}@127.0.0.1:{server.port}/0"},
        )
        try:
            key = "devstack-runner-password"
            headers = {"Authorization": f"Bearer {stack.token()}"}
            response = requests.put(f"{stack.base_url}/state/{key}", json={"value": 1}, headers=headers, timeout=30)
            assert response.status_code == 201, response.text
            cache = redis.Redis(port=server.port, password=password)
            # A GET fills the entry with the value. The stream's cache repair may fence it (a version without a
            # value) after that fill when the stream runs late: the next GET fills it again.
            deadline = time.monotonic() + 20
            while True:
                assert requests.get(f"{stack.base_url}/state/{key}", headers=headers, timeout=30).ok  # fills
                fields = _cached_fields(cache, key)
                if fields == {b"v", b"m", b"d", b"s"} or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert fields == {b"v", b"m", b"d", b"s"}
            assert not any(password in line for line in stack.output)
        finally:
            stack.stop()
        logs = "".join(path.read_text(errors="replace") for path in stack.log_dir.glob("*.log"))
        assert password not in logs


def test_a_crash_the_test_did_not_ask_for_is_reported(tmp_path_factory: Any) -> None:
    """Every stack's teardown fails on an unexpected 500 (conftest DevStack.stop): this proves the check
    sees one. The function is killed after its write, which the stack was not told to expect."""
    stack = start_devstack(
        tmp_path_factory.mktemp("unexpected-crash"),
        {"STATE_FAILPOINTS": "1", "STATE_FAILPOINTS_SPEC": "after_db_write_before_cache=kill*1"},
    )
    try:
        response = requests.put(
            f"{stack.base_url}/state/crash-check",
            json={"value": 1},
            headers={"Authorization": f"Bearer {stack.token()}"},
            timeout=30,
        )
        assert response.status_code == 500
    finally:
        stack.stop(check_server_errors=False)
    errors = stack.server_errors()
    assert [record["integrationError"] for record in errors] == ["Runtime.ExitError"]
    with pytest.raises(AssertionError, match="1 requests answered 500"):
        stack.stop()
