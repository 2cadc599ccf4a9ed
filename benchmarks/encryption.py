"""What sealing a sensitive value adds: AES-256-GCM envelope encryption (security/envelope.py) with a warm
data-key cache, for 1 KiB and 1 MiB values, against the encoding (compression) every write of that value
already pays and the decoding every read pays. KMS is the moto server's; with a warm cache it is not called
in the timed runs (the rows' notes count the calls).

`compare_sdk()` (python -m benchmarks.encryption) also measures the AWS Encryption SDK with a caching
materials manager on the same values and prints its import time: the figures behind the choice recorded in
docs/decisions.md."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.common import LAYER, Row, interleaved, row, summary

SIZES = {"1 KiB": 1024, "1 MiB": 1_048_576 - 64}


def _value(size: int) -> bytes:
    # Random hex: barely compressible, so the cipher sees about `size` bytes, as a worst case does.
    text = os.urandom(size // 2).hex()
    return f'"{text[: size - 2]}"'.encode()


@contextmanager
def _kms() -> Iterator[tuple[Any, str, list[str]]]:
    import boto3

    from devstack.moto_server import SerializedMotoServer

    moto = SerializedMotoServer(port=0).start()
    try:
        kms = boto3.client(
            "kms",
            endpoint_url=moto.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106  the emulator's
        )
        calls: list[str] = []
        kms.meta.events.register("before-call.kms", lambda model, **_: calls.append(model.name))
        key = kms.create_key(Description="bench values key")["KeyMetadata"]["Arn"]
        calls.clear()
        yield kms, key, calls
    finally:
        moto.stop()


def run(runs: int, large_runs: int) -> list[Row]:
    from state_core.security.envelope import KmsEnvelope

    rows: list[Row] = []
    with _kms() as (kms, key_id, calls):
        envelope = KmsEnvelope(table_name="bench", key_id=key_id, sensitive=lambda _: True, kms=lambda: kms)
        for label, size in SIZES.items():
            rows += _rows(envelope, calls, label, size, runs if size < 100_000 else large_runs)
    return rows


def _rows(envelope: Any, calls: list[str], label: str, size: int, n: int) -> list[Row]:
    from state_core.domain.codec import StoredValue

    canonical = _value(size)
    stored = StoredValue.encode(canonical)
    envelope.seal("bench:k", "w0", stored)  # the data key: the only KMS call, before the timed runs
    calls.clear()
    seal_samples, encode_samples = interleaved(
        lambda _: envelope.seal("bench:k", "w1", stored), lambda _: StoredValue.encode(canonical), n, warmup=3
    )
    sealed = envelope.seal("bench:k", "w1", stored)
    open_samples, decode_samples = interleaved(
        lambda _: envelope.open("bench:k", "w1", sealed).canonical(), lambda _: stored.canonical(), n, warmup=3
    )
    return [
        row(f"seal a {label} value (warm data key)", "its compression", seal_samples, encode_samples),
        row(
            f"open a {label} value (warm data key)",
            "its decompression",
            open_samples,
            decode_samples,
            kms_calls_in_timed_runs=len(calls),
        ),
    ]


def _import_ms(module: str) -> float:
    out = (
        subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(LAYER)},
        )
        .stderr.strip()
        .splitlines()
    )
    return int(out[-1].split("|")[1]) / 1000


def compare_sdk(runs: int = 200) -> None:
    """The AWS Encryption SDK (caching CMM, same KMS) against the envelope: import time and per-call latency."""
    import aws_encryption_sdk
    from aws_encryption_sdk import CommitmentPolicy
    from aws_encryption_sdk.caches.local import LocalCryptoMaterialsCache
    from aws_encryption_sdk.key_providers.kms import StrictAwsKmsMasterKeyProvider
    from aws_encryption_sdk.materials_managers.caching import CachingCryptoMaterialsManager
    from botocore.session import Session

    from state_core.security.envelope import KmsEnvelope

    sdk_import = min(_import_ms("aws_encryption_sdk") for _ in range(3))
    own_import = min(_import_ms("cryptography.hazmat.primitives.ciphers.aead") for _ in range(3))
    print(f"import: aws_encryption_sdk {sdk_import:.0f} ms; cryptography's AESGCM {own_import:.0f} ms")
    with _kms() as (kms, key_id, calls):
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": kms.meta.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )
        client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        provider = StrictAwsKmsMasterKeyProvider(key_ids=[key_id], botocore_session=Session())
        cmm = CachingCryptoMaterialsManager(
            master_key_provider=provider,
            cache=LocalCryptoMaterialsCache(100),
            max_age=300.0,
            max_messages_encrypted=100_000,
        )
        envelope = KmsEnvelope(table_name="bench", key_id=key_id, sensitive=lambda _: True, kms=lambda: kms)
        for label, size in SIZES.items():
            _compare_one(
                client, cmm, envelope, calls, label=label, size=size, n=runs if size < 100_000 else max(5, runs // 20)
            )


def _compare_one(client: Any, cmm: Any, envelope: Any, calls: list[str], *, label: str, size: int, n: int) -> None:
    from benchmarks.common import timed
    from state_core.domain.codec import StoredValue

    stored = StoredValue.encode(_value(size))
    context = {"table": "bench", "key": "bench:k", "write_id": uuid.uuid4().hex}
    ciphertext, _ = client.encrypt(source=stored.data, materials_manager=cmm, encryption_context=context)
    sealed = envelope.seal("bench:k", "w1", stored)
    calls.clear()
    sdk_enc = timed(
        lambda _: client.encrypt(source=stored.data, materials_manager=cmm, encryption_context=context), n, warmup=3
    )
    sdk_dec = timed(lambda _: client.decrypt(source=ciphertext, materials_manager=cmm), n, warmup=3)
    sdk_calls = len(calls)
    calls.clear()
    own_enc = timed(lambda _: envelope.seal("bench:k", "w1", stored), n, warmup=3)
    own_dec = timed(lambda _: envelope.open("bench:k", "w1", sealed), n, warmup=3)
    print(
        f"{label}: SDK encrypt {summary(sdk_enc)[0]:.3f} ms, decrypt {summary(sdk_dec)[0]:.3f} ms"
        f" ({sdk_calls} KMS calls in {2 * (n + 3)} runs); envelope seal {summary(own_enc)[0]:.3f} ms,"
        f" open {summary(own_dec)[0]:.3f} ms ({len(calls)} KMS calls); medians, load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(LAYER))
    compare_sdk()
