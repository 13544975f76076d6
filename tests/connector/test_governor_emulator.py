"""The governor against the emulator's service protection model and seeded faults, over a real socket.

The emulator and the connector share one :class:`FakeClock`: the emulator's throttle windows and ``Retry-After`` are
computed on it, and the connector's waits advance it, so a run that is throttled many times never really sleeps.
Faults include "commit, then drop the connection": the retry-safe creates must still create every row exactly once.
"""

from __future__ import annotations

import time
from typing import Any

from connector import RetryPolicy
from connector.clock import FakeClock
from connector.connection import Connection
from dataverse_emulator.testing import running_emulator


def test_bulk_creates_survive_throttling_and_faults_without_duplicates() -> None:
    clock = FakeClock(start=time.time())
    with running_emulator(
        clock=clock.time, throttle="strict", max_requests=60, fault_rate=0.08, seed=11, dop_hint=3
    ) as emulator:
        policy = RetryPolicy(max_attempts=10, max_elapsed_s=86_400)
        with Connection.from_config(emulator.connection_config(), clock=clock, retry=policy) as conn:
            bodies = [{"name": f"bulk-{i:03d}"} for i in range(150)]
            outcomes = conn.client.create_many("accounts", bodies, id_attribute="accountid")
            errors = [o.error for o in outcomes if not o.ok]
            assert errors == []
            ids = [o.result().id for o in outcomes]
            confirmed = sum(o.result().confirmed_by_get for o in outcomes)
            assert len(set(ids)) == 150
            assert conn.governor.peak <= 3  # the emulator's x-ms-dop-hint
            rows: list[dict[str, Any]] = []
            url: str | None = "accounts?$select=name,accountid"
            while url:
                page = conn.client.get_json(url, prefer=["odata.maxpagesize=500"])
                rows += page["value"]
                url = page.get("@odata.nextLink")
        log = emulator.admin.requests()
    assert sorted(r["name"] for r in rows) == [b["name"] for b in bodies]  # every row once, none twice
    assert {r["accountid"] for r in rows} == set(ids)
    assert any(r.get("throttled") for r in log), "the run was never throttled: the test proves nothing"
    assert any(r.get("fault") for r in log), "no fault was injected: the test proves nothing"
    lost_answers = [r for r in log if r.get("fault") == "commit_then_drop" and r.get("method") == "POST"]
    # each create whose answer was lost after the commit was resent, met the duplicate key and was confirmed by GET
    assert 0 < confirmed <= len(lost_answers) if lost_answers else confirmed == 0
