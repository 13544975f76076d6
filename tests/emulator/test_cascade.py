"""Row deletes follow each relationship's cascade configuration: Cascade deletes the children, RemoveLink clears their
lookup, Restrict refuses with 0x80040227 and changes nothing; the configuration shows in the relationship metadata,
is settable when a relationship is created, and the seeded relationships carry theirs."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.connection import Connection
from connector.runtime import Runtime
from connector.webhook_delivery import WebhookRequest
from dataverse_emulator.testing import EmulatorHandle, serve_asgi
from tests.conftest import SENTINELS

from .conftest import created_id, error_of
from .test_metadata_deletes import ok, one_to_many
from .test_metadata_writes import table_body

RESTRICTED = (
    400,
    "0x80040227",
    "The object you tried to delete is associated with another object and cannot be deleted.",
)


def cascade_of(api: httpx.Client, schema: str) -> dict[str, Any]:
    r = api.get(f"RelationshipDefinitions(SchemaName='{schema}')?$select=CascadeConfiguration")
    assert r.status_code == 200, r.text
    return r.json()["CascadeConfiguration"]  # type: ignore[no-any-return]


def test_seeded_relationships_carry_their_configuration(api: httpx.Client) -> None:
    parental = cascade_of(api, "contact_customer_accounts")
    assert parental["Delete"] == "Cascade" and parental["Assign"] == "Cascade" and parental["Share"] == "Cascade"
    assert cascade_of(api, "account_primary_contact")["Delete"] == "RemoveLink"
    assert cascade_of(api, "incident_customer_accounts")["Delete"] == "Restrict"
    m2o = api.get(
        "EntityDefinitions(LogicalName='contact')/ManyToOneRelationships?$select=SchemaName,CascadeConfiguration"
    )
    by_name = {x["SchemaName"]: x["CascadeConfiguration"] for x in m2o.json()["value"]}
    assert by_name["contact_customer_accounts"]["Delete"] == "Cascade"


def test_cascade_deletes_children_and_their_children(api: httpx.Client) -> None:
    acc = created_id(api.post("accounts", json={"name": "Parent"}))
    child = created_id(
        api.post("contacts", json={"lastname": "Child", "parentcustomerid_account@odata.bind": f"/accounts({acc})"})
    )
    grandchild = created_id(
        api.post(
            "contacts", json={"lastname": "Grandchild", "parentcustomerid_contact@odata.bind": f"/contacts({child})"}
        )
    )
    other = created_id(api.post("contacts", json={"lastname": "Unrelated"}))
    ok(api.delete(f"accounts({acc})"))
    for cid in (child, grandchild):
        assert error_of(api.get(f"contacts({cid})"))[:2] == (404, "0x80040217")
    assert api.get(f"contacts({other})").status_code == 200


def test_remove_link_clears_the_lookup_and_keeps_the_child(api: httpx.Client) -> None:
    contact = created_id(api.post("contacts", json={"lastname": "Primary"}))
    acc = created_id(api.post("accounts", json={"name": "A", "primarycontactid@odata.bind": f"/contacts({contact})"}))
    ok(api.delete(f"contacts({contact})"))
    row = api.get(f"accounts({acc})?$select=_primarycontactid_value").json()
    assert row["_primarycontactid_value"] is None


def test_restrict_refuses_the_delete_and_changes_nothing(api: httpx.Client) -> None:
    acc = created_id(api.post("accounts", json={"name": "Customer"}))
    contact = created_id(
        api.post("contacts", json={"lastname": "C", "parentcustomerid_account@odata.bind": f"/accounts({acc})"})
    )
    case = created_id(
        api.post("incidents", json={"title": "Case", "customerid_account@odata.bind": f"/accounts({acc})"})
    )
    assert error_of(api.delete(f"accounts({acc})")) == RESTRICTED
    assert api.get(f"accounts({acc})").status_code == 200
    assert api.get(f"contacts({contact})").status_code == 200  # the cascade already begun is rolled back
    ok(api.delete(f"incidents({case})"))
    ok(api.delete(f"accounts({acc})"))


def test_restrict_deep_in_a_cascade_refuses_the_whole_delete(api: httpx.Client) -> None:
    acc = created_id(api.post("accounts", json={"name": "Top"}))
    contact = created_id(
        api.post("contacts", json={"lastname": "Mid", "parentcustomerid_account@odata.bind": f"/accounts({acc})"})
    )
    created_id(api.post("incidents", json={"title": "Deep", "customerid_contact@odata.bind": f"/contacts({contact})"}))
    assert error_of(api.delete(f"accounts({acc})")) == RESTRICTED
    assert api.get(f"contacts({contact})").status_code == 200


def test_configuration_set_when_a_relationship_is_created(api: httpx.Client) -> None:
    ok(api.post("EntityDefinitions", json=table_body("cas_Note")))
    ok(api.post("EntityDefinitions", json=table_body("cas_Line")))
    ok(api.post("EntityDefinitions", json=table_body("cas_Pin")))
    parental = one_to_many("cas_note_line", "cas_note", "cas_line", "cas_NoteId")
    parental["CascadeConfiguration"] = {"Assign": "Cascade", "Delete": "Cascade", "Share": "Cascade"}
    ok(api.post("RelationshipDefinitions", json=parental))
    restrict = one_to_many("cas_note_pin", "cas_note", "cas_pin", "cas_NoteId")
    restrict["CascadeConfiguration"] = {"Delete": "Restrict"}
    ok(api.post("RelationshipDefinitions", json=restrict))
    ok(api.post("RelationshipDefinitions", json=one_to_many("cas_line_pin", "cas_line", "cas_pin", "cas_LineId")))
    assert cascade_of(api, "cas_note_line") == {
        "Assign": "Cascade",
        "Delete": "Cascade",
        "Merge": "NoCascade",
        "Reparent": "NoCascade",
        "Share": "Cascade",
        "Unshare": "NoCascade",
        "RollupView": "NoCascade",
    }
    assert cascade_of(api, "cas_line_pin")["Delete"] == "RemoveLink"  # the referential default
    bad = one_to_many("cas_bad", "cas_note", "cas_pin", "cas_Bad")
    bad["CascadeConfiguration"] = {"Delete": "NoCascade"}
    assert error_of(api.post("RelationshipDefinitions", json=bad))[:2] == (400, "0x80040203")

    note = created_id(api.post("cas_notes", json={"cas_name": "n"}))
    line = created_id(api.post("cas_lines", json={"cas_name": "l", "cas_NoteId@odata.bind": f"/cas_notes({note})"}))
    pin = created_id(api.post("cas_pins", json={"cas_name": "p", "cas_LineId@odata.bind": f"/cas_lines({line})"}))
    ok(api.delete(f"cas_notes({note})"))  # Cascade to the line, whose pin is RemoveLink
    assert error_of(api.get(f"cas_lines({line})"))[0] == 404
    assert api.get(f"cas_pins({pin})?$select=_cas_lineid_value").json()["_cas_lineid_value"] is None
    note2 = created_id(api.post("cas_notes", json={"cas_name": "n2"}))
    created_id(api.post("cas_pins", json={"cas_name": "p2", "cas_NoteId@odata.bind": f"/cas_notes({note2})"}))
    assert error_of(api.delete(f"cas_notes({note2})")) == RESTRICTED


def test_a_cascaded_delete_raises_the_childs_delete_webhook(emulator: EmulatorHandle, api: httpx.Client) -> None:
    """Dataverse runs the Delete message for each row a parental relationship deletes: its steps see it too."""
    received: list[WebhookRequest] = []

    async def hook(request: Request) -> Response:
        body = await request.body()
        received.append(WebhookRequest.build(request.method, str(request.url), request.headers.items(), body))
        return Response(status_code=200)

    config = {"table": "contact", "messages": ["Delete"], "secret": SENTINELS["webhook_key"]}
    runtime = Runtime(load_entrypoints=False, validate_output=True)
    with serve_asgi(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as base:
        conn = Connection.from_config(emulator.connection_config())
        try:
            runtime.subscribe_trigger("webhook", config, conn, f"{base}/hook")
            acc = created_id(api.post("accounts", json={"name": "P"}))
            bind = {"parentcustomerid_account@odata.bind": f"/accounts({acc})"}
            child = created_id(api.post("contacts", json={"lastname": "Child", **bind}))
            ok(api.delete(f"accounts({acc})"))
            emulator.admin.drain_webhooks()
        finally:
            conn.close()
    events = [runtime.handle_trigger("webhook", r, config) for r in received]
    assert [(e["message"], e["record_id"]) for e in events if e] == [("Delete", child)]
