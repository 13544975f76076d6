"""A 2,000-row sync under the strict throttle model and 5% injected faults (503s, 502s, dropped connections and
writes that commit before their connection drops): every row ends created or updated exactly as in the source, or
failed with a code and a reason; nothing unexplained, nothing created twice. Emulator and connection share a
FakeClock, so Retry-After and backoff cost no real time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connector import RetryPolicy
from connector.clock import FakeClock
from connector.connection import Connection
from connector.sync.engine import SyncJob, run_sync
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from dataverse_emulator.testing import running_emulator
from tests.sync.conftest import AccountMapper

N = 2000
PATIENT = RetryPolicy(max_attempts=200, max_elapsed_s=10**9, max_wait_s=10**9)


def batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), 500):
        yield rows[start : start + 500]


def read_back(checker: Connection) -> dict[str, str]:
    out: list[dict[str, Any]] = []
    url: str | None = "accounts?$select=accountnumber,name"
    while url:
        body = checker.client.get_json(url, prefer=["odata.maxpagesize=5000"])
        out += body["value"]
        url = body.get("@odata.nextLink")
    numbers = [r["accountnumber"] for r in out]
    assert len(numbers) == len(set(numbers)), "a row was created twice"
    return {r["accountnumber"]: r["name"] for r in out}


def test_a_sync_under_throttling_and_faults_explains_every_row(tmp_path: Path) -> None:
    clock = FakeClock(start=time.time())
    with running_emulator(clock=clock.time, fault_rate=0.05, seed=18, throttle="strict", key_activation_s=0) as emu:
        config = emu.connection_config()
        with (
            Connection.from_config(config, clock=clock, retry=PATIENT) as checker,
            Connection.from_config(config, clock=clock) as conn,
        ):
            checker.client.request(
                "POST",
                "EntityDefinitions(LogicalName='account')/Keys",
                json={
                    "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
                    "SchemaName": "new_accountnumber",
                    "DisplayName": {"LocalizedLabels": [{"Label": "n", "LanguageCode": 1033}]},
                    "KeyAttributes": ["accountnumber"],
                },
            )
            store = StateStore(f"sqlite:///{tmp_path / 's.sqlite'}", "accounts")
            job = SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=25, parallelism=4)
            rows = [{"num": f"X-{i:05}", "name": f"Company {i}"} for i in range(N)]
            for attempt in range(2):  # a first load, then 10% of the rows changed
                if attempt:
                    rows = [dict(r, name=r["name"] + " v2") if i % 10 == 0 else r for i, r in enumerate(rows)]
                result = run_sync(conn, job, AccountMapper(), lambda rows=rows: batches(rows), store)
                ledger = list(store.ledger(result.run or 0))
                assert sorted(e.source_index for e in ledger) == list(range(N))
                table = read_back(checker)
                for entry in ledger:
                    source = rows[entry.source_index]
                    if entry.outcome in ("created", "updated"):
                        assert table.get(source["num"]) == source["name"], entry
                    elif entry.outcome == "failed":
                        assert entry.code and entry.message, entry
                    else:  # unchanged: confirmed by the first run, so the table holds it
                        assert entry.outcome == "unchanged" and attempt == 1, entry
                        assert table.get(source["num"]) == source["name"], entry
                assert result.counts.get("created", 0) + result.counts.get("updated", 0) > 0
            faults = [r["fault"] for r in emu.admin.requests() if r.get("fault")]
            assert "commit_then_drop" in faults and len(faults) > 5, faults
            print(result.counts, len(faults), "faults")
            store.close()
