"""What the functions trust of Redis and of stored values, through the real handlers, a real redis-server and
the serialized moto server (Secrets Manager and DynamoDB): entries someone else wrote or altered are misses,
bombs are bounded, and Redis's credentials come from Secrets Manager at first use (a failure there costs
the cache, never a request)."""

import json
import secrets
import time
import tracemalloc
import uuid
import zlib

import boto3
import pytest
import redis
from conftest import http_event

from devstack.redis_server import RedisServer
from state_core import runtime

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
# Inflates about 1000:1; the old code held all of it in memory and answered it.
BOMB_INFLATED_BYTES = 256 * 1_048_576
MEMORY_CEILING = 32 * 1_048_576


def reset_runtime():
    for name in (
        "service_settings",
        "role_policy",
        "redis_link",
        "state_cache",
        "state_manager",
        "state_store",
        "history_store",
        "history_reader",
        "publisher_settings",
        "change_publisher",
    ):
        getattr(runtime, name).cache_clear()


def bomb(inflated_bytes=BOMB_INFLATED_BYTES):
    compressor = zlib.compressobj(9)
    chunk = b" " * 1_048_576
    return b"".join(compressor.compress(chunk) for _ in range(inflated_bytes // len(chunk))) + compressor.flush()


def entry(key):
    return f"st:{{{key}}}"


def sign(signing_key, key, version, metadata, data):
    """The entry's MAC as the service computes it (none before entries were signed)."""
    try:
        from state_core.cache.state_cache import entry_mac
    except ImportError:
        return b""
    return entry_mac(signing_key, key, version, metadata, data)


def metric_total(output, name):
    """The sum of metric `name` in the EMF records Powertools printed."""
    total = 0.0
    for line in output.splitlines():
        if '"_aws"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        value = record.get(name)
        if value is not None:
            total += sum(value) if isinstance(value, list) else value
    return total


class Functions:
    def __init__(self, invoke, raw, signing_key, capsys, caplog):
        self.invoke = invoke
        self.raw = raw
        self.signing_key = signing_key
        self._capsys = capsys
        self._caplog = caplog

    def put(self, key, value):
        return self.invoke("put_state", http_event("put", key, body={"value": value}))

    def get(self, key, query=None):
        return self.invoke("get_state", http_event("get", key, query=query))

    def patch(self, key, patch):
        return self.invoke(
            "patch_state", http_event("patch", key, body=patch, content_type="application/merge-patch+json")
        )

    def output(self):
        """Everything printed (EMF metrics) and logged (with the records' extra fields) since last asked."""
        captured = self._capsys.readouterr()
        logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in self._caplog.records)
        self._caplog.clear()
        return captured.out + captured.err + logged


@pytest.fixture
def secrets_manager(moto_server):
    return boto3.client("secretsmanager", endpoint_url=moto_server, region_name="us-east-1")


def new_secret(secrets_manager, value):
    return secrets_manager.create_secret(Name=f"test-{uuid.uuid4().hex}", SecretString=value)["ARN"]


@pytest.fixture
def configure(monkeypatch, handler_environment):
    def apply(**environment):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        reset_runtime()

    reset_runtime()
    yield apply
    reset_runtime()


@pytest.fixture
def functions(configure, invoke, redis_server, secrets_manager, capsys, caplog):
    signing_key = secrets.token_urlsafe(48)
    configure(
        STATE_REDIS_URL=redis_server.url,
        STATE_CACHE_SIGNING_SECRET_ARN=new_secret(secrets_manager, signing_key),
        STATE_REDIS_AUTH_SECRET_ARN="",
        STATE_REDIS_BREAKER_SECONDS="1",
        # These tests are about what the cache trusts, not about a slow Redis: on a loaded machine the 50 ms
        # default can time a read out, which is a miss that never reaches the signature check.
        STATE_REDIS_TIMEOUT_MS="1000",
    )
    return Functions(invoke, redis.Redis.from_url(redis_server.url), signing_key.encode(), capsys, caplog)


@pytest.fixture
def key():
    return f"trust:{uuid.uuid4().hex}"


def body(response):
    return json.loads(response["body"])


# --- cache entries are signed --------------------------------------------------------------------------


def test_a_tampered_cache_entry_is_a_miss_not_a_value(functions, key):
    assert functions.put(key, {"owner": "alice"})["statusCode"] == 201
    functions.get(key)  # a write-through leaves a fence where nothing was cached; the read fills it
    assert functions.raw.hget(entry(key), "d") == b'{"owner":"alice"}'
    functions.output()

    # Someone with write access to Redis changes the value and keeps everything else, MAC included.
    functions.raw.hset(entry(key), "d", b'{"owner":"evil1"}')
    response = functions.get(key)

    assert response["statusCode"] == 200
    assert body(response)["value"] == {"owner": "alice"}
    assert metric_total(functions.output(), "CacheIntegrityFailures") == 1


def test_an_entry_nobody_signed_is_a_miss_and_cannot_make_up_a_key(functions, key):
    functions.raw.hset(
        entry(key),
        mapping={
            "v": 7,
            "m": json.dumps(
                {
                    "deleted": False,
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                    "updated_by": "mallory",
                    "expires_at": None,
                    "encoding": "identity",
                    "size": 6,
                }
            ),
            "d": b'"evil"',
        },
    )

    response = functions.get(key)

    assert response["statusCode"] == 404
    assert metric_total(functions.output(), "CacheIntegrityFailures") == 1


def test_an_entry_signed_for_another_key_is_a_miss(functions, key):
    other = f"{key}:other"
    functions.put(key, "mine")
    functions.put(other, "theirs")
    functions.raw.delete(entry(key))
    functions.raw.hset(entry(key), mapping=functions.raw.hgetall(entry(other)))
    functions.output()

    response = functions.get(key)

    assert body(response)["value"] == "mine"
    assert metric_total(functions.output(), "CacheIntegrityFailures") == 1


def test_a_signed_entry_is_served_from_the_cache(functions, key):
    functions.put(key, {"a": 1})
    functions.get(key)  # fills the fence the write-through left
    functions.output()

    assert body(functions.get(key))["value"] == {"a": 1}
    output = functions.output()
    assert metric_total(output, "CacheHits") == 1
    assert metric_total(output, "CacheIntegrityFailures") == 0


def test_a_fence_and_a_tombstone_are_signed_too(functions, key):
    functions.put(key, 1)
    assert functions.invoke("delete_state", http_event("delete", key))["statusCode"] == 204
    assert set(functions.raw.hgetall(entry(key))) == {b"v", b"m", b"s"}
    # A tombstone turned into a value by adding `d` is refused.
    functions.raw.hset(entry(key), "d", b"1")
    functions.output()

    assert functions.get(key)["statusCode"] == 404
    assert metric_total(functions.output(), "CacheIntegrityFailures") == 1


# --- what a Redis writer can still do is bounded ----------------------------------------------------------


def test_a_signed_decompression_bomb_in_redis_is_a_miss_within_bounded_memory(functions, key):
    functions.put(key, {"a": 1})
    version, metadata = functions.raw.hmget(entry(key), ["v", "m"])
    meta = json.loads(metadata)
    meta.update(encoding="zlib", size=7)
    forged_metadata = json.dumps(meta, separators=(",", ":")).encode()
    data = bomb()
    # Signed with the service's own key: what a bomb in a value of ours would look like (the MAC is not
    # what stops it here; the decompression bound is).
    mac = sign(functions.signing_key, key, version, forged_metadata, data)
    functions.raw.hset(entry(key), mapping={"m": forged_metadata, "d": data, "s": mac})
    functions.output()

    tracemalloc.start()
    try:
        response = functions.get(key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response["statusCode"] == 200
    assert body(response)["value"] == {"a": 1}
    assert peak < MEMORY_CEILING
    assert metric_total(functions.output(), "CacheIntegrityFailures") == 1


def bytes_redis_sent(raw) -> int:
    """Every byte Redis has written to any client since it started."""
    return int(raw.info("stats")["total_net_output_bytes"])


def test_an_entry_larger_than_any_the_service_writes_never_reaches_the_function(functions, key):
    functions.put(key, {"a": 1})
    functions.raw.delete(entry(key))
    functions.raw.hset(entry(key), "d", b"x" * 16_000_000)
    functions.output()

    sent_before = bytes_redis_sent(functions.raw)
    response = functions.get(key)
    sent = bytes_redis_sent(functions.raw) - sent_before

    assert body(response)["value"] == {"a": 1}
    # Counted at Redis, not in this process's memory (which the in-process moto server's thread shares): the
    # 16 MB never left Redis, so no function could have been made to hold it.
    assert sent < 100_000
    assert metric_total(functions.output(), "CacheIntegrityFailures") == 1


def test_something_else_under_an_entry_key_is_a_miss_and_keeps_redis_on(functions, key):
    functions.put(key, {"a": 1})
    functions.raw.delete(entry(key))
    functions.raw.set(entry(key), "not a hash")
    functions.output()

    assert body(functions.get(key))["value"] == {"a": 1}
    # The fill replaced it: Redis was not given up on (no error, no open breaker).
    assert body(functions.get(key))["value"] == {"a": 1}
    output = functions.output()
    assert metric_total(output, "RedisErrors") == 0
    assert metric_total(output, "CacheHits") == 1
    assert functions.raw.type(entry(key)) == b"hash"


def test_a_non_numeric_cached_version_is_replaced_not_an_error(functions, key):
    functions.put(key, 1)
    functions.raw.hset(entry(key), "v", "many")
    functions.output()

    assert functions.put(key, 2)["statusCode"] == 200
    assert body(functions.get(key))["value"] == 2
    output = functions.output()
    assert metric_total(output, "RedisErrors") == 0
    assert functions.raw.hget(entry(key), "v") == b"2"


# --- stored values in DynamoDB are bounded too ------------------------------------------------------------


def test_a_decompression_bomb_in_the_table_is_a_503_not_a_value_and_never_cached(functions, key, client, state_table):
    functions.put(key, {"a": 1})
    functions.raw.delete(entry(key))
    client.update_item(
        TableName=state_table,
        Key={"pk": {"S": key}, "sk": {"S": "state"}},
        UpdateExpression="SET #value = :bomb, #encoding = :zlib, value_size = :size",
        ExpressionAttributeNames={"#value": "value", "#encoding": "encoding"},
        ExpressionAttributeValues={":bomb": {"B": bomb()}, ":zlib": {"S": "zlib"}, ":size": {"N": "7"}},
    )
    functions.output()

    tracemalloc.start()
    try:
        responses = [functions.get(key), functions.get(key, query={"consistent": "true"})]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    for response in responses:
        assert response["statusCode"] == 503
        assert response["headers"]["Content-Type"] == PROBLEM
        assert body(response)["type"].endswith("/stored-value-unreadable")
        assert response["headers"]["Retry-After"] == "30"
    assert peak < MEMORY_CEILING
    assert functions.raw.hget(entry(key), "d") is None
    output = functions.output()
    assert metric_total(output, "CorruptStoredValues") == 2
    assert "stored value unreadable" in output
    # A PATCH reads the value too; a PUT does not and replaces it.
    assert functions.patch(key, {"b": 2})["statusCode"] == 503
    assert functions.put(key, {"fresh": True})["statusCode"] == 200
    assert body(functions.get(key))["value"] == {"fresh": True}


# --- Redis's credentials --------------------------------------------------------------------------------


def test_redis_with_an_auth_token_read_from_secrets_manager(configure, invoke, secrets_manager, capsys, key, caplog):
    token = secrets.token_urlsafe(32)
    with RedisServer(password=token) as server:
        configure(
            STATE_REDIS_URL=server.url,
            STATE_REDIS_AUTH_SECRET_ARN=new_secret(secrets_manager, token),
            STATE_CACHE_SIGNING_SECRET_ARN=new_secret(secrets_manager, secrets.token_urlsafe(48)),
        )
        functions = Functions(invoke, redis.Redis.from_url(server.url, password=token), b"", capsys, caplog)

        assert functions.put(key, {"a": 1})["statusCode"] == 201
        assert body(functions.get(key))["value"] == {"a": 1}  # fills the write-through's fence
        assert body(functions.get(key))["value"] == {"a": 1}

        assert functions.raw.hget(entry(key), "v") == b"1"
        output = functions.output()
        assert metric_total(output, "CacheHits") == 1
        assert token not in output


def test_a_secret_that_cannot_be_read_costs_the_cache_not_the_request(
    configure, invoke, redis_server, secrets_manager, capsys, key, caplog
):
    signing_key = secrets.token_urlsafe(48)
    arn = new_secret(secrets_manager, signing_key)
    secrets_manager.delete_secret(SecretId=arn, RecoveryWindowInDays=7)
    configure(
        STATE_REDIS_URL=redis_server.url,
        STATE_CACHE_SIGNING_SECRET_ARN=arn,
        STATE_REDIS_AUTH_SECRET_ARN="",
        STATE_REDIS_BREAKER_SECONDS="1",
    )
    functions = Functions(invoke, redis.Redis.from_url(redis_server.url), b"", capsys, caplog)

    assert functions.put(key, {"a": 1})["statusCode"] == 201
    assert body(functions.get(key))["value"] == {"a": 1}
    output = functions.output()
    assert functions.raw.exists(entry(key)) == 0
    # Once per breaker window, not once per call: the put's failure kept the get off Secrets Manager.
    assert metric_total(output, "RedisCredentialErrors") == 1
    assert "Redis credentials unavailable" in output
    assert signing_key not in output

    # Readable again: after the breaker's window the next call reads it and the cache is back.
    secrets_manager.restore_secret(SecretId=arn)
    time.sleep(1.1)
    assert body(functions.get(key))["value"] == {"a": 1}
    assert body(functions.get(key))["value"] == {"a": 1}
    output = functions.output()
    assert metric_total(output, "RedisCredentialErrors") == 0
    assert metric_total(output, "CacheHits") >= 1
    assert functions.raw.hget(entry(key), "d") == b'{"a":1}'


def test_a_wrong_auth_token_costs_the_cache_not_the_request(configure, invoke, secrets_manager, capsys, key, caplog):
    with RedisServer(password=secrets.token_urlsafe(32)) as server:
        configure(
            STATE_REDIS_URL=server.url,
            STATE_REDIS_AUTH_SECRET_ARN=new_secret(secrets_manager, "not-the-token"),
            STATE_CACHE_SIGNING_SECRET_ARN=new_secret(secrets_manager, secrets.token_urlsafe(48)),
        )
        functions = Functions(invoke, None, b"", capsys, caplog)

        assert functions.put(key, {"a": 1})["statusCode"] == 201
        assert body(functions.get(key))["value"] == {"a": 1}
        output = functions.output()
        assert metric_total(output, "RedisErrors") == 1
        assert "not-the-token" not in output


def test_without_redis_no_secret_is_read(configure, invoke, capsys, key, monkeypatch, caplog):
    configure(STATE_REDIS_URL="", STATE_REDIS_AUTH_SECRET_ARN="", STATE_CACHE_SIGNING_SECRET_ARN="")
    monkeypatch.setattr(runtime, "secrets_client", lambda: pytest.fail("Secrets Manager called without Redis"))
    functions = Functions(invoke, None, b"", capsys, caplog)

    assert functions.put(key, 1)["statusCode"] == 201
    assert body(functions.get(key))["value"] == 1
