"""``invoke_action`` / ``invoke_function`` against the emulator: each message the emulator implements, run through
the runtime, answers typed; bad parameters are refused before any request, with the field named."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from tests.e2e.conftest import web_api_requests
from tests.e2e.test_records_e2e import create_key


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(key_activation_s=0) as handle:  # keys usable at once
        yield handle


def _lead(runtime: Runtime, connection: Connection, **fields: Any) -> str:
    made = runtime.run_action(
        "create_entity", {"table": "lead", "fields": {"lastname": "Lovelace", **fields}}, connection
    )
    return str(made["id"])


def test_invoke_action_qualify_lead_bound_to_a_row_with_a_status_label(
    runtime: Runtime, connection: Connection
) -> None:
    lead = _lead(runtime, connection, companyname="Analytical Engines", subject="Engines", estimatedamount=900)
    params = {"CreateAccount": True, "CreateContact": True, "CreateOpportunity": True, "Status": "Qualified"}
    out = runtime.run_action(
        "invoke_action", {"name": "QualifyLead", "table": "leads", "id": lead, "parameters": params}, connection
    )
    assert out["name"] == "QualifyLead" and out["return_type"] == "Collection(mscrm.crmbaseentity)"
    assert [r["table"] for r in out["result"]] == ["account", "contact", "opportunity"]
    opportunity = out["result"][2]["id"]
    got = runtime.run_action("get_entity", {"table": "opportunity", "id": opportunity}, connection)["record"]
    assert (got["name"], got["estimatedvalue"], got["_originatingleadid_value"]) == ("Engines", 900, lead)
    closed = runtime.run_action("get_entity", {"table": "lead", "id": lead, "select": ["statuscode"]}, connection)
    assert closed["record"]["statuscode"] == 3


def test_invoke_action_win_opportunity_unbound_with_an_entity_value(runtime: Runtime, connection: Connection) -> None:
    made = runtime.run_action(
        "create_entity", {"table": "opportunity", "fields": {"name": "Deal", "estimatedvalue": 10}}, connection
    )
    close = {
        "fields": {
            "subject": "Signed",
            "actualrevenue": 12.5,
            "opportunityid": {"table": "opportunity", "id": made["id"]},
        }
    }
    out = runtime.run_action(
        "invoke_action",
        {"name": "WinOpportunity", "parameters": {"Status": "Won", "OpportunityClose": close}},
        connection,
    )
    assert out == {"name": "WinOpportunity", "return_type": None, "result": None}
    got = runtime.run_action("get_entity", {"table": "opportunity", "id": made["id"]}, connection)["record"]
    assert (got["statecode"], got["statuscode"], got["actualvalue"]) == (1, 3, 12.5)


def test_invoke_action_custom_api_with_a_reference_by_alternate_key(runtime: Runtime, connection: Connection) -> None:
    create_key(connection, "account", "acc_number", ["accountnumber"])
    runtime.run_action(
        "create_entity", {"table": "account", "fields": {"name": "Contoso", "accountnumber": "A-1"}}, connection
    )
    params = {
        "Amount": 80,
        "Percent": 25,
        "Codes": ["X", "Y", "Z"],
        "Customer": {"table": "account", "key": {"accountnumber": "A-1"}},
    }
    out = runtime.run_action("invoke_action", {"name": "sample_ApplyDiscount", "parameters": params}, connection)
    assert out["result"] == {"Total": 60.0, "CodeCount": 3, "CustomerName": "Contoso"}
    assert out["return_type"] == "mscrm.sample_ApplyDiscountResponse"


def test_invoke_action_a_custom_api_registered_after_the_catalogue_was_read(
    runtime: Runtime, connection: Connection
) -> None:
    runtime.run_action("invoke_function", {"name": "RetrieveVersion"}, connection)  # $metadata now cached
    api = runtime.run_action(
        "create_entity",
        {
            "table": "customapi",
            "fields": {"uniquename": "new_Ping", "name": "new_Ping", "bindingtype": 0, "isfunction": False},
        },
        connection,
    )
    prop = {"uniquename": "Pong", "name": "Pong", "type": 10, "customapiid": {"table": "customapi", "id": api["id"]}}
    runtime.run_action("create_entity", {"table": "customapiresponseproperty", "fields": prop}, connection)
    out = runtime.run_action("invoke_action", {"name": "new_Ping"}, connection)
    assert out == {"name": "new_Ping", "return_type": "mscrm.new_PingResponse", "result": {"Pong": None}}


def test_invoke_function_retrieve_version_and_calculate_rollup_field(runtime: Runtime, connection: Connection) -> None:
    version = runtime.run_action("invoke_function", {"name": "RetrieveVersion"}, connection)
    assert version["result"]["Version"].startswith("9.2.")
    account = runtime.run_action("create_entity", {"table": "account", "fields": {"name": "Parent"}}, connection)["id"]
    for value in (100, 50):
        fields = {"name": "o", "estimatedvalue": value, "parentaccountid": {"table": "account", "id": account}}
        runtime.run_action("create_entity", {"table": "opportunity", "fields": fields}, connection)
    inputs = {
        "name": "CalculateRollupField",
        "parameters": {"Target": {"table": "account", "id": account}, "FieldName": "openrevenue"},
    }
    out = runtime.run_action("invoke_function", inputs, connection)
    assert (out["result"]["table"], out["result"]["id"]) == ("account", account)
    assert (out["result"]["fields"]["openrevenue"], out["result"]["fields"]["openrevenue_state"]) == (150, 1)


def test_invoke_function_string_with_quotes_travels_as_an_alias(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    account = runtime.run_action("create_entity", {"table": "account", "fields": {"name": "P"}}, connection)["id"]
    inputs = {
        "name": "CalculateRollupField",
        "parameters": {"Target": {"table": "account", "id": account}, "FieldName": "it's"},
    }
    with pytest.raises(Exception) as info:
        runtime.run_action("invoke_function", inputs, connection)
    assert "it's" in str(info.value)  # the emulator read the value back intact: '' unescaped
    sent = [r["path"] for r in web_api_requests(fresh_emulator) if "CalculateRollupField" in r["path"]]
    assert sent and "CalculateRollupField(Target=@p1,FieldName=@p2)" in sent[-1]


@pytest.mark.parametrize(
    ("action", "inputs", "field"),
    [
        pytest.param(
            "invoke_action",
            {"name": "QualifyLeed", "table": "lead", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"},
            "$.name",
            id="unknown-name",
        ),
        pytest.param("invoke_action", {"name": "RetrieveVersion"}, "$.name", id="a-function-as-action"),
        pytest.param("invoke_action", {"name": "QualifyLead", "parameters": {}}, "$.name", id="bound-but-no-table"),
        pytest.param(
            "invoke_action",
            {"name": "QualifyLead", "table": "account", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"},
            "$.table",
            id="wrong-table",
        ),
        pytest.param(
            "invoke_action",
            {"name": "sample_ApplyDiscount", "parameters": {"Amount": "ten", "Percent": 1}},
            "$.parameters.Amount",
            id="wrong-type",
        ),
        pytest.param(
            "invoke_action",
            {"name": "sample_ApplyDiscount", "parameters": {"Amount": 1}},
            "$.parameters.Percent",
            id="missing-required",
        ),
        pytest.param(
            "invoke_action",
            {"name": "sample_ApplyDiscount", "parameters": {"Amount": 1, "Percent": 1, "Bogus": 2}},
            "$.parameters.Bogus",
            id="unknown-parameter",
        ),
        pytest.param(
            "invoke_action",
            {"name": "sample_ApplyDiscount", "parameters": {"Amount": 1, "Percent": 1, "Codes": "A"}},
            "$.parameters.Codes",
            id="not-a-list",
        ),
        pytest.param(
            "invoke_action",
            {"name": "sample_ApplyDiscount", "parameters": {"Amount": 1, "Percent": 1, "Codes": ["A", 2]}},
            "$.parameters.Codes[1]",
            id="bad-item",
        ),
        pytest.param(
            "invoke_action",
            {
                "name": "sample_ApplyDiscount",
                "parameters": {
                    "Amount": 1,
                    "Percent": 1,
                    "Customer": {"table": "contact", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"},
                },
            },
            "$.parameters.Customer.table",
            id="wrong-entity-table",
        ),
        pytest.param(
            "invoke_action",
            {
                "name": "sample_ApplyDiscount",
                "parameters": {"Amount": 1, "Percent": 1, "Customer": {"table": "account", "id": "nope"}},
            },
            "$.parameters.Customer.id",
            id="bad-guid",
        ),
        pytest.param(
            "invoke_action",
            {
                "name": "sample_ApplyDiscount",
                "parameters": {"Amount": 1, "Percent": 1, "Customer": {"table": "account", "key": {"nocolumn": "A"}}},
            },
            "$.parameters.Customer.key.nocolumn",
            id="bad-key",
        ),
        pytest.param(
            "invoke_action",
            {
                "name": "WinOpportunity",
                "parameters": {"Status": "Triumph", "OpportunityClose": {"fields": {"subject": "x"}}},
            },
            "$.parameters.Status",
            id="bad-status-label",
        ),
        pytest.param(
            "invoke_action",
            {"name": "WinOpportunity", "parameters": {"Status": 3, "OpportunityClose": {"fields": {"nocolumn": "x"}}}},
            "$.parameters.OpportunityClose.fields.nocolumn",
            id="bad-entity-field",
        ),
        pytest.param("invoke_function", {"name": "QualifyLead"}, "$.name", id="an-action-as-function"),
        pytest.param(
            "invoke_function",
            {
                "name": "CalculateRollupField",
                "parameters": {"Target": {"id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"}, "FieldName": "x"},
            },
            "$.parameters.Target.table",
            id="base-type-needs-table",
        ),
        pytest.param(
            "invoke_function",
            {"name": "CalculateRollupField", "parameters": {"FieldName": 3}},
            "$.parameters.FieldName",
            id="function-wrong-type",
        ),
    ],
)
def test_invoke_action_and_invoke_function_refuse_bad_parameters_before_sending(
    runtime: Runtime,
    connection: Connection,
    fresh_emulator: EmulatorHandle,
    action: str,
    inputs: dict[str, Any],
    field: str,
) -> None:
    runtime.run_action("invoke_function", {"name": "RetrieveVersion"}, connection)  # warm the catalogue
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as info:
        runtime.run_action(action, inputs, connection)
    assert field in [p.path for p in info.value.problems], info.value
    writes = [r for r in web_api_requests(fresh_emulator) if r["method"] != "GET"]
    assert writes == []
    functions = [r for r in web_api_requests(fresh_emulator) if "CalculateRollupField" in r["path"]]
    assert functions == []


def test_invoke_function_messages_and_message_schema_data_sources(runtime: Runtime, connection: Connection) -> None:
    unbound = {o["value"]: o for o in runtime.data_source("messages", {}, connection)}
    assert {"WinOpportunity", "RetrieveVersion", "CalculateRollupField", "sample_ApplyDiscount"} <= set(unbound)
    assert "QualifyLead" not in unbound
    functions = runtime.data_source("messages", {"kind": "function"}, connection)
    assert all(o["kind"] == "function" for o in functions)
    lead = [o["value"] for o in runtime.data_source("messages", {"table": "lead", "kind": "action"}, connection)]
    assert lead == ["QualifyLead"]
    [schema] = runtime.data_source("message_schema", {"name": "sample_ApplyDiscount"}, connection)
    Draft202012Validator.check_schema(schema)
    good = {"Amount": 5, "Percent": 1, "Customer": {"table": "account", "key": {"accountnumber": "A-1"}}}
    assert Draft202012Validator(schema).is_valid(good)
    assert not Draft202012Validator(schema).is_valid({"Amount": 5})
    assert schema["required"] == ["Amount", "Percent"]
    assert schema["properties"]["Codes"]["type"] == "array"
    assert schema["properties"]["Customer"]["properties"]["table"]["const"] == "account"
    [qualify] = runtime.data_source("message_schema", {"name": "QualifyLead", "table": "lead"}, connection)
    assert set(qualify["required"]) == {"CreateAccount", "CreateContact", "CreateOpportunity", "Status"}
    with pytest.raises(InputError):
        runtime.data_source("message_schema", {"name": "QualifyLead"}, connection)


def _custom_api(runtime: Runtime, connection: Connection, name: str, binding: int, function: bool) -> None:
    fields = {"uniquename": name, "name": name, "bindingtype": binding, "isfunction": function}
    if binding:
        fields["boundentitylogicalname"] = "account"
    made = runtime.run_action("create_entity", {"table": "customapi", "fields": fields}, connection)
    link = {"table": "customapi", "id": made["id"]}
    param = {"uniquename": "Label", "name": "Label", "type": 10, "isoptional": False, "customapiid": link}
    runtime.run_action("create_entity", {"table": "customapirequestparameter", "fields": param}, connection)
    prop = {"uniquename": "Echo", "name": "Echo", "type": 10, "customapiid": link}
    runtime.run_action("create_entity", {"table": "customapiresponseproperty", "fields": prop}, connection)


def test_invoke_function_bound_to_a_collection_and_to_a_row(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    _custom_api(runtime, connection, "new_CountThem", 2, True)
    _custom_api(runtime, connection, "new_Describe", 1, True)
    account = runtime.run_action("create_entity", {"table": "account", "fields": {"name": "Row"}}, connection)["id"]
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "invoke_function", {"name": "new_CountThem", "table": "accounts", "parameters": {"Label": "a b"}}, connection
    )
    assert out == {"name": "new_CountThem", "return_type": "mscrm.new_CountThemResponse", "result": {"Echo": None}}
    inputs = {"name": "new_Describe", "table": "account", "id": account, "parameters": {"Label": "x"}}
    assert runtime.run_action("invoke_function", inputs, connection)["result"] == {"Echo": None}
    paths = [r["path"] for r in web_api_requests(fresh_emulator) if "new_" in r["path"]]
    assert paths[0].startswith("/api/data/v9.2/accounts/Microsoft.Dynamics.CRM.new_CountThem(Label=@p1)")
    assert paths[1].startswith(f"/api/data/v9.2/accounts({account})/Microsoft.Dynamics.CRM.new_Describe(Label=@p1)")
    with pytest.raises(InputError) as info:  # bound to the collection: no row
        runtime.run_action("invoke_function", {**inputs, "name": "new_CountThem"}, connection)
    assert [p.path for p in info.value.problems] == ["$.table"]
