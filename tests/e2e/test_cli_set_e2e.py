"""``d365 run --set`` against the emulator: ``key=value`` stays text, ``key:=json`` is typed (the issue's telephone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector import cli
from connector.connection import Connection
from connector.runtime import Runtime


@pytest.fixture(autouse=True)
def cli_runtime(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_runtime", lambda: runtime)


def rows(runtime: Runtime, connection: Connection) -> list[tuple[object, object]]:
    query = {"table": "account", "select": ["telephone1", "numberofemployees"]}
    return [
        (r.get("telephone1"), r.get("numberofemployees"))
        for r in runtime.run_action("query_entities", query, connection)["records"]
    ]


def test_a_digit_string_reaches_a_text_column_and_colon_equals_an_integer_column(
    runtime: Runtime, connection: Connection, connection_file: Path
) -> None:
    args = ["run", "create_entity", "--connection", str(connection_file), "--set", "table=account"]
    args += ["--set", "fields.name=Contoso", "--set", "fields.telephone1=5550100"]
    args += ["--set", "fields.numberofemployees:=42", "--set", "return_record:=true", "--json"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["record"]
    assert (record["telephone1"], record["numberofemployees"]) == ("5550100", 42)
    assert rows(runtime, connection) == [("5550100", 42)]


def test_text_for_an_integer_column_is_refused_before_any_write(
    runtime: Runtime, connection: Connection, connection_file: Path
) -> None:
    args = ["run", "create_entity", "--connection", str(connection_file), "--set", "table=account"]
    args += ["--set", "fields.numberofemployees=42"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert "numberofemployees" in result.stderr
    assert rows(runtime, connection) == []
