"""Fixtures for the fidelity tests: the emulator served over TLS by its own CLI, in a subprocess, on a real socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FIDELITY_PYTHON = REPO / ".venv-fidelity" / "bin" / "python"


@dataclass(frozen=True)
class ServedEmulator:
    """A running ``python -m dataverse_emulator --tls`` process and what a client needs to reach it."""

    base_url: str
    connection_file: Path
    connection: dict[str, Any]
    ca_file: Path
    log_dir: Path

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/data/v9.2"

    def logs(self) -> str:
        out = (self.log_dir / "stdout.txt").read_text(errors="replace")
        err = (self.log_dir / "stderr.txt").read_text(errors="replace")
        return f"--- emulator stdout ---\n{out[-4000:]}\n--- emulator stderr ---\n{err[-4000:]}"


def start_emulator(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], ServedEmulator]:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    connection_file = tmp / "connection.json"
    stdout_path, stderr_path = tmp / "stdout.txt", tmp / "stderr.txt"
    cmd = [
        sys.executable,
        "-m",
        "dataverse_emulator",
        "--port",
        "0",
        "--tls",
        "--data-dir",
        str(data_dir),
        "--connection-out",
        str(connection_file),
        *extra,
    ]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO)
    deadline = time.monotonic() + 60
    first_line = ""
    while time.monotonic() < deadline:
        text = stdout_path.read_text(errors="replace")
        if "\n" in text:
            first_line = text.split("\n", 1)[0].strip()
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if not first_line.startswith("https://"):
        proc.kill()
        proc.wait(10)
        pytest.fail(
            f"the emulator did not print its https base URL as the first stdout line (got {first_line!r}); "
            f"command: {' '.join(cmd)}\n{stderr_path.read_text(errors='replace')[-4000:]}"
        )
    for _ in range(200):
        if connection_file.exists() and connection_file.stat().st_size:
            break
        time.sleep(0.05)
    connection = json.loads(connection_file.read_text())
    ca_file = Path(connection.get("ca_file") or data_dir / "ca.pem")
    return proc, ServedEmulator(first_line.rstrip("/"), connection_file, connection, ca_file, tmp)


@pytest.fixture(scope="module")
def served_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedEmulator]:
    tmp = tmp_path_factory.mktemp("emulator")
    proc, served = start_emulator(tmp, "--key-activation-s", "1")
    try:
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def sdk_env(ca_file: Path) -> dict[str, str]:
    """Environment for the SDK subprocess: the emulator's CA explicitly (this machine exports its own bundles)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["REQUESTS_CA_BUNDLE"] = str(ca_file)
    env["CURL_CA_BUNDLE"] = str(ca_file)
    env["SSL_CERT_FILE"] = str(ca_file)
    return env
