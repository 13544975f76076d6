"""A fake Dataverse for the metadata actions: token endpoint, a two-table metadata cache answer, and scripted routes.

Each test registers the answers it expects (``fake.route(method, path_prefix, responder)``); anything unrouted is a 599
so a request the test did not foresee fails loudly. Requests are recorded with their decoded path for exact asserts.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from connector.clock import FakeClock
from connector.connection import Connection
from connector.runtime import Runtime

ORG = "https://contoso.crm.dynamics.com"
API = f"{ORG}/api/data/v9.2"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

TABLES: dict[str, dict[str, Any]] = {
    "new_bankaccount": {
        "set": "new_bankaccounts",
        "id": "new_bankaccountid",
        "attributes": {
            "new_bankaccountid": "Uniqueidentifier",
            "new_name": "String",
            "new_code": "String",
            "new_region": "Picklist",
            "new_notes": "Memo",
        },
    },
    "account": {
        "set": "accounts",
        "id": "accountid",
        "attributes": {"accountid": "Uniqueidentifier", "name": "String"},
    },
}


def table_body(logical: str) -> dict[str, Any]:
    t = TABLES[logical]
    return {
        "LogicalName": logical,
        "EntitySetName": t["set"],
        "PrimaryIdAttribute": t["id"],
        "PrimaryNameAttribute": "name",
        "Attributes": [{"LogicalName": n, "AttributeType": typ} for n, typ in t["attributes"].items()],
        "Keys": [],
        "ManyToOneRelationships": [],
        "OneToManyRelationships": [],
        "ManyToManyRelationships": [],
    }


def _jwt() -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"aud": ORG, "exp": 4_000_000_000, "tid": TENANT, "appid": "x"}
    return f"{seg({'alg': 'RS256'})}.{seg(claims)}.SENTINEL-access-token-77e2f0"


Responder = Callable[[httpx.Request], httpx.Response]


class FakeDataverse:
    """Serves the cache's table reads itself; other requests go to the first route whose method and prefix match."""

    API = API

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: list[tuple[str, str, Responder]] = []

    def route(self, method: str, prefix: str, responder: Responder | httpx.Response | dict[str, Any]) -> None:
        if isinstance(responder, dict):
            payload = responder
            self.routes.append((method, prefix, lambda r: httpx.Response(200, json=payload)))
        elif isinstance(responder, httpx.Response):
            fixed = responder
            self.routes.append((method, prefix, lambda r: fixed))
        else:
            self.routes.append((method, prefix, responder))

    @staticmethod
    def path(request: httpx.Request) -> str:
        return unquote(request.url.path.removeprefix("/api/data/v9.2/"))

    def sent(self, method: str | None = None) -> list[httpx.Request]:
        """Requests other than the cache's table reads (those carry the cache's $expand)."""
        return [r for r in self.requests if not self.is_cache_read(r) and (method is None or r.method == method)]

    @staticmethod
    def is_cache_read(request: httpx.Request) -> bool:
        return request.method == "GET" and "Keys($select" in request.url.params.get("$expand", "")

    def cache_reads(self) -> list[httpx.Request]:
        return [r for r in self.requests if self.is_cache_read(r)]

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/v2.0/token"):
            return httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3600, "access_token": _jwt()})
        self.requests.append(request)
        path = self.path(request)
        if self.is_cache_read(request) and path.startswith("EntityDefinitions(LogicalName='"):
            logical = path.split("'")[1]
            if logical not in TABLES:
                return httpx.Response(404, json={"error": {"code": "0x80040217", "message": "not found"}})
            return httpx.Response(200, json=table_body(logical))
        if (
            request.method == "GET"
            and path == "EntityDefinitions"
            and "EntitySetName eq" in request.url.params.get("$filter", "")
        ):
            wanted = request.url.params["$filter"].split("'")[1]
            return httpx.Response(
                200, json={"value": [{"LogicalName": n} for n, t in TABLES.items() if t["set"] == wanted]}
            )
        for method, prefix, responder in self.routes:
            if request.method == method and path.startswith(prefix):
                return responder(request)
        return httpx.Response(599, json={"error": {"code": "0x0", "message": f"unrouted {request.method} {path}"}})

    def connect(self, clock: FakeClock | None = None) -> Connection:
        config = {
            "kind": "client_credentials",
            "organization_url": ORG,
            "tenant_id": TENANT,
            "client_id": "11111111-2222-3333-4444-555555555555",
            "client_secret": "SENTINEL-client-secret-5b1d9c",
        }
        return Connection.from_config(config, transport=httpx.MockTransport(self.handler), clock=clock or FakeClock())


@pytest.fixture
def fake() -> FakeDataverse:
    return FakeDataverse()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def conn(fake: FakeDataverse, clock: FakeClock) -> Connection:
    return fake.connect(clock)


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False, validate_output=True)
