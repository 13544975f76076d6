"""The ``$metadata`` catalogue behind ``invoke_action`` / ``invoke_function``: what :mod:`connector.csdl` keeps of a
CSDL document, and how the metadata cache reads it (once per TTL, again on refresh or invalidation)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector import csdl
from connector.errors import FatalApiError

CSDL = """<?xml version="1.0" encoding="utf-8"?>
<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"><edmx:DataServices>
<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" xmlns="http://docs.oasis-open.org/odata/ns/edm">
<EntityType Name="lead"><Key><PropertyRef Name="leadid" /></Key><Property Name="leadid" Type="Edm.Guid" /></EntityType>
<ComplexType Name="RetrieveVersionResponse"><Property Name="Version" Type="Edm.String" /></ComplexType>
<EnumType Name="EndpointAccessType"><Member Name="Default" Value="0" /><Member Name="Internet" Value="1" /></EnumType>
<Action Name="QualifyLead" IsBound="true">
  <Parameter Name="entity" Type="mscrm.lead" Nullable="false" />
  <Parameter Name="Status" Type="Edm.Int32" Nullable="false" />
  <Parameter Name="OpportunityCustomerId" Type="mscrm.crmbaseentity" />
  <ReturnType Type="Collection(mscrm.crmbaseentity)" Nullable="false" />
</Action>
<Action Name="CreateMultiple" IsBound="true">
  <Parameter Name="entityset" Type="Collection(mscrm.crmbaseentity)" Nullable="false" />
  <Parameter Name="Targets" Type="Collection(mscrm.crmbaseentity)" Nullable="false" />
</Action>
<Function Name="RetrieveVersion"><ReturnType Type="mscrm.RetrieveVersionResponse" Nullable="false" /></Function>
<EntityContainer Name="System">
<FunctionImport Name="RetrieveVersion" Function="mscrm.RetrieveVersion" /></EntityContainer>
</Schema></edmx:DataServices></edmx:Edmx>"""


def test_invoke_action_catalogue_keeps_operations_complex_and_enum_types() -> None:
    catalog = csdl.parse(CSDL)
    [qualify] = catalog.operations["QualifyLead"]
    assert (qualify.kind, qualify.binding, qualify.binding_kind, qualify.bound_table) == (
        "action",
        "mscrm.lead",
        "row",
        "lead",
    )
    assert qualify.params == (
        csdl.Parameter("Status", "Edm.Int32", False),
        csdl.Parameter("OpportunityCustomerId", "mscrm.crmbaseentity", True),
    )
    assert qualify.returns == "Collection(mscrm.crmbaseentity)"
    [multiple] = catalog.operations["CreateMultiple"]
    assert (multiple.binding_kind, multiple.bound_table, multiple.returns) == ("collection", "crmbaseentity", None)
    [version] = catalog.operations["RetrieveVersion"]
    assert (version.kind, version.binding, version.params) == ("function", None, ())
    assert catalog.complex_types == {"RetrieveVersionResponse": (csdl.Parameter("Version", "Edm.String"),)}
    assert catalog.enum_types == {"EndpointAccessType": ("Default", "Internet")}
    assert "lead" not in catalog.operations  # entity types come from EntityDefinitions, not from here


def test_invoke_action_catalogue_refuses_a_document_that_is_not_xml() -> None:
    with pytest.raises(ValueError, match="not XML"):
        csdl.parse("<html><body>oops")
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;&a;</x>'
    with pytest.raises(ValueError, match="not XML"):
        csdl.parse(bomb)


def test_invoke_function_catalogue_is_read_once_per_ttl_and_again_when_invalidated(cloud: Any) -> None:
    fake = cloud  # the FakeCloud of tests/connector/conftest.py
    fake.api_queue += [httpx.Response(200, text=CSDL, headers={"Content-Type": "application/xml"})] * 4
    connection = fake.connect()
    clock = fake.clock

    def reads() -> int:
        return sum(1 for r in fake.api_requests if r.url.path.endswith("/$metadata"))

    first = connection.metadata.operations()
    assert connection.metadata.operations() is first and reads() == 1
    clock.advance(3599)
    connection.metadata.operations()
    assert reads() == 1
    clock.advance(2)  # past the hour
    connection.metadata.operations()
    assert reads() == 2
    connection.metadata.operations(refresh=True)
    assert reads() == 3
    connection.metadata.invalidate()
    connection.metadata.operations()
    assert reads() == 4


def test_invoke_function_catalogue_not_xml_is_an_api_error(cloud: Any) -> None:
    cloud.api_queue.append(httpx.Response(200, text="{}", headers={"Content-Type": "application/json"}))
    with pytest.raises(FatalApiError, match=r"\$metadata"):
        cloud.connect().metadata.operations()
