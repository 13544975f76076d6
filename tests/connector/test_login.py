"""``d365 connection login --no-browser`` end to end against the emulator's consenting authorize endpoint.

The CLI runs as a subprocess, as a user would run it; the test plays the browser: it reads the printed URL, fetches
it with httpx and follows the emulator's redirect (code and state) to the CLI's listener on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from connector.connection import Connection
from connector.token_store import TokenStore
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from tests.conftest import assert_no_secrets


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


def _login(connection_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "connection",
            "login",
            "--connection",
            str(connection_file),
            "--no-browser",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _printed_url(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    for _ in range(5):
        line = process.stderr.readline()
        if line.startswith("http"):
            return line.strip()
    raise AssertionError("login printed no URL")


def test_login_no_browser_end_to_end(emulator: EmulatorHandle, tmp_path: Path) -> None:
    config = emulator.connection_config("authorization_code")
    config["token_store"] = "tokens/contoso.json"
    connection_file = tmp_path / "conn.json"
    connection_file.write_text(json.dumps(config))
    process = _login(connection_file)
    try:
        url = _printed_url(process)
        query = dict(parse_qsl(urlsplit(url).query))
        assert query["code_challenge_method"] == "S256" and query["code_challenge"]
        assert query["redirect_uri"].startswith("http://127.0.0.1:")
        browser = httpx.get(url, follow_redirects=True, timeout=30)  # authorize -> 302 -> our listener
        assert browser.status_code == 200 and "Signed in" in browser.text
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    result = json.loads(out)
    store = tmp_path / "tokens" / "contoso.json"
    assert result["ok"] is True and result["token_store"] == str(store)
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    first = TokenStore(store).load()
    assert_no_secrets(out, err)
    assert first is not None and first not in out + err
    # a later run refreshes from the store; the emulator rotates the refresh token and the store follows
    with Connection.from_file(connection_file) as conn:
        assert conn.client.whoami().user_id == result["user_id"]
    assert TokenStore(store).load() not in (None, first)


def test_login_refuses_a_redirect_with_a_forged_state(emulator: EmulatorHandle, tmp_path: Path) -> None:
    config = emulator.connection_config("authorization_code")
    config["token_store"] = "token.json"
    connection_file = tmp_path / "conn.json"
    connection_file.write_text(json.dumps(config))
    process = _login(connection_file)
    try:
        url = _printed_url(process)
        answer = httpx.get(url, follow_redirects=False, timeout=30)
        location = answer.headers["location"]
        state = dict(parse_qsl(urlsplit(location).query))["state"]
        httpx.get(location.replace(f"state={state}", "state=forged"), timeout=30)
        _out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 3
    assert "state does not match" in err
    assert not (tmp_path / "token.json").exists()


def test_login_is_only_for_user_sign_in(emulator: EmulatorHandle, tmp_path: Path) -> None:
    connection_file = tmp_path / "conn.json"
    connection_file.write_text(json.dumps(emulator.connection_config("client_credentials")))
    result = subprocess.run(
        [sys.executable, "-m", "connector.cli", "connection", "login", "--connection", str(connection_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "authorization_code" in result.stderr
