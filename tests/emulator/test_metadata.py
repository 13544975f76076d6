"""Metadata reads real clients make first: EntityDefinitions filters, casts, relationships, no paging."""

from __future__ import annotations

import httpx

from dataverse_emulator.testing import EmulatorHandle

from .conftest import error_of


def test_entity_set_lookup_as_microsofts_sdk_sends_it(api: httpx.Client, emulator: EmulatorHandle) -> None:
    r = api.get(
        "EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute&$filter=LogicalName eq 'account'"
    )
    assert r.json() == {
        "@odata.context": (
            f"{emulator.api_url}/$metadata#EntityDefinitions(LogicalName,EntitySetName,PrimaryIdAttribute)"
        ),
        "value": [
            {
                "LogicalName": "account",
                "EntitySetName": "accounts",
                "PrimaryIdAttribute": "accountid",
                "MetadataId": r.json()["value"][0]["MetadataId"],
            }
        ],
    }
    assert api.get("EntityDefinitions?$filter=LogicalName eq 'nosuch'").json()["value"] == []


def test_by_logical_name_and_metadata_id(api: httpx.Client) -> None:
    one = api.get("EntityDefinitions(LogicalName='contact')?$select=LogicalName,PrimaryNameAttribute").json()
    assert one["LogicalName"] == "contact" and one["PrimaryNameAttribute"] == "fullname"
    again = api.get(f"EntityDefinitions({one['MetadataId']})?$select=LogicalName").json()
    assert again["LogicalName"] == "contact"
    assert error_of(api.get("EntityDefinitions(LogicalName='nosuch')"))[:2] == (404, "0x80040217")
    assert error_of(api.get("EntityDefinitions(LogicalName='contact')?$select=Nope"))[:2] == (400, "0x0")


def test_no_paging_for_metadata(api: httpx.Client) -> None:
    r = api.get("EntityDefinitions?$select=LogicalName", headers={"Prefer": "odata.maxpagesize=2"})
    from dataverse_emulator.model import build_tables  # every preloaded table, webhook registration tables included

    assert len(r.json()["value"]) == len(build_tables()[0]) and "@odata.nextLink" not in r.json()


def test_picklist_cast(api: httpx.Client) -> None:
    base = "EntityDefinitions(LogicalName='{}')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
    r = api.get(base.format("account") + "?$select=LogicalName&$expand=OptionSet($select=Options)")
    values = {a["LogicalName"]: a for a in r.json()["value"]}
    assert {"industrycode", "accountcategorycode", "customertypecode"} <= set(values)
    options = values["industrycode"]["OptionSet"]["Options"]
    assert options[0]["Value"] == 1
    assert options[0]["Label"]["LocalizedLabels"][0]["Label"] == "Accounting"
    assert (
        api.get(base.format("businessunit") + "?$select=LogicalName&$expand=OptionSet($select=Options)").json()["value"]
        == []
    )


def test_attributes_keys_and_relationships(api: httpx.Client) -> None:
    rels = api.get(
        "EntityDefinitions(LogicalName='contact')/ManyToOneRelationships?$select=ReferencingAttribute,"
        "ReferencedEntity,ReferencingEntityNavigationPropertyName&$filter=ReferencingAttribute eq "
        "'parentcustomerid'"
    ).json()["value"]
    assert sorted(r["ReferencingEntityNavigationPropertyName"] for r in rels) == [
        "parentcustomerid_account",
        "parentcustomerid_contact",
    ]
    owner = api.get(
        "EntityDefinitions(LogicalName='account')/ManyToOneRelationships?$filter=ReferencingAttribute eq 'ownerid'"
    ).json()["value"]
    assert [(r["SchemaName"], r["ReferencingEntityNavigationPropertyName"]) for r in owner] == [
        ("owner_accounts", "ownerid")
    ]
    full = api.get(
        "EntityDefinitions(LogicalName='account')?$select=LogicalName&$expand=Attributes($select=LogicalName,"
        "AttributeType;$filter=AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'),Keys,"
        "OneToManyRelationships($select=SchemaName)"
    ).json()
    assert {a["LogicalName"] for a in full["Attributes"]} == {"industrycode", "accountcategorycode", "customertypecode"}
    assert full["Keys"] == []
    assert "contact_customer_accounts" in {r["SchemaName"] for r in full["OneToManyRelationships"]}
    attr = api.get("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')").json()
    assert attr["@odata.type"] == "#Microsoft.Dynamics.CRM.StringAttributeMetadata" and attr["MaxLength"] == 160


def test_single_attribute_cast_expands_its_option_set(api: httpx.Client) -> None:
    base = "EntityDefinitions(LogicalName='account')/Attributes(LogicalName='{}')/"
    cast = "Microsoft.Dynamics.CRM.PicklistAttributeMetadata"
    r = api.get(base.format("industrycode") + cast + "?$select=LogicalName&$expand=OptionSet($select=Options)")
    assert r.status_code == 200
    body = r.json()
    assert body["LogicalName"] == "industrycode"
    assert body["@odata.context"].endswith(f"/Attributes/{cast}/$entity")
    assert body["OptionSet"]["Options"][0]["Label"]["LocalizedLabels"][0]["Label"] == "Accounting"
    assert api.get(base.format("name") + cast).status_code == 404
