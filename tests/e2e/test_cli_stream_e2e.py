"""``d365 run --jsonl`` goes through the runtime like any run: packs' wrappers see it, the run ledger records it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector import cli
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.framework.packs import make_pack

SPY = """
seen = []

@hookimpl(wrapper=True)
def validate_inputs(action_id, inputs, connection):
    problems = yield
    seen.append((action_id, dict(inputs), sum(len(found or []) for found in problems)))
    return problems

streamed = []

@hookimpl(wrapper=True)
def stream_records(action_id, inputs, connection):
    run = yield
    streamed.append(action_id)
    return run
"""


@pytest.fixture
def spy_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Runtime, Any, Path]:
    """The CLI's runtime with a pack that wraps ``validate_inputs``, and a run ledger of this test's own."""
    spy = make_pack(tmp_path / "packs", name="spy", code=SPY)
    runtime = Runtime(load_entrypoints=False, extra_packs=[spy])
    monkeypatch.setattr(cli, "_runtime", lambda: runtime)
    ledger = tmp_path / "runs.jsonl"
    monkeypatch.setenv("D365_RUN_LEDGER", str(ledger))
    return runtime, spy.module, ledger


def ledger_lines(ledger: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ledger.read_text(encoding="utf-8").splitlines()]


def test_query_entities_jsonl_is_seen_by_a_pack_wrapper_and_recorded_in_the_ledger(
    spy_runtime: tuple[Runtime, Any, Path], connection_file: Path, fresh_emulator: EmulatorHandle
) -> None:
    _, spy, ledger = spy_runtime
    fresh_emulator.admin.seed("account", [{"name": f"Row {i}"} for i in range(3)])
    inputs = {"table": "account", "select": ["name"], "order_by": ["name"]}
    result = CliRunner().invoke(
        cli.main, ["run", "query_entities", "--jsonl", "--connection", str(connection_file), "--input", "-"],
        input=json.dumps(inputs),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["name"] for line in result.stdout.splitlines()] == ["Row 0", "Row 1", "Row 2"]
    [(action_id, seen_inputs, problems)] = spy.seen
    assert (action_id, seen_inputs["table"], problems) == ("query_entities", "account", 0)
    assert seen_inputs["page_size"] == 100  # the schema's default: the wrapper saw the validated inputs
    assert spy.streamed == ["query_entities"]  # a wrapper on the streaming hook sees the run itself
    [entry] = ledger_lines(ledger)
    assert (entry["action"], entry["outcome"], entry["error"], entry["host"]) == (
        "query_entities",
        "ok",
        None,
        "127.0.0.1",
    )


def test_query_entities_jsonl_refused_in_phase_two_is_seen_and_recorded(
    spy_runtime: tuple[Runtime, Any, Path], connection_file: Path, fresh_emulator: EmulatorHandle
) -> None:
    _, spy, ledger = spy_runtime
    result = CliRunner().invoke(
        cli.main,
        ["run", "query_entities", "--jsonl", "--connection", str(connection_file), "--set", "table=account",
         "--set", 'select:=["nosuchcolumn"]'],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "nosuchcolumn" in result.stderr and result.stdout == ""
    assert [(action_id, problems) for action_id, _, problems in spy.seen] == [("query_entities", 1)]
    [entry] = ledger_lines(ledger)
    assert (entry["action"], entry["outcome"], entry["error"]) == ("query_entities", "input_error", "InputError")
