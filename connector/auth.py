"""Access tokens for Dataverse: one :class:`TokenProvider` per connection kind, and the checks every token passes.

The provider is the only place that talks to the identity platform. It refreshes the token before it expires, with a
leeway scaled to the token's lifetime (authlib's fixed 60 s would treat short-lived test tokens as already expired),
re-fetches once when Dataverse answers 401 (authlib never reacts to a 401), and lets concurrent callers share one
refresh. Expiry is tracked on the injected :class:`~connector.clock.Clock`, not authlib's wall clock, so tests can move
time. Every new token's audience is compared with the environment URL: a token for another resource, or an ID token,
fails here with a message naming both values instead of as a puzzling 401 later.

Token endpoint refusals become :class:`AuthenticationError` carrying the ``AADSTS`` code and what to do about it.
Tokens and secrets never appear in messages or logs.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import hmac
import http.server
import json
import logging
import os
import re
import secrets
import ssl
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import authlib.deprecate  # noqa: F401  # imported first: it installs an "always" filter that would beat ours below
import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from joserfc import jwt as jose_jwt
from joserfc.jwk import RSAKey

from connector.clock import Clock
from connector.errors import AuthenticationError, ConnectionConfigError, ConnectorError
from connector.token_store import TokenStore

with warnings.catch_warnings():
    # Authlib 1.9 prefers the httpx2 fork and warns when it falls back to httpx, which this project uses on purpose.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated", category=DeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client

if TYPE_CHECKING:
    from connector.connection import ConnectionConfig

__all__ = [
    "DYNAMICS_CRM_APP_ID",
    "AuthorizationCodeProvider",
    "CertificateProvider",
    "ClientCertificate",
    "ClientCredentialsProvider",
    "LoginRequest",
    "ManagedIdentityProvider",
    "OnToken",
    "TokenProvider",
    "audience_problem",
    "decode_jwt_claims",
    "load_client_certificate",
    "make_token_provider",
    "refresh_leeway",
    "run_login",
    "x5t_thumbprint",
]

log = logging.getLogger("connector.auth")

DYNAMICS_CRM_APP_ID = "00000007-0000-0000-c000-000000000000"
"""The well-known application id of "Dynamics CRM"; some tokens carry it as ``aud`` instead of the environment URL."""

AUDIENCE_MISMATCH = "AudienceMismatch"
ID_TOKEN_REFUSED = "IdTokenRefused"
DEFAULT_LIFETIME_S = 300.0
"""Assumed lifetime of a token that states none: short, so a stale token is replaced rather than kept forever."""

_AADSTS = re.compile(r"AADSTS(\d+)")

# What to do for the identity platform's most common refusals. ``{scope}`` is the scope the connection should use.
_AADSTS_ADVICE: dict[str, str] = {
    "AADSTS700016": "the application (client_id) was not found in the tenant: check client_id and tenant_id against "
    "the app registration's Overview page, and that the app is registered in or consented to this tenant",
    "AADSTS7000215": "the client secret is wrong: use the secret's Value (shown once when it was created), not its "
    "Secret ID, and check that it has not expired (Certificates & secrets in the app registration)",
    "AADSTS7000222": "the client secret has expired: create a new one under Certificates & secrets in the app "
    "registration and update client_secret",
    "AADSTS90002": "the tenant was not found: check tenant_id (the Directory (tenant) ID, or a verified domain), and "
    "authority_host for a sovereign cloud",
    "AADSTS650057": "invalid resource: the scope must be {scope} and the app registration needs the Dynamics CRM API "
    "permission, with admin consent granted",
    "AADSTS70011": "the scope is invalid: for client credentials use exactly {scope}",
    "AADSTS500011": "no resource answers to this URL in the tenant: check organization_url (the environment URL from "
    "the Power Platform admin center) and that the environment belongs to this tenant",
}


class TokenProvider(Protocol):
    """Issues access tokens for one connection; every connection kind implements this, so the client needs no more."""

    def token(self) -> str:
        """A valid access token, fetched or refreshed when it is missing or about to expire."""

    def force_refresh(self, rejected: str | None = None) -> str:
        """Fetch a new token after Dataverse rejected ``rejected``; reuse it if another thread already replaced it."""

    def close(self) -> None:
        """Release the HTTP connections to the token endpoint."""


def refresh_leeway(lifetime_s: float) -> float:
    """Refresh this long before expiry: a tenth of the lifetime, at most 5 minutes (75 s for a 75 min Entra token)."""
    return max(0.0, min(300.0, lifetime_s / 10.0))


def decode_jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT without checking its signature (Dataverse does that); None when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None


def _normalise_resource(url: str) -> str | None:
    """``scheme://host[:port]`` with ``.api.`` removed, lower case; None when ``url`` is not an absolute URL."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.hostname:
        return None
    host = parts.hostname.lower().replace(".api.", ".", 1)
    port = f":{parts.port}" if parts.port and parts.port != {"https": 443, "http": 80}.get(parts.scheme) else ""
    return f"{parts.scheme.lower()}://{host}{port}"


def audience_problem(access_token: str, organization_url: str, client_id: str) -> tuple[str, str] | None:
    """Return ``(code, message)`` when the token is not an access token for ``organization_url``, else None.

    A token that is not a JWT cannot be checked and passes (Dataverse will judge it). The comparison ignores the
    ``.api.`` label, a trailing slash and letter case; the Dynamics CRM application id is also accepted as audience.
    """
    claims = decode_jwt_claims(access_token)
    if claims is None:
        log.debug("the access token is not a JWT; its audience cannot be checked")
        return None
    aud = claims.get("aud")
    audiences = (
        [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
    )
    scope = f"{organization_url}/.default"
    if not audiences:
        return None
    if client_id and any(a.lower() == client_id.lower() for a in audiences):
        return (
            ID_TOKEN_REFUSED,
            "the token endpoint returned an ID token (its audience is the client_id), not an access token for "
            f"Dataverse: request the scope {scope}",
        )
    expected = _normalise_resource(organization_url)
    for a in audiences:
        if a.lower() == DYNAMICS_CRM_APP_ID or _normalise_resource(a) == expected:
            return None
    return (
        AUDIENCE_MISMATCH,
        f"the access token is for {audiences[0]!r}, not for the environment {organization_url}: set scopes to "
        f"[{scope!r}] (or leave scopes out), and check that organization_url is the environment's URL",
    )


def _token_endpoint_error(response: httpx.Response, scope: str) -> AuthenticationError:
    """Map a refusal of the token endpoint to an AuthenticationError with the AADSTS code and a fix."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        if response.status_code == 429 or response.status_code >= 500:
            return AuthenticationError(
                f"the token endpoint is unavailable (HTTP {response.status_code}); try again later",
                status_code=response.status_code,
            )
        return AuthenticationError(
            f"the token endpoint answered HTTP {response.status_code} without an OAuth error: check token_url, "
            "or tenant_id and authority_host",
            status_code=response.status_code,
        )
    error = str(body.get("error"))
    description = str(body.get("error_description") or "")
    code: str | None = None
    codes = body.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int | str):
        code = f"AADSTS{codes[0]}"
    elif match := _AADSTS.search(description):
        code = f"AADSTS{match.group(1)}"
    # The first line of the description is the human part; the rest is trace and correlation ids and a timestamp.
    summary = description.splitlines()[0].strip() if description else ""
    advice = _AADSTS_ADVICE.get(code or "")
    if advice is None and error == "invalid_client":
        advice = "check client_id and client_secret"
    elif advice is None and error == "unauthorized_client":
        advice = "check client_id and tenant_id"
    parts = [f"the token endpoint refused the request ({error}{', ' + code if code else ''})"]
    if advice:
        parts.append(advice.format(scope=scope))
    if summary:
        parts.append(f"server said: {summary}")
    return AuthenticationError(": ".join(parts), code=code or error, status_code=response.status_code)


@dataclass(frozen=True)
class _Token:
    access_token: str
    expires_at: float  # on the monotonic clock
    refresh_at: float  # on the monotonic clock


class _CachingProvider(abc.ABC):
    """What every kind shares: the cached token, refresh before expiry, one refresh for concurrent callers.

    A subclass implements :meth:`_request_token`, which asks its identity endpoint and returns the raw token answer
    (a dict with ``access_token`` and ``expires_in`` or ``expires_on``); it runs with the lock held.
    """

    _what = "the token endpoint"

    def __init__(self, *, organization_url: str, client_id: str, scope_hint: str, clock: Clock) -> None:
        self._organization_url = organization_url
        self._client_id = client_id
        self._scope_hint = scope_hint
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Token | None = None

    def token(self) -> str:
        current = self._current
        if current is not None and self._clock.monotonic() < current.refresh_at:
            return current.access_token
        with self._lock:
            current = self._current
            if current is not None and self._clock.monotonic() < current.refresh_at:
                return current.access_token
            return self._fetch()

    def force_refresh(self, rejected: str | None = None) -> str:
        with self._lock:
            current = self._current
            if current is not None and rejected is not None and current.access_token != rejected:
                return current.access_token
            return self._fetch()

    def close(self) -> None:  # noqa: B027  # a deliberate no-op default: only kinds holding a client release one
        """Nothing to release by default."""

    @abc.abstractmethod
    def _request_token(self) -> dict[str, Any]:
        """Ask this kind's identity endpoint for a token; the raw answer (``access_token``, ``expires_in``/``_on``)."""

    def _fetch(self) -> str:
        """Ask for a new token and check it; the caller holds the lock."""
        start = self._clock.monotonic()
        raw = self._request_token()
        self._accept(raw, start)
        assert self._current is not None
        return self._current.access_token

    def _accept(self, raw: dict[str, Any], start: float) -> None:
        """Check a token answer (type, audience) and make it current; expiry counts from ``start``."""
        access_token = raw.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise AuthenticationError(f"{self._what} answered without an access_token")
        token_type = str(raw.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise AuthenticationError(f"{self._what} issued a {token_type!r} token; Dataverse needs a Bearer token")
        problem = audience_problem(access_token, self._organization_url, self._client_id)
        if problem is not None:
            raise AuthenticationError(problem[1], code=problem[0])
        lifetime = self._lifetime(raw, access_token)
        self._current = _Token(access_token, start + lifetime, start + lifetime - refresh_leeway(lifetime))
        log.debug("fetched an access token valid for %.0f s", lifetime)

    def _lifetime(self, raw: dict[str, Any], access_token: str) -> float:
        """Seconds the token lives: ``expires_in``, else ``expires_on`` (managed identity), else the JWT's ``exp``."""
        try:
            if raw.get("expires_in") is not None:
                return max(0.0, float(raw["expires_in"]))
            if raw.get("expires_on") is not None:
                return max(0.0, float(raw["expires_on"]) - self._clock.time())
        except (TypeError, ValueError):
            pass
        claims = decode_jwt_claims(access_token) or {}
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            return max(0.0, float(exp) - self._clock.time())
        return DEFAULT_LIFETIME_S


TOKEN_RETRIES = 3
"""Extra attempts for a token request answered 429 or 5xx, or lost in transit (waits: Retry-After, else 1, 2, 4 s)."""
TOKEN_TRANSIENT = frozenset({429, 500, 502, 503, 504})
TOKEN_MAX_WAIT_S = 60.0


class _TransientTokenAnswer(Exception):
    """Raised from authlib's response hook for a throttled or failing token endpoint, so the request is resent."""

    def __init__(self, status_code: int, retry_after: float | None) -> None:
        super().__init__(status_code)
        self.status_code = status_code
        self.retry_after = retry_after


class _AuthlibProvider(_CachingProvider):
    """A provider that talks to an OAuth 2.0 token endpoint through authlib's ``OAuth2Client`` over httpx."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        scopes: tuple[str, ...],
        organization_url: str,
        clock: Clock,
        transport: httpx.BaseTransport | None,
        verify: ssl.SSLContext | bool,
        timeout_s: float,
        **oauth_options: Any,
    ) -> None:
        from connector.client import USER_AGENT

        super().__init__(
            organization_url=organization_url,
            client_id=client_id,
            scope_hint=scopes[0] if scopes else "{org}/.default",
            clock=clock,
        )
        self._token_url = token_url
        self._scopes = scopes
        kwargs: dict[str, Any] = {"verify": verify, "timeout": timeout_s, "headers": {"User-Agent": USER_AGENT}}
        if transport is not None:
            kwargs["transport"] = transport
        self._oauth = OAuth2Client(
            client_id=client_id,
            scope=" ".join(scopes),
            token_endpoint=token_url,
            leeway=0,
            **oauth_options,
            **kwargs,
        )
        # Runs before authlib parses the body, so a refusal keeps its error_codes (authlib would keep only the text).
        self._oauth.register_compliance_hook("access_token_response", self._check_response)
        self._oauth.register_compliance_hook("refresh_token_response", self._check_response)

    def _check_response(self, response: httpx.Response) -> httpx.Response:
        if response.status_code in TOKEN_TRANSIENT:
            from connector.client import parse_retry_after

            raise _TransientTokenAnswer(response.status_code, parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 400:
            raise _token_endpoint_error(response, self._scope_hint)
        return response

    def close(self) -> None:
        self._oauth.close()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run an authlib token call, mapping transport failures and odd answers to connector errors."""
        from connector.client import map_transport_error

        # A token request is safe to resend (a lost refresh answer leaves the old refresh token valid), and a run that
        # dies because the identity platform hiccuped once, in the middle of a long sync, is the failure users report.
        for attempt in range(TOKEN_RETRIES + 1):
            try:
                raw = fn(*args, **kwargs)
            except _TransientTokenAnswer as answer:
                if attempt == TOKEN_RETRIES:
                    raise AuthenticationError(
                        f"the token endpoint is unavailable (HTTP {answer.status_code} on {attempt + 1} attempts); "
                        "try again later",
                        status_code=answer.status_code,
                    ) from None
                self._pause(answer.retry_after, attempt, f"HTTP {answer.status_code}")
                continue
            except ConnectorError:
                raise
            except httpx.HTTPError as exc:
                error = map_transport_error(exc, what="the token endpoint", field="token_url")
                if attempt == TOKEN_RETRIES or isinstance(error, ConnectionConfigError):
                    raise error from exc
                self._pause(None, attempt, type(exc).__name__)
                continue
            except Exception as exc:  # authlib's OAuthError, or ValueError for a body that is not JSON
                raise AuthenticationError(
                    f"the token endpoint answered with something that is not a token ({type(exc).__name__}): "
                    "check token_url, or tenant_id and authority_host"
                ) from None
            return dict(raw)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _pause(self, retry_after: float | None, attempt: int, why: str) -> None:
        wait = min(retry_after if retry_after is not None else float(2**attempt), TOKEN_MAX_WAIT_S)
        log.debug("token request failed (%s); retrying in %.1f s", why, wait)
        self._clock.sleep(wait)


class ClientCredentialsProvider(_AuthlibProvider):
    """Client-credentials tokens (a client secret) through authlib's ``OAuth2Client`` over httpx.

    Secrets go in the form body (``client_secret_post``), as Microsoft's documentation shows. ``transport`` replaces
    the network for tests.
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...],
        organization_url: str,
        clock: Clock,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
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
            client_secret=client_secret,
            token_endpoint_auth_method="client_secret_post",
            grant_type="client_credentials",
        )

    def _request_token(self) -> dict[str, Any]:
        return self._call(self._oauth.fetch_token, self._token_url, grant_type="client_credentials")


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
    password: str | None,
) -> ClientCertificate:
    """Load a PEM certificate and key (the key optionally encrypted) or a PFX/PKCS#12 file.

    Errors name the file and what to check, never the password or key material.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    secret = password.encode() if password else None
    key: Any
    if pfx_file is not None:
        data = _read_file(pfx_file, "pfx_file")
        try:
            key, cert, _ = pkcs12.load_key_and_certificates(data, secret)
        except ValueError:
            raise ConnectionConfigError(
                f"pfx_file {pfx_file} cannot be opened: the file is not a PFX/PKCS#12 file, or private_key_password "
                "is wrong or missing",
                field="private_key_password",
            ) from None
        if key is None or cert is None:
            raise ConnectionConfigError(
                f"pfx_file {pfx_file} must hold both the certificate and its private key", field="pfx_file"
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
                f"certificate_file {certificate_file} is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                field="certificate_file",
            ) from None
        try:
            key = serialization.load_pem_private_key(_read_file(private_key_file, "private_key_file"), secret)
        except TypeError:
            raise ConnectionConfigError(
                f"private_key_file {private_key_file} is encrypted: set private_key_password"
                if secret is None
                else f"private_key_file {private_key_file} is not encrypted: remove private_key_password",
                field="private_key_password",
            ) from None
        except ValueError:
            raise ConnectionConfigError(
                f"private_key_file {private_key_file} cannot be read: it is not a PEM private key, or "
                "private_key_password is wrong",
                field="private_key_password" if secret else "private_key_file",
            ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConnectionConfigError(
            "the certificate's key must be an RSA key (Entra signs and checks client assertions with RS256)",
            field="pfx_file" if pfx_file is not None else "private_key_file",
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    return ClientCertificate(private_key=key, x5t=x5t_thumbprint(der), subject=cert.subject.rfc4514_string())


def _read_file(path: Path, field_name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConnectionConfigError(
            f"{field_name} {path} cannot be read ({exc.strerror or type(exc).__name__}): check the path (relative "
            "paths start at the connection file's folder) and its permissions",
            field=field_name,
        ) from None


class CertificateProvider(_AuthlibProvider):
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
            token_endpoint_auth_method="none",  # client_id in the form; the assertion authenticates the client
            grant_type="client_credentials",
        )
        self._certificate = certificate
        self._key = RSAKey.import_key(certificate.private_key)

    def client_assertion(self) -> str:
        """A new signed client assertion for the token URL."""
        now = int(self._clock.time())
        claims = {
            "aud": self._token_url,
            "iss": self._client_id,
            "sub": self._client_id,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME_S,
        }
        header = {"alg": "RS256", "typ": "JWT", "x5t": self._certificate.x5t}
        return str(jose_jwt.encode(header, claims, self._key))

    def _request_token(self) -> dict[str, Any]:
        return self._call(
            self._oauth.fetch_token,
            self._token_url,
            grant_type="client_credentials",
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=self.client_assertion(),
        )


OnToken = Callable[[str], None]
"""Called with each new refresh token (they rotate on every use); the platform stores it where it keeps secrets."""


@dataclass(frozen=True)
class LoginRequest:
    """One sign-in attempt: the URL to open, and the ``state`` and PKCE verifier that the answer must match."""

    url: str
    redirect_uri: str
    state: str = field(repr=False)
    code_verifier: str = field(repr=False)


class AuthorizationCodeProvider(_AuthlibProvider):
    """Delegated access as a signed-in user: authorization code with PKCE (S256), then rotating refresh tokens.

    The first refresh token comes from :meth:`begin_login` / :meth:`finish_login` (``d365 connection login``), from
    the ``refresh_token`` field, or from the ``token_store`` file. Every refresh returns a new refresh token, which is
    saved to the token store and passed to ``on_token``: the identity platform may stop accepting older ones.
    """

    def __init__(
        self,
        *,
        token_url: str,
        authorize_url: str,
        client_id: str,
        scopes: tuple[str, ...],
        organization_url: str,
        clock: Clock,
        refresh_token: str | None = None,
        token_store: TokenStore | None = None,
        on_token: OnToken | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
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
            token_endpoint_auth_method="none",  # a public client: PKCE, not a secret, protects the code
            code_challenge_method="S256",  # without it authlib silently skips PKCE
        )
        self._authorize_url = authorize_url
        self._store = token_store
        self._on_token = on_token
        self._refresh_token = refresh_token
        self._loaded = refresh_token is not None

    @property
    def token_store(self) -> TokenStore | None:
        return self._store

    def _current_refresh_token(self) -> str:
        if not self._loaded:
            self._loaded = True
            if self._store is not None:
                self._refresh_token = self._store.load()
        if not self._refresh_token:
            where = f"token_store {self._store.path}" if self._store is not None else "refresh_token"
            raise AuthenticationError(
                f"no refresh token yet ({where} is empty): run `d365 connection login --connection FILE` to sign in, "
                "or set refresh_token",
                code="LoginRequired",
            )
        return self._refresh_token

    def _request_token(self) -> dict[str, Any]:
        raw = self._call(self._oauth.refresh_token, self._token_url, refresh_token=self._current_refresh_token())
        self._rotate(raw)
        return raw

    def _rotate(self, raw: dict[str, Any]) -> None:
        """Keep and persist the refresh token of a token answer (a new one every time)."""
        new = raw.get("refresh_token")
        if not isinstance(new, str) or not new or new == self._refresh_token:
            return
        self._refresh_token = new
        self._loaded = True
        if self._store is not None:
            self._store.save(new, client_id=self._client_id, organization_url=self._organization_url)
        if self._on_token is not None:
            self._on_token(new)
        log.debug("the refresh token rotated and was persisted")

    def begin_login(self, redirect_uri: str) -> LoginRequest:
        """The authorization URL (with ``code_challenge`` S256 and a random ``state``) for a browser to open."""
        verifier = secrets.token_urlsafe(64)
        state = secrets.token_urlsafe(24)
        url, _ = self._oauth.create_authorization_url(
            self._authorize_url,
            state=state,
            code_verifier=verifier,
            redirect_uri=redirect_uri,
            prompt="select_account",
        )
        return LoginRequest(url=str(url), redirect_uri=redirect_uri, state=state, code_verifier=verifier)

    def finish_login(self, request: LoginRequest, callback_url: str) -> None:
        """Redeem the code the redirect brought back; refuse a wrong ``state`` or an error answer."""
        params = dict(parse_qsl(urlsplit(callback_url).query))
        if "error" in params:
            description = params.get("error_description", "").splitlines()[0:1]
            raise AuthenticationError(
                f"sign-in failed ({params['error']}){': ' + description[0] if description else ''}",
                code=params["error"],
            )
        if not hmac.compare_digest(params.get("state", ""), request.state):
            raise AuthenticationError(
                "the sign-in answer's state does not match the request (a stale or forged redirect): sign in again",
                code="StateMismatch",
            )
        if not params.get("code"):
            raise AuthenticationError("the sign-in answer carries no authorization code: sign in again")
        with self._lock:
            start = self._clock.monotonic()
            raw = self._call(
                self._oauth.fetch_token,
                self._token_url,
                grant_type="authorization_code",
                code=params["code"],
                redirect_uri=request.redirect_uri,
                code_verifier=request.code_verifier,
            )
            if not raw.get("refresh_token"):
                raise AuthenticationError(
                    "the sign-in returned no refresh token: include offline_access in scopes", code="NoRefreshToken"
                )
            self._accept(raw, start)
            self._rotate(raw)


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    """Answers the browser's redirect to 127.0.0.1 once, handing the full callback URL to the waiting login."""

    server: _RedirectServer

    def do_GET(self) -> None:
        query = dict(parse_qsl(urlsplit(self.path).query))
        if not ({"code", "error", "state"} & set(query)):
            self.send_error(404)
            return
        ok = "code" in query and "error" not in query
        body = (
            b"<!doctype html><title>d365</title><p>Signed in. You can close this window and return to the terminal."
            if ok
            else b"<!doctype html><title>d365</title><p>Sign-in failed. See the terminal for details."
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.callback(f"http://127.0.0.1:{self.server.server_port}{self.path}")

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the authorization code: never log it
        pass


class _RedirectServer(http.server.HTTPServer):
    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _RedirectHandler)
        self.received: str | None = None
        self.done = threading.Event()

    def callback(self, url: str) -> None:
        if self.received is None:
            self.received = url
        self.done.set()


def run_login(
    provider: AuthorizationCodeProvider,
    *,
    port: int = 0,
    show_url: Callable[[str], None],
    timeout_s: float = 300.0,
) -> None:
    """Sign a user in: listen on 127.0.0.1:``port`` (0 = a free port), show the URL, redeem the code it brings back.

    ``show_url`` opens a browser or prints the URL. The redirect URI is ``http://127.0.0.1:<port>/`` (Entra accepts
    any port for a loopback redirect URI registered as ``http://localhost`` or ``http://127.0.0.1``). The refresh
    token goes to the provider's token store and ``on_token`` callback.
    """
    try:
        server = _RedirectServer(port)
    except OSError as exc:
        raise ConnectionConfigError(
            f"cannot listen for the sign-in redirect on 127.0.0.1:{port} ({exc.strerror or type(exc).__name__}): "
            "set redirect_port to a free port, or 0",
            field="redirect_port",
        ) from None
    thread = threading.Thread(target=server.serve_forever, name="d365-login-redirect", daemon=True)
    thread.start()
    try:
        request = provider.begin_login(f"http://127.0.0.1:{server.server_port}/")
        show_url(request.url)
        if not server.done.wait(timeout_s) or server.received is None:
            raise AuthenticationError(
                f"no sign-in arrived within {timeout_s:.0f} s: open the URL in a browser on this machine and sign in",
                code="LoginTimeout",
            )
        provider.finish_login(request, server.received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


IMDS_ENDPOINT = "http://169.254.169.254/metadata/identity/oauth2/token"
IMDS_API_VERSION = "2018-02-01"
APP_SERVICE_API_VERSION = "2019-08-01"
MI_RETRIES = 3
_MI_TRANSIENT = frozenset({429, 500, 502, 503, 504})


class ManagedIdentityProvider(_CachingProvider):
    """Tokens from the Azure host's managed identity: a plain GET, no secret in the configuration.

    Two endpoints exist (authlib supports neither): the instance metadata service (VMs, AKS, Container Instances) at
    a fixed link-local address, asked with ``Metadata: true`` and answering ``expires_in``; and the App Service /
    Functions / Container Apps endpoint, named by the ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER`` environment
    variables, asked with ``X-IDENTITY-HEADER`` and answering ``expires_on``. ``identity_endpoint`` (with
    ``identity_style`` and ``identity_header``) overrides the choice, for tests and the emulator.
    """

    _what = "the managed identity endpoint"

    def __init__(
        self,
        *,
        organization_url: str,
        clock: Clock,
        client_id: str | None = None,
        endpoint: str | None = None,
        style: str | None = None,
        identity_header: str | None = None,
        transport: httpx.BaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 30.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        from connector.client import USER_AGENT

        super().__init__(organization_url=organization_url, client_id="", scope_hint=organization_url, clock=clock)
        env = os.environ if environ is None else environ
        if endpoint is None and env.get("IDENTITY_ENDPOINT") and env.get("IDENTITY_HEADER"):
            endpoint, style, identity_header = env["IDENTITY_ENDPOINT"], "app_service", env["IDENTITY_HEADER"]
        self._style = style or "imds"
        self._endpoint = endpoint or IMDS_ENDPOINT
        self._header = identity_header
        self._mi_client_id = client_id
        if self._style == "app_service" and not identity_header:
            raise ConnectionConfigError(
                "the App Service identity endpoint needs identity_header (IDENTITY_HEADER)", field="identity_header"
            )
        kwargs: dict[str, Any] = {}
        if transport is not None:
            kwargs["transport"] = transport
        # trust_env=False: the identity endpoint is local to the host and must never go through a proxy
        self._http = httpx.Client(
            verify=verify, timeout=timeout_s, trust_env=False, headers={"User-Agent": USER_AGENT}, **kwargs
        )

    @property
    def style(self) -> str:
        return self._style

    def close(self) -> None:
        self._http.close()

    def _request_token(self) -> dict[str, Any]:
        from connector.client import map_transport_error, parse_retry_after

        params = {"resource": self._organization_url}
        if self._style == "app_service":
            params["api-version"] = APP_SERVICE_API_VERSION
            headers = {"X-IDENTITY-HEADER": self._header or ""}
        else:
            params["api-version"] = IMDS_API_VERSION
            headers = {"Metadata": "true"}
        if self._mi_client_id:
            params["client_id"] = self._mi_client_id
        try:
            response = self._http.get(self._endpoint, params=params, headers=headers)
            for attempt in range(MI_RETRIES):
                # IMDS throttles (429) and answers 5xx while the identity is being set up; Azure SDKs retry both
                if response.status_code not in _MI_TRANSIENT:
                    break
                wait = parse_retry_after(response.headers.get("Retry-After")) or float(2**attempt)
                log.debug("managed identity endpoint answered %s; retrying in %.1f s", response.status_code, wait)
                self._clock.sleep(min(wait, 30.0))
                response = self._http.get(self._endpoint, params=params, headers=headers)
        except httpx.HTTPError as exc:
            error = map_transport_error(exc, what=self._what, field="identity_endpoint")
            if isinstance(error, ConnectorError) and not isinstance(error, ConnectionConfigError):
                raise AuthenticationError(
                    f"{error.message}. Is this running on Azure with a managed identity enabled? Outside Azure use "
                    "another connection kind",
                    code="ManagedIdentityUnavailable",
                ) from exc
            raise error from exc
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict):
            said = ""
            if isinstance(body, dict):
                said = str(body.get("error_description") or body.get("message") or body.get("error") or "")
            said = said.splitlines()[0] if said else ""
            match = _AADSTS.search(said)
            hint = {
                400: "check managed_identity_client_id (a user-assigned identity's client id) and that the identity "
                "is assigned to this resource",
                401: "the identity header was refused: check IDENTITY_HEADER / identity_header",
                404: "no managed identity is assigned to this resource: enable one in the Azure portal (Identity)",
            }.get(response.status_code, "try again later")
            raise AuthenticationError(
                f"the managed identity endpoint refused the request (HTTP {response.status_code}): {hint}"
                + (f"; server said: {said}" if said else ""),
                code=f"AADSTS{match.group(1)}" if match else f"ManagedIdentity{response.status_code}",
                status_code=response.status_code,
            )
        return body


ProviderFactory = Callable[..., TokenProvider]


def _client_credentials(
    config: ConnectionConfig, *, transport: httpx.BaseTransport | None, clock: Clock, verify: ssl.SSLContext | bool
) -> TokenProvider:
    assert config.client_secret is not None  # guaranteed by parse_config for this kind
    return ClientCredentialsProvider(
        token_url=config.token_url,
        client_id=config.client_id,
        client_secret=config.client_secret.reveal(),
        scopes=config.scopes,
        organization_url=config.organization_url,
        clock=clock,
        transport=transport,
        verify=verify,
        timeout_s=config.timeout_s,
    )


def _certificate(
    config: ConnectionConfig, *, transport: httpx.BaseTransport | None, clock: Clock, verify: ssl.SSLContext | bool
) -> TokenProvider:
    password = config.private_key_password.reveal() if config.private_key_password else None
    certificate = load_client_certificate(
        certificate_file=config.certificate_file,
        private_key_file=config.private_key_file,
        pfx_file=config.pfx_file,
        password=password,
    )
    return CertificateProvider(
        token_url=config.token_url,
        client_id=config.client_id,
        certificate=certificate,
        scopes=config.scopes,
        organization_url=config.organization_url,
        clock=clock,
        transport=transport,
        verify=verify,
        timeout_s=config.timeout_s,
    )


def _authorization_code(
    config: ConnectionConfig,
    *,
    transport: httpx.BaseTransport | None,
    clock: Clock,
    verify: ssl.SSLContext | bool,
    on_token: OnToken | None = None,
) -> TokenProvider:
    assert config.authorize_url is not None  # resolved by parse_config for this kind
    return AuthorizationCodeProvider(
        token_url=config.token_url,
        authorize_url=config.authorize_url,
        client_id=config.client_id,
        scopes=config.scopes,
        organization_url=config.organization_url,
        clock=clock,
        refresh_token=config.refresh_token.reveal() if config.refresh_token else None,
        token_store=TokenStore(config.token_store) if config.token_store else None,
        on_token=on_token,
        transport=transport,
        verify=verify,
        timeout_s=config.timeout_s,
    )


def _managed_identity(
    config: ConnectionConfig, *, transport: httpx.BaseTransport | None, clock: Clock, verify: ssl.SSLContext | bool
) -> TokenProvider:
    return ManagedIdentityProvider(
        organization_url=config.organization_url,
        clock=clock,
        client_id=config.managed_identity_client_id,
        endpoint=config.identity_endpoint,
        style=config.identity_style,
        identity_header=config.identity_header.reveal() if config.identity_header else None,
        transport=transport,
        verify=verify,
        timeout_s=config.timeout_s,
    )


PROVIDERS: dict[str, ProviderFactory] = {
    "client_credentials": _client_credentials,
    "certificate": _certificate,
    "authorization_code": _authorization_code,
    "managed_identity": _managed_identity,
}
"""Token provider factory per connection kind."""


def make_token_provider(
    config: ConnectionConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    clock: Clock,
    verify: ssl.SSLContext | bool = True,
    on_token: OnToken | None = None,
) -> TokenProvider:
    """Build the token provider for ``config.kind``; ``on_token`` receives rotated refresh tokens (user sign-in)."""
    try:
        factory = PROVIDERS[config.kind]
    except KeyError:
        raise AuthenticationError(f"no token provider for connection kind {config.kind!r}") from None
    if on_token is not None and config.kind == "authorization_code":
        return factory(config, transport=transport, clock=clock, verify=verify, on_token=on_token)
    return factory(config, transport=transport, clock=clock, verify=verify)
