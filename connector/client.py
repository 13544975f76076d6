"""The Dataverse Web API client core: one ``httpx.Client`` per connection, OData headers, typed errors, retries.

This is the one place where httpx errors and Dataverse error answers are raised as :mod:`connector.errors` (with
``raise ... from exc``, mapped by :mod:`connector.transport` and :mod:`connector.api_errors`); nothing above it catches
``httpx.HTTPError``. Every send goes through the connection's :class:`~connector.governor.Governor`, and failures are
classed as the design says, by the retry policy of :mod:`connector.transport` that the token requests share:

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

import logging
import ssl
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from json import dumps as json_dumps
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from connector.api_errors import error_from_response, has_error_code, request_id
from connector.clock import Clock, SystemClock
from connector.errors import FatalApiError, InputError, NotFoundError, preview
from connector.governor import Governor, Outcome
from connector.ids import new_id
from connector.odata import entity_id
from connector.secret import Secret
from connector.transport import (
    IDEMPOTENT_METHODS,
    USER_AGENT,
    Failure,
    Retry,
    RetryBudget,
    RetryPolicy,
    classify_status,
    map_transport_error,
    never_sent,
    parse_retry_after,
    transport_failure,
)

if TYPE_CHECKING:
    from connector.auth import TokenProvider

__all__ = [
    "DUPLICATE_RECORD",
    "CreateResult",
    "DataverseClient",
    "WhoAmI",
    "impersonation_headers",
]

log = logging.getLogger("connector.http")


@dataclass(frozen=True)
class WhoAmI:
    """The answer of the WhoAmI function: the calling (or impersonated) user, its business unit and organization."""

    user_id: str
    business_unit_id: str
    organization_id: str


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


#: Raw bytes to send, or a function that opens them afresh as an iterator of blocks for each send (a file read from
#: disk while it is sent: a retry starts again from the first block, and nothing holds the whole file).
Content = bytes | Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class _Body:
    """What a request sends besides JSON (raw bytes, or a multipart form), its timeout, errors it keeps, and whether
    the answer is read as a stream (a file download written to disk block by block)."""

    content: Content | None = None
    files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None
    data: Mapping[str, str] | None = None
    timeout_s: float | None = None
    keep_response: Callable[[httpx.Response], bool] | None = None
    stream: bool = False

    def send_kwargs(self) -> dict[str, Any]:
        """The ``httpx`` keyword arguments for what is set."""
        kwargs: dict[str, Any] = {}
        if self.content is not None:
            kwargs["content"] = self.content if isinstance(self.content, bytes) else self.content()
        if self.files is not None:
            kwargs["files"] = list(self.files)
        if self.data is not None:
            kwargs["data"] = dict(self.data)
        if self.timeout_s is not None:
            kwargs["timeout"] = self.timeout_s
        return kwargs


def json_bytes(value: Any) -> bytes:
    """``value`` as the JSON body httpx would send for ``json=value`` (compact, UTF-8, ``NaN`` refused)."""
    return json_dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _request_headers(
    headers: Mapping[str, str] | None,
    prefer: Sequence[str],
    impersonate: str | Mapping[str, str] | None,
    *,
    has_json: bool,
) -> dict[str, str]:
    extra: dict[str, str] = dict(headers or {})
    if prefer:
        extra["Prefer"] = ", ".join(prefer)
    extra.update(impersonation_headers(impersonate))
    if has_json:
        extra.setdefault("Content-Type", "application/json")
    return extra


def _client_row_id(payload: dict[str, Any], id_attribute: str | None, client_id: bool | str) -> str | None:
    """The primary key a create sends (set in ``payload``), or None when Dataverse picks it."""
    if not client_id:
        return None
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
    return row_id


def _created(
    response: httpx.Response, row_id: str | None, id_attribute: str | None, *, return_record: bool, sends: int
) -> CreateResult:
    """The result of a create that Dataverse answered: the id it sent, or read from the header or the row."""
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
    return CreateResult(id=created_id, sends=sends, confirmed_by_get=False, record=record)


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
            if "@" in parts.netloc:  # httpx would send it as Basic credentials; never echoed
                raise InputError("the URL contains a user name or password: remove them from the URL")
            if _origin(path_or_url) != self._origin:
                scheme, host, port = _origin(path_or_url)
                raise InputError(
                    f"refusing to send this connection's token to {preview(f'{scheme}://{host}:{port}')}: only URLs "
                    f"on {self._api_url} are allowed"
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
        content: Content | None = None,
        files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None,
        data: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        keep_response: Callable[[httpx.Response], bool] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send one request and return its successful response, or raise the typed error.

        ``prefer`` values are joined into one ``Prefer`` header; ``impersonate`` is described in
        :func:`impersonation_headers`; ``idempotent`` defaults to true for every method but POST and decides whether
        a failure in transit may be retried. ``content`` (raw bytes: ``$batch``, file columns) or ``files`` with
        ``data`` (a multipart form) replace ``json``; ``timeout_s`` overrides the connection's timeout for this
        request. ``keep_response(response)`` returning true hands an error answer back instead of raising, for
        answers whose body reports the errors itself (a ``$batch`` stopped at its first failure answers with that
        failure's status and a multipart body); throttling and 401 are handled first as for any request. ``content``
        may be a function returning an iterator of blocks (called once per send; give ``Content-Length`` in
        ``headers``); ``stream`` returns a successful answer unread, for the caller to iterate and close.
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
            body=_Body(content, files, data, timeout_s, keep_response, stream),
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
        """The retry loop behind :meth:`request`, a thin driver over :class:`~connector.transport.RetryBudget`.

        What the budget does not know stays here: one token refresh after a 401, the governor's shared pause after a
        throttle, and ``trace``, which learns whether an earlier send may have been applied.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        url = self.url_for(path_or_url)
        path = urlsplit(url).path  # logged without the query, which may carry data
        body = body or _Body()
        extra = _request_headers(headers, prefer, impersonate, has_json=json is not None)
        if json is not None and body.content is None:
            # encoded once, before any slot is taken: a bulk chunk's body costs milliseconds of CPU, which would
            # otherwise hold one of the few requests in flight idle (and be spent again on every resend)
            body, json = replace(body, content=json_bytes(json)), None
        budget = RetryBudget(self._governor.policy, started=self._clock.monotonic())
        refreshed = False
        while True:
            budget.sent()
            token, outcome = self._send_once(method, url, path, params=params, json=json, headers=extra, body=body)
            trace.sends += 1
            if isinstance(outcome, httpx.HTTPError):
                if not never_sent(outcome):
                    trace.maybe_applied = True
                error = map_transport_error(outcome, what="Dataverse", idempotent=idempotent, method=method)
                retry = budget.next_retry(transport_failure(error), now=self._clock.monotonic())
                if retry is None:
                    raise error from outcome
                self._wait(retry, f"{method} {path}", type(outcome).__name__, budget.attempts)
                continue
            status = outcome.status_code
            if status < 400:
                return outcome
            if status == 401 and not refreshed:
                refreshed = True
                budget.refund()  # a rejected token is our problem, not Dataverse's: it does not use up the budget
                self._tokens.force_refresh(token)
                continue
            retry_after = parse_retry_after(outcome.headers.get("Retry-After"), now=self._clock.time())
            failure = classify_status(status, retry_after=retry_after, has_error_code=has_error_code(outcome))
            if failure is Failure.TRANSIENT:
                trace.maybe_applied = True
            retry = budget.next_retry(
                failure, now=self._clock.monotonic(), retry_after=retry_after, idempotent=idempotent
            )
            if retry is not None:
                self._wait(retry, f"{method} {path}", str(status), budget.attempts)
                continue
            if body.keep_response is not None and body.keep_response(outcome):
                return outcome
            raise error_from_response(outcome, method=method, idempotent=idempotent, retry_after=retry_after)

    def _send_once(
        self,
        method: str,
        url: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str],
        body: _Body,
    ) -> tuple[Secret, httpx.Response | httpx.HTTPError]:
        """One send in a governor slot: the token it carried, and the answer or the transport error."""
        with self._governor.slot():
            # the token is read after any wait, so a long Retry-After never sends an expired token
            token = Secret(self._tokens.token())  # never a plain str local: frame-locals capture sees Secret('***')
            request = self._http.build_request(
                method,
                url,
                params=params,
                json=json,
                headers={**headers, "Authorization": f"Bearer {token.reveal()}"},
                **body.send_kwargs(),
            )
            sent_at = self._clock.monotonic()
            try:
                response = self._http.send(request, stream=body.stream)
                if body.stream and response.status_code >= 400:
                    response.read()  # an error answer is small and read like any other
            except httpx.HTTPError as exc:
                return token, exc
        elapsed_ms = (self._clock.monotonic() - sent_at) * 1000
        log.debug("%s %s -> %s in %.0f ms", method, path, response.status_code, elapsed_ms)
        self._governor.observe(response.headers)
        return token, response

    def _wait(self, retry: Retry, what: str, why: str, attempts: int) -> None:
        """Wait before a resend: a throttle holds the whole connection (the governor), a backoff only this request."""
        if retry.throttled:
            log.debug("%s throttled (%s); attempt %d, retrying after %.1f s", what, why, attempts, retry.wait)
            self._governor.throttle(retry.wait, reason=why)
        else:
            log.debug("%s failed (%s); attempt %d, retrying in %.2f s", what, why, attempts, retry.wait)
            self._clock.sleep(retry.wait)

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
        row_id = _client_row_id(payload, id_attribute, client_id)
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
        return _created(response, row_id, id_attribute, return_record=return_record, sends=trace.sends)

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
                request_id=request_id(response),
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
