"""The OAuth 2.0 token endpoint, through authlib's ``OAuth2Client`` over httpx: what the three Entra kinds share.

Client credentials, certificate and authorization code all ask the same token endpoint; they differ only in the grant
and how the client proves itself. Refusals become :class:`AuthenticationError` carrying the ``AADSTS`` code and what to
do about it; throttled and failing answers are resent under the connection's retry policy (see
:meth:`~connector.auth.base.CachingProvider._retrying`).
"""

from __future__ import annotations

import ssl
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import httpx

from connector.auth.base import AADSTS_CODE, CachingProvider, TokenAnswer
from connector.clock import Clock
from connector.errors import AuthenticationError, ConnectorError, TransientAnswer, preview
from connector.secret import Secret
from connector.transport import USER_AGENT, RetryPolicy

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import OAuth2Client


def _oauth2_client_class() -> Any:
    """authlib, imported when a token is first asked of the endpoint: a run whose token comes from the token store
    never pays its import (about a fifth of ``d365 run``'s start-up)."""
    import authlib.deprecate  # noqa: F401  # imported first: it installs an "always" filter that would beat ours below

    with warnings.catch_warnings():
        # Authlib 1.9 prefers the httpx2 fork and warns when it falls back to httpx, which this project uses on purpose.
        warnings.filterwarnings("ignore", message="The httpx module is deprecated", category=DeprecationWarning)
        from authlib.integrations.httpx_client import OAuth2Client

    return OAuth2Client


__all__ = ["AuthlibProvider", "token_endpoint_error"]

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


def token_endpoint_error(response: httpx.Response, scope: str) -> AuthenticationError:
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
    elif match := AADSTS_CODE.search(description):
        code = f"AADSTS{match.group(1)}"
    # The first line of the description is the human part; the rest is trace and correlation ids and a timestamp.
    summary = description.splitlines()[0].strip() if description else ""
    advice = _AADSTS_ADVICE.get(code or "")
    if advice is None and error == "invalid_client":
        advice = "check client_id and client_secret"
    elif advice is None and error == "unauthorized_client":
        advice = "check client_id and tenant_id"
    parts = [f"the token endpoint refused the request ({preview(error)}{', ' + preview(code) if code else ''})"]
    if advice:
        parts.append(advice.format(scope=scope))
    if summary:
        parts.append(f"server said: {preview(summary, 300)}")
    return AuthenticationError(": ".join(parts), code=code or error, status_code=response.status_code)


class AuthlibProvider(CachingProvider):
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
        retry: RetryPolicy | None,
        **oauth_options: Any,
    ) -> None:
        super().__init__(
            organization_url=organization_url,
            client_id=client_id,
            scope_hint=scopes[0] if scopes else "{org}/.default",
            clock=clock,
            retry=retry,
        )
        self._token_url = token_url
        self._scopes = scopes
        kwargs: dict[str, Any] = {"verify": verify, "timeout": timeout_s, "headers": {"User-Agent": USER_AGENT}}
        if transport is not None:
            kwargs["transport"] = transport
        self._oauth_options: dict[str, Any] = {
            "client_id": client_id,
            "scope": " ".join(scopes),
            "token_endpoint": token_url,
            "leeway": 0,
            **oauth_options,
            **kwargs,
        }
        self._oauth_client: OAuth2Client | None = None
        self._oauth_lock = threading.Lock()

    @property
    def _oauth(self) -> OAuth2Client:
        """authlib's client, built at its first use (see :func:`_oauth2_client_class`)."""
        with self._oauth_lock:
            if self._oauth_client is None:
                client = _oauth2_client_class()(**self._oauth_options)
                # Runs before authlib parses the body, so a refusal keeps its error_codes (authlib would keep only the
                # text).
                client.register_compliance_hook("access_token_response", self._check_response)
                client.register_compliance_hook("refresh_token_response", self._check_response)
                self._oauth_client = client
            return self._oauth_client

    def _check_response(self, response: httpx.Response) -> httpx.Response:
        self._raise_if_transient(response)
        if response.status_code >= 400:
            raise token_endpoint_error(response, self._scope_hint)
        return response

    def close(self) -> None:
        if self._oauth_client is not None:
            self._oauth_client.close()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run an authlib token call under the retry policy, mapping odd answers to connector errors."""

        def send() -> dict[str, Any]:
            try:
                # Secrets are revealed only into the call itself, never into a local of a frame of ours.
                return TokenAnswer(
                    fn(*args, **{k: v.reveal() if isinstance(v, Secret) else v for k, v in kwargs.items()})
                )
            except (ConnectorError, TransientAnswer, httpx.HTTPError):
                raise
            except Exception as exc:  # authlib's OAuthError, or ValueError for a body that is not JSON
                raise AuthenticationError(
                    f"the token endpoint answered with something that is not a token ({type(exc).__name__}): "
                    "check token_url, or tenant_id and authority_host"
                ) from None

        return self._retrying(send, field="token_url", exhausted=_unavailable)


def _unavailable(answer: TransientAnswer, attempts: int) -> NoReturn:
    status = answer.response.status_code
    raise AuthenticationError(
        f"the token endpoint is unavailable (HTTP {status} on {attempts} attempts); try again later",
        status_code=status,
    ) from None
