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

import base64
import binascii
import json
import logging
import re
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import authlib.deprecate  # noqa: F401  # imported first: it installs an "always" filter that would beat ours below
import httpx

from connector.clock import Clock
from connector.errors import AuthenticationError, ConnectorError

with warnings.catch_warnings():
    # Authlib 1.9 prefers the httpx2 fork and warns when it falls back to httpx, which this project uses on purpose.
    warnings.filterwarnings("ignore", message="The httpx module is deprecated", category=DeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client

if TYPE_CHECKING:
    from connector.connection import ConnectionConfig

__all__ = [
    "DYNAMICS_CRM_APP_ID",
    "ClientCredentialsProvider",
    "TokenProvider",
    "audience_problem",
    "decode_jwt_claims",
    "make_token_provider",
    "refresh_leeway",
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


class ClientCredentialsProvider:
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
        from connector.client import USER_AGENT

        self._token_url = token_url
        self._client_id = client_id
        self._scopes = scopes
        self._organization_url = organization_url
        self._clock = clock
        self._lock = threading.Lock()
        self._current: _Token | None = None
        kwargs: dict[str, Any] = {"verify": verify, "timeout": timeout_s, "headers": {"User-Agent": USER_AGENT}}
        if transport is not None:
            kwargs["transport"] = transport
        self._oauth = OAuth2Client(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method="client_secret_post",
            scope=" ".join(scopes),
            token_endpoint=token_url,
            grant_type="client_credentials",
            leeway=0,
            **kwargs,
        )
        # Runs before authlib parses the body, so a refusal keeps its error_codes (authlib would keep only the text).
        self._oauth.register_compliance_hook("access_token_response", self._check_response)

    def _check_response(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise _token_endpoint_error(response, self._scopes[0] if self._scopes else "{org}/.default")
        return response

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

    def close(self) -> None:
        self._oauth.close()

    def _fetch(self) -> str:
        """Ask the token endpoint for a new token; the caller holds the lock."""
        from connector.client import map_transport_error

        start = self._clock.monotonic()
        try:
            raw = self._oauth.fetch_token(self._token_url, grant_type="client_credentials")
        except ConnectorError:
            raise
        except httpx.HTTPError as exc:
            raise map_transport_error(exc, what="the token endpoint", field="token_url") from exc
        except Exception as exc:  # authlib's OAuthError, or ValueError for a body that is not JSON
            raise AuthenticationError(
                f"the token endpoint answered with something that is not a token ({type(exc).__name__}): "
                "check token_url, or tenant_id and authority_host"
            ) from None
        access_token = raw.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise AuthenticationError("the token endpoint answered without an access_token: check token_url")
        token_type = str(raw.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise AuthenticationError(
                f"the token endpoint issued a {token_type!r} token; Dataverse needs a Bearer token"
            )
        problem = audience_problem(access_token, self._organization_url, self._client_id)
        if problem is not None:
            raise AuthenticationError(problem[1], code=problem[0])
        lifetime = self._lifetime(raw, access_token)
        self._current = _Token(access_token, start + lifetime, start + lifetime - refresh_leeway(lifetime))
        log.debug("fetched an access token valid for %.0f s", lifetime)
        return access_token

    def _lifetime(self, raw: dict[str, Any], access_token: str) -> float:
        try:
            if raw.get("expires_in") is not None:
                return max(0.0, float(raw["expires_in"]))
        except (TypeError, ValueError):
            pass
        claims = decode_jwt_claims(access_token) or {}
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            return max(0.0, float(exp) - self._clock.time())
        return DEFAULT_LIFETIME_S


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


PROVIDERS: dict[str, ProviderFactory] = {"client_credentials": _client_credentials}
"""Token provider factory per connection kind; certificate, authorization_code and managed_identity add theirs."""


def make_token_provider(
    config: ConnectionConfig,
    *,
    transport: httpx.BaseTransport | None = None,
    clock: Clock,
    verify: ssl.SSLContext | bool = True,
) -> TokenProvider:
    """Build the token provider for ``config.kind``."""
    try:
        factory = PROVIDERS[config.kind]
    except KeyError:
        raise AuthenticationError(f"no token provider for connection kind {config.kind!r}") from None
    return factory(config, transport=transport, clock=clock, verify=verify)
