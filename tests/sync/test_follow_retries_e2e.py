"""Follow mode retries: a row Dataverse refused is carried into later batches (its event was consumed and will not be
read again), after that batch's own events, dropped when a newer event for its key arrives, kept in the state store
across a restart, and given up after ``RETRY_BATCHES``. The emulator answers a lookup to a missing parent with
0x80060891, as Dataverse does: the real-time case where a child's event arrives before its parent's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connector.clock import FakeClock
from connector.connection import Connection
from connector.policy import OperatorPolicy
from connector.sync.definition import SyncDefinition, load_definition
from connector.sync.engine import EXIT_DONE, EXIT_PARTIAL
from connector.sync.follow import RETRY_BATCHES, Batch, Event, Follower, follow
from connector.sync.state import StateStore


def definition(folder: Path) -> SyncDefinition:
    data = {
        "name": "children",
        "source": {"stdin": True},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [
            {"source": "num", "target": "accountnumber"},
            {"source": "name", "target": "name"},
            {"target": "parentaccountid", "lookup": {"table": "account", "key": {"accountnumber": "parent"}}},
        ],
        "batch_size": 10,
        "state": f"sqlite:///{folder}/state.db",
    }
    return load_definition(data, policy=OperatorPolicy(preset="local"), base_dir=folder)


def ev(num: str, name: str, parent: str | None = None) -> dict[str, Any]:
    return {"num": num, "name": name, "parent": parent}


def parents(connection: Connection) -> dict[str, str | None]:
    """accountnumber -> the accountnumber of its parent, read back from the emulator."""
    rows = connection.client.get_json("accounts?$select=accountnumber,accountid,_parentaccountid_value")["value"]
    by_id = {r["accountid"]: r["accountnumber"] for r in rows}
    return {r["accountnumber"]: by_id.get(r["_parentaccountid_value"]) for r in rows}


def test_a_child_before_its_parent_is_carried_and_lands_once_the_parent_arrives(
    tmp_path: Path, connection: Connection
) -> None:
    sync = definition(tmp_path)
    store = StateStore(str(sync.state), sync.name)
    lines: list[dict[str, Any]] = []
    try:
        follower = Follower(sync, connection, store, report=lines.append)
        follower.flush(Batch(rows=[ev("C-1", "Child", parent="P-1")]))
        assert lines[-1]["counts"] == {"failed": 1} and lines[-1]["carried"] == 1
        assert follower.exit_code == EXIT_PARTIAL  # not in Dataverse yet
        follower.flush(Batch(rows=[ev("P-1", "Parent")]))  # the parent first, then the carried child
        assert lines[-1]["counts"] == {"created": 2} and lines[-1]["retried"] == 1 and "carried" not in lines[-1]
        assert follower.exit_code == EXIT_DONE
    finally:
        store.close()
    assert parents(connection) == {"P-1": None, "C-1": "P-1"}


def test_a_newer_event_replaces_a_carried_row(tmp_path: Path, connection: Connection) -> None:
    sync = definition(tmp_path)
    store = StateStore(str(sync.state), sync.name)
    lines: list[dict[str, Any]] = []
    try:
        follower = Follower(sync, connection, store, report=lines.append)
        follower.flush(Batch(rows=[ev("C-2", "Orphan", parent="NOPE")]))
        follower.flush(Batch(rows=[ev("C-2", "Fixed")]))  # the newer event for C-2 wins; the carried row is dropped
        assert lines[-1]["counts"] == {"created": 1} and "retried" not in lines[-1]
        assert follower.exit_code == EXIT_DONE
    finally:
        store.close()
    names = {
        r["accountnumber"]: r["name"]
        for r in connection.client.get_json("accounts?$select=accountnumber,name")["value"]
    }
    assert names == {"C-2": "Fixed"}


def test_a_row_that_keeps_failing_is_given_up_and_a_restart_carries_rows_on(
    tmp_path: Path, connection: Connection
) -> None:
    sync = definition(tmp_path)
    lines: list[dict[str, Any]] = []
    store = StateStore(str(sync.state), sync.name)
    try:
        Follower(sync, connection, store, report=lines.append).flush(Batch(rows=[ev("C-3", "Orphan", parent="NONE")]))
    finally:
        store.close()
    store = StateStore(str(sync.state), sync.name)  # a new session on the same state: the row is still carried
    try:
        follower = Follower(sync, connection, store, report=lines.append)
        assert follower.pending() and follower.exit_code == EXIT_PARTIAL
        for _ in range(RETRY_BATCHES):
            follower.flush(Batch())
        assert [line.get("retried") for line in lines] == [None] + [1] * RETRY_BATCHES
        assert lines[-1]["gave_up"] == [
            {"match_key": '{"accountnumber":"C-3"}', "code": "0x80060891", "batches": RETRY_BATCHES + 1}
        ]
        assert not follower.pending() and follower.exit_code == EXIT_PARTIAL
    finally:
        store.close()
    assert parents(connection) == {}


def test_a_quiet_stream_retries_on_time_and_once_more_at_its_end() -> None:
    clock = FakeClock()
    flushed: list[list[int]] = []
    waiting = [True]

    def events() -> Iterator[Event | None]:
        yield Event(1, {"n": 1})
        clock.advance(5)
        yield None  # due by time: the event's batch
        clock.advance(4)
        yield None  # a retry waits: 4 s since the last flush
        clock.advance(1)
        yield None  # 5 s since the last flush: an empty batch for the retries

    def flush(batch: Batch) -> None:
        flushed.append([r["n"] for r in batch.rows])

    follow(events(), flush, clock=clock, max_rows=10, max_wait_s=5, stop=lambda: False, pending=lambda: waiting[0])
    assert flushed == [[1], [], []]  # the last one at the end of the input
