"""A fake Dataverse for the record actions' unit tests: token endpoint, table metadata, and scripted data answers.

Metadata answers are built from a compact description of three tables (account, contact, opportunity) shaped as
Dataverse returns them; every other request is answered by the test's ``respond`` function (default: 204), and all
requests are recorded so tests can pin exact methods, URLs, headers and bodies.
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
    "account": {
        "set": "accounts",
        "name": "name",
        "cols": {
            "name": "String",
            "accountnumber": "String",
            "address1_postalcode": "String",
            "numberofemployees": "Integer",
            "industrycode": "Picklist",
            "primarycontactid": "Lookup",
            "parentaccountid": "Lookup",
            "ownerid": "Owner",
            "createdon": "DateTime",
            "statecode": "State",
            "statuscode": "Status",
        },
        "keys": [["accountnumber"], ["name", "address1_postalcode"]],
        "m2o": [
            ("primarycontactid", "contact", "primarycontactid"),
            ("parentaccountid", "account", "parentaccountid"),
            ("ownerid", "owner", "ownerid"),
        ],
        "o2m": [("contact_customer_accounts", "contact")],
        "options": {"industrycode": {1: "Accounting", 2: "Agriculture"}, "statuscode": {1: "Active", 2: "Inactive"}},
    },
    "contact": {
        "set": "contacts",
        "name": "fullname",
        "cols": {"fullname": "String", "lastname": "String", "emailaddress1": "String", "parentcustomerid": "Customer"},
        "keys": [["emailaddress1"]],
        "m2o": [
            ("parentcustomerid", "account", "parentcustomerid_account"),
            ("parentcustomerid", "contact", "parentcustomerid_contact"),
        ],
        "o2m": [],
        "options": {},
    },
    "opportunity": {
        "set": "opportunities",
        "name": "name",
        "cols": {"name": "String", "customerid": "Customer", "opportunityratingcode": "Picklist"},
        "keys": [],
        "m2o": [("customerid", "account", "customerid_account"), ("customerid", "contact", "customerid_contact")],
        "o2m": [],
        "options": {"opportunityratingcode": {1: "Hot", 2: "Warm", 3: "Cold"}},
    },
    "systemuser": {
        "set": "systemusers",
        "name": "fullname",
        "cols": {},
        "keys": [],
        "m2o": [],
        "o2m": [],
        "options": {},
    },
    "team": {"set": "teams", "name": "name", "cols": {}, "keys": [], "m2o": [], "o2m": [], "options": {}},
}


def _label(text: str) -> dict[str, Any]:
    return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}], "UserLocalizedLabel": {"Label": text}}


def table_body(logical: str) -> dict[str, Any]:
    spec = TABLES[logical]
    cols = {f"{logical}id": "Uniqueidentifier", **spec["cols"]}
    return {
        "LogicalName": logical,
        "EntitySetName": spec["set"],
        "PrimaryIdAttribute": f"{logical}id",
        "PrimaryNameAttribute": spec["name"],
        "Attributes": [
            {
                "LogicalName": n,
                "AttributeType": t,
                "IsValidForCreate": n != "createdon",
                "IsValidForUpdate": n != "createdon",
            }
            for n, t in cols.items()
        ],
        "Keys": [
            {"SchemaName": "_".join(k), "KeyAttributes": k, "EntityKeyIndexStatus": "Active"} for k in spec["keys"]
        ],
        "ManyToOneRelationships": [
            {"ReferencingAttribute": a, "ReferencedEntity": t, "ReferencingEntityNavigationPropertyName": n}
            for a, t, n in spec["m2o"]
        ],
        "OneToManyRelationships": [
            {"ReferencedEntityNavigationPropertyName": n, "ReferencingEntity": t} for n, t in spec["o2m"]
        ],
        "ManyToManyRelationships": [],
    }


def option_body(logical: str, cast: str) -> dict[str, Any]:
    types = {
        "PicklistAttributeMetadata": "Picklist",
        "StateAttributeMetadata": "State",
        "StatusAttributeMetadata": "Status",
    }
    spec = TABLES[logical]
    rows = [
        {
            "LogicalName": col,
            "OptionSet": {
                "Options": [{"Value": v, "Label": _label(t)} for v, t in spec["options"].get(col, {}).items()]
            },
        }
        for col, typ in spec["cols"].items()
        if typ == types.get(cast)  # a cast for limits (String, Integer...): no limits stated
    ]
    return {"value": rows}


def _jwt() -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"aud": ORG, "exp": 4_000_000_000, "tid": TENANT, "appid": "x"}
    return f"{seg({'alg': 'RS256'})}.{seg(claims)}.SENTINEL-access-token-77e2f0"


class FakeDataverse:
    """Serves tokens and metadata; records every Web API request; data requests go to ``respond``."""

    ORG = ORG
    API = API

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.respond: Callable[[httpx.Request], httpx.Response] = lambda request: httpx.Response(204)

    @property
    def data(self) -> list[httpx.Request]:
        """Web API requests other than metadata reads."""
        return [r for r in self.requests if "EntityDefinitions" not in r.url.path]

    @property
    def metadata_reads(self) -> list[httpx.Request]:
        """Table reads (a column type's limits, read once per type, are not counted: see ``limit_reads``)."""
        return [r for r in self.requests if "EntityDefinitions" in r.url.path and r not in self.limit_reads]

    @property
    def limit_reads(self) -> list[httpx.Request]:
        casts = (
            "StringAttributeMetadata",
            "MemoAttributeMetadata",
            "IntegerAttributeMetadata",
            "MoneyAttributeMetadata",
        )
        return [r for r in self.requests if any(unquote(r.url.path).endswith(c) for c in casts)]

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/v2.0/token"):
            return httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3600, "access_token": _jwt()})
        self.requests.append(request)
        path = unquote(request.url.path.removeprefix("/api/data/v9.2/"))
        if path.startswith("EntityDefinitions(LogicalName='"):
            logical = path.split("'")[1]
            if logical not in TABLES:
                return httpx.Response(404, json={"error": {"code": "0x80040217", "message": "not found"}})
            if "/Attributes/Microsoft.Dynamics.CRM." in path:
                return httpx.Response(200, json=option_body(logical, path.rsplit(".", 1)[1]))
            return httpx.Response(200, json=table_body(logical))
        if path == "EntityDefinitions":
            wanted = request.url.params["$filter"].split("'")[1]
            found = [{"LogicalName": n} for n, s in TABLES.items() if s["set"] == wanted]
            return httpx.Response(200, json={"value": found})
        return self.respond(request)

    def connect(self, clock: FakeClock | None = None, *, max_parallelism: int | None = None) -> Connection:
        config = {
            "kind": "client_credentials",
            "organization_url": ORG,
            "tenant_id": TENANT,
            "client_id": "11111111-2222-3333-4444-555555555555",
            "client_secret": "SENTINEL-client-secret-5b1d9c",
        }
        if max_parallelism is not None:
            config["max_parallelism"] = max_parallelism
        return Connection.from_config(config, transport=httpx.MockTransport(self.handler), clock=clock or FakeClock())


@pytest.fixture
def fake() -> FakeDataverse:
    return FakeDataverse()


@pytest.fixture
def conn(fake: FakeDataverse) -> Connection:
    return fake.connect()


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False, validate_output=True)
