"""Microsoft's SDK against the standard sales tables and ``--sample-data`` (``sdk_driver_sales.py``, over TLS)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import FIDELITY_PYTHON, REPO, ServedEmulator, sdk_env, start_emulator

DRIVER = REPO / "tests" / "fidelity" / "sdk_driver_sales.py"


def run_sales(served: ServedEmulator, scenario: str) -> tuple[str, dict[str, Any]]:
    if not FIDELITY_PYTHON.exists():
        pytest.fail(f"{FIDELITY_PYTHON} is missing: run `make fidelity-venv` to install Microsoft's SDK")
    tag = "fid" + "".join("kmpqxzwv"[int(c, 16) % 8] for c in uuid.uuid4().hex[:8])
    args = [scenario, "--base-url", served.base_url, "--connection", str(served.connection_file), "--tag", tag]
    proc = subprocess.run(
        [str(FIDELITY_PYTHON), str(DRIVER), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=sdk_env(served.ca_file),
        cwd=REPO,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"SDK scenario {scenario!r} failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}\n{served.logs()}"
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("token_requests") >= 1
    return tag, result


def test_changeset_creates_a_lead_and_an_account_bound_to_it(served_emulator: ServedEmulator) -> None:
    _, result = run_sales(served_emulator, "lead_changeset")
    assert result == {
        "statuses": [204, 204, 204, 204],
        "leads": 1,
        "account_linked": True,
        "contact_linked": True,
        "task_regarding_account": True,
    }


@pytest.fixture(scope="module")
def sample_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedEmulator]:
    """``python -m dataverse_emulator --sample-data --seed 9``: the CLI flag end to end."""
    proc, served = start_emulator(tmp_path_factory.mktemp("sample"), "--sample-data", "--seed", "9")
    try:
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_sample_data_served_by_the_cli(sample_served: ServedEmulator) -> None:
    _, result = run_sales(sample_served, "sample_data")
    assert result == {
        "accounts": [["A-1001", "Contoso Ltd"], ["A-1002", "Fabrikam Inc"]],
        "ada": ["Ada Lovelace"],
        "lists": [["Newsletter subscribers", 60]],
    }
