"""Honest outcomes when answers are lost: a write whose retries are spent is read back before it is called anything.

The scripted server of ``test_bulk`` commits a bulk message and then drops the answer (or refuses it before applying
it) on every send, so the writer's retry budget runs out with the outcome in doubt; the read back decides: the row
holds the written values -> created/updated, it does not -> failed, the read fails too -> unknown with the reason.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.runtime import Runtime
from tests.bulk.conftest import FakeDataverse
from tests.bulk.test_bulk import BulkServer

FAIL_503 = {"error": {"code": "", "message": "The service is temporarily unavailable."}}


class LossyServer(BulkServer):
    """Every bulk message is ``applied`` and its answer dropped, or refused with a 503 before being applied;
    ``reads_fail_after_write``: every read after the first write answers 503 (the read back fails too)."""

    def __init__(self, fake: FakeDataverse, *, applied: bool, reads_fail_after_write: bool = False) -> None:
        super().__init__(fake)
        self.applied = applied
        self.reads_fail_after_write = reads_fail_after_write
        self.sent = 0

    def respond(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and self.sent and self.reads_fail_after_write:
            return httpx.Response(503, json=FAIL_503)
        return super().respond(request)

    def bulk(self, message: str, targets: list[dict[str, Any]]) -> httpx.Response:
        self.sent += 1
        if not self.applied:
            return httpx.Response(503, json=FAIL_503)
        self.drop_next_commit = True
        return super().bulk(message, targets)


def run(runtime: Runtime, conn: Connection, mode: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = runtime.run_action(
        "write_entities", {"table": "account", "mode": mode, "records": records}, conn
    )
    assert len(out["results"]) == len(records)
    return out


def test_an_upsert_whose_answers_were_all_lost_is_read_back_and_reported_as_written(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = LossyServer(fake, applied=True)
    existing = server.seed("A-1")
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(3)]
    out = run(runtime, conn, "upsert", records)
    assert [r["status"] for r in out["results"]] == ["created", "updated", "created"]
    assert out["results"][1]["id"] == existing
    assert server.sent == conn.client.retry_policy.max_attempts  # the budget was spent: the read decided
    assert {r["accountnumber"]: r["name"] for r in server.rows.values()} == {"A-0": "n0", "A-1": "n1", "A-2": "n2"}


def test_an_upsert_refused_on_every_send_is_read_back_and_reported_failed_as_not_applied(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = LossyServer(fake, applied=False)
    server.seed("A-1")
    records = [{"key": {"accountnumber": f"A-{i}"}, "fields": {"name": f"n{i}"}} for i in range(3)]
    out = run(runtime, conn, "upsert", records)
    assert [r["status"] for r in out["results"]] == ["failed", "failed", "failed"]
    assert all(r["message"].startswith("not applied: a read after the last attempt found") for r in out["results"])
    assert [r["name"] for r in server.rows.values()] == ["old"]


def test_an_update_whose_answer_was_lost_and_whose_read_back_failed_is_unknown_with_the_reason(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = LossyServer(fake, applied=True, reads_fail_after_write=True)
    ids = [server.seed(f"A-{i}") for i in range(2)]
    out = run(runtime, conn, "update", [{"id": i, "fields": {"name": "new"}} for i in ids])
    assert [r["status"] for r in out["results"]] == ["unknown", "unknown"]
    assert all("the read to check the rows failed too" in r["message"] for r in out["results"])


def test_an_update_whose_answer_was_lost_is_updated_when_the_row_holds_the_values(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = LossyServer(fake, applied=True)
    ids = [server.seed(f"A-{i}") for i in range(2)]
    out = run(runtime, conn, "update", [{"id": i, "fields": {"name": "new", "numberofemployees": 7}} for i in ids])
    assert [(r["status"], r["id"]) for r in out["results"]] == [("updated", ids[0]), ("updated", ids[1])]


@pytest.mark.parametrize("route", ["bulk", "batch"])
def test_a_rerun_of_creates_with_own_ids_reports_rows_already_present_or_the_conflict(
    runtime: Runtime, fake: FakeDataverse, conn: Connection, route: str
) -> None:
    server = BulkServer(fake, supported=route == "bulk")
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(3)]
    records = [{"id": ids[n], "fields": {"name": f"n{n}", "accountnumber": f"A-{n}"}} for n in range(3)]
    server.rows[ids[0]] = {"accountid": ids[0], "name": "n0", "accountnumber": "A-0"}  # written by the first run
    server.rows[ids[1]] = {"accountid": ids[1], "name": "other", "accountnumber": "A-1"}  # someone else's values
    out = run(runtime, conn, "create", records)
    assert [r["status"] for r in out["results"]] == ["already_present", "failed", "created"]
    assert out["results"][1]["code"] == "0x80040237" and out["results"][1]["message"].endswith("in: name")
    assert out["summary"]["already_present"] == 1 and out["route"] == route
    assert server.rows[ids[1]]["name"] == "other" and server.rows[ids[2]]["name"] == "n2"
    (write,) = server.writes  # one request, carrying only the new row
    assert ids[2] in write.content.decode() and ids[0] not in write.content.decode()


def test_a_support_probe_that_runs_out_of_retries_falls_back_to_batch(
    runtime: Runtime, fake: FakeDataverse, conn: Connection
) -> None:
    server = BulkServer(fake)
    plain = server.respond

    def respond(request: httpx.Request) -> httpx.Response:
        if "sdkmessagefilters" in request.url.path:
            return httpx.Response(503, json=FAIL_503)
        return plain(request)

    fake.respond = respond
    out = run(runtime, conn, "create", [{"fields": {"name": f"n{i}"}} for i in range(3)])
    assert out["route"] == "batch" and out["summary"]["created"] == 3
    assert [w.url.path.rsplit("/", 1)[1] for w in server.writes] == ["$batch"]
