"""The Dataverse Web API client core: one ``httpx.Client`` per connection, OData headers, typed errors, retries.

This is the one place where httpx errors and Dataverse error bodies become :mod:`connector.errors` (with
``raise ... from exc``); nothing above it catches ``httpx.HTTPError``. Every send goes through the connection's
:class:`~connector.governor.Governor`, and failures are classed as the design says:

* 401: the token is re-fetched once and the request sent again (tokens can be revoked or rotated before they expire);
* 429, and 503 with ``Retry-After``: Dataverse did not execute the request; the governor holds *every* request of the
  connection until ``Retry-After`` has passed, then this one is sent again, within :class:`RetryPolicy`'s caps;
* a 4xx, or a 5xx carrying a Dataverse error code: fatal, raised at once (sending it again gives the same answer);
* network failures and other 5xx: sent again with capped exponential backoff and full jitter when the request is
  idempotent, or when it provably never left (connection refused); otherwise the outcome is unknown and
  :class:`OutcomeUnknownError` says so. :meth:`DataverseClient.create` with ``client_id`` turns a create into a
  retry-safe request: a resend that meets "duplicate key" is confirmed by a GET and reported as done, once.

The token is asked for inside the governor's slot, after any wait, so a retry that follows a wait longer than the
token's remaining life carries a fresh token rather than an expired one.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import ssl
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from connector import __version__
from connector.clock import Clock, SystemClock
from connector.errors import (
    AuthenticationError,
    DataverseApiError,
    DataverseAuthError,
    FatalApiError,
    InputError,
    NetworkConfigError,
    NotFoundError,
    OutcomeUnknownError,
    RetriableApiError,
)
from connector.governor import Governor, Outcome, RetryPolicy
from connector.ids import new_id
from connector.odata import entity_id

if TYPE_CHECKING:
    from connector.auth import TokenProvider

__all__ = [
    "DUPLICATE_RECORD",
    "USER_AGENT",
    "CreateResult",
    "DataverseClient",
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


DUPLICATE_RECORD = "0x80040237"
"""Dataverse's code for "a record with matching key values already exists" (also a duplicate primary key)."""


@dataclass
class _Trace:
    """What happened to one logical request across its sends."""

    sends: int = 0
    maybe_applied: bool = False  # an earlier send may have reached Dataverse and been applied


@dataclass(frozen=True)
class _Body:
    """What a request sends besides JSON (raw bytes, or a multipart form), its timeout, and errors it keeps."""

    content: bytes | None = None
    files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None
    data: Mapping[str, str] | None = None
    timeout_s: float | None = None
    keep_response: Callable[[httpx.Response], bool] | None = None


@dataclass(frozen=True)
class CreateResult:
    """A created row: its ``id``, how many times the POST was sent, and whether a GET confirmed it after a resend.

    ``record`` holds the row when ``return_record`` was asked for (or, after a confirmation, the row as read back).
    """

    id: str | None
    sends: int = 1
    confirmed_by_get: bool = False
    record: dict[str, Any] | None = None


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
        governor: Governor | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._origin = _origin(self._api_url)
        self._tokens = tokens
        if governor is None:
            governor = Governor(clock=clock or SystemClock(), policy=retry)
        self._governor = governor
        self._clock: Clock = governor.clock
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
        return self._governor.policy

    @property
    def governor(self) -> Governor:
        """The connection's throttle governor (shared by every thread using this client)."""
        return self._governor

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
        content: bytes | None = None,
        files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None,
        data: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        keep_response: Callable[[httpx.Response], bool] | None = None,
    ) -> httpx.Response:
        """Send one request and return its successful response, or raise the typed error.

        ``prefer`` values are joined into one ``Prefer`` header; ``impersonate`` is described in
        :func:`impersonation_headers`; ``idempotent`` defaults to true for every method but POST and decides whether
        a failure in transit may be retried. ``content`` (raw bytes: ``$batch``, file columns) or ``files`` with
        ``data`` (a multipart form) replace ``json``; ``timeout_s`` overrides the connection's timeout for this
        request. ``keep_response(response)`` returning true hands an error answer back instead of raising, for
        answers whose body reports the errors itself (a ``$batch`` stopped at its first failure answers with that
        failure's status and a multipart body); throttling and 401 are handled first as for any request.
        """
        return self._send(
            method,
            path_or_url,
            params=params,
            json=json,
            headers=headers,
            prefer=prefer,
            impersonate=impersonate,
            idempotent=idempotent,
            trace=_Trace(),
            body=_Body(content, files, data, timeout_s, keep_response),
        )

    def _send(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        prefer: Sequence[str],
        impersonate: str | Mapping[str, str] | None,
        idempotent: bool | None,
        trace: _Trace,
        body: _Body | None = None,
    ) -> httpx.Response:
        """The retry loop behind :meth:`request`; ``trace`` learns whether an earlier send may have been applied."""
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        url = self.url_for(path_or_url)
        extra: dict[str, str] = dict(headers or {})
        if prefer:
            extra["Prefer"] = ", ".join(prefer)
        extra.update(impersonation_headers(impersonate))
        body = body or _Body()
        send_kwargs: dict[str, Any] = {}
        if body.content is not None:
            send_kwargs["content"] = body.content
        if body.files is not None:
            send_kwargs["files"] = list(body.files)
        if body.data is not None:
            send_kwargs["data"] = dict(body.data)
        if body.timeout_s is not None:
            send_kwargs["timeout"] = body.timeout_s
        if json is not None:
            extra.setdefault("Content-Type", "application/json")
        governor = self._governor
        policy = governor.policy
        started = self._clock.monotonic()
        attempts = 0
        waited = 0.0
        refreshed = False
        backoff_n = 0
        path = urlsplit(url).path  # logged without the query, which may carry data
        while True:
            attempts += 1
            failure: httpx.HTTPError | None = None
            with governor.slot():
                # the token is read after any wait, so a long Retry-After never sends an expired token
                token = self._tokens.token()
                request = self._http.build_request(
                    method,
                    url,
                    params=params,
                    json=json,
                    headers={**extra, "Authorization": f"Bearer {token}"},
                    **send_kwargs,
                )
                sent_at = self._clock.monotonic()
                try:
                    response = self._http.send(request)
                except httpx.HTTPError as exc:
                    failure = exc
            trace.sends += 1
            if failure is not None:
                error = map_transport_error(failure, what="Dataverse", idempotent=idempotent, method=method)
                if not isinstance(failure, _NOT_SENT):
                    trace.maybe_applied = True
                if isinstance(error, RetriableApiError):
                    delay = governor.backoff_delay(backoff_n)
                    if governor.may_retry(attempts=attempts, started=started, delay=delay):
                        log.debug(
                            "%s %s failed (%s); attempt %d, retrying in %.2f s",
                            method,
                            path,
                            type(failure).__name__,
                            attempts,
                            delay,
                        )
                        self._clock.sleep(delay)
                        backoff_n += 1
                        continue
                raise error from failure
            elapsed_ms = (self._clock.monotonic() - sent_at) * 1000
            log.debug("%s %s -> %s in %.0f ms", method, path, response.status_code, elapsed_ms)
            governor.observe(response.headers)
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
                wait = retry_after if retry_after is not None else governor.backoff_delay(backoff_n)
                if waited + wait <= policy.max_wait_s and governor.may_retry(
                    attempts=attempts, started=started, delay=wait
                ):
                    log.debug(
                        "%s %s throttled (%s); attempt %d, retrying after %.1f s", method, path, status, attempts, wait
                    )
                    governor.throttle(wait, reason=str(status))
                    waited += wait
                    if retry_after is None:
                        backoff_n += 1
                    continue
            elif status >= 500 and not _has_code(_error_body(response)[0]):
                trace.maybe_applied = True
                if idempotent:
                    delay = governor.backoff_delay(backoff_n)
                    if governor.may_retry(attempts=attempts, started=started, delay=delay):
                        log.debug("%s %s -> %s; attempt %d, retrying in %.2f s", method, path, status, attempts, delay)
                        self._clock.sleep(delay)
                        backoff_n += 1
                        continue
            if body.keep_response is not None and body.keep_response(response):
                return response
            raise error_from_response(response, method=method, idempotent=idempotent, retry_after=retry_after)

    def create(
        self,
        entity_set: str,
        body: Mapping[str, Any],
        *,
        id_attribute: str | None = None,
        client_id: bool | str = False,
        return_record: bool = False,
        prefer: Sequence[str] = (),
        impersonate: str | Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> CreateResult:
        """Create a row with ``POST {entity_set}``; the answer says its id and whether a resend was confirmed.

        Without ``client_id`` Dataverse picks the id, and a failure in transit raises :class:`OutcomeUnknownError`
        (the row may exist). With ``client_id=True`` (or a GUID string) the primary key ``id_attribute`` is set in the
        body to :func:`connector.ids.new_id` (or that GUID), which makes the create retry-safe: it is resent after a
        dropped connection or a 5xx, and if a resend meets Dataverse's duplicate-key answer, a GET by the id confirms
        that the earlier send created the row; the result then has ``confirmed_by_get`` set, and the row counts as
        created once. A duplicate key on the *first* send is a real conflict and raises :class:`FatalApiError`.
        Bulk writers turn ``client_id`` on by default; Microsoft recommends server-assigned ids for raw speed.
        ``params`` (such as ``$select`` for the returned row) and ``headers`` go with the POST only.
        """
        payload = dict(body)
        row_id: str | None = None
        if client_id:
            if not id_attribute:
                raise InputError("create with client_id needs id_attribute, the table's primary key column")
            given = payload.get(id_attribute)
            if isinstance(client_id, str):
                row_id = client_id
            elif isinstance(given, str) and given:
                row_id = given
            else:
                row_id = new_id()
            try:
                row_id = str(uuid.UUID(row_id))
            except ValueError:
                raise InputError(f"{id_attribute} must be a GUID") from None
            payload[id_attribute] = row_id
        prefs = list(prefer)
        if return_record and "return=representation" not in prefs:
            prefs.append("return=representation")
        trace = _Trace()
        try:
            response = self._send(
                "POST",
                entity_set,
                params=params,
                json=payload,
                headers=headers,
                prefer=prefs,
                impersonate=impersonate,
                idempotent=row_id is not None,
                trace=trace,
            )
        except FatalApiError as exc:
            if row_id is None or exc.code != DUPLICATE_RECORD or not trace.maybe_applied:
                raise
            # An earlier send of this very row may have been applied before its answer was lost: look for it.
            try:
                record = self.get_json(f"{entity_set}({row_id})", impersonate=impersonate)
            except NotFoundError:
                raise exc from None
            log.debug("POST %s: resend met a duplicate key; the row exists, so the earlier send created it", entity_set)
            return CreateResult(
                id=row_id,
                sends=trace.sends,
                confirmed_by_get=True,
                record=record if return_record and isinstance(record, dict) else None,
            )
        record = None
        if return_record and response.content:
            try:
                decoded = response.json()
            except ValueError:
                decoded = None
            record = decoded if isinstance(decoded, dict) else None
        created_id = row_id or entity_id(response)
        if created_id is None and record is not None and id_attribute:
            value = record.get(id_attribute)
            created_id = str(value) if value else None
        return CreateResult(id=created_id, sends=trace.sends, confirmed_by_get=False, record=record)

    def create_many(
        self,
        entity_set: str,
        bodies: Iterable[Mapping[str, Any]],
        *,
        id_attribute: str | None = None,
        client_ids: bool = True,
        impersonate: str | Mapping[str, str] | None = None,
    ) -> list[Outcome[CreateResult]]:
        """Create many rows with single POSTs at the governor's parallelism; one outcome per body, in order.

        Client-generated ids are on by default here (``client_ids=False`` turns them off, at the price of unknown
        outcomes after a dropped connection): a bulk load is exactly where lost answers happen, and re-running it must
        not duplicate rows. A row's failure is kept in its :class:`~connector.governor.Outcome`, never raised.
        """
        if client_ids and not id_attribute:
            raise InputError("create_many with client ids needs id_attribute, the table's primary key column")

        def one(body: Mapping[str, Any]) -> CreateResult:
            return self.create(
                entity_set, body, id_attribute=id_attribute, client_id=client_ids, impersonate=impersonate
            )

        return self._governor.map(one, bodies)

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
