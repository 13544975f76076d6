"""Client credentials with a secret: the app registration proves itself with ``client_secret`` in the form body."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from connector.auth.oauth import AuthlibProvider
from connector.clock import Clock
from connector.transport import RetryPolicy

__all__ = ["ClientCredentialsProvider"]


class ClientCredentialsProvider(AuthlibProvider):
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
            client_secret=client_secret,
            token_endpoint_auth_method="client_secret_post",
            grant_type="client_credentials",
        )

    def _request_token(self) -> dict[str, Any]:
        return self._call(self._oauth.fetch_token, self._token_url, grant_type="client_credentials")
