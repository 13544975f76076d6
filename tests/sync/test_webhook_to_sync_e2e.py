"""Webhook to sync: organization A's contact events (the ``webhook`` trigger's receiver) appended to a JSON-lines
file, which ``d365 sync run --follow`` tails into organization B. Two emulators; the README's example in a test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from connector.cli import main
from connector.connection import Connection
from connector.policy import OperatorPolicy
from connector.runtime import Runtime
from connector.webhook_server import create_asgi_app
from dataverse_emulator.testing import EmulatorHandle, running_emulator, serve_asgi
from tests.conftest import SENTINELS

HOOK = {
    "table": "contact",
    "messages": ["Create", "Update"],
    "secret": SENTINELS["webhook_key"],
    "post_image": ["firstname", "lastname", "emailaddress1"],
}
DEFINITION = {
    "name": "contacts-from-a",
    "source": {"path": "events.jsonl"},
    "target": "contact",
    "match": {"key": ["emailaddress1"]},
    "mapping": [
        {"source": "emailaddress1", "target": "emailaddress1"},
        {"source": "firstname", "target": "firstname", "null": "clear"},
        {"source": "lastname", "target": "lastname"},
    ],
}


def as_row(event: dict[str, Any]) -> dict[str, Any]:
    """What the README's ``jq`` does: the post-image's columns (the whole row, not only what changed)."""
    post = event["post_images"]["PostImage"]
    return {column: post.get(column) for column in ("emailaddress1", "firstname", "lastname")}


def contacts(connection: Connection) -> list[tuple[Any, ...]]:
    rows = connection.client.get_json("contacts?$select=emailaddress1,firstname,lastname")["value"]
    return sorted((r["emailaddress1"], r["firstname"], r["lastname"]) for r in rows)


def test_webhook_events_of_one_organization_follow_synced_into_another(
    tmp_path: Path, connection: Connection, emulator: EmulatorHandle
) -> None:
    connection.client.request(
        "POST",
        "EntityDefinitions(LogicalName='contact')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": "new_email",
            "DisplayName": {"LocalizedLabels": [{"Label": "email", "LanguageCode": 1033}]},
            "KeyAttributes": ["emailaddress1"],
        },
    )
    events = tmp_path / "events.jsonl"
    events.touch()

    def on_event(event: dict[str, Any]) -> None:
        with events.open("a", encoding="utf-8") as out:
            out.write(json.dumps(as_row(event)) + "\n")

    runtime = Runtime(load_entrypoints=False, validate_output=True)
    app = create_asgi_app(HOOK, on_event, runtime=runtime, policy=OperatorPolicy(preset="local"))
    with running_emulator() as org_a, serve_asgi(app) as receiver:
        source = Connection.from_config(org_a.connection_config())
        try:
            runtime.subscribe_trigger("webhook", HOOK, source, f"{receiver}/")
            for first, last, email in (("Ann", "Ames", "ann@a.test"), ("Bo", "Bell", "bo@a.test")):
                source.client.request("POST", "contacts", json={"firstname": first, "lastname": last,
                                                                "emailaddress1": email})  # fmt: skip
            bo = source.client.get_json("contacts?$select=contactid&$filter=lastname eq 'Bell'")["value"][0]
            source.client.request("PATCH", f"contacts({bo['contactid']})", json={"firstname": None})
            assert [d["ok"] for d in org_a.admin.drain_webhooks()] == [True, True, True]
            expected = contacts(source)
        finally:
            source.close()

    assert len(events.read_text(encoding="utf-8").splitlines()) == 3
    (tmp_path / "contacts.sync.json").write_text(json.dumps(DEFINITION), encoding="utf-8")
    (tmp_path / "org-b.json").write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    args = ["sync", "run", str(tmp_path / "contacts.sync.json"), "--follow", "--until-eof"]
    done = CliRunner().invoke(main, args, env={"D365_CONNECTION": str(tmp_path / "org-b.json")})
    assert done.exit_code == 0, done.output
    assert [json.loads(x)["counts"] for x in done.stdout.splitlines()] == [{"created": 2, "duplicate_of": 1}]
    assert contacts(connection) == expected == [("ann@a.test", "Ann", "Ames"), ("bo@a.test", None, "Bell")]
