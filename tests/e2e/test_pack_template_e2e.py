"""The pack template in ``examples/pack/``: installed as its pyproject says, found by entry point, run on the emulator.

The install copies what the template's ``pyproject.toml`` declares (its packages' modules and package data) into a
site folder with the ``.dist-info`` its entry points would get, which is what ``pip install`` leaves behind: a file the
template forgets to declare is missing here as it would be in a wheel. A real ``pip install`` needs a build backend
from the network (build isolation) and a venv, tens of seconds; this takes milliseconds and fails for the same
mistakes in the template.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.conftest import ROOT

TEMPLATE = ROOT / "examples" / "pack"


def install_template(site: Path) -> dict[str, Any]:
    """Copy the template's declared files into ``site`` and write its dist-info; returns its ``[project]`` table."""
    config = tomllib.loads((TEMPLATE / "pyproject.toml").read_text(encoding="utf-8"))
    project, setuptools = config["project"], config["tool"]["setuptools"]
    for package in setuptools["packages"]:
        source = TEMPLATE / package
        declared = [*source.glob("*.py")]
        for pattern in setuptools.get("package-data", {}).get(package, []):
            declared += source.glob(pattern)
        for path in declared:
            target = site / package / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8"
    )
    lines = ["[d365_connector]", *(f"{k} = {v}" for k, v in project["entry-points"]["d365_connector"].items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dict(project)


@pytest.fixture
def template_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    install_template(tmp_path / "site")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    monkeypatch.delenv("D365_STRICT_PACKS", raising=False)
    monkeypatch.setenv("D365_DEBUG", "1")  # outputs validated against the template's output schema
    try:
        yield Runtime(load_entrypoints=True, disabled=[])
    finally:
        sys.modules.pop("d365_example_pack", None)  # the next test imports its own installed copy


def test_the_template_installs_with_its_fragment_and_schemas(template_runtime: Runtime) -> None:
    assert template_runtime.broken_packs == {}
    [pack] = template_runtime.packs
    assert (pack.name, pack.distribution) == ("example", "d365-example-pack")
    info = template_runtime.manifest.action("ensure_account")
    assert info is not None and (info.provider, info.category) == ("example", "sync")
    assert template_runtime.store.has(info.input_schema) and template_runtime.store.has(info.output_schema)


def test_the_template_action_finds_or_creates_through_builtin_actions(
    template_runtime: Runtime, connection: Connection
) -> None:
    first = template_runtime.run_action("ensure_account", {"name": "Template Ltd"}, connection)
    assert first["created"] is True
    again = template_runtime.run_action("ensure_account", {"name": "Template Ltd"}, connection)
    assert again == {"id": first["id"], "created": False}
    rows = template_runtime.run_action(
        "query_entities", {"table": "account", "select": ["name"], "filter": "name eq 'Template Ltd'"}, connection
    )
    assert [r["accountid"] for r in rows["records"]] == [first["id"]]


def test_the_installed_template_runs_from_the_d365_command(
    tmp_path: Path, fresh_emulator: EmulatorHandle, connection_file: Path
) -> None:
    install_template(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    env.pop("D365_CONNECTOR_DISABLED_PLUGINS", None)
    command = ["run", "ensure_account", "--connection", str(connection_file), "--set", "name=Fresh Co"]
    done = subprocess.run(
        [sys.executable, "-m", "connector.cli", *command],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["created"] is True
    assert "left out" not in done.stderr
