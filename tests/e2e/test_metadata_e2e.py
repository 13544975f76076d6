"""End-to-end: the metadata actions and builder data sources against the emulator over a real socket.

Each test seeds its own custom table through the admin surface (metadata survives a reset, so names are unique per
test). Waiting for a key never sleeps: the connection's clock advances the emulator's clock instead.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.e2e.conftest import web_api_requests


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


class EmulatorClock:
    """Real time plus an offset; ``sleep`` moves the offset and the emulator's clock together, returning at once."""

    def __init__(self, emulator: EmulatorHandle) -> None:
        import time

        self._time = time
        self._emulator = emulator
        self._offset = 0.0
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._time.monotonic() + self._offset

    def time(self) -> float:
        return self._time.time() + self._offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._offset += seconds
        self._emulator.admin.advance_clock(seconds)


def seed_table(emulator: EmulatorHandle, schema: str, columns: list[dict[str, Any]] | None = None) -> str:
    [logical] = emulator.admin.seed_metadata(
        [{"schema_name": schema, "display_name": "Bank Account", "columns": columns or []}]
    )
    return logical


def test_create_attribute_documented_and_short_forms_read_back_update_and_list(
    runtime: Runtime, fresh_emulator: EmulatorHandle, connection: Connection
) -> None:
    table = seed_table(fresh_emulator, "new_BankAccount1")
    documented = runtime.run_action("create_attribute", {"table": table, "attribute": DOCUMENTED_MONEY}, connection)
    assert documented["logical_name"] == "new_balance" and documented["metadata_id"]
    short = {"type": "money", "schema_name": "new_Credit", "label": "Credit", "precision": 2, "required": "none"}
    runtime.run_action(
        "create_attribute", {"table": table, "attribute": short, "solution": "examplesolution"}, connection
    )

    read = runtime.run_action("get_attribute", {"table": table, "attribute": "new_balance"}, connection)
    assert read["attribute"]["AttributeType"] == "Money"
    assert read["attribute"]["DisplayName"]["LocalizedLabels"][0]["Label"] == "Balance"
    by_id = runtime.run_action("get_attribute", {"table": table, "attribute": documented["metadata_id"]}, connection)
    assert by_id["attribute"]["LogicalName"] == "new_balance"

    # a French label first (English kept by MergeLabels), then a new English one: both languages survive
    runtime.run_action(
        "update_attribute",
        {"table": table, "attribute": "new_balance", "label": "Solde", "language_code": 1036},
        connection,
    )
    updated = runtime.run_action(
        "update_attribute", {"table": table, "attribute": "new_balance", "label": "Current balance"}, connection
    )
    assert updated["labels_changed"] is True and updated["published"] is True
    labels = runtime.run_action("get_attribute", {"table": table, "attribute": "new_balance"}, connection)["attribute"]
    assert {(x["LanguageCode"], x["Label"]) for x in labels["DisplayName"]["LocalizedLabels"]} == {
        (1033, "Current balance"),
        (1036, "Solde"),
    }
    puts = [r for r in web_api_requests(fresh_emulator) if r.get("method") == "PUT"]
    assert puts, "update_attribute must PUT the whole definition"
    assert any("PublishXml" in r["path"] for r in web_api_requests(fresh_emulator))

    money = runtime.run_action("list_attributes", {"table": table, "types": ["Money"]}, connection)
    names = {a["logical_name"] for a in money["attributes"]}
    assert {"new_balance", "new_credit"} <= names
    assert {a["type"] for a in money["attributes"]} == {"Money"}
    strings = runtime.run_action("list_attributes", {"table": table, "types": ["String"]}, connection)
    assert "new_balance" not in {a["logical_name"] for a in strings["attributes"]}

    queried = runtime.run_action(
        "query_attributes",
        {
            "table": table,
            "cast": "MoneyAttributeMetadata",
            "select": ["LogicalName", "Precision"],
            "filter": "LogicalName eq 'new_credit'",
        },
        connection,
    )
    assert queried["attributes"] == [
        {
            "@odata.type": "#Microsoft.Dynamics.CRM.MoneyAttributeMetadata",
            "LogicalName": "new_credit",
            "Precision": 2,
            "MetadataId": queried["attributes"][0]["MetadataId"],
        }
    ]


def test_create_attribute_then_create_entity_at_once_and_a_lookup(
    runtime: Runtime, fresh_emulator: EmulatorHandle, connection: Connection
) -> None:
    table = seed_table(fresh_emulator, "new_BankAccount2")
    connection.metadata.table(table)  # the record actions' cache now holds the table without the new column
    runtime.run_action("create_entity", {"table": table, "fields": {"new_name": "first"}}, connection)
    runtime.run_action(
        "create_attribute",
        {
            "table": table,
            "attribute": {"type": "string", "schema_name": "new_Nickname", "label": "Nickname", "max_length": 40},
        },
        connection,
    )
    made = runtime.run_action(
        "create_entity",
        {"table": table, "fields": {"new_name": "second", "new_nickname": "Bob"}, "return_record": True},
        connection,
    )
    assert made["record"]["new_nickname"] == "Bob"
    log = web_api_requests(fresh_emulator)
    post = next(i for i, r in enumerate(log) if r["method"] == "POST" and r["path"].endswith("/Attributes"))
    reread = next(
        r for r in log[post:] if r["method"] == "GET" and f"EntityDefinitions(LogicalName='{table}')" in r["path"]
    )
    assert reread["headers"].get("consistency") == "Strong"

    lookup = runtime.run_action(
        "create_attribute",
        {
            "table": table,
            "attribute": {"type": "lookup", "schema_name": "new_AccountId", "label": "Account", "target": "account"},
        },
        connection,
    )
    assert lookup["relationship"]["schema_name"] == "new_account_new_bankaccount2_new_accountid"
    assert lookup["metadata_id"] and lookup["relationship"]["metadata_id"]
    account = runtime.run_action("create_entity", {"table": "account", "fields": {"name": "Contoso"}}, connection)
    linked = runtime.run_action(
        "create_entity",
        {
            "table": table,
            "fields": {"new_name": "third", "new_accountid": {"table": "account", "id": account["id"]}},
            "return_record": True,
        },
        connection,
    )
    assert linked["record"]["_new_accountid_value"] == account["id"]


def test_create_alternate_key_waits_until_active_then_upsert_through_it(
    runtime: Runtime, fresh_emulator: EmulatorHandle
) -> None:
    table = seed_table(
        fresh_emulator,
        "new_BankAccount3",
        [{"schema_name": "new_Code", "type": "string", "max_length": 20}, {"schema_name": "new_Region", "type": "int"}],
    )
    clock = EmulatorClock(fresh_emulator)
    conn = Connection.from_config(fresh_emulator.connection_config(), clock=clock)
    try:
        out = runtime.run_action(
            "create_alternate_key",
            {
                "table": table,
                "schema_name": "new_code_region_key",
                "columns": ["new_code", "new_region"],
                "label": "Code and region",
                "wait_until_active": True,
                "timeout_s": 60,
                "poll_interval_s": 0.5,
            },
            conn,
        )
        assert out["active"] is True and out["key"]["status"] == "Active"
        assert out["key"]["columns"] == ["new_code", "new_region"]
        assert clock.sleeps and sum(clock.sleeps) < 60
        listed = runtime.run_action("list_alternate_keys", {"table": table}, conn)
        assert [(k["schema_name"], k["status"]) for k in listed["keys"]] == [("new_code_region_key", "Active")]
        key = {"new_code": "A-1", "new_region": 7}
        first = runtime.run_action("upsert_entity", {"table": table, "key": key, "fields": {"new_name": "one"}}, conn)
        second = runtime.run_action("upsert_entity", {"table": table, "key": key, "fields": {"new_name": "two"}}, conn)
        assert (first["operation"], second["operation"]) == ("created", "updated")
        assert first["id"] == second["id"]
        with pytest.raises(InputError, match=r"\$\.columns\[0\]"):
            runtime.run_action(
                "create_alternate_key", {"table": table, "schema_name": "new_k2", "columns": ["new_nope"]}, conn
            )
    finally:
        conn.close()


def test_table_reads_and_data_sources_give_builders_what_they_need(
    runtime: Runtime, fresh_emulator: EmulatorHandle, connection: Connection, connection_file: Path
) -> None:
    table = seed_table(
        fresh_emulator, "new_BankAccount4", [{"schema_name": "new_Code", "type": "string", "max_length": 20}]
    )
    runtime.run_action(
        "create_attribute",
        {
            "table": table,
            "attribute": {
                "type": "picklist",
                "schema_name": "new_Tier",
                "label": "Tier",
                "required": "recommended",
                "options": ["Gold", "Silver"],
            },
        },
        connection,
    )
    runtime.run_action(
        "create_alternate_key", {"table": table, "schema_name": "new_code_key", "columns": ["new_code"]}, connection
    )

    listed = runtime.run_action("list_entities", {"include_details": True}, connection)
    mine = next(t for t in listed["tables"] if t["logical_name"] == table)
    assert (mine["display_name"], mine["is_custom"], mine["entity_set_name"]) == ("Bank Account", True, f"{table}s")
    system_only = runtime.run_action("list_entities", {"include_custom": False}, connection)
    assert table not in {t["logical_name"] for t in system_only["tables"]} and "account" in {
        t["logical_name"] for t in system_only["tables"]
    }

    page = runtime.run_action("list_entity_types", {"page_size": 3}, connection)
    seen = [t["logical_name"] for t in page["entity_types"]]
    while page["more_records"]:
        page = runtime.run_action("list_entity_types", {"page_token": page["next_page_token"]}, connection)
        seen += [t["logical_name"] for t in page["entity_types"]]
    everything = runtime.run_action("list_entity_types", {"fetch_all": True}, connection)
    assert seen == [t["logical_name"] for t in everything["entity_types"]] and table in seen

    definition = runtime.run_action(
        "get_entity_metadata", {"table": f"{table}s", "by": "entity_set_name", "expand": ["keys"]}, connection
    )
    assert definition["definition"]["LogicalName"] == table and definition["definition"]["Keys"][0][
        "KeyAttributes"
    ] == ["new_code"]

    bulk = runtime.run_action("get_entities_metadata", {"default_selected": ["account"], "filter": "bank"}, connection)
    names = [t["logical_name"] for t in bulk["tables"]]
    assert table in names and "account" not in names  # the filter narrows the named tables too
    tier = next(
        a
        for a in next(t for t in bulk["tables"] if t["logical_name"] == table)["attributes"]
        if a["logical_name"] == "new_tier"
    )
    assert (tier["type"], tier["display_name"], tier["required_level"]) == ("Picklist", "Tier", "Recommended")

    tables = runtime.data_source("tables", {}, connection)
    assert {"value": table, "label": f"Bank Account ({table})"}.items() <= next(
        o for o in tables if o["value"] == table
    ).items()
    columns = {o["value"]: o for o in runtime.data_source("columns", {"table": table}, connection)}
    assert columns["new_code"]["type"] == "String" and columns["new_code"]["max_length"] == 20
    assert columns["new_tier"]["options"] == [
        {"value": 100000000, "label": "Gold"},
        {"value": 100000001, "label": "Silver"},
    ]
    assert columns["new_tier"]["required_level"] == "Recommended" and columns["new_tier"]["label"] == "Tier (new_tier)"
    keys = runtime.data_source("alternate_keys", {"table": table}, connection)
    assert [(k["value"], k["columns"]) for k in keys] == [("new_code_key", ["new_code"])]

    result = CliRunner().invoke(
        main, ["datasource", "columns", "--param", f"table={table}", "--connection", str(connection_file), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert {o["value"] for o in json.loads(result.output)} >= {"new_code", "new_tier"}
    refused = CliRunner().invoke(
        main, ["datasource", "columns", "--param", "table=nosuchtable", "--connection", str(connection_file)]
    )
    assert refused.exit_code == 2 and "nosuchtable" in refused.output


def test_metadata_actions_refuse_unknown_tables_with_exit_code_2(
    runtime: Runtime, fresh_emulator: EmulatorHandle, connection: Connection, connection_file: Path
) -> None:
    for action, inputs in [
        ("get_entity_metadata", {"table": "nosuchtable"}),
        ("list_attributes", {"table": "nosuchtable"}),
        (
            "create_attribute",
            {"table": "nosuchtable", "attribute": {"type": "money", "schema_name": "new_X", "label": "X"}},
        ),
    ]:
        with pytest.raises(InputError, match=r"\$\.table: no table"):
            runtime.run_action(action, inputs, connection)
    result = CliRunner().invoke(
        main,
        [
            "run",
            "create_attribute",
            "--set",
            "table=account",
            "--set",
            'attribute:={"type": "money", "schema_name": "Balance", "label": "B"}',
            "--connection",
            str(connection_file),
        ],
    )
    assert result.exit_code == 2 and "schema_name" in result.output
    assert [r for r in web_api_requests(fresh_emulator) if r.get("method") == "POST"] == []
