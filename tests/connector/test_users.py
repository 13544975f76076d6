"""The get_current_user and test_connection actions: through the runtime, and every test_connection diagnosis."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import httpx
import pytest

from actions import users
from connector import RetryPolicy
from connector.errors import InputError
from connector.runtime import Runtime

TOKEN_ATTEMPTS = RetryPolicy().max_attempts  # the one retry policy sends a failing token request this often
OTHER_TENANT = "0d4c3b2a-1111-2222-3333-444455556666"


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False)


def test_get_current_user_through_runtime(cloud: Any, runtime: Runtime) -> None:
    result = runtime.run_action("get_current_user", {}, cloud.connect())
    assert result == {
        "user_id": cloud.USER_ID,
        "full_name": "# contoso-integration",
        "domain_name": "app-11111111@contoso.onmicrosoft.com",
        "email": "app@contoso.onmicrosoft.com",
        "azure_object_id": "9f7c3e1a-0000-0000-0000-00000000c001",
        "application_id": cloud.CLIENT_ID,
        "is_application_user": True,
        "business_unit_id": cloud.BU_ID,
        "business_unit_name": "contoso",
        "organization_id": cloud.ORG_ID,
    }
    whoami, row = cloud.api_requests
    assert whoami.url.path == "/api/data/v9.2/WhoAmI"
    assert row.url.path == f"/api/data/v9.2/systemusers({cloud.USER_ID})"
    assert row.url.params["$select"].split(",") == [
        "fullname",
        "domainname",
        "internalemailaddress",
        "azureactivedirectoryobjectid",
        "applicationid",
        "_businessunitid_value",
        "isdisabled",
        "accessmode",
    ]
    assert row.headers["Prefer"] == 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'


def test_get_current_user_impersonates_whoami(cloud: Any) -> None:
    object_id = "9f7c3e1a-0000-0000-0000-00000000c001"
    users.get_current_user({"impersonate": object_id}, cloud.connect())
    whoami, row = cloud.api_requests
    assert whoami.headers["CallerObjectId"] == object_id
    assert "CallerObjectId" not in row.headers  # the row is read as the connection itself


def test_get_current_user_row_forbidden_leaves_nulls(cloud: Any) -> None:
    whoami = {"UserId": cloud.USER_ID, "BusinessUnitId": cloud.BU_ID, "OrganizationId": cloud.ORG_ID}
    denied = cloud.error_body("0x80040220", "The user does not hold the necessary privileges.")
    cloud.api_queue += [httpx.Response(200, json=whoami), httpx.Response(403, json=denied)]
    result = users.get_current_user({}, cloud.connect())
    assert result["user_id"] == cloud.USER_ID
    assert result["full_name"] is None and result["is_application_user"] is None
    assert result["business_unit_id"] == cloud.BU_ID
    assert len(cloud.api_requests) == 2


def test_get_current_user_refused_input(cloud: Any, runtime: Runtime) -> None:
    with pytest.raises(InputError) as info:
        runtime.run_action("get_current_user", {"impersonate": "not-a-guid"}, cloud.connect())
    assert info.value.problems[0].path == "$.impersonate"
    assert cloud.requests == []


def test_test_connection_ok_through_runtime(cloud: Any, runtime: Runtime) -> None:
    result = runtime.run_action("test_connection", {}, cloud.connect())
    assert result["ok"] is True
    assert [c["name"] for c in result["checks"]] == ["token", "audience", "whoami"]
    assert all(c["ok"] for c in result["checks"])
    assert (result["diagnosis"], result["fix"]) == (None, None)
    assert result["user_id"] == cloud.USER_ID
    assert result["organization_id"] == cloud.ORG_ID
    assert result["organization_url"] == cloud.ORG
    assert isinstance(result["elapsed_ms"], int)


def test_test_connection_refused_input(cloud: Any, runtime: Runtime) -> None:
    with pytest.raises(InputError):
        runtime.run_action("test_connection", {"verbose": True}, cloud.connect())


def _dns_error() -> httpx.ConnectError:
    exc = httpx.ConnectError("connect failed")
    exc.__context__ = socket.gaierror(-2, "Name or service not known")
    return exc


def _tls_error() -> httpx.ConnectError:
    exc = httpx.ConnectError("tls failed")
    exc.__context__ = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
    return exc


def _api_401(cloud: Any, challenge: str | None = None) -> list[httpx.Response]:
    headers = {"WWW-Authenticate": challenge} if challenge else {}
    body = cloud.error_body("0x80044302", "Request is not authenticated.")
    return [httpx.Response(401, json=body, headers=headers) for _ in range(2)]


# name: (set-up, failed check, words the diagnosis must contain, words the fix must contain)
CASES: dict[str, tuple[Any, str, list[str], list[str]]] = {
    "aadsts700016": (
        lambda c: c.token_queue.append(c.aad_error(700016, "unauthorized_client", "Application not found.")),
        "token",
        ["AADSTS700016", "client_id"],
        ["Application (client) ID", "Directory (tenant) ID"],
    ),
    "aadsts7000215": (
        lambda c: c.token_queue.append(c.aad_error(7000215, "invalid_client", "Invalid client secret provided.")),
        "token",
        ["AADSTS7000215", "secret"],
        ["Value", "not its Secret ID"],
    ),
    "aadsts90002": (
        lambda c: c.token_queue.append(c.aad_error(90002, "invalid_request", "Tenant not found.")),
        "token",
        ["AADSTS90002", "tenant"],
        ["tenant_id"],
    ),
    "aadsts650057": (
        lambda c: c.token_queue.append(c.aad_error(650057, "invalid_resource", "Invalid resource.")),
        "token",
        ["AADSTS650057", "resource"],
        ["https://contoso.crm.dynamics.com/.default", "Dynamics CRM"],
    ),
    "aadsts500011": (
        lambda c: c.token_queue.append(c.aad_error(500011, "invalid_resource", "Resource principal not found.")),
        "token",
        ["AADSTS500011"],
        ["organization_url"],
    ),
    "token-endpoint-dns": (
        lambda c: c.token_queue.append(_dns_error()),
        "token",
        ["cannot be resolved", "token endpoint"],
        ["token_url"],
    ),
    "token-endpoint-timeout": (
        lambda c: c.token_queue.extend([httpx.ConnectTimeout("timed out")] * TOKEN_ATTEMPTS),
        "token",
        ["token endpoint", "did not answer in time"],
        ["token_url", "timeout_s"],
    ),
    "token-endpoint-refused": (
        lambda c: c.token_queue.extend([httpx.ConnectError("[Errno 111] Connection refused")] * TOKEN_ATTEMPTS),
        "token",
        ["token endpoint"],
        ["token_url", "reachable"],
    ),
    "audience-mismatch": (
        lambda c: setattr(c, "audience", "https://fabrikam.crm.dynamics.com"),
        "audience",
        ["https://fabrikam.crm.dynamics.com", "https://contoso.crm.dynamics.com"],
        ["https://contoso.crm.dynamics.com/.default"],
    ),
    "id-token": (
        lambda c: setattr(c, "audience", c.CLIENT_ID),
        "audience",
        ["ID token"],
        ["https://contoso.crm.dynamics.com/.default"],
    ),
    "dataverse-401": (
        lambda c: c.api_queue.extend(_api_401(c)),
        "whoami",
        ["401"],
        ["secret", "tenant_id", "https://contoso.crm.dynamics.com/.default"],
    ),
    "dataverse-401-other-tenant": (
        lambda c: c.api_queue.extend(
            _api_401(c, f"Bearer authorization_uri=https://login.microsoftonline.com/{OTHER_TENANT}/oauth2/authorize")
        ),
        "whoami",
        ["401", OTHER_TENANT],
        [f"Set tenant_id to {OTHER_TENANT}"],
    ),
    "dataverse-403": (
        lambda c: c.api_queue.append(
            httpx.Response(403, json=c.error_body("0x80072560", "The user is not a member of the organization."))
        ),
        "whoami",
        ["403", "application user", "security role"],
        ["Power Platform admin center", "application user", "security role"],
    ),
    "dns": (
        lambda c: c.api_queue.append(_dns_error()),
        "whoami",
        ["cannot be resolved", "environment"],
        ["organization_url"],
    ),
    "tls": (
        lambda c: c.api_queue.append(_tls_error()),
        "whoami",
        ["TLS certificate"],
        ["ca_file", "proxy"],
    ),
    "timeout": (
        lambda c: c.api_queue.extend(httpx.ConnectTimeout("timed out") for _ in range(5)),
        "whoami",
        ["Dataverse did not answer in time"],
        ["organization_url", "timeout_s"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_test_connection_diagnosis(cloud: Any, runtime: Runtime, case: str) -> None:
    setup, failed_check, diagnosis_words, fix_words = CASES[case]
    setup(cloud)
    result = runtime.run_action("test_connection", {}, cloud.connect())
    assert result["ok"] is False
    checks = {c["name"]: c["ok"] for c in result["checks"]}
    assert checks[failed_check] is False
    assert all(ok for name, ok in checks.items() if name != failed_check)
    assert list(checks)[-1] == failed_check  # nothing ran after the failure
    for word in diagnosis_words:
        assert word in result["diagnosis"], result["diagnosis"]
    for word in fix_words:
        assert word in result["fix"], result["fix"]
    text = json.dumps(result)
    assert cloud.SECRET not in text
    assert cloud.TOKEN_SIGNATURE not in text
