"""The ``sync_records`` action through the runtime (the platforms' way in), against the emulator."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime
from tests.sync.conftest import accounts


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Any]:
    with (tmp_path / "companies.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["num", "name"], ["B-1", "Alpha"], ["B-2", "Beta"]])
    return {
        "name": "accounts",
        "source": {"path": str(tmp_path / "companies.csv")},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
        "state": f"sqlite:///{tmp_path / 'accounts.sync.sqlite'}",
    }


def test_sync_records_runs_plans_and_resumes_through_the_runtime(
    connection: Connection, inputs: dict[str, Any]
) -> None:
    runtime = Runtime(load_entrypoints=False, validate_output=True)
    plan = runtime.run_action("sync_records", {**inputs, "dry_run": True}, connection)
    assert plan["status"] == "dry_run" and plan["plan"]["counts"] == {"create": 2}
    assert accounts(connection) == []
    first = runtime.run_action("sync_records", inputs, connection)
    assert (first["status"], first["counts"], first["exit_code"]) == ("done", {"created": 2}, 0)
    again = runtime.run_action("sync_records", inputs, connection)
    assert again["counts"] == {"unchanged": 2} and again["run"] == first["run"] + 1
    assert sorted(r["name"] for r in accounts(connection)) == ["Alpha", "Beta"]


def test_sync_records_refuses_a_bad_definition_before_reading(connection: Connection, inputs: dict[str, Any]) -> None:
    runtime = Runtime(load_entrypoints=False)
    with pytest.raises(InputError, match="match"):
        runtime.run_action("sync_records", {**inputs, "match": {"key": "accountnumber", "id": "x"}}, connection)
    with pytest.raises(InputError, match="mode"):
        runtime.run_action("sync_records", {**inputs, "mode": "merge"}, connection)
    assert accounts(connection) == []
