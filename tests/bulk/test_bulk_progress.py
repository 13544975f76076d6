"""Progress and cancellation of the long actions through the runtime: write_entities, run_batch_operations, fetch-all.

The scripted Dataverse of ``test_bulk`` decides when a cancel lands (inside a request, on a worker thread), so every
case is deterministic; a connection with ``max_parallelism`` 1 keeps one chunk in flight at a time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.odata import PageToken
from connector.progress import CancellationToken, Progress
from connector.runtime import Runtime
from tests.bulk.conftest import FakeDataverse
from tests.bulk.test_bulk import BulkServer

WAIT_S = 10.0


@pytest.fixture
def serial(fake: FakeDataverse) -> Connection:
    """A connection that runs one chunk at a time."""
    return fake.connect(max_parallelism=1)


def _create(n: int, chunk_size: int) -> dict[str, Any]:
    records = [{"fields": {"name": f"n{i}"}} for i in range(n)]
    return {"table": "account", "mode": "create", "records": records, "chunk_size": chunk_size}


def test_write_entities_reports_every_chunk_with_counts_per_outcome(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    BulkServer(fake)
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": "BAD" if i == 4 else f"n{i}"}} for i in range(7)]
    events: list[Progress] = []
    inputs = {"table": "account", "mode": "upsert", "records": records, "chunk_size": 3}
    out = runtime.run_action("write_entities", inputs, conn, progress=events.append)
    assert [e.event for e in events] == ["start", "advance", "advance", "advance", "end"]
    assert (events[0].done, events[0].total) == (0, 7)
    done = [e.done for e in events[:4]]
    assert sorted(b - a for a, b in itertools.pairwise(done)) == [1, 3, 3]  # one step per chunk, any order
    assert dict(events[-1].counts) == {"created": 6, "failed": 1} and events[-1].done == 7
    assert "not_sent" not in out["summary"]  # an uncancelled run keeps the summary it always had


def test_a_cancel_during_a_write_sends_no_further_chunk_and_reports_every_record(
    runtime: Runtime, fake: FakeDataverse, serial: Connection
) -> None:
    server = BulkServer(fake)
    token = CancellationToken()
    server.before_write.append(lambda: token.cancel("SIGINT"))  # lands while the first chunk is in flight
    out = runtime.run_action("write_entities", _create(10, 2), serial, cancel=token)
    statuses = [r["status"] for r in out["results"]]
    assert statuses == ["created"] * 2 + ["not_sent"] * 8
    assert out["summary"]["not_sent"] == 8 and out["summary"]["created"] == 2 and out["summary"]["chunks"] == 1
    assert len(server.writes) == 1
    assert {r["id"] for r in out["results"] if r["status"] == "created"} == set(server.rows)
    assert all(r["id"] is None and r["message"].startswith("not sent") for r in out["results"][2:])


def _aborts_and_hangs(token: CancellationToken, release: threading.Event) -> Callable[[], None]:
    """A server hook: the caller aborts while the request is in flight, and the request hangs until ``release``."""

    def abort_and_hang() -> None:
        token.abort("SIGINT")
        assert release.wait(WAIT_S)

    return abort_and_hang


def test_an_abort_reports_the_chunk_in_flight_unknown_with_its_ids(
    runtime: Runtime, fake: FakeDataverse, serial: Connection
) -> None:
    server = BulkServer(fake)
    token = CancellationToken()
    release = threading.Event()
    abort_and_hang = _aborts_and_hangs(token, release)
    server.before_write.append(abort_and_hang)
    try:
        out = runtime.run_action("write_entities", _create(6, 2), serial, cancel=token)
    finally:
        release.set()
    assert [r["status"] for r in out["results"]] == ["unknown"] * 2 + ["not_sent"] * 4
    assert all(r["id"] for r in out["results"][:2])  # client ids: a read can confirm them later


def _upsert(n: int, chunk_size: int) -> dict[str, Any]:
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(n)]
    return {"table": "account", "mode": "upsert", "records": records, "chunk_size": chunk_size}


def test_a_cancel_during_a_pre_read_sends_no_write_and_reports_the_chunk_not_sent(
    runtime: Runtime, fake: FakeDataverse, serial: Connection
) -> None:
    """The chunk had only read when the cancel came: its write is not let go, so its rows are ``not_sent`` (certain),
    not ``unknown``, and nothing is written."""
    server = BulkServer(fake)
    token = CancellationToken()
    server.before_read.append(lambda: token.cancel("SIGINT"))  # lands while the first chunk's pre-read is in flight
    out = runtime.run_action("write_entities", _upsert(6, 2), serial, cancel=token)
    assert [r["status"] for r in out["results"]] == ["not_sent"] * 6
    assert out["summary"]["chunks"] == 0 and server.writes == [] and server.rows == {}
    assert len(server.reads) == 1 and all(r["id"] is None for r in out["results"])


def test_an_abort_during_a_pre_read_reports_the_chunk_not_sent_and_its_write_never_leaves(
    runtime: Runtime, fake: FakeDataverse, serial: Connection
) -> None:
    """An abort stops waiting for the chunk at once; the chunk, finishing its read afterwards, finds the run
    cancelled and does not write: reporting it ``not_sent`` is the truth, not a guess."""
    server = BulkServer(fake)
    token = CancellationToken()
    release = threading.Event()
    abort_and_hang = _aborts_and_hangs(token, release)
    server.before_read.append(abort_and_hang)
    try:
        out = runtime.run_action("write_entities", _upsert(4, 2), serial, cancel=token)
    finally:
        release.set()
    for worker in [t for t in threading.enumerate() if t.name.startswith("d365-governor")]:
        worker.join(WAIT_S)  # the chunk's thread ends its work, unobserved
    assert [r["status"] for r in out["results"]] == ["not_sent"] * 4
    assert server.writes == [] and server.rows == {}


def test_a_passed_deadline_sends_nothing(runtime: Runtime, fake: FakeDataverse, conn: Connection) -> None:
    server = BulkServer(fake)
    token = CancellationToken(deadline_s=60, clock=conn.governor.clock)
    conn.governor.clock.sleep(61)  # a FakeClock: time passes at once
    out = runtime.run_action("write_entities", _create(4, 2), conn, cancel=token)
    assert out["summary"]["not_sent"] == 4 and out["summary"]["chunks"] == 0
    assert server.writes == [] and token.reason == "deadline"


def test_a_cancelled_batch_sends_nothing_and_reports_every_operation(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    BulkServer(fake)
    token = CancellationToken()
    token.cancel("SIGTERM")
    events: list[Progress] = []
    ops = [{"table": "account", "action": "create", "fields": {"name": f"n{i}"}} for i in range(3)]
    out = runtime.run_action("run_batch_operations", {"operations": ops}, conn, progress=events.append, cancel=token)
    assert [r["status"] for r in out["results"]] == ["not_run"] * 3 and out["not_run"] == 3
    assert all("cancelled" in r["message"] for r in out["results"])
    assert not [r for r in fake.data if r.url.path.endswith("$batch")]
    assert [(e.event, e.done, e.total) for e in events] == [("start", 0, 3), ("end", 3, 3)]
    assert dict(events[-1].counts)["not_run"] == 3


def test_a_cancelled_fetch_all_stops_at_the_next_page_with_a_token_that_resumes_there(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    api = FakeDataverse.API

    def pages(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("$skiptoken", "1"))
        nxt = {"@odata.nextLink": f"{api}/accounts?$skiptoken={page + 1}"} if page < 3 else {}
        return httpx.Response(200, json={"value": [{"name": f"p{page}-{i}"} for i in range(2)], **nxt})

    fake.respond = pages
    token = CancellationToken()
    events: list[Progress] = []

    def report(event: Progress) -> None:
        events.append(event)
        if event.event == "advance":
            token.cancel("SIGINT")

    out = runtime.run_action(
        "query_entities",
        {"table": "account", "fetch_all": True, "max_records": 100},
        conn,
        progress=report,
        cancel=token,
    )
    assert [r["name"] for r in out["records"]] == ["p1-0", "p1-1"]
    assert out["more_records"] is True
    assert PageToken.decode(out["next_page_token"], host=conn.host).path.endswith("$skiptoken=2")
    assert len(fake.data) == 1
    assert [(e.event, e.done, dict(e.counts)) for e in events] == [
        ("start", 0, {}),
        ("advance", 2, {"pages": 1}),
        ("end", 2, {"pages": 1}),
    ]


def test_the_output_schema_examples_validate_a_cancelled_run_among_them(runtime: Runtime) -> None:
    schema_id = "https://d365-connector.dev/schemas/actions/write_entities.output.json"
    examples = runtime.store.get(schema_id)["examples"]
    assert [runtime.store.validate(example, schema_id) for example in examples] == [[]] * len(examples)
    assert any(example["summary"].get("not_sent") for example in examples)
    broken = {**examples[1], "results": [{**examples[1]["results"][1], "status": "skipped"}]}
    assert runtime.store.validate(broken, schema_id) != []


def test_a_throttled_write_counts_the_wait_in_its_progress(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = BulkServer(fake)
    answer = server.respond
    throttled = [httpx.Response(429, headers={"Retry-After": "7"})]

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and throttled:
            return throttled.pop()
        return answer(request)

    fake.respond = respond
    events: list[Progress] = []
    out = runtime.run_action("write_entities", _create(4, 2), conn, progress=events.append)
    assert out["summary"]["created"] == 4
    waits = [e for e in events if e.event == "throttle"]
    assert [(e.throttle_waits, e.throttled_s) for e in waits] == [(1, 7.0)]
    assert (events[-1].throttle_waits, events[-1].throttled_s) == (1, 7.0)
