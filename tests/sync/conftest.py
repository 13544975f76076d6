"""Sync fixtures: an emulator with an alternate key on account.accountnumber, a state store, a mapper double.

The mapper double stands for :class:`connector.sync.mapping.Mapper` (synca's slice) with the same interface: source
rows ``{"num", "name", "email"?, "id"?}`` become ``account`` records matched by ``accountnumber``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import InputProblem
from connector.sync.mapping import MappedRow as Mapped
from connector.sync.state import StateStore
from dataverse_emulator.testing import EmulatorHandle, running_emulator


class AccountMapper:
    """``num`` -> accountnumber (the key), ``name`` -> name, ``email`` -> emailaddress1; ``by`` picks the match."""

    def __init__(self, by: str = "key", version: str = "v1") -> None:
        self.by, self.version = by, version

    def fingerprint(self) -> str:
        return self.version

    def map_rows(self, rows: Sequence[Mapping[str, Any]], start_index: int) -> list[Mapped]:
        out = []
        for i, row in enumerate(rows):
            fields: dict[str, Any] = {"name": row["name"]}
            if row.get("email") is not None:
                fields["emailaddress1"] = row["email"]
            key = {"accountnumber": row["num"]} if row.get("num") is not None else None
            problems = [InputProblem(f"$.rows[{start_index + i}].name", "too long")] if len(row["name"]) > 50 else []
            if self.by == "id":
                match_key, key = json.dumps(row.get("id")), None
            elif self.by == "column":
                match_key = json.dumps(row["email"])
            else:
                match_key = json.dumps(key)
            out.append(Mapped(start_index + i, match_key, key, row.get("id"), fields, problems=problems))
        return out


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(key_activation_s=0) as handle:
        yield handle


@pytest.fixture
def connection(emulator: EmulatorHandle) -> Iterator[Connection]:
    emulator.admin.reset()
    conn = Connection.from_config(emulator.connection_config())
    conn.client.request(
        "POST",
        "EntityDefinitions(LogicalName='account')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": "new_accountnumber",
            "DisplayName": {"LocalizedLabels": [{"Label": "number", "LanguageCode": 1033}]},
            "KeyAttributes": ["accountnumber"],
        },
    )
    conn.metadata.invalidate("account")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(f"sqlite:///{tmp_path / 'state.sqlite'}", "accounts")
    yield s
    s.close()


def accounts(connection: Connection) -> list[dict[str, Any]]:
    body = connection.client.get_json("accounts?$select=accountid,accountnumber,name,emailaddress1")
    return list(body["value"])


def writes(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    return [r for r in emulator.admin.requests() if "/api/data/" in r["path"] and r["method"] in ("POST", "PATCH")]
