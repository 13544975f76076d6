"""Outcomes stay honest at 60% injected faults: every reported outcome is checked against the table read back.

Four ``write_entities`` runs go through the emulator with its seeded fault injection at 60% of Web API requests
(``dataverse_emulator/faults.py``: 503 with and without ``Retry-After``, 502, dropped connections, and writes that
commit before their connection drops): a create whose records carry their own ids, the same create input again (a
rerun after a kill), an upsert by alternate key (half the keys exist) and an update by id. The connector runs with
its default retry policy, so retry budgets do run out. After each run the table is read back (through a connection
that retries until it gets an answer) and every record's outcome checked: ``created``/``updated``/``already_present``
-> the row holds the written values; ``failed`` -> the written columns of its row (or its absence) are as they
were before the run (the change did not apply); ``unknown`` -> it carries a code and a reason; and every run ends
with one result per input record. The emulator and the connection share a :class:`FakeClock`, so ``Retry-After``
and backoff waits cost no real time; one request at a time keeps the fault sequence, and so the counts, the same
from run to run.

``benchmarks/chaos.py`` runs the same scenario at 50,000 rows and prints the table.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector import RetryPolicy
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import ConnectorError
from connector.runtime import Runtime
from dataverse_emulator.testing import running_emulator

FAULT_RATE = 0.6
SEED = 60
PATIENT = RetryPolicy(max_attempts=200, max_elapsed_s=10**9, max_wait_s=10**9)
"""The checking side's policy: at 60% faults a read fails five times running one time in 13, never 200 times."""
Table = tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]
"""The account rows read back, by id and by account number."""


@dataclass
class Step:
    """One ``write_entities`` run and what the read back found about each outcome."""

    name: str
    mode: str
    records: list[dict[str, Any]]
    out: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    verified: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)


def steps(n: int, seed: int) -> list[Step]:
    """Create with own ids, the same again, upsert by key (half the keys new), update by id: unique values each."""
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    create = [
        {"id": ids[i], "fields": {"name": f"c{i}", "accountnumber": f"N-{i:06d}", "numberofemployees": i}}
        for i in range(n)
    ]
    upsert = [{"key": {"accountnumber": f"N-{i:06d}"}, "fields": {"name": f"u{i}"}} for i in range(n // 2, n + n // 2)]
    update = [{"id": ids[i], "fields": {"numberofemployees": 1_000_000 + i}} for i in range(0, n, 2)]
    return [
        Step("create, own ids", "create", create),
        Step("create again", "create", create),
        Step("upsert by key", "upsert", upsert),
        Step("update by id", "update", update),
    ]


def patiently(fn: Callable[[], Any]) -> Any:
    """Set-up the scenario needs before the run (metadata in the run's cache): asked again until it answers."""
    for _ in range(200):
        try:
            return fn()
        except ConnectorError:
            continue
    raise AssertionError("no answer in 200 tries")


def ensure_key(checker: Connection) -> None:
    """The accountnumber key, created through faults: a POST whose answer is lost is checked by reading."""

    def exists() -> bool:
        keys = checker.client.get_json("EntityDefinitions(LogicalName='account')/Keys?$select=SchemaName")
        return any(k.get("SchemaName") == "acc_number" for k in keys["value"])

    while not exists():
        try:
            checker.client.request(
                "POST",
                "EntityDefinitions(LogicalName='account')/Keys",
                json={
                    "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
                    "SchemaName": "acc_number",
                    "DisplayName": {"LocalizedLabels": [{"Label": "Number", "LanguageCode": 1033}]},
                    "KeyAttributes": ["accountnumber"],
                },
            )
        except ConnectorError:
            continue


def read_table(checker: Connection) -> Table:
    """Every account row, by id and by account number."""
    rows: list[dict[str, Any]] = []
    url: str | None = "accounts?$select=accountid,accountnumber,name,numberofemployees"
    while url:
        page = checker.client.get_json(url, prefer=["odata.maxpagesize=5000"])
        rows += page["value"]
        url = page.get("@odata.nextLink")
    return {r["accountid"]: r for r in rows}, {r["accountnumber"]: r for r in rows if r.get("accountnumber")}


def locate(table: Table, record: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
    """The row a record wrote (or would have): by the id reported or given, else by its key."""
    by_id, by_number = table
    rid = result.get("id") or record.get("id")
    row = by_id.get(rid) if rid else None
    if row is None and "key" in record:
        row = by_number.get(record["key"]["accountnumber"])
    return row


def check(step: Step, before: Table, after: Table) -> None:
    """Each record's outcome against the rows read before and after the run (see the module docstring)."""
    results = step.out["results"]
    if len(results) != len(step.records):
        step.mismatches.append(f"{len(results)} results for {len(step.records)} records")
    for record, result in zip(step.records, results, strict=False):
        written = {**record.get("key", {}), **record["fields"]}
        row, old = locate(after, record, result), locate(before, record, result)
        holds = row is not None and all(row.get(c) == v for c, v in written.items())
        status = result["status"]
        if status in ("created", "updated", "already_present"):
            ok = holds
        elif status == "failed":
            ok = (row and {c: row.get(c) for c in written}) == (old and {c: old.get(c) for c in written})
        else:
            ok = status == "unknown" and bool(result.get("code")) and bool(result.get("message"))
        step.verified[status] += ok
        if not ok:
            step.mismatches.append(f"{step.name} #{result['index']}: {status} but row {row} for {written}")


def run_chaos(
    n: int, *, seed: int = SEED, fault_rate: float = FAULT_RATE, chunk_size: int | None = None
) -> tuple[list[Step], Counter[str]]:
    """The four runs against a faulty emulator, each checked; returns the steps and the faults injected, by kind."""
    clock = FakeClock(start=time.time())
    runtime = Runtime(load_entrypoints=False, validate_output=True)
    done = steps(n, seed)
    with running_emulator(clock=clock.time, fault_rate=fault_rate, seed=seed, key_activation_s=0) as emulator:
        config = {**emulator.connection_config(), "max_parallelism": 1}
        with (
            Connection.from_config(config, clock=clock, retry=PATIENT) as checker,
            Connection.from_config(config, clock=clock) as conn,
        ):
            ensure_key(checker)
            patiently(lambda: conn.metadata.table("account"))
            table = read_table(checker)
            for step in done:
                inputs: dict[str, Any] = {"table": "account", "mode": step.mode, "records": step.records}
                if chunk_size is not None:
                    inputs["chunk_size"] = chunk_size
                started = time.perf_counter()
                step.out = runtime.run_action("write_entities", inputs, conn)
                step.seconds = time.perf_counter() - started
                before, table = table, read_table(checker)
                check(step, before, table)
        faults = Counter(str(r["fault"]) for r in emulator.admin.requests() if r.get("fault"))
    return done, faults


def test_outcomes_at_60_percent_faults_match_the_table_read_back() -> None:
    # chunks of 100: enough requests that retry budgets run out and every kind of outcome appears, whatever the
    # fault sequence (with chunks of 1,000 the run is a dozen writes, and whether one fails for good is luck)
    done, faults = run_chaos(2000, chunk_size=100)
    assert faults["commit_then_drop"] > 0 and faults["drop"] > 0, faults
    for step in done:
        assert step.mismatches == [], step.mismatches[:5]
        assert sum(step.verified.values()) == len(step.records)
    summaries = {step.name: step.out["summary"] for step in done}
    # the faults did bite: lost answers were decided by reading, and some changes truly failed
    assert all(s["created"] + s["updated"] + s["already_present"] > 0 for s in summaries.values()), summaries
    assert sum(s["failed"] for s in summaries.values()) > 0, summaries
    assert summaries["create again"]["already_present"] > 0, summaries
    assert summaries["create again"]["failed"] == sum(
        1 for r in done[1].out["results"] if r["status"] == "failed" and r["code"] != "0x80040237"
    ), "a rerun reported a row it had written itself as a duplicate-key failure"
