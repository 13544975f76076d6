"""The sync engine against the emulator: modes, matches, incremental runs, duplicates, the ledger, dry runs."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import DataverseApiError
from connector.sync.engine import SyncJob, SyncResult, run_sync
from connector.sync.mapping import MappedRow as Mapped
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import AccountMapper, accounts, writes

Rows = list[dict[str, Any]]


def source(rows: Rows, batch: int = 7) -> Callable[[], Iterable[Rows]]:
    return lambda: (rows[i : i + batch] for i in range(0, len(rows), batch))


def job(kind: str = "key", mode: str = "upsert", **rule: Any) -> SyncJob:
    return SyncJob("accounts", "account", MatchRule(kind=kind, mode=mode, **rule), batch_size=1, parallelism=4)  # type: ignore[arg-type]


def sync(conn: Connection, store: StateStore, rows: Rows, j: SyncJob | None = None, **kw: Any) -> SyncResult:
    mapper = kw.pop("mapper", None) or AccountMapper(by=(j or job()).rule.kind)
    return run_sync(conn, j or job(), mapper, source(rows), store, **kw)


def people(n: int, suffix: str = "") -> Rows:
    return [{"num": f"A-{i:03}", "name": f"Company {i}{suffix}"} for i in range(n)]


def by_number(conn: Connection) -> dict[str, str]:
    rows = accounts(conn)
    numbers = [r["accountnumber"] for r in rows]
    assert len(numbers) == len(set(numbers)), "duplicates in the table"
    return {r["accountnumber"]: r["name"] for r in rows}


def ledger_once(store: StateStore, run: int, n: int) -> dict[int, str]:
    entries = list(store.ledger(run))
    assert sorted(e.source_index for e in entries) == list(range(n))
    return {e.source_index: e.outcome for e in entries}


def test_upsert_by_key_then_an_incremental_run_sends_only_changed_rows(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    rows = people(20)
    first = sync(connection, store, rows)
    assert first.counts == {"created": 20} and first.exit_code == 0
    assert by_number(connection) == {r["num"]: r["name"] for r in rows}
    emulator.admin.clear_requests()
    second = sync(connection, store, rows)
    assert second.counts == {"unchanged": 20}
    assert [r for r in emulator.admin.requests() if "/api/data/" in r["path"]] == []  # not even a read
    changed = [dict(r, name=r["name"] + "!") if i in (3, 11, 17) else r for i, r in enumerate(rows)]
    emulator.admin.clear_requests()
    third = sync(connection, store, changed)
    assert third.counts == {"unchanged": 17, "updated": 3}
    assert len(writes(emulator)) == 3  # batch_size 1: one write per changed row, none for the others
    assert by_number(connection) == {r["num"]: r["name"] for r in changed}
    assert ledger_once(store, third.run or 0, 20)[11] == "updated"
    assert [r.id for r in store.runs()] == [third.run, second.run, first.run]


def test_an_incremental_run_gathers_changed_rows_into_full_chunks(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    """Few changed rows spread over many groups still fill chunks: 6 changed rows of 120, one in each group of 20, go
    out as one write of 6 (batch_size 10), not one write per group that holds one."""
    wide = SyncJob("accounts", "account", MatchRule(kind="key", mode="upsert"), batch_size=10, parallelism=2)
    rows = people(120)
    assert sync(connection, store, rows, wide).counts == {"created": 120}
    changed = [dict(r, name=r["name"] + "?") if i % 20 == 7 else r for i, r in enumerate(rows)]
    emulator.admin.clear_requests()
    again = sync(connection, store, changed, wide)
    assert again.counts == {"unchanged": 114, "updated": 6}
    assert len(writes(emulator)) == 1  # one UpdateMultiple of 6 rows; group by group it was 6 requests
    assert by_number(connection) == {r["num"]: r["name"] for r in changed}
    assert sorted(ledger_once(store, again.run or 0, 120).values()).count("updated") == 6


def test_full_resends_and_a_changed_mapping_resends_what_it_changes(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    rows = people(6)
    sync(connection, store, rows)
    assert sync(connection, store, rows, full=True).counts == {"updated": 6}
    assert sync(connection, store, rows, mapper=AccountMapper(version="v2")).counts == {"updated": 6}
    assert sync(connection, store, rows, mapper=AccountMapper(version="v2")).counts == {"unchanged": 6}


def test_duplicate_keys_the_last_row_wins(connection: Connection, store: StateStore) -> None:
    rows = [*people(3), {"num": "A-001", "name": "later"}, {"num": "a-000", "name": "other case"}]
    result = sync(connection, store, rows)
    outcomes = ledger_once(store, result.run or 0, 5)
    assert outcomes[1] == "duplicate_of" and outcomes[3] == "created"
    dup = next(e for e in store.ledger(result.run or 0) if e.source_index == 1)
    assert dup.duplicate_of == 3
    assert by_number(connection)["A-001"] == "later"


def test_failed_rows_are_ledgered_and_retried_by_the_next_run(connection: Connection, store: StateStore) -> None:
    rows = [*people(3), {"num": "A-009", "name": "x" * 60}]
    result = sync(connection, store, rows)
    assert result.counts == {"created": 3, "failed": 1} and result.exit_code == 5
    bad = next(e for e in store.ledger(result.run or 0) if e.outcome == "failed")
    assert bad.code == "InputError" and "too long" in (bad.message or "")
    rows[3]["name"] = "fixed"
    assert sync(connection, store, rows).counts == {"unchanged": 3, "created": 1}


def test_insert_skips_existing_rows_and_update_never_creates(connection: Connection, store: StateStore) -> None:
    sync(connection, store, people(2))
    result = sync(connection, store, people(4, "*"), job(mode="insert"))
    assert result.counts == {"skipped": 2, "created": 2}
    assert by_number(connection)["A-000"] == "Company 0"
    updated = sync(connection, store, [*people(5, "+")], job(mode="update"))
    assert updated.counts == {"updated": 4, "skipped": 1}
    assert "A-004" not in by_number(connection)
    assert next(e for e in store.ledger(updated.run or 0) if e.source_index == 4).message is not None


def test_match_by_guid_column_with_and_without_id_insert(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    (existing,) = emulator.admin.seed("account", [{"name": "old"}])
    new = str(uuid.uuid4())
    rows = [{"id": existing, "name": "renamed"}, {"id": new, "name": "brand new"}]
    result = sync(connection, store, rows, job("id"))
    assert result.counts == {"updated": 1, "skipped": 1}
    assert {r["name"] for r in accounts(connection)} == {"renamed"}
    result = sync(connection, store, rows, job("id", id_insert=True))
    assert result.counts == {"unchanged": 1, "created": 1}
    assert {r["accountid"]: r["name"] for r in accounts(connection)} == {existing: "renamed", new: "brand new"}


def test_match_by_column_stamps_the_key_and_refuses_ambiguous_matches(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    emulator.admin.seed(
        "account",
        [
            {"name": "one", "emailaddress1": "one@example.com"},
            {"name": "twin", "emailaddress1": "twin@example.com"},
            {"name": "twin too", "emailaddress1": "twin@example.com"},
        ],
    )
    rows = [
        {"num": "C-1", "name": "One", "email": "ONE@example.com"},
        {"num": "C-2", "name": "Twin", "email": "twin@example.com"},
        {"num": "C-3", "name": "Three", "email": "three@example.com"},
    ]
    result = sync(connection, store, rows, job("column", column="emailaddress1", stamp="accountnumber"))
    assert result.counts == {"updated": 1, "failed": 1, "created": 1}
    ambiguous = next(e for e in store.ledger(result.run or 0) if e.outcome == "failed")
    assert "ambiguous: 2 rows" in (ambiguous.message or "")
    table = {
        r["emailaddress1"].lower(): (r["accountnumber"], r["name"]) for r in accounts(connection) if r["name"] != "twin"
    }
    assert table["one@example.com"] == ("C-1", "One")  # stamped: later runs can match by key
    assert table["three@example.com"] == ("C-3", "Three")
    assert len(accounts(connection)) == 4


def test_a_dry_run_plans_and_writes_nothing(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    sync(connection, store, people(2))
    emulator.admin.clear_requests()
    rows = [*people(3, "~"), {"num": "A-007", "name": "y" * 51}, {"num": "A-002", "name": "dup"}]
    result = sync(connection, store, rows, dry_run=True)
    assert result.exit_code == 5  # a row would fail: the dry run ends as the run would
    assert sync(connection, store, people(2), dry_run=True).exit_code == 0
    assert writes(emulator) == []
    assert result.run is None and store.runs()[0].status == "done"
    plan = result.to_dict(1)["plan"]
    assert plan["counts"] == {"update": 2, "failed": 1, "duplicate_of": 1, "create": 1}
    assert plan["problems"][0]["source_index"] == 3
    assert plan["api_requests"]["writes"] == 3
    assert json.dumps(plan)  # printable as it is


class FailingMapper(AccountMapper):
    """Maps the first pass, then fails in the second (a metadata read that fails mid-run stands for any error
    outside the existence reads)."""

    def __init__(self, fail_after: int) -> None:
        super().__init__()
        self.calls, self.fail_after = 0, fail_after

    def map_rows(self, rows: Sequence[Mapping[str, Any]], start_index: int) -> list[Mapped]:
        self.calls += 1
        if self.calls > self.fail_after:
            raise DataverseApiError("reading the metadata of contact failed", status_code=500, code="0x80040216")
        return super().map_rows(rows, start_index)


def test_an_error_mid_run_closes_the_run_failed_at_once(connection: Connection, store: StateStore) -> None:
    rows = people(12)
    j = SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=2, parallelism=2)
    mapper = FailingMapper(fail_after=len(rows) // 4 + 1)  # the first pass, then the second pass's first group
    with pytest.raises(DataverseApiError):
        run_sync(connection, j, mapper, source(rows, batch=4), store)
    run = store.runs()[0]
    assert (run.status, run.exit_status) == ("failed", DataverseApiError.exit_code)
    assert run.error is not None and "reading the metadata of contact failed" in run.error
    assert run.ended is not None and sum(run.counts.values()) == 4  # the group ledgered before the error
    again = sync(connection, store, rows, j)
    assert again.interrupted_runs == [] and again.exit_code == 0
    assert again.counts == {"unchanged": 4, "created": 8}


def test_existence_reads_are_in_reads_packed_to_the_url(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    """600 rows in groups of 400: one ``In`` read per group finds which rows exist (it was one read per 40 rows)."""
    sync(connection, store, people(5))  # five rows exist; the 600-row run updates them and creates the rest
    emulator.admin.clear_requests()
    rows = people(600, "!")
    j = SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=100, parallelism=4)
    result = sync(connection, store, rows, j)
    assert result.counts == {"updated": 5, "created": 595}
    gets = [r for r in emulator.admin.requests() if r["method"] == "GET" and "/api/data/" in r["path"]]
    existence = [r for r in gets if "PropertyName='accountnumber'" in (r.get("query") or r["path"])]
    assert len(existence) == 2, [r.get("query") or r["path"] for r in gets]
    assert by_number(connection) == {r["num"]: r["name"] for r in rows}


def test_the_next_group_is_prepared_while_one_is_sent(
    connection: Connection, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a group is sent, the next one's rows are read and its intents committed, so the run's requests do not
    stop between groups: the first group's send waits here until the second group's intents are committed."""
    second_intents = threading.Event()
    real = store.record_intents
    calls: list[int] = []

    def record_intents(run: int, chunk: int, intents: Any) -> None:
        real(run, chunk, intents)
        calls.append(chunk)
        if len(calls) == 2:
            second_intents.set()

    monkeypatch.setattr(store, "record_intents", record_intents)
    overlapped: list[bool] = []

    def hook(point: str) -> None:
        if point == "before_send" and not overlapped:
            overlapped.append(second_intents.wait(timeout=10))

    j = SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=2, parallelism=2)
    result = run_sync(connection, j, AccountMapper(), source(people(12)), store, hook=hook)
    assert overlapped == [True] and result.counts == {"created": 12}
