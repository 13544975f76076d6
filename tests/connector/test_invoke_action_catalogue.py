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


TYPED = CSDL.replace(
    "<EntityContainer",
    """<Function Name="new_Typed">
  <Parameter Name="When" Type="Edm.DateTimeOffset" />
  <Parameter Name="Day" Type="Edm.Date" />
  <Parameter Name="Small" Type="Edm.Int16" />
  <Parameter Name="Access" Type="mscrm.EndpointAccessType" />
  <Parameter Name="Box" Type="mscrm.RetrieveVersionResponse" />
  <Parameter Name="Ids" Type="Collection(Edm.Guid)" />
  <Parameter Name="Text" Type="Edm.String" Nullable="false" />
  <ReturnType Type="Edm.String" />
</Function>
<EntityContainer""",
)
GOOD = {
    "When": "2026-12-05T10:00:00Z",
    "Day": "2026-12-05",
    "Small": 7,
    "Access": "Internet",
    "Box": {"Version": "9.2"},
    "Ids": ["5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"],
    "Text": "it's",
}


def test_invoke_function_primitives_enums_complex_types_and_collections(cloud: Any) -> None:
    from connector import messages
    from connector.inputs import InvokeFunction

    cloud.api_queue += [
        httpx.Response(200, text=TYPED, headers={"Content-Type": "application/xml"}),
        httpx.Response(200, json={"@odata.context": "x/$metadata#Edm.String", "value": "done"}),
    ]
    connection = cloud.connect()
    bad = {"When": "tomorrow", "Day": 5, "Small": 40000, "Access": "Intranet", "Box": {"Nope": 1}, "Ids": ["x"]}
    problems = messages.invoke_function_problems(InvokeFunction(name="new_Typed", parameters=bad), connection)
    assert sorted(p.path for p in problems) == [
        "$.parameters.Access",
        "$.parameters.Box.Nope",
        "$.parameters.Day",
        "$.parameters.Ids[0]",
        "$.parameters.Small",
        "$.parameters.Text",
        "$.parameters.When",
    ]
    assert messages.invoke_function_problems(InvokeFunction(name="new_Typed", parameters=GOOD), connection) == []
    out = messages.run(connection, InvokeFunction(name="new_Typed", parameters=GOOD))
    assert out == {"name": "new_Typed", "return_type": "Edm.String", "result": "done"}
    sent = next(r for r in cloud.api_requests if "new_Typed" in r.url.path)
    assert sent.url.path.endswith("/new_Typed(When=@p1,Day=@p2,Small=@p3,Access=@p4,Box=@p5,Ids=@p6,Text=@p7)")
    aliases = dict(sent.url.params)
    assert aliases == {
        "@p1": "2026-12-05T10:00:00Z",
        "@p2": "2026-12-05",
        "@p3": "7",
        "@p4": "Microsoft.Dynamics.CRM.EndpointAccessType'Internet'",
        "@p5": '{"Version":"9.2"}',
        "@p6": '["5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"]',
        "@p7": "'it''s'",
    }
