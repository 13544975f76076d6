"""``d365 serve`` as a process: hosted policy by default, the token generated and printed once when none is set,
connection files by name, and a clean exit on SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from dataverse_emulator.testing import EmulatorHandle


def test_d365_serve_runs_hosted_and_stops_on_sigint(emulator: EmulatorHandle, tmp_path: Path) -> None:
    connection = tmp_path / "emu.json"
    connection.write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    env = {**os.environ, "D365_POLICY": "", "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("D365_SERVE_TOKEN", None)
    command = [sys.executable, "-m", "connector.cli", "serve", "--connection", f"emu={connection}", "--port", "0"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        token_line = process.stderr.readline()
        token = re.search(r"API token for this run .*: (\S+)$", token_line.strip())
        assert token, token_line
        url_line = process.stderr.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)/", url_line)
        assert found, url_line
        with httpx.Client(base_url=found.group(1), headers={"Authorization": f"Bearer {token.group(1)}"}) as client:
            assert client.get("/healthz").json() == {"ok": True}
            listed = client.get("/connections").json()["connections"]
            assert [c["name"] for c in listed] == ["emu"] and listed[0]["connected"] is True
            settings = {**emulator.connection_config(), "client_secret": {"file": str(connection)}}
            refused = client.put("/connections/local-file", json=settings)  # hosted: no local files
            assert refused.status_code == 422 and refused.json()["errors"][0]["path"] == "/client_secret"
            ran = client.post("/actions/get_current_user", json={"connection": "emu", "inputs": {}})
            assert ran.status_code == 200, ran.text
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
