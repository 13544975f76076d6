"""Crashes at deterministic points of a run, then a resume: the table equals the source, no row is created twice,
and every source row is in the ledger exactly once for the resumed run (at most once for the crashed one).

The points: before a group is sent (intents committed), while it is sent (the rows land, the answers are never seen:
the streaming writer raises after writing), after a chunk's answer before its ledger commit, and in the middle of the
commit (after the ledger insert, before the row state: the transaction rolls back).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import connector.sync.engine as engine
from connector.connection import Connection
from connector.sync.engine import SyncJob, run_sync
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from tests.sync.conftest import AccountMapper, accounts
from tests.sync.test_engine_e2e import people, source


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def crash_at(point: str, group: int) -> Any:
    seen = Counter[str]()

    def hook(name: str) -> None:
        seen[name] += 1
        if name == point and seen[name] == group:
            raise Crash(point)

    return hook


def assert_table_equals_source(connection: Connection, rows: list[dict[str, Any]]) -> None:
    table = accounts(connection)
    numbers = [r["accountnumber"] for r in table]
    assert len(numbers) == len(set(numbers)), "a row was created twice"
    assert {r["accountnumber"]: r["name"] for r in table} == {r["num"]: r["name"] for r in rows}


@pytest.mark.parametrize("point", ["before_send", "sent", "after_send", "mid_commit"])
@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_resume_after_a_crash(
    connection: Connection, store: StateStore, monkeypatch: pytest.MonkeyPatch, point: str, mode: str
) -> None:
    rows = people(30)
    job = SyncJob("accounts", "account", MatchRule(kind="key", mode=mode), batch_size=2, parallelism=2)  # type: ignore[arg-type]
    hook = None
    if point == "sent":
        real = engine.write_entities_stream
        calls = Counter[str]()

        def dies_after_writing(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 3:  # the rows land, their answers are never seen
                real(*args, **{**kwargs, "on_chunk": lambda results: None})
                raise Crash("sent")
            return real(*args, **kwargs)

        monkeypatch.setattr(engine, "write_entities_stream", dies_after_writing)
    else:
        hook = crash_at(point, 3)
    with pytest.raises(Crash):
        run_sync(connection, job, AccountMapper(), source(rows), store, hook=hook)
    crashed = store.runs()[0]
    monkeypatch.undo()
    assert len({e.source_index for e in store.ledger(crashed.id)}) == len(list(store.ledger(crashed.id)))
    resumed = run_sync(connection, job, AccountMapper(), source(rows), store)
    assert resumed.interrupted_runs == [crashed.id]
    assert resumed.exit_code == 0, resumed.counts
    assert_table_equals_source(connection, rows)
    ledger = list(store.ledger(resumed.run or 0))
    assert sorted(e.source_index for e in ledger) == list(range(30))
    assert sum(resumed.counts.values()) == 30
    assert store.pending_intents() == []
    again = run_sync(connection, job, AccountMapper(), source(rows), store)
    assert again.counts == {"unchanged": 30}


def test_ctrl_c_stops_between_groups_with_every_row_ledgered(connection: Connection, store: StateStore) -> None:
    from connector.progress import CancellationToken

    rows = people(30)
    job = SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=2, parallelism=2)
    token = CancellationToken()
    seen = Counter[str]()

    def ctrl_c(point: str) -> None:
        seen[point] += 1
        if point == "after_send" and seen[point] == 4:  # after a chunk: the second group's second chunk
            token.cancel("SIGINT")

    result = run_sync(connection, job, AccountMapper(), source(rows), store, hook=ctrl_c, cancel=token)
    assert (result.status, result.exit_code) == ("cancelled", 130)
    assert result.counts == {"created": 8, "not_sent": 22}
    assert sorted(e.source_index for e in store.ledger(result.run or 0)) == list(range(30))
    assert store.runs()[0].status == "cancelled"
    assert len(accounts(connection)) == 8
    again = run_sync(connection, job, AccountMapper(), source(rows), store)
    assert again.counts == {"unchanged": 8, "created": 22}
    assert_table_equals_source(connection, rows)
