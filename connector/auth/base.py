"""What every connection kind's token provider shares: the protocol, the cached token, the checks, the retry driver.

The provider is the only place that talks to the identity platform. It refreshes the token before it expires, with a
leeway scaled to the token's lifetime (authlib's fixed 60 s would treat short-lived test tokens as already expired),
re-fetches once when Dataverse answers 401 (authlib never reacts to a 401), and lets concurrent callers share one
refresh. Expiry is tracked on the injected :class:`~connector.clock.Clock`, not authlib's wall clock, so tests can move
time. Every new token's audience is compared with the environment URL: a token for another resource, or an ID token,
fails here with a message naming both values instead of as a puzzling 401 later.

A token request that is throttled, fails with a 5xx or is lost in transit is sent again under the connection's
:class:`~connector.transport.RetryPolicy`, the one Dataverse requests follow (with the token endpoints' backoff cap),
waiting on the same clock; identity hosts share no governor, so the wait holds only this request. Tokens and secrets
never appear in messages or logs, and the cached token is held as a :class:`~connector.secret.Secret`: tools that
record a traceback's frame locals (Sentry, rich) see ``Secret('***')``, not the bearer token.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx

from connector.clock import Clock
from connector.errors import AuthenticationError, TransientAnswer, preview
from connector.secret import Secret
from connector.transport import (
    Failure,
    RetryBudget,
    RetryPolicy,
    classify_status,
    map_transport_error,
    never_sent,
    parse_retry_after,
    transport_failure,
)

__all__ = [
    "AADSTS_CODE",
    "AUDIENCE_MISMATCH",
    "DEFAULT_LIFETIME_S",
    "DYNAMICS_CRM_APP_ID",
    "ID_TOKEN_REFUSED",
    "CachingProvider",
    "TokenAnswer",
    "TokenProvider",
    "audience_problem",
    "decode_jwt_claims",
    "refresh_leeway",
]

log = logging.getLogger("connector.auth")

T = TypeVar("T")

DYNAMICS_CRM_APP_ID = "00000007-0000-0000-c000-000000000000"
"""The well-known application id of "Dynamics CRM"; some tokens carry it as ``aud`` instead of the environment URL."""

AUDIENCE_MISMATCH = "AudienceMismatch"
ID_TOKEN_REFUSED = "IdTokenRefused"
DEFAULT_LIFETIME_S = 300.0
"""Assumed lifetime of a token that states none: short, so a stale token is replaced rather than kept forever."""

AADSTS_CODE = re.compile(r"AADSTS(\d+)")
"""An identity platform error code inside a message, for the kinds whose answers carry no ``error_codes``."""


class TokenProvider(Protocol):
    """Issues access tokens for one connection; every connection kind implements this, so the client needs no more."""

    def token(self) -> str:
        """A valid access token, fetched or refreshed when it is missing or about to expire."""

    def force_refresh(self, rejected: str | Secret | None = None) -> str:
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
        f"the access token is for {preview(audiences[0], 120)}, not for the environment {organization_url}: "
        f"set scopes to [{scope!r}] (or leave scopes out), and check that organization_url is the environment's URL",
    )


class TokenAnswer(dict[str, Any]):
    """A token endpoint's parsed answer, whose ``repr`` masks the tokens.

    It sits in frame locals from the moment it is parsed until :meth:`CachingProvider._accept` takes the access token
    out; a traceback rendered with locals (Sentry, rich) would otherwise print the tokens it holds.
    """

    _MASKED = frozenset({"access_token", "refresh_token", "id_token"})

    def __repr__(self) -> str:
        shown = ", ".join(f"{k!r}: {'***' if k in self._MASKED else repr(v)}" for k, v in self.items())
        return f"TokenAnswer({{{shown}}})"


def _frameless(exc: BaseException) -> BaseException:
    """``exc`` and the exceptions it chains, without their tracebacks: kept as the cause, for its type and message.

    A failed token request's traceback runs through authlib's and httpx's frames, whose locals hold the form body
    (client secret, refresh token); a tool that renders the cause chain with locals would print them.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return exc


@dataclass(frozen=True)
class _Token:
    access_token: Secret  # its repr is Secret('***'), so this dataclass's repr never shows the token
    expires_at: float  # on the monotonic clock
    refresh_at: float  # on the monotonic clock


class CachingProvider(abc.ABC):
    """What every kind shares: the cached token, refresh before expiry, one refresh for concurrent callers.

    A subclass implements :meth:`_request_token`, which asks its identity endpoint and returns the raw token answer
    (a dict with ``access_token`` and ``expires_in`` or ``expires_on``); it runs with the lock held, and sends through
    :meth:`_retrying` so that every kind follows the one retry policy.
    """

    _what = "the token endpoint"

    def __init__(
        self,
        *,
        organization_url: str,
        client_id: str,
        scope_hint: str,
        clock: Clock,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._organization_url = organization_url
        self._client_id = client_id
        self._scope_hint = scope_hint
        self._clock = clock
        self._retry = retry or RetryPolicy()
        self._lock = threading.Lock()
        self._current: _Token | None = None

    def token(self) -> str:
        current = self._current
        if current is not None and self._clock.monotonic() < current.refresh_at:
            return current.access_token.reveal()
        with self._lock:
            current = self._current
            if current is not None and self._clock.monotonic() < current.refresh_at:
                return current.access_token.reveal()
            return self._fetch().reveal()

    def force_refresh(self, rejected: str | Secret | None = None) -> str:
        if isinstance(rejected, str):
            rejected = Secret(rejected)  # held as a Secret from here on: this frame is in the request path
        with self._lock:
            current = self._current
            if current is not None and rejected is not None and current.access_token != rejected:
                return current.access_token.reveal()
            return self._fetch().reveal()

    def close(self) -> None:  # noqa: B027  # a deliberate no-op default: only kinds holding a client release one
        """Nothing to release by default."""

    @abc.abstractmethod
    def _request_token(self) -> dict[str, Any]:
        """Ask this kind's identity endpoint for a token; the raw answer (``access_token``, ``expires_in``/``_on``)."""

    def _fetch(self) -> Secret:
        """Ask for a new token and check it; the caller holds the lock.

        The raw answer is never bound to a local here: it holds the token in clear until :meth:`_accept` takes it out.
        """
        start = self._clock.monotonic()
        self._accept(self._request_token(), start)
        assert self._current is not None
        return self._current.access_token

    def _retrying(
        self,
        send: Callable[[], T],
        *,
        field: str,
        exhausted: Callable[[TransientAnswer, int], T],
        unreachable_is_final: bool = False,
    ) -> T:
        """Run one token request under the retry policy: a thin driver over :class:`~connector.transport.RetryBudget`.

        ``send`` raises :class:`TransientAnswer` (see :meth:`_raise_if_transient`) or ``httpx.HTTPError`` for a
        failure worth resending; ``exhausted(answer, attempts)`` turns the last such answer into the result or an
        error once the budget is spent. A token request is always safe to resend (a lost refresh answer leaves the old
        refresh token valid), and a run that dies because the identity platform hiccuped once is what users report.
        ``unreachable_is_final``: an endpoint that cannot be connected to is absent, not busy (a managed identity
        endpoint off Azure), so it is reported at once instead of after every resend's timeout.
        """
        budget = RetryBudget(
            self._retry,
            started=self._clock.monotonic(),
            backoff_cap=self._retry.token_backoff_cap_s,
            max_wait=self._retry.token_max_wait_s,
        )
        while True:
            budget.sent()
            try:
                return send()
            except TransientAnswer as answer:
                retry = budget.next_retry(answer.failure, now=self._clock.monotonic(), retry_after=answer.retry_after)
                if retry is None:
                    return exhausted(answer, budget.attempts)
                why = f"HTTP {answer.response.status_code}"
            except httpx.HTTPError as exc:
                error = map_transport_error(exc, what=self._what, field=field)
                if unreachable_is_final and never_sent(exc):
                    raise error from _frameless(exc)
                retry = budget.next_retry(transport_failure(error), now=self._clock.monotonic())
                if retry is None:
                    raise error from _frameless(exc)
                why = type(exc).__name__
            log.debug("token request failed (%s); attempt %d, retrying in %.1f s", why, budget.attempts, retry.wait)
            self._clock.sleep(retry.wait)

    def _raise_if_transient(self, response: httpx.Response) -> None:
        """Raise :class:`TransientAnswer` for an answer the retry policy sends again (429, 5xx)."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=self._clock.time())
        failure = classify_status(response.status_code, retry_after=retry_after)
        if failure is Failure.THROTTLED or failure is Failure.TRANSIENT:
            raise TransientAnswer(response, failure, retry_after)

    def _accept(self, raw: dict[str, Any], start: float) -> None:
        """Check a token answer (type, audience) and make it current; expiry counts from ``start``.

        The token is taken out of ``raw`` into a :class:`Secret` first, so a refusal raised below leaves no frame
        holding it in clear.
        """
        if not isinstance(raw.get("access_token"), str) or not raw["access_token"]:
            raise AuthenticationError(f"{self._what} answered without an access_token")
        access_token = Secret(raw.pop("access_token"))
        token_type = str(raw.get("token_type", "Bearer"))
        if token_type.lower() != "bearer":
            raise AuthenticationError(
                f"{self._what} issued a {preview(token_type)} token; Dataverse needs a Bearer token"
            )
        problem = audience_problem(access_token.reveal(), self._organization_url, self._client_id)
        if problem is not None:
            raise AuthenticationError(problem[1], code=problem[0])
        lifetime = self._lifetime(raw, access_token)
        self._current = _Token(access_token, start + lifetime, start + lifetime - refresh_leeway(lifetime))
        log.debug("fetched an access token valid for %.0f s", lifetime)

    def _lifetime(self, raw: dict[str, Any], access_token: Secret) -> float:
        """Seconds the token lives: ``expires_in``, else ``expires_on`` (managed identity), else the JWT's ``exp``."""
        try:
            if raw.get("expires_in") is not None:
                return max(0.0, float(raw["expires_in"]))
            if raw.get("expires_on") is not None:
                return max(0.0, float(raw["expires_on"]) - self._clock.time())
        except (TypeError, ValueError):
            pass
        claims = decode_jwt_claims(access_token.reveal()) or {}
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            return max(0.0, float(exp) - self._clock.time())
        return DEFAULT_LIFETIME_S
