"""``run_batch_operations`` against the emulator's ``$batch`` over a real socket."""

from __future__ import annotations

from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.e2e.conftest import web_api_requests

MISSING = "00000000-0000-0000-0000-0000000000ee"


def count(connection: Connection, entity_set: str) -> int:
    body = connection.client.get_json(f"{entity_set}?$count=true&$top=1")
    return int(body["@odata.count"])


def names(connection: Connection, entity_set: str, column: str) -> list[str]:
    body = connection.client.get_json(f"{entity_set}?$select={column}")
    return sorted(str(r[column]) for r in body["value"])


def test_run_batch_operations_1000_with_two_bad_rows(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    ops: list[dict[str, Any]] = [
        {"table": "account", "action": "create", "fields": {"name": f"A{i:04d}"}} for i in range(1000)
    ]
    ops[137] = {"table": "account", "action": "update", "id": MISSING, "fields": {"name": "nobody"}}
    # A second failure only the server can see (a value the column cannot hold is now refused before sending:
    # tests/e2e/test_hostile_inputs.py::test_a_batch_with_a_value_its_column_cannot_hold_sends_nothing).
    ops[862] = {"table": "account", "action": "delete", "id": MISSING}
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action("run_batch_operations", {"operations": ops}, connection)
    assert [r["index"] for r in out["results"]] == list(range(1000))
    failed = [r for r in out["results"] if r["status"] != "succeeded"]
    assert [r["index"] for r in failed] == [137, 862], failed
    assert failed[0]["http_status"] == 404 and failed[0]["code"] == "0x80040217"
    assert failed[1]["http_status"] == 404 and failed[1]["code"] == "0x80040217", failed[1]
    assert (out["succeeded"], out["failed"]) == (998, 2)
    assert all(r["id"] for r in out["results"] if r["status"] == "succeeded")
    assert count(connection, "accounts") == 998
    batches = [r for r in web_api_requests(fresh_emulator) if r["path"].endswith("/$batch")]
    assert len(batches) == 1


def test_run_batch_operations_changeset_with_a_bad_row_lands_nothing(runtime: Runtime, connection: Connection) -> None:
    ops = [
        {"table": "account", "action": "create", "fields": {"name": "Parent"}, "changeset": "c1"},
        {
            "table": "contact",
            "action": "create",
            "fields": {"lastname": "Kid", "parentcustomerid": {"operation": 0}},
            "changeset": "c1",
        },
        {"table": "account", "action": "update", "id": MISSING, "fields": {"name": "x"}, "changeset": "c1"},
        {"table": "account", "action": "create", "fields": {"name": "Outside"}},
    ]
    out = runtime.run_action("run_batch_operations", {"operations": ops}, connection)
    assert [r["status"] for r in out["results"]] == ["rolled_back", "rolled_back", "failed", "succeeded"]
    assert out["results"][2]["code"] == "0x80040217"
    assert names(connection, "accounts", "name") == ["Outside"]
    assert count(connection, "contacts") == 0


def test_run_batch_operations_changeset_reference_get_and_upsert(runtime: Runtime, connection: Connection) -> None:
    ops = [
        {"table": "account", "action": "create", "fields": {"name": "Parent"}, "changeset": "c1"},
        {
            "table": "contact",
            "action": "create",
            "fields": {"lastname": "Kid", "parentcustomerid": {"operation": 0}},
            "changeset": "c1",
            "return_record": True,
        },
    ]
    out = runtime.run_action("run_batch_operations", {"operations": ops}, connection)
    parent, kid = out["results"]
    assert parent["status"] == kid["status"] == "succeeded", out
    assert kid["record"]["_parentcustomerid_value"] == parent["id"]
    follow = [
        {"table": "contact", "action": "get", "id": kid["id"], "select": ["lastname", "parentcustomerid"]},
        {"table": "account", "action": "upsert", "id": parent["id"], "fields": {"name": "Renamed"}},
        {"table": "account", "action": "upsert", "id": MISSING, "fields": {"name": "New"}},
        {"table": "contact", "action": "delete", "id": kid["id"]},
    ]
    out = runtime.run_action("run_batch_operations", {"operations": follow}, connection)
    get, renamed, new, deleted = out["results"]
    assert get["record"]["lastname"] == "Kid" and get["record"]["_parentcustomerid_value"] == parent["id"]
    assert (renamed["operation"], new["operation"], new["id"]) == ("updated", "created", MISSING)
    assert deleted["status"] == "succeeded"
    assert names(connection, "accounts", "name") == ["New", "Renamed"]


def test_run_batch_operations_stop_on_error(runtime: Runtime, connection: Connection) -> None:
    ops = [
        {"table": "account", "action": "create", "fields": {"name": "First"}},
        {"table": "account", "action": "delete", "id": MISSING},
        {"table": "account", "action": "create", "fields": {"name": "Never"}},
    ]
    out = runtime.run_action("run_batch_operations", {"operations": ops, "continue_on_error": False}, connection)
    assert [r["status"] for r in out["results"]] == ["succeeded", "failed", "not_run"]
    assert names(connection, "accounts", "name") == ["First"]


def test_run_batch_operations_refused_before_any_request(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    fresh_emulator.admin.clear_requests()
    create = {"table": "account", "action": "create", "fields": {"name": "A"}}
    for inputs in (
        {"operations": [create] * 1001},
        {"operations": [{"table": "account", "action": "merge", "id": MISSING}]},
        {"operations": [{"table": "account", "action": "get", "id": MISSING, "changeset": "c"}]},
    ):
        with pytest.raises(InputError) as info:
            runtime.run_action("run_batch_operations", inputs, connection)
        assert info.value.exit_code == 2
    writes = [r for r in web_api_requests(fresh_emulator) if r["method"] != "GET"]
    assert writes == []
