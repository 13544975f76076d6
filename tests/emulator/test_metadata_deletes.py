"""Metadata deletes: tables, columns, relationships (1:N with its lookup, N:N with its intersect table) and alternate
keys; the dependency refusals (0x8004F01F) and the system-component ones; CSDL and ``RetrieveMetadataChanges``
(DeletedMetadata) after a delete; deletes replayed from ``--db``.

The emulator fixture is shared by the module and its reset keeps metadata, so each test uses its own table names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from dataverse_emulator.testing import running_emulator

from .conftest import FakeClock, created_id, error_of, fetch_token
from .test_metadata_writes import label, money_column, table_body

IN_USE = "0x8004F01F"


def one_to_many(schema: str, referenced: str, referencing: str, lookup: str) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "SchemaName": schema,
        "ReferencedEntity": referenced,
        "ReferencingEntity": referencing,
        "Lookup": {
            "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
            "AttributeType": "Lookup",
            "SchemaName": lookup,
            "DisplayName": label(lookup),
        },
    }


def many_to_many(schema: str, e1: str, e2: str) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata",
        "SchemaName": schema,
        "Entity1LogicalName": e1,
        "Entity2LogicalName": e2,
        "IntersectEntityName": schema.lower(),
    }


def ok(r: httpx.Response) -> None:
    assert r.status_code == 204, r.text


def table_names(api: httpx.Client) -> set[str]:
    return {t["LogicalName"] for t in api.get("EntityDefinitions?$select=LogicalName").json()["value"]}


def test_delete_table_removes_metadata_rows_sql_and_csdl(api: httpx.Client) -> None:
    ok(api.post("EntityDefinitions", json=table_body("del_Vault")))
    created_id(api.post("del_vaults", json={"del_name": "v"}))
    assert "del_vault" in api.get("$metadata").text
    ok(api.delete("EntityDefinitions(LogicalName='del_vault')"))
    assert "del_vault" not in table_names(api)
    assert "del_vault" not in api.get("$metadata").text
    assert error_of(api.get("EntityDefinitions(LogicalName='del_vault')"))[0] == 404
    assert error_of(api.get("del_vaults"))[0] == 404
    ok(api.post("EntityDefinitions", json=table_body("del_Vault")))  # the name is free again, the table empty
    assert api.get("del_vaults").json()["value"] == []


def test_delete_table_refused_while_another_table_depends_on_it(api: httpx.Client) -> None:
    ok(api.post("EntityDefinitions", json=table_body("dep_Bank")))
    ok(api.post("EntityDefinitions", json=table_body("dep_Branch")))
    ok(api.post("RelationshipDefinitions", json=one_to_many("dep_bank_branch", "dep_bank", "dep_branch", "dep_Bank")))
    mid = api.get("EntityDefinitions(LogicalName='dep_bank')?$select=MetadataId").json()["MetadataId"]
    status, code, message = error_of(api.delete("EntityDefinitions(LogicalName='dep_bank')"))
    assert (status, code) == (400, IN_USE)
    assert message.startswith(f"The Entity({mid}) component cannot be deleted because it is referenced by 1 other")
    # the referencing table goes (its own lookup with it), then the referenced one is free
    ok(api.delete("EntityDefinitions(LogicalName='dep_branch')"))
    ok(api.delete("EntityDefinitions(LogicalName='dep_bank')"))
    assert not {"dep_bank", "dep_branch"} & table_names(api)


def test_delete_table_refused_while_a_many_to_many_uses_it_and_standard_tables_never(api: httpx.Client) -> None:
    ok(api.post("EntityDefinitions", json=table_body("nn_Tag")))
    ok(api.post("RelationshipDefinitions", json=many_to_many("nn_tag_contact", "nn_tag", "contact")))
    assert error_of(api.delete("EntityDefinitions(LogicalName='nn_tag')"))[:2] == (400, IN_USE)
    assert error_of(api.delete("EntityDefinitions(LogicalName='account')"))[:2] == (400, "0x80040228")
    assert error_of(api.delete("EntityDefinitions(LogicalName='nosuchtable')"))[0] == 404


def test_delete_column_drops_it_and_its_data(api: httpx.Client) -> None:
    ok(api.post("EntityDefinitions", json=table_body("col_Safe")))
    ok(api.post("EntityDefinitions(LogicalName='col_safe')/Attributes", json=money_column("col_Balance")))
    created_id(api.post("col_safes", json={"col_name": "s", "col_balance": 5}))
    ok(api.delete("EntityDefinitions(LogicalName='col_safe')/Attributes(LogicalName='col_balance')"))
    names = {a["LogicalName"] for a in api.get("EntityDefinitions(LogicalName='col_safe')/Attributes").json()["value"]}
    assert "col_balance" not in names and "col_balance_base" not in names  # the Money companion goes with it
    assert error_of(api.get("col_safes?$select=col_balance"))[0] == 400
    assert [r["col_name"] for r in api.get("col_safes?$select=col_name").json()["value"]] == ["s"]
    assert 'Name="col_balance"' not in api.get("$metadata").text


def test_delete_column_refusals(api: httpx.Client, clock: FakeClock) -> None:
    ok(api.post("EntityDefinitions", json=table_body("ref_Box")))
    col = {"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "SchemaName": "ref_Code", "MaxLength": 20}
    ok(api.post("EntityDefinitions(LogicalName='ref_box')/Attributes", json=col))
    base = "EntityDefinitions(LogicalName='ref_box')/Attributes"
    assert error_of(api.delete(f"{base}(LogicalName='ref_name')")) == (
        400,
        "0x80047002",
        "The Primary UI Attribute is not valid for deletion",
    )
    assert error_of(api.delete(f"{base}(LogicalName='ref_boxid')"))[:2] == (400, "0x80040228")
    assert error_of(api.delete(f"{base}(LogicalName='createdon')"))[:2] == (400, "0x80040228")
    assert error_of(api.delete("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='name')"))[1] == (
        "0x80047002"
    )
    key = {"SchemaName": "ref_code_key", "KeyAttributes": ["ref_code"], "DisplayName": label("Code")}
    ok(api.post("EntityDefinitions(LogicalName='ref_box')/Keys", json=key))
    status, code, message = error_of(api.delete(f"{base}(LogicalName='ref_code')"))
    assert (status, code) == (400, IN_USE) and message.startswith("The Attribute(")
    keys = api.get("EntityDefinitions(LogicalName='ref_box')/Keys?$select=MetadataId").json()["value"]
    ok(api.delete(f"EntityDefinitions(LogicalName='ref_box')/Keys({keys[0]['MetadataId']})"))
    assert api.get("EntityDefinitions(LogicalName='ref_box')/Keys").json()["value"] == []
    ok(api.delete(f"{base}(LogicalName='ref_code')"))


def test_delete_one_to_many_relationship_removes_its_lookup(api: httpx.Client) -> None:
    ok(api.post("EntityDefinitions", json=table_body("rel_Branch")))
    ok(api.post("RelationshipDefinitions", json=one_to_many("rel_account_branch", "account", "rel_branch", "rel_Acc")))
    acc = created_id(api.post("accounts", json={"name": "P"}))
    created_id(api.post("rel_branches", json={"rel_name": "b", "rel_Acc@odata.bind": f"/accounts({acc})"}))
    lookup = "EntityDefinitions(LogicalName='rel_branch')/Attributes(LogicalName='rel_acc')"
    assert error_of(api.delete(lookup))[:2] == (400, IN_USE)  # the relationship holds its lookup
    ok(api.delete("RelationshipDefinitions(SchemaName='rel_account_branch')"))
    assert error_of(api.get(lookup))[0] == 404
    assert error_of(api.get("RelationshipDefinitions(SchemaName='rel_account_branch')"))[0] == 404
    assert error_of(api.get(f"accounts({acc})/rel_account_branch"))[0] in (400, 404)
    assert "rel_account_branch" not in api.get("$metadata").text
    assert error_of(api.delete("RelationshipDefinitions(SchemaName='contact_customer_accounts')"))[:2] == (
        400,
        "0x80040228",
    )


def test_delete_many_to_many_relationship_drops_the_intersect_table(api: httpx.Client) -> None:
    ok(api.post("EntityDefinitions", json=table_body("mm_Group")))
    ok(api.post("RelationshipDefinitions", json=many_to_many("mm_group_contact", "mm_group", "contact")))
    mid = api.get("RelationshipDefinitions(SchemaName='mm_group_contact')").json()["MetadataId"]
    ok(api.delete(f"RelationshipDefinitions({mid})"))
    n2n = api.get("EntityDefinitions(LogicalName='contact')/ManyToManyRelationships?$select=SchemaName").json()
    assert "mm_group_contact" not in [x["SchemaName"] for x in n2n["value"]]
    ok(api.delete("EntityDefinitions(LogicalName='mm_group')"))  # nothing depends on the table any more


def test_retrieve_metadata_changes_reports_deletions_since_a_stamp(api: httpx.Client) -> None:
    query = quote(json.dumps({"Criteria": {"Conditions": []}, "Properties": {"PropertyNames": ["LogicalName"]}}))

    def changes(extra: str = "", params: str = "") -> dict[str, Any]:
        r = api.get(f"RetrieveMetadataChanges(Query=@p1{extra})?@p1={query}{params}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    ok(api.post("EntityDefinitions", json=table_body("chg_Item")))
    ok(api.post("EntityDefinitions(LogicalName='chg_item')/Attributes", json=money_column("chg_Price")))
    table_id = api.get("EntityDefinitions(LogicalName='chg_item')?$select=MetadataId").json()["MetadataId"]
    price_id = api.get(
        "EntityDefinitions(LogicalName='chg_item')/Attributes(LogicalName='chg_price')?$select=MetadataId"
    ).json()["MetadataId"]
    stamp = changes()["ServerVersionStamp"]
    ok(api.delete("EntityDefinitions(LogicalName='chg_item')/Attributes(LogicalName='chg_price')"))
    ok(api.delete("EntityDefinitions(LogicalName='chg_item')"))
    filters = "Microsoft.Dynamics.CRM.DeletedMetadataFilters'Entity,Attribute'"
    got = changes(",ClientVersionStamp=@p2,DeletedMetadataFilters=@p3", f"&@p2='{stamp}'&@p3={quote(filters)}")
    deleted = dict(zip(got["DeletedMetadata"]["Keys"], got["DeletedMetadata"]["Values"], strict=True))
    assert table_id in deleted["Entity"] and price_id in deleted["Attribute"]
    assert got["DeletedMetadata"]["Count"] == 2
    only_entities = changes(
        f",ClientVersionStamp='{got['ServerVersionStamp']}',DeletedMetadataFilters=@p3", f"&@p3={quote(filters)}"
    )
    assert only_entities["DeletedMetadata"]["Keys"] == []  # nothing deleted since the newer stamp
    assert changes()["DeletedMetadata"]["Count"] == 0  # documented: only with a stamp and filters
    assert "chg_item" not in [e["LogicalName"] for e in changes()["EntityMetadata"]]


def test_deletes_survive_restart_with_db(tmp_path: Path) -> None:
    db = str(tmp_path / "dv.sqlite")
    for round_ in range(2):
        with running_emulator(db_path=db, seed=3) as h:
            token = fetch_token(h)
            with httpx.Client(base_url=h.api_url + "/", headers={"Authorization": f"Bearer {token}"}) as c:
                if round_ == 0:
                    ok(c.post("EntityDefinitions", json=table_body("db_Gone")))
                    ok(c.post("EntityDefinitions", json=table_body("db_Kept")))
                    ok(c.post("EntityDefinitions(LogicalName='db_kept')/Attributes", json=money_column("db_Cash")))
                    ok(c.post("RelationshipDefinitions", json=one_to_many("db_acc_kept", "account", "db_kept", "db_A")))
                    ok(c.delete("EntityDefinitions(LogicalName='db_gone')"))
                    ok(c.delete("EntityDefinitions(LogicalName='db_kept')/Attributes(LogicalName='db_cash')"))
                    ok(c.delete("RelationshipDefinitions(SchemaName='db_acc_kept')"))
                    ok(c.post("db_kepts", json={"db_name": "k"}))
                else:
                    assert "db_gone" not in table_names(c)
                    attrs = c.get("EntityDefinitions(LogicalName='db_kept')/Attributes?$select=LogicalName").json()
                    names = {a["LogicalName"] for a in attrs["value"]}
                    assert not {"db_cash", "db_cash_base", "db_a"} & names
                    assert [r["db_name"] for r in c.get("db_kepts?$select=db_name").json()["value"]] == ["k"]
