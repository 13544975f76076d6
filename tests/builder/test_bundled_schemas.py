"""What a builder is served: ``d365 manifest schema ID --bundled`` and ``Runtime.bundled_schemas``, self-contained."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from connector import cli
from connector.errors import InputError
from connector.runtime import Runtime

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


@pytest.mark.parametrize("action_id", ACTION_IDS)
def test_runtime_serves_both_schemas_of_every_action_without_references(action_id: str) -> None:
    info = RUNTIME.manifest.actions[action_id]
    served = RUNTIME.bundled_schemas(action_id)
    assert set(served) == {"input", "output"}
    assert served["input"] == RUNTIME.store.bundled(info.input_schema)
    assert served["output"] == RUNTIME.store.bundled(info.output_schema)
    assert refs(served["input"]) == refs(served["output"]) == []


def test_runtime_refuses_an_unknown_action_naming_the_known_ones() -> None:
    with pytest.raises(InputError) as caught:
        RUNTIME.bundled_schemas("nope")
    (problem,) = caught.value.problems
    assert problem.path == "$action" and "unknown action 'nope'" in problem.message and "get_entity" in problem.message


def test_served_schemas_are_generated_afresh_so_a_caller_cannot_edit_the_source() -> None:
    served = RUNTIME.bundled_schemas("get_entity")
    served["input"]["properties"].clear()
    assert RUNTIME.bundled_schemas("get_entity")["input"]["properties"] != {}


@pytest.mark.parametrize("which", ["input", "output"])
def test_manifest_schema_bundled_prints_the_served_schema(runner: CliRunner, which: str) -> None:
    args = ["manifest", "schema", "get_entity", "--bundled", *(["--output"] if which == "output" else [])]
    result = runner.invoke(cli.main, [*args, "--json"])
    assert result.exit_code == 0 and result.stderr == ""
    assert len(result.stdout.splitlines()) == 1
    printed = json.loads(result.stdout)
    assert printed == RUNTIME.bundled_schemas("get_entity")[which]
    assert refs(printed) == []


def test_manifest_schema_without_bundled_still_prints_the_file_as_written(runner: CliRunner) -> None:
    as_written = json.loads(runner.invoke(cli.main, ["manifest", "schema", "get_entity"]).stdout)
    assert as_written == RUNTIME.store.get(RUNTIME.manifest.actions["get_entity"].input_schema)
    assert refs(as_written) != []  # the files in schemas/ keep their $refs: they are the source of truth


def test_manifest_schema_bundled_resolves_the_table_reference(runner: CliRunner) -> None:
    printed = json.loads(runner.invoke(cli.main, ["manifest", "schema", "get_entity", "--bundled"]).stdout)
    table = printed["properties"]["table"]
    assert "$ref" not in table and table["type"] == "string" and table["title"]


def test_manifest_schema_bundled_refuses_an_unknown_action(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["manifest", "schema", "nope", "--bundled", "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert json.loads(result.stderr)["problems"][0]["path"] == "ACTION_ID"
