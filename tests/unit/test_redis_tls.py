"""The Redis client over rediss://: certificate and host name checked, TLS 1.2 at least, whatever redis-py's
defaults are; a server whose certificate no trusted authority signed is refused before a byte of the protocol
(the AUTH token, a value) is sent."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from state_core.cache.link import connect

pytestmark = pytest.mark.unit


def test_a_tls_link_checks_the_certificate_and_the_host_name():
    client = connect("rediss://cache.example.internal:6379/0", password=None, timeout_seconds=0.05)
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    connection = pool.make_connection()
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.check_hostname is True
    assert connection.ssl_min_version == ssl.TLSVersion.TLSv1_2


def test_a_loopback_link_stays_plain():
    client = connect("redis://127.0.0.1:6380/0", password=None, timeout_seconds=0.05)
    assert client.connection_pool.connection_class is redis.Connection


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """A TLS server with a self-signed certificate for localhost, recording whatever a client sends it."""
    cert_path, key_path = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    received: list[bytes] = []

    def serve() -> None:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                tls.settimeout(2)
                received.append(tls.recv(4096))
        except (OSError, ssl.SSLError):
            pass
        finally:
            raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        listener.close()
        thread.join(timeout=5)


def test_a_server_no_trusted_authority_signed_is_refused_before_anything_is_sent(impostor):
    port, received = impostor
    client = connect(f"rediss://localhost:{port}/0", password="an-auth-token", timeout_seconds=2)
    with pytest.raises(redis.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        client.ping()
    assert not any(b"an-auth-token" in chunk for chunk in received)
    assert not any(received)
