"""One retry layer: the same failure sequences, given to a Dataverse call and to token requests, are retried alike.

Each sequence is served over ``httpx.MockTransport`` to three exchanges on a connection built with one
:class:`RetryPolicy` (jitter pinned to 1.0): a Dataverse GET (WhoAmI), a client-credentials token request and a
managed-identity token request. The waits are the ones each exchange slept on its connection's ``FakeClock``.
"""

from __future__ import annotations

import email.utils
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connector import RetryPolicy
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import (
    AuthenticationError,
    ConnectorError,
    FatalApiError,
    NetworkConfigError,
    RetriableApiError,
)
from connector.transport import Failure, RetryBudget, classify_status

POLICY = RetryPolicy(jitter=lambda: 1.0)
MI_ENDPOINT = "http://169.254.169.254/metadata/identity/oauth2/token"

Answers = Callable[[FakeClock], list[Any]]


def _http_date(clock: FakeClock, seconds: float) -> str:
    return email.utils.formatdate(clock.time() + seconds, usegmt=True)


def _dns_error() -> httpx.ConnectError:
    try:
        raise socket.gaierror(-2, "Name or service not known")
    except socket.gaierror as cause:
        exc = httpx.ConnectError("connect failed")
        exc.__cause__ = cause
        return exc


# name: (the failing answers, served before a good one; the waits every exchange must take)
SEQUENCES: dict[str, tuple[Answers, list[float]]] = {
    "retry-after-seconds": (
        lambda clock: [
            httpx.Response(429, headers={"Retry-After": "3"}),
            httpx.Response(503, headers={"Retry-After": "2"}),
        ],
        [3.0, 2.0],
    ),
    "retry-after-date": (lambda clock: [httpx.Response(429, headers={"Retry-After": _http_date(clock, 4)})], [4.0]),
    "throttled-without-retry-after": (lambda clock: [httpx.Response(429), httpx.Response(429)], [0.5, 1.0]),
    "server-errors": (
        lambda clock: [httpx.Response(503), httpx.Response(500), httpx.Response(504)],
        [0.5, 1.0, 2.0],
    ),
    "lost-in-transit": (
        lambda clock: [httpx.ReadTimeout("lost"), httpx.ReadError("reset"), httpx.RemoteProtocolError("gone")],
        [0.5, 1.0, 2.0],
    ),
    "mixed": (
        lambda clock: [
            httpx.Response(503, headers={"Retry-After": "3"}),
            httpx.ReadTimeout("lost"),
            httpx.Response(429),
        ],
        [3.0, 0.5, 1.0],
    ),
}


def _dataverse(cloud: Any, answers: list[Any], policy: RetryPolicy) -> Connection:
    connection = cloud.connect(retry=policy)
    connection.token()  # fetched first, so that every recorded wait is the Dataverse call's
    cloud.api_queue.extend(answers)
    connection.client.whoami()
    return connection


def _client_credentials(cloud: Any, answers: list[Any], policy: RetryPolicy) -> Connection:
    cloud.token_queue.extend(answers)
    connection = cloud.connect(retry=policy)
    connection.token()
    return connection


def _managed_identity(cloud: Any, answers: list[Any], policy: RetryPolicy) -> Connection:
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        cloud.requests.append(request)
        if queue:
            item = queue.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        return cloud.token_response()

    connection = Connection.from_config(
        {"kind": "managed_identity", "organization_url": cloud.ORG, "identity_endpoint": MI_ENDPOINT},
        transport=httpx.MockTransport(handler),
        clock=cloud.clock,
        retry=policy,
    )
    connection.token()
    return connection


EXCHANGES = {"dataverse": _dataverse, "client_credentials": _client_credentials, "managed_identity": _managed_identity}


def _fresh(cloud: Any) -> Any:
    return type(cloud)(FakeClock())


@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_the_same_failures_are_retried_with_the_same_waits_everywhere(cloud: Any, sequence: str) -> None:
    answers, expected = SEQUENCES[sequence]
    waits: dict[str, list[float]] = {}
    for name, exchange in EXCHANGES.items():
        fresh = _fresh(cloud)
        exchange(fresh, answers(fresh.clock), POLICY)
        waits[name] = fresh.clock.sleeps
    assert waits == dict.fromkeys(EXCHANGES, expected)


def test_a_spent_budget_stops_every_exchange_after_the_same_sends_and_only_the_backoff_cap_differs(
    cloud: Any,
) -> None:
    policy = RetryPolicy(jitter=lambda: 1.0, max_attempts=5, backoff_cap_s=1.0, token_backoff_cap_s=3.0)
    raised: dict[str, ConnectorError] = {}
    waits: dict[str, list[float]] = {}
    sends: dict[str, int] = {}
    for name, exchange in EXCHANGES.items():
        fresh = _fresh(cloud)
        before = len(fresh.requests) if name != "dataverse" else 1  # the Dataverse run fetched its token first
        with pytest.raises(ConnectorError) as info:
            exchange(fresh, [httpx.Response(503) for _ in range(policy.max_attempts)], policy)
        raised[name] = info.value
        waits[name] = fresh.clock.sleeps
        sends[name] = len(fresh.requests) - before
    assert sends == dict.fromkeys(EXCHANGES, policy.max_attempts)
    assert waits["dataverse"] == [0.5, 1.0, 1.0, 1.0]  # min(backoff_cap_s, 0.5 * 2**n)
    assert waits["client_credentials"] == waits["managed_identity"] == [0.5, 1.0, 2.0, 3.0]  # token_backoff_cap_s
    assert isinstance(raised["dataverse"], RetriableApiError) and raised["dataverse"].status_code == 503
    assert isinstance(raised["client_credentials"], AuthenticationError)
    assert "on 5 attempts" in raised["client_credentials"].message
    assert isinstance(raised["managed_identity"], AuthenticationError)
    assert raised["managed_identity"].status_code == 503


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda: httpx.Response(400, json={"error": "invalid_request"}), id="http-400"),
        pytest.param(_dns_error, id="dns"),
    ],
)
def test_what_a_resend_cannot_fix_is_sent_once_everywhere(cloud: Any, answer: Callable[[], Any]) -> None:
    for name, exchange in EXCHANGES.items():
        fresh = _fresh(cloud)
        before = 1 if name == "dataverse" else 0
        with pytest.raises(ConnectorError) as info:
            exchange(fresh, [answer()], POLICY)
        assert isinstance(info.value, AuthenticationError | NetworkConfigError | FatalApiError), name
        assert fresh.clock.sleeps == [], name
        assert len(fresh.requests) - before == 1, name


def test_only_dataverse_throttling_holds_the_connection(cloud: Any) -> None:
    throttled = _client_credentials(_fresh(cloud), [httpx.Response(429, headers={"Retry-After": "5"})], POLICY)
    assert throttled.governor.not_before == float("-inf")  # identity hosts do not share the governor's pause
    fresh = _fresh(cloud)
    connection = _dataverse(fresh, [httpx.Response(429, headers={"Retry-After": "5"})], POLICY)
    assert fresh.clock.sleeps == [5.0]
    assert connection.governor.not_before == fresh.clock.monotonic()


def test_failure_classes() -> None:
    assert classify_status(200, retry_after=None) is None
    assert classify_status(429, retry_after=None) is Failure.THROTTLED
    assert classify_status(503, retry_after=1.0) is Failure.THROTTLED
    assert classify_status(503, retry_after=None) is Failure.TRANSIENT
    assert classify_status(500, retry_after=None, has_error_code=True) is Failure.FATAL
    assert classify_status(404, retry_after=None) is Failure.FATAL


def test_budget_decides_without_sending_or_sleeping() -> None:
    budget = RetryBudget(RetryPolicy(jitter=lambda: 1.0, max_wait_s=10.0), started=0.0)
    budget.sent()
    # a create that may have been applied is not resent, but a throttle (never executed) is
    assert budget.next_retry(Failure.TRANSIENT, now=0.0, idempotent=False) is None
    retry = budget.next_retry(Failure.THROTTLED, now=0.0, retry_after=6.0, idempotent=False)
    assert retry is not None and (retry.wait, retry.throttled) == (6.0, True)
    budget.sent()
    assert budget.next_retry(Failure.THROTTLED, now=6.0, retry_after=6.0) is None  # 12 s of Retry-After > max_wait_s
    assert budget.next_retry(Failure.FATAL, now=6.0) is None
    retry = budget.next_retry(Failure.TRANSIENT, now=6.0)
    assert retry is not None and (retry.wait, retry.throttled) == (0.5, False)


def test_an_unreachable_endpoint_is_resent_except_a_managed_identity_one_which_is_absent(cloud: Any) -> None:
    """A refused connection is a blip for Dataverse and a token service on the internet, but a managed identity
    endpoint that cannot be connected to is not there (off Azure): reported at once, not after every resend."""
    refused = [httpx.ConnectError("refused")]
    for name in ("dataverse", "client_credentials"):
        fresh = _fresh(cloud)
        EXCHANGES[name](fresh, list(refused), POLICY)
        assert fresh.clock.sleeps == [0.5], name
    fresh = _fresh(cloud)
    with pytest.raises(AuthenticationError, match="running on Azure"):
        _managed_identity(fresh, list(refused), POLICY)
    assert fresh.clock.sleeps == []


def test_a_token_request_waits_for_retry_after_at_most_token_max_wait_s(cloud: Any) -> None:
    """Every thread needing a token waits behind the one fetching it, so its Retry-After waiting is capped lower."""
    long_wait = [httpx.Response(429, headers={"Retry-After": "61"})]
    fresh = _fresh(cloud)
    EXCHANGES["dataverse"](fresh, list(long_wait), POLICY)
    assert fresh.clock.sleeps == [61.0]
    fresh = _fresh(cloud)
    with pytest.raises(AuthenticationError):
        _client_credentials(fresh, list(long_wait), POLICY)
    assert fresh.clock.sleeps == []
