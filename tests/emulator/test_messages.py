"""Actions and functions: the CSDL lists them, and QualifyLead, WinOpportunity, RetrieveVersion,
CalculateRollupField and the sample custom API behave as documented (BEHAVIOURS.md, "Messages")."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx

from tests.emulator.conftest import created_id, error_of

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"


def _csdl(api: httpx.Client) -> ET.Element:
    r = api.get("$metadata")
    assert r.status_code == 200
    return ET.fromstring(r.text)


def test_csdl_lists_actions_functions_and_the_custom_api(api: httpx.Client) -> None:
    root = _csdl(api)
    actions = {a.get("Name"): a for a in root.iter(f"{EDM}Action")}
    functions = {f.get("Name"): f for f in root.iter(f"{EDM}Function")}
    assert {"QualifyLead", "WinOpportunity", "sample_ApplyDiscount"} <= set(actions)
    assert {"RetrieveVersion", "CalculateRollupField", "WhoAmI"} <= set(functions)
    qualify = actions["QualifyLead"]
    assert qualify.get("IsBound") == "true"
    params = {p.get("Name"): (p.get("Type"), p.get("Nullable")) for p in qualify.iter(f"{EDM}Parameter")}
    assert params["entity"] == ("mscrm.lead", "false")
    assert params["Status"] == ("Edm.Int32", "false")
    assert params["OpportunityCustomerId"] == ("mscrm.crmbaseentity", None)
    assert qualify.find(f"{EDM}ReturnType").get("Type") == "Collection(mscrm.crmbaseentity)"  # type: ignore[union-attr]
    custom = {p.get("Name"): p.get("Type") for p in actions["sample_ApplyDiscount"].iter(f"{EDM}Parameter")}
    assert custom == {
        "Amount": "Edm.Decimal",
        "Codes": "Collection(Edm.String)",
        "Customer": "mscrm.account",
        "Percent": "Edm.Int32",
    }
    imports = {i.get("Name") for i in root.iter(f"{EDM}ActionImport")} | {
        i.get("Name") for i in root.iter(f"{EDM}FunctionImport")
    }
    assert {"WinOpportunity", "RetrieveVersion", "sample_ApplyDiscount"} <= imports
    assert "QualifyLead" not in imports  # bound actions have no import
    types = {c.get("Name") for c in root.iter(f"{EDM}ComplexType")}
    assert {"RetrieveVersionResponse", "sample_ApplyDiscountResponse"} <= types


def test_custom_api_rows_can_be_queried(api: httpx.Client) -> None:
    rows = api.get("customapis", params={"$filter": "uniquename eq 'sample_ApplyDiscount'"}).json()["value"]
    assert len(rows) == 1 and rows[0]["isfunction"] is False and rows[0]["bindingtype"] == 0
    cid = rows[0]["customapiid"]
    params = api.get("customapirequestparameters", params={"$filter": f"_customapiid_value eq {cid}"}).json()["value"]
    assert sorted(p["uniquename"] for p in params) == ["Amount", "Codes", "Customer", "Percent"]
    props = api.get("customapiresponseproperties", params={"$filter": f"_customapiid_value eq {cid}"}).json()
    assert sorted(p["uniquename"] for p in props["value"]) == ["CodeCount", "CustomerName", "Total"]


def test_a_custom_api_created_as_rows_appears_in_the_csdl_and_answers_nulls(api: httpx.Client) -> None:
    cid = created_id(
        api.post(
            "customapis",
            json={"uniquename": "new_Echo", "name": "new_Echo", "bindingtype": 0, "isfunction": True},
        )
    )
    api.post(
        "customapiresponseproperties",
        json={"uniquename": "Out", "name": "Out", "type": 10, "customapiid@odata.bind": f"customapis({cid})"},
    )
    functions = {f.get("Name") for f in _csdl(api).iter(f"{EDM}Function")}
    assert "new_Echo" in functions
    r = api.get("new_Echo()")
    assert r.status_code == 200 and r.json()["Out"] is None


def test_retrieve_version_and_who_am_i_as_functions(api: httpx.Client) -> None:
    for path in ("RetrieveVersion", "RetrieveVersion()"):
        r = api.get(path)
        assert r.status_code == 200
        assert r.json()["Version"].startswith("9.2.")
        assert r.json()["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.RetrieveVersionResponse")
    assert api.get("WhoAmI()").json()["UserId"]
    assert api.post("RetrieveVersion", json={}).status_code == 404


def test_qualify_lead_creates_account_contact_opportunity(api: httpx.Client) -> None:
    lid = created_id(
        api.post(
            "leads",
            json={
                "firstname": "Ada",
                "lastname": "Lovelace",
                "companyname": "Analytical Engines",
                "subject": "Big deal",
                "estimatedamount": 5000,
            },
        )
    )
    body = {"CreateAccount": True, "CreateContact": True, "CreateOpportunity": True, "Status": 3}
    r = api.post(f"leads({lid})/Microsoft.Dynamics.CRM.QualifyLead", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["@odata.context"].endswith("$metadata#Collection(Microsoft.Dynamics.CRM.crmbaseentity)")
    kinds = [v["@odata.type"] for v in out["value"]]
    assert kinds == [
        "#Microsoft.Dynamics.CRM.account",
        "#Microsoft.Dynamics.CRM.contact",
        "#Microsoft.Dynamics.CRM.opportunity",
    ]
    account_id, contact_id, opp_id = (
        v[k] for v, k in zip(out["value"], ("accountid", "contactid", "opportunityid"), strict=True)
    )
    assert api.get(f"accounts({account_id})").json()["name"] == "Analytical Engines"
    contact = api.get(f"contacts({contact_id})").json()
    assert contact["_parentcustomerid_value"] == account_id and contact["_originatingleadid_value"] == lid
    opp = api.get(f"opportunities({opp_id})").json()
    assert (opp["name"], opp["estimatedvalue"], opp["_customerid_value"]) == ("Big deal", 5000, account_id)
    lead = api.get(f"leads({lid})").json()
    assert (lead["statecode"], lead["statuscode"]) == (1, 3)
    again = api.post(f"leads({lid})/Microsoft.Dynamics.CRM.QualifyLead", json=body)
    assert error_of(again)[:2] == (400, "0x80040203")


def test_qualify_lead_refusals(api: httpx.Client) -> None:
    lid = created_id(api.post("leads", json={"lastname": "X"}))
    path = f"leads({lid})/Microsoft.Dynamics.CRM.QualifyLead"
    missing = api.post(path, json={"CreateAccount": False, "CreateContact": False, "CreateOpportunity": False})
    assert error_of(missing)[:2] == (400, "0x80040203") and "Status" in error_of(missing)[2]
    unknown = api.post(
        path, json={"CreateAccount": False, "CreateContact": False, "CreateOpportunity": False, "Status": 3, "Bogus": 1}
    )
    assert error_of(unknown)[0] == 400 and "'Bogus'" in error_of(unknown)[2]
    wrong_status = api.post(
        path, json={"CreateAccount": False, "CreateContact": False, "CreateOpportunity": False, "Status": 4}
    )
    assert error_of(wrong_status)[:2] == (400, "0x80040203")
    assert api.get(path).status_code == 405
    aid = created_id(api.post("accounts", json={"name": "A"}))
    not_bound_here = api.post(f"accounts({aid})/Microsoft.Dynamics.CRM.QualifyLead", json={})
    assert not_bound_here.status_code == 404


def test_win_opportunity_closes_with_an_opportunityclose(api: httpx.Client) -> None:
    oid = created_id(api.post("opportunities", json={"name": "Deal", "estimatedvalue": 1200}))
    body = {
        "Status": 3,
        "OpportunityClose": {"subject": "Won it", "opportunityid@odata.bind": f"opportunities({oid})"},
    }
    r = api.post("WinOpportunity", json=body)
    assert r.status_code == 204, r.text
    opp = api.get(f"opportunities({oid})").json()
    assert (opp["statecode"], opp["statuscode"], opp["actualvalue"]) == (1, 3, 1200)
    closes = api.get("opportunitycloses", params={"$filter": f"_opportunityid_value eq {oid}"}).json()["value"]
    assert [(c["subject"], c["statecode"]) for c in closes] == [("Won it", 1)]
    assert error_of(api.post("WinOpportunity", json=body))[:2] == (400, "0x80040203")
    other = created_id(api.post("opportunities", json={"name": "Other"}))
    lost_status = {**body, "Status": 4}
    lost_status["OpportunityClose"] = {"subject": "x", "opportunityid@odata.bind": f"opportunities({other})"}
    assert error_of(api.post("WinOpportunity", json=lost_status))[:2] == (400, "0x80040203")
    assert api.get(f"opportunities({other})").json()["statecode"] == 0  # the refusal rolled back the close


def test_calculate_rollup_field_counts_open_opportunities(api: httpx.Client) -> None:
    aid = created_id(api.post("accounts", json={"name": "Parent"}))
    for value in (100, 250):
        api.post(
            "opportunities",
            json={"name": "o", "estimatedvalue": value, "parentaccountid@odata.bind": f"accounts({aid})"},
        )
    target = "{'@odata.id':'accounts(" + aid + ")'}"
    r = api.get("CalculateRollupField(Target=@t,FieldName=@f)", params={"@t": target, "@f": "'openrevenue'"})
    assert r.status_code == 200, r.text
    assert (r.json()["accountid"], r.json()["openrevenue"], r.json()["openrevenue_state"]) == (aid, 350, 1)
    r = api.get("CalculateRollupField(Target=@t,FieldName='opendeals')", params={"@t": target})
    assert r.json()["opendeals"] == 2
    assert api.get(f"accounts({aid})").json()["opendeals"] == 2
    bad = api.get("CalculateRollupField(Target=@t,FieldName='name')", params={"@t": target})
    assert error_of(bad)[:2] == (400, "0x80040203")
    assert error_of(api.get("CalculateRollupField(FieldName='name')"))[:2] == (400, "0x80040203")


def test_sample_custom_api_computes(api: httpx.Client) -> None:
    aid = created_id(api.post("accounts", json={"name": "Contoso"}))
    body = {
        "Amount": 200.0,
        "Percent": 15,
        "Codes": ["A", "B"],
        "Customer": {"@odata.type": "Microsoft.Dynamics.CRM.account", "accountid": aid},
    }
    r = api.post("sample_ApplyDiscount", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.sample_ApplyDiscountResponse")
    assert (out["Total"], out["CodeCount"], out["CustomerName"]) == (170.0, 2, "Contoso")
    refused = api.post("sample_ApplyDiscount", json={"Amount": 1, "Percent": 101})
    assert error_of(refused)[:2] == (400, "0x80040265")
