"""The emulator in its own process for the benchmarks, so the benchmark process's CPU time (``time.process_time``) is
the client's alone and the emulator's work does not share the client's interpreter lock.

    with served(throttle="dataverse", latency_ms=20) as emu:
        Connection.from_config(emu.config)...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataverse_emulator.testing import AdminClient

# the person running a benchmark is the operator: the emulator's CA lives in a temporary folder (connector/policy.py)
os.environ.setdefault("D365_POLICY", "local")


@dataclass
class Served:
    """A running ``python -m dataverse_emulator`` child: its base URL, connection file body, CA file and admin."""

    base_url: str
    config: dict[str, Any]
    connection_file: Path
    ca_file: str | None
    admin: AdminClient
    process: subprocess.Popen[bytes]

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/data/v9.2"


def _args(options: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out


@contextmanager
def served(**options: Any) -> Iterator[Served]:
    """Start the emulator with ``options`` (names of ``d365 emulator serve``'s options), admin on, key activation
    immediate, on a free port; stop it (by its own process id) when the block ends."""
    options = {"key_activation_s": 0, **options}
    tmp = Path(tempfile.mkdtemp(prefix="d365-bench-"))
    conn_file = tmp / "connection.json"
    args = [sys.executable, "-m", "dataverse_emulator", "--port", "0", "--admin", "--data-dir", str(tmp)]
    args += ["--connection-out", str(conn_file), *_args(options)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().decode().strip()
        if not base.startswith("http"):
            raise RuntimeError(f"the emulator did not start: {base!r}")
        while not conn_file.exists() or not conn_file.read_text().strip():
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the emulator exited before writing its connection file")
        config = json.loads(conn_file.read_text())
        ca = str(tmp / "ca.pem") if options.get("tls") else None
        admin = AdminClient(base, ca or True)
        try:
            yield Served(base, config, conn_file, ca, admin, proc)
        finally:
            admin.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
