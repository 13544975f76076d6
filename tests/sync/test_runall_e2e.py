"""``d365 sync run-all DIR``: dependency order from lookups, the account/contact cycle in two passes, a second round
that sends nothing, ``--every`` with a fake clock, and the scheduler's lease (two schedulers on one store)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import InputError
from connector.policy import OperatorPolicy
from connector.sync.definition import load_definition
from connector.sync.lease import Lease, ScheduleLocked
from connector.sync.runall import load_folder, plan_steps, schedule
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import writes

LOCAL = OperatorPolicy(preset="local")
ACCOUNTS = {
    "name": "accounts",
    "source": {"path": "companies.csv"},
    "target": "account",
    "match": {"key": ["accountnumber"]},
    "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
}
CONTACTS = {
    "name": "contacts",
    "source": {"path": "people.csv"},
    "target": "contact",
    "match": {"key": ["emailaddress1"]},
    "mapping": [
        {"source": "emp", "target": "emailaddress1"},
        {"source": "last", "target": "lastname"},
        {"target": "parentcustomerid", "lookup": {"table": "account", "key": {"accountnumber": "company"}}},
    ],
}
PRIMARY = {"target": "primarycontactid", "lookup": {"table": "contacts", "key": {"emailaddress1": "boss"}}}


def write(folder: Path, name: str, data: dict[str, Any]) -> None:
    (folder / name).write_text(json.dumps(data), encoding="utf-8")


def steps_of(folder: Path) -> list[tuple[str, str]]:
    found = load_folder(folder, LOCAL)
    entity_sets = {"contacts": "contact", "accounts": "account"}
    return [(s.definition.name, s.phase) for s in plan_steps(found, lambda t: entity_sets.get(t, t))]


def test_order_follows_the_lookups_and_a_cycle_gets_two_passes(tmp_path: Path) -> None:
    write(tmp_path, "a_contacts.sync.json", CONTACTS)  # sorts first by name, runs second
    write(tmp_path, "b_accounts.sync.json", ACCOUNTS)
    write(tmp_path, "connection.json", {"not": "a definition"})  # ignored: not *.sync.*
    assert steps_of(tmp_path) == [("accounts", "all"), ("contacts", "all")]
    write(tmp_path, "b_accounts.sync.json", {**ACCOUNTS, "mapping": [*ACCOUNTS["mapping"], PRIMARY]})
    assert steps_of(tmp_path) == [  # inside a cycle: by file name
        ("contacts.rows", "rows"),
        ("accounts.rows", "rows"),
        ("contacts", "all"),
        ("accounts", "all"),
    ]
    found = load_folder(tmp_path, LOCAL)
    first = plan_steps(found, lambda t: {"contacts": "contact"}.get(t, t))[1].definition
    assert first.mode == "insert" and [e.target for e in first.mapping] == ["accountnumber", "name"]


def test_a_folder_is_refused_whole_before_anything_runs(tmp_path: Path) -> None:
    write(tmp_path, "a.sync.json", ACCOUNTS)
    write(tmp_path, "b.sync.json", {**ACCOUNTS, "mode": "merge"})
    write(tmp_path, "c.sync.json", ACCOUNTS)
    with pytest.raises(InputError) as caught:
        load_folder(tmp_path, LOCAL)
    assert [p.path for p in caught.value.problems] == ["b.sync.json: $.mode", "c.sync.json: $.name"]


def _key(connection: Connection, table: str, name: str, column: str) -> None:
    connection.client.request(
        "POST",
        f"EntityDefinitions(LogicalName='{table}')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": name,
            "DisplayName": {"LocalizedLabels": [{"Label": name, "LanguageCode": 1033}]},
            "KeyAttributes": [column],
        },
    )
    connection.metadata.invalidate(table)


def test_run_all_resolves_the_account_contact_cycle(
    tmp_path: Path, connection: Connection, emulator: EmulatorHandle
) -> None:
    _key(connection, "contact", "new_email", "emailaddress1")
    (tmp_path / "companies.csv").write_text("num,name,boss\nA-1,Alpha,E-2\nA-2,Beta,E-1\n", encoding="utf-8")
    (tmp_path / "people.csv").write_text("emp,last,company\nE-1,Ames,A-1\nE-2,Bell,A-2\n", encoding="utf-8")
    write(tmp_path, "contacts.sync.json", CONTACTS)
    write(tmp_path, "accounts.sync.json", {**ACCOUNTS, "mapping": [*ACCOUNTS["mapping"], PRIMARY]})
    (tmp_path / "connection.json").write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    env = {"D365_CONNECTION": str(tmp_path / "connection.json")}
    done = CliRunner().invoke(main, ["sync", "run-all", str(tmp_path)], env=env, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    runs = [json.loads(x) for x in done.stdout.splitlines()]
    assert [(r["sync"], r["phase"], r["counts"]) for r in runs] == [
        ("accounts.rows", "rows", {"created": 2}),
        ("contacts.rows", "rows", {"created": 2}),
        ("accounts", "all", {"updated": 2}),
        ("contacts", "all", {"updated": 2}),
    ]
    ids = {
        **_ids(connection, "accounts", "accountid", "accountnumber"),
        **_ids(connection, "contacts", "contactid", "emailaddress1"),
    }
    bosses = connection.client.get_json("accounts?$select=accountnumber,_primarycontactid_value")["value"]
    assert {a["accountnumber"]: a["_primarycontactid_value"] for a in bosses} == {"A-1": ids["E-2"], "A-2": ids["E-1"]}
    parents = connection.client.get_json("contacts?$select=emailaddress1,_parentcustomerid_value")["value"]
    assert {c["emailaddress1"]: c["_parentcustomerid_value"] for c in parents} == {"E-1": ids["A-1"], "E-2": ids["A-2"]}

    emulator.admin.clear_requests()
    again = CliRunner().invoke(main, ["sync", "run-all", str(tmp_path)], env=env, catch_exceptions=False)
    assert [json.loads(x)["counts"] for x in again.stdout.splitlines()] == [{"unchanged": 2}] * 4
    assert writes(emulator) == []


def _ids(connection: Connection, entity_set: str, id_column: str, key: str) -> dict[str, str]:
    rows = connection.client.get_json(f"{entity_set}?$select={id_column},{key}")["value"]
    return {r[key]: r[id_column] for r in rows}


def test_every_repeats_rounds_with_a_fake_clock_and_holds_the_lease(tmp_path: Path) -> None:
    clock = FakeClock()
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    lease = Lease(url, "run-all", ttl_s=600, clock=clock, holder="one")
    other = Lease(url, "run-all", ttl_s=600, clock=clock, holder="two")
    starts: list[float] = []

    def one_round() -> int:
        starts.append(clock.monotonic())
        assert not other.acquire()  # held while the scheduler lives
        clock.advance(100)  # the round takes 100 s
        return 0

    assert schedule(one_round, lease, clock=clock, every_s=900, rounds=3) == 0
    assert [s - starts[0] for s in starts] == [0, 900, 1800]
    assert other.acquire()  # released at the end
    with pytest.raises(ScheduleLocked, match="another scheduler holds the lock 'run-all'"):
        schedule(one_round, lease, clock=clock)
    clock.advance(601)  # the holder died: its lease expires
    assert schedule(lambda: 5, lease, clock=clock) == 5
    lease.close()
    other.close()


def test_two_schedulers_racing_on_one_store_only_one_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    Lease(
        url, "schema", ttl_s=600, clock=FakeClock(), holder="setup"
    ).close()  # the race is for the lock, not the schema
    errors: list[BaseException] = []
    for attempt in range(5):
        name = f"race-{attempt}"
        barrier = threading.Barrier(2, timeout=60)  # a thread that failed before the barrier must not hang the other
        won: list[str] = []

        def race(holder: str, name: str = name, barrier: threading.Barrier = barrier, won: list[str] = won) -> None:
            try:
                lease = Lease(url, name, ttl_s=600, clock=FakeClock(), holder=holder)
                barrier.wait()
                if lease.acquire():
                    won.append(holder)
                lease.close()
            except BaseException as exc:  # reported by the test, not lost in the thread
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=race, args=(h,)) for h in ("one", "two")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], errors
        assert len(won) == 1, (attempt, won)


def test_definition_model_copy_of_a_cycle_keeps_the_original(tmp_path: Path) -> None:
    data = {**ACCOUNTS, "mapping": [*ACCOUNTS["mapping"], PRIMARY]}
    definition = load_definition(data, policy=LOCAL, base_dir=tmp_path)
    write(tmp_path, "accounts.sync.json", data)
    write(tmp_path, "contacts.sync.json", CONTACTS)
    plan_steps(load_folder(tmp_path, LOCAL), lambda t: {"contacts": "contact"}.get(t, t))
    assert len(definition.mapping) == 3 and definition.mode == "upsert"
