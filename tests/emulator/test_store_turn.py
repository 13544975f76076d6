"""One Web API request at a time holds the emulator's store (``Emulator.store_turn``), while the event loop stays free.

A synchronous webhook step makes a write wait for a receiver inside its transaction. A read arriving meanwhile used to
run inside that open transaction on the shared SQLite connection and see a row that was then rolled back: a dirty
read Dataverse never gives. The receiver here answers only when the test says so, after the emulator has taken the
read in, so the order is forced without sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.connection import Connection
from connector.errors import FatalApiError
from connector.runtime import Runtime
from dataverse_emulator.testing import running_emulator, serve_asgi
from tests.conftest import SENTINELS


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
