"""Metadata writes: columns (POST, PUT with MergeLabels), tables (POST and CreateEntities), relationships,
RetrieveMetadataChanges, PublishXml, key index status, CSDL, persistence with --db, and the admin bulk preload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from dataverse_emulator.testing import EmulatorHandle, running_emulator

from .conftest import FakeClock, created_id, error_of, fetch_token

LABEL = "Microsoft.Dynamics.CRM.Label"


def label(text: str, lang: int = 1033) -> dict[str, Any]:
    return {
        "@odata.type": LABEL,
        "LocalizedLabels": [
            {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": lang}
        ],
    }


def money_column(schema: str = "new_Balance") -> dict[str, Any]:
    """The documented Money example (create-update-column-definitions-using-web-api.md)."""
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.MoneyAttributeMetadata",
        "AttributeType": "Money",
        "AttributeTypeName": {"Value": "MoneyType"},
        "Description": label("Enter the balance amount"),
        "DisplayName": label("Balance"),
        "RequiredLevel": {
            "Value": "None",
            "CanBeChanged": True,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "SchemaName": schema,
        "PrecisionSource": 2,
        "ImeMode": "Disabled",
        "MaxValue": 1000000000,
        "MinValue": 0,
    }


def table_body(schema: str) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": schema,
        "DisplayName": label("Bank Account"),
        "DisplayCollectionName": label("Bank Accounts"),
        "Description": label("An entity to store information about customer bank accounts"),
        "OwnershipType": "UserOwned",
        "IsActivity": False,
        "HasActivities": False,
        "HasNotes": False,
        "Attributes": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                "AttributeType": "String",
                "AttributeTypeName": {"Value": "StringType"},
                "IsPrimaryName": True,
                "MaxLength": 100,
                "FormatName": {"Value": "Text"},
                "SchemaName": schema.split("_")[0] + "_Name",
                "DisplayName": label("Account Name"),
            }
        ],
    }


def test_create_money_column_usable_at_once(api: httpx.Client) -> None:
    r = api.post(
        "EntityDefinitions(LogicalName='account')/Attributes",
        json=money_column(),
        headers={"MSCRM.SolutionUniqueName": "examplesolution"},
    )
    assert r.status_code == 204, r.text
    assert r.text == ""
    entity_id = r.headers["OData-EntityId"]
    attr = api.get("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='new_balance')").json()
    assert entity_id.endswith(f"/EntityDefinitions(LogicalName='account')/Attributes({attr['MetadataId']})")
    assert attr["@odata.type"] == "#Microsoft.Dynamics.CRM.MoneyAttributeMetadata"
    assert attr["SchemaName"] == "new_Balance" and attr["IsCustomAttribute"] is True
    assert attr["DisplayName"]["UserLocalizedLabel"]["Label"] == "Balance"
    assert attr["MaxValue"] == 1000000000 and attr["PrecisionSource"] == 2
    rid = created_id(api.post("accounts", json={"name": "Rich", "new_balance": 12.5}))
    assert api.get(f"accounts({rid})?$select=new_balance").json()["new_balance"] == 12.5
    found = api.get("accounts?$select=name&$filter=new_balance gt 10").json()["value"]
    assert [x["name"] for x in found] == ["Rich"]
    again = api.post("EntityDefinitions(LogicalName='account')/Attributes", json=money_column())
    assert error_of(again)[:2] == (400, "0x80047013")
    typed = api.get(
        "EntityDefinitions(LogicalName='account')/Attributes/Microsoft.Dynamics.CRM.MoneyAttributeMetadata"
        "?$select=LogicalName&$filter=LogicalName eq 'new_balance_base'"
    ).json()["value"]
    assert [x["LogicalName"] for x in typed] == ["new_balance_base"]


def test_update_column_put_only_and_merge_labels(api: httpx.Client) -> None:
    body = {
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "SchemaName": "new_Motto",
        "MaxLength": 50,
        "DisplayName": {
            "LocalizedLabels": [label("Motto")["LocalizedLabels"][0], label("Devise", 1036)["LocalizedLabels"][0]]
        },
    }
    assert api.post("EntityDefinitions(LogicalName='contact')/Attributes", json=body).status_code == 204
    url = "EntityDefinitions(LogicalName='contact')/Attributes(LogicalName='new_motto')"
    assert error_of(api.patch(url, json={"DisplayName": label("x")}))[0] == 405

    def labels() -> dict[int, str]:
        got = api.get(url).json()["DisplayName"]["LocalizedLabels"]
        return {x["LanguageCode"]: x["Label"] for x in got}

    assert labels() == {1033: "Motto", 1036: "Devise"}
    merged = {**body, "DisplayName": label("Slogan")}
    assert api.put(url, json=merged, headers={"MSCRM.MergeLabels": "true"}).status_code == 204
    assert labels() == {1033: "Slogan", 1036: "Devise"}
    assert api.put(url, json=merged).status_code == 204  # header absent: labels not sent are lost
    assert labels() == {1033: "Slogan"}
    shorter = {**merged, "MaxLength": 5}
    assert api.put(url, json=shorter).status_code == 204
    assert api.get(url).json()["MaxLength"] == 5
    long = api.post("contacts", json={"lastname": "L", "new_motto": "too long"})
    assert error_of(long)[:2] == (400, "0x80044331")


def test_create_table_post_and_create_entities(api: httpx.Client, emulator: EmulatorHandle) -> None:
    r = api.post("EntityDefinitions", json=table_body("new_BankAccount"), headers={"MSCRM.SolutionUniqueName": "s1"})
    assert r.status_code == 204, r.text
    meta = api.get(
        "EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute,IsCustomEntity"
        "&$filter=LogicalName eq 'new_bankaccount'"
    ).json()["value"]
    assert r.headers["OData-EntityId"].endswith(f"/EntityDefinitions({meta[0]['MetadataId']})")
    assert meta[0] | {"MetadataId": None} == {
        "LogicalName": "new_bankaccount",
        "EntitySetName": "new_bankaccounts",
        "PrimaryIdAttribute": "new_bankaccountid",
        "PrimaryNameAttribute": "new_name",
        "IsCustomEntity": True,
        "MetadataId": None,
    }
    rid = created_id(api.post("new_bankaccounts", json={"new_name": "Checking"}))
    row = api.get(f"new_bankaccounts({rid})").json()
    assert row["new_name"] == "Checking" and row["statecode"] == 0 and row["statuscode"] == 1
    assert row["_ownerid_value"]
    assert emulator.emulator.solution_components["s1"][0][0] == "Entity"
    ce = {**table_body("new_Loan"), "@odata.type": "Microsoft.Dynamics.CRM.ComplexEntityMetadata"}
    ce["Attributes"] = [
        {**ce["Attributes"][0], "@odata.type": "Microsoft.Dynamics.CRM.ComplexStringAttributeMetadata"},
        {
            "@odata.type": "Microsoft.Dynamics.CRM.ComplexPicklistAttributeMetadata",
            "SchemaName": "new_Kind",
            "OptionSet": {
                "Options": [
                    {"Value": 100000000, "Label": label("Fixed")},
                    {"Value": 100000001, "Label": label("Variable")},
                ]
            },
        },
        {
            "@odata.type": "Microsoft.Dynamics.CRM.ComplexDateTimeAttributeMetadata",
            "SchemaName": "new_Due",
            "Format": "DateOnly",
        },
    ]
    assert api.post("CreateEntities", json={"Entities": [ce]}).status_code == 204
    lid = created_id(api.post("new_loans", json={"new_name": "L1", "new_kind": 100000001, "new_due": "2025-02-03"}))
    got = api.get(f"new_loans({lid})", headers={"Prefer": 'odata.include-annotations="*"'}).json()
    assert got["new_kind@OData.Community.Display.V1.FormattedValue"] == "Variable" and got["new_due"] == "2025-02-03"
    assert error_of(api.post("new_loans", json={"new_name": "bad", "new_kind": 7}))[0] == 400
    dup = api.post("EntityDefinitions", json=table_body("new_Loan"))
    assert error_of(dup)[:2] == (400, "0x80047013")
    listed = api.get(
        "EntityDefinitions?$select=LogicalName&$filter=IsPrivate eq false and IsCustomEntity eq true"
    ).json()
    assert {"new_bankaccount", "new_loan"} <= {x["LogicalName"] for x in listed["value"]}
    csdl = api.get("$metadata").text
    assert '<EntityType Name="new_loan">' in csdl and '<EntitySet Name="new_loans"' in csdl
    assert (
        api.post(
            "PublishXml",
            json={"ParameterXml": "<importexportxml><entities><entity>new_loan</entity></entities></importexportxml>"},
        ).status_code
        == 204
    )


def test_relationships_one_to_many_and_many_to_many(api: httpx.Client) -> None:
    api.post("EntityDefinitions", json=table_body("new_Branch"))
    one = {
        "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "SchemaName": "new_account_branch",
        "ReferencedAttribute": "accountid",
        "ReferencedEntity": "account",
        "ReferencingEntity": "new_branch",
        "Lookup": {
            "AttributeType": "Lookup",
            "SchemaName": "new_AccountId",
            "DisplayName": label("Account"),
            "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
        },
    }
    r = api.post("RelationshipDefinitions", json=one)
    assert r.status_code == 204, r.text
    assert "/RelationshipDefinitions(" in r.headers["OData-EntityId"]
    acc = created_id(api.post("accounts", json={"name": "Parent"}))
    bid = created_id(api.post("new_branches", json={"new_name": "B", "new_AccountId@odata.bind": f"/accounts({acc})"}))
    assert api.get(f"new_branches({bid})?$select=_new_accountid_value").json()["_new_accountid_value"] == acc
    kids = api.get(f"accounts({acc})/new_account_branch?$select=new_name").json()["value"]
    assert [k["new_name"] for k in kids] == ["B"]
    m2o = api.get(
        "EntityDefinitions(LogicalName='new_branch')/ManyToOneRelationships?$select=SchemaName,ReferencedEntity"
    ).json()["value"]
    assert {"SchemaName": "new_account_branch", "ReferencedEntity": "account"} in [
        {k: v for k, v in x.items() if k != "MetadataId"} for x in m2o
    ]
    many = {
        "@odata.type": "Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata",
        "SchemaName": "new_branch_contact",
        "Entity1LogicalName": "new_branch",
        "Entity2LogicalName": "contact",
        "IntersectEntityName": "new_branch_contact",
    }
    assert api.post("RelationshipDefinitions", json=many).status_code == 204
    n2n = api.get(
        "EntityDefinitions(LogicalName='contact')/ManyToManyRelationships?$select=SchemaName,IntersectEntityName"
    )
    assert [x["IntersectEntityName"] for x in n2n.json()["value"]] == ["new_branch_contact"]
    got = api.get("RelationshipDefinitions(SchemaName='new_branch_contact')").json()
    assert got["@odata.type"] == "#Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata"
    flt = api.get("RelationshipDefinitions?$select=SchemaName&$filter=SchemaName eq 'new_account_branch'").json()
    assert [x["SchemaName"] for x in flt["value"]] == ["new_account_branch"]


def test_retrieve_metadata_changes(api: httpx.Client) -> None:
    query = {
        "Properties": {"PropertyNames": ["LogicalName", "Attributes"]},
        "Criteria": {
            "Conditions": [
                {
                    "PropertyName": "LogicalName",
                    "ConditionOperator": "Equals",
                    "Value": {"Type": "System.String", "Value": "account"},
                }
            ]
        },
        "AttributeQuery": {
            "Properties": {"PropertyNames": ["LogicalName", "MaxLength", "AttributeType"]},
            "Criteria": {
                "Conditions": [
                    {
                        "PropertyName": "LogicalName",
                        "ConditionOperator": "Equals",
                        "Value": {"Type": "System.String", "Value": "name"},
                    }
                ]
            },
        },
    }
    r = api.get(f"RetrieveMetadataChanges(Query=@p1)?@p1={quote(json.dumps(query))}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"].endswith("#Microsoft.Dynamics.CRM.RetrieveMetadataChangesResponse")
    [ent] = body["EntityMetadata"]
    assert ent["LogicalName"] == "account"
    [attr] = ent["Attributes"]
    assert {k: v for k, v in attr.items() if k != "MetadataId"} == {
        "@odata.type": "#Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "LogicalName": "name",
        "MaxLength": 160,
        "AttributeType": "String",
    }


def test_key_index_status_in_progress(api: httpx.Client, clock: FakeClock) -> None:
    r = api.post(
        "EntityDefinitions(LogicalName='lead')/Keys", json={"SchemaName": "k_subject", "KeyAttributes": ["subject"]}
    )
    assert r.status_code == 204, r.text

    def status() -> str:
        keys = api.get("EntityDefinitions(LogicalName='lead')/Keys?$select=SchemaName,EntityKeyIndexStatus").json()
        return str(next(k for k in keys["value"] if k["SchemaName"] == "k_subject")["EntityKeyIndexStatus"])

    assert status() == "Pending"
    clock.advance(1.2)
    assert status() == "InProgress"
    clock.advance(1)
    assert status() == "Active"


def test_admin_bulk_preload_is_usable(emulator: EmulatorHandle, api: httpx.Client) -> None:
    """500 tables of 50 columns through one admin call (its speed is benchmarks/metadata.py's to print, not a
    wall-clock assertion here, which failed on a loaded machine)."""
    tables = [
        {"schema_name": f"bench_T{i}", "columns": [{"schema_name": f"bench_C{j}", "type": "string"} for j in range(50)]}
        for i in range(500)
    ]
    names = emulator.admin.seed_metadata(tables)
    assert len(names) == 500 and names[0] == "bench_t0"
    rid = created_id(api.post("bench_t499s", json={"bench_name": "x", "bench_c49": "y"}))
    assert api.get(f"bench_t499s({rid})?$select=bench_c49").json()["bench_c49"] == "y"
    one = api.get(
        "EntityDefinitions(LogicalName='bench_t3')/Attributes?$select=LogicalName&$filter=IsCustomAttribute eq true"
    )
    assert len(one.json()["value"]) == 51


def test_custom_schema_survives_restart_with_db(tmp_path: Path) -> None:
    db = str(tmp_path / "dv.sqlite")
    for round_ in range(2):
        with running_emulator(db_path=db, seed=3) as h:
            token = fetch_token(h)
            with httpx.Client(base_url=h.api_url + "/", headers={"Authorization": f"Bearer {token}"}) as c:
                if round_ == 0:
                    assert c.post("EntityDefinitions", json=table_body("new_Vault")).status_code == 204
                    col = {"@odata.type": "Microsoft.Dynamics.CRM.IntegerAttributeMetadata", "SchemaName": "new_Size"}
                    assert c.post("EntityDefinitions(LogicalName='new_vault')/Attributes", json=col).status_code == 204
                    assert c.post("new_vaults", json={"new_name": "v", "new_size": 3}).status_code == 204
                else:
                    rows = c.get("new_vaults?$select=new_name,new_size").json()["value"]
                    assert [(x["new_name"], x["new_size"]) for x in rows] == [("v", 3)]
