"""``raw_request`` against the emulator: GET, POST JSON, a file column upload and its binary download."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connector.connection import Connection
from connector.errors import InputError, NotFoundError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.e2e.conftest import web_api_requests


def test_raw_request_get_post_file_upload_and_binary_download(runtime: Runtime, connection: Connection) -> None:
    column = {
        "@odata.type": "Microsoft.Dynamics.CRM.FileAttributeMetadata",
        "SchemaName": "new_Contract",
        "MaxSizeInKB": 64,
    }
    made = runtime.run_action(
        "raw_request",
        {"path": "EntityDefinitions(LogicalName='account')/Attributes", "method": "POST", "data": column},
        connection,
    )
    assert made["status"] == 204
    created = runtime.run_action(
        "raw_request",
        {"path": "accounts", "method": "POST", "data": {"name": "Raw"}, "headers": {"Prefer": "return=representation"}},
        connection,
    )
    assert created["status"] == 201 and created["body"]["name"] == "Raw"
    account = created["body"]["accountid"]
    listed = runtime.run_action("raw_request", {"path": "accounts", "query": {"$select": "name"}}, connection)
    assert [r["name"] for r in listed["body"]["value"]] == ["Raw"]
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4
    upload = {
        "path": f"accounts({account})/new_contract",
        "method": "PATCH",
        "file_data": [
            {
                "file_name": "contract.pdf",
                "content_base64": base64.b64encode(pdf).decode(),
                "content_type": "application/pdf",
            }
        ],
    }
    assert runtime.run_action("raw_request", upload, connection)["status"] == 204
    down = runtime.run_action(
        "raw_request", {"path": f"accounts({account})/new_contract/$value", "response_type": "binary"}, connection
    )
    assert base64.b64decode(down["body"]) == pdf
    assert down["headers"]["x-ms-file-name"] == "contract.pdf" and down["headers"]["mimetype"] == "application/pdf"
    with pytest.raises(NotFoundError) as info:
        runtime.run_action("raw_request", {"path": "accounts(00000000-0000-0000-0000-0000000000ee)"}, connection)
    assert info.value.code == "0x80040217"


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        pytest.param({"path": "https://example.com/api/data/v9.2/accounts"}, "$.path", id="absolute-other-host"),
        pytest.param({"path": "../../_emulator/reset", "method": "POST", "data": {}}, "$.path", id="dotdot"),
        pytest.param({"path": "%2e%2e/%2e%2e/_emulator/requests"}, "$.path", id="encoded-traversal"),
        pytest.param(
            {"path": "WhoAmI", "headers": {"authorization": "Bearer x"}}, "$.headers.authorization", id="auth"
        ),
    ],
)
def test_raw_request_refused_with_exit_2_before_any_request(
    runtime: Runtime,
    connection: Connection,
    connection_file: Path,
    fresh_emulator: EmulatorHandle,
    inputs: dict[str, object],
    field: str,
) -> None:
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as info:
        runtime.run_action("raw_request", inputs, connection)
    assert info.value.problems[0].path == field
    args = [f"--set=path={inputs['path']}"]
    args += [f"--set=headers.{k}={v}" for k, v in (inputs.get("headers") or {}).items()]  # type: ignore[attr-defined]
    done = subprocess.run(
        [sys.executable, "-m", "connector.cli", "run", "raw_request", "--connection", str(connection_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 2, done.stderr
    assert [r for r in web_api_requests(fresh_emulator) if "EntityDefinitions" not in r["path"]] == []
