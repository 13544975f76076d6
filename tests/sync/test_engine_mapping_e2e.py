"""Definitions run end to end with the real mapper and reader: lookups by alternate key, option labels, null
handling, and a dry run that catches every kind of problem with zero writes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.policy import OperatorPolicy
from connector.sync.definition import load_definition
from connector.sync.engine import SyncResult
from connector.sync.runner import run_definition
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import writes

POLICY = OperatorPolicy(preset="local")
MAPPING = [
    {"source": "number", "target": "accountnumber"},
    {"source": "company", "target": "name"},
    {"source": "industry", "target": "industrycode"},
    {"source": "phone", "target": "telephone1", "null": "clear"},
    {"target": "parentaccountid", "lookup": {"table": "account", "key": {"accountnumber": "parent"}}},
]


def run(tmp_path: Path, rows: list[dict[str, Any]], conn: Connection, **kw: Any) -> SyncResult:
    with (tmp_path / "companies.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["number", "company", "industry", "phone", "parent"])
        w.writeheader()
        w.writerows(rows)
    data = {
        "name": "companies",
        "source": {"path": "companies.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": kw.pop("mapping", MAPPING),
        "batch_size": 10,
    }
    definition = load_definition(data, policy=POLICY, base_dir=tmp_path)
    return run_definition(definition, conn, policy=POLICY, base_dir=tmp_path, **kw)


def row(number: str, company: str, industry: str = "", phone: str = "", parent: str = "") -> dict[str, Any]:
    return {"number": number, "company": company, "industry": industry, "phone": phone, "parent": parent}


def table(conn: Connection) -> dict[str, dict[str, Any]]:
    body = conn.client.get_json(
        "accounts?$select=accountnumber,name,industrycode,telephone1,_parentaccountid_value,accountid"
    )
    return {r["accountnumber"]: r for r in body["value"]}


def test_lookups_labels_and_nulls(tmp_path: Path, connection: Connection) -> None:
    rows = [
        row("P-1", "Parent", "accounting", "555-0100"),
        row("C-1", "Child", "Accounting", "555-0101", parent="P-1"),
    ]
    first = run(tmp_path, rows, connection)
    assert first.counts == {"created": 2}, first
    accounts = table(connection)
    assert accounts["C-1"]["_parentaccountid_value"] == accounts["P-1"]["accountid"]
    assert accounts["P-1"]["industrycode"] == accounts["C-1"]["industrycode"] is not None
    rows[1]["phone"] = ""  # null: clear -> the column is emptied
    second = run(tmp_path, rows, connection)
    assert second.counts == {"unchanged": 1, "updated": 1}
    assert table(connection)["C-1"]["telephone1"] is None


def test_a_dry_run_catches_labels_lengths_and_lookups_and_writes_nothing(
    tmp_path: Path, connection: Connection, emulator: EmulatorHandle
) -> None:
    emulator.admin.clear_requests()
    rows = [
        row("D-1", "Fine"),
        row("D-2", "Bad label", industry="Bakery"),
        row("D-3", "x" * 500),
        row("D-4", "Orphan", parent="NOPE"),
    ]
    result = run(tmp_path, rows, connection, dry_run=True)
    assert result.plan is not None
    problems = {p["source_index"]: p["message"] for p in result.plan.problems}
    assert sorted(problems) == [1, 2, 3]
    assert "Bakery" in problems[1]
    assert "no account row with accountnumber='NOPE'" in problems[3]
    assert result.counts == {"create": 1, "failed": 3}
    with pytest.raises(InputError, match="'name' is required"):
        run(tmp_path, rows, connection, dry_run=True, mapping=[m for m in MAPPING if m["target"] != "name"])
    assert writes(emulator) == []
    assert table(connection) == {}
