"""Tokens from the Azure host's managed identity: a plain GET to a local endpoint, no secret in the configuration."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from connector.auth.base import AADSTS_CODE, CachingProvider, TokenAnswer
from connector.clock import Clock
from connector.errors import AuthenticationError, ConnectionConfigError, RetriableApiError, preview
from connector.transport import USER_AGENT, RetryPolicy

__all__ = ["APP_SERVICE_API_VERSION", "IMDS_API_VERSION", "IMDS_ENDPOINT", "ManagedIdentityProvider"]


IMDS_ENDPOINT = "http://169.254.169.254/metadata/identity/oauth2/token"
IMDS_API_VERSION = "2018-02-01"
APP_SERVICE_API_VERSION = "2019-08-01"


class ManagedIdentityProvider(CachingProvider):
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
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(
            organization_url=organization_url, client_id="", scope_hint=organization_url, clock=clock, retry=retry
        )
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
        params = {"resource": self._organization_url}
        if self._style == "app_service":
            params["api-version"] = APP_SERVICE_API_VERSION
            headers = {"X-IDENTITY-HEADER": self._header or ""}
        else:
            params["api-version"] = IMDS_API_VERSION
            headers = {"Metadata": "true"}
        if self._mi_client_id:
            params["client_id"] = self._mi_client_id

        def send() -> httpx.Response:
            response = self._http.get(self._endpoint, params=params, headers=headers)
            self._raise_if_transient(response)  # IMDS throttles (429), and answers 5xx while the identity is set up
            return response

        try:
            response = self._retrying(
                send, field="identity_endpoint", exhausted=lambda answer, _: answer.response, unreachable_is_final=True
            )
        except RetriableApiError as error:
            raise AuthenticationError(
                f"{error.message}. Is this running on Azure with a managed identity enabled? Outside Azure use "
                "another connection kind",
                code="ManagedIdentityUnavailable",
            ) from error.__cause__
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
            match = AADSTS_CODE.search(said)
            hint = {
                400: "check managed_identity_client_id (a user-assigned identity's client id) and that the identity "
                "is assigned to this resource",
                401: "the identity header was refused: check IDENTITY_HEADER / identity_header",
                404: "no managed identity is assigned to this resource: enable one in the Azure portal (Identity)",
            }.get(response.status_code, "try again later")
            raise AuthenticationError(
                f"the managed identity endpoint refused the request (HTTP {response.status_code}): {hint}"
                + (f"; server said: {preview(said, 300)}" if said else ""),
                code=f"AADSTS{match.group(1)}" if match else f"ManagedIdentity{response.status_code}",
                status_code=response.status_code,
            )
        return TokenAnswer(body)
