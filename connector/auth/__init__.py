"""Access tokens for Dataverse: one :class:`TokenProvider` per connection kind, built by :func:`make_token_provider`.

One module per kind (``client_credentials``, ``certificate``, ``authorization_code`` with the sign-in redirect,
``managed_identity``), the three Entra kinds over :mod:`connector.auth.oauth`, and what they all share (the cached
token, the audience check, the retry driver) in :mod:`connector.auth.base`. This package reads the connection
configuration; the kind modules take plain values.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from connector.auth.authorization_code import AuthorizationCodeProvider, LoginRequest, OnToken, run_login
from connector.auth.base import (
    AUDIENCE_MISMATCH,
    DYNAMICS_CRM_APP_ID,
    ID_TOKEN_REFUSED,
    TokenProvider,
    audience_problem,
    decode_jwt_claims,
    refresh_leeway,
)
from connector.auth.certificate import (
    CertificateProvider,
    ClientCertificate,
    load_client_certificate,
    x5t_thumbprint,
)
from connector.auth.client_credentials import ClientCredentialsProvider
from connector.auth.managed_identity import ManagedIdentityProvider
from connector.clock import Clock
from connector.errors import AuthenticationError, preview
from connector.token_store import TokenStore
from connector.transport import RetryPolicy

if TYPE_CHECKING:
    from connector.connection_config import ConnectionConfig

__all__ = [
    "AUDIENCE_MISMATCH",
    "DYNAMICS_CRM_APP_ID",
    "ID_TOKEN_REFUSED",
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


ProviderFactory = Callable[..., TokenProvider]


def _client_credentials(
    config: ConnectionConfig,
    *,
    transport: httpx.BaseTransport | None,
    clock: Clock,
    verify: ssl.SSLContext | bool,
    retry: RetryPolicy | None,
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
        retry=retry,
    )


def _certificate(
    config: ConnectionConfig,
    *,
    transport: httpx.BaseTransport | None,
    clock: Clock,
    verify: ssl.SSLContext | bool,
    retry: RetryPolicy | None,
) -> TokenProvider:
    password = config.private_key_password  # a Secret, revealed only into the key loader's call
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
        retry=retry,
    )


def _authorization_code(
    config: ConnectionConfig,
    *,
    transport: httpx.BaseTransport | None,
    clock: Clock,
    verify: ssl.SSLContext | bool,
    retry: RetryPolicy | None,
    on_token: OnToken | None = None,
) -> TokenProvider:
    assert config.authorize_url is not None  # resolved by parse_config for this kind
    certificate = None
    if config.certificate_file or config.pfx_file:  # a confidential client with a certificate
        certificate = load_client_certificate(
            certificate_file=config.certificate_file,
            private_key_file=config.private_key_file,
            pfx_file=config.pfx_file,
            password=config.private_key_password,
        )
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
        retry=retry,
        client_secret=config.client_secret.reveal() if config.client_secret else None,
        certificate=certificate,
    )


def _managed_identity(
    config: ConnectionConfig,
    *,
    transport: httpx.BaseTransport | None,
    clock: Clock,
    verify: ssl.SSLContext | bool,
    retry: RetryPolicy | None,
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
        retry=retry,
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
    retry: RetryPolicy | None = None,
) -> TokenProvider:
    """Build the token provider for ``config.kind``; ``on_token`` receives rotated refresh tokens (user sign-in).

    ``retry`` is the connection's policy, the one its Dataverse requests follow (the default policy when None).
    """
    try:
        factory = PROVIDERS[config.kind]
    except KeyError:
        raise AuthenticationError(f"no token provider for connection kind {preview(config.kind)}") from None
    if on_token is not None and config.kind == "authorization_code":
        return factory(config, transport=transport, clock=clock, verify=verify, retry=retry, on_token=on_token)
    return factory(config, transport=transport, clock=clock, verify=verify, retry=retry)
