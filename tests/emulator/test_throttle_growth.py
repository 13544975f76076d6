"""Retry-After grows under continued pressure (a client that comes back before its Retry-After ran out waits longer,
up to the window), and the request log's ``end`` is when the answer's last byte was sent. Time is the injected clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httpx

from dataverse_emulator.app import Observe
from dataverse_emulator.testing import running_emulator

from .conftest import FakeClock


def test_retry_after_grows_while_the_client_keeps_sending() -> None:
    clock = FakeClock()
    with running_emulator(throttle="strict", max_requests=3, clock=clock, seed=3) as h:
        api = httpx.Client(base_url=h.api_url + "/", headers={"Authorization": f"Bearer {h.token()}"}, timeout=60)
        with api:
            assert api.get("WhoAmI").status_code == 200
            h.admin.advance_clock(8)  # the first request leaves the 10 s window 2 s from now
            assert [api.get("WhoAmI").status_code for _ in range(2)] == [200, 200]
            refusals = [api.get("WhoAmI") for _ in range(4)]  # sent at once, none waiting its Retry-After
            assert {r.status_code for r in refusals} == {429}
            assert {r.json()["error"]["code"] for r in refusals} == {"0x80072322"}
            assert [int(r.headers["Retry-After"]) for r in refusals] == [2, 4, 8, 10]
            h.admin.advance_clock(2)  # the window has room again, but the extended wait has not run out
            early = api.get("WhoAmI")
            assert early.status_code == 429 and early.json()["error"]["code"] == "0x80072322"
            assert int(early.headers["Retry-After"]) == 10  # coming back early again: the window caps it
            h.admin.advance_clock(10)
            assert api.get("WhoAmI").status_code == 200
        logged = [e["retry_after"] for e in h.admin.requests() if e["status"] == 429]
        assert logged == ["2", "4", "8", "10", "10"]


def test_a_client_that_waits_its_retry_after_gets_no_extension() -> None:
    clock = FakeClock()
    with running_emulator(throttle="strict", max_requests=2, clock=clock, seed=3) as h:
        api = httpx.Client(base_url=h.api_url + "/", headers={"Authorization": f"Bearer {h.token()}"}, timeout=60)
        with api:
            assert api.get("WhoAmI").status_code == 200
            h.admin.advance_clock(7)
            assert api.get("WhoAmI").status_code == 200
            first = api.get("WhoAmI")
            assert int(first.headers["Retry-After"]) == 3
            h.admin.advance_clock(3)
            assert api.get("WhoAmI").status_code == 200
            again = api.get("WhoAmI")  # refused again, but not early: the plain wait until the window frees
            assert int(again.headers["Retry-After"]) == 7


def _observe(app: Any, clock: FakeClock) -> tuple[Observe, list[dict[str, Any]]]:
    log: list[dict[str, Any]] = []
    emu = SimpleNamespace(in_flight=0, clock=clock, latency_ms=0, log=log)
    return Observe(app, emu), log  # type: ignore[arg-type]


def _run(observe: Observe, send: Any) -> None:
    scope = {"type": "http", "method": "GET", "path": "/api/data/v9.2/WhoAmI", "headers": [], "query_string": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(observe(scope, receive, send))


def test_the_log_ends_when_the_last_body_byte_is_sent() -> None:
    clock = FakeClock()
    start = clock()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b"last"})
        clock.advance(30)  # work after the answer is complete is not the client's wait

    async def slow_send(message: Any) -> None:
        if message["type"] == "http.response.body":
            clock.advance(5)  # each chunk takes 5 s to go out

    observe, log = _observe(app, clock)
    _run(observe, slow_send)
    [entry] = log
    assert (entry["start"], entry["end"], entry["status"]) == (start, start + 10, 200)


def test_the_log_ends_at_the_handler_when_no_answer_was_completed() -> None:
    clock = FakeClock()
    start = clock()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        clock.advance(4)

    async def send(message: Any) -> None:
        return None

    observe, log = _observe(app, clock)
    _run(observe, send)
    assert log[0]["end"] == start + 4
