"""Client credentials with a certificate: a client assertion signed with the certificate's key, named by its x5t."""

from __future__ import annotations

import base64
import hashlib
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from joserfc import jwt as jose_jwt
from joserfc.jwk import RSAKey

from connector.auth.oauth import AuthlibProvider
from connector.clock import Clock
from connector.errors import ConnectionConfigError, preview
from connector.secret import Secret
from connector.transport import RetryPolicy

__all__ = [
    "ASSERTION_LIFETIME_S",
    "ASSERTION_TYPE",
    "CertificateProvider",
    "ClientCertificate",
    "load_client_certificate",
    "sign_client_assertion",
    "x5t_thumbprint",
]


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 600
"""Validity of a client assertion: Entra accepts up to 10 minutes; each token request signs a fresh one."""


def x5t_thumbprint(certificate_der: bytes) -> str:
    """The ``x5t`` JOSE header: base64url (no padding) of the certificate's SHA-1 thumbprint, as Entra expects."""
    return base64.urlsafe_b64encode(hashlib.sha1(certificate_der).digest()).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class ClientCertificate:
    """A loaded certificate credential: the private key and the thumbprint that names the certificate to Entra."""

    private_key: RSAPrivateKey = field(repr=False)
    x5t: str
    subject: str


def load_client_certificate(
    *,
    certificate_file: Path | None,
    private_key_file: Path | None,
    pfx_file: Path | None,
    password: str | Secret | None,
) -> ClientCertificate:
    """Load a PEM certificate and key (the key optionally encrypted) or a PFX/PKCS#12 file.

    Errors name the file and what to check, never the password or key material.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    if isinstance(password, str):  # held as a Secret from here: a refusal below is raised from this frame
        password = Secret(password) if password else None
    key: Any
    if pfx_file is not None:
        data = _read_file(pfx_file, "pfx_file")
        try:
            key, cert, _ = pkcs12.load_key_and_certificates(data, _bytes(password))
        except ValueError:
            raise ConnectionConfigError(
                f"pfx_file {_shown(pfx_file)} cannot be opened: the file is not a PFX/PKCS#12 file, or "
                "private_key_password is wrong or missing",
                field="private_key_password",
            ) from None
        if key is None or cert is None:
            raise ConnectionConfigError(
                f"pfx_file {_shown(pfx_file)} must hold both the certificate and its private key",
                field="pfx_file",
            )
    else:
        if certificate_file is None or private_key_file is None:
            raise ConnectionConfigError(
                "give certificate_file and private_key_file (PEM), or pfx_file", field="certificate_file"
            )
        try:
            cert = x509.load_pem_x509_certificate(_read_file(certificate_file, "certificate_file"))
        except ValueError:
            raise ConnectionConfigError(
                f"certificate_file {_shown(certificate_file)} is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                field="certificate_file",
            ) from None
        try:
            key = serialization.load_pem_private_key(_read_file(private_key_file, "private_key_file"), _bytes(password))
        except TypeError:
            raise ConnectionConfigError(
                f"private_key_file {_shown(private_key_file)} is encrypted: set private_key_password"
                if password is None
                else f"private_key_file {_shown(private_key_file)} is not encrypted: remove private_key_password",
                field="private_key_password",
            ) from None
        except ValueError:
            raise ConnectionConfigError(
                f"private_key_file {_shown(private_key_file)} cannot be read: it is not a PEM private key, or "
                "private_key_password is wrong",
                field="private_key_password" if password else "private_key_file",
            ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConnectionConfigError(
            "the certificate's key must be an RSA key (Entra signs and checks client assertions with RS256)",
            field="pfx_file" if pfx_file is not None else "private_key_file",
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    return ClientCertificate(private_key=key, x5t=x5t_thumbprint(der), subject=cert.subject.rfc4514_string())


def _bytes(password: Secret | None) -> bytes | None:
    return password.reveal().encode() if password else None


def _shown(path: Path) -> str:
    """A path as messages quote it: cut when absurdly long, since a hostile setting may be megabytes."""
    return preview(str(path), 120)


def _read_file(path: Path, field_name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConnectionConfigError(
            f"{field_name} {_shown(path)} cannot be read ({exc.strerror or type(exc).__name__}): check the path "
            "(relative paths start at the connection file's folder) and its permissions",
            field=field_name,
        ) from None


def sign_client_assertion(
    certificate: ClientCertificate, key: RSAKey, client_id: str, token_url: str, clock: Clock
) -> str:
    """A new client assertion for ``token_url``, signed with the certificate's key; shared by every grant a
    certificate authenticates (client credentials, and a confidential client's authorization code and refresh)."""
    now = int(clock.time())
    claims = {
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + ASSERTION_LIFETIME_S,
    }
    header = {"alg": "RS256", "typ": "JWT", "x5t": certificate.x5t}
    return str(jose_jwt.encode(header, claims, key))


class CertificateProvider(AuthlibProvider):
    """Client credentials with a certificate: each token request carries a freshly signed client assertion.

    The assertion is a JWT signed RS256 with the certificate's key, with header ``x5t`` (the thumbprint Entra finds the
    certificate by) and claims ``aud`` = the token URL, ``iss`` = ``sub`` = client_id, a unique ``jti``, and ``iat``,
    ``nbf``, ``exp`` from the injected clock. It is signed with joserfc and passed to authlib as form fields, so the
    times are ours (testable) rather than authlib's wall clock.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        certificate: ClientCertificate,
        scopes: tuple[str, ...],
        organization_url: str,
        clock: Clock,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            token_url=token_url,
            client_id=client_id,
            scopes=scopes,
            organization_url=organization_url,
            clock=clock,
            transport=transport,
            verify=verify,
            timeout_s=timeout_s,
            retry=retry,
            token_endpoint_auth_method="none",  # client_id in the form; the assertion authenticates the client
            grant_type="client_credentials",
        )
        self._certificate = certificate
        self._key = RSAKey.import_key(certificate.private_key)

    def client_assertion(self) -> str:
        """A new signed client assertion for the token URL."""
        return sign_client_assertion(self._certificate, self._key, self._client_id, self._token_url, self._clock)

    def _request_token(self) -> dict[str, Any]:
        return self._call(
            self._oauth.fetch_token,
            self._token_url,
            grant_type="client_credentials",
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=self.client_assertion(),
        )
