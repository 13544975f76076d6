"""A fake identity platform and Dataverse behind one ``httpx.MockTransport``, and a fake clock, for unit tests.

Nothing here opens a socket or sleeps: ``FakeClock.sleep`` records the wait and moves time. Test modules reach the
helpers through the ``cloud`` fixture (``--import-mode=importlib`` keeps conftest modules unimportable).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connector import RetryPolicy
from connector.clock import FakeClock
from connector.connection import Connection

ORG = "https://contoso.crm.dynamics.com"
API = f"{ORG}/api/data/v9.2"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "SENTINEL-client-secret-5b1d9c"  # the suite-wide sentinel: tests/conftest.py fails any test it leaks from
TOKEN_SIGNATURE = "SENTINEL-access-token-77e2f0"  # every issued token ends with it, so a leaked token is caught too
TOKEN_URL = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
USER_ID = "8b9ad4f0-2b2c-4c0e-9f51-6c0d2a7ad001"
BU_ID = "2c4a5e6f-0000-0000-0000-00000000b001"
ORG_ID = "0e3a1d2c-0000-0000-0000-00000000a001"

Responder = httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT: the connector reads the payload but never checks the signature (Dataverse does)."""

    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{seg({'typ': 'JWT', 'alg': 'RS256'})}.{seg(claims)}.{TOKEN_SIGNATURE}"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def aad_error(code: int, error: str, text: str) -> httpx.Response:
    """A token endpoint refusal shaped as Microsoft documents it (dataverse-web-api.md 13.2)."""
    return httpx.Response(
        400,
        json={
            "error": error,
            "error_description": f"AADSTS{code}: {text}\r\nTrace ID: 0000\r\nCorrelation ID: 1111\r\nTimestamp: now",
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "0000",
            "correlation_id": "1111",
        },
    )


class FakeCloud:
    """The token endpoint and a Dataverse environment; records every request, serves queued answers first."""

    ORG = ORG
    API = API
    TENANT = TENANT
    CLIENT_ID = CLIENT_ID
    SECRET = SECRET
    TOKEN_SIGNATURE = TOKEN_SIGNATURE
    TOKEN_URL = TOKEN_URL
    USER_ID = USER_ID
    BU_ID = BU_ID
    ORG_ID = ORG_ID
    make_jwt = staticmethod(make_jwt)
    error_body = staticmethod(error_body)
    aad_error = staticmethod(aad_error)

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.requests: list[httpx.Request] = []
        self.token_forms: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.token_lifetime = 3600
        self.audience = ORG
        self.token_queue: list[Responder] = []
        self.api_queue: list[Responder] = []
        self.token_gate: threading.Event | None = None
        self.token_arrivals: threading.Semaphore | None = None
        self._lock = threading.Lock()

    @property
    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host != "login.microsoftonline.com"]

    def token_response(self) -> httpx.Response:
        with self._lock:
            n = len(self.issued) + 1
            token = make_jwt(
                {
                    "aud": self.audience,
                    "iss": f"https://sts.windows.net/{TENANT}/",
                    "exp": int(self.clock.time()) + self.token_lifetime,
                    "appid": CLIENT_ID,
                    "tid": TENANT,
                    "n": n,
                }
            )
            self.issued.append(token)
        return httpx.Response(
            200, json={"token_type": "Bearer", "expires_in": self.token_lifetime, "access_token": token}
        )

    def _serve(self, queue: list[Responder], request: httpx.Request) -> httpx.Response | None:
        with self._lock:
            item = queue.pop(0) if queue else None
        if item is None:
            return None
        if isinstance(item, Exception):
            raise item
        if isinstance(item, httpx.Response):
            return item
        return item(request)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/oauth2/v2.0/token"):
            self.token_forms.append(dict(urllib.parse.parse_qsl(request.content.decode())))
            if self.token_arrivals is not None:
                self.token_arrivals.release()
            if self.token_gate is not None:
                self.token_gate.wait(5)
            return self._serve(self.token_queue, request) or self.token_response()
        queued = self._serve(self.api_queue, request)
        if queued is not None:
            return queued
        auth = request.headers.get("Authorization", "")
        if not self.issued or auth != f"Bearer {self.issued[-1]}":
            return httpx.Response(401, json=error_body("0x80044302", "Request is not authenticated."))
        path = request.url.path
        if path == "/api/data/v9.2/WhoAmI":
            return httpx.Response(
                200,
                json={
                    "@odata.context": f"{API}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": BU_ID,
                    "UserId": USER_ID,
                    "OrganizationId": ORG_ID,
                },
                headers={"x-ms-dop-hint": "4", "REQ_ID": "req-whoami"},
            )
        if path == f"/api/data/v9.2/systemusers({USER_ID})":
            return httpx.Response(
                200,
                json={
                    "@odata.context": f"{API}/$metadata#systemusers(fullname)/$entity",
                    "@odata.etag": 'W/"123"',
                    "systemuserid": USER_ID,
                    "fullname": "# contoso-integration",
                    "domainname": "app-11111111@contoso.onmicrosoft.com",
                    "internalemailaddress": "app@contoso.onmicrosoft.com",
                    "azureactivedirectoryobjectid": "9f7c3e1a-0000-0000-0000-00000000c001",
                    "applicationid": CLIENT_ID,
                    "_businessunitid_value": BU_ID,
                    "_businessunitid_value@OData.Community.Display.V1.FormattedValue": "contoso",
                    "isdisabled": False,
                    "accessmode": 4,
                    "accessmode@OData.Community.Display.V1.FormattedValue": "Non-interactive",
                },
            )
        return httpx.Response(404, json=error_body("0x8006088a", f"Resource not found for the segment '{path}'."))

    def config(self, **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": "client_credentials",
            "organization_url": ORG,
            "tenant_id": TENANT,
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
        }
        for key, value in overrides.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return data

    def connect(self, retry: RetryPolicy | None = None, **overrides: Any) -> Connection:
        return Connection.from_config(
            self.config(**overrides),
            transport=httpx.MockTransport(self.handler),
            clock=self.clock,
            retry=retry or RetryPolicy(jitter=lambda: 1.0),
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cloud(clock: FakeClock) -> FakeCloud:
    return FakeCloud(clock)
