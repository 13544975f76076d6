"""``get_current_user`` and ``test_connection`` against the emulator, through ``run_action`` and ``d365 run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from connector.connection import Connection
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.conftest import assert_no_secrets
from tests.e2e.conftest import web_api_requests


def d365(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def test_get_current_user_against_the_emulator(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    result = runtime.run_action("get_current_user", {}, connection)
    whoami = connection.client.whoami()
    assert result["user_id"] == whoami.user_id
    assert result["organization_id"] == whoami.organization_id
    assert result["is_application_user"] is True
    assert result["business_unit_name"]


def test_get_current_user_impersonating_a_user(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    root_bu = connection.client.whoami().business_unit_id
    ada = {"fullname": "Ada Lovelace", "azureactivedirectoryobjectid": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"}
    [user_id] = fresh_emulator.admin.seed("systemuser", [{**ada, "businessunitid": root_bu}])
    result = runtime.run_action("get_current_user", {"impersonate": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"}, connection)
    assert result["user_id"] == user_id
    assert result["full_name"] == "Ada Lovelace"


def test_get_current_user_via_cli_and_bad_input_sends_nothing(
    connection_file: Path, fresh_emulator: EmulatorHandle
) -> None:
    ok = d365("run", "get_current_user", "--connection", str(connection_file), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["is_application_user"] is True
    fresh_emulator.admin.clear_requests()
    bad = d365("run", "get_current_user", "--connection", str(connection_file), "--set", "impersonate=nope")
    assert bad.returncode == 2
    assert "$.impersonate" in bad.stderr
    assert fresh_emulator.admin.requests() == []
    assert_no_secrets(ok.stdout, ok.stderr, bad.stderr)


def test_test_connection_against_the_emulator(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    result = runtime.run_action("test_connection", {}, connection)
    assert result["ok"] is True, result
    assert [c["name"] for c in result["checks"]] == ["token", "audience", "whoami"]
    assert [r["path"] for r in web_api_requests(fresh_emulator)] == ["/api/data/v9.2/WhoAmI"]


def test_test_connection_wrong_secret_is_explained(connection_file: Path, fresh_emulator: EmulatorHandle) -> None:
    config = json.loads(connection_file.read_text())
    config["client_secret"] = "SENTINEL-client-secret-5b1d9c"
    connection_file.write_text(json.dumps(config))
    result = d365("connection", "test", "--connection", str(connection_file), "--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert "AADSTS7000215" in (report["diagnosis"] or "")
    assert_no_secrets(result.stdout, result.stderr)


def test_test_connection_bad_connection_file_names_the_field(
    connection_file: Path, fresh_emulator: EmulatorHandle
) -> None:
    config = json.loads(connection_file.read_text())
    config.pop("allow_insecure_loopback", None)
    connection_file.write_text(json.dumps(config))
    fresh_emulator.admin.clear_requests()
    result = d365("connection", "test", "--connection", str(connection_file))
    assert result.returncode == 3
    assert "allow_insecure_loopback" in result.stderr
    assert fresh_emulator.admin.requests() == []
