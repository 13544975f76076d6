"""``run_batch_operations`` against a scripted ``$batch`` endpoint: what is sent, and how answers map to operations."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.multipart import (
    BatchOperation,
    ChangeSet,
    ChangeSetResponse,
    OperationResponse,
    decode_batch,
    encode_batch_response,
)
from connector.runtime import Runtime
from tests.records.conftest import API, FakeDataverse

ACCOUNT = "aaaaaaaa-0000-0000-0000-000000000001"
CONTACT = "cccccccc-0000-0000-0000-000000000002"
ERROR_404 = b'{"error":{"code":"0x80040217","message":"account With Id = 9 Does Not Exist"}}'
ERROR_400 = b'{"error":{"code":"0x80044331","message":"A validation error occurred."}}'


def created(table: str, guid: str, cid: str | None = None) -> OperationResponse:
    url = f"{API}/{table}({guid})"
    return OperationResponse(204, "No Content", (("OData-EntityId", url), ("Location", url)), b"", cid)


def batch_answer(
    items: list[OperationResponse | ChangeSetResponse], status: int = 200
) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/data/v9.2/$batch"
        content_type, body = encode_batch_response(items)
        return httpx.Response(status, content=body, headers={"Content-Type": content_type, "OData-Version": "4.0"})

    return respond


def sent_items(request: httpx.Request) -> list[BatchOperation | ChangeSet]:
    return decode_batch(request.headers["Content-Type"], request.content)


def test_run_batch_operations_sends_one_batch_and_maps_every_answer(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    fake.respond = batch_answer(
        [
            created("accounts", ACCOUNT),
            OperationResponse(204, "No Content", (("OData-EntityId", f"{API}/accounts(accountnumber='A-1')"),)),
            OperationResponse(201, "Created", (), json.dumps({"accountid": ACCOUNT}).encode()),
            OperationResponse(404, "Not Found", (("Content-Type", "application/json"),), ERROR_404),
            OperationResponse(
                200, "OK", (), json.dumps({"@odata.context": "x", "name": "N", "accountid": ACCOUNT}).encode()
            ),
        ]
    )
    ops = [
        {"table": "account", "action": "create", "fields": {"name": "A", "industrycode": "Agriculture"}},
        {"table": "account", "action": "update", "key": {"accountnumber": "A-1"}, "fields": {"name": "B"}},
        {
            "table": "account",
            "action": "upsert",
            "key": {"accountnumber": "A-2"},
            "fields": {"name": "C", "accountnumber": "A-2"},
        },
        {"table": "account", "action": "delete", "id": "99999999-0000-0000-0000-000000000009"},
        {"table": "accounts", "action": "get", "id": ACCOUNT, "select": ["name"]},
    ]
    out = runtime.run_action("run_batch_operations", {"operations": ops}, conn)
    (request,) = fake.data
    assert request.method == "POST" and request.headers["Prefer"] == "odata.continue-on-error"
    items = sent_items(request)
    assert all(isinstance(i, BatchOperation) for i in items)
    create, update, upsert, delete, get = items  # type: ignore[misc]
    assert (create.method, create.url) == ("POST", "/api/data/v9.2/accounts")
    assert json.loads(create.body) == {"name": "A", "industrycode": 2}
    assert ("Content-Type", "application/json; type=entry") in create.headers
    assert (update.method, update.url) == ("PATCH", "/api/data/v9.2/accounts(accountnumber='A-1')")
    assert ("If-Match", "*") in update.headers
    assert upsert.url == "/api/data/v9.2/accounts(accountnumber='A-2')?$select=accountid"
    assert json.loads(upsert.body) == {"name": "C"}  # key columns are not repeated
    assert ("Prefer", "return=representation") in upsert.headers
    assert (delete.method, delete.body) == ("DELETE", b"")
    assert get.url == f"/api/data/v9.2/accounts({ACCOUNT})?$select=name"
    results = out["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == ["succeeded", "succeeded", "succeeded", "failed", "succeeded"]
    assert results[0]["id"] == ACCOUNT and results[0]["record"] is None
    assert results[2]["operation"] == "created" and results[2]["id"] == ACCOUNT
    assert (results[3]["http_status"], results[3]["code"]) == (404, "0x80040217")
    assert results[3]["message"] == "account With Id = 9 Does Not Exist"
    assert results[4]["record"] == {"name": "N", "accountid": ACCOUNT}
    assert (out["succeeded"], out["failed"], out["total"]) == (4, 1, 5)


def test_run_batch_operations_changeset_reference_and_rollback(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    # reference 6.4: a failed change set answers with the failing operation only, with its Content-ID
    failing = OperationResponse(400, "Bad Request", (("Content-Type", "application/json"),), ERROR_400, "2")
    fake.respond = batch_answer([ChangeSetResponse((failing,)), created("contacts", CONTACT)])
    ops = [
        {"table": "account", "action": "create", "fields": {"name": "A"}, "changeset": "cs"},
        {
            "table": "contact",
            "action": "create",
            "fields": {"lastname": "L", "parentcustomerid": {"operation": 0}},
            "changeset": "cs",
        },
        {"table": "contact", "action": "create", "fields": {"lastname": "Alone"}},
    ]
    out = runtime.run_action("run_batch_operations", {"operations": ops}, conn)
    changeset, alone = sent_items(fake.data[0])
    assert isinstance(changeset, ChangeSet) and isinstance(alone, BatchOperation)
    assert [o.content_id for o in changeset.operations] == ["1", "2"]
    assert json.loads(changeset.operations[1].body) == {"lastname": "L", "parentcustomerid_account@odata.bind": "$1"}
    first, second, third = out["results"]
    assert (first["status"], first["id"], first["code"]) == ("rolled_back", None, "0x80044331")
    assert "operation 1" in first["message"]
    assert (second["status"], second["http_status"], second["code"]) == ("failed", 400, "0x80044331")
    assert (third["status"], third["id"]) == ("succeeded", CONTACT)
    assert (out["succeeded"], out["failed"], out["rolled_back"]) == (1, 1, 1)


def test_run_batch_operations_stop_on_error_reports_the_rest_not_run(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    """Without continue-on-error Dataverse answers the failing status with the parts up to the failure."""
    error = OperationResponse(404, "Not Found", (("Content-Type", "application/json"),), ERROR_404)
    fake.respond = batch_answer([created("accounts", ACCOUNT), error], status=404)
    ops = [{"table": "account", "action": "create", "fields": {"name": "A"}}]
    ops += [{"table": "account", "action": "delete", "id": ACCOUNT} for _ in range(3)]
    out = runtime.run_action("run_batch_operations", {"operations": ops, "continue_on_error": False}, conn)
    assert "Prefer" not in fake.data[0].headers
    assert [r["status"] for r in out["results"]] == ["succeeded", "failed", "not_run", "not_run"]
    assert out["results"][1]["code"] == "0x80040217" and out["not_run"] == 2


def test_run_batch_operations_unsafe_key_is_resolved_before_the_batch(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"value": []})
        return batch_answer([OperationResponse(204, "No Content")])(request)

    fake.respond = respond
    ops = [
        {"table": "account", "action": "delete", "key": {"accountnumber": "A/1"}},
        {"table": "account", "action": "delete", "id": ACCOUNT},
    ]
    out = runtime.run_action("run_batch_operations", {"operations": ops}, conn)
    lookup, batch = fake.data
    assert lookup.method == "GET" and "accountnumber eq 'A/1'" in lookup.url.params["$filter"]
    (only,) = sent_items(batch)
    assert isinstance(only, BatchOperation) and only.url.endswith(f"accounts({ACCOUNT})")
    assert [r["status"] for r in out["results"]] == ["failed", "succeeded"]
    assert out["results"][0]["http_status"] == 404


def _refused(runtime: Runtime, conn: Connection, inputs: Any) -> list[str]:
    with pytest.raises(InputError) as info:
        runtime.run_action("run_batch_operations", inputs, conn)
    assert info.value.exit_code == 2
    return [str(p) for p in info.value.problems]


def test_run_batch_operations_refuses_bad_input_before_any_request(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    create = {"table": "account", "action": "create", "fields": {"name": "A"}}
    assert any(
        "$.operations: the value is too long" in p for p in _refused(runtime, conn, {"operations": [create] * 1001})
    )
    assert any(
        "action" in p for p in _refused(runtime, conn, {"operations": [{"table": "account", "action": "merge"}]})
    )
    problems = _refused(
        runtime,
        conn,
        {
            "operations": [
                {"table": "account", "action": "get", "id": ACCOUNT, "changeset": "a"},
                {"table": "account", "action": "create", "fields": {"name": "x"}, "changeset": "b"},
                {"table": "contact", "action": "create", "fields": {"parentcustomerid": {"operation": 1}}},
                {"table": "account", "action": "create", "fields": {"nmae": "x"}, "changeset": "b"},
                {"table": "account", "action": "update", "fields": {"name": "x"}},
                {
                    "table": "contact",
                    "action": "create",
                    "fields": {"parentcustomerid": {"operation": 9}},
                    "changeset": "b",
                },
                {"table": "account", "action": "delete", "key": {"name": "x"}},
            ]
        },
    )
    text = "\n".join(problems)
    assert "$.operations[0].changeset: Dataverse does not allow a get inside a change set" in text
    assert "$.operations[2].fields.parentcustomerid: a reference to another operation's row works only inside" in text
    assert "$.operations[3].changeset: the operations of change set 'b' must be next to each other" in text
    assert "$.operations[3].fields.nmae: unknown column 'nmae'" in text
    assert "$.operations[4].id: update needs the row's id or an alternate key" in text
    assert "$.operations[5].fields.parentcustomerid: operation 9 is not an earlier operation" in text
    assert "$.operations[6].key" in text
    assert fake.data == []  # metadata reads only
