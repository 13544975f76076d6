"""One Web API request at a time holds the emulator's store (``Emulator.store_turn``), while the event loop stays free.

A synchronous webhook step makes a write wait for a receiver inside its transaction. A read arriving meanwhile used to
run inside that open transaction on the shared SQLite connection and see a row that was then rolled back: a dirty
read Dataverse never gives. The receiver here answers only when the test says so, after the emulator has taken the
read in, so the order is forced without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.connection import Connection
from connector.errors import FatalApiError
from connector.runtime import Runtime
from dataverse_emulator.app import create_app
from dataverse_emulator.testing import running_emulator, serve_asgi
from tests.conftest import SENTINELS

BASE = "http://emulator.test"


class Gate:
    """The receiver's side: says when a delivery arrived, and answers it with 400 once released."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()

    async def hook(self, request: Request) -> Response:
        await request.body()
        self.arrived.set()
        await asyncio.to_thread(self.release.wait, 30)
        return Response(status_code=400)


@pytest.fixture
def gate() -> Iterator[tuple[Gate, str]]:
    g = Gate()
    with serve_asgi(Starlette(routes=[Route("/hook", g.hook, methods=["POST"])])) as base:
        yield g, f"{base}/hook"
    g.release.set()


def wait_for(predicate: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    """Poll the emulator for something another thread does, with a deadline (never a fixed sleep)."""
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_a_read_during_a_write_waits_for_its_end_and_never_sees_a_rolled_back_row(gate: tuple[Gate, str]) -> None:
    g, url = gate
    config = {"table": "contact", "secret": SENTINELS["webhook_key"], "messages": ["Create"], "mode": "synchronous"}
    with running_emulator() as emu, Connection.from_config(emu.connection_config()) as conn:
        Runtime(load_entrypoints=False).subscribe_trigger("webhook", config, conn, url)
        with ThreadPoolExecutor(2) as pool:
            write = pool.submit(conn.client.request, "POST", "contacts", json={"lastname": "Refused"})
            assert g.arrived.wait(30), "the synchronous step was never called"
            read = pool.submit(conn.client.get_json, "contacts?$select=lastname")
            wait_for(lambda: emu.emulator.in_flight == 2 or read.done(), "the read to reach the emulator")
            g.release.set()
            with pytest.raises(FatalApiError):
                write.result(30)
            assert read.result(30)["value"] == []
        log = [r for r in emu.admin.requests() if r["path"].endswith("/contacts")]
        posted, got = next(r for r in log if r["method"] == "POST"), next(r for r in log if r["method"] == "GET")
        assert got["wall_start"] < posted["wall_end"] <= got["wall_end"], "the read arrived during the write"


def bearer_for(app: Any) -> dict[str, str]:
    emu = app.state.emulator
    client_app = emu.apps_by_kind["client_credentials"]
    return {"Authorization": f"Bearer {emu.identity.issue(BASE, client_app, client_app.object_id, None)}"}


def long_request_then_whoami(app: Any, path: str, content: bytes, content_type: str) -> tuple[dict[str, Any], ...]:
    """In one event loop, a long request and a WhoAmI sent right after it; their request log entries."""
    bearer = bearer_for(app)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            long = c.post(path, content=content, headers={**bearer, "Content-Type": content_type})
            answers = await asyncio.gather(long, c.get("/api/data/v9.2/WhoAmI", headers=bearer))
            assert [a.status_code for a in answers][1] == 200 and answers[0].status_code < 300, answers[0].text

    asyncio.run(scenario())
    return tuple(app.state.emulator.log)


def test_a_long_batch_lets_a_request_arriving_meanwhile_be_taken_in_before_it_ends() -> None:
    """A ``$batch`` of 200 reads and a WhoAmI sent right after it: the WhoAmI is admitted (its log entry starts) while
    the batch still runs, then waits for the store. A batch that never let the loop run would finish before the
    second request was even looked at."""
    ops = "".join(
        "--batch_x\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        "GET /api/data/v9.2/accounts?$top=1 HTTP/1.1\r\n\r\n"
        for _ in range(200)
    )
    body = (ops + "--batch_x--\r\n").encode()
    long, who = long_request_then_whoami(
        create_app(admin=True), "/api/data/v9.2/$batch", body, "multipart/mixed; boundary=batch_x"
    )
    assert long["path"].endswith("$batch") and who["path"].endswith("WhoAmI")
    assert who["wall_start"] < long["wall_end"] <= who["wall_end"]


@pytest.mark.parametrize("message", ["CreateMultiple", "UpsertMultiple"])
def test_a_bulk_message_lets_a_request_arriving_meanwhile_be_taken_in_before_it_ends(message: str) -> None:
    """The same for a bulk message of 500 accounts: it writes them in slices, letting the loop run in between, so
    the WhoAmI's clock starts on arrival instead of after the whole write."""
    targets = [
        {"@odata.type": "Microsoft.Dynamics.CRM.account", "accountid": str(uuid.UUID(int=i + 1)), "name": f"a{i}"}
        for i in range(500)
    ]
    path = f"/api/data/v9.2/accounts/Microsoft.Dynamics.CRM.{message}"
    app = create_app(admin=True)
    long, who = long_request_then_whoami(app, path, json.dumps({"Targets": targets}).encode(), "application/json")
    assert long["path"].endswith(message) and who["path"].endswith("WhoAmI")
    assert who["wall_start"] < long["wall_end"] <= who["wall_end"]
    assert len(app.state.emulator.store.query("SELECT accountid FROM account WHERE name LIKE 'a%'", [])) == 500
