"""Serving: the CLI prints the base URL first and writes connection files; TLS with the local CA; admin log."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from dataverse_emulator.testing import EmulatorHandle, running_emulator

from .conftest import fetch_token


def test_cli_first_line_is_base_url_and_connection_file(tmp_path: Path) -> None:
    out = tmp_path / "conn.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dataverse_emulator",
            "--port",
            "0",
            "--seed",
            "3",
            "--data-dir",
            str(tmp_path),
            "--connection-out",
            str(out),
            "--connection-kind",
            "managed_identity",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("http://127.0.0.1:")
        for line in proc.stdout:
            if line.startswith("connection file:"):
                break
        cfg = json.loads(out.read_text())
        assert cfg["kind"] == "managed_identity" and cfg["organization_url"] == first
        assert cfg["identity_endpoint"] == f"{first}/metadata/identity/oauth2/token"
        assert cfg["identity_style"] == "imds" and cfg["allow_insecure_loopback"] is True
        r = httpx.get(cfg["identity_endpoint"], params={"resource": first}, headers={"Metadata": "true"})
        assert (
            httpx.get(
                f"{first}/api/data/v9.2/WhoAmI", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
            ).status_code
            == 200
        )
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_cli_authorization_code_connection_file_names_a_token_store(tmp_path: Path) -> None:
    out = tmp_path / "conn.json"
    args = ["--port", "0", "--data-dir", str(tmp_path), "--connection-out", str(out)]
    cmd = [sys.executable, "-m", "dataverse_emulator", *args, "--connection-kind", "authorization_code"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("connection file:"):
                break
        cfg = json.loads(out.read_text())
        assert cfg["kind"] == "authorization_code"
        assert cfg["token_store"] == str(tmp_path / "conn.token.json")
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_tls_with_generated_ca(tmp_path: Path) -> None:
    with running_emulator(tls=True, data_dir=str(tmp_path)) as handle:
        assert handle.base_url.startswith("https://127.0.0.1:")
        assert handle.ca_file == str(tmp_path / "ca.pem")
        ctx = ssl.create_default_context(cafile=handle.ca_file)
        cfg = handle.connection_config()
        assert cfg["ca_file"] == handle.ca_file and "allow_insecure_loopback" not in cfg
        token = httpx.post(
            cfg["token_url"],
            verify=ctx,
            data={
                "grant_type": "client_credentials",
                "client_id": cfg["client_id"],
                "client_secret": cfg["client_secret"],
                "scope": f"{handle.base_url}/.default",
            },
        ).json()["access_token"]
        r = httpx.get(f"{handle.api_url}/WhoAmI", verify=ctx, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        ca_bytes = Path(handle.ca_file).read_bytes()
    with running_emulator(tls=True, data_dir=str(tmp_path)) as again:
        assert Path(str(again.ca_file)).read_bytes() == ca_bytes  # the CA is generated once per data dir


def test_request_log_redacts_and_records(emulator: EmulatorHandle) -> None:
    token = fetch_token(emulator)
    httpx.get(
        f"{emulator.api_url}/accounts(00000000-0000-0000-0000-000000000009)",
        headers={"Authorization": f"Bearer {token}"},
    )
    entries = [e for e in emulator.admin.requests() if e["path"].endswith("000000000009)")]
    assert len(entries) == 1
    e = entries[0]
    assert e["status"] == 404 and e["error_code"] == "0x80040217"
    assert e["headers"]["authorization"] == "<redacted>"
    assert token not in json.dumps(e)
    assert e["user"] and e["end"] >= e["start"] and e["in_flight_at_start"] >= 1


def test_persistent_db_survives_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "dv.sqlite")
    with running_emulator(db_path=db, seed=1) as h:
        ids = h.admin.seed("account", [{"name": "kept"}])
    with running_emulator(db_path=db, seed=1) as h2:
        token = fetch_token(h2)
        r = httpx.get(f"{h2.api_url}/accounts({ids[0]})?$select=name", headers={"Authorization": f"Bearer {token}"})
        assert r.json()["name"] == "kept"
