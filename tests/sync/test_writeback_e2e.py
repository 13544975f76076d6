"""``d365 sync run --write-back TABLE``: each run's ledger written into the DuckDB source (or a file beside the
definition), equal to the ledger row for row; the operator policy checked before anything is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.clock import FakeClock
from connector.connection import Connection
from connector.policy import OperatorPolicy
from connector.sync.definition import load_definition
from connector.sync.follow import Follower, follow, tail
from connector.sync.state import StateStore
from connector.sync.writeback import COLUMNS, write_back_target
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import accounts, writes


def d365(folder: Path, *args: str, **env: str) -> Any:
    environ = {"D365_CONNECTION": str(folder / "connection.json"), **env}
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=environ)


def warehouse(path: Path, rows: list[tuple[str, str]]) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE OR REPLACE TABLE companies (num VARCHAR, name VARCHAR)")
    con.executemany("INSERT INTO companies VALUES (?, ?)", rows)
    con.close()


def setup(folder: Path, emulator: EmulatorHandle, source: dict[str, Any]) -> Path:
    (folder / "connection.json").write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    definition = {
        "name": "accounts",
        "source": source,
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
    }
    (folder / "sync.json").write_text(json.dumps(definition), encoding="utf-8")
    return folder / "sync.json"


def written(path: Path, table: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        names = ", ".join(name for name, _ in COLUMNS)
        return con.execute(f"SELECT {names} FROM {table} ORDER BY run, source_index").fetchall()
    finally:
        con.close()


def ledgers(folder: Path, runs: list[int]) -> list[tuple[Any, ...]]:
    store = StateStore(f"sqlite:///{folder / 'accounts.sync.sqlite'}", "accounts")
    try:
        return [tuple(["accounts", run, *e.to_dict().values()]) for run in runs for e in store.ledger(run)]
    finally:
        store.close()


def test_write_back_into_the_duckdb_source_matches_the_ledger(
    tmp_path: Path, connection: Connection, emulator: EmulatorHandle
) -> None:
    db = tmp_path / "warehouse.duckdb"
    warehouse(db, [("W-1", "One"), ("W-2", "x" * 200), ("W-1", "One!")])
    definition = setup(tmp_path, emulator, {"duckdb": "warehouse.duckdb", "table": "companies"})
    first = d365(tmp_path, "sync", "run", str(definition), "--write-back", "sync_results", "--json")
    assert first.exit_code == 5, first.output
    said = [json.loads(x) for x in first.stderr.splitlines() if x.startswith('{"written_back"')]
    assert said == [{"written_back": 3, "table": "sync_results", "file": str(db)}]
    warehouse(db, [("W-1", "One!"), ("W-2", "Two"), ("W-3", "Three")])
    second = d365(tmp_path, "sync", "run", str(definition), "--write-back", "sync_results", "--json")
    assert second.exit_code == 0, second.output
    rows = written(db, "sync_results")
    assert rows == ledgers(tmp_path, [1, 2])
    by_key = {(r[1], json.loads(r[3])["accountnumber"]): (r[4], r[5]) for r in rows}
    ids = {a["accountnumber"]: a["accountid"] for a in accounts(connection)}
    assert by_key[(1, "W-2")] == ("failed", None)
    assert by_key[(2, "W-1")] == ("unchanged", ids["W-1"])  # unchanged rows carry their id too
    assert by_key[(2, "W-2")] == ("created", ids["W-2"]) and by_key[(2, "W-3")] == ("created", ids["W-3"])


def test_write_back_beside_the_definition_when_the_source_is_not_duckdb(
    tmp_path: Path, connection: Connection, emulator: EmulatorHandle
) -> None:
    (tmp_path / "companies.csv").write_text("num,name\nC-1,One\nC-2,Two\n", encoding="utf-8")
    definition = setup(tmp_path, emulator, {"path": "companies.csv"})
    done = d365(tmp_path, "sync", "run", str(definition), "--write-back", "results", "--json")
    assert done.exit_code == 0, done.output
    assert written(tmp_path / "accounts.writeback.duckdb", "results") == ledgers(tmp_path, [1])
    assert len(accounts(connection)) == 2


def test_write_back_refusals_come_before_any_request(
    tmp_path: Path, connection: Connection, emulator: EmulatorHandle
) -> None:
    warehouse(tmp_path / "warehouse.duckdb", [("R-1", "One")])
    definition = setup(tmp_path, emulator, {"duckdb": "warehouse.duckdb", "table": "companies"})
    emulator.admin.clear_requests()
    same = d365(tmp_path, "sync", "run", str(definition), "--write-back", "Companies")
    assert same.exit_code == 2 and "source table" in same.stderr
    bad = d365(tmp_path, "sync", "run", str(definition), "--write-back", "x; drop table companies")
    assert bad.exit_code == 2 and "plain table name" in bad.stderr
    assert writes(emulator) == [] and accounts(connection) == []


def test_hosted_writes_back_only_under_the_allowed_folders(tmp_path: Path) -> None:
    (tmp_path / "allowed").mkdir()
    data = {
        "name": "accounts",
        "source": {"stdin": True},
        "target": "account",
        "match": {"key": "accountnumber"},
        "mapping": [{"source": "num", "target": "accountnumber"}],
        "state": f"sqlite:///{tmp_path / 'allowed' / 'state.sqlite'}",
    }
    hosted = OperatorPolicy(preset="hosted", allowed_paths=((tmp_path / "allowed").resolve(),))
    definition = load_definition(data, policy=hosted, base_dir=tmp_path / "allowed")
    inside = write_back_target(definition, "results", policy=hosted, base_dir=tmp_path / "allowed")
    assert inside.path == tmp_path / "allowed" / "accounts.writeback.duckdb"
    with pytest.raises(Exception, match="outside the folders") as caught:
        write_back_target(definition, "results", policy=hosted, base_dir=tmp_path)
    assert caught.value.exit_code == 3  # type: ignore[attr-defined]


def test_follow_writes_back_each_micro_batch(tmp_path: Path, connection: Connection) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"num": f"M-{i}", "name": f"N {i}"}) + "\n" for i in range(3)), "utf-8")
    data = {
        "name": "accounts",
        "source": {"path": "events.jsonl"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
    }
    definition = load_definition(data, policy=OperatorPolicy(preset="local"), base_dir=tmp_path)
    target = write_back_target(definition, "results", policy=OperatorPolicy(preset="local"), base_dir=tmp_path)
    store = StateStore(str(definition.state), definition.name)
    try:
        follower = Follower(
            definition, connection, store, path=events, after_run=lambda r: target.write(r.run, store.ledger(r.run))
        )
        clock = FakeClock()
        lines = tail(events, follower.start(), clock=clock, poll_s=1, until_eof=True, stop=lambda: False)
        follow(lines, follower.flush, clock=clock, max_rows=2, max_wait_s=60, stop=lambda: False)
    finally:
        store.close()
    assert [r.run for r in follower.runs] == [1, 2]
    assert written(tmp_path / "accounts.writeback.duckdb", "results") == ledgers(tmp_path, [1, 2])
