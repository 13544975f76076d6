"""``d365 run`` against the emulator: exit 5 for a completed run with failed rows (0 with --allow-partial), the
summary on stderr, and the ``--progress=json`` line protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from connector import cli
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle

MISSING = "0190f1e2-7a4b-7c3d-8e5f-0a1b2c3d4e5f"


@pytest.fixture(autouse=True)
def _runtime(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_runtime", lambda: runtime)


def d365(connection_file: Path, action: str, inputs: dict[str, Any], *args: str) -> Result:
    argv = ["run", action, "--connection", str(connection_file), "--input", "-", *args]
    return CliRunner().invoke(cli.main, argv, input=json.dumps(inputs))


def _update_one_existing_one_missing(emulator: EmulatorHandle) -> dict[str, Any]:
    (existing,) = emulator.admin.seed("account", [{"name": "old"}])
    records = [{"id": existing, "fields": {"name": "new"}}, {"id": MISSING, "fields": {"name": "none"}}]
    return {"table": "account", "mode": "update", "records": records}


def test_write_entities_with_a_failed_row_exits_5_and_says_why_on_stderr(
    fresh_emulator: EmulatorHandle, connection_file: Path
) -> None:
    result = d365(connection_file, "write_entities", _update_one_existing_one_missing(fresh_emulator))
    assert result.exit_code == cli.EXIT_PARTIAL == 5, result.output
    out = json.loads(result.stdout)
    assert [r["status"] for r in out["results"]] == ["updated", "failed"]
    assert "write_entities: 2 in all: 0 created, 1 updated, 1 failed" in result.stderr
    assert "exit 5 (--allow-partial exits 0)" in result.stderr


def test_allow_partial_exits_0_and_still_prints_the_summary(
    fresh_emulator: EmulatorHandle, connection_file: Path
) -> None:
    inputs = _update_one_existing_one_missing(fresh_emulator)
    result = d365(connection_file, "write_entities", inputs, "--allow-partial", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["failed"] == 1
    summary = json.loads(result.stderr)
    assert (summary["action"], summary["exit_code"], summary["summary"]["failed"]) == ("write_entities", 0, 1)


def test_a_batch_with_a_failed_delete_exits_5(fresh_emulator: EmulatorHandle, connection_file: Path) -> None:
    ops = [
        {"table": "account", "action": "create", "fields": {"name": "Contoso"}},
        {"table": "account", "action": "delete", "id": MISSING},
    ]
    result = d365(connection_file, "run_batch_operations", {"operations": ops})
    assert result.exit_code == 5, result.output
    assert [r["status"] for r in json.loads(result.stdout)["results"]] == ["succeeded", "failed"]
    assert "1 succeeded, 1 failed, 0 rolled back, 0 not run" in result.stderr
    allowed = d365(connection_file, "run_batch_operations", {"operations": ops[1:]}, "--allow-partial")
    assert allowed.exit_code == 0, allowed.output


def test_a_write_without_failures_exits_0_with_nothing_on_stderr(
    fresh_emulator: EmulatorHandle, connection_file: Path
) -> None:
    inputs = {"table": "account", "mode": "create", "records": [{"fields": {"name": "a"}}]}
    result = d365(connection_file, "write_entities", inputs)  # CliRunner's stderr is no terminal: auto draws nothing
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_progress_json_writes_one_line_per_chunk_on_stderr(
    fresh_emulator: EmulatorHandle, connection_file: Path
) -> None:
    records = [{"fields": {"name": f"n{i}"}} for i in range(25)]
    inputs = {"table": "account", "mode": "create", "records": records, "chunk_size": 10}
    result = d365(connection_file, "write_entities", inputs, "--progress=json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["created"] == 25
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["start", "advance", "advance", "advance", "end"]
    assert all(line["operation"] == "write_entities" and line["total"] == 25 for line in lines)
    done = [line["done"] for line in lines[1:4]]  # cumulative, in the order the parallel chunks finished
    assert done == sorted(done) and done[-1] == 25
    assert sorted([done[0], done[1] - done[0], done[2] - done[1]]) == [5, 10, 10]
    assert lines[-1]["counts"] == {"created": 25} and lines[-1]["cancelled"] is False
    assert set(lines[-1]) >= {"rows_per_s", "eta_s", "elapsed_s", "throttle_waits", "throttled_s"}


def test_progress_json_follows_a_fetch_all_page_by_page(fresh_emulator: EmulatorHandle, connection_file: Path) -> None:
    fresh_emulator.admin.seed("account", [{"name": f"Row {i}"} for i in range(5)])
    inputs = {"table": "account", "select": ["name"], "fetch_all": True, "max_records": 100, "page_size": 2}
    result = d365(connection_file, "query_entities", inputs, "--progress=json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(line["event"], line["done"]) for line in lines] == [
        ("start", 0),
        ("advance", 2),
        ("advance", 4),
        ("advance", 5),
        ("end", 5),
    ]
    assert lines[-1]["counts"] == {"pages": 3}
