"""``d365 sync run/results/history`` against the emulator, as a user runs them: a definition file, a CSV source read
by the real reader, the real mapper checking the mapping against the emulator's metadata."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.connection import Connection
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import accounts, writes


@pytest.fixture
def files(tmp_path: Path, connection: Connection, emulator: EmulatorHandle) -> Path:
    (tmp_path / "connection.json").write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    definition = {
        "name": "accounts",
        "source": {"path": "companies.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
        "batch_size": 2,
    }
    (tmp_path / "sync.json").write_text(json.dumps(definition), encoding="utf-8")
    write_csv(tmp_path, [("A-1", "One"), ("A-2", "Two"), ("A-3", "Three")])
    return tmp_path


def write_csv(folder: Path, rows: list[tuple[str, str]]) -> None:
    with (folder / "companies.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["num", "name"])
        w.writerows(rows)


def d365(folder: Path, *args: str) -> Any:
    return CliRunner().invoke(
        main, list(args), catch_exceptions=False, env={"D365_CONNECTION": str(folder / "connection.json")}
    )


def test_run_dry_run_results_history(files: Path, connection: Connection, emulator: EmulatorHandle) -> None:
    definition = str(files / "sync.json")
    emulator.admin.clear_requests()
    dry = d365(files, "sync", "run", definition, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)["plan"]
    assert plan["counts"] == {"create": 3} and plan["api_requests"]["writes"] == 2
    assert writes(emulator) == [] and accounts(connection) == []

    first = d365(files, "sync", "run", definition, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["counts"] == {"created": 3}
    write_csv(files, [("A-1", "One"), ("A-2", "Two!"), ("A-3", "Three")])
    second = d365(files, "sync", "run", definition, "--json")
    run = json.loads(second.stdout)
    assert run["counts"] == {"unchanged": 2, "updated": 1}
    assert sorted(r["name"] for r in accounts(connection)) == ["One", "Three", "Two!"]

    out = d365(files, "sync", "results", str(run["run"]), "--definition", definition, "--format", "csv")
    rows = list(csv.DictReader(out.stdout.splitlines()))
    assert [(r["source_index"], r["outcome"]) for r in rows] == [
        ("0", "unchanged"),
        ("1", "updated"),
        ("2", "unchanged"),
    ]
    lines = d365(files, "sync", "results", str(run["run"]), "--definition", definition).stdout.splitlines()
    assert [json.loads(line)["outcome"] for line in lines] == ["unchanged", "updated", "unchanged"]
    target = files / "ledger.parquet"
    d365(
        files,
        "sync",
        "results",
        str(run["run"]),
        "--definition",
        definition,
        "--format",
        "parquet",
        "--output",
        str(target),
    )
    assert pq.read_table(target).column("outcome").to_pylist() == ["unchanged", "updated", "unchanged"]

    history = json.loads(d365(files, "sync", "history", "--definition", definition, "--json").stdout)
    assert [(h["id"], h["status"], h["counts"]) for h in history] == [
        (run["run"], "done", {"unchanged": 2, "updated": 1}),
        (run["run"] - 1, "done", {"created": 3}),
    ]


def test_failed_rows_exit_5_and_bad_definitions_exit_2(files: Path) -> None:
    write_csv(files, [("A-1", "x" * 200)])
    failed = d365(files, "sync", "run", str(files / "sync.json"), "--json")
    assert failed.exit_code == 5
    assert json.loads(failed.stdout)["counts"] == {"failed": 1}
    dry = d365(files, "sync", "run", str(files / "sync.json"), "--dry-run", "--json")
    assert dry.exit_code == 5, "a dry run whose rows would fail ends as the run would"
    assert json.loads(dry.stdout)["exit_code"] == 5 and json.loads(dry.stdout)["counts"] == {"failed": 1}
    bad = d365(files, "sync", "run", str(files / "sync.json"), "--set", "mode=merge", "--json")
    assert bad.exit_code == 2
    assert "mode" in bad.stderr


def test_run_sync_records_exits_5_when_rows_fail_like_d365_sync_run(files: Path) -> None:
    """``d365 run sync_records`` decides its exit code on the run's counts, as ``write_entities`` does."""
    write_csv(files, [("A-1", "x" * 200), ("A-2", "Fine")])
    definition = json.loads((files / "sync.json").read_text(encoding="utf-8"))
    inputs = {**definition, "source": {"path": str(files / "companies.csv")}, "state": "sqlite://"}
    (files / "inputs.json").write_text(json.dumps(inputs), encoding="utf-8")
    partial = d365(files, "run", "sync_records", "--input", str(files / "inputs.json"), "--json")
    assert partial.exit_code == 5, partial.stderr
    assert json.loads(partial.stdout)["counts"] == {"created": 1, "failed": 1}
    allowed = d365(files, "run", "sync_records", "--input", str(files / "inputs.json"), "--json", "--allow-partial")
    assert allowed.exit_code == 0, allowed.stderr
