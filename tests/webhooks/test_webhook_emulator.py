"""The emulator's side of webhooks, driven through the connector's subscribe: what it sends, retries and rolls back.

A small receiver on a real socket records each delivery and answers with the statuses a test scripts; the emulator's
drain call says when asynchronous deliveries are done, so nothing here sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.connection import Connection
from connector.errors import FatalApiError
from connector.runtime import Runtime
from connector.webhook_delivery import WebhookRequest
from dataverse_emulator.testing import EmulatorHandle, running_emulator, serve_asgi
from tests.conftest import SENTINELS

KEY = SENTINELS["webhook_key"]


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[WebhookRequest] = field(default_factory=list)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    async def hook(request: Request) -> Response:
        body = await request.body()
        state.received.append(WebhookRequest.build(request.method, str(request.url), request.headers.items(), body))
        return Response(status_code=state.statuses.pop(0) if state.statuses else 200)

    with serve_asgi(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as base:
        state.url = f"{base}/hook"
        yield state


@pytest.fixture
def env(emulator: EmulatorHandle, receiver: Receiver) -> Iterator[tuple[EmulatorHandle, Receiver, Connection, Runtime]]:
    emulator.admin.reset()
    receiver.statuses.clear()
    receiver.received.clear()
    conn = Connection.from_config(emulator.connection_config())
    try:
        yield emulator, receiver, conn, Runtime(load_entrypoints=False, validate_output=True)
    finally:
        conn.close()


def config(**extra: Any) -> dict[str, Any]:
    return {"table": "contact", "secret": KEY, **extra}


def test_webhook_emulator_async_retry_once_on_503(env: Any) -> None:
    emulator, receiver, conn, runtime = env
    runtime.subscribe_trigger("webhook", config(messages=["Create"]), conn, receiver.url)
    receiver.statuses[:] = [503, 503]
    conn.client.request("POST", "contacts", json={"lastname": "Retry"})
    deliveries = emulator.admin.drain_webhooks()
    assert [(d["attempts"], d["status"], d["ok"]) for d in deliveries] == [(2, 503, False)]
    assert len(receiver.received) == 2
    receiver.statuses[:] = [500]
    conn.client.request("POST", "contacts", json={"lastname": "NoRetry"})
    assert emulator.admin.drain_webhooks()[-1]["attempts"] == 1, "only 502/503/504 earn a second attempt"


def test_webhook_emulator_sync_failure_rolls_back(env: Any) -> None:
    _emulator, receiver, conn, runtime = env
    runtime.subscribe_trigger("webhook", config(messages=["Create", "Update"], mode="synchronous"), conn, receiver.url)
    receiver.statuses[:] = [400]
    with pytest.raises(FatalApiError):
        conn.client.request("POST", "contacts", json={"lastname": "Refused"})
    assert conn.client.get_json("contacts?$select=lastname")["value"] == []
    conn.client.request("POST", "contacts", json={"lastname": "Kept"})
    rid = conn.client.get_json("contacts?$select=contactid")["value"][0]["contactid"]
    receiver.statuses[:] = [500]
    with pytest.raises(FatalApiError):
        conn.client.request("PATCH", f"contacts({rid})", json={"lastname": "Changed"})
    assert conn.client.get_json(f"contacts({rid})?$select=lastname")["lastname"] == "Kept"
    event = runtime.handle_trigger("webhook", receiver.received[1], config(messages=["Create", "Update"]))
    assert event is not None and event["mode"] == "synchronous" and event["message"] == "Create"


def test_webhook_emulator_header_auth_and_oversized(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator, receiver, conn, runtime = env
    cfg = config(messages=["Create"], authentication="http_header", auth_name="x-functions-key")
    runtime.subscribe_trigger("webhook", cfg, conn, receiver.url)
    conn.client.request("POST", "contacts", json={"lastname": "Big", "description": "d" * 2000})
    conn.client.request("POST", "contacts", json={"lastname": "Small"})
    emulator.admin.drain_webhooks()
    first = receiver.received[0]
    assert first.headers["x-functions-key"] == KEY and "code" not in first.query
    assert first.headers["x-ms-dynamics-entity-name"] == "contact"
    assert first.headers["x-ms-dynamics-request-name"] == "Create"
    assert b"\\/Date(" in first.body, "dates as WCF sends them, slashes escaped"
    event = runtime.handle_trigger("webhook", first, cfg)
    assert event is not None and event["changed_attributes"]["lastname"] == "Big"

    # a context above the limit (256 KB, lowered here so one row exceeds it): Dataverse drops inputs, images and
    # parent context, and says so in a header
    from dataverse_emulator import webhooks as emulator_webhooks

    monkeypatch.setattr(emulator_webhooks, "SIZE_LIMIT", 1024)
    conn.client.request("POST", "contacts", json={"lastname": "Oversized", "description": "x" * 1500})
    emulator.admin.drain_webhooks()
    big = receiver.received[-1]
    assert "x-ms-dynamics-msg-size-exceeded" in big.headers
    raw = json.loads(big.body)
    assert not {"InputParameters", "PreEntityImages", "PostEntityImages", "ParentContext"} & set(raw)
    event = runtime.handle_trigger("webhook", big, cfg)
    assert event is not None and event["changed_attributes"] is None and event["reread"]["id"] == event["record_id"]


def test_webhook_emulator_authvalue_is_write_only(env: Any) -> None:
    _emulator, receiver, conn, runtime = env
    sub = runtime.subscribe_trigger("webhook", config(messages=["Create"]), conn, receiver.url)
    row = conn.client.get_json(f"serviceendpoints({sub['serviceendpoint_id']})")
    assert "authvalue" not in row and row["contract"] == 8 and row["authtype"] == 4
    assert KEY not in json.dumps(row)


def test_webhook_subscribe_rolls_back_on_partial_failure(env: Any) -> None:
    _emulator, receiver, conn, runtime = env
    from connector.errors import WebhookError

    # Merge has no sdkmessage row in the emulator: the endpoint and the Create step exist when it fails
    with pytest.raises(WebhookError, match="Merge"):
        runtime.subscribe_trigger("webhook", config(messages=["Create", "Merge"]), conn, receiver.url)
    assert conn.client.get_json("serviceendpoints?$select=name")["value"] == []
    assert conn.client.get_json("sdkmessageprocessingsteps?$select=name")["value"] == []


def test_webhook_subscribe_and_unsubscribe_are_idempotent(env: Any) -> None:
    _emulator, receiver, conn, runtime = env
    cfg = config(messages=["Update"], filtering_attributes=["firstname"], pre_image=["firstname"], post_image=True)
    first = runtime.subscribe_trigger("webhook", cfg, conn, receiver.url)
    again = runtime.subscribe_trigger("webhook", cfg, conn, receiver.url)
    assert again == first
    step = conn.client.get_json(f"sdkmessageprocessingsteps({first['steps'][0]['step_id']})")
    assert (step["mode"], step["stage"], step["filteringattributes"]) == (1, 40, "firstname")
    assert step["_eventhandler_value"] == first["serviceendpoint_id"]
    images = conn.client.get_json("sdkmessageprocessingstepimages?$select=entityalias,imagetype,attributes")["value"]
    assert sorted((i["entityalias"], i["imagetype"], i["attributes"]) for i in images) == [
        ("PostImage", 1, None),
        ("PreImage", 0, "firstname"),
    ]
    runtime.unsubscribe_trigger("webhook", first, conn)
    runtime.unsubscribe_trigger("webhook", first, conn)
    assert conn.client.get_json("serviceendpoints?$select=name")["value"] == []
    assert conn.client.get_json("sdkmessageprocessingstepimages?$select=name")["value"] == []
