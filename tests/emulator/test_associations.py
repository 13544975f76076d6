"""N:N associate and disassociate through ``$ref`` (webapi/associate-disassociate-entities-using-web-api.md): both
sides' collection-valued navigation properties, both DELETE forms, and the duplicate association refused."""

from __future__ import annotations

import httpx
import pytest

from connector.connection import Connection
from connector.errors import DataverseApiError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle

from .conftest import error_of

RELATIONSHIP = {
    "@odata.type": "Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata",
    "SchemaName": "new_account_contact_fans",
    "Entity1LogicalName": "account",
    "Entity2LogicalName": "contact",
    "IntersectEntityName": "new_account_contact_fans",
    "Entity1NavigationPropertyName": "new_fans",
    "Entity2NavigationPropertyName": "new_favourite_accounts",
}


@pytest.fixture
def pair(api: httpx.Client, emulator: EmulatorHandle) -> tuple[str, list[str]]:
    """An account and three contacts, with the N:N relationship between the two tables (created once per server)."""
    if api.get("RelationshipDefinitions(SchemaName='new_account_contact_fans')").status_code == 404:
        assert api.post("RelationshipDefinitions", json=RELATIONSHIP).status_code == 204
    account = emulator.admin.seed("account", [{"name": "Fabrikam"}])[0]
    contacts = emulator.admin.seed("contact", [{"lastname": n} for n in ("Ann", "Bo", "Cy")])
    return account, contacts


def refs(api: httpx.Client, path: str) -> list[str]:
    resp = api.get(path)
    assert resp.status_code == 200, resp.text
    assert resp.json()["@odata.context"].endswith("$metadata#Collection($ref)")
    return sorted(r["@odata.id"].rsplit("(", 1)[1].rstrip(")") for r in resp.json()["value"])


def test_associate_through_ref_is_seen_from_both_sides(api: httpx.Client, pair: tuple[str, list[str]]) -> None:
    account, contacts = pair
    for cid in contacts[:2]:
        resp = api.post(f"accounts({account})/new_fans/$ref", json={"@odata.id": f"contacts({cid})"})
        assert resp.status_code == 204, resp.text
    absolute = f"{api.base_url}accounts({account})"
    resp = api.post(f"contacts({contacts[2]})/new_favourite_accounts/$ref", json={"@odata.id": absolute})
    assert resp.status_code == 204, resp.text
    assert refs(api, f"accounts({account})/new_fans/$ref") == sorted(contacts)
    assert refs(api, f"contacts({contacts[0]})/new_favourite_accounts/$ref") == [account]
    rows = api.get(f"accounts({account})/new_fans").json()["value"]
    assert sorted(r["lastname"] for r in rows) == ["Ann", "Bo", "Cy"]


def test_disassociate_by_key_segment_and_by_id_option(api: httpx.Client, pair: tuple[str, list[str]]) -> None:
    account, contacts = pair
    for cid in contacts:
        api.post(f"accounts({account})/new_fans/$ref", json={"@odata.id": f"contacts({cid})"}).raise_for_status()
    assert api.delete(f"accounts({account})/new_fans({contacts[0]})/$ref").status_code == 204
    id_option = f"{api.base_url}contacts({contacts[1]})"
    assert api.delete(f"accounts({account})/new_fans/$ref", params={"$id": id_option}).status_code == 204
    assert refs(api, f"accounts({account})/new_fans/$ref") == [contacts[2]]
    assert refs(api, f"contacts({contacts[0]})/new_favourite_accounts/$ref") == []


def test_duplicate_association_and_wrong_targets_are_refused(api: httpx.Client, pair: tuple[str, list[str]]) -> None:
    account, contacts = pair
    body = {"@odata.id": f"contacts({contacts[0]})"}
    assert api.post(f"accounts({account})/new_fans/$ref", json=body).status_code == 204
    assert error_of(api.post(f"accounts({account})/new_fans/$ref", json=body)) == (
        412,
        "0x80040237",
        "Cannot insert duplicate key.",
    )
    wrong = api.post(f"accounts({account})/new_fans/$ref", json={"@odata.id": f"accounts({account})"})
    assert error_of(wrong)[:2] == (400, "0x80048d19")
    missing = "00000000-0000-0000-0000-0000000000aa"
    assert error_of(api.post(f"accounts({account})/new_fans/$ref", json={"@odata.id": f"contacts({missing})"}))[:2] == (
        404,
        "0x80040217",
    )
    assert error_of(api.delete(f"accounts({account})/new_fans/$ref"))[:2] == (400, "0x0")
    assert refs(api, f"accounts({account})/new_fans/$ref") == [contacts[0]]


def test_metadata_declares_both_sides(api: httpx.Client, pair: tuple[str, list[str]]) -> None:
    csdl = api.get("$metadata").text
    account = csdl.split('<EntityType Name="account">', 1)[1].split("</EntityType>", 1)[0]
    contact = csdl.split('<EntityType Name="contact">', 1)[1].split("</EntityType>", 1)[0]
    assert (
        '<NavigationProperty Name="new_fans" Type="Collection(mscrm.contact)" Partner="new_favourite_accounts" />'
        in account
    )
    assert (
        '<NavigationProperty Name="new_favourite_accounts" Type="Collection(mscrm.account)" Partner="new_fans" />'
        in contact
    )


def test_the_connector_actions_link_and_unlink_through_the_emulator(
    emulator: EmulatorHandle, api: httpx.Client, pair: tuple[str, list[str]]
) -> None:
    account, contacts = pair
    conn = Connection.from_config(emulator.connection_config())
    runtime = Runtime(load_entrypoints=False, validate_output=True)
    try:
        link = {"table": "account", "id": account, "navigation": "new_fans"}
        for cid in contacts[:2]:
            runtime.run_action("associate_entities", {**link, "related": {"table": "contact", "id": cid}}, conn)
        assert refs(api, f"accounts({account})/new_fans/$ref") == sorted(contacts[:2])
        runtime.run_action("disassociate_entities", {**link, "related": {"table": "contact", "id": contacts[0]}}, conn)
        assert refs(api, f"accounts({account})/new_fans/$ref") == [contacts[1]]
        with pytest.raises(DataverseApiError) as failed:
            runtime.run_action("associate_entities", {**link, "related": {"table": "contact", "id": contacts[1]}}, conn)
        assert (failed.value.status_code, failed.value.code) == (412, "0x80040237")
    finally:
        conn.close()
