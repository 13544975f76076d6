"""update_entity and upsert_entity whose answers were all lost: the row read back decides the outcome.

Every PATCH is applied and its connection then dropped (or refused with a 503 before being applied), so the retry
budget runs out with the outcome in doubt. The row holding the written values -> success with ``confirmed_by_read``;
holding other values -> the PATCH's error stands (not applied); the read failing too -> :class:`OutcomeUnknownError`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.errors import OutcomeUnknownError, RetriableApiError
from connector.runtime import Runtime

A1 = "00000000-0000-4000-8000-000000000001"
STAMP = "2026-12-05T01:00:00Z"


class Row:
    """One account row behind PATCH and GET; ``applied``: PATCHes land before the connection drops."""

    def __init__(self, *, applied: bool, exists: bool = True, reads_fail: bool = False) -> None:
        self.applied, self.reads_fail = applied, reads_fail
        self.row: dict[str, Any] | None = (
            {"accountid": A1, "name": "old", "createdon": "2026-01-01T00:00:00Z", "modifiedon": "2026-01-01T00:00:00Z"}
            if exists
            else None
        )
        self.patches = 0

    def respond(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if self.reads_fail:
                return httpx.Response(503, json={"error": {"code": "", "message": "unavailable"}})
            if self.row is None:
                return httpx.Response(404, json={"error": {"code": "0x80040217", "message": "missing"}})
            return httpx.Response(200, json=self.row)
        self.patches += 1
        if not self.applied:
            return httpx.Response(503, json={"error": {"code": "", "message": "unavailable"}})
        fields = httpx.Response(200, content=request.content).json()
        base = self.row or {"accountid": A1, "createdon": STAMP}
        self.row = {**base, **fields, "modifiedon": STAMP}
        raise httpx.RemoteProtocolError("server disconnected without sending a response", request=request)


def test_an_update_whose_answers_were_lost_is_confirmed_by_reading_the_row(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    server = Row(applied=True)
    fake.respond = server.respond
    out = runtime.run_action("update_entity", {"table": "account", "id": A1, "fields": {"name": "new"}}, conn)
    assert out == {"table": "account", "id": A1, "confirmed_by_read": True}
    assert server.patches == conn.client.retry_policy.max_attempts


def test_an_update_refused_on_every_send_fails_with_its_error_after_the_read_shows_it_not_applied(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.respond = Row(applied=False).respond
    with pytest.raises(RetriableApiError):
        runtime.run_action("update_entity", {"table": "account", "id": A1, "fields": {"name": "new"}}, conn)


def test_an_update_whose_read_back_fails_too_is_an_unknown_outcome(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.respond = Row(applied=True, reads_fail=True).respond
    with pytest.raises(OutcomeUnknownError, match="the read to check the row failed too"):
        runtime.run_action("update_entity", {"table": "account", "id": A1, "fields": {"name": "new"}}, conn)


@pytest.mark.parametrize(("exists", "operation"), [(True, "updated"), (False, "created")])
def test_an_upsert_whose_answers_were_lost_says_created_or_updated_from_the_row(
    runtime: Runtime, fake: Any, conn: Connection, exists: bool, operation: str
) -> None:
    fake.respond = Row(applied=True, exists=exists).respond
    out = runtime.run_action("upsert_entity", {"table": "account", "id": A1, "fields": {"name": "new"}}, conn)
    assert (out["operation"], out["confirmed_by_read"], out["id"]) == (operation, True, A1)


def test_an_upsert_by_an_unsafe_key_whose_post_was_lost_is_created_when_its_own_id_reads_back(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    stored: dict[str, Any] = {}

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "$filter" in request.url.params:
            return httpx.Response(200, json={"value": []})  # the key has no row yet
        if request.method == "POST":
            stored.update(httpx.Response(200, content=request.content).json())
            raise httpx.RemoteProtocolError("server disconnected without sending a response", request=request)
        assert request.url.path.endswith(f"accounts({stored['accountid']})")
        return httpx.Response(200, json=stored)

    fake.respond = respond
    inputs = {"table": "account", "key": {"accountnumber": "A/1 & 2"}, "fields": {"name": "n"}}
    out = runtime.run_action("upsert_entity", inputs, conn)
    assert out == {"table": "account", "id": stored["accountid"], "operation": "created", "confirmed_by_read": True}
    assert [r.method for r in fake.data] == ["GET", "POST", "GET"]  # sent once, then read by its own id
