"""The ``records_changed`` polling trigger end to end against the emulator: each change reported once and in order
(deletes included) through change tracking, a restarted consumer with its stored state missing and repeating nothing,
the watermark on a table without change tracking (two rows in the same second, a delete found through the id set),
an expired delta token reported as a resync, and bad configurations or states refused before any request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime

from .conftest import FakeClock, create

TRACKED = {"table": "account", "columns": ["name"]}


def _changes(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["change"], e["id"]) for e in events]


def test_records_changed_change_tracking_reports_each_change_once_in_order(
    runtime: Runtime, connect: Callable[[], Connection], api: httpx.Client, clock: FakeClock
) -> None:
    before, doomed = create(api, "accounts", {"name": "before"}), create(api, "accounts", {"name": "doomed"})
    clock.advance(1)
    events, start = runtime.poll_trigger("records_changed", TRACKED, None, connect())
    assert events == [] and start["mode"] == "change_tracking"  # the first poll starts from now

    clock.advance(1)
    first = create(api, "accounts", {"name": "first"})
    assert api.patch(f"accounts({before})", json={"name": "before, changed"}).status_code == 204
    second = create(api, "accounts", {"name": "second"})
    assert api.delete(f"accounts({doomed})").status_code == 204
    events, state = runtime.poll_trigger("records_changed", TRACKED, start, connect())
    assert _changes(events) == [("created", first), ("updated", before), ("created", second), ("deleted", doomed)]
    assert events[1]["row"]["name"] == "before, changed" and events[1]["table"] == "account"
    assert len({e["key"] for e in events}) == 4

    # a consumer that crashed before storing the state sees the same batch with the same keys (at-least-once)
    again, _ = runtime.poll_trigger("records_changed", TRACKED, start, connect())
    assert [e["key"] for e in again] == [e["key"] for e in events]
    # one that stored it sees nothing twice, across a restart (a new connection), and the next change once
    assert runtime.poll_trigger("records_changed", TRACKED, state, connect())[0] == []
    assert api.patch(f"accounts({first})", json={"name": "first, changed"}).status_code == 204
    events, state = runtime.poll_trigger("records_changed", TRACKED, state, connect())
    assert _changes(events) == [("updated", first)]
    assert runtime.poll_trigger("records_changed", TRACKED, state, connect())[0] == []


def test_records_changed_only_the_changes_asked_for(
    runtime: Runtime, connect: Callable[[], Connection], api: httpx.Client, clock: FakeClock
) -> None:
    config = {"table": "contact", "changes": ["deleted"]}
    kept = create(api, "contacts", {"lastname": "kept"})
    clock.advance(1)
    _, state = runtime.poll_trigger("records_changed", config, None, connect())
    clock.advance(1)
    create(api, "contacts", {"lastname": "new"})
    assert api.delete(f"contacts({kept})").status_code == 204
    events, state = runtime.poll_trigger("records_changed", config, state, connect())
    assert _changes(events) == [("deleted", kept)]


def test_records_changed_watermark_same_second_and_deletes_through_the_id_set(
    runtime: Runtime, connect: Callable[[], Connection], api: httpx.Client, clock: FakeClock
) -> None:
    config = {"table": "lead", "columns": ["lastname"], "track_deletes": True}
    old = create(api, "leads", {"lastname": "old"})
    clock.advance(1)
    events, start = runtime.poll_trigger("records_changed", config, None, connect())
    assert events == [] and start["mode"] == "watermark" and start["ids"] == [old]

    clock.advance(1)
    one = create(api, "leads", {"lastname": "one"})
    events, state = runtime.poll_trigger("records_changed", config, start, connect())
    assert _changes(events) == [("created", one)]
    # a second row written in the same second, after the poll read the first: found, and the first not repeated
    two = create(api, "leads", {"lastname": "two"})
    assert api.patch(f"leads({old})", json={"lastname": "old, changed"}).status_code == 204
    events, state = runtime.poll_trigger("records_changed", config, state, connect())
    assert sorted(_changes(events)) == sorted([("created", two), ("updated", old)])
    assert runtime.poll_trigger("records_changed", config, state, connect())[0] == []

    clock.advance(120)  # past the overlap window: the watermark moves on
    assert api.delete(f"leads({one})").status_code == 204
    events, state = runtime.poll_trigger("records_changed", config, state, connect())
    assert _changes(events) == [("deleted", one)] and events[0]["key"] == f"{one}:deleted"
    assert sorted(state["ids"]) == sorted([old, two])
    assert runtime.poll_trigger("records_changed", config, state, connect())[0] == []


def test_records_changed_watermark_without_id_set_reports_no_deletes(
    runtime: Runtime, connect: Callable[[], Connection], api: httpx.Client, clock: FakeClock
) -> None:
    config = {"table": "lead", "filter": "lastname ne 'skip'"}
    gone = create(api, "leads", {"lastname": "gone"})
    clock.advance(1)
    _, state = runtime.poll_trigger("records_changed", config, None, connect())
    assert "ids" not in state
    clock.advance(1)
    create(api, "leads", {"lastname": "skip"})
    kept = create(api, "leads", {"lastname": "kept"})
    assert api.delete(f"leads({gone})").status_code == 204
    events, _ = runtime.poll_trigger("records_changed", config, state, connect())
    assert _changes(events) == [("created", kept)]


def test_records_changed_watermark_from_an_empty_table(
    runtime: Runtime, connect: Callable[[], Connection], api: httpx.Client, clock: FakeClock
) -> None:
    config = {"table": "lead", "columns": ["lastname"]}
    events, state = runtime.poll_trigger("records_changed", config, None, connect())
    assert events == [] and state["since"] is None
    clock.advance(1)
    one = create(api, "leads", {"lastname": "one"})
    events, state = runtime.poll_trigger("records_changed", config, state, connect())
    assert _changes(events) == [("created", one)] and state["since"] is not None
    clock.advance(1)
    assert api.patch(f"leads({one})", json={"lastname": "one, changed"}).status_code == 204
    events, state = runtime.poll_trigger("records_changed", config, state, connect())
    assert _changes(events) == [("updated", one)]
    assert runtime.poll_trigger("records_changed", config, state, connect())[0] == []


def test_records_changed_expired_token_is_reported_as_a_resync(
    runtime: Runtime, connect: Callable[[], Connection], api: httpx.Client, clock: FakeClock
) -> None:
    _, start = runtime.poll_trigger("records_changed", TRACKED, None, connect())
    clock.advance(8 * 86400)  # past the default 7 days of change tracking retention
    events, state = runtime.poll_trigger("records_changed", TRACKED, start, connect())
    assert [e["change"] for e in events] == ["resync"] and "expired" in events[0]["reason"]
    assert state["delta_link"] != start["delta_link"]
    clock.advance(1)
    rid = create(api, "accounts", {"name": "after the resync"})
    events, _ = runtime.poll_trigger("records_changed", TRACKED, state, connect())
    assert _changes(events) == [("created", rid)]


@pytest.mark.parametrize(
    ("config", "state", "path"),
    [
        ({"table": "Account"}, None, "$.table"),
        ({"table": "account", "changes": ["moved"]}, None, "$.changes[0]"),
        ({"table": "account", "mode": "change_tracking", "filter": "name eq 'x'"}, None, "$.filter"),
        ({"table": "account"}, {"mode": "sideways"}, "$state.mode"),
        (
            {"table": "account", "mode": "watermark"},
            {"mode": "change_tracking", "delta_link": "accounts"},
            "$state.mode",
        ),
    ],
)
def test_records_changed_refuses_bad_config_and_state_before_any_request(
    runtime: Runtime, emulator: Any, config: dict[str, Any], state: dict[str, Any] | None, path: str
) -> None:
    emulator.admin.clear_requests()
    conn = Connection.from_config(emulator.connection_config())
    try:
        with pytest.raises(InputError) as caught:
            runtime.poll_trigger("records_changed", config, state, conn)
    finally:
        conn.close()
    assert [p.path for p in caught.value.problems] == [path]
    assert not [r for r in emulator.admin.requests() if "/api/data/" in r.get("path", "")]
