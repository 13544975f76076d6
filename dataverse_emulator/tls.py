"""Certificates: a local CA made once per data directory, a server certificate for localhost/127.0.0.1, and a client
certificate for the certificate-credential connection kind.

Why a CA rather than one self-signed server certificate: clients (requests via ``REQUESTS_CA_BUNDLE``, httpx via
``verify=``) trust a CA file once, and server certificates can then be re-issued on each start without re-trusting.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def default_data_dir() -> Path:
    """Per-user cache directory (XDG_CACHE_HOME honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "d365-emulator"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def ensure_ca(data_dir: Path) -> tuple[Path, Path]:
    """Create ``ca.pem``/``ca-key.pem`` in ``data_dir`` unless they exist; return their paths.

    Several emulators may start at once on one data directory (parallel test workers): a file lock makes exactly
    one of them generate the CA, so every server certificate is signed by the CA the clients trust."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / ".ca.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _ensure_ca_locked(data_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_ca_locked(data_dir: Path) -> tuple[Path, Path]:
    ca_pem, ca_key = data_dir / "ca.pem", data_dir / "ca-key.pem"
    if ca_pem.exists() and ca_key.exists():
        return ca_pem, ca_key
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d365 emulator local CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(ca_key, _pem_key(key), private=True)
    tmp = data_dir / f"ca.pem.{os.getpid()}"
    _write(tmp, cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(ca_pem)  # readers never see a half-written CA
    return ca_pem, ca_key


def issue_server_cert(data_dir: Path) -> tuple[Path, Path, Path]:
    """A fresh server certificate for localhost and 127.0.0.1 signed by the CA: (cert, key, ca)."""
    ca_pem, ca_key_path = ensure_ca(data_dir)
    ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    pid = os.getpid()
    cert_path, key_path = data_dir / f"server-{pid}.pem", data_dir / f"server-{pid}-key.pem"
    _write(key_path, _pem_key(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, ca_pem


def client_certificate(common_name: str) -> tuple[bytes, bytes, bytes]:
    """A self-signed client certificate for certificate credentials: (cert PEM, key PEM, cert DER)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), cert.public_bytes(serialization.Encoding.DER)
