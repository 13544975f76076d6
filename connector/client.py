"""The Dataverse Web API client core: one ``httpx.Client`` per connection, OData headers, typed errors, bounded retry.

This is the one place where httpx errors and Dataverse error bodies become :mod:`connector.errors` (with
``raise ... from exc``); nothing above it catches ``httpx.HTTPError``. Retries here are deliberately simple:

* 401: the token is re-fetched once and the request sent again (tokens can be revoked or rotated before they expire);
* 429, and 503 with ``Retry-After``: Dataverse did not execute the request; wait exactly ``Retry-After`` seconds on
  the injected clock and send again, within :class:`RetryPolicy`'s caps on attempts and total waiting;
* network failures and 5xx without a Dataverse error code: sent again with capped exponential backoff and full
  jitter when the request is idempotent, or when it provably never left (connection refused); otherwise the outcome
  is unknown and :class:`OutcomeUnknownError` says so.

The throttle governor shared by all threads of a connection (issue 5) replaces the 429 branch; until then each call
waits on its own.
"""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from connector import __version__
from connector.clock import Clock, SystemClock
from connector.errors import (
    AuthenticationError,
    ConnectionConfigError,
    DataverseApiError,
    FatalApiError,
    InputError,
    NotFoundError,
    OutcomeUnknownError,
    RetriableApiError,
)

if TYPE_CHECKING:
    from connector.auth import TokenProvider

__all__ = [
    "USER_AGENT",
    "DataverseAuthError",
    "DataverseClient",
    "NetworkConfigError",
    "RetryPolicy",
    "WhoAmI",
    "error_from_response",
    "impersonation_headers",
    "map_transport_error",
    "parse_retry_after",
]

log = logging.getLogger("connector.http")

USER_AGENT = f"d365-connector/{__version__}"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Caps on the simple retries of this client (the governor of issue 5 will own the throttling part).

    ``max_attempts`` counts every send of one request, the first included; ``max_wait_s`` caps the total time spent
    waiting for ``Retry-After``. Network and 5xx backoff is ``min(backoff_cap_s, backoff_base_s * 2**n)`` scaled by
    ``jitter()`` (full jitter: a uniform draw in [0, 1), so many clients do not retry in step).
    """

    max_attempts: int = 5
    max_wait_s: float = 300.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    jitter: Callable[[], float] = random.random


class NetworkConfigError(ConnectionConfigError):
    """Raised when the host cannot be resolved or its TLS certificate is not trusted: a setting to check, not a blip.

    ``reason`` is ``"dns"`` or ``"tls"``.
    """

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "reason": self.reason}


class DataverseAuthError(AuthenticationError):
    """Raised when Dataverse answers 401 even to a freshly fetched token; carries its ``WWW-Authenticate`` challenge."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        www_authenticate: str | None = None,
    ) -> None:
        super().__init__(message, code=code, status_code=401)
        self.request_id = request_id
        self.www_authenticate = www_authenticate

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "request_id": self.request_id}


@dataclass(frozen=True)
class WhoAmI:
    """The answer of the WhoAmI function: the calling (or impersonated) user, its business unit and organization."""

    user_id: str
    business_unit_id: str
    organization_id: str


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def map_transport_error(
    exc: httpx.HTTPError, *, what: str, field: str = "organization_url", idempotent: bool = True, method: str = ""
) -> Exception:
    """Turn an httpx failure into the error that says what to check; the caller raises it ``from exc``.

    DNS and certificate failures are settings problems (:class:`NetworkConfigError`); timeouts and dropped
    connections are transient (:class:`RetriableApiError`) unless the request may have been applied
    (:class:`OutcomeUnknownError`).
    """
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, socket.gaierror) for e in chain) or any(
        marker in text
        for marker in ("name or service not known", "nodename nor servname", "getaddrinfo failed", "name resolution")
    ):
        return NetworkConfigError(
            f"cannot resolve the host of {what}: check {field} (spelling, and that it still exists) and this "
            "machine's DNS",
            reason="dns",
            field=field,
        )
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or "certificate verify failed" in text:
        return NetworkConfigError(
            f"the TLS certificate of {what} is not trusted: behind a TLS-inspecting corporate proxy set ca_file to "
            "its CA bundle; for the local emulator set ca_file to the CA it generated",
            reason="tls",
            field="ca_file",
        )
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return NetworkConfigError(
            f"the TLS handshake with {what} failed: check ca_file and any proxy between here and {field}",
            reason="tls",
            field="ca_file",
        )
    if isinstance(exc, httpx.TimeoutException):
        message = f"{what} did not answer in time ({type(exc).__name__}): check the network, or raise timeout_s"
        code = "Timeout"
    else:
        message = f"the connection to {what} failed ({type(exc).__name__}): check the network and {field}"
        code = "NetworkError"
    if not idempotent and not isinstance(exc, _NOT_SENT):
        return OutcomeUnknownError(
            f"{message}; the {method} request may or may not have been applied", code=code, method=method or None
        )
    return RetriableApiError(message, code=code, method=method or None)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if now is None:
        return None
    return max(0.0, when.timestamp() - now)


def _request_id(response: httpx.Response) -> str | None:
    value = response.headers.get("REQ_ID") or response.headers.get("x-ms-service-request-id")
    return str(value) if value else None


def _error_body(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        body = response.json()
    except ValueError:
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code = error.get("code")
    message = error.get("message")
    return (str(code) if code is not None else None), (str(message) if message is not None else None)


def _has_code(code: str | None) -> bool:
    return bool(code) and code not in ("0x0", "0")


def error_from_response(
    response: httpx.Response, *, method: str, idempotent: bool = True, retry_after: float | None = None
) -> DataverseApiError | AuthenticationError:
    """The typed error for a Dataverse error answer: status, Dataverse code, message, request id and Retry-After."""
    status = response.status_code
    code, server_message = _error_body(response)
    request_id = _request_id(response)
    path = response.request.url.path if response.request else ""
    said = server_message or response.reason_phrase or "no message"
    where = f"{method} {path}"
    suffix = "".join([f" (code {code})" if code else "", f" [request id {request_id}]" if request_id else ""])
    if retry_after is None:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    common: dict[str, Any] = {
        "status_code": status,
        "code": code,
        "request_id": request_id,
        "retry_after": retry_after,
        "method": method,
        "url": str(response.request.url.copy_with(query=None)) if response.request else None,
    }
    if status == 401:
        return DataverseAuthError(
            f"Dataverse refused the access token for {where}: {said}{suffix}. Check that the secret is current, that "
            "tenant_id is the environment's tenant, and that the token is for organization_url",
            code=code,
            request_id=request_id,
            www_authenticate=response.headers.get("WWW-Authenticate"),
        )
    if status == 403:
        return FatalApiError(
            f"Dataverse denied {where}: {said}{suffix}. The application user lacks a privilege; if every request is "
            "denied, add the app as an application user of this environment in the Power Platform admin center and "
            "give it a security role",
            **common,
        )
    if status == 404:
        return NotFoundError(f"not found: {where}: {said}{suffix}", **common)
    if status == 429 or (status == 503 and retry_after is not None):
        return RetriableApiError(
            f"Dataverse is throttling requests ({status}) and the retry budget is spent: {said}{suffix}. Try again "
            "after Retry-After seconds, or lower the request rate",
            **common,
        )
    if status >= 500 and not _has_code(code):
        text = f"Dataverse failed with HTTP {status} on {where}: {said}{suffix}"
        if not idempotent:
            return OutcomeUnknownError(f"{text}; the request may or may not have been applied", **common)
        return RetriableApiError(f"{text}; try again later", **common)
    return FatalApiError(f"Dataverse rejected {where} (HTTP {status}): {said}{suffix}", **common)


def impersonation_headers(impersonate: str | Mapping[str, str] | None) -> dict[str, str]:
    """The header that makes Dataverse act as another user.

    * a GUID string, or ``{"azure_object_id": GUID}``: the user's Microsoft Entra object id, sent as
      ``CallerObjectId`` (Microsoft's preferred form);
    * ``{"systemuserid": GUID}``: the Dataverse user id, sent as ``MSCRMCallerID``.

    The caller needs the ``prvActOnBehalfOfAnotherUser`` privilege.
    """
    if impersonate is None:
        return {}
    if isinstance(impersonate, str):
        name, value = "CallerObjectId", impersonate
    elif isinstance(impersonate, Mapping) and len(impersonate) == 1 and "systemuserid" in impersonate:
        name, value = "MSCRMCallerID", impersonate["systemuserid"]
    elif isinstance(impersonate, Mapping) and len(impersonate) == 1 and "azure_object_id" in impersonate:
        name, value = "CallerObjectId", impersonate["azure_object_id"]
    else:
        raise InputError("impersonate must be a GUID, {'azure_object_id': GUID} or {'systemuserid': GUID}")
    try:
        return {name: str(uuid.UUID(str(value)))}
    except ValueError:
        raise InputError(f"impersonate: {name} must be a GUID") from None


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` with the scheme's default port made explicit, for same-host checks."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(scheme)


class DataverseClient:
    """Sends requests to one environment's Web API with a bearer token from a :class:`TokenProvider`.

    Relative paths are joined to ``api_url``; an absolute URL must be on the environment's host, so a token is never
    sent elsewhere (for example through a forged ``@odata.nextLink`` or page token).
    """

    def __init__(
        self,
        api_url: str,
        tokens: TokenProvider,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        verify: ssl.SSLContext | bool = True,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._origin = _origin(self._api_url)
        self._tokens = tokens
        self._clock: Clock = clock or SystemClock()
        self._retry = retry or RetryPolicy()
        kwargs: dict[str, Any] = {}
        if transport is not None:
            kwargs["transport"] = transport
        self._http = httpx.Client(
            verify=verify,
            timeout=timeout_s,
            follow_redirects=False,
            headers={
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "User-Agent": USER_AGENT,
            },
            **kwargs,
        )

    @property
    def api_url(self) -> str:
        return self._api_url

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry

    def close(self) -> None:
        self._http.close()

    def url_for(self, path_or_url: str) -> str:
        """The absolute URL for a path relative to the API root, or an absolute URL checked to be on this host."""
        if path_or_url.lower().startswith(("http://", "https://")):
            parts = urlsplit(path_or_url)
            if _origin(path_or_url) != self._origin:
                raise InputError(
                    f"refusing to send this connection's token to {parts.scheme}://{parts.netloc}: only URLs on "
                    f"{self._api_url} are allowed"
                )
            return path_or_url
        return f"{self._api_url}/{path_or_url.lstrip('/')}"

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        prefer: Sequence[str] = (),
        impersonate: str | Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send one request and return its successful response, or raise the typed error.

        ``prefer`` values are joined into one ``Prefer`` header; ``impersonate`` is described in
        :func:`impersonation_headers`; ``idempotent`` defaults to true for every method but POST and decides whether
        a failure in transit may be retried.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        url = self.url_for(path_or_url)
        extra: dict[str, str] = dict(headers or {})
        if prefer:
            extra["Prefer"] = ", ".join(prefer)
        extra.update(impersonation_headers(impersonate))
        if json is not None:
            extra.setdefault("Content-Type", "application/json")
        policy = self._retry
        attempts = 0
        waited = 0.0
        refreshed = False
        backoff_n = 0
        while True:
            attempts += 1
            token = self._tokens.token()
            request = self._http.build_request(
                method, url, params=params, json=json, headers={**extra, "Authorization": f"Bearer {token}"}
            )
            start = self._clock.monotonic()
            try:
                response = self._http.send(request)
            except httpx.HTTPError as exc:
                error = map_transport_error(exc, what="Dataverse", idempotent=idempotent, method=method)
                log.debug("%s %s failed: %s", method, request.url.path, type(exc).__name__)
                if isinstance(error, RetriableApiError) and attempts < policy.max_attempts:
                    self._backoff(backoff_n)
                    backoff_n += 1
                    continue
                raise error from exc
            elapsed_ms = (self._clock.monotonic() - start) * 1000
            log.debug("%s %s -> %s in %.0f ms", method, request.url.path, response.status_code, elapsed_ms)
            status = response.status_code
            if status < 400:
                return response
            if status == 401 and not refreshed:
                refreshed = True
                attempts -= 1  # a rejected token is our problem, not Dataverse's: it does not use up the budget
                self._tokens.force_refresh(token)
                continue
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._clock.time())
            if status == 429 or (status == 503 and retry_after is not None):
                wait = retry_after if retry_after is not None else self._backoff_delay(backoff_n)
                if attempts < policy.max_attempts and waited + wait <= policy.max_wait_s:
                    log.debug("%s %s throttled (%s); waiting %.1f s", method, request.url.path, status, wait)
                    self._clock.sleep(wait)
                    waited += wait
                    if retry_after is None:
                        backoff_n += 1
                    continue
            elif status >= 500 and idempotent and attempts < policy.max_attempts:
                code, _ = _error_body(response)
                if not _has_code(code):
                    self._backoff(backoff_n)
                    backoff_n += 1
                    continue
            raise error_from_response(response, method=method, idempotent=idempotent, retry_after=retry_after)

    def _backoff_delay(self, n: int) -> float:
        policy = self._retry
        return float(min(policy.backoff_cap_s, policy.backoff_base_s * (2**n)) * policy.jitter())

    def _backoff(self, n: int) -> None:
        self._clock.sleep(self._backoff_delay(n))

    def get_json(
        self,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        prefer: Sequence[str] = (),
        impersonate: str | Mapping[str, str] | None = None,
    ) -> Any:
        """GET and decode the JSON body (None for an empty 204)."""
        response = self.request(
            "GET", path_or_url, params=params, headers=headers, prefer=prefer, impersonate=impersonate
        )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise FatalApiError(
                f"Dataverse answered GET {response.request.url.path} with a body that is not JSON",
                status_code=response.status_code,
                request_id=_request_id(response),
                method="GET",
            ) from exc

    def whoami(self, *, impersonate: str | Mapping[str, str] | None = None) -> WhoAmI:
        """Call the WhoAmI function: who this connection (or the impersonated user) is."""
        body = self.get_json("WhoAmI", impersonate=impersonate)
        try:
            return WhoAmI(
                user_id=str(body["UserId"]),
                business_unit_id=str(body["BusinessUnitId"]),
                organization_id=str(body["OrganizationId"]),
            )
        except (KeyError, TypeError) as exc:
            raise FatalApiError("Dataverse answered WhoAmI without UserId, BusinessUnitId and OrganizationId") from exc
