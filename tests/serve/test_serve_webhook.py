"""The webhook trigger mounted at /triggers/webhook/{connection}: deliveries verified by their own key (no API token),
events listed by GET /events?after=SEQ."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from connector.serve_app import ServeState, create_app
from dataverse_emulator.testing import serve_asgi
from tests.serve.conftest import BEARER

PAYLOADS = Path(__file__).parents[1] / "webhooks" / "payloads"
KEY = "serve-webhook-key-7d41c0e2"  # not a suite sentinel: the test's own client logs the URL that carries it


def test_a_delivery_becomes_an_event(state: ServeState) -> None:
    state.webhooks["emu"] = {"table": "contact", "messages": ["Create", "Update", "Delete"], "secret": KEY}
    body = (PAYLOADS / "create-contact.json").read_bytes()
    context = json.loads(body)
    headers = {
        "content-type": "application/json",
        "x-ms-dynamics-organization": "contoso.crm.dynamics.com",
        "x-ms-dynamics-entity-name": str(context["PrimaryEntityName"]),
        "x-ms-dynamics-request-name": str(context["MessageName"]),
    }
    with serve_asgi(create_app(state)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/events?after=0", headers=BEARER).json() == {"events": [], "next": 0}
        wrong = client.post("/triggers/webhook/emu?code=not-the-key", content=body, headers=headers)
        assert wrong.status_code == 401
        delivered = client.post(f"/triggers/webhook/emu?code={KEY}", content=body, headers=headers)
        assert delivered.status_code == 200, delivered.text
        assert delivered.json() == {"accepted": True, "duplicate": False}
        unknown = client.post(f"/triggers/webhook/other?code={KEY}", content=body, headers=headers)
        assert unknown.status_code == 404
        listed = client.get("/events?after=0", headers=BEARER)
        events = listed.json()
        assert [(e["seq"], e["connection"], e["trigger"]) for e in events["events"]] == [(1, "emu", "webhook")]
        assert events["events"][0]["event"]["message"] == "Create" and events["next"] == 1
        assert client.get("/events?after=1", headers=BEARER).json() == {"events": [], "next": 1}
        assert client.get("/events?after=-1", headers=BEARER).status_code == 422
        assert client.get("/events").status_code == 401
        assert KEY not in listed.text + delivered.text + wrong.text + unknown.text
