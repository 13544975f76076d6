"""The wheel: built from the checkout, installed into a fresh venv, used outside the repository.

It proves that ``manifest.json`` and ``schemas/`` travel as package data (read through the same function as in a
checkout), that the console script works, and that the packaged emulator serves ``get_current_user``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT, assert_no_secrets

WHEEL_SOURCES = ("connector", "actions", "triggers", "dataverse_emulator", "schemas")
WHEEL_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "manifest.json", "requirements.lock")
NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "_data", "*.egg-info")


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    # Each xdist worker builds from its own copy: setuptools writes build/ inside the source tree, and two workers
    # building the same checkout at once delete each other's files (a CI run failed with "Directory not empty"
    # and, on the other worker, a wheel missing schemas/sync.schema.json).
    source = work / "source"
    for name in WHEEL_SOURCES:
        shutil.copytree(ROOT / name, source / name, ignore=NOT_SHIPPED)
    for name in WHEEL_FILES:
        shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert built.returncode == 0, f"the wheel did not build:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    wheel = next((work / "dist").glob("d365_connector-*.whl"))
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(ROOT / "requirements.lock"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        cwd=work,
    )
    return env_dir


def run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "D365_RUN_LEDGER")}
    return subprocess.run(
        [str(env_dir / "bin" / a) if i == 0 else a for i, a in enumerate(args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_wheel_actions_list_outside_the_repository(wheel_env: Path, tmp_path: Path) -> None:
    result = run(wheel_env, "d365", "actions", "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {row["id"] for row in json.loads(result.stdout)} >= {"get_current_user", "test_connection"}
    where = run(wheel_env, "python", "-c", "import connector.schemas as s; print(s.data_root())", cwd=tmp_path)
    assert "site-packages/connector/_data" in where.stdout
    assert run(wheel_env, "d365", "manifest", "validate", cwd=tmp_path).returncode == 0


def test_wheel_emulator_serves_get_current_user(wheel_env: Path, tmp_path: Path) -> None:
    conn = tmp_path / "conn.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with subprocess.Popen(
        [str(wheel_env / "bin" / "d365"), "emulator", "serve", "--port", "0", "--connection-out", str(conn)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    ) as server:
        try:
            assert server.stdout is not None
            base_url = server.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            result = run(
                wheel_env, "d365", "run", "get_current_user", "--connection", str(conn), "--json", cwd=tmp_path
            )
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["is_application_user"] is True
            assert_no_secrets(result.stdout, result.stderr)
        finally:
            server.terminate()
            server.communicate(timeout=30)


def test_wheel_ships_the_playground_bundle(wheel_env: Path, tmp_path: Path) -> None:
    """d365 serve's page comes from package data: the built files, as committed, with no Node at install time."""
    code = "import connector, pathlib; print(pathlib.Path(connector.__file__).parent / 'playground')"
    where = Path(run(wheel_env, "python", "-c", code, cwd=tmp_path).stdout.strip())
    assert "site-packages" in str(where)
    for name in ("index.html", "app.js", "app.css"):
        assert (where / name).read_bytes() == (ROOT / "connector" / "playground" / name).read_bytes(), name
