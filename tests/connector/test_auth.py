"""Client-credentials tokens: the request, caching and refresh on the fake clock, AADSTS refusals, audience checks."""

from __future__ import annotations

import json
import logging
import socket
import threading
import traceback
from typing import Any

import httpx
import pytest

from connector import RetryPolicy
from connector.auth import DYNAMICS_CRM_APP_ID, audience_problem, decode_jwt_claims, refresh_leeway
from connector.errors import AuthenticationError, ConnectorError, NetworkConfigError


def test_auth_token_request_body(cloud: Any) -> None:
    conn = cloud.connect()
    token = conn.token()
    assert token == cloud.issued[-1]
    (request,) = cloud.requests
    assert request.method == "POST"
    assert str(request.url) == cloud.TOKEN_URL
    assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert "Authorization" not in request.headers  # client_secret_post: the secret is in the form, as Microsoft shows
    assert request.headers["User-Agent"].startswith("d365-connector/")
    assert cloud.token_forms == [
        {
            "grant_type": "client_credentials",
            "scope": "https://contoso.crm.dynamics.com/.default",
            "client_id": cloud.CLIENT_ID,
            "client_secret": cloud.SECRET,
        }
    ]


def test_auth_token_is_cached(cloud: Any) -> None:
    conn = cloud.connect()
    assert conn.token() == conn.token() == conn.token()
    assert len(cloud.token_forms) == 1


@pytest.mark.parametrize(
    ("lifetime", "still_valid", "refreshed"),
    [
        pytest.param(3600, 3600 - 300 - 1, 3600 - 300, id="entra-hour-5min-leeway"),
        pytest.param(600, 600 - 60 - 1, 600 - 60, id="ten-minutes"),
        pytest.param(20, 17, 18, id="short-test-token"),
    ],
)
def test_auth_refresh_before_expiry(cloud: Any, lifetime: int, still_valid: int, refreshed: int) -> None:
    cloud.token_lifetime = lifetime
    conn = cloud.connect()
    first = conn.token()
    cloud.clock.advance(still_valid)
    assert conn.token() == first
    assert len(cloud.token_forms) == 1
    cloud.clock.advance(refreshed - still_valid)
    second = conn.token()
    assert second != first
    assert len(cloud.token_forms) == 2


def test_auth_refresh_leeway_scales_with_lifetime() -> None:
    assert refresh_leeway(4500) == 300
    assert refresh_leeway(600) == 60
    assert refresh_leeway(2) == pytest.approx(0.2)
    assert refresh_leeway(0) == 0


def test_auth_lifetime_from_exp_when_expires_in_missing(cloud: Any) -> None:
    token = cloud.make_jwt({"aud": cloud.ORG, "exp": int(cloud.clock.time()) + 100})
    cloud.token_queue.append(httpx.Response(200, json={"token_type": "Bearer", "access_token": token}))
    conn = cloud.connect()
    assert conn.token() == token
    cloud.clock.advance(89)
    assert conn.token() == token
    cloud.clock.advance(2)
    assert conn.token() != token


def test_auth_force_refresh_shared_by_callers(cloud: Any) -> None:
    conn = cloud.connect()
    provider = conn.token_provider
    stale = provider.token()
    fresh = provider.force_refresh(stale)
    assert fresh != stale
    # A second caller that also saw the stale token rejected reuses the new one instead of fetching again.
    assert provider.force_refresh(stale) == fresh
    assert len(cloud.token_forms) == 2


def test_auth_concurrent_callers_share_one_fetch(cloud: Any) -> None:
    conn = cloud.connect()
    provider = conn.token_provider
    arrivals = threading.Semaphore(0)
    gate = threading.Event()
    cloud.token_gate, cloud.token_arrivals = gate, arrivals

    class CountingLock:
        """Counts callers reaching the provider's lock, so the test knows when all 8 are inside token()."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __enter__(self) -> None:
            arrivals.release()
            self.inner.acquire()

        def __exit__(self, *exc: object) -> None:
            self.inner.release()

    provider._lock = CountingLock(provider._lock)  # type: ignore[attr-defined]
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(conn.token())) for _ in range(8)]
    for t in threads:
        t.start()
    # Every thread is at the lock (or, were there no lock, at the token endpoint) before the endpoint answers.
    for _ in range(8):
        assert arrivals.acquire(timeout=5)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(results) == 8
    assert len(set(results)) == 1
    assert len(cloud.token_forms) == 1


@pytest.mark.parametrize(
    ("code", "error", "needle"),
    [
        (700016, "unauthorized_client", "client_id and tenant_id"),
        (7000215, "invalid_client", "Value"),
        (7000222, "invalid_client", "expired"),
        (90002, "invalid_request", "tenant_id"),
        (650057, "invalid_resource", "https://contoso.crm.dynamics.com/.default"),
        (70011, "invalid_scope", "https://contoso.crm.dynamics.com/.default"),
        (500011, "invalid_resource", "organization_url"),
    ],
)
def test_auth_aadsts_errors_mapped(cloud: Any, code: int, error: str, needle: str) -> None:
    cloud.token_queue.append(cloud.aad_error(code, error, "The server's explanation."))
    conn = cloud.connect()
    with pytest.raises(AuthenticationError) as info:
        conn.token()
    assert info.value.code == f"AADSTS{code}"
    assert info.value.status_code == 400
    assert needle in info.value.message
    assert "The server's explanation." in info.value.message
    assert "Trace ID" not in info.value.message
    assert cloud.SECRET not in str(info.value)


def test_auth_aadsts_code_from_description_only(cloud: Any) -> None:
    cloud.token_queue.append(
        httpx.Response(401, json={"error": "invalid_client", "error_description": "AADSTS7000215: Invalid secret."})
    )
    with pytest.raises(AuthenticationError) as info:
        cloud.connect().token()
    assert info.value.code == "AADSTS7000215"


def test_auth_token_endpoint_without_oauth_body(cloud: Any) -> None:
    cloud.token_queue.append(httpx.Response(404, text="<html>Not Found</html>"))
    with pytest.raises(AuthenticationError, match="token_url"):
        cloud.connect().token()


def test_auth_token_endpoint_dns_failure(cloud: Any) -> None:
    cloud.token_queue.append(httpx.ConnectError("[Errno -2] Name or service not known"))
    with pytest.raises(NetworkConfigError) as info:
        cloud.connect().token()
    assert info.value.reason == "dns"
    assert info.value.field == "token_url"


def test_auth_audience_mismatch_refused(cloud: Any) -> None:
    cloud.audience = "https://fabrikam.crm.dynamics.com"
    with pytest.raises(AuthenticationError) as info:
        cloud.connect().token()
    assert info.value.code == "AudienceMismatch"
    message = info.value.message
    assert "https://fabrikam.crm.dynamics.com" in message
    assert "https://contoso.crm.dynamics.com" in message
    assert "https://contoso.crm.dynamics.com/.default" in message
    assert cloud.TOKEN_SIGNATURE not in message


def test_auth_id_token_refused(cloud: Any) -> None:
    cloud.audience = cloud.CLIENT_ID
    with pytest.raises(AuthenticationError) as info:
        cloud.connect().token()
    assert info.value.code == "IdTokenRefused"
    assert "ID token" in info.value.message


@pytest.mark.parametrize(
    "aud",
    [
        "https://contoso.crm.dynamics.com",
        "https://contoso.crm.dynamics.com/",
        "https://contoso.api.crm.dynamics.com/",
        "HTTPS://CONTOSO.CRM.DYNAMICS.COM",
        ["https://contoso.crm.dynamics.com", "other"],
        DYNAMICS_CRM_APP_ID,
    ],
)
def test_auth_audience_accepted(cloud: Any, aud: Any) -> None:
    assert audience_problem(cloud.make_jwt({"aud": aud}), cloud.ORG, cloud.CLIENT_ID) is None


@pytest.mark.parametrize(
    "aud",
    ["http://contoso.crm.dynamics.com", "https://contoso.crm.dynamics.com:8443", "https://contoso.crm4.dynamics.com"],
)
def test_auth_audience_scheme_host_port_compared(cloud: Any, aud: str) -> None:
    problem = audience_problem(cloud.make_jwt({"aud": aud}), cloud.ORG, cloud.CLIENT_ID)
    assert problem is not None and problem[0] == "AudienceMismatch"


def test_auth_opaque_token_not_checked(cloud: Any) -> None:
    assert decode_jwt_claims("opaque-token") is None
    assert audience_problem("opaque-token", cloud.ORG, cloud.CLIENT_ID) is None


def test_auth_never_logs_token_or_secret(cloud: Any, caplog: Any) -> None:
    with caplog.at_level(logging.DEBUG):
        conn = cloud.connect()
        conn.token()
        cloud.clock.advance(4000)
        conn.token()
        conn.client.whoami()
    assert cloud.SECRET not in caplog.text
    assert cloud.TOKEN_SIGNATURE not in caplog.text
    assert all(t not in caplog.text for t in cloud.issued)


def test_auth_dns_error_chain_detected(cloud: Any) -> None:
    try:
        raise socket.gaierror(-2, "Name or service not known")
    except socket.gaierror as cause:
        exc = httpx.ConnectError("connect failed")
        exc.__cause__ = cause
    cloud.token_queue.append(exc)
    with pytest.raises(NetworkConfigError) as info:
        cloud.connect().token()
    assert info.value.reason == "dns"


def test_auth_secrets_absent_from_errors_and_logs_on_failure_paths(cloud: Any, caplog: Any) -> None:
    failures: list[ConnectorError] = []
    scenarios = [
        lambda c: c.token_queue.append(c.aad_error(7000215, "invalid_client", "Invalid client secret provided.")),
        lambda c: setattr(c, "audience", "https://fabrikam.crm.dynamics.com"),
        lambda c: c.api_queue.extend(
            [httpx.Response(401, json=c.error_body("0x80044302", "Request is not authenticated."))] * 2
        ),
        lambda c: c.api_queue.append(httpx.ReadTimeout("timed out")),
    ]
    with caplog.at_level(logging.DEBUG):
        for setup in scenarios:
            cloud.token_queue.clear()
            cloud.api_queue.clear()
            cloud.audience = cloud.ORG
            setup(cloud)
            conn = cloud.connect(retry=RetryPolicy(max_attempts=1))
            with pytest.raises(ConnectorError) as info:
                conn.client.whoami()
            failures.append(info.value)
    assert len(failures) == len(scenarios)
    texts = [caplog.text]
    for error in failures:
        texts += [str(error), repr(error), json.dumps(error.to_dict()), "".join(traceback.format_exception(error))]
    for text in texts:
        assert cloud.SECRET not in text
        assert cloud.TOKEN_SIGNATURE not in text


def test_token_request_is_resent_after_a_throttled_or_failing_endpoint(cloud: Any) -> None:
    cloud.token_queue.extend(
        [httpx.Response(503, headers={"Retry-After": "3"}), httpx.ReadTimeout("lost"), httpx.Response(429)]
    )
    connection = cloud.connect()
    assert connection.token() == cloud.issued[-1]
    assert len(cloud.token_forms) == 4
    # the connection's one retry policy (jitter pinned to 1.0): Retry-After, then backoff 0.5 * 2**n
    assert cloud.clock.sleeps == [3.0, 0.5, 1.0]


def test_token_endpoint_down_for_good_is_reported_after_the_retries(cloud: Any) -> None:
    attempts = RetryPolicy().max_attempts
    cloud.token_queue.extend([httpx.Response(502)] * attempts)
    with pytest.raises(AuthenticationError) as err:
        cloud.connect().token()
    assert err.value.status_code == 502
    assert f"on {attempts} attempts" in err.value.message
    assert len(cloud.token_forms) == attempts


def test_token_refusal_is_not_resent(cloud: Any) -> None:
    cloud.token_queue.append(cloud.aad_error(7000215, "invalid_client", "Invalid client secret provided."))
    with pytest.raises(AuthenticationError):
        cloud.connect().token()
    assert len(cloud.token_forms) == 1
    assert cloud.clock.sleeps == []
