"""Mode mirror as a user runs it: a definition file with ``mode: mirror``, ``d365 sync run`` refusing over the cap
(exit 2, nothing written), ``--force`` removing, the definition refusing mirror fields without mode mirror."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.policy import OperatorPolicy
from connector.sync.definition import load_definition
from connector.sync.engine import job_from_definition
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import accounts
from tests.sync.test_cli_sync_e2e import d365, write_csv


@pytest.fixture
def folder(tmp_path: Path, connection: Connection, emulator: EmulatorHandle) -> Path:
    (tmp_path / "connection.json").write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    definition = {
        "name": "accounts",
        "source": {"path": "companies.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mode": "mirror",
        "delete": "deactivate",
        "max_delete_fraction": 0.25,
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
    }
    (tmp_path / "sync.json").write_text(json.dumps(definition), encoding="utf-8")
    return tmp_path


def test_mirror_from_a_definition_file_cap_and_force(folder: Path, connection: Connection) -> None:
    definition = str(folder / "sync.json")
    write_csv(folder, [(f"A-{i}", f"Co {i}") for i in range(4)])
    assert d365(folder, "sync", "run", definition, "--json").exit_code == 0
    write_csv(folder, [("A-0", "Co 0"), ("A-1", "Co 1")])
    refused = d365(folder, "sync", "run", definition, "--json")
    assert refused.exit_code == 2 and "max_delete_fraction" in refused.output
    assert {r["accountnumber"] for r in accounts(connection)} == {"A-0", "A-1", "A-2", "A-3"}
    dry = d365(folder, "sync", "run", definition, "--dry-run", "--json")
    removal = json.loads(dry.stdout)["plan"]["removal"]
    assert (removal["counts"], removal["over_cap"], removal["fraction"]) == ({"deactivate": 2}, True, 0.5)
    forced = d365(folder, "sync", "run", definition, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["counts"] == {"unchanged": 2, "deactivated": 2}
    states = {r["accountnumber"]: r["statecode"] for r in connection.client.get_json("accounts")["value"]}
    assert states == {"A-0": 0, "A-1": 0, "A-2": 1, "A-3": 1}


def test_mirror_fields_belong_with_mode_mirror(tmp_path: Path) -> None:
    base = {
        "name": "a",
        "source": {"path": "x.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "n", "target": "accountnumber"}, {"source": "e", "target": "emailaddress1"}],
    }
    local = OperatorPolicy(preset="local")
    with pytest.raises(InputError) as info:
        load_definition({**base, "delete": "remove"}, policy=local, base_dir=tmp_path)
    assert info.value.problems[0].path == "$.delete"
    mirrored = load_definition({**base, "mode": "mirror", "delete": "clear"}, policy=local, base_dir=tmp_path)
    job = job_from_definition(mirrored)
    assert job.rule.mode == "upsert" and job.mirror is not None
    assert (job.mirror.delete, job.mirror.max_delete_fraction, job.mirror.clear_columns) == (
        "clear",
        0.2,
        ("emailaddress1",),
    )
