"""The read after a run gave up on requests in flight: rows whose answer never came are settled by one ``In`` read per
chunk.

The scripted Dataverse of ``test_bulk`` applies a write, then the test cancels the token (whose grace period is zero,
so the run gives up on the request at once) and holds the answer back until the run has returned: a lost answer. A
connection with ``max_parallelism`` 2 and a single chunk leaves a request slot free for the read, so nothing depends
on timing; the waits below only bound a broken run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.progress import CancellationToken, Progress
from connector.runtime import Runtime
from tests.bulk.conftest import FakeDataverse
from tests.bulk.test_bulk import BulkServer

WAIT_S = 10.0


@pytest.fixture
def pair(fake: FakeDataverse) -> Connection:
    """Two requests in flight at most: the held-back write and the read that confirms it."""
    return fake.connect(max_parallelism=2)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # the held-back answers go back to threads nobody waits for


def _lose_answers(fake: FakeDataverse, token: CancellationToken, release: threading.Event, *, reads: bool) -> None:
    """Every write is applied, then the token is cancelled (its grace is over at once) and the answer held back;
    ``reads``: the read's answer too, after aborting the token (a second Ctrl-C during the read)."""
    answer = fake.respond

    def respond(request: httpx.Request) -> httpx.Response:
        response = answer(request)
        if request.method == "POST" or (reads and "Microsoft.Dynamics.CRM.In" in str(request.url)):
            if request.method == "POST":
                token.cancel("SIGINT")
            else:
                token.abort("SIGINT")
            assert release.wait(WAIT_S)
        return response

    fake.respond = respond


def _token(confirm_s: float = WAIT_S) -> CancellationToken:
    return CancellationToken(grace_s=0, confirm_s=confirm_s)


def _records(n: int) -> list[dict[str, Any]]:
    return [{"fields": {"name": f"n{i}"}} for i in range(n)]


def test_a_run_that_gave_up_waiting_reports_created_the_rows_a_read_finds(
    runtime: Runtime, fake: FakeDataverse, pair: Connection, release: threading.Event
) -> None:
    server = BulkServer(fake)
    token = _token()
    _lose_answers(fake, token, release, reads=False)
    events: list[Progress] = []
    inputs = {"table": "account", "mode": "create", "records": _records(3), "chunk_size": 3}
    out = runtime.run_action("write_entities", inputs, pair, cancel=token, progress=events.append)
    assert [r["status"] for r in out["results"]] == ["created"] * 3
    assert {r["id"] for r in out["results"]} == set(server.rows)
    assert out["summary"]["created"] == 3 and out["summary"]["unknown"] == 0
    assert len(server.reads) == 1  # one In read for the chunk
    assert dict(events[-1].counts) == {"created": 3}


def test_an_upsert_by_key_confirms_only_the_rows_it_planned_to_create(
    runtime: Runtime, fake: FakeDataverse, pair: Connection, release: threading.Event
) -> None:
    server = BulkServer(fake)
    existing = server.seed("A-1")
    token = _token()
    _lose_answers(fake, token, release, reads=False)
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(3)]
    inputs = {"table": "account", "mode": "upsert", "records": records, "chunk_size": 3}
    out = runtime.run_action("write_entities", inputs, pair, cancel=token)
    statuses = [(r["status"], r["id"]) for r in out["results"]]
    assert statuses[1] == ("unknown", existing)  # the row was there before: finding it proves nothing
    assert [s for s, _ in statuses] == ["created", "unknown", "created"]
    assert {i for s, i in statuses if s == "created"} == set(server.rows) - {existing}


def test_a_row_the_read_does_not_find_stays_unknown(
    runtime: Runtime, fake: FakeDataverse, pair: Connection, release: threading.Event
) -> None:
    server = BulkServer(fake)
    token = _token()
    hold = server.respond

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # given up on before the write is applied: the read finds nothing
            token.cancel("SIGINT")
            assert release.wait(WAIT_S)
        return hold(request)

    fake.respond = respond
    inputs = {"table": "account", "mode": "create", "records": _records(2), "chunk_size": 2}
    out = runtime.run_action("write_entities", inputs, pair, cancel=token)
    assert [r["status"] for r in out["results"]] == ["unknown"] * 2
    assert all(r["id"] for r in out["results"]) and len(server.reads) == 1


def test_an_abort_during_the_read_ends_it_with_the_rows_unknown(
    runtime: Runtime, fake: FakeDataverse, pair: Connection, release: threading.Event
) -> None:
    BulkServer(fake)
    token = _token(60 * WAIT_S)  # only the abort can end the wait in time
    _lose_answers(fake, token, release, reads=True)
    inputs = {"table": "account", "mode": "create", "records": _records(2), "chunk_size": 2}
    started = time.monotonic()
    out = runtime.run_action("write_entities", inputs, pair, cancel=token)
    assert time.monotonic() - started < WAIT_S
    assert [r["status"] for r in out["results"]] == ["unknown"] * 2


def test_an_abort_skips_the_read(
    runtime: Runtime, fake: FakeDataverse, pair: Connection, release: threading.Event
) -> None:
    server = BulkServer(fake)
    token = _token()
    answer = server.respond

    def respond(request: httpx.Request) -> httpx.Response:
        response = answer(request)
        if request.method == "POST":  # applied, then two Ctrl-C: stop now, no read
            token.abort("SIGINT")
            assert release.wait(WAIT_S)
        return response

    fake.respond = respond
    inputs = {"table": "account", "mode": "create", "records": _records(2), "chunk_size": 2}
    out = runtime.run_action("write_entities", inputs, pair, cancel=token)
    assert [r["status"] for r in out["results"]] == ["unknown"] * 2
    assert server.reads == [] and len(server.rows) == 2
