"""Mode mirror against the emulator: rows this sync follows that left the source are removed, deactivated or cleared;
the cap refuses before anything is written; what a delete would cascade is deactivated (auto) or listed (dry run);
rows created by hand, and their children, are never touched; an interrupted removal is finished by the next run."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.sync.engine import SyncJob, SyncResult, run_sync
from connector.sync.mirror import MirrorSpec
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import AccountMapper
from tests.sync.test_engine_e2e import people, source


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


def mirror_job(delete: str = "remove", fraction: float = 0.2, **kw: Any) -> SyncJob:
    spec = MirrorSpec(delete=delete, max_delete_fraction=fraction, clear_columns=("emailaddress1",))  # type: ignore[arg-type]
    return SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=2, parallelism=2, mirror=spec, **kw)


def mirror(conn: Connection, store: StateStore, rows: list[dict[str, Any]], j: SyncJob, **kw: Any) -> SyncResult:
    return run_sync(conn, j, AccountMapper(), source(rows), store, **kw)


def table(conn: Connection) -> dict[str, dict[str, Any]]:
    body = conn.client.get_json("accounts?$select=accountid,accountnumber,name,emailaddress1,statecode,statuscode")
    return {r["accountnumber"] or r["name"]: r for r in body["value"]}


def contacts(conn: Connection) -> set[str]:
    return {r["lastname"] for r in conn.client.get_json("contacts?$select=lastname")["value"]}


def add_contact(conn: Connection, name: str, account_id: str) -> None:
    bind = {"lastname": name, "parentcustomerid_account@odata.bind": f"/accounts({account_id})"}
    conn.client.request("POST", "contacts", json=bind)


def changes(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    return [r for r in emulator.admin.requests() if "/api/data/" in r["path"] and r["method"] != "GET"]


def with_email(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "email": f"{r['num'].lower()}@example.com"} for r in rows]


@pytest.mark.parametrize("delete", ["remove", "deactivate", "clear"])
def test_rows_that_left_the_source_are_removed_deactivated_or_cleared(
    connection: Connection, store: StateStore, delete: str
) -> None:
    rows = with_email(people(10))
    assert mirror(connection, store, rows, mirror_job(delete)).counts == {"created": 10}
    result = mirror(connection, store, rows[:9], mirror_job(delete))
    outcome = {"remove": "removed", "deactivate": "deactivated", "clear": "cleared"}[delete]
    assert result.counts == {"unchanged": 9, outcome: 1} and result.exit_code == 0
    ledger = {e.source_index: (e.outcome, e.match_key) for e in store.ledger(result.run or 0)}
    assert sorted(ledger) == list(range(10))  # the removal follows the source rows
    assert ledger[9] == (outcome, '{"accountnumber": "A-009"}')
    after = table(connection)
    assert {k: after[k]["statecode"] for k in after if k != "A-009"} == {r["num"]: 0 for r in rows[:9]}
    if delete == "remove":
        assert "A-009" not in after
    elif delete == "deactivate":
        assert (after["A-009"]["statecode"], after["A-009"]["statuscode"]) == (1, 2)
    else:
        assert (after["A-009"]["emailaddress1"], after["A-009"]["name"]) == (None, "Company 9")
    again = mirror(connection, store, rows[:9], mirror_job(delete))
    assert again.counts == {"unchanged": 9}  # no longer followed: never removed twice


def test_the_cap_refuses_before_anything_is_written_and_force_removes(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    rows = people(10)
    mirror(connection, store, rows, mirror_job())
    emulator.admin.clear_requests()
    runs = len(store.runs())
    with pytest.raises(InputError) as info:
        mirror(connection, store, rows[:7], mirror_job())  # 3 of 10 > 0.2
    assert info.value.problems[0].path == "$.max_delete_fraction"
    assert "3 of the 10 rows" in info.value.problems[0].message and "--force" in info.value.problems[0].message
    assert changes(emulator) == [] and len(store.runs()) == runs
    assert len(table(connection)) == 10
    assert mirror(connection, store, rows[:8], mirror_job()).counts == {"unchanged": 8, "removed": 2}  # 0.2: at cap
    forced = mirror(connection, store, rows[:2], mirror_job(), force=True)
    assert forced.counts == {"unchanged": 2, "removed": 6}
    assert set(table(connection)) == {"A-000", "A-001"}


def test_auto_deactivates_what_a_delete_would_cascade_and_the_dry_run_lists_it(
    connection: Connection, store: StateStore, emulator: EmulatorHandle
) -> None:
    rows = people(4)
    mirror(connection, store, rows, mirror_job("auto"))
    ids = {k: r["accountid"] for k, r in table(connection).items()}
    add_contact(connection, "child of 3", ids["A-003"])
    emulator.admin.clear_requests()
    dry = mirror(connection, store, rows[:2], mirror_job("remove", 1.0), dry_run=True)
    removal = dry.to_dict()["plan"]["removal"]
    assert removal["counts"] == {"remove": 2} and removal["cascade"] == {"contact": 1}
    assert {r["id"]: r["cascade"] for r in removal["first_rows"]} == {ids["A-002"]: {}, ids["A-003"]: {"contact": 1}}
    assert changes(emulator) == []
    auto = mirror(connection, store, rows[:2], mirror_job("auto", 1.0))
    assert auto.counts == {"unchanged": 2, "removed": 1, "deactivated": 1}
    after = table(connection)
    assert "A-002" not in after and after["A-003"]["statecode"] == 1
    assert contacts(connection) == {"child of 3"}


def test_rows_created_by_hand_and_their_children_are_never_touched(connection: Connection, store: StateStore) -> None:
    rows = people(3)
    mirror(connection, store, rows, mirror_job())
    hand = connection.client.request("POST", "accounts", json={"name": "By hand", "accountnumber": "H-1"})
    hand_id = str(hand.headers["OData-EntityId"]).rsplit("(", 1)[1].rstrip(")")
    add_contact(connection, "hand child", hand_id)
    synced = table(connection)
    add_contact(connection, "synced child", synced["A-002"]["accountid"])
    result = mirror(connection, store, [], mirror_job("remove"), force=True)  # the source is empty: remove all
    assert result.counts == {"removed": 3}
    after = table(connection)
    assert set(after) == {"H-1"} and after["H-1"]["statecode"] == 0
    assert contacts(connection) == {"hand child"}  # the synced row's child went with it (parental cascade)


@pytest.mark.parametrize("point", ["before_remove", "after_remove"])
def test_an_interrupted_removal_is_finished_by_the_next_run(
    connection: Connection, store: StateStore, point: str
) -> None:
    rows = people(12)
    mirror(connection, store, rows, mirror_job(fraction=1.0))
    seen = Counter[str]()

    def hook(name: str) -> None:
        seen[name] += 1
        if name == point and seen[name] == 2:  # the second chunk of removals (4 rows each)
            raise Crash(point)

    with pytest.raises(Crash):
        mirror(connection, store, rows[:2], mirror_job(fraction=1.0), hook=hook)
    crashed = store.runs()[0]
    assert sum(1 for e in store.ledger(crashed.id) if e.outcome == "removed") == 4  # the first chunk: committed
    resumed = mirror(connection, store, rows[:2], mirror_job(fraction=1.0))
    assert resumed.interrupted_runs == [crashed.id]
    assert resumed.counts == {"unchanged": 2, "removed": 6} and resumed.exit_code == 0
    ledger = list(store.ledger(resumed.run or 0))
    assert sorted(e.source_index for e in ledger) == list(range(8))
    gone = [e for e in ledger if e.message and "already gone" in e.message]
    assert len(gone) == (4 if point == "after_remove" else 0)  # sent but never confirmed: found gone, not re-deleted
    assert set(table(connection)) == {"A-000", "A-001"}
    assert store.pending_intents() == []
