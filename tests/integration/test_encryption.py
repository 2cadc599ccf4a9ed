"""Sensitive values sealed with KMS envelope encryption, against the moto server's KMS and DynamoDB and a real
redis-server: nothing readable outside the read path, a moved or altered ciphertext fails loudly, warm caches
make no KMS call, non-sensitive keys never touch KMS."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import boto3
import pytest

from state_core.cache.breaker import CircuitBreaker
from state_core.cache.link import RedisLink, connect
from state_core.cache.state_cache import CachePolicy, RedisStateCache
from state_core.domain.errors import DecryptionFailed, EncryptionNotConfigured
from state_core.runtime import DYNAMODB_CONFIG
from state_core.security.envelope import KmsEnvelope, sensitive_matcher
from state_core.service.manager import StateManager
from state_core.storage.state import StateStore
from tests.doubles import SIGNING_KEY, RecordedMetrics, utc_now

pytestmark = pytest.mark.integration

CANARY = "canary-7c1e0f5a-do-not-leak"


class KmsCalls:
    """Counts the KMS operations a client sends (a botocore event hook: the real client, nothing mocked)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.names.append(model.name)

    def client(self) -> Any:
        kms = boto3.client("kms")
        kms.meta.events.register("before-call.kms", self)
        return kms


@pytest.fixture(scope="module")
def kms_key(moto_server: str) -> str:
    return str(boto3.client("kms").create_key(Description="state values (test)")["KeyMetadata"]["Arn"])


class Sealed:
    """A container's worth of the path: one envelope, one store, one manager, a cache on the real Redis."""

    def __init__(
        self, table: str, key_id: str, redis_url: str, *, patterns: tuple[str, ...] = ("secret:*",), kms: Any = None
    ) -> None:
        self.table = table
        self.calls = KmsCalls()
        self.metrics = RecordedMetrics()
        self.cipher = KmsEnvelope(
            table_name=table,
            key_id=key_id,
            sensitive=sensitive_matcher(patterns, encrypt_all=False),
            kms=kms or self.calls.client,
            metrics=self.metrics,
        )
        link = RedisLink(
            connect(redis_url, password=None, timeout_seconds=0.5),
            CircuitBreaker(open_seconds=1.0),
            on_error=lambda: None,
            signing_key=SIGNING_KEY,
        )
        self.cache = RedisStateCache(link, self.metrics, clock=utc_now, policy=CachePolicy())
        self.dynamodb = boto3.client("dynamodb", config=DYNAMODB_CONFIG)
        self.store = StateStore(self.dynamodb, table, cipher=self.cipher)
        self.manager = StateManager(
            self.store, clock=utc_now, metrics=self.metrics, cache=self.cache, cipher=self.cipher
        )

    def item(self, key: str) -> dict[str, Any]:
        found: dict[str, Any] = self.dynamodb.get_item(
            TableName=self.table, Key={"pk": {"S": key}, "sk": {"S": "state"}}, ConsistentRead=True
        )["Item"]
        return found

    def set_value(self, key: str, value: bytes) -> None:
        self.dynamodb.update_item(
            TableName=self.table,
            Key={"pk": {"S": key}, "sk": {"S": "state"}},
            UpdateExpression="SET #value = :value",
            ExpressionAttributeNames={"#value": "value"},
            ExpressionAttributeValues={":value": {"B": value}},
        )


@pytest.fixture
def sealed(state_table: str, kms_key: str, redis_server: Any) -> Sealed:
    return Sealed(state_table, kms_key, redis_server.url)


def secret_key() -> str:
    return f"secret:{uuid.uuid4().hex}"


def test_a_sensitive_value_is_ciphertext_in_the_item_and_redis_and_reads_back(sealed, raw_redis):
    key = secret_key()
    sealed.manager.put(key, {"card": CANARY}, actor="tester")

    item = sealed.item(key)
    assert item["encoding"]["S"].startswith("aes256gcm+")
    assert CANARY.encode() not in bytes(item["value"]["B"])
    assert item["write_id"]["S"]
    assert json.loads(sealed.manager.get(key).canonical_value) == {"card": CANARY}  # from the cache
    assert json.loads(sealed.manager.get(key, consistent=True).canonical_value) == {"card": CANARY}
    for name in raw_redis.keys("*"):
        if raw_redis.type(name) == b"hash":
            assert all(CANARY.encode() not in bytes(v) for v in raw_redis.hgetall(name).values()), name
        assert CANARY.encode() not in (raw_redis.dump(name) or b""), name


def test_a_large_sensitive_value_is_sealed_in_its_blob_chunks(sealed):
    key = secret_key()
    # Incompressible, so it becomes a blob: ~600 KB of distinct hex words around the canary.
    words = [uuid.uuid4().hex for _ in range(18_000)]
    sealed.manager.put(key, {"words": words, "card": CANARY}, actor="tester")

    item = sealed.item(key)
    assert "blob_id" in item
    assert item["encoding"]["S"].startswith("aes256gcm+")
    chunks = [
        sealed.dynamodb.get_item(
            TableName=sealed.table, Key={"pk": {"S": f"chunk#{item['blob_id']['S']}#{n:04d}"}, "sk": {"S": "chunk"}}
        )["Item"]
        for n in range(int(item["blob_chunks"]["N"]))
    ]
    assert chunks
    assert all(CANARY.encode() not in bytes(c["data"]["B"]) for c in chunks if "data" in c)
    assert all(words[0].encode() not in bytes(v["B"]) for c in chunks for v in c.values() if "B" in v)
    assert json.loads(sealed.manager.get(key, consistent=True).canonical_value)["card"] == CANARY


def test_a_non_sensitive_key_never_calls_kms_and_stays_as_it_was(sealed):
    key = f"plain:{uuid.uuid4().hex}"
    sealed.manager.put(key, {"x": 1}, actor="tester")
    sealed.manager.get(key)
    sealed.manager.get(key, consistent=True)

    assert sealed.calls.names == []
    assert sealed.item(key)["encoding"]["S"] in ("zlib", "identity")


def test_a_warm_data_key_cache_makes_reads_and_writes_without_kms(sealed, state_table, kms_key, redis_server):
    key = secret_key()
    sealed.manager.put(key, {"n": 1}, actor="tester")
    sealed.manager.put(key, {"n": 2}, actor="tester")
    assert sealed.calls.names == ["GenerateDataKey"]  # one data key for both writes
    sealed.manager.get(key)
    sealed.manager.get(key, consistent=True)
    assert sealed.calls.names == ["GenerateDataKey"]  # its own data key opens without KMS

    reader = Sealed(state_table, kms_key, redis_server.url)  # another container: cold
    assert json.loads(reader.manager.get(key).canonical_value) == {"n": 2}  # a cache hit, opened
    assert reader.calls.names == ["Decrypt"]
    for _ in range(3):
        reader.manager.get(key)
    assert reader.calls.names == ["Decrypt"]  # warm: a GET from the cache costs no KMS call


def test_a_ciphertext_moved_to_another_key_fails_loudly(sealed):
    first, second = secret_key(), secret_key()
    sealed.manager.put(first, {"owner": "first", "card": CANARY}, actor="tester")
    sealed.manager.put(second, {"owner": "second"}, actor="tester")

    sealed.set_value(second, bytes(sealed.item(first)["value"]["B"]))

    with pytest.raises(DecryptionFailed):
        sealed.manager.get(second, consistent=True)
    assert sealed.metrics.count("DecryptionFailures") == 1


def test_a_ciphertext_moved_to_another_version_fails_loudly(sealed):
    key = secret_key()
    sealed.manager.put(key, {"v": 1}, actor="tester")
    sealed.manager.put(key, {"v": 2}, actor="tester")
    sealed.manager.put(key, {"v": 3}, actor="tester")
    third = bytes(sealed.item(key)["value"]["B"])
    sealed.manager.put(key, {"v": 4}, actor="tester")
    assert int(sealed.item(key)["version"]["N"]) == 4

    sealed.set_value(key, third)

    with pytest.raises(DecryptionFailed):
        sealed.manager.get(key, consistent=True)


@pytest.mark.parametrize("where", ["magic", "length", "data key", "nonce", "ciphertext", "tag"])
def test_one_flipped_bit_anywhere_fails_loudly(sealed, where):
    key = secret_key()
    sealed.manager.put(key, {"card": CANARY}, actor="tester")
    envelope = bytearray(sealed.item(key)["value"]["B"])
    key_length = int.from_bytes(envelope[3:5], "big")
    offset = {
        "magic": 0,
        "length": 4,
        "data key": 5 + key_length // 2,
        "nonce": 5 + key_length + 3,
        "ciphertext": 5 + key_length + 12,
        "tag": len(envelope) - 1,
    }[where]
    envelope[offset] ^= 0x01

    sealed.set_value(key, bytes(envelope))

    with pytest.raises(DecryptionFailed):
        sealed.manager.get(key, consistent=True)


def test_a_ciphertext_sealed_for_another_table_does_not_open(sealed, state_table, kms_key, redis_server):
    other = Sealed("another-table", kms_key, redis_server.url)
    value = other.cipher.seal("secret:x", "w1", sealed.manager.encode({"card": CANARY}))

    with pytest.raises(DecryptionFailed):
        sealed.cipher.open("secret:x", "w1", value)


def test_a_sensitive_write_without_a_key_is_a_configuration_error_and_writes_nothing(state_table, redis_server):
    unconfigured = Sealed(state_table, "", redis_server.url)
    key = secret_key()

    with pytest.raises(EncryptionNotConfigured) as raised:
        unconfigured.manager.put(key, {"card": CANARY}, actor="tester")

    assert raised.value.status == 500
    assert CANARY not in raised.value.detail
    assert "Item" not in unconfigured.dynamodb.get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "state"}}
    )


def test_a_sealed_value_read_without_a_cipher_fails_rather_than_serving_ciphertext(sealed):
    key = secret_key()
    sealed.manager.put(key, {"card": CANARY}, actor="tester")
    blind = StateManager(StateStore(sealed.dynamodb, sealed.table), clock=utc_now, metrics=RecordedMetrics())

    with pytest.raises(DecryptionFailed):
        blind.get(key, consistent=True)


def test_patch_of_a_sensitive_key_opens_merges_and_seals_again(sealed):
    key = secret_key()
    sealed.manager.put(key, {"a": 1}, actor="tester")
    sealed.manager.patch(key, {"b": CANARY}, actor="tester")

    assert CANARY.encode() not in bytes(sealed.item(key)["value"]["B"])
    assert json.loads(sealed.manager.get(key, consistent=True).canonical_value) == {"a": 1, "b": CANARY}


def test_a_values_key_that_does_not_exist_is_a_configuration_error(state_table, redis_server):
    missing = Sealed(state_table, "alias/no-such-values-key", redis_server.url)

    key = secret_key()

    with pytest.raises(EncryptionNotConfigured):
        missing.manager.put(key, {"card": CANARY}, actor="tester")
    # KMS refusing the key (gone, disabled, not ours) fails every sensitive write before any value could fail to
    # decrypt: KmsErrors, alarmed, is what pages. Nothing is written.
    assert missing.metrics.count("KmsErrors") == 1
    assert missing.metrics.count("DecryptionFailures") == 0
    found = missing.dynamodb.get_item(
        TableName=state_table, Key={"pk": {"S": key}, "sk": {"S": "state"}}, ConsistentRead=True
    )
    assert "Item" not in found


def test_kms_unreachable_is_a_503_to_retry_not_a_decryption_failure(sealed, state_table, kms_key, redis_server):
    from botocore.config import Config

    from state_core.domain.errors import ServiceUnavailable

    key = secret_key()
    sealed.manager.put(key, {"card": CANARY}, actor="tester")
    unreachable = Config(retries={"total_max_attempts": 1}, connect_timeout=0.2)
    cold = Sealed(  # a KMS nobody answers on
        state_table,
        kms_key,
        redis_server.url,
        kms=lambda: boto3.client("kms", endpoint_url="http://127.0.0.1:9", config=unreachable),
    )

    with pytest.raises(ServiceUnavailable) as raised:
        cold.manager.get(key, consistent=True)
    assert not isinstance(raised.value, DecryptionFailed)
    assert cold.metrics.count("DecryptionFailures") == 0
    assert cold.metrics.count("KmsErrors") == 1
    assert sealed.metrics.count("KmsErrors") == 0
