"""What every HTTP exchange of a connection shares, Dataverse and the identity endpoints alike: one retry policy.

Why one module: a token request and a Dataverse request fail in the same ways (429, 503 with ``Retry-After``, other
5xx, lost in transit) and must be retried the same way, with the same capped exponential backoff and full jitter, the
same caps and the same injected :class:`~connector.clock.Clock`; three loops with three policies drifted apart. The
client and the token providers import this module and never each other.

The *decisions* are plain values and functions that neither send nor sleep: :func:`classify_status` says what kind of
failure an answer is, and a :class:`RetryBudget` (one per logical request) says whether to send again and how long to
wait first. A driver only sends, asks, and waits on the clock; the sync loops in :mod:`connector.client` and
:mod:`connector.auth.base` are such drivers, and an ``httpx.AsyncClient`` twin would be another over the same objects.
What is not the transport's stays with the caller: the governor's shared pause after a throttle (Dataverse only), a
fresh token on the resend after a wait, the confirmation read of a create whose answer was lost.
"""

from __future__ import annotations

import email.utils
import enum
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from connector.errors import NetworkConfigError, OutcomeUnknownError, RetriableApiError
from connector.version import __version__

__all__ = [
    "IDEMPOTENT_METHODS",
    "USER_AGENT",
    "Failure",
    "Retry",
    "RetryBudget",
    "RetryPolicy",
    "classify_status",
    "map_transport_error",
    "never_sent",
    "parse_retry_after",
    "transport_failure",
]

USER_AGENT = f"d365-connector/{__version__}"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)  # raised before the request left


@dataclass(frozen=True)
class RetryPolicy:
    """Caps on retrying one request, and the backoff between its sends.

    ``max_attempts`` counts every send of one request, the first included; ``max_wait_s`` caps the total time one
    request spends waiting for ``Retry-After``; ``max_elapsed_s`` caps the time from its first send to the decision to
    retry (a run must end even when the server keeps failing). Backoff for transient failures (and a throttle without
    ``Retry-After``) is ``min(cap, backoff_base_s * 2**n)`` scaled by ``jitter()`` (full jitter: a uniform draw in
    [0, 1), so many clients do not retry in step). The cap is ``backoff_cap_s`` for Dataverse and
    ``token_backoff_cap_s`` for the identity endpoints, which recover more slowly (an identity being set up on a host).
    A token request holds the provider's lock, so every thread needing a token waits with it: its ``Retry-After``
    waiting is capped lower, at ``token_max_wait_s``.
    """

    max_attempts: int = 5
    max_wait_s: float = 300.0
    max_elapsed_s: float = 900.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    token_backoff_cap_s: float = 30.0
    token_max_wait_s: float = 60.0
    jitter: Callable[[], float] = random.random

    def backoff(self, n: int, *, cap: float | None = None) -> float:
        """The ``n``-th (from 0) backoff: capped exponential with full jitter."""
        limit = self.backoff_cap_s if cap is None else cap
        return float(min(limit, self.backoff_base_s * (2**n)) * self.jitter())


class Failure(enum.Enum):
    """What kind of failure an answer or a transport error is, which decides whether a resend can help."""

    THROTTLED = "throttled"
    """429, or 503 with ``Retry-After``: not executed; wait ``Retry-After`` (else back off) and send again."""
    TRANSIENT = "transient"
    """Another 5xx, or lost in transit: may have been applied; sent again only when that is harmless."""
    FATAL = "fatal"
    """Sending it again gives the same answer."""


def classify_status(status: int, *, retry_after: float | None, has_error_code: bool = False) -> Failure | None:
    """The failure class of an HTTP status (None below 400); ``has_error_code``: a 5xx that names its error is fatal.

    Dataverse marks server-side failures that will recur with an error code in the body; the identity endpoints do
    not, so their callers leave it false.
    """
    if status < 400:
        return None
    if status == 429 or (status == 503 and retry_after is not None):
        return Failure.THROTTLED
    if status >= 500 and not has_error_code:
        return Failure.TRANSIENT
    return Failure.FATAL


def transport_failure(error: Exception) -> Failure:
    """The failure class of an error from :func:`map_transport_error`: only a :class:`RetriableApiError` may be resent.

    A setting to fix (DNS, TLS) is fatal, and so is a send that may have been applied when resending is not harmless.
    """
    return Failure.TRANSIENT if isinstance(error, RetriableApiError) else Failure.FATAL


def never_sent(exc: httpx.HTTPError) -> bool:
    """Whether a transport error provably happened before the request left (so even a create may be resent)."""
    return isinstance(exc, _NOT_SENT)


@dataclass(frozen=True)
class Retry:
    """Send again after ``wait`` seconds; ``throttled``: the wait is the server's (a governor shares it)."""

    wait: float
    throttled: bool = False


class RetryBudget:
    """One logical request's progress against a :class:`RetryPolicy`: its sends, its ``Retry-After`` waits, backoffs.

    It neither sends nor sleeps, and reads no clock: drivers pass ``now`` (monotonic seconds), so a sync loop and an
    async one decide alike. Not thread-safe; one request, one budget.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        started: float,
        backoff_cap: float | None = None,
        max_wait: float | None = None,
    ) -> None:
        self.policy = policy
        self.started = started
        self.attempts = 0
        self._cap = backoff_cap
        self._max_wait = policy.max_wait_s if max_wait is None else max_wait
        self._waited = 0.0
        self._backoffs = 0

    def sent(self) -> None:
        """Count one send against ``max_attempts``."""
        self.attempts += 1

    def refund(self) -> None:
        """Take back the last send: a token the server rejected is ours to fix and does not use up the budget."""
        self.attempts -= 1

    def next_retry(
        self, failure: Failure | None, *, now: float, retry_after: float | None = None, idempotent: bool = True
    ) -> Retry | None:
        """Whether to send again after ``failure`` and how long to wait first; None when that is not allowed.

        A transient failure is retried only when ``idempotent`` (for a transport error: or never sent).
        """
        if failure is Failure.THROTTLED:
            wait = retry_after if retry_after is not None else self._backoff()
            if self._waited + wait > self._max_wait or not self._within_caps(now, wait):
                return None
            self._waited += wait
            if retry_after is None:
                self._backoffs += 1
            return Retry(wait, throttled=True)
        if failure is Failure.TRANSIENT and idempotent:
            delay = self._backoff()
            if not self._within_caps(now, delay):
                return None
            self._backoffs += 1
            return Retry(delay)
        return None

    def _backoff(self) -> float:
        return self.policy.backoff(self._backoffs, cap=self._cap)

    def _within_caps(self, now: float, wait: float) -> bool:
        return self.attempts < self.policy.max_attempts and now - self.started + wait <= self.policy.max_elapsed_s


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

    DNS and certificate failures are settings problems (:class:`NetworkConfigError`, never retried); timeouts and
    dropped connections are transient (:class:`RetriableApiError`) unless the request may have been applied
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
    if not idempotent and not never_sent(exc):
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
