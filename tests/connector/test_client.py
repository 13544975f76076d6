"""DataverseClient: headers, URL rules, 401 refresh, Retry-After on the fake clock, typed errors, network errors."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import httpx
import pytest

from connector import RetryPolicy
from connector.errors import (
    DataverseApiError,
    DataverseAuthError,
    FatalApiError,
    InputError,
    NetworkConfigError,
    NotFoundError,
    OutcomeUnknownError,
    RetriableApiError,
)
from connector.transport import parse_retry_after

OBJECT_ID = "9f7c3e1a-0000-0000-0000-00000000c001"


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"value": []})


def test_client_standard_headers(cloud: Any) -> None:
    client = cloud.connect().client
    client.whoami()
    request = cloud.api_requests[-1]
    assert str(request.url) == f"{cloud.API}/WhoAmI"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["OData-MaxVersion"] == "4.0"
    assert request.headers["OData-Version"] == "4.0"
    assert request.headers["User-Agent"].startswith("d365-connector/")
    assert request.headers["Authorization"] == f"Bearer {cloud.issued[-1]}"
    assert "Content-Type" not in request.headers
    assert "Prefer" not in request.headers


def test_client_json_body_prefer_and_params(cloud: Any) -> None:
    cloud.api_queue.append(httpx.Response(204, headers={"OData-EntityId": f"{cloud.API}/accounts(1)"}))
    client = cloud.connect().client
    client.request(
        "POST",
        "/accounts",
        json={"name": "Contoso"},
        params={"$select": "name"},
        prefer=["return=representation", 'odata.include-annotations="*"'],
    )
    request = cloud.api_requests[-1]
    assert request.url.path == "/api/data/v9.2/accounts"
    assert request.url.params["$select"] == "name"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Prefer"] == 'return=representation, odata.include-annotations="*"'
    assert request.content == b'{"name":"Contoso"}'


def test_client_json_body_is_encoded_once_before_the_slot_and_resent_as_is(cloud: Any, monkeypatch: Any) -> None:
    """A bulk chunk's body costs milliseconds to encode: it is encoded once, outside the governor's slot (no request
    slot waits on the CPU), and a resend after a 429 sends the very same bytes."""
    import connector.client as client_module

    client = cloud.connect().client
    encode = client_module.json_bytes
    slots: list[int] = []  # requests in flight on the connection when the body was encoded
    encoded: list[int] = []

    def counting(value: Any) -> bytes:
        slots.append(client.governor.in_flight)
        encoded.append(1)
        return encode(value)

    monkeypatch.setattr(client_module, "json_bytes", counting)
    cloud.api_queue += [_throttled("1"), httpx.Response(204)]
    client.request("PATCH", "/accounts(1)", json={"name": "Contoso", "n": 1.5, "é": "ü"})
    first, second = cloud.api_requests[-2:]
    assert first.content == second.content == '{"name":"Contoso","n":1.5,"é":"ü"}'.encode()
    assert encoded == [1] and slots == [0]
    with pytest.raises(ValueError, match="JSON compliant"):
        client.request("PATCH", "/accounts(1)", json={"n": float("nan")})
    assert len(cloud.api_requests) == 2  # refused before anything was sent


@pytest.mark.parametrize(
    ("impersonate", "header"),
    [
        pytest.param(OBJECT_ID, "CallerObjectId", id="guid-is-entra-object-id"),
        pytest.param({"azure_object_id": OBJECT_ID}, "CallerObjectId", id="azure-object-id"),
        pytest.param({"systemuserid": OBJECT_ID}, "MSCRMCallerID", id="systemuserid"),
    ],
)
def test_client_impersonation_headers(cloud: Any, impersonate: Any, header: str) -> None:
    cloud.connect().client.whoami(impersonate=impersonate)
    request = cloud.api_requests[-1]
    assert request.headers[header] == OBJECT_ID
    other = {"CallerObjectId", "MSCRMCallerID"} - {header}
    assert not other & set(request.headers)


@pytest.mark.parametrize("impersonate", ["not-a-guid", {"userid": OBJECT_ID}, {"systemuserid": "x\r\nX-Evil: 1"}])
def test_client_impersonation_refused(cloud: Any, impersonate: Any) -> None:
    with pytest.raises(InputError):
        cloud.connect().client.whoami(impersonate=impersonate)
    assert cloud.api_requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/api/data/v9.2/accounts",
        "http://contoso.crm.dynamics.com/api/data/v9.2/accounts",
        "https://contoso.crm.dynamics.com:8443/api/data/v9.2/accounts",
        "https://contoso.crm.dynamics.com.evil.example/api/data/v9.2/accounts",
    ],
)
def test_client_absolute_url_on_other_host_refused(cloud: Any, url: str) -> None:
    with pytest.raises(InputError, match="refusing"):
        cloud.connect().client.request("GET", url)
    assert cloud.requests == []


@pytest.mark.parametrize(
    "link",
    [
        "https://contoso.crm.dynamics.com/api/data/v9.2/accounts?$skiptoken=abc",
        "https://CONTOSO.crm.dynamics.com:443/api/data/v9.2/accounts?$skiptoken=abc",
    ],
)
def test_client_absolute_url_on_same_host_allowed(cloud: Any, link: str) -> None:
    cloud.api_queue.append(_ok)
    cloud.connect().client.get_json(link)
    assert cloud.api_requests[-1].url.params["$skiptoken"] == "abc"


def test_client_401_refreshes_once_and_resends(cloud: Any) -> None:
    cloud.api_queue.append(httpx.Response(401, json=cloud.error_body("0x80044302", "Request is not authenticated.")))
    client = cloud.connect().client
    who = client.whoami()
    assert who.user_id == cloud.USER_ID
    assert len(cloud.token_forms) == 2
    first, second = cloud.api_requests
    assert first.headers["Authorization"] != second.headers["Authorization"]
    assert second.headers["Authorization"] == f"Bearer {cloud.issued[-1]}"


def test_client_401_twice_raises_without_looping(cloud: Any) -> None:
    challenge = f"Bearer authorization_uri=https://login.microsoftonline.com/{cloud.TENANT}/oauth2/authorize"
    for _ in range(2):
        cloud.api_queue.append(
            httpx.Response(
                401,
                json=cloud.error_body("0x80044302", "Request is not authenticated."),
                headers={"WWW-Authenticate": challenge, "REQ_ID": "req-401"},
            )
        )
    with pytest.raises(DataverseAuthError) as info:
        cloud.connect().client.whoami()
    assert info.value.status_code == 401
    assert info.value.request_id == "req-401"
    assert info.value.www_authenticate == challenge
    assert len(cloud.token_forms) == 2
    assert len(cloud.api_requests) == 2
    assert info.value.exit_code == 3


def _throttled(retry_after: str | None, status: int = 429) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(
        status,
        json={"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit of 6000."}},
        headers=headers,
    )


def test_client_429_waits_exactly_retry_after(cloud: Any) -> None:
    cloud.api_queue += [_throttled("7"), _throttled("30")]
    who = cloud.connect().client.whoami()
    assert who.user_id == cloud.USER_ID
    assert cloud.clock.sleeps == [7.0, 30.0]
    assert len(cloud.api_requests) == 3


def test_client_503_with_retry_after_waits(cloud: Any) -> None:
    cloud.api_queue.append(_throttled("2", status=503))
    cloud.connect().client.whoami()
    assert cloud.clock.sleeps == [2.0]


def test_client_429_attempt_budget_then_retriable(cloud: Any) -> None:
    cloud.api_queue += [_throttled("5") for _ in range(10)]
    with pytest.raises(RetriableApiError) as info:
        cloud.connect(retry=RetryPolicy(max_attempts=3)).client.whoami()
    assert cloud.clock.sleeps == [5.0, 5.0]
    assert len(cloud.api_requests) == 3
    error = info.value
    assert (error.status_code, error.code, error.retry_after, error.retriable) == (429, "0x80072322", 5.0, True)


def test_client_429_total_wait_budget(cloud: Any) -> None:
    cloud.api_queue += [_throttled("200"), _throttled("200")]
    with pytest.raises(RetriableApiError):
        cloud.connect(retry=RetryPolicy(max_wait_s=300)).client.whoami()
    assert cloud.clock.sleeps == [200.0]


def test_client_token_refreshed_after_long_throttle_wait(cloud: Any) -> None:
    cloud.token_lifetime = 300  # refreshed 30 s before expiry, so after a 280 s wait it must be replaced
    cloud.api_queue.append(_throttled("280"))
    cloud.connect().client.whoami()
    first, second = cloud.api_requests
    assert first.headers["Authorization"] != second.headers["Authorization"]
    assert len(cloud.token_forms) == 2


def test_client_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("status", "code", "error_type", "requests"),
    [
        pytest.param(400, "0x80044331", FatalApiError, 1, id="400-validation"),
        pytest.param(400, "0x0", FatalApiError, 1, id="400-odata-parse"),
        pytest.param(403, "0x80040220", FatalApiError, 1, id="403-privilege"),
        pytest.param(404, "0x80040217", NotFoundError, 1, id="404-row"),
        pytest.param(405, "0x80060888", FatalApiError, 1, id="405"),
        pytest.param(412, "0x80060882", FatalApiError, 1, id="412-concurrency"),
        pytest.param(500, "0x80040333", FatalApiError, 1, id="500-coded-not-retried"),
        pytest.param(502, "", RetriableApiError, 5, id="502-get-retried"),
    ],
)
def test_client_error_body_mapped(
    cloud: Any, status: int, code: str, error_type: type[DataverseApiError], requests: int
) -> None:
    body = cloud.error_body(code, f"message for {status}")
    cloud.api_queue += [
        httpx.Response(status, json=body, headers={"x-ms-service-request-id": "svc-1"}) for _ in range(6)
    ]
    with pytest.raises(DataverseApiError) as info:
        cloud.connect().client.get_json("accounts(00000000-0000-0000-0000-000000000001)")
    error = info.value
    assert type(error) is error_type
    assert error.status_code == status
    assert error.code == code
    assert error.request_id == "svc-1"
    assert f"message for {status}" in error.message
    assert error.method == "GET"
    assert len(cloud.api_requests) == requests
    assert error.to_dict()["status_code"] == status


def test_client_request_id_from_req_id(cloud: Any) -> None:
    cloud.api_queue.append(
        httpx.Response(404, json=cloud.error_body("0x80040217", "Does Not Exist"), headers={"REQ_ID": "abc"})
    )
    with pytest.raises(NotFoundError) as info:
        cloud.connect().client.get_json("accounts(00000000-0000-0000-0000-000000000001)")
    assert info.value.request_id == "abc"
    assert "[request id abc]" in info.value.message


def test_client_uncoded_500_on_post_outcome_unknown(cloud: Any) -> None:
    cloud.api_queue.append(httpx.Response(500, text="Internal Server Error"))
    with pytest.raises(OutcomeUnknownError):
        cloud.connect().client.request("POST", "accounts", json={"name": "x"})
    assert len(cloud.api_requests) == 1


def test_client_network_error_on_get_retried_with_backoff(cloud: Any) -> None:
    cloud.api_queue += [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("dropped")]
    cloud.connect().client.whoami()
    assert cloud.clock.sleeps == [0.5, 1.0]  # jitter pinned to 1.0 in tests


def test_client_timeout_after_budget_is_retriable(cloud: Any) -> None:
    cloud.api_queue += [httpx.ReadTimeout("timed out") for _ in range(5)]
    with pytest.raises(RetriableApiError) as info:
        cloud.connect().client.whoami()
    assert info.value.code == "Timeout"
    assert "timeout_s" in info.value.message
    assert cloud.clock.sleeps == [0.5, 1.0, 2.0, 4.0]


def test_client_network_error_on_post_outcome_unknown(cloud: Any) -> None:
    cloud.api_queue.append(httpx.ReadError("connection reset"))
    with pytest.raises(OutcomeUnknownError) as info:
        cloud.connect().client.request("POST", "accounts", json={"name": "x"})
    assert isinstance(info.value.__cause__, httpx.ReadError)
    assert len(cloud.api_requests) == 1


def test_client_connect_error_on_post_retried_because_never_sent(cloud: Any) -> None:
    cloud.api_queue += [httpx.ConnectError("connection refused"), httpx.Response(204)]
    response = cloud.connect().client.request("POST", "accounts", json={"name": "x"})
    assert response.status_code == 204
    assert len(cloud.api_requests) == 2


def test_client_dns_failure_is_config_error(cloud: Any) -> None:
    try:
        raise socket.gaierror(-2, "Name or service not known")
    except socket.gaierror as cause:
        exc = httpx.ConnectError("connect failed")
        exc.__context__ = cause
    cloud.api_queue.append(exc)
    with pytest.raises(NetworkConfigError) as info:
        cloud.connect().client.whoami()
    assert (info.value.reason, info.value.field, info.value.exit_code) == ("dns", "organization_url", 3)
    assert len(cloud.api_requests) == 1


def test_client_tls_failure_is_config_error(cloud: Any) -> None:
    try:
        raise ssl.SSLCertVerificationError(1, "certificate verify failed: unable to get local issuer certificate")
    except ssl.SSLError as cause:
        exc = httpx.ConnectError("tls failed")
        exc.__cause__ = cause
    cloud.api_queue.append(exc)
    with pytest.raises(NetworkConfigError) as info:
        cloud.connect().client.whoami()
    assert (info.value.reason, info.value.field) == ("tls", "ca_file")
    assert "ca_file" in info.value.message


def test_client_debug_log_has_method_path_status_and_no_token(cloud: Any, caplog: Any) -> None:
    with caplog.at_level(logging.DEBUG, logger="connector.http"):
        cloud.connect().client.whoami(impersonate=OBJECT_ID)
    records = [r for r in caplog.records if r.name == "connector.http"]
    assert any("GET /api/data/v9.2/WhoAmI -> 200 in" in r.getMessage() for r in records)
    assert cloud.TOKEN_SIGNATURE not in caplog.text
    assert "Bearer" not in caplog.text


def test_client_whoami_parsed(cloud: Any) -> None:
    who = cloud.connect().client.whoami()
    assert (who.user_id, who.business_unit_id, who.organization_id) == (cloud.USER_ID, cloud.BU_ID, cloud.ORG_ID)


def test_client_whoami_missing_fields_is_fatal(cloud: Any) -> None:
    cloud.api_queue.append(httpx.Response(200, json={"UserId": cloud.USER_ID}))
    with pytest.raises(FatalApiError, match="WhoAmI"):
        cloud.connect().client.whoami()
