"""End-to-end fixtures: one emulator per test module on a real socket (127.0.0.1, free port), reset between tests.

The connector reaches it over HTTP exactly as it would reach Dataverse; the admin surface seeds large tables and reads
the request log. Tests get a ``Runtime`` (entry points not loaded) and a ``Connection`` the emulator issued.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, running_emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


@pytest.fixture
def fresh_emulator(emulator: EmulatorHandle) -> EmulatorHandle:
    """The module's emulator, emptied of rows, keys and logged requests."""
    emulator.admin.reset()
    return emulator


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False, validate_output=True)


@pytest.fixture
def connection(fresh_emulator: EmulatorHandle) -> Iterator[Connection]:
    conn = Connection.from_config(fresh_emulator.connection_config())
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def connection_file(fresh_emulator: EmulatorHandle, tmp_path: Path) -> Path:
    path = tmp_path / "connection.json"
    path.write_text(json.dumps(fresh_emulator.connection_config()), encoding="utf-8")
    return path


def web_api_requests(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    """Logged requests to the Web API (token requests and admin calls left out)."""
    return [r for r in emulator.admin.requests() if "/api/data/" in r.get("path", "")]


def custom_table_request(schema_name: str, label: str, plural: str) -> dict[str, Any]:
    """``raw_request`` inputs that create a user-owned custom table with a 100-character primary name column, the way
    the tests need one (no action creates tables yet: the documented POST to EntityDefinitions)."""

    def labels(text: str) -> dict[str, Any]:
        return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]}

    return {
        "path": "EntityDefinitions",
        "method": "POST",
        "data": {
            "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
            "SchemaName": schema_name,
            "DisplayName": labels(label),
            "DisplayCollectionName": labels(plural),
            "OwnershipType": "UserOwned",
            "HasActivities": False,
            "HasNotes": False,
            "IsActivity": False,
            "Attributes": [
                {
                    "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
                    "SchemaName": "new_Name",
                    "IsPrimaryName": True,
                    "MaxLength": 100,
                    "RequiredLevel": {"Value": "None"},
                    "DisplayName": labels("Name"),
                }
            ],
        },
    }
