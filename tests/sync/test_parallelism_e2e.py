"""A sync's ``parallelism`` is a real cap on its requests in flight: the governor holds the connection to it while
the run lasts (``Governor.capped``), below ``max_parallelism`` and the server's hint, never above them."""

from __future__ import annotations

import threading

from connector.clock import FakeClock
from connector.connection import Connection
from connector.governor import Governor
from connector.sync.engine import SyncJob, run_sync
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import AccountMapper
from tests.sync.test_engine_e2e import people, source

WAIT_S = 5.0


def test_a_cap_lowers_the_limit_while_it_lasts_and_never_raises_it() -> None:
    governor = Governor(clock=FakeClock(), max_parallelism=8)
    with governor.capped(3):
        assert governor.limit == 1  # the first request still goes alone
        governor.observe({})
        assert governor.limit == 3
        with governor.capped(5):
            assert governor.limit == 3  # the lowest cap applies
        governor.observe({"x-ms-dop-hint": "2"})
        assert governor.limit == 2  # the server's hint below the cap wins
    governor.observe({"x-ms-dop-hint": "6"})
    assert governor.limit == 6
    with governor.capped(12):
        assert governor.limit == 6


def test_items_in_flight_reach_the_cap_and_never_pass_it() -> None:
    governor = Governor(clock=FakeClock(), max_parallelism=8)
    governor.observe({})
    total, cap = 12, 3
    state = {"current": 0, "peak": 0, "started": 0}
    cond = threading.Condition()

    def item(_: int) -> None:
        with governor.slot(), cond:
            state["current"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["current"])
            cond.notify_all()
            # held until the cap is reached together (or all started): without the cap the 8 workers would pass it
            cond.wait_for(lambda: state["current"] >= cap or state["started"] == total, timeout=WAIT_S)
            state["current"] -= 1
            cond.notify_all()

    with governor.capped(cap):
        outcomes = governor.map(item, range(total))
    assert all(o.ok for o in outcomes)
    assert state["peak"] == cap == governor.peak
    assert governor.limit == 8


def test_a_sync_holds_its_requests_to_its_parallelism(emulator: EmulatorHandle, store: StateStore) -> None:
    emulator.admin.reset()
    config = {**emulator.connection_config(), "max_parallelism": 8}
    with Connection.from_config(config) as conn:
        job = SyncJob("accounts", "account", MatchRule(kind="id", id_insert=True), batch_size=1, parallelism=2)
        rows = [{**r, "id": f"00000000-0000-0000-0000-{i:012}"} for i, r in enumerate(people(24))]
        limits: list[int] = []
        result = run_sync(
            conn, job, AccountMapper(by="id"), source(rows), store, hook=lambda _: limits.append(conn.governor.limit)
        )
        assert result.counts == {"created": 24}
        assert set(limits) == {2} and conn.governor.peak <= 2
        assert conn.governor.limit > 2  # the cap ended with the run
