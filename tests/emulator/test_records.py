"""Record CRUD, upsert, single properties, lookups and binds, $ref, impersonation, functions and errors."""

from __future__ import annotations

import uuid

import httpx

from dataverse_emulator.testing import EmulatorHandle

from .conftest import created_id, error_of

ANN = {"Prefer": 'odata.include-annotations="*"'}


def test_create_returns_204_with_entity_id(api: httpx.Client, emulator: EmulatorHandle) -> None:
    r = api.post("accounts", json={"name": "Contoso"})
    assert r.status_code == 204 and r.content == b""
    rid = created_id(r)
    assert r.headers["OData-EntityId"] == f"{emulator.api_url}/accounts({rid})"
    assert r.headers["OData-Version"] == "4.0"


def test_create_with_representation(api: httpx.Client, emulator: EmulatorHandle) -> None:
    r = api.post(
        "accounts?$select=name,revenue",
        json={"name": "Rep", "revenue": 5000},
        headers={"Prefer": "return=representation"},
    )
    assert r.status_code == 201
    assert "OData-EntityId" not in r.headers
    assert r.headers["Preference-Applied"] == "return=representation"
    body = r.json()
    assert set(body) == {"@odata.context", "@odata.etag", "name", "revenue", "accountid"}
    assert body["@odata.context"] == f"{emulator.api_url}/$metadata#accounts(name,revenue)/$entity"
    assert body["@odata.etag"] == r.headers["ETag"]


def test_client_supplied_id_and_duplicate(api: httpx.Client) -> None:
    rid = str(uuid.uuid4())
    assert created_id(api.post("accounts", json={"accountid": rid, "name": "A"})) == rid
    assert error_of(api.post("accounts", json={"accountid": rid, "name": "B"})) == (
        412,
        "0x80040237",
        "A record with matching key values already exists.",
    )


def test_retrieve_select_and_not_found(api: httpx.Client) -> None:
    rid = created_id(api.post("accounts", json={"name": "Sel", "numberofemployees": 3}))
    r = api.get(f"accounts({rid})?$select=name")
    assert r.status_code == 200
    assert set(r.json()) == {"@odata.context", "@odata.etag", "name", "accountid"}
    assert r.headers["REQ_ID"] == r.headers["x-ms-service-request-id"]
    missing = "00000000-0000-0000-0000-000000000001"
    assert error_of(api.get(f"accounts({missing})")) == (
        404,
        "0x80040217",
        f"account With Id = {missing} Does Not Exist",
    )
    assert error_of(api.get(f"accounts({rid})?$select=Name"))[:2] == (400, "0x0")


def test_conditional_get(api: httpx.Client) -> None:
    rid = created_id(api.post("accounts", json={"name": "C"}))
    tag = api.get(f"accounts({rid})").headers["ETag"]
    assert api.get(f"accounts({rid})", headers={"If-None-Match": tag}).status_code == 304
    api.patch(f"accounts({rid})", json={"name": "C2"}, headers={"If-Match": "*"})
    assert api.get(f"accounts({rid})", headers={"If-None-Match": tag}).status_code == 200


def test_update_if_match_and_etags(api: httpx.Client) -> None:
    rid = created_id(api.post("accounts", json={"name": "U"}))
    tag = api.get(f"accounts({rid})").headers["ETag"]
    assert api.patch(f"accounts({rid})", json={"name": "U2"}, headers={"If-Match": tag}).status_code == 204
    assert error_of(api.patch(f"accounts({rid})", json={"name": "U3"}, headers={"If-Match": tag})) == (
        412,
        "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )
    missing = str(uuid.uuid4())
    assert error_of(api.patch(f"accounts({missing})", json={"name": "x"}, headers={"If-Match": "*"}))[:2] == (
        404,
        "0x80040217",
    )
    r = api.patch(
        f"accounts({rid})?$select=name",
        json={"name": "U4"},
        headers={"If-Match": "*", "Prefer": "return=representation"},
    )
    assert r.status_code == 200 and r.json()["name"] == "U4"


def test_upsert_by_id(api: httpx.Client, emulator: EmulatorHandle) -> None:
    rid = str(uuid.uuid4())
    r = api.patch(f"accounts({rid})", json={"name": "new"})
    assert r.status_code == 204 and r.headers["OData-EntityId"] == f"{emulator.api_url}/accounts({rid})"
    r = api.patch(f"accounts({rid})", json={"name": "again"})
    assert r.status_code == 204
    assert error_of(api.patch(f"accounts({rid})", json={"name": "x"}, headers={"If-None-Match": "*"})) == (
        412,
        "0x80040237",
        "A record with matching key values already exists.",
    )
    rid2 = str(uuid.uuid4())
    assert (
        api.patch(f"accounts({rid2})", json={"name": "r"}, headers={"Prefer": "return=representation"}).status_code
        == 201
    )
    assert (
        api.patch(f"accounts({rid2})", json={"name": "r"}, headers={"Prefer": "return=representation"}).status_code
        == 200
    )


def test_delete(api: httpx.Client) -> None:
    rid = created_id(api.post("accounts", json={"name": "D"}))
    assert api.delete(f"accounts({rid})").status_code == 204
    assert error_of(api.delete(f"accounts({rid})"))[:2] == (404, "0x80040217")


def test_single_property(api: httpx.Client, emulator: EmulatorHandle) -> None:
    rid = created_id(api.post("accounts", json={"name": "P", "description": "d"}))
    r = api.get(f"accounts({rid})/name")
    assert r.json() == {"@odata.context": f"{emulator.api_url}/$metadata#accounts({rid})/name", "value": "P"}
    assert api.put(f"accounts({rid})/name", json={"value": "P2"}).status_code == 204
    assert api.delete(f"accounts({rid})/description").status_code == 204
    row = api.get(f"accounts({rid})?$select=name,description").json()
    assert row["name"] == "P2" and row["description"] is None


def test_binds_and_lookup_annotations(api: httpx.Client) -> None:
    aid = created_id(api.post("accounts", json={"name": "Parent"}))
    cid = created_id(
        api.post(
            "contacts",
            json={"firstname": "Jo", "lastname": "Doe", "parentcustomerid_account@odata.bind": f"/accounts({aid})"},
        )
    )
    row = api.get(f"contacts({cid})?$select=fullname,_parentcustomerid_value", headers=ANN).json()
    assert row["fullname"] == "Jo Doe"
    assert row["_parentcustomerid_value"] == aid
    assert row["_parentcustomerid_value@OData.Community.Display.V1.FormattedValue"] == "Parent"
    assert (
        row["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == "parentcustomerid_account"
    )
    assert row["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    code, hexcode, message = error_of(
        api.post("contacts", json={"lastname": "x", "parentcustomerid@odata.bind": f"accounts({aid})"})
    )
    assert (code, hexcode) == (400, "0x80048d19")
    assert "An undeclared property 'parentcustomerid' which only has property annotations" in message
    assert error_of(api.post("accounts", json={"Name": "x"}))[:2] == (400, "0x0")
    # clearing a lookup with null
    assert (
        api.patch(
            f"contacts({cid})", json={"parentcustomerid_account@odata.bind": None}, headers={"If-Match": "*"}
        ).status_code
        == 204
    )
    assert api.get(f"contacts({cid})?$select=_parentcustomerid_value").json()["_parentcustomerid_value"] is None
    # owner bound to a user; expanded single-valued navigation
    me = api.get("WhoAmI").json()["UserId"]
    oid = created_id(
        api.post(
            "opportunities",
            json={
                "name": "O",
                "ownerid@odata.bind": f"/systemusers({me})",
                "customerid_account@odata.bind": f"accounts({aid})",
            },
        )
    )
    opp = api.get(f"opportunities({oid})?$select=name&$expand=customerid_account($select=name)").json()
    assert opp["@odata.context"].endswith("#opportunities(name,customerid_account(name))/$entity")
    assert opp["customerid_account"]["name"] == "Parent"


def test_associate_and_disassociate(api: httpx.Client, emulator: EmulatorHandle) -> None:
    aid = created_id(api.post("accounts", json={"name": "A"}))
    oid = created_id(api.post("opportunities", json={"name": "O"}))
    r = api.post(
        f"accounts({aid})/opportunity_customer_accounts/$ref",
        json={"@odata.id": f"{emulator.api_url}/opportunities({oid})"},
    )
    assert r.status_code == 204
    refs = api.get(f"accounts({aid})/opportunity_customer_accounts/$ref").json()
    assert refs["value"] == [{"@odata.id": f"{emulator.api_url}/opportunities({oid})"}]
    assert api.delete(f"accounts({aid})/opportunity_customer_accounts({oid})/$ref").status_code == 204
    assert api.get(f"accounts({aid})/opportunity_customer_accounts/$ref").json()["value"] == []
    assert (
        api.put(f"opportunities({oid})/customerid_account/$ref", json={"@odata.id": f"accounts({aid})"}).status_code
        == 204
    )
    assert api.get(f"opportunities({oid})?$select=_customerid_value").json()["_customerid_value"] == aid
    assert api.delete(f"opportunities({oid})/customerid_account/$ref").status_code == 204


def test_impersonation(api: httpx.Client, emulator: EmulatorHandle) -> None:
    me = api.get("WhoAmI").json()["UserId"]
    users = emulator.admin.seed(
        "systemuser",
        [
            {
                "firstname": "Imp",
                "lastname": "User",
                "businessunitid": api.get("WhoAmI").json()["BusinessUnitId"],
                "azureactivedirectoryobjectid": str(uuid.uuid4()),
            }
        ],
    )
    r = api.post("accounts", json={"name": "I"}, headers={"MSCRMCallerID": users[0]})
    rid = created_id(r)
    row = api.get(f"accounts({rid})?$select=_createdby_value,_createdonbehalfby_value,_ownerid_value").json()
    assert row["_createdby_value"] == users[0]
    assert row["_createdonbehalfby_value"] == me
    assert row["_ownerid_value"] == users[0]
    assert api.get("WhoAmI", headers={"MSCRMCallerID": users[0]}).json()["UserId"] == users[0]


def test_functions_and_documents(api: httpx.Client, emulator: EmulatorHandle) -> None:
    who = api.get("WhoAmI")
    assert set(who.json()) == {"@odata.context", "BusinessUnitId", "UserId", "OrganizationId"}
    assert "x-ms-dop-hint" in who.headers
    assert error_of(api.post("WhoAmI")) == (
        404,
        "",
        f"No HTTP resource was found that matches the request URI '{emulator.api_url}/WhoAmI'.",
    )
    assert "Version" in api.get("RetrieveVersion").json()
    doc = api.get("").json()
    assert {"name": "accounts", "kind": "EntitySet", "url": "accounts"} in doc["value"]
    assert error_of(api.get("Account")) == (404, "0x8006088a", "Resource not found for the segment 'Account'.")
    assert api.get("$metadata").text.startswith("<?xml")


def test_validation_errors(api: httpx.Client) -> None:
    assert error_of(api.post("accounts", json={"name": "x" * 161}))[:2] == (400, "0x80044331")
    assert error_of(api.post("accounts", json={"name": "x", "industrycode": 999}))[:2] == (400, "0x8004431a")
    assert error_of(api.post("accounts", json={"name": "x", "numberofemployees": "many"}))[:2] == (400, "0x80048d19")
    assert error_of(api.post("accounts", content=b"{not json", headers={"Content-Type": "application/json"}))[:2] == (
        400,
        "0x80048d19",
    )


def test_version_numbers_increase(api: httpx.Client) -> None:
    rid = created_id(api.post("accounts", json={"name": "V"}))
    v1 = api.get(f"accounts({rid})?$select=versionnumber").json()["versionnumber"]
    api.patch(f"accounts({rid})", json={"name": "V2"}, headers={"If-Match": "*"})
    row = api.get(f"accounts({rid})?$select=versionnumber")
    assert row.json()["versionnumber"] > v1
    assert row.headers["ETag"] == f'W/"{row.json()["versionnumber"]}"'


def test_deep_insert_is_one_transaction(api: httpx.Client) -> None:
    r = api.post(
        "accounts",
        json={
            "name": "Deep",
            "primarycontactid": {"firstname": "Pri", "lastname": "Mary"},
            "opportunity_customer_accounts": [{"name": "Opp 1"}, {"name": "Opp 2"}],
        },
    )
    aid = created_id(r)
    row = api.get(
        f"accounts({aid})?$select=name&$expand=primarycontactid($select=fullname),"
        "opportunity_customer_accounts($select=name)"
    ).json()
    assert row["primarycontactid"]["fullname"] == "Pri Mary"
    assert sorted(o["name"] for o in row["opportunity_customer_accounts"]) == ["Opp 1", "Opp 2"]
    before = api.get("contacts/$count").text
    bad = api.post(
        "accounts",
        json={
            "name": "Bad",
            "primarycontactid": {"lastname": "Kept?"},
            "opportunity_customer_accounts": [{"name": "x" * 400}],
        },
    )
    assert error_of(bad)[:2] == (400, "0x80044331")
    assert api.get("contacts/$count").text == before  # the contact created first was rolled back


def test_overridden_created_on(api: httpx.Client) -> None:
    rid = created_id(api.post("accounts", json={"name": "Old", "overriddencreatedon": "2020-01-02T03:04:05Z"}))
    assert api.get(f"accounts({rid})?$select=createdon").json()["createdon"] == "2020-01-02T03:04:05Z"


def test_error_annotations_only_when_requested(api: httpx.Client) -> None:
    missing = "00000000-0000-0000-0000-0000000000aa"
    plain = api.get(f"accounts({missing})").json()["error"]
    assert set(plain) == {"code", "message"}
    rich = api.get(f"accounts({missing})", headers={"Prefer": 'odata.include-annotations="*"'}).json()["error"]
    assert rich["@Microsoft.PowerApps.CDS.InnerError.Message"] == plain["message"]
    assert "Microsoft.Crm.CrmException%3a80040217" in rich["@Microsoft.PowerApps.CDS.HelpLink"]


def test_navigation_reads(api: httpx.Client, emulator: EmulatorHandle) -> None:
    aid = created_id(api.post("accounts", json={"name": "Nav"}))
    cid = created_id(
        api.post(
            "contacts",
            json={"firstname": "N", "lastname": "One", "parentcustomerid_account@odata.bind": f"/accounts({aid})"},
        )
    )
    api.patch(f"accounts({aid})", json={"primarycontactid@odata.bind": f"/contacts({cid})"}, headers={"If-Match": "*"})
    single = api.get(f"accounts({aid})/primarycontactid?$select=fullname")
    assert single.status_code == 200 and single.json()["fullname"] == "N One"
    assert single.json()["@odata.context"] == f"{emulator.api_url}/$metadata#contacts(fullname)/$entity"
    coll = api.get(f"accounts({aid})/contact_customer_accounts?$select=fullname")
    assert [c["fullname"] for c in coll.json()["value"]] == ["N One"]
    count = api.get(f"accounts({aid})/contact_customer_accounts/$count")
    assert count.content == "\ufeff1".encode() and count.headers["content-type"].startswith("text/plain")
    assert error_of(api.get(f"accounts({aid})/nosuchnav"))[:2] == (404, "0x8006088a")


def test_wrong_methods(api: httpx.Client) -> None:
    assert error_of(api.delete("accounts"))[0] == 405
    rid = created_id(api.post("accounts", json={"name": "M"}))
    assert error_of(api.post(f"accounts({rid})", json={}))[0] == 405


def test_injected_latency() -> None:
    import time

    from dataverse_emulator.testing import running_emulator

    with running_emulator(latency_ms=150) as h:
        headers = {"Authorization": f"Bearer {h.token()}"}
        start = time.perf_counter()
        assert httpx.get(f"{h.api_url}/WhoAmI", headers=headers).status_code == 200
        assert time.perf_counter() - start >= 0.15


def test_state_and_status_stay_consistent(api: httpx.Client) -> None:
    rid = created_id(api.post("opportunities", json={"name": "S"}))
    row = api.get(f"opportunities({rid})?$select=statecode,statuscode").json()
    assert (row["statecode"], row["statuscode"]) == (0, 1)
    assert api.patch(f"opportunities({rid})", json={"statecode": 2}, headers={"If-Match": "*"}).status_code == 204
    row = api.get(f"opportunities({rid})?$select=statecode,statuscode").json()
    assert (row["statecode"], row["statuscode"]) == (2, 4)
    assert error_of(
        api.patch(f"opportunities({rid})", json={"statecode": 0, "statuscode": 3}, headers={"If-Match": "*"})
    )[:2] == (400, "0x80040203")
