"""Every JSON example of every ``### <action_id>`` section of the README runs, as written and in README order, through
``d365 run ID --input FILE`` against one emulator: a reader who copies them one after the other gets no error. The
quickstart's commands run too, in a shell, as a new user would paste them.

The examples run against the emulator's ``--sample-data`` organization, which holds what they take for granted (what
a real organization in use would already hold): three alternate keys, the custom table ``new_bankaccount`` with two
columns, a file column on account, the accounts ``A-1001`` and ``A-1002`` and the contact ``ada@example.com``.
Everything else an example needs is made by an example before it.
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

README = Path(__file__).resolve().parents[2] / "README.md"


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
    """The quickstart's empty organization. Keys are Active at once, so ``wait_until_active`` answers on its first
    read and nothing sleeps."""
    with running_emulator(key_activation_s=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def sample_emulator() -> Iterator[EmulatorHandle]:
    """``d365 emulator serve --sample-data``: the organization the README's action examples assume."""
    with running_emulator(key_activation_s=0, sample_data=True) as handle:
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


def test_every_readme_example_runs_as_written_in_order(sample_emulator: EmulatorHandle, tmp_path: Path) -> None:
    action_ids = set(Runtime(load_entrypoints=False).manifest.actions)
    examples = readme_examples(README.read_text(encoding="utf-8"), action_ids)
    assert {action_id for action_id, _, _ in examples} == action_ids  # every action has an example
    connection_file = tmp_path / "connection.json"
    connection_file.write_text(json.dumps(sample_emulator.connection_config()), encoding="utf-8")
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
