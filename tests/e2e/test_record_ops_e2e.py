"""set_state, assign_entity and merge_entities against the emulator on a real socket, and their refusals before any
write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from tests.e2e.conftest import web_api_requests
from tests.e2e.test_records_e2e import create_key, data_writes


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(key_activation_s=0) as handle:
        yield handle


def create(runtime: Runtime, connection: Connection, table: str, **fields: Any) -> str:
    return str(runtime.run_action("create_entity", {"table": table, "fields": fields}, connection)["id"])


def read(runtime: Runtime, connection: Connection, table: str, id_: str, *select: str) -> dict[str, Any]:
    got = runtime.run_action("get_entity", {"table": table, "id": id_, "select": list(select)}, connection)
    return dict(got["record"])


def test_set_state_by_labels_with_the_state_default_reason(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    row = create(runtime, connection, "account", name="Contoso")
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action("set_state", {"table": "account", "id": row, "state": "inactive"}, connection)
    assert out == {"table": "account", "id": row, "state": 1, "status": 2}
    [patch] = data_writes(fresh_emulator)
    assert patch["method"] == "PATCH" and patch["headers"]["if-match"] == "*"
    assert read(runtime, connection, "account", row, "statecode", "statuscode") | {"@odata.etag": None} == {
        "@odata.etag": None,
        "accountid": row,
        "statecode": 1,
        "statuscode": 2,
    }


def test_set_state_lead_by_key_with_a_reason_of_the_state(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    create_key(connection, "lead", "lead_email", ["emailaddress1"])
    lead = create(runtime, connection, "lead", lastname="Lovelace", emailaddress1="ada@example.com")
    out = runtime.run_action(
        "set_state", {"table": "lead", "key": {"emailaddress1": "ada@example.com"}, "state": 2, "status": 6}, connection
    )
    assert (out["id"], out["state"], out["status"]) == (lead, 2, 6)
    assert read(runtime, connection, "lead", lead, "statecode", "statuscode")["statuscode"] == 6


BAD_STATES = [
    pytest.param({"state": "Active", "status": "Inactive"}, "$.status", "belongs to status 'Inactive'", id="mismatch"),
    pytest.param({"state": "Closed"}, "$.state", "valid: 'Active' (0), 'Inactive' (1)", id="unknown-state"),
    pytest.param({"state": 0, "status": 99}, "$.status", "not a status reason", id="unknown-status"),
]


@pytest.mark.parametrize(("inputs", "field", "says"), BAD_STATES)
def test_set_state_refuses_a_reason_of_another_state_before_sending(
    runtime: Runtime,
    connection: Connection,
    fresh_emulator: EmulatorHandle,
    inputs: dict[str, Any],
    field: str,
    says: str,
) -> None:
    row = create(runtime, connection, "account", name="Contoso")
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as caught:
        runtime.run_action("set_state", {"table": "account", "id": row, **inputs}, connection)
    assert field in str(caught.value) and says in str(caught.value)
    assert data_writes(fresh_emulator) == []


def test_assign_entity_to_a_team_by_key_and_to_a_user_by_id(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    me = connection.client.whoami()
    [team] = fresh_emulator.admin.seed(
        "team", [{"name": "Sales", "businessunitid": me.business_unit_id, "teamtype": 0}]
    )
    [ada] = fresh_emulator.admin.seed(
        "systemuser",
        [
            {
                "fullname": "Ada Lovelace",
                "azureactivedirectoryobjectid": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b",
                "businessunitid": me.business_unit_id,
            }
        ],
    )
    create_key(connection, "team", "team_name", ["name"])
    row = create(runtime, connection, "account", name="Contoso")
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "assign_entity",
        {"table": "account", "id": row, "owner": {"table": "team", "key": {"name": "Sales"}}},
        connection,
    )
    assert out == {"table": "account", "id": row, "owner_table": "team", "owner_id": team}
    [patch] = data_writes(fresh_emulator)
    assert patch["path"].endswith(f"/accounts({row})")
    got = read(runtime, connection, "account", row, "ownerid", "owningteam")
    assert (got["_ownerid_value"], got["_owningteam_value"]) == (team, team)
    runtime.run_action(
        "assign_entity", {"table": "account", "id": row, "owner": {"table": "systemuser", "id": ada}}, connection
    )
    assert read(runtime, connection, "account", row, "ownerid")["_ownerid_value"] == ada


BAD_OWNERS = [
    pytest.param(
        {"owner": {"table": "contact", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"}}, "$.owner.table", id="contact"
    ),
    pytest.param({"owner": {"table": "team", "key": {"nosuch": "x"}}}, "$.owner.key", id="bad-key"),
]


@pytest.mark.parametrize(("inputs", "field"), BAD_OWNERS)
def test_assign_entity_refuses_an_owner_that_is_not_a_user_or_team(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle, inputs: dict[str, Any], field: str
) -> None:
    row = create(runtime, connection, "account", name="Contoso")
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as caught:
        runtime.run_action("assign_entity", {"table": "account", "id": row, **inputs}, connection)
    assert field in str(caught.value)
    assert data_writes(fresh_emulator) == []


def test_merge_entities_moves_children_updates_target_and_deactivates_subordinate(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    target = create(runtime, connection, "account", name="Contoso")
    duplicate = create(runtime, connection, "account", name="Contoso Ltd", accountnumber="A-1001")
    child = create(
        runtime, connection, "contact", lastname="Ada", parentcustomerid={"table": "account", "id": duplicate}
    )
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "merge_entities",
        {"table": "account", "id": target, "subordinate": {"id": duplicate}, "update_content": {"telephone1": "555"}},
        connection,
    )
    assert out == {"table": "account", "id": target, "subordinate_id": duplicate}
    [post] = data_writes(fresh_emulator)
    assert post["method"] == "POST" and post["path"].endswith("/Merge")
    assert read(runtime, connection, "account", target, "telephone1", "statecode")["telephone1"] == "555"
    sub = read(runtime, connection, "account", duplicate, "statecode", "statuscode")
    assert (sub["statecode"], sub["statuscode"]) == (1, 2)
    assert read(runtime, connection, "contact", child, "parentcustomerid")["_parentcustomerid_value"] == target


BAD_MERGES = [
    pytest.param("opportunity", {"subordinate": {"id": "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}}, "$.table", id="table"),
    pytest.param("account", {"subordinate": {"id": "<self>"}}, "$.subordinate.id", id="same-row"),
    pytest.param("account", {"subordinate": {"key": {"nosuch": "1"}}}, "$.subordinate.key", id="bad-key"),
    pytest.param(
        "account",
        {"subordinate": {"id": "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}, "update_content": {"nosuch": 1}},
        "$.update_content",
        id="bad-column",
    ),
]


@pytest.mark.parametrize(("table", "inputs", "field"), BAD_MERGES)
def test_merge_entities_refuses_bad_input_before_sending(
    runtime: Runtime,
    connection: Connection,
    fresh_emulator: EmulatorHandle,
    table: str,
    inputs: dict[str, Any],
    field: str,
) -> None:
    target = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
    if inputs["subordinate"].get("id") == "<self>":
        inputs = {"subordinate": {"id": target}}
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as caught:
        runtime.run_action("merge_entities", {"table": table, "id": target, **inputs}, connection)
    assert field in str(caught.value)
    assert [r for r in web_api_requests(fresh_emulator) if r["method"] != "GET"] == []


def test_merge_entities_and_invoke_action_reach_the_same_csdl_listed_merge(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    target = create(runtime, connection, "account", name="Contoso")
    duplicate = create(runtime, connection, "account", name="Contoso Ltd")
    parameters = {
        "Target": {"table": "account", "id": target},
        "Subordinate": {"table": "account", "id": duplicate},
        "PerformParentingChecks": False,
    }
    out = runtime.run_action("invoke_action", {"name": "Merge", "parameters": parameters}, connection)
    assert out == {"name": "Merge", "return_type": None, "result": None}
    assert read(runtime, connection, "account", duplicate, "statecode")["statecode"] == 1
