"""Webhook steps raised from every write path: ``$batch`` (in and out of change sets), the bulk messages, the legacy
messages an update raises (Assign, SetState), and none from a write that is rolled back.

Steps are registered through the connector's subscribe, deliveries go to a small receiver on a real socket, and the
emulator's drain call says when asynchronous deliveries are done, so nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.connection import Connection
from connector.runtime import Runtime
from connector.webhook_delivery import WebhookRequest
from dataverse_emulator.testing import EmulatorHandle, FakeClock, serve_asgi
from tests.conftest import SENTINELS

from .test_batch import batch_body, changeset, op, parse, send

KEY = SENTINELS["webhook_key"]
API = "/api/data/v9.2"


class Receiver:
    def __init__(self) -> None:
        self.url = ""
        self.received: list[WebhookRequest] = []


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    async def hook(request: Request) -> Response:
        body = await request.body()
        state.received.append(WebhookRequest.build(request.method, str(request.url), request.headers.items(), body))
        return Response(status_code=200)

    with serve_asgi(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as base:
        state.url = f"{base}/hook"
        yield state


@pytest.fixture
def hooks(emulator: EmulatorHandle, receiver: Receiver) -> Iterator[Any]:
    """A function subscribing steps on a table (asynchronous unless told); the receiver starts empty."""
    receiver.received.clear()
    conn = Connection.from_config(emulator.connection_config())
    runtime = Runtime(load_entrypoints=False, validate_output=True)

    def subscribe(table: str, *messages: str, mode: str = "asynchronous") -> None:
        cfg = {"table": table, "secret": KEY, "messages": list(messages), "mode": mode}
        runtime.subscribe_trigger("webhook", cfg, conn, receiver.url)

    try:
        yield subscribe
    finally:
        conn.close()


def delivered(emulator: EmulatorHandle) -> list[tuple[str, str]]:
    """(message, table) of every delivery once the background ones have finished."""
    return [(d["message"], d["table"]) for d in emulator.admin.drain_webhooks()]


def events(receiver: Receiver) -> list[dict[str, Any]]:
    runtime = Runtime(load_entrypoints=False, validate_output=True)
    cfg = {"table": "account", "secret": KEY, "messages": ["Create", "Update", "Delete", "Assign", "SetState"]}
    out = [runtime.handle_trigger("webhook", r, cfg) for r in receiver.received]
    return [e for e in out if e is not None]


# -- $batch ---------------------------------------------------------------------------------------------------------


def test_batch_writes_raise_steps_in_and_out_of_change_sets(
    api: httpx.Client, emulator: EmulatorHandle, hooks: Any
) -> None:
    hooks("account", "Create", "Update")
    body = batch_body(
        op("POST", f"{API}/accounts", {"name": "outside"}),
        changeset(
            op("POST", f"{API}/accounts", {"name": "inside"}, cid="1"),
            op("PATCH", "$1", {"name": "inside, renamed"}, cid="2"),
        ),
    )
    resp = send(api, body)
    assert resp.status_code == 200 and [p.status for p in parse(resp)] == [204, 204, 204]
    assert sorted(delivered(emulator)) == [("Create", "account"), ("Create", "account"), ("Update", "account")]


def test_a_rolled_back_change_set_raises_no_step(
    api: httpx.Client, emulator: EmulatorHandle, hooks: Any, receiver: Receiver
) -> None:
    hooks("account", "Create")
    body = batch_body(
        changeset(
            op("POST", f"{API}/accounts", {"name": "rolled back"}, cid="1"),
            op("POST", f"{API}/accounts", {"name": "x" * 200}, cid="2"),  # over MaxLength 160: the set fails
        ),
        changeset(op("POST", f"{API}/accounts", {"name": "committed"}, cid="3"), boundary="changeset_C2"),
        op("POST", f"{API}/accounts", {"nosuchcolumn": 1}),  # a stand-alone operation that fails
    )
    resp = send(api, body, Prefer="odata.continue-on-error")
    assert [p.status for p in parse(resp)] == [400, 204, 400]
    assert delivered(emulator) == [("Create", "account")]
    assert [e["changed_attributes"]["name"] for e in events(receiver)] == ["committed"]
    names = [r["name"] for r in api.get("accounts?$select=name").json()["value"]]
    assert names == ["committed"]


def test_a_refused_request_raises_no_asynchronous_step(api: httpx.Client, emulator: EmulatorHandle, hooks: Any) -> None:
    hooks("account", "Create")
    targets = [
        {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "first"},
        {"@odata.type": "Microsoft.Dynamics.CRM.account", "name": "y" * 200},
    ]
    resp = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert resp.status_code == 400
    assert delivered(emulator) == []
    assert api.get("accounts?$select=name").json()["value"] == []


# -- bulk messages --------------------------------------------------------------------------------------------------


def test_bulk_messages_raise_the_single_write_steps(
    api: httpx.Client, emulator: EmulatorHandle, hooks: Any, receiver: Receiver
) -> None:
    hooks("account", "Create", "Update", "Delete")
    t = "Microsoft.Dynamics.CRM.account"
    created = api.post(
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": t, "name": "a"}, {"@odata.type": t, "name": "b"}]},
    )
    ids = created.json()["Ids"]
    assert delivered(emulator) == [("Create", "account")] * 2
    api.post(
        "accounts/Microsoft.Dynamics.CRM.UpdateMultiple",
        json={"Targets": [{"@odata.type": t, "accountid": ids[0], "name": "a2"}]},
    ).raise_for_status()
    assert delivered(emulator)[2:] == [("Update", "account")]
    new_id = "6f1d3c52-5d7e-4f7a-9a4b-0c0d0e0f1a2b"
    api.post(
        "accounts/Microsoft.Dynamics.CRM.UpsertMultiple",
        json={
            "Targets": [
                {"@odata.type": t, "accountid": ids[1], "name": "b2"},
                {"@odata.type": t, "accountid": new_id, "name": "c"},
            ]
        },
    ).raise_for_status()
    assert sorted(delivered(emulator)[3:]) == [("Create", "account"), ("Update", "account")]  # one request, in parallel
    query = {
        "EntityName": "account",
        "Criteria": {
            "FilterOperator": "And",
            "Conditions": [{"AttributeName": "accountid", "Operator": "In", "Values": [{"Value": ids[0]}]}],
        },
    }
    api.post("BulkDelete", json={"QuerySet": [query], "JobName": "clean"}).raise_for_status()
    assert delivered(emulator)[5:] == [("Delete", "account")]
    by_message = [(e["message"], e["record_id"]) for e in events(receiver)]
    assert sorted(by_message[:2]) == sorted([("Create", ids[0]), ("Create", ids[1])])
    assert by_message[2] == ("Update", ids[0])
    assert sorted(by_message[3:5]) == sorted([("Update", ids[1]), ("Create", new_id)])
    assert by_message[5] == ("Delete", ids[0])


def test_upsert_multiple_by_alternate_key_raises_one_step_per_record_and_none_for_another_tables_step(
    api: httpx.Client, emulator: EmulatorHandle, hooks: Any, receiver: Receiver, clock: FakeClock
) -> None:
    key = {"SchemaName": "ev_accountnumber", "KeyAttributes": ["accountnumber"]}
    assert api.post("EntityDefinitions(LogicalName='account')/Keys", json=key).status_code in (200, 201, 204)
    clock.advance(5)
    hooks("contact", "Create", "Update")
    t = "Microsoft.Dynamics.CRM.account"
    api.post(
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": t, "name": "ev-0", "accountnumber": "EV0"}]},
    ).raise_for_status()
    assert delivered(emulator) == []  # a step on contact is none of account's
    hooks("account", "Create", "Update")
    api.post(
        "accounts/Microsoft.Dynamics.CRM.UpsertMultiple",
        json={
            "Targets": [
                {"@odata.type": t, "@odata.id": "accounts(accountnumber='EV0')", "name": "ev-0b"},
                {"@odata.type": t, "@odata.id": "accounts(accountnumber='EV1')", "name": "ev-1"},
                {"@odata.type": t, "@odata.id": "accounts(accountnumber='EV2')", "name": "ev-2"},
            ]
        },
    ).raise_for_status()
    assert sorted(delivered(emulator)) == [("Create", "account"), ("Create", "account"), ("Update", "account")]
    got = sorted((e["message"], e["record_id"]) for e in events(receiver))
    ids = {r["accountnumber"]: r["accountid"] for r in api.get("accounts?$select=accountnumber").json()["value"]}
    assert got == sorted([("Update", ids["EV0"]), ("Create", ids["EV1"]), ("Create", ids["EV2"])])


# -- Assign and SetState ----------------------------------------------------------------------------------------------


def test_a_state_change_raises_update_twice_and_set_state(
    api: httpx.Client, emulator: EmulatorHandle, hooks: Any, receiver: Receiver
) -> None:
    rid = emulator.admin.seed("account", [{"name": "stateful"}])[0]
    hooks("account", "Update", "SetState", mode="synchronous")  # delivered one after the other, in raising order
    api.patch(f"accounts({rid})", json={"name": "closing", "statecode": 1}).raise_for_status()
    assert delivered(emulator) == [("Update", "account"), ("Update", "account"), ("SetState", "account")]
    changed = [(e["message"], e["changed_attributes"]) for e in events(receiver)]
    assert changed[0][0] == "Update" and "name" in changed[0][1] and "statecode" not in changed[0][1]
    assert changed[1][0] == "Update" and changed[1][1].get("statecode") == 1 and "name" not in changed[1][1]
    assert changed[2] == ("SetState", {"statecode": 1, "statuscode": 2})


def test_an_owner_change_raises_assign(
    api: httpx.Client, emulator: EmulatorHandle, hooks: Any, receiver: Receiver
) -> None:
    rid = emulator.admin.seed("account", [{"name": "owned"}])[0]
    team = api.post("teams", json={"name": "Owners"}, headers={"Prefer": "return=representation"}).json()["teamid"]
    hooks("account", "Update", "Assign", mode="synchronous")
    api.patch(f"accounts({rid})", json={"name": "renamed"}).raise_for_status()
    api.patch(f"accounts({rid})", json={"ownerid@odata.bind": f"/teams({team})"}).raise_for_status()
    assert delivered(emulator) == [("Update", "account"), ("Update", "account"), ("Assign", "account")]
    assign = events(receiver)[2]
    assert assign["message"] == "Assign" and assign["record_id"] == rid
    assert assign["changed_attributes"]["ownerid"]["id"] == team
    assert assign["changed_attributes"]["ownerid"]["table"] == "team"


# -- tables created at runtime ----------------------------------------------------------------------------------------


def test_a_table_created_at_runtime_gets_message_filters(
    api: httpx.Client, emulator: EmulatorHandle, hooks: Any
) -> None:
    body = table_body("new_Widget")
    if api.get("EntityDefinitions(LogicalName='new_widget')?$select=LogicalName").status_code != 200:
        assert api.post("EntityDefinitions", json=body).status_code == 204
    filters = api.get("sdkmessagefilters?$select=name&$filter=primaryobjecttypecode eq 'new_widget'").json()["value"]
    assert {"Create new_widget", "Update new_widget", "Delete new_widget"} <= {f["name"] for f in filters}
    hooks("new_widget", "Create")
    api.post("new_widgets", json={"new_name": "w"}).raise_for_status()
    assert delivered(emulator) == [("Create", "new_widget")]


def test_a_deleted_table_takes_its_message_filters_along(api: httpx.Client) -> None:
    assert api.post("EntityDefinitions", json=table_body("new_Gadget")).status_code == 204
    query = "sdkmessagefilters?$select=name&$filter=primaryobjecttypecode eq 'new_gadget'"
    assert len(api.get(query).json()["value"]) >= 3
    assert api.delete("EntityDefinitions(LogicalName='new_gadget')").status_code == 204
    assert api.get(query).json()["value"] == []


def table_body(schema: str) -> dict[str, Any]:
    return {
        "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
        "SchemaName": schema,
        "DisplayName": {"LocalizedLabels": [{"Label": "Widget", "LanguageCode": 1033}]},
        "DisplayCollectionName": {"LocalizedLabels": [{"Label": "Widgets", "LanguageCode": 1033}]},
        "OwnershipType": "UserOwned",
        "HasActivities": False,
        "HasNotes": False,
        "IsActivity": False,
        "Attributes": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                "SchemaName": "new_Name",
                "IsPrimaryName": True,
                "MaxLength": 100,
                "DisplayName": {"LocalizedLabels": [{"Label": "Name", "LanguageCode": 1033}]},
                "RequiredLevel": {"Value": "None"},
            }
        ],
    }
