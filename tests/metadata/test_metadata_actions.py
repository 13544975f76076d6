"""Unit tests of the metadata actions over MockTransport: the URLs, casts, headers and bodies sent to Dataverse."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import InputError, KeyActivationError
from connector.metadata_writes import expand_attribute, label
from connector.odata import PageToken
from connector.runtime import Runtime
from tests.metadata.conftest import TABLES

ATTR_ID = "f01bef16-287c-e511-80d2-00155d2a68d2"
KEY_ID = "0c8a1b2c-3d4e-4f50-8a6b-7c8d9e0f1a2b"
REL_ID = "1a2b3c4d-5e6f-4a0b-9c1d-2e3f4a5b6c7d"
BANK = "EntityDefinitions(LogicalName='new_bankaccount')"


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def created(path: str) -> httpx.Response:
    return httpx.Response(204, headers={"OData-EntityId": f"https://contoso.crm.dynamics.com/api/data/v9.2/{path}"})


def loc(text: str, lcid: int) -> dict[str, Any]:
    return {"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": lcid}


DOCUMENTED_MONEY = {
    "@odata.type": "Microsoft.Dynamics.CRM.MoneyAttributeMetadata",
    "AttributeType": "Money",
    "AttributeTypeName": {"Value": "MoneyType"},
    "SchemaName": "new_Balance",
    "PrecisionSource": 2,
    "RequiredLevel": {
        "Value": "None",
        "CanBeChanged": True,
        "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
    },
    "DisplayName": {"@odata.type": "Microsoft.Dynamics.CRM.Label", "LocalizedLabels": [loc("Balance", 1033)]},
    "Description": {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [loc("Enter the balance amount", 1033)],
    },
}


# -- columns -----------------------------------------------------------------------------------------------------------
def test_create_attribute_short_money_is_the_documented_body_and_invalidates_the_table(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.route("POST", f"{BANK}/Attributes", created(f"{BANK}/Attributes({ATTR_ID})"))
    short = {
        "type": "money",
        "schema_name": "new_Balance",
        "label": "Balance",
        "description": "Enter the balance amount",
    }
    out = runtime.run_action(
        "create_attribute", {"table": "new_bankaccounts", "attribute": short, "solution": "examplesolution"}, conn
    )
    [post] = fake.sent("POST")
    assert fake.path(post) == f"{BANK}/Attributes"
    assert post.headers["MSCRM.SolutionUniqueName"] == "examplesolution"
    sent = body(post)
    assert sent == {**DOCUMENTED_MONEY, "MinValue": -922337203685477, "MaxValue": 922337203685477}
    assert out == {
        "table": "new_bankaccount",
        "logical_name": "new_balance",
        "schema_name": "new_Balance",
        "metadata_id": ATTR_ID,
        "outcome": "created",
        "confirmed_by_read": False,
    }
    # the write dropped the cached table: the next record action re-reads it from the primary
    conn.metadata.table("new_bankaccount")
    assert fake.cache_reads()[-1].headers.get("Consistency") == "Strong"
    assert fake.cache_reads()[0].headers.get("Consistency") is None


def test_create_attribute_full_body_is_sent_unchanged(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route("POST", f"{BANK}/Attributes", created(f"{BANK}/Attributes({ATTR_ID})"))
    out = runtime.run_action("create_attribute", {"table": "new_bankaccount", "attribute": DOCUMENTED_MONEY}, conn)
    [post] = fake.sent("POST")
    assert body(post) == DOCUMENTED_MONEY
    assert "MSCRM.SolutionUniqueName" not in post.headers
    assert out["metadata_id"] == ATTR_ID


@pytest.mark.parametrize(
    ("short", "expected"),
    [
        pytest.param(
            {"type": "string", "schema_name": "new_Code", "label": "Code", "max_length": 20},
            {"MaxLength": 20, "FormatName": {"Value": "Text"}},
            id="string",
        ),
        pytest.param(
            {"type": "memo", "schema_name": "new_Notes", "label": "N"},
            {"MaxLength": 2000, "Format": "TextArea"},
            id="memo",
        ),
        pytest.param(
            {"type": "integer", "schema_name": "new_N", "label": "N", "min_value": 0},
            {"MinValue": 0, "MaxValue": 2147483647, "Format": "None"},
            id="integer",
        ),
        pytest.param(
            {"type": "decimal", "schema_name": "new_Rate", "label": "R", "precision": 4},
            {"Precision": 4, "MinValue": -100000000000, "MaxValue": 100000000000},
            id="decimal",
        ),
        pytest.param(
            {"type": "money", "schema_name": "new_Fee", "label": "F", "precision": 3},
            {"Precision": 3, "PrecisionSource": 0, "MinValue": -922337203685477, "MaxValue": 922337203685477},
            id="money-precision",
        ),
        pytest.param(
            {"type": "datetime", "schema_name": "new_Due", "label": "D", "date_only": True},
            {"Format": "DateOnly", "DateTimeBehavior": {"Value": "DateOnly"}},
            id="datetime",
        ),
    ],
)
def test_create_attribute_short_forms_expand_per_type(short: dict[str, Any], expected: dict[str, Any]) -> None:
    full = expand_attribute(short)
    typ, code, name = {
        "string": ("String", "String", "StringType"),
        "memo": ("Memo", "Memo", "MemoType"),
        "integer": ("Integer", "Integer", "IntegerType"),
        "decimal": ("Decimal", "Decimal", "DecimalType"),
        "money": ("Money", "Money", "MoneyType"),
        "datetime": ("DateTime", "DateTime", "DateTimeType"),
    }[short["type"]]
    assert full["@odata.type"] == f"Microsoft.Dynamics.CRM.{typ}AttributeMetadata"
    assert (full["AttributeType"], full["AttributeTypeName"]) == (code, {"Value": name})
    assert full["DisplayName"]["LocalizedLabels"] == [loc(short["label"], 1033)]
    assert full["RequiredLevel"]["Value"] == "None"
    assert {k: full[k] for k in expected} == expected


def test_create_attribute_short_boolean_and_picklist_carry_their_option_sets() -> None:
    boolean = expand_attribute({"type": "boolean", "schema_name": "new_Vip", "label": "VIP", "required": "required"})
    assert boolean["RequiredLevel"]["Value"] == "ApplicationRequired"
    assert boolean["OptionSet"]["TrueOption"] == {"Value": 1, "Label": label("Yes")}
    assert boolean["OptionSet"]["FalseOption"]["Value"] == 0
    picklist = expand_attribute(
        {
            "type": "picklist",
            "schema_name": "new_Tier",
            "label": "Tier",
            "options": ["Gold", {"value": 7, "label": "Lead"}],
        }
    )
    options = picklist["OptionSet"]["Options"]
    assert [o["Value"] for o in options] == [100000000, 7]
    assert options[1]["Label"]["LocalizedLabels"] == [loc("Lead", 1033)]
    assert picklist["OptionSet"]["OptionSetType"] == "Picklist"


def test_create_attribute_lookup_creates_a_one_to_many_relationship(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.route("POST", "RelationshipDefinitions", created(f"RelationshipDefinitions({REL_ID})"))
    fake.route(
        "GET",
        f"{BANK}/Attributes(LogicalName='new_accountid')",
        {"LogicalName": "new_accountid", "MetadataId": ATTR_ID},
    )
    out = runtime.run_action(
        "create_attribute",
        {
            "table": "new_bankaccount",
            "attribute": {"type": "lookup", "schema_name": "new_AccountId", "label": "Account", "target": "accounts"},
        },
        conn,
    )
    [post] = fake.sent("POST")
    assert fake.path(post) == "RelationshipDefinitions"
    sent = body(post)
    assert sent["@odata.type"] == "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata"
    assert (sent["SchemaName"], sent["ReferencedEntity"], sent["ReferencedAttribute"], sent["ReferencingEntity"]) == (
        "new_account_new_bankaccount_new_accountid",
        "account",
        "accountid",
        "new_bankaccount",
    )
    assert sent["Lookup"]["@odata.type"] == "Microsoft.Dynamics.CRM.LookupAttributeMetadata"
    assert sent["Lookup"]["SchemaName"] == "new_AccountId"
    assert out["relationship"] == {"schema_name": "new_account_new_bankaccount_new_accountid", "metadata_id": REL_ID}
    assert (out["logical_name"], out["metadata_id"]) == ("new_accountid", ATTR_ID)
    assert fake.sent("GET")[-1].headers["Consistency"] == "Strong"


@pytest.mark.parametrize(
    ("inputs", "where"),
    [
        pytest.param(
            {"table": "new_bankaccount", "attribute": {"type": "currency", "schema_name": "new_X", "label": "X"}},
            "$.attribute.type",
            id="unknown-type",
        ),
        pytest.param(
            {"table": "new_bankaccount", "attribute": {"type": "money", "schema_name": "Balance", "label": "X"}},
            "$.attribute.schema_name",
            id="no-prefix",
        ),
        pytest.param(
            {"table": "new_bankaccount", "attribute": {"type": "money", "schema_name": "new_X"}},
            "$.attribute",
            id="no-label",
        ),
        pytest.param(
            {"table": "new_bankaccount", "attribute": {"type": "lookup", "schema_name": "new_X", "label": "X"}},
            "$.attribute",
            id="lookup-no-target",
        ),
        pytest.param(
            {
                "table": "new_bankaccount",
                "attribute": {"type": "string", "schema_name": "new_X", "label": "X", "max_length": 5000},
            },
            "$.attribute.max_length",
            id="string-too-long",
        ),
        pytest.param(
            {"table": "nosuchtable", "attribute": {"type": "money", "schema_name": "new_X", "label": "X"}},
            "$.table",
            id="unknown-table",
        ),
        pytest.param(
            {"table": "new_bankaccount", "attribute": {**DOCUMENTED_MONEY, "SchemaName": "Balance"}},
            "$.attribute.SchemaName",
            id="full-no-prefix",
        ),
        pytest.param(
            {
                "table": "new_bankaccount",
                "attribute": {k: v for k, v in DOCUMENTED_MONEY.items() if k != "DisplayName"},
            },
            "$.attribute.DisplayName",
            id="full-no-label",
        ),
        pytest.param(
            {
                "table": "new_bankaccount",
                "attribute": {**DOCUMENTED_MONEY, "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata"},
            },
            "$.attribute.@odata.type",
            id="full-lookup",
        ),
        pytest.param(
            {"table": "new_bankaccount", "attribute": {"type": "string", "schema_name": "new_Code", "label": "Code"}},
            "$.attribute",
            id="exists",
        ),
        pytest.param(
            {
                "table": "new_bankaccount",
                "attribute": {"type": "lookup", "schema_name": "new_X", "label": "X", "target": "nosuch"},
            },
            "$.attribute.target",
            id="unknown-target",
        ),
    ],
)
def test_create_attribute_bad_input_is_refused_before_any_write(
    runtime: Runtime, fake: Any, conn: Connection, inputs: dict[str, Any], where: str
) -> None:
    with pytest.raises(InputError) as caught:
        runtime.run_action("create_attribute", inputs, conn)
    assert caught.value.exit_code == 2
    assert any(p.path.startswith(where) for p in caught.value.problems), caught.value.problems
    assert [r for r in fake.requests if r.method != "GET"] == []


def test_get_attribute_reads_options_of_a_choice_through_a_cast(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET",
        f"{BANK}/Attributes(LogicalName='new_region')",
        {
            "@odata.context": "x",
            "@odata.type": "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
            "LogicalName": "new_region",
            "MetadataId": ATTR_ID,
        },
    )
    fake.route(
        "GET",
        f"{BANK}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        {
            "value": [
                {
                    "LogicalName": "new_region",
                    "OptionSet": {"Options": [{"Value": 1, "Label": {"UserLocalizedLabel": {"Label": "North"}}}]},
                }
            ]
        },
    )
    out = runtime.run_action("get_attribute", {"table": "new_bankaccount", "attribute": "new_region"}, conn)
    single, cast = fake.sent()
    assert fake.path(single) == f"{BANK}/Attributes(LogicalName='new_region')"
    assert dict(cast.url.params) == {
        "$select": "LogicalName",
        "$filter": "LogicalName eq 'new_region'",
        "$expand": "OptionSet($select=Options)",
    }
    assert out["attribute"] == {
        "@odata.type": "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        "LogicalName": "new_region",
        "MetadataId": ATTR_ID,
    }
    assert out["options"] == [{"value": 1, "label": "North"}]


def test_get_attribute_by_metadata_id_and_unknown_column(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET",
        f"{BANK}/Attributes({ATTR_ID})",
        {"@odata.type": "#Microsoft.Dynamics.CRM.MoneyAttributeMetadata", "LogicalName": "new_balance"},
    )
    out = runtime.run_action("get_attribute", {"table": "new_bankaccount", "attribute": ATTR_ID}, conn)
    assert out["attribute"]["LogicalName"] == "new_balance" and "options" not in out
    with pytest.raises(
        InputError, match=r"\$\.attribute: table 'new_bankaccount' has no column 'new_nope'; list_attributes"
    ):
        runtime.run_action("get_attribute", {"table": "new_bankaccount", "attribute": "new_nope"}, conn)


def test_update_attribute_merges_labels_puts_whole_and_publishes(
    runtime: Runtime, fake: Any, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TABLES["new_bankaccount"]["attributes"], "new_balance", "Money")
    current = {
        "@odata.context": "https://x/$metadata#EntityDefinitions('1')/Attributes/$entity",
        "@odata.type": "#Microsoft.Dynamics.CRM.MoneyAttributeMetadata",
        "MetadataId": ATTR_ID,
        "LogicalName": "new_balance",
        "SchemaName": "new_Balance",
        "Precision": 2,
        "DisplayName": {
            "LocalizedLabels": [
                {"Label": "Balance", "LanguageCode": 1033, "IsManaged": False, "MetadataId": "a", "HasChanged": None},
                {"Label": "Solde", "LanguageCode": 1036, "IsManaged": False, "MetadataId": "b", "HasChanged": None},
            ],
            "UserLocalizedLabel": {"Label": "Balance", "LanguageCode": 1033},
        },
    }
    fake.route("GET", f"{BANK}/Attributes(LogicalName='new_balance')", current)
    fake.route("PUT", f"{BANK}/Attributes(LogicalName='new_balance')", created(f"{BANK}/Attributes({ATTR_ID})"))
    fake.route("POST", "PublishXml", httpx.Response(204))
    out = runtime.run_action(
        "update_attribute",
        {"table": "new_bankaccount", "attribute": "new_balance", "label": "Current balance", "required": "recommended"},
        conn,
    )
    get, put, publish = fake.sent()
    assert get.headers["Consistency"] == "Strong"
    assert put.headers["MSCRM.MergeLabels"] == "true"
    sent = body(put)
    assert sent["@odata.type"] == "Microsoft.Dynamics.CRM.MoneyAttributeMetadata"
    assert sent["DisplayName"] == {
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [loc("Solde", 1036), loc("Current balance", 1033)],
    }
    assert sent["RequiredLevel"] == {"Value": "Recommended"}
    assert sent["Precision"] == 2 and "MetadataId" not in sent and "@odata.context" not in sent
    assert body(publish) == {
        "ParameterXml": "<importexportxml><entities><entity>new_bankaccount</entity></entities></importexportxml>"
    }
    assert out == {
        "table": "new_bankaccount",
        "logical_name": "new_balance",
        "metadata_id": ATTR_ID,
        "labels_changed": True,
        "published": True,
    }


def test_update_attribute_without_label_change_does_not_publish(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET",
        f"{BANK}/Attributes(LogicalName='new_code')",
        {"@odata.type": "#Microsoft.Dynamics.CRM.StringAttributeMetadata", "LogicalName": "new_code", "MaxLength": 20},
    )
    fake.route("PUT", f"{BANK}/Attributes", httpx.Response(204))
    out = runtime.run_action(
        "update_attribute",
        {"table": "new_bankaccount", "attribute": "new_code", "max_length": 40, "merge_labels": False},
        conn,
    )
    assert [r.method for r in fake.sent()] == ["GET", "PUT"]
    assert fake.sent("PUT")[0].headers["MSCRM.MergeLabels"] == "false"
    assert body(fake.sent("PUT")[0])["MaxLength"] == 40
    assert out["published"] is False
    with pytest.raises(InputError):
        runtime.run_action("update_attribute", {"table": "new_bankaccount", "attribute": "new_code"}, conn)


def test_list_attributes_filters_by_type_with_the_enum_cast(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET",
        f"{BANK}/Attributes",
        {
            "value": [
                {
                    "LogicalName": "new_balance",
                    "AttributeType": "Money",
                    "RequiredLevel": {"Value": "None"},
                    "DisplayName": {"UserLocalizedLabel": {"Label": "Balance"}},
                }
            ]
        },
    )
    out = runtime.run_action(
        "list_attributes", {"table": "new_bankaccount", "types": ["Money", "Decimal"], "custom_only": True}, conn
    )
    [get] = fake.sent()
    assert get.url.params["$filter"] == (
        "(AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Money' or "
        "AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Decimal') and IsCustomAttribute eq true"
    )
    assert get.url.params["$select"].startswith("LogicalName,SchemaName,AttributeType,DisplayName,RequiredLevel")
    assert out["attributes"][0]["type"] == "Money" and out["attributes"][0]["display_name"] == "Balance"
    assert out["count"] == 1
    with pytest.raises(InputError, match=r"\$\.table"):
        runtime.run_action("list_attributes", {"table": "nosuch"}, conn)


def test_query_attributes_passes_cast_select_filter_expand(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET",
        f"{BANK}/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
        {"value": [{"LogicalName": "new_code", "MaxLength": 20, "@odata.etag": "x"}]},
    )
    out = runtime.run_action(
        "query_attributes",
        {
            "table": "new_bankaccount",
            "cast": "StringAttributeMetadata",
            "select": ["LogicalName", "MaxLength"],
            "filter": "MaxLength gt 10",
        },
        conn,
    )
    [get] = fake.sent()
    assert dict(get.url.params) == {"$select": "LogicalName,MaxLength", "$filter": "MaxLength gt 10"}
    assert out["attributes"] == [{"LogicalName": "new_code", "MaxLength": 20}]
    with pytest.raises(InputError, match="cast"):
        runtime.run_action("query_attributes", {"table": "new_bankaccount", "cast": "Picklist/../x"}, conn)


# -- tables ------------------------------------------------------------------------------------------------------------
def _tables(n: int) -> dict[str, Any]:
    return {
        "value": [
            {
                "LogicalName": f"new_t{i:03d}",
                "EntitySetName": f"new_t{i:03d}s",
                "ObjectTypeCode": 10000 + i,
                "DisplayName": {"UserLocalizedLabel": {"Label": f"T {i}"}},
            }
            for i in reversed(range(n))
        ]
    }


def test_list_entities_lean_select_and_filters(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET",
        "EntityDefinitions",
        {"value": [{"LogicalName": "b", "IsCustomEntity": True}, {"LogicalName": "a", "OwnershipType": "UserOwned"}]},
    )
    out = runtime.run_action(
        "list_entities", {"include_custom": False, "top_level_only": True, "include_details": True}, conn
    )
    [get] = fake.sent()
    assert get.url.params["$select"] == (
        "LogicalName,SchemaName,EntitySetName,DisplayName,IsCustomEntity,Description,OwnershipType,IsActivity,IsIntersect,"
        "IsValidForAdvancedFind"
    )
    assert (
        get.url.params["$filter"]
        == "IsCustomEntity eq false and IsIntersect eq false and IsValidForAdvancedFind eq true"
    )
    assert [t["logical_name"] for t in out["tables"]] == ["a", "b"]
    assert out["tables"][0]["ownership_type"] == "UserOwned"
    plain = runtime.run_action("list_entities", {}, conn)
    assert "$filter" not in fake.sent()[-1].url.params and "ownership_type" not in plain["tables"][0]
    with pytest.raises(InputError):
        runtime.run_action("list_entities", {"include_custom": "yes"}, conn)


def test_list_entity_types_pages_one_lean_read_with_tokens(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route("GET", "EntityDefinitions", _tables(5))
    first = runtime.run_action("list_entity_types", {"page_size": 2}, conn)
    assert [t["logical_name"] for t in first["entity_types"]] == ["new_t000", "new_t001"]
    assert first["more_records"] is True
    second = runtime.run_action("list_entity_types", {"page_token": first["next_page_token"]}, conn)
    assert [t["logical_name"] for t in second["entity_types"]] == ["new_t002", "new_t003"]
    third = runtime.run_action("list_entity_types", {"page_token": second["next_page_token"]}, conn)
    assert (third["returned"], third["more_records"], third["next_page_token"]) == (1, False, None)
    every = runtime.run_action("list_entity_types", {"fetch_all": True, "page_size": 2}, conn)
    assert every["returned"] == 5 and every["entity_types"][4] == {
        "logical_name": "new_t004",
        "entity_set_name": "new_t004s",
        "object_type_code": 10004,
        "display_name": "T 4",
    }
    assert {r.url.params["$select"] for r in fake.sent()} == {"LogicalName,EntitySetName,ObjectTypeCode,DisplayName"}
    foreign = PageToken("fabrikam.crm.dynamics.com", "EntityDefinitions", 2, 2).encode()
    with pytest.raises(InputError, match="another environment"):
        runtime.run_action("list_entity_types", {"page_token": foreign}, conn)
    with pytest.raises(InputError, match="page_size"):
        runtime.run_action("list_entity_types", {"page_size": 5001}, conn)


def test_get_entity_metadata_by_entity_set_name_with_expansions(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET", "EntityDefinitions(LogicalName='account')", {"@odata.context": "x", "LogicalName": "account", "Keys": []}
    )
    out = runtime.run_action(
        "get_entity_metadata", {"table": "accounts", "by": "entity_set_name", "expand": ["keys", "relationships"]}, conn
    )
    get = fake.sent()[-1]
    assert fake.path(get) == "EntityDefinitions(LogicalName='account')"
    assert get.url.params["$expand"] == "Keys,ManyToOneRelationships,OneToManyRelationships,ManyToManyRelationships"
    assert out == {"table": "account", "definition": {"LogicalName": "account", "Keys": []}}
    with pytest.raises(InputError, match="entity set name 'nosuch'"):
        runtime.run_action("get_entity_metadata", {"table": "nosuch", "by": "entity_set_name"}, conn)


def test_get_entity_metadata_by_metadata_id(runtime: Runtime, fake: Any, conn: Connection) -> None:
    mid = "70816501-edb9-4740-a16c-6a5efbc05d84"
    fake.route("GET", f"EntityDefinitions({mid})", {"LogicalName": "account"})
    fake.route(
        "GET", "EntityDefinitions(LogicalName='account')", {"LogicalName": "account", "EntitySetName": "accounts"}
    )
    out = runtime.run_action(
        "get_entity_metadata", {"table": mid.upper(), "select": ["LogicalName", "EntitySetName"]}, conn
    )
    assert fake.sent()[0].url.params["$select"] == "LogicalName"
    assert fake.sent()[-1].url.params["$select"] == "LogicalName,EntitySetName"
    assert out["definition"]["EntitySetName"] == "accounts"


def test_get_entities_metadata_reads_table_by_table(runtime: Runtime, fake: Any, conn: Connection) -> None:
    listing = {
        "value": [
            {
                "LogicalName": "new_bankaccount",
                "IsCustomEntity": True,
                "DisplayName": {"UserLocalizedLabel": {"Label": "Bank Account"}},
            },
            {
                "LogicalName": "new_loan",
                "IsCustomEntity": True,
                "DisplayName": {"UserLocalizedLabel": {"Label": "Loan"}},
            },
            {
                "LogicalName": "account",
                "EntitySetName": "accounts",
                "IsCustomEntity": False,
                "DisplayName": {"UserLocalizedLabel": {"Label": "Account"}},
            },
            {"LogicalName": "contact", "IsCustomEntity": False},
        ]
    }
    fake.route(
        "GET",
        "EntityDefinitions(LogicalName=",
        lambda r: httpx.Response(200, json={"value": [{"LogicalName": "name", "AttributeType": "String"}]}),
    )
    fake.route("GET", "EntityDefinitions", listing)
    out = runtime.run_action("get_entities_metadata", {"default_selected": ["accounts"], "filter": "ACC"}, conn)
    assert [t["logical_name"] for t in out["tables"]] == ["account", "new_bankaccount"]
    column_reads = [fake.path(r) for r in fake.sent() if "/Attributes" in fake.path(r)]
    assert column_reads == [
        "EntityDefinitions(LogicalName='account')/Attributes",
        "EntityDefinitions(LogicalName='new_bankaccount')/Attributes",
    ]
    assert all("$expand" not in r.url.params for r in fake.sent())
    assert out["tables"][0]["attributes"][0]["type"] == "String"
    everything = runtime.run_action("get_entities_metadata", {"top_level_only": True}, conn)
    assert [t["logical_name"] for t in everything["tables"]] == ["new_bankaccount", "new_loan"]
    with pytest.raises(InputError, match=r"\$\.default_selected\[1\]: no table is named 'nosuch'"):
        runtime.run_action("get_entities_metadata", {"default_selected": ["account", "nosuch"]}, conn)


# -- keys --------------------------------------------------------------------------------------------------------------
def _key(status: str) -> dict[str, Any]:
    return {
        "SchemaName": "new_code_region_key",
        "LogicalName": "new_code_region_key",
        "KeyAttributes": ["new_code", "new_region"],
        "EntityKeyIndexStatus": status,
        "MetadataId": KEY_ID,
    }


def test_create_alternate_key_waits_until_active_on_the_injected_clock(
    runtime: Runtime, fake: Any, conn: Connection, clock: FakeClock
) -> None:
    statuses = iter(["Pending", "InProgress", "InProgress", "Active"])
    fake.route("POST", f"{BANK}/Keys", created(f"{BANK}/Keys({KEY_ID})"))
    fake.route("GET", f"{BANK}/Keys({KEY_ID})", lambda r: httpx.Response(200, json=_key(next(statuses))))
    out = runtime.run_action(
        "create_alternate_key",
        {
            "table": "new_bankaccount",
            "schema_name": "new_code_region_key",
            "columns": ["new_code", "new_region"],
            "label": "Code and region",
            "wait_until_active": True,
            "poll_interval_s": 2,
            "solution": "s1",
        },
        conn,
    )
    post = fake.sent("POST")[0]
    assert body(post) == {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
        "SchemaName": "new_code_region_key",
        "DisplayName": {
            "@odata.type": "Microsoft.Dynamics.CRM.Label",
            "LocalizedLabels": [loc("Code and region", 1033)],
        },
        "KeyAttributes": ["new_code", "new_region"],
    }
    assert post.headers["MSCRM.SolutionUniqueName"] == "s1"
    polls = fake.sent("GET")
    assert len(polls) == 4 and all(p.headers["Consistency"] == "Strong" for p in polls)
    assert clock.sleeps == [2, 2, 2]
    assert out["active"] is True and out["timed_out"] is False
    assert out["key"]["columns"] == ["new_code", "new_region"] and out["key"]["status"] == "Active"


def test_create_alternate_key_times_out_or_fails(
    runtime: Runtime, fake: Any, conn: Connection, clock: FakeClock
) -> None:
    fake.route("POST", f"{BANK}/Keys", created(f"{BANK}/Keys({KEY_ID})"))
    status = {"now": "Pending"}
    fake.route("GET", f"{BANK}/Keys({KEY_ID})", lambda r: httpx.Response(200, json=_key(status["now"])))
    inputs = {
        "table": "new_bankaccount",
        "schema_name": "new_code_key",
        "columns": ["new_code"],
        "wait_until_active": True,
        "timeout_s": 10,
        "poll_interval_s": 4,
    }
    out = runtime.run_action("create_alternate_key", inputs, conn)
    assert (out["active"], out["timed_out"], out["key"]["status"]) == (False, True, "Pending")
    assert clock.sleeps == [4, 4, 2]
    status["now"] = "Failed"
    with pytest.raises(KeyActivationError, match=r"duplicate values.*ReactivateEntityKey"):
        runtime.run_action("create_alternate_key", inputs, conn)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        pytest.param(
            {"columns": ["new_nope"]},
            r"\$\.columns\[0\]: table 'new_bankaccount' has no column 'new_nope'",
            id="unknown-column",
        ),
        pytest.param({"columns": ["new_notes"]}, r"'new_notes' is a Memo column", id="memo"),
        pytest.param({"columns": []}, r"\$\.columns", id="empty"),
        pytest.param({"schema_name": "codekey"}, r"\$\.schema_name", id="no-prefix"),
    ],
)
def test_create_alternate_key_refuses_bad_columns(
    runtime: Runtime, fake: Any, conn: Connection, inputs: dict[str, Any], message: str
) -> None:
    full = {"table": "new_bankaccount", "schema_name": "new_k", "columns": ["new_code"], **inputs}
    with pytest.raises(InputError, match=message):
        runtime.run_action("create_alternate_key", full, conn)
    assert fake.sent("POST") == []


def test_list_alternate_keys_reads_status(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route("GET", f"{BANK}/Keys", {"value": [_key("InProgress")]})
    out = runtime.run_action("list_alternate_keys", {"table": "new_bankaccount"}, conn)
    assert (
        fake.sent()[0].url.params["$select"] == "SchemaName,LogicalName,KeyAttributes,EntityKeyIndexStatus,DisplayName"
    )
    assert out["keys"][0]["status"] == "InProgress" and out["count"] == 1
    with pytest.raises(InputError):
        runtime.run_action("list_alternate_keys", {"table": "accounts(x)/../$batch"}, conn)


# -- data sources ------------------------------------------------------------------------------------------------------
def test_data_source_columns_has_types_lengths_and_options(runtime: Runtime, fake: Any, conn: Connection) -> None:
    fake.route(
        "GET",
        f"{BANK}/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
        {"value": [{"LogicalName": "new_code", "MaxLength": 20}]},
    )
    fake.route(
        "GET",
        f"{BANK}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        {
            "value": [
                {
                    "LogicalName": "new_region",
                    "OptionSet": {"Options": [{"Value": 1, "Label": {"UserLocalizedLabel": {"Label": "North"}}}]},
                }
            ]
        },
    )
    fake.route("GET", f"{BANK}/Attributes/Microsoft.Dynamics.CRM.", {"value": []})
    fake.route(
        "GET",
        f"{BANK}/Attributes",
        {
            "value": [
                {
                    "LogicalName": "new_code",
                    "AttributeType": "String",
                    "RequiredLevel": {"Value": "ApplicationRequired"},
                    "DisplayName": {"UserLocalizedLabel": {"Label": "Code"}},
                },
                {"LogicalName": "new_region", "AttributeType": "Picklist", "RequiredLevel": {"Value": "None"}},
                {"LogicalName": "new_balance_base", "AttributeType": "Money", "AttributeOf": "new_balance"},
            ]
        },
    )
    options = runtime.data_source("columns", {"table": "new_bankaccount"}, conn)
    assert options == [
        {
            "value": "new_code",
            "label": "Code (new_code)",
            "display_name": "Code",
            "type": "String",
            "required_level": "ApplicationRequired",
            "max_length": 20,
        },
        {
            "value": "new_region",
            "label": "new_region (new_region)",
            "display_name": "new_region",
            "type": "Picklist",
            "required_level": "None",
            "options": [{"value": 1, "label": "North"}],
        },
    ]
    with pytest.raises(InputError, match="'table' is missing"):
        runtime.data_source("columns", {}, conn)
    with pytest.raises(InputError, match="unknown data source 'nope'"):
        runtime.data_source("nope", {}, conn)
