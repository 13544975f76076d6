"""The read after an abort: rows in flight whose answer never came are settled by one ``In`` read per chunk.

The scripted Dataverse of ``test_bulk`` applies a write, then the test aborts the token and holds the answer back
until the run has returned (a lost answer). A connection with ``max_parallelism`` 2 and a single chunk leaves a
request slot free for the read, so nothing depends on timing; the waits below only bound a broken run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.clock import FakeClock
from connector.connection import Connection
from connector.progress import CancellationToken, Progress
from connector.runtime import Runtime
from tests.bulk.conftest import FakeDataverse
from tests.bulk.test_bulk import BulkServer
from tests.records.conftest import TENANT

WAIT_S = 10.0


@pytest.fixture
def pair(fake: FakeDataverse) -> Connection:
    """Two requests in flight at most: the held-back write and the read that confirms it."""
    config = {
        "kind": "client_credentials",
        "organization_url": FakeDataverse.ORG,
        "tenant_id": TENANT,
        "client_id": "11111111-2222-3333-4444-555555555555",
        "client_secret": "SENTINEL-client-secret-5b1d9c",
        "max_parallelism": 2,
    }
    return Connection.from_config(config, transport=httpx.MockTransport(fake.handler), clock=FakeClock())


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # the held-back answers go back to threads nobody waits for


def _lose_answers(fake: FakeDataverse, token: CancellationToken, release: threading.Event, *, reads: bool) -> None:
    """Every write is applied, then the token is aborted and the answer held back; ``reads``: reads too."""
    answer = fake.respond

    def respond(request: httpx.Request) -> httpx.Response:
        response = answer(request)
        if request.method == "POST" or (reads and "Microsoft.Dynamics.CRM.In" in str(request.url)):
            token.abort("SIGINT")
            assert release.wait(WAIT_S)
        return response

    fake.respond = respond


def _records(n: int) -> list[dict[str, Any]]:
    return [{"fields": {"name": f"n{i}"}} for i in range(n)]


def test_an_abort_reports_created_the_rows_a_read_finds(
    runtime: Runtime, fake: FakeDataverse, pair: Connection, release: threading.Event
) -> None:
    server = BulkServer(fake)
    token = CancellationToken(confirm_s=WAIT_S)
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
    token = CancellationToken(confirm_s=WAIT_S)
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
    token = CancellationToken(confirm_s=WAIT_S)
    hold = server.respond

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":  # aborted before the write is applied: the read finds nothing
            token.abort("SIGINT")
            assert release.wait(WAIT_S)
        return hold(request)

    fake.respond = respond
    inputs = {"table": "account", "mode": "create", "records": _records(2), "chunk_size": 2}
    out = runtime.run_action("write_entities", inputs, pair, cancel=token)
    assert [r["status"] for r in out["results"]] == ["unknown"] * 2
    assert all(r["id"] for r in out["results"]) and len(server.reads) == 1


def test_another_abort_during_the_read_ends_it_with_the_rows_unknown(
    runtime: Runtime, fake: FakeDataverse, pair: Connection, release: threading.Event
) -> None:
    BulkServer(fake)
    token = CancellationToken(confirm_s=60 * WAIT_S)  # only the second abort can end the wait in time
    _lose_answers(fake, token, release, reads=True)
    inputs = {"table": "account", "mode": "create", "records": _records(2), "chunk_size": 2}
    started = time.monotonic()
    out = runtime.run_action("write_entities", inputs, pair, cancel=token)
    assert time.monotonic() - started < WAIT_S
    assert [r["status"] for r in out["results"]] == ["unknown"] * 2
