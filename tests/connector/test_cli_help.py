"""``d365`` for a person at a terminal: each action's help, bundled schemas, shell completion, what prints what."""

from __future__ import annotations

import json
import os
import pty
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.shell_completion import ShellComplete
from click.testing import CliRunner

from connector import cli
from connector.cli_help import set_arguments, type_label
from connector.errors import ContractError
from connector.runtime import Runtime
from tests.framework.packs import action_entry, io_schemas, make_pack

RUNTIME = Runtime(load_entrypoints=False)
ACTION_IDS = sorted(RUNTIME.manifest.actions)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(cli, "_runtime", lambda: RUNTIME)
    return CliRunner()


def refs(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
    return [r for v in node for r in refs(v)] if isinstance(node, list) else []


# -- d365 run ID --help -----------------------------------------------------------------------------------------------
def test_run_help_lists_the_inputs_of_the_action_under_the_options(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["run", "get_entity", "--help"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("Options:") < out.index("--set KEY=TEXT|KEY:=JSON") < out.index("Inputs of get_entity (Get row):")
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert "table Table: string, required" in lines
    assert "id Row id: string (uuid)" in lines
    assert "include_annotations Include annotations: boolean, default false" in lines
    assert "Also required: exactly one of id or key." in lines
    example = next(line for line in lines if line.startswith("d365 run get_entity"))
    assert "--set table=account --set key.accountnumber=A-1001 --set 'select:=[" in example


def test_run_help_finds_the_action_after_options_too(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["run", "--set", "table=account", "write_entities", "-h"])
    assert result.exit_code == 0, result.output
    assert "Inputs of write_entities (Write rows in bulk):" in result.stdout
    assert 'Mode: "create" or "update" or "upsert" or "delete" or "deactivate", required' in " ".join(
        result.stdout.split()
    )


@pytest.mark.parametrize("action_id", ACTION_IDS)
def test_every_help_example_is_a_command_that_passes_the_schema(runner: CliRunner, action_id: str) -> None:
    result = runner.invoke(cli.main, ["run", action_id, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Inputs of {action_id} (" in result.stdout
    [line] = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("d365 run ")]
    words = shlex.split(line)
    assert words[:5] == ["d365", "run", action_id, "--connection", "conn.json"]
    pairs = words[5:]
    assert pairs[::2] == ["--set"] * (len(pairs) // 2)
    inputs = cli.parse_set_options(tuple(pairs[1::2]))
    assert inputs in [e["input"] for e in RUNTIME.manifest.actions[action_id].examples]
    RUNTIME.check_schema(action_id, inputs)


@pytest.mark.parametrize("action_id", ACTION_IDS)
def test_set_arguments_rebuild_every_manifest_example(action_id: str) -> None:
    for example in RUNTIME.manifest.actions[action_id].examples:
        assert cli.parse_set_options(tuple(set_arguments(example["input"]))) == example["input"]


def test_set_arguments_fall_back_to_json_for_keys_that_cannot_be_dotted() -> None:
    inputs = {"headers": {"x.y": "1"}, "fields": {"telephone1": "5550100", "n": 42}, "empty": {}}
    assert set_arguments(inputs) == [
        'headers:={"x.y": "1"}',
        "fields.telephone1=5550100",
        "fields.n:=42",
        "empty:={}",
    ]
    assert cli.parse_set_options(tuple(set_arguments(inputs))) == inputs


def test_type_labels() -> None:
    assert type_label({"type": "array", "items": {"type": "string", "format": "uuid"}}) == "array of string (uuid)"
    assert type_label({"type": ["string", "null"]}) == "string or null"
    assert type_label({"oneOf": [{"type": "string"}, {"type": "object"}, {"required": ["x"]}]}) == "string or object"
    assert type_label({"const": True}) == "true"
    assert type_label({}) == "any"


def test_run_help_describes_a_pack_action_from_its_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = make_pack(
        tmp_path,
        name="echo",
        code="@hookimpl\ndef echo_word(inputs, connection):\n    return {'echo': inputs['word']}\n",
        spec_ids=("echo_word",),
        fragment={"pack": "echo", "actions": [action_entry("echo_word")]},
        schemas=io_schemas("echo", "echo_word"),
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack])
    monkeypatch.setattr(cli, "_runtime", lambda: runtime)
    result = CliRunner().invoke(cli.main, ["run", "echo_word", "--help"])
    assert result.exit_code == 0, result.output
    assert "Inputs of echo_word (Echo word):" in result.stdout
    assert "word  Word: string, required" in result.stdout
    assert "d365 run echo_word --connection conn.json --set word=hi" in result.stdout


def test_run_help_of_an_unknown_action_is_exit_2(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["run", "get_entityy", "--help"])
    assert result.exit_code == 2
    assert "unknown action 'get_entityy'" in result.stderr and result.stdout == ""


def test_run_help_without_an_action_points_to_the_per_action_help(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["run", "--help"])
    assert result.exit_code == 0
    assert "`d365 run ID --help` lists the inputs of action ID" in " ".join(result.stdout.split())
    assert "Inputs of" not in result.stdout


def test_run_help_still_shows_the_options_when_the_runtime_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Runtime:
        raise ContractError(["pack p: broken"])

    monkeypatch.setattr(cli, "_runtime", broken)
    result = CliRunner().invoke(cli.main, ["run", "get_entity", "--help"])
    assert result.exit_code == 0
    assert "--connection" in result.stdout and "(not available: the connector contract is broken" in result.stdout


# -- d365 actions describe / manifest schema ------------------------------------------------------------------------
@pytest.mark.parametrize("action_id", ["get_entity", "write_entities", "create_attribute"])
def test_describe_prints_self_contained_schemas(runner: CliRunner, action_id: str) -> None:
    result = runner.invoke(cli.main, ["actions", "describe", action_id])
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    assert described["id"] == action_id and described["provider"] == "builtin"
    assert refs(described["input"]) == [] and refs(described["output"]) == []
    info = RUNTIME.manifest.actions[action_id]
    assert described["input"] == RUNTIME.store.bundled(info.input_schema)
    assert refs(RUNTIME.store.get(info.input_schema)) != []  # there was something to resolve


def test_manifest_schema_prints_the_schema_as_written(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["manifest", "schema", "get_entity", "--json"])
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 1
    assert json.loads(result.stdout)["properties"]["table"] == {"$ref": "../common/defs.json#/$defs/table"}


# -- what prints what -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["actions", "list"],
        ["actions", "describe", "get_entity"],
        ["manifest", "show"],
        ["manifest", "schema", "get_entity"],
    ],
    ids=" ".join,
)
def test_results_are_indented_json_and_one_compact_line_with_json(runner: CliRunner, args: list[str]) -> None:
    pretty = runner.invoke(cli.main, args)
    compact = runner.invoke(cli.main, [*args, "--json"])
    assert pretty.exit_code == compact.exit_code == 0
    assert json.loads(pretty.stdout) == json.loads(compact.stdout)
    assert len(compact.stdout.splitlines()) == 1 < len(pretty.stdout.splitlines())
    assert pretty.stderr == compact.stderr == ""


@pytest.mark.parametrize(
    "args", [["actions", "describe", "nope"], ["manifest", "schema", "nope"]], ids=lambda a: " ".join(a[:2])
)
def test_errors_are_text_and_json_with_json(runner: CliRunner, args: list[str]) -> None:
    text = runner.invoke(cli.main, args)
    assert text.exit_code == 2 and text.stdout == ""
    assert text.stderr.startswith("error: ") and "unknown action 'nope'" in text.stderr
    as_json = runner.invoke(cli.main, [*args, "--json"])
    assert as_json.exit_code == 2 and as_json.stdout == ""
    assert json.loads(as_json.stderr)["problems"][0]["path"] == "ACTION_ID"


def test_actions_list_piped_is_json(runner: CliRunner) -> None:
    rows = json.loads(runner.invoke(cli.main, ["actions", "list"]).stdout)
    assert sorted(row["id"] for row in rows) == ACTION_IDS


def run_in_terminal(*args: str) -> str:
    """``d365 ARGS`` with its stdout on a pseudo-terminal, as a person runs it; what the terminal received."""
    parent, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "connector.cli", *args], stdout=child, env=env)
    os.close(child)
    received = b""
    try:
        while chunk := os.read(parent, 65536):
            received += chunk
    except OSError:  # EIO: the terminal's other end closed
        pass
    finally:
        os.close(parent)
    assert process.wait(timeout=60) == 0
    return received.decode()


def test_actions_list_on_a_terminal_is_a_table_and_json_with_json() -> None:
    table = run_in_terminal("actions", "list")
    assert not table.lstrip().startswith("[")
    assert "provider" in table and "get_entity" in table and "builtin" in table
    assert {row["id"] for row in json.loads(run_in_terminal("actions", "list", "--json"))} >= set(ACTION_IDS)


# -- shell completion -------------------------------------------------------------------------------------------------
def completions(args: list[str], incomplete: str) -> list[str]:
    complete = ShellComplete(cli.main, {}, "d365", "_D365_COMPLETE")
    return [item.value for item in complete.get_completions(args, incomplete)]


def test_completion_of_action_ids_comes_from_the_manifest(runner: CliRunner) -> None:
    expected = [a for a in ACTION_IDS if a.startswith("get_")]
    assert len(expected) > 3
    assert completions(["run"], "get_") == expected
    assert completions(["actions", "describe"], "write") == ["write_entities"]
    assert completions(["manifest", "schema"], "run_") == ["run_batch_operations", "run_fetch_xml_query"]


def test_completion_of_commands(runner: CliRunner) -> None:
    assert completions([], "ac") == ["actions"]
    assert completions(["manifest"], "") == ["schema", "show", "validate"]
    assert "--set" in completions(["run", "get_entity"], "--s")
    assert completions(["datasource"], "") == [
        "alternate_keys",
        "columns",
        "fields_schema",
        "key_schema",
        "message_schema",
        "messages",
        "records",
        "tables",
    ]


def test_completion_through_the_environment_variable_as_the_shell_calls_it(runner: CliRunner) -> None:
    env = {"_D365_COMPLETE": "bash_complete", "COMP_WORDS": "d365 run get_entity_", "COMP_CWORD": "2"}
    result = runner.invoke(cli.main, [], prog_name="d365", env=env)
    assert result.exit_code == 0
    assert result.stdout.split() == ["plain,get_entity_metadata"]
    script = runner.invoke(cli.main, [], prog_name="d365", env={"_D365_COMPLETE": "bash_source"})
    assert "_D365_COMPLETE=bash_complete" in script.stdout and "complete -o nosort -F" in script.stdout


def test_completion_is_empty_when_the_runtime_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Runtime:
        raise ContractError(["pack p: broken"])

    monkeypatch.setattr(cli, "_runtime", broken)
    assert completions(["run"], "get_") == []


@pytest.mark.parametrize("name", sorted(cli._Main.LAZY))
def test_a_lazy_command_lists_the_help_its_own_docstring_starts_with(name: str) -> None:
    command = cli.main.get_command(click_context(), name)
    assert command is not None and command.help is not None
    assert command.help.startswith(cli._Main.LAZY[name][1].rstrip("."))


def test_d365_help_imports_neither_sync_nor_serve() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from connector import cli; "
        "r = CliRunner().invoke(cli.main, ['--help']); assert r.exit_code == 0 and 'sync' in r.output, r.output; "
        "print(sorted(m for m in sys.modules if m.startswith(('connector.sync', 'connector.cli_s', 'sqlalchemy', "
        "'duckdb', 'starlette'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def click_context() -> Any:
    import click

    return click.Context(cli.main)
