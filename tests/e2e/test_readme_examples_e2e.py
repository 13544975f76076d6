"""Every JSON example of every ``### <action_id>`` section of the README runs, as written and in README order, through
``d365 run ID --input FILE`` against one emulator: a reader who copies them one after the other gets no error. The
quickstart's commands run too, in a shell, as a new user would paste them.

Until the emulator's ``--sample-data`` organization exists (issue 14), :func:`create_sample_data` makes what the
examples take for granted (what a real organization would already hold) through the actions themselves, the way a
user would: three alternate keys, the custom table ``new_bankaccount`` with two columns, a file column on account,
two accounts and a contact. Everything else an example needs is made by an example before it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector import cli
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from tests.e2e.conftest import custom_table_request

README = Path(__file__).resolve().parents[2] / "README.md"

# What the examples assume the organization holds, each made through an action (the order matters: keys before the
# rows they address, the table before its columns).
SAMPLE_DATA: list[tuple[str, dict[str, Any]]] = [
    (
        "create_alternate_key",
        {
            "table": "account",
            "schema_name": "new_accountnumber_key",
            "columns": ["accountnumber"],
            "wait_until_active": True,
        },
    ),
    (
        "create_alternate_key",
        {
            "table": "account",
            "schema_name": "new_name_postalcode_key",
            "columns": ["name", "address1_postalcode"],
            "wait_until_active": True,
        },
    ),
    (
        "create_alternate_key",
        {"table": "contact", "schema_name": "new_email_key", "columns": ["emailaddress1"], "wait_until_active": True},
    ),
    ("raw_request", custom_table_request("new_BankAccount", "Bank account", "Bank accounts")),
    (
        "create_attribute",
        {"table": "new_bankaccount", "attribute": {"type": "string", "schema_name": "new_Code", "label": "Code"}},
    ),
    (
        "create_attribute",
        {"table": "new_bankaccount", "attribute": {"type": "string", "schema_name": "new_Region", "label": "Region"}},
    ),
    (
        "create_attribute",
        {
            "table": "account",
            "attribute": {
                "@odata.type": "Microsoft.Dynamics.CRM.FileAttributeMetadata",
                "SchemaName": "new_Contract",
                "MaxSizeInKB": 10240,
                "RequiredLevel": {"Value": "None"},
                "DisplayName": {"LocalizedLabels": [{"Label": "Contract", "LanguageCode": 1033}]},
            },
        },
    ),
    (
        "write_entities",
        {
            "table": "account",
            "mode": "upsert",
            "records": [
                {"key": {"accountnumber": "A-1001"}, "fields": {"name": "Contoso Ltd"}},
                {"key": {"accountnumber": "A-1002"}, "fields": {"name": "Fabrikam Inc"}},
            ],
        },
    ),
    ("create_entity", {"table": "contact", "fields": {"lastname": "Lovelace", "emailaddress1": "ada@example.com"}}),
]


def readme_examples(text: str, action_ids: set[str]) -> list[tuple[str, int, dict[str, Any]]]:
    """``(action_id, n, inputs)`` for every ```json block of every ``### <action_id>`` section, in README order."""
    out: list[tuple[str, int, dict[str, Any]]] = []
    parts = re.split(r"^(#{1,3}) (.+)$", text, flags=re.M)
    for i in range(1, len(parts) - 2, 3):
        level, title, body = parts[i], parts[i + 1].strip().strip("`"), parts[i + 2]
        if level == "###" and title in action_ids:
            for n, block in enumerate(re.findall(r"```json\n(.*?)```", body, flags=re.S)):
                out.append((title, n, json.loads(block)))
    return out


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    """Keys are Active at once, so ``wait_until_active`` answers on its first read and nothing sleeps."""
    with running_emulator(key_activation_s=0) as handle:
        yield handle


def d365_run(action_id: str, inputs: dict[str, Any], connection_file: Path, tmp_path: Path) -> str | None:
    """``d365 run ID --connection FILE --input FILE`` as a user types it; what went wrong, or None."""
    input_file = tmp_path / f"{action_id}.json"
    input_file.write_text(json.dumps(inputs), encoding="utf-8")
    args = ["run", action_id, "--connection", str(connection_file), "--input", str(input_file)]
    result = CliRunner().invoke(cli.main, args)
    if result.exit_code != 0:
        return f"exit {result.exit_code}: {result.stderr.strip() or result.stdout.strip()}"
    output = json.loads(result.stdout)
    summary = output.get("summary", output)
    bad = {k: summary[k] for k in ("failed", "unknown", "rolled_back", "not_run") if summary.get(k)}
    if bad or output.get("ok") is False or output.get("timed_out"):
        return f"exit 0 but {bad or output}"
    return None


def test_every_readme_example_runs_as_written_in_order(
    fresh_emulator: EmulatorHandle, connection_file: Path, tmp_path: Path
) -> None:
    action_ids = set(Runtime(load_entrypoints=False).manifest.actions)
    examples = readme_examples(README.read_text(encoding="utf-8"), action_ids)
    assert {action_id for action_id, _, _ in examples} == action_ids  # every action has an example
    for action_id, inputs in SAMPLE_DATA:
        assert d365_run(action_id, inputs, connection_file, tmp_path) is None, (action_id, inputs)
    failures = []
    for action_id, n, inputs in examples:
        problem = d365_run(action_id, inputs, connection_file, tmp_path)
        if problem is not None:
            failures.append(f"### {action_id} example {n + 1}: {problem}")
    assert not failures, "README examples that do not run as written:\n" + "\n".join(failures)


def test_the_quickstart_runs_as_written(fresh_emulator: EmulatorHandle, connection_file: Path, tmp_path: Path) -> None:
    """The second terminal's commands, pasted into bash (``-e``: the first failing command fails the test), against
    the module's emulator standing in for the first terminal's ``d365 emulator serve``."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quickstart")
    serve, steps = re.findall(r"```sh\n(.*?)```", text[start : text.index("\n## ", start)], flags=re.S)
    assert "--connection-out conn.json" in serve
    (tmp_path / "conn.json").write_text(connection_file.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the steps activate .venv, as in a checkout
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", steps], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.splitlines()[-1])  # --jsonl: the one account, on the last line
    assert (last["name"], last["telephone1"]) == ("Contoso", "555 0100")
