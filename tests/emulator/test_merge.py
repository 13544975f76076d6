"""The unbound Merge action: the documented request (merge-entity-using-web-api.md), children moved by the Merge
cascade, the subordinate deactivated, UpdateContent unused for incident, and the refusals."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import created_id, error_of


def typed(table: str, rid: str, **values: Any) -> dict[str, Any]:
    return {"@odata.type": f"Microsoft.Dynamics.CRM.{table}", f"{table}id": rid, **values}


def test_merge_as_documented_moves_children_and_deactivates_the_subordinate(api: httpx.Client) -> None:
    target = created_id(api.post("accounts", json={"name": "Account 1"}))
    sub = created_id(api.post("accounts", json={"name": "Account 2"}))
    child = created_id(
        api.post("contacts", json={"lastname": "C", "parentcustomerid_account@odata.bind": f"accounts({sub})"})
    )
    body = {
        "Target": typed("account", target, name="Account 1"),
        "Subordinate": typed("account", sub, name="Account 2"),
        "UpdateContent": {"accountnumber": "1234", "@odata.type": "Microsoft.Dynamics.CRM.account"},
        "PerformParentingChecks": False,
    }
    answer = api.post("Merge", json=body)
    assert answer.status_code == 204 and answer.content == b""
    assert api.get(f"accounts({target})?$select=accountnumber").json()["accountnumber"] == "1234"
    merged = api.get(f"accounts({sub})?$select=statecode,statuscode,merged,_masterid_value").json()
    assert (merged["statecode"], merged["statuscode"]) == (1, 2)
    assert (merged["merged"], merged["_masterid_value"]) == (True, target)
    kept = api.get(f"accounts({target})?$select=merged,_masterid_value").json()
    assert (kept["merged"], kept["_masterid_value"]) == (False, None)
    assert api.get(f"contacts({child})?$select=_parentcustomerid_value").json()["_parentcustomerid_value"] == target


def test_merge_of_cases_ignores_update_content(api: httpx.Client) -> None:
    customer = created_id(api.post("accounts", json={"name": "Customer"}))
    bind = {"customerid_account@odata.bind": f"accounts({customer})"}
    target = created_id(api.post("incidents", json={"title": "Case 1", **bind}))
    sub = created_id(api.post("incidents", json={"title": "Case 2", **bind}))
    body = {
        "Target": typed("incident", target),
        "Subordinate": typed("incident", sub),
        "UpdateContent": {"title": "Renamed", "@odata.type": "Microsoft.Dynamics.CRM.incident"},
        "PerformParentingChecks": True,
    }
    assert api.post("Merge", json=body).status_code == 204
    assert api.get(f"incidents({target})?$select=title").json()["title"] == "Case 1"
    assert api.get(f"incidents({sub})?$select=statuscode").json()["statuscode"] == 2000


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        pytest.param({"Target": {"accountid": "<t>"}}, 400, "0x80040203", id="untyped-target"),
        pytest.param({"Subordinate": "<t>"}, 400, "0x80040203", id="same-record"),
        pytest.param({"PerformParentingChecks": None}, 400, "0x80040203", id="checks-missing"),
        pytest.param({"Subordinate": "missing"}, 404, "0x80040217", id="missing-subordinate"),
    ],
)
def test_merge_refusals(api: httpx.Client, change: dict[str, Any], status: int, code: str) -> None:
    target = created_id(api.post("accounts", json={"name": "T"}))
    sub = created_id(api.post("accounts", json={"name": "S"}))
    body: dict[str, Any] = {
        "Target": typed("account", target),
        "Subordinate": typed("account", sub),
        "PerformParentingChecks": False,
    }
    for name, value in change.items():
        if value == "<t>":
            value = typed("account", target)
        elif value == "missing":
            value = typed("account", "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b")
        elif isinstance(value, dict):
            value = {k: target if v == "<t>" else v for k, v in value.items()}
        body[name] = value
    assert error_of(api.post("Merge", json=body))[:2] == (status, code)
    assert api.get(f"accounts({sub})?$select=statecode").json()["statecode"] == 0


def test_merge_refuses_a_table_merge_does_not_support(api: httpx.Client) -> None:
    a = created_id(api.post("opportunities", json={"name": "A"}))
    b = created_id(api.post("opportunities", json={"name": "B"}))
    body = {"Target": typed("opportunity", a), "Subordinate": typed("opportunity", b), "PerformParentingChecks": False}
    assert error_of(api.post("Merge", json=body))[:2] == (400, "0x80040203")


def test_merge_is_listed_in_the_csdl_as_documented(api: httpx.Client) -> None:
    csdl = api.get("$metadata").text
    action = csdl.split('<Action Name="Merge" IsBound="false">', 1)[1].split("</Action>", 1)[0]
    assert '<Parameter Name="Target" Type="mscrm.crmbaseentity" Nullable="false" />' in action
    assert '<Parameter Name="Subordinate" Type="mscrm.crmbaseentity" Nullable="false" />' in action
    assert '<Parameter Name="UpdateContent" Type="mscrm.crmbaseentity" />' in action
    assert '<Parameter Name="PerformParentingChecks" Type="Edm.Boolean" Nullable="false" />' in action
    assert "<ReturnType" not in action
    assert '<ActionImport Name="Merge" Action="Microsoft.Dynamics.CRM.Merge" />' in csdl


@pytest.mark.parametrize("table", ["account", "contact", "lead"])
def test_merge_columns_are_read_only_to_callers(api: httpx.Client, table: str) -> None:
    """The entity references list ``masterid`` and ``merged`` as read-only: only Merge sets them."""
    meta = api.get(f"EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='merged')").json()
    assert (meta["IsValidForCreate"], meta["IsValidForUpdate"]) == (False, False)
    master = api.get(f"EntityDefinitions(LogicalName='{table}')/Attributes(LogicalName='masterid')").json()
    assert master["AttributeType"] == "Lookup" and master["IsValidForUpdate"] is False
