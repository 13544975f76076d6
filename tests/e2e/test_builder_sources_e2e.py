"""The per-table schemas and the records source against the emulator: what ``fields_schema`` accepts,
``create_entity`` accepts; what it refuses, ``create_entity`` refuses, naming the same field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from connector.cli import main
from connector.connection import Connection
from connector.errors import ConnectorError, InputError
from connector.runtime import Runtime
from connector.schema_links import link_problems
from connector.schemas import SchemaStore, data_root
from tests.e2e.conftest import custom_table_request

CUSTOM_TABLE = custom_table_request("new_Loan", "Loan", "Loans")
CUSTOM_COLUMNS = [
    {"type": "string", "schema_name": "new_Code", "label": "Code", "max_length": 10, "required": "required"},
    {"type": "integer", "schema_name": "new_Term", "label": "Term", "min_value": 1, "max_value": 360},
    {"type": "picklist", "schema_name": "new_Kind", "label": "Kind", "options": ["Fixed", "Variable"]},
]


def schema_problems(schema: dict[str, Any], fields: dict[str, Any]) -> set[str]:
    """The top-level fields the schema's errors point at (a missing required field is named in its message)."""
    named = set()
    for error in Draft202012Validator(schema).iter_errors(fields):
        if error.absolute_path:
            named.add(str(error.absolute_path[0]))
        elif error.validator in ("required", "additionalProperties"):
            named.update(c for c in [*schema["properties"], *fields] if repr(c) in error.message)
    return named


def generated_link_problems(runtime: Runtime, schema: dict[str, Any]) -> list[str]:
    """The generated schema's own links (a lookup's id and key) checked as the contract checks the files'."""
    store = SchemaStore()
    store.add_folder(data_root() / "schemas")
    sid = "https://d365-connector.dev/schemas/generated/fields.json"
    store.add(sid, schema)
    sources = {str(s["name"]): str(s["params_schema"]) for s in runtime.manifest.document["data_sources"]}
    return link_problems(store, sid, sources)


def refused_field(runtime: Runtime, connection: Connection, table: str, fields: dict[str, Any]) -> str:
    with pytest.raises(ConnectorError) as caught:
        runtime.run_action("create_entity", {"table": table, "fields": fields}, connection)
    if isinstance(caught.value, InputError):
        return "; ".join(p.path for p in caught.value.problems)
    return str(caught.value)


def assert_same_verdict(
    runtime: Runtime, connection: Connection, table: str, accepted: dict[str, Any], refused: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``accepted`` passes the schema and is created; each of ``refused`` (by the field it gets wrong) fails both."""
    schema = runtime.data_source("fields_schema", {"table": table}, connection)[0]
    assert schema_problems(schema, accepted) == set()
    created = runtime.run_action("create_entity", {"table": table, "fields": accepted}, connection)
    for field, fields in refused.items():
        assert schema_problems(schema, fields) == {field}
        where = refused_field(runtime, connection, table, fields)
        assert f".{field}" in where or f"'{field}'" in where, where
    return created


def test_fields_schema_on_account_agrees_with_create_entity(runtime: Runtime, connection: Connection) -> None:
    contact = runtime.run_action("create_entity", {"table": "contact", "fields": {"lastname": "Lovelace"}}, connection)
    schema = runtime.data_source("fields_schema", {"table": "account"}, connection)[0]
    assert schema["required"] == ["name"]
    assert schema["properties"]["name"]["maxLength"] == 160
    assert {"const": 1, "title": "Accounting"} in schema["properties"]["industrycode"]["oneOf"]
    good = {"name": "Contoso", "industrycode": 1, "primarycontactid": {"table": "contact", "id": contact["id"]}}
    assert_same_verdict(
        runtime,
        connection,
        "account",
        good,
        {
            "name": {"name": "x" * 161},
            "numberofemployees": {"name": "Contoso", "numberofemployees": "many"},
            "primarycontactid": {"name": "Contoso", "primarycontactid": {"table": "account", "id": contact["id"]}},
        },
    )


def test_fields_schema_on_contact_offers_both_customer_tables(runtime: Runtime, connection: Connection) -> None:
    account = runtime.run_action("create_entity", {"table": "account", "fields": {"name": "Contoso"}}, connection)
    schema = runtime.data_source("fields_schema", {"table": "contact"}, connection)[0]
    parent = schema["properties"]["parentcustomerid"]
    assert [b["const"] for b in parent["properties"]["table"]["oneOf"]] == ["account", "contact"]
    assert [b["title"] for b in parent["oneOf"]] == ["by id", "by alternate key"]
    assert parent["properties"]["id"]["x-d365-options"] == {"source": "records", "params": {"table": "1/table"}}
    assert generated_link_problems(runtime, schema) == []
    assert "fullname" not in schema["properties"]  # read-only: Dataverse computes it
    update = runtime.data_source("fields_schema", {"table": "contact", "mode": "update"}, connection)[0]
    assert update["required"] == [] and "lastname" in update["properties"]
    assert_same_verdict(
        runtime,
        connection,
        "contact",
        {"lastname": "Lovelace", "parentcustomerid": {"table": "account", "id": account["id"]}},
        {
            "parentcustomerid": {"lastname": "L", "parentcustomerid": {"table": "systemuser", "id": account["id"]}},
            "fullname": {"lastname": "L", "fullname": "Ada Lovelace"},
            "lastname": {"lastname": 42},
        },
    )


def test_fields_schema_and_key_schema_on_a_custom_table(runtime: Runtime, connection: Connection) -> None:
    runtime.run_action("raw_request", CUSTOM_TABLE, connection)
    for column in CUSTOM_COLUMNS:
        runtime.run_action("create_attribute", {"table": "new_loan", "attribute": column}, connection)
    runtime.run_action(
        "create_alternate_key",
        {"table": "new_loan", "schema_name": "new_code_key", "columns": ["new_code"], "wait_until_active": True},
        connection,
    )
    schema = runtime.data_source("fields_schema", {"table": "new_loan"}, connection)[0]
    assert schema["required"] == ["new_code"]
    assert schema["properties"]["new_code"]["maxLength"] == 10
    assert (schema["properties"]["new_term"]["minimum"], schema["properties"]["new_term"]["maximum"]) == (1, 360)
    assert [o["title"] for o in schema["properties"]["new_kind"]["oneOf"]] == ["Fixed", "Variable"]
    kind = schema["properties"]["new_kind"]["oneOf"][0]["const"]
    assert_same_verdict(
        runtime,
        connection,
        "new_loan",
        {"new_name": "Mortgage", "new_code": "L-1", "new_term": 240, "new_kind": kind},
        {"new_code": {"new_code": "L-0123456789"}, "new_term": {"new_code": "L-2", "new_term": "long"}},
    )
    key = runtime.data_source("key_schema", {"table": "new_loan"}, connection)[0]
    assert [b["title"] for b in key["oneOf"]] == ["new_code_key (new_code)"]
    assert Draft202012Validator(key).is_valid({"new_code": "L-1"})
    assert not Draft202012Validator(key).is_valid({"new_name": "Mortgage"})


def test_records_source_pages_rows_by_primary_name(runtime: Runtime, connection: Connection) -> None:
    made = {}
    for name in ("Contoso", "Fabrikam", "Contoso Pharma", "Northwind"):
        made[name] = runtime.run_action("create_entity", {"table": "account", "fields": {"name": name}}, connection)
    found = runtime.data_source("records", {"table": "account", "search": "contoso"}, connection)
    assert found == [{"value": made[n]["id"], "label": n} for n in ("Contoso", "Contoso Pharma")]
    paged = [{"table": "account", "page_size": 3, "page": n} for n in (1, 2)]
    pages = [runtime.data_source("records", params, connection) for params in paged]
    assert [[o["label"] for o in page] for page in pages] == [["Contoso", "Contoso Pharma", "Fabrikam"], ["Northwind"]]
    with pytest.raises(InputError):
        runtime.data_source("records", {"table": "account", "page": 0}, connection)


def test_datasource_command_prints_the_fields_schema(connection_file: Path) -> None:
    argv = ["datasource", "fields_schema", "--param", "table=contact", "--param", "mode=update"]
    result = CliRunner().invoke(main, [*argv, "--connection", str(connection_file), "--json"])
    assert result.exit_code == 0, result.output
    [schema] = json.loads(result.output)
    assert schema["title"] == "Fields of contact (update)" and schema["required"] == []
    refused = CliRunner().invoke(main, [*argv[:3], "--param", "mode=upsert", "--connection", str(connection_file)])
    assert refused.exit_code == 2 and "mode" in refused.output
