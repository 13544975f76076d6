"""Alternate keys: definition metadata, Pending -> Active on the injected clock, Failed, key URLs and uniqueness."""

from __future__ import annotations

import httpx

from dataverse_emulator.testing import EmulatorHandle

from .conftest import FakeClock, created_id, error_of


def make_key(api: httpx.Client, table: str, name: str, cols: list[str]) -> httpx.Response:
    return api.post(
        f"EntityDefinitions(LogicalName='{table}')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": name,
            "KeyAttributes": cols,
            "DisplayName": {"LocalizedLabels": [{"Label": name, "LanguageCode": 1033}]},
        },
    )


def key_status(api: httpx.Client, table: str) -> list[str]:
    r = api.get(f"EntityDefinitions(LogicalName='{table}')/Keys?$select=SchemaName,KeyAttributes,EntityKeyIndexStatus")
    return [k["EntityKeyIndexStatus"] for k in r.json()["value"]]


def test_key_lifecycle_and_key_urls(api: httpx.Client, clock: FakeClock, emulator: EmulatorHandle) -> None:
    r = make_key(api, "account", "new_accountnumber", ["accountnumber"])
    assert r.status_code == 204
    assert r.headers["OData-EntityId"].startswith(f"{emulator.api_url}/EntityDefinitions(LogicalName='account')/Keys(")
    assert key_status(api, "account") == ["Pending"]
    assert error_of(api.get("accounts(accountnumber='A1')"))[:2] == (400, "0x80060888")
    clock.advance(2)
    assert key_status(api, "account") == ["Active"]
    # upsert creates through the key URL and echoes the key form
    r = api.patch("accounts(accountnumber='O''Brien')", json={"name": "quote"})
    assert r.status_code == 204
    assert r.headers["OData-EntityId"] == f"{emulator.api_url}/accounts(accountnumber='O''Brien')"
    row = api.get("accounts(accountnumber='O''Brien')?$select=name,accountnumber").json()
    assert row["accountnumber"] == "O'Brien" and row["name"] == "quote"
    # update through the key URL keeps the key value
    assert (
        api.patch("accounts(accountnumber='O''Brien')", json={"name": "q2", "accountnumber": "zz"}).status_code == 204
    )
    assert api.get("accounts(accountnumber='O''Brien')?$select=name").json()["name"] == "q2"
    assert error_of(api.get("accounts(accountnumber='nope')")) == (
        404,
        "0x80060891",
        "A record with the specified key values does not exist in account entity",
    )
    assert error_of(api.get("accounts(name='x')"))[0:2] == (400, "0x80060888")
    assert error_of(
        api.patch("accounts(accountnumber='O''Brien')", json={"name": "x"}, headers={"If-None-Match": "*"})
    )[:2] == (412, "0x80040237")
    # uniqueness on create
    assert error_of(api.post("accounts", json={"name": "dup", "accountnumber": "O'Brien"}))[:2] == (412, "0x80060892")
    # delete by key
    assert api.delete("accounts(accountnumber='O''Brien')").status_code == 204
    # bind through an alternate key
    created_id(api.post("accounts", json={"name": "P", "accountnumber": "P1"}))
    cid = created_id(
        api.post(
            "contacts", json={"lastname": "c", "parentcustomerid_account@odata.bind": "/accounts(accountnumber='P1')"}
        )
    )
    assert api.get(f"contacts({cid})?$select=_parentcustomerid_value").json()["_parentcustomerid_value"]


def test_composite_key_any_order(api: httpx.Client, clock: FakeClock) -> None:
    assert make_key(api, "contact", "new_name_email", ["firstname", "emailaddress1"]).status_code == 204
    clock.advance(5)
    assert api.patch("contacts(firstname='Joe',emailaddress1='j@x.com')", json={"lastname": "J"}).status_code == 204
    row = api.get("contacts(emailaddress1='j@x.com',firstname='Joe')?$select=lastname")
    assert row.status_code == 200 and row.json()["lastname"] == "J"
    assert error_of(api.get("contacts(firstname='Joe')"))[:2] == (400, "0x80060888")


def test_key_fails_when_rows_violate_it(api: httpx.Client, emulator: EmulatorHandle, clock: FakeClock) -> None:
    emulator.admin.seed(
        "lead", [{"lastname": "a", "emailaddress1": "same@x"}, {"lastname": "b", "emailaddress1": "same@x"}]
    )
    assert make_key(api, "lead", "new_email", ["emailaddress1"]).status_code == 204
    clock.advance(5)
    assert key_status(api, "lead") == ["Failed"]


def test_key_definition_errors(api: httpx.Client) -> None:
    assert make_key(api, "account", "bad", ["nosuchcolumn"]).status_code == 400
    assert make_key(api, "account", "bad2", ["creditonhold"]).status_code == 400
    assert make_key(api, "account", "k1", ["accountnumber"]).status_code == 204
    assert make_key(api, "account", "k1", ["name"]).status_code == 400
    listed = api.get(
        "EntityDefinitions?$select=SchemaName&$expand=Keys($select=KeyAttributes)&$filter=LogicalName eq 'account'"
    ).json()["value"][0]
    assert [k["KeyAttributes"] for k in listed["Keys"]] == [["accountnumber"]]


def test_rows_written_while_pending_can_fail_the_key(api: httpx.Client, clock: FakeClock) -> None:
    assert make_key(api, "lead", "new_company", ["companyname"]).status_code == 204
    created_id(api.post("leads", json={"lastname": "a", "companyname": "Same"}))
    created_id(api.post("leads", json={"lastname": "b", "companyname": "same"}))
    clock.advance(5)
    assert key_status(api, "lead") == ["Failed"]


def test_reserved_characters_in_key_values_are_refused(api: httpx.Client, clock: FakeClock) -> None:
    assert make_key(api, "account", "new_num", ["accountnumber"]).status_code == 204
    clock.advance(5)
    created_id(api.post("accounts", json={"name": "amp", "accountnumber": "M&M"}))
    assert error_of(api.get("accounts(accountnumber='M%26M')"))[0] == 400
    # the documented workaround: find it with $filter instead
    r = api.get("accounts?$select=name&$filter=accountnumber eq 'M%26M'")
    assert [v["name"] for v in r.json()["value"]] == ["amp"]
