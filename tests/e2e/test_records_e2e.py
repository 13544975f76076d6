"""The record actions against the emulator on a real socket, through ``run_action`` and ``d365 run``.

Alternate keys are created through the metadata API, as a user would; large tables are seeded through the admin
surface. The emulator activates keys at once here (``key_activation_s=0``); the helper still reads the key's
``EntityKeyIndexStatus`` back through the API before using it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import ConcurrencyError, InputError, NotFoundError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from tests.conftest import assert_no_secrets
from tests.e2e.conftest import web_api_requests

WRITES = {"POST", "PATCH", "PUT", "DELETE"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(key_activation_s=0) as handle:
        yield handle


def d365(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        input=stdin,
    )


def create_key(connection: Connection, table: str, schema_name: str, columns: list[str]) -> None:
    """POST EntityDefinitions(...)/Keys, then read the key back until Active (a bounded loop, no sleeping)."""
    connection.client.request(
        "POST",
        f"EntityDefinitions(LogicalName='{table}')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": schema_name,
            "DisplayName": {"LocalizedLabels": [{"Label": schema_name, "LanguageCode": 1033}]},
            "KeyAttributes": columns,
        },
    )
    for _ in range(50):
        keys = connection.client.get_json(
            f"EntityDefinitions(LogicalName='{table}')/Keys", params={"$select": "SchemaName,EntityKeyIndexStatus"}
        )["value"]
        if any(k["SchemaName"] == schema_name and k["EntityKeyIndexStatus"] == "Active" for k in keys):
            return
    raise AssertionError(f"key {schema_name} never became Active")


def data_writes(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    return [r for r in web_api_requests(emulator) if r["method"] in WRITES and "EntityDefinitions" not in r["path"]]


def test_upsert_entity_composite_key_created_then_updated(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    create_key(connection, "account", "acc_name_zip", ["name", "address1_postalcode"])
    key = {"name": "O'Neil Sons", "address1_postalcode": "98052"}
    fresh_emulator.admin.clear_requests()
    first = runtime.run_action(
        "upsert_entity",
        {"table": "account", "key": key, "fields": {"telephone1": "1", "name": "O'Neil Sons"}},
        connection,
    )
    assert first["operation"] == "created"
    second = runtime.run_action(
        "upsert_entity", {"table": "accounts", "key": key, "fields": {"telephone1": "2"}}, connection
    )
    assert second == {"table": "account", "id": first["id"], "operation": "updated"}
    got = runtime.run_action(
        "get_entity", {"table": "account", "id": first["id"], "select": ["telephone1"]}, connection
    )
    assert got["record"]["telephone1"] == "2"
    patches = [r for r in data_writes(fresh_emulator) if r["method"] == "PATCH"]
    assert [r["path"] for r in patches] == [
        "/api/data/v9.2/accounts(name='O''Neil Sons',address1_postalcode='98052')"
    ] * 2
    assert all("if-match" not in r["headers"] and "if-none-match" not in r["headers"] for r in patches)


def test_upsert_entity_via_cli_says_created_then_updated(connection_file: Path, fresh_emulator: EmulatorHandle) -> None:
    with Connection.from_config(fresh_emulator.connection_config()) as conn:
        create_key(conn, "contact", "contact_email", ["emailaddress1"])
    args = ["run", "upsert_entity", "--connection", str(connection_file), "--json", "--input", "-"]
    inputs = {"table": "contact", "key": {"emailaddress1": "ada@example.com"}, "fields": {"lastname": "Lovelace"}}
    created = d365(*args, stdin=json.dumps(inputs))
    assert created.returncode == 0, created.stderr
    updated = d365(*args, stdin=json.dumps({**inputs, "fields": {"firstname": "Ada"}}))
    assert updated.returncode == 0, updated.stderr
    assert json.loads(created.stdout)["operation"] == "created"
    assert json.loads(updated.stdout)["operation"] == "updated"
    assert json.loads(updated.stdout)["id"] == json.loads(created.stdout)["id"]
    fresh_emulator.admin.clear_requests()
    bad = d365(*args, stdin=json.dumps({**inputs, "key": {"lastname": "Lovelace"}}))
    assert bad.returncode == 2, bad.stderr
    problems = json.loads(bad.stderr)["problems"]
    assert [p["path"] for p in problems] == ["$.key.lastname"]
    assert "not part of any alternate key" in problems[0]["message"]
    assert data_writes(fresh_emulator) == []
    assert_no_secrets(created.stdout, created.stderr, updated.stdout, updated.stderr, bad.stderr)


def test_upsert_entity_key_a_url_cannot_carry_goes_through_filter(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    create_key(connection, "account", "acc_number", ["accountnumber"])
    inputs = {"table": "account", "key": {"accountnumber": "A/1%&:?+"}, "fields": {"name": "odd"}}
    fresh_emulator.admin.clear_requests()
    first = runtime.run_action("upsert_entity", inputs, connection)
    second = runtime.run_action("upsert_entity", {**inputs, "fields": {"name": "odder"}}, connection)
    assert (first["operation"], second["operation"]) == ("created", "updated")
    assert first["id"] == second["id"]
    writes = data_writes(fresh_emulator)
    assert [(r["method"], r["path"]) for r in writes] == [
        ("POST", "/api/data/v9.2/accounts"),
        ("PATCH", f"/api/data/v9.2/accounts({first['id']})"),
    ]
    assert writes[1]["headers"]["if-match"] == "*"
    got = runtime.run_action("get_entity", {"table": "account", "key": {"accountnumber": "A/1%&:?+"}}, connection)
    assert got["record"]["name"] == "odder"


def test_create_entity_customer_by_alternate_key_and_option_label(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    create_key(connection, "account", "acc_number", ["accountnumber"])
    [account_id] = fresh_emulator.admin.seed("account", [{"name": "Fabrikam", "accountnumber": "F-1"}])
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "create_entity",
        {
            "table": "opportunity",
            "fields": {
                "name": "Big deal",
                "customerid": {"table": "account", "key": {"accountnumber": "F-1"}},
                "opportunityratingcode": "warm",
            },
        },
        connection,
    )
    record = out["record"]
    assert record["_customerid_value"] == account_id
    assert record["opportunityratingcode"] == 2
    assert out["id"] == record["opportunityid"]
    got = runtime.run_action(
        "get_entity",
        {"table": "opportunity", "id": out["id"], "select": ["customerid"], "include_annotations": True},
        connection,
    )
    assert (
        got["record"]["_customerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == "customerid_account"
    )
    assert [r["method"] for r in data_writes(fresh_emulator)] == ["POST"]


def test_create_entity_owner_assigned_to_a_team(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    root_bu = connection.client.whoami().business_unit_id
    [team_id] = fresh_emulator.admin.seed("team", [{"name": "Sales", "businessunitid": root_bu, "teamtype": 0}])
    out = runtime.run_action(
        "create_entity",
        {"table": "account", "fields": {"name": "Team owned", "ownerid": {"table": "team", "id": team_id}}},
        connection,
    )
    got = runtime.run_action(
        "get_entity",
        {"table": "account", "id": out["id"], "select": ["ownerid"], "include_annotations": True},
        connection,
    )
    assert got["record"]["_ownerid_value"] == team_id
    assert got["record"]["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"


def test_create_entity_impersonation_shows_in_createdby_and_createdonbehalfby(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    me = connection.client.whoami()
    ada_oid = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
    [ada] = fresh_emulator.admin.seed(
        "systemuser",
        [{"fullname": "Ada Lovelace", "azureactivedirectoryobjectid": ada_oid, "businessunitid": me.business_unit_id}],
    )
    out = runtime.run_action(
        "create_entity",
        {"table": "account", "fields": {"name": "On behalf"}, "impersonate": ada_oid, "select": ["name"]},
        connection,
    )
    got = runtime.run_action(
        "get_entity", {"table": "account", "id": out["id"], "select": ["createdby", "createdonbehalfby"]}, connection
    )
    assert got["record"]["_createdby_value"] == ada
    assert got["record"]["_createdonbehalfby_value"] == me.user_id


def test_query_entities_fetch_all_12000_rows(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    fresh_emulator.admin.seed("account", [{"name": f"Bulk {i:05d}", "accountnumber": f"B{i}"} for i in range(12_000)])
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "query_entities",
        {"table": "account", "select": ["name"], "fetch_all": True, "max_records": 50_000, "page_size": 5000},
        connection,
    )
    assert out["returned"] == 12_000 == len({r["accountid"] for r in out["records"]})
    assert (out["more_records"], out["next_page_token"]) == (False, None)
    pages = [r for r in web_api_requests(fresh_emulator) if r["path"] == "/api/data/v9.2/accounts"]
    assert len(pages) == 3
    assert all(r["headers"]["prefer"] == "odata.maxpagesize=5000" for r in pages)


def test_query_entities_stops_at_max_records_and_resumes_mid_page(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    fresh_emulator.admin.seed("account", [{"name": f"Row {i:04d}"} for i in range(1200)])
    base = {"table": "account", "select": ["name"], "order_by": ["name"], "page_size": 500}
    first = runtime.run_action("query_entities", {**base, "fetch_all": True, "max_records": 700}, connection)
    assert first["returned"] == 700 and first["more_records"] is True
    rest = runtime.run_action(
        "query_entities",
        {**base, "fetch_all": True, "max_records": 10_000, "page_token": first["next_page_token"]},
        connection,
    )
    names = [r["name"] for r in first["records"] + rest["records"]]
    assert names == [f"Row {i:04d}" for i in range(1200)]
    assert rest["more_records"] is False


def test_query_entities_where_value_with_quote_slash_percent_underscore(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    names = ["O'Brien/50%_off", "O'Brien/50%Xoff", "O'Brien/50% off", "OBrien/50%_off", "Xo'brien/50%_off!"]
    fresh_emulator.admin.seed("account", [{"name": n} for n in names])

    def query(op: str, value: str) -> list[str]:
        out = runtime.run_action(
            "query_entities",
            {"table": "account", "select": ["name"], "where": [{"column": "name", "operator": op, "value": value}]},
            connection,
        )
        return sorted(r["name"] for r in out["records"])

    assert query("contains", "'Brien/50%_") == ["O'Brien/50%_off", "Xo'brien/50%_off!"]
    assert query("startswith", "O'Brien/50%_") == ["O'Brien/50%_off"]
    assert query("endswith", "50%_off") == ["O'Brien/50%_off", "OBrien/50%_off"]
    assert query("eq", "O'Brien/50%_off") == ["O'Brien/50%_off"]


def test_update_entity_etag_conflict_is_a_clear_error(
    runtime: Runtime, connection: Connection, connection_file: Path, fresh_emulator: EmulatorHandle
) -> None:
    [account_id] = fresh_emulator.admin.seed("account", [{"name": "Versioned"}])
    read = runtime.run_action("get_entity", {"table": "account", "id": account_id, "select": ["name"]}, connection)
    runtime.run_action(
        "update_entity",
        {"table": "account", "id": account_id, "fields": {"name": "v2"}, "etag": read["etag"]},
        connection,
    )
    with pytest.raises(ConcurrencyError, match="changed by someone else"):
        runtime.run_action(
            "update_entity",
            {"table": "account", "id": account_id, "fields": {"name": "v3"}, "etag": read["etag"]},
            connection,
        )
    cli = d365(
        "run", "update_entity", "--connection", str(connection_file), "--input", "-",
        stdin=json.dumps({"table": "account", "id": account_id, "fields": {"name": "v3"}, "etag": read["etag"]}),
    )  # fmt: skip
    assert cli.returncode == 4
    assert "changed by someone else" in cli.stderr


def test_update_entity_never_creates_and_delete_entity_ignore_missing(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    missing = "00000000-0000-0000-0000-00000000dead"
    with pytest.raises(NotFoundError, match=f"'account' with id {missing} does not exist"):
        runtime.run_action("update_entity", {"table": "account", "id": missing, "fields": {"name": "x"}}, connection)
    with pytest.raises(NotFoundError, match="'account'"):
        runtime.run_action("get_entity", {"table": "account", "id": missing}, connection)
    gone = runtime.run_action("delete_entity", {"table": "account", "id": missing, "ignore_missing": True}, connection)
    assert gone["deleted"] is False
    [account_id] = fresh_emulator.admin.seed("account", [{"name": "Doomed"}])
    assert runtime.run_action("delete_entity", {"table": "account", "id": account_id}, connection)["deleted"] is True


def test_associate_entities_and_disassociate_entities(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    create_key(connection, "contact", "contact_email", ["emailaddress1"])
    parent, child = fresh_emulator.admin.seed("account", [{"name": "Parent"}, {"name": "Child"}])
    [contact] = fresh_emulator.admin.seed("contact", [{"lastname": "Hopper", "emailaddress1": "grace@example.com"}])

    def read(table: str, id_: str, column: str) -> Any:
        return runtime.run_action("get_entity", {"table": table, "id": id_, "select": [column]}, connection)["record"][
            f"_{column}_value"
        ]

    single = {"table": "account", "id": child, "navigation": "parentaccountid"}
    runtime.run_action("associate_entities", {**single, "related": {"table": "account", "id": parent}}, connection)
    assert read("account", child, "parentaccountid") == parent
    runtime.run_action("disassociate_entities", single, connection)
    assert read("account", child, "parentaccountid") is None

    collection = {"table": "account", "id": parent, "navigation": "contact_customer_accounts"}
    related = {"table": "contact", "key": {"emailaddress1": "grace@example.com"}}
    out = runtime.run_action("associate_entities", {**collection, "related": related}, connection)
    assert out["related_id"] == contact
    assert read("contact", contact, "parentcustomerid") == parent
    runtime.run_action("disassociate_entities", {**collection, "related": related}, connection)
    assert read("contact", contact, "parentcustomerid") is None


BAD_INPUTS = [
    pytest.param("get_entity", {"table": "account", "id": "not-a-guid"}, "$.id", id="bad-guid"),
    pytest.param(
        "get_entity",
        {"table": "account", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b", "key": {"accountnumber": "A"}},
        "$.id",
        id="id-and-key",
    ),
    pytest.param("create_entity", {"table": "account", "fields": {"nmae": "x"}}, "$.fields.nmae", id="unknown-column"),
    pytest.param(
        "upsert_entity",
        {"table": "account", "key": {"telephone1": "1"}, "fields": {"name": "x"}},
        "$.key.telephone1",
        id="key-column-not-in-a-key",
    ),
    pytest.param(
        "create_entity",
        {"table": "account", "fields": {"name": "x", "industrycode": "Basket weaving"}},
        "$.fields.industrycode",
        id="unknown-option-label",
    ),
    pytest.param(
        "update_entity",
        {"table": "account", "key": {"accountnumber": "A"}, "fields": {"industrycode": "Basket weaving"}},
        "$.fields.industrycode",
        id="update-unknown-option-label",
    ),
    pytest.param("delete_entity", {"table": "account", "key": {"name": "x"}}, "$.key.name", id="delete-key-not-a-key"),
    pytest.param("query_entities", {"table": "account", "page_size": 0}, "$.page_size", id="page-size-0"),
    pytest.param("query_entities", {"table": "account", "page_size": 6000}, "$.page_size", id="page-size-6000"),
    pytest.param("query_entities", {"table": "account", "fetch_all": True}, "max_records", id="fetch-all-no-max"),
    pytest.param(
        "query_entities",
        {"table": "account", "page_token": "eyJoIjoiZXZpbC5leGFtcGxlLmNvbSIsInAiOiJhY2NvdW50cyJ9"},
        "$.page_token",
        id="token-for-another-host",
    ),
    pytest.param(
        "create_entity",
        {
            "table": "opportunity",
            "fields": {"name": "x", "customerid": {"table": "lead", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"}},
        },
        "$.fields.customerid.table",
        id="lookup-to-wrong-table",
    ),
    pytest.param(
        "get_entity", {"table": "acount", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"}, "$.table", id="unknown-table"
    ),
]


@pytest.mark.parametrize(("action", "inputs", "field"), BAD_INPUTS)
def test_record_actions_refuse_bad_input_before_any_write(
    runtime: Runtime,
    connection: Connection,
    fresh_emulator: EmulatorHandle,
    action: str,
    inputs: dict[str, Any],
    field: str,
) -> None:
    create_key(connection, "account", "acc_number", ["accountnumber"])
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as caught:
        runtime.run_action(action, inputs, connection)
    assert field in str(caught.value)
    assert data_writes(fresh_emulator) == []
    assert all("EntityDefinitions" in r["path"] for r in web_api_requests(fresh_emulator))


def test_query_entities_jsonl_streams_records_and_reports_the_rest(
    connection_file: Path, fresh_emulator: EmulatorHandle
) -> None:
    fresh_emulator.admin.seed("account", [{"name": f"Stream {i:04d}"} for i in range(1200)])
    inputs = {"table": "account", "select": ["name"], "order_by": ["name"], "fetch_all": True, "max_records": 1100}
    out = d365(
        "run", "query_entities", "--jsonl", "--connection", str(connection_file), "--input", "-",
        stdin=json.dumps({**inputs, "page_size": 500}),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == [f"Stream {i:04d}" for i in range(1100)]
    summary = json.loads(out.stderr.strip().splitlines()[-1])
    assert summary["returned"] == 1100 and summary["more_records"] is True and summary["next_page_token"]
    pages = [r for r in web_api_requests(fresh_emulator) if r["path"] == "/api/data/v9.2/accounts"]
    assert len(pages) == 3
