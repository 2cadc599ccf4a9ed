"""Envelope encryption of sensitive values: a data key from KMS `GenerateDataKey` under the values key, AES-256-GCM
on the stored bytes, and the data key's KMS ciphertext kept beside them.

Two bindings, so a ciphertext opens only where it was written:
- KMS's encryption context is `{"table": <table name>}`. The key policy's condition on
  `kms:EncryptionContext:table` lets each function use the key for its own table only; a data key made for
  another table's context does not decrypt here.
- AES-GCM's associated data binds the table, the state key, the write id of the version (the item's
  `write_id`, outside the envelope), and the inner encoding and size. A ciphertext copied to another key, to
  another version, or with one bit flipped fails its tag: DecryptionFailed, never a different value.

The envelope (`StoredValue.data` of a sealed value, encoding `aes256gcm+<inner encoding>`):

    b"SV1" | u16 length of the encrypted data key | encrypted data key | 12-byte nonce | ciphertext + 16-byte tag

Data keys are cached, bounded by age, messages and bytes (`DataKeyLimits`): with a warm cache a write makes no
KMS call and a read of a value sealed under a cached data key makes none either. This module imports only the
standard library at load: `cryptography` and the KMS client are loaded at the first seal or open, so a
function that never touches a sensitive key never loads them.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from state_core.domain.codec import SEALED_PREFIX, StoredValue
from state_core.domain.errors import DecryptionFailed, EncryptionNotConfigured, ServiceUnavailable

if TYPE_CHECKING:
    KMSClient = Any

MAGIC = b"SV1"
NONCE_BYTES = 12
TAG_BYTES = 16
_HEADER = struct.Struct(">H")
# KMS context key the key policies condition on (kms:EncryptionContext:table).
CONTEXT_TABLE = "table"


# KMS's answers that mean "this ciphertext will never open here": tampering, another table's context, a key
# this function may not use or that is gone. Anything else (throttling, a timeout) is KMS being unavailable.
_REFUSED = frozenset(
    {
        "InvalidCiphertextException",
        "IncorrectKeyException",
        "AccessDeniedException",
        "NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
    }
)


@contextmanager
def _kms_errors(refused: frozenset[str] = frozenset()) -> Iterator[None]:
    """KMS trouble as 503 service-unavailable (retry), except the codes in `refused`, which propagate."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in refused:
            raise
        raise ServiceUnavailable("the key service is unavailable for a moment; retry shortly") from None
    except BotoCoreError:
        raise ServiceUnavailable("the key service is unavailable for a moment; retry shortly") from None


@dataclass(frozen=True, slots=True)
class DataKeyLimits:
    """How long and how much one data key is used. A plaintext data key lives in the function's memory only
    this long; a compromised container exposes at most these messages and bytes under one data key. GCM's own
    limit with random nonces (2**32 messages per key) is far above these."""

    max_age_seconds: float = 300.0
    max_messages: int = 100_000
    max_bytes: int = 1 << 30
    # Data keys kept for opening (distinct writers' keys seen by a reader), least recently used dropped first.
    max_open_keys: int = 256


def sensitive_matcher(patterns: Iterable[str], *, encrypt_all: bool) -> Callable[[str], bool]:
    """Whether a key's values are sensitive: every key with `encrypt_all`, else the keys `patterns` name (an
    exact key, a prefix ending in `*`, or `*` for every key)."""
    if encrypt_all:
        return lambda key: True
    exact = frozenset(pattern for pattern in patterns if not pattern.endswith("*"))
    prefixes = tuple(pattern[:-1] for pattern in patterns if pattern.endswith("*"))
    if not exact and not prefixes:
        return lambda key: False
    return lambda key: key in exact or key.startswith(prefixes)


@dataclass(slots=True)
class _SealingKey:
    plaintext: bytes
    encrypted: bytes
    born: float
    messages: int = 0
    bytes: int = 0


class KmsEnvelope:
    """The ValueCipher port over KMS and AES-GCM, one per container."""

    def __init__(
        self,
        *,
        table_name: str,
        key_id: str,
        sensitive: Callable[[str], bool],
        kms: Callable[[], KMSClient],
        metrics: Any = None,
        limits: DataKeyLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = table_name
        self._key_id = key_id
        self._sensitive = sensitive
        self._kms_factory = kms
        self._kms: KMSClient | None = None
        self._metrics = metrics
        self._limits = limits or DataKeyLimits()
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sealing: _SealingKey | None = None
        self._opening: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._key_arns: dict[bytes, str] = {}

    def sensitive(self, key: str) -> bool:
        return self._sensitive(key)

    # ------------------------------------------------------------------------------------------- seal
    def seal(self, key: str, write_id: str, value: StoredValue) -> StoredValue:
        if value.sealed:
            raise ValueError("a sealed value is sealed again")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        data_key = self._data_key_for(len(value.data))
        nonce = os.urandom(NONCE_BYTES)
        encoding = SEALED_PREFIX + value.encoding
        sealed = AESGCM(data_key.plaintext).encrypt(
            nonce, value.data, self._associated(key, write_id, encoding, value.size)
        )
        envelope = b"".join((MAGIC, _HEADER.pack(len(data_key.encrypted)), data_key.encrypted, nonce, sealed))
        return StoredValue(encoding, envelope, value.size)

    def _data_key_for(self, size: int) -> _SealingKey:
        now = self._monotonic()
        with self._lock:
            current, limits = self._sealing, self._limits
            if (
                current is None
                or now - current.born >= limits.max_age_seconds
                or current.messages >= limits.max_messages
                or current.bytes + size > limits.max_bytes
            ):
                if not self._key_id:
                    raise EncryptionNotConfigured(
                        "a sensitive value cannot be sealed: no values key is configured (STATE_KMS_KEY_ID)"
                    )
                answer = self._new_data_key()
                current = _SealingKey(answer["Plaintext"], answer["CiphertextBlob"], now)
                self._sealing = current
                self._remember(current.encrypted, current.plaintext, now, answer.get("KeyId", ""))
            current.messages += 1
            current.bytes += size
            return current

    def _new_data_key(self) -> Any:
        from botocore.exceptions import ClientError

        try:
            with self._kms_call():
                return self._client().generate_data_key(
                    KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=self._kms_context()
                )
        except ClientError as exc:
            # The configured key is missing, disabled or not ours to use: the deployment's fault, not KMS's.
            code = exc.response.get("Error", {}).get("Code", "")
            raise EncryptionNotConfigured(f"the values key cannot be used to seal ({code})") from None

    # ------------------------------------------------------------------------------------------- open
    def open(self, key: str, write_id: str | None, value: StoredValue) -> StoredValue:
        if not value.sealed:
            return value
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        encrypted_key, nonce, sealed = self._parts(value.data)
        if write_id is None:
            raise self._failed("a sealed value's item names no write id")
        plaintext_key = self._data_key(encrypted_key)
        inner = value.encoding[len(SEALED_PREFIX) :]
        try:
            data = AESGCM(plaintext_key).decrypt(
                nonce, sealed, self._associated(key, write_id, value.encoding, value.size)
            )
        except InvalidTag:
            raise self._failed("a sealed value does not open for its key and version") from None
        return replace(value, encoding=inner, data=data)

    def _parts(self, envelope: bytes) -> tuple[bytes, bytes, bytes]:
        if len(envelope) < len(MAGIC) + _HEADER.size or not envelope.startswith(MAGIC):
            raise self._failed("a sealed value is not an envelope")
        (length,) = _HEADER.unpack_from(envelope, len(MAGIC))
        start = len(MAGIC) + _HEADER.size
        if length == 0 or len(envelope) < start + length + NONCE_BYTES + TAG_BYTES:
            raise self._failed("a sealed value's envelope is truncated")
        nonce_at = start + length
        return envelope[start:nonce_at], envelope[nonce_at : nonce_at + NONCE_BYTES], envelope[nonce_at + NONCE_BYTES :]

    def key_of(self, value: StoredValue) -> str:
        """The ARN of the KMS key a sealed value's data key is under (one KMS Decrypt unless cached): what
        re-encryption asks of each item."""
        encrypted_key, _, _ = self._parts(value.data)
        self._data_key(encrypted_key)
        return self._key_arns[encrypted_key]

    def _data_key(self, encrypted: bytes) -> bytes:
        now = self._monotonic()
        with self._lock:
            cached = self._opening.get(encrypted)
            if cached is not None and now - cached[1] < self._limits.max_age_seconds:
                self._opening.move_to_end(encrypted)
                return cached[0]
        from botocore.exceptions import ClientError

        try:
            # No KeyId: the data key's ciphertext names its KMS key, and a value sealed before a change of key
            # (until it is re-encrypted) opens under the old key as long as this function may use it.
            with self._kms_call():
                answer = self._client().decrypt(CiphertextBlob=encrypted, EncryptionContext=self._kms_context())
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise self._failed(f"KMS refused the value's data key ({code})") from None
        plaintext: bytes = answer["Plaintext"]
        if len(plaintext) != 32:
            raise self._failed("KMS answered a data key that is not AES-256")
        with self._lock:
            self._remember(encrypted, plaintext, now, answer.get("KeyId", ""))
        return plaintext

    def _remember(self, encrypted: bytes, plaintext: bytes, now: float, key_arn: str) -> None:
        self._opening[encrypted] = (plaintext, now)
        self._key_arns[encrypted] = key_arn
        self._opening.move_to_end(encrypted)
        while len(self._opening) > self._limits.max_open_keys:
            dropped, _ = self._opening.popitem(last=False)
            self._key_arns.pop(dropped, None)

    # ------------------------------------------------------------------------------------------ common
    @contextmanager
    def _kms_call(self) -> Iterator[None]:
        """A KMS call. Any failure, KMS refusing the key or unavailable, counts KmsErrors (alarmed): a disabled key
        fails every sensitive write here, before any value could fail to decrypt."""
        try:
            with _kms_errors(refused=_REFUSED):
                yield
        except Exception:
            if self._metrics is not None:
                self._metrics.add_metric(name="KmsErrors", unit="Count", value=1)
            raise

    def _client(self) -> KMSClient:
        if self._kms is None:
            self._kms = self._kms_factory()
        return self._kms

    def _kms_context(self) -> dict[str, str]:
        return {CONTEXT_TABLE: self._table}

    def _associated(self, key: str, write_id: str, encoding: str, size: int) -> bytes:
        return json.dumps(
            {"table": self._table, "key": key, "write_id": write_id, "encoding": encoding, "size": size},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    def _failed(self, reason: str) -> DecryptionFailed:
        if self._metrics is not None:
            self._metrics.add_metric(name="DecryptionFailures", unit="Count", value=1)
        return DecryptionFailed(reason)
