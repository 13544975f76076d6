"""write_entities' removal modes against the emulator: delete ($batch of DELETEs) and deactivate (the table's
inactive state), one result per record, chunked, a restricted delete failing alone, bad input refused first."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from connector.bulk import WriteOptions, write_entities
from connector.connection import Connection
from connector.errors import InputError
from connector.schemas import validate
from dataverse_emulator.testing import EmulatorHandle, running_emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(key_activation_s=0) as handle:
        yield handle


@pytest.fixture
def conn(emulator: EmulatorHandle) -> Iterator[Connection]:
    emulator.admin.reset()
    c = Connection.from_config(emulator.connection_config())
    c.client.request(
        "POST",
        "EntityDefinitions(LogicalName='account')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": "new_accountnumber",
            "DisplayName": {"LocalizedLabels": [{"Label": "number", "LanguageCode": 1033}]},
            "KeyAttributes": ["accountnumber"],
        },
    )
    c.metadata.invalidate("account")
    try:
        yield c
    finally:
        c.close()


def make_accounts(conn: Connection, n: int) -> list[str]:
    rows = [{"fields": {"name": f"Co {i}", "accountnumber": f"N-{i}"}} for i in range(n)]
    return [str(r.id) for r in write_entities(conn, "account", "create", rows).results]


def account_rows(conn: Connection) -> dict[str, dict[str, Any]]:
    body = conn.client.get_json("accounts?$select=accountid,statecode,statuscode")
    return {r["accountid"]: r for r in body["value"]}


def data_requests(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    return [r for r in emulator.admin.requests() if "/api/data/" in r["path"] and r["method"] != "GET"]


def test_delete_by_id_and_key_one_result_per_record(conn: Connection, emulator: EmulatorHandle) -> None:
    ids = make_accounts(conn, 5)
    emulator.admin.clear_requests()
    missing = str(uuid.uuid4())
    records = [{"id": ids[0]}, {"key": {"accountnumber": "N-1"}}, {"id": missing}, {"id": "not-a-guid"}, {"id": ids[0]}]
    report = write_entities(conn, "account", "delete", records, WriteOptions(chunk_size=2))
    statuses = [(r.status, r.merged_into) for r in report.results]
    assert statuses == [("deleted", 4), ("deleted", None), ("absent", None), ("failed", None), ("deleted", None)]
    assert report.results[3].code == "InputError"
    assert set(account_rows(conn)) == set(ids[2:])
    summary = report.summary()
    assert (summary["deleted"], summary["absent"], summary["failed"], summary["merged"]) == (3, 1, 1, 1)
    assert report.route == "batch" and report.mode == "delete"
    batches = [r for r in data_requests(emulator) if r["path"].endswith("$batch")]
    assert len(batches) == report.chunks == 2  # three rows to send in chunks of two


def test_a_restricted_delete_fails_alone(conn: Connection) -> None:
    ids = make_accounts(conn, 3)
    conn.client.request(
        "POST", "incidents", json={"title": "open case", "customerid_account@odata.bind": f"/accounts({ids[1]})"}
    )
    report = write_entities(conn, "account", "delete", [{"id": i} for i in ids])
    assert [r.status for r in report.results] == ["deleted", "failed", "deleted"]
    assert report.results[1].code == "0x80040227"
    assert set(account_rows(conn)) == {ids[1]}


def test_deactivate_sets_the_inactive_state_from_metadata(conn: Connection) -> None:
    ids = make_accounts(conn, 4)
    missing = str(uuid.uuid4())
    records = [{"id": ids[0]}, {"key": {"accountnumber": "N-2"}}, {"id": missing}]
    report = write_entities(conn, "account", "deactivate", records, WriteOptions(chunk_size=1))
    assert [r.status for r in report.results] == ["deactivated", "deactivated", "absent"]
    rows = account_rows(conn)
    assert {i: (rows[i]["statecode"], rows[i]["statuscode"]) for i in ids} == {
        ids[0]: (1, 2),
        ids[1]: (0, 1),
        ids[2]: (1, 2),
        ids[3]: (0, 1),
    }
    assert report.summary()["deactivated"] == 2


@pytest.mark.parametrize(
    ("records", "path"),
    [
        ([{"id": str(uuid.uuid4()), "fields": {"name": "x"}}], "$.records[0].fields"),
        ([{}], "$.records[0].id"),
        ([{"key": {"name": "x"}}], "$.records[0].key.name"),
    ],
)
def test_bad_records_are_refused_before_any_request(
    conn: Connection, emulator: EmulatorHandle, records: list[dict[str, Any]], path: str
) -> None:
    emulator.admin.clear_requests()
    with pytest.raises(InputError) as info:
        write_entities(conn, "account", "delete", records)
    assert [p.path for p in info.value.problems] == [path]
    assert data_requests(emulator) == []


def test_the_action_schema_takes_removal_records_without_fields() -> None:
    row = str(uuid.uuid4())
    schema = "actions/write_entities.input.json"
    assert validate({"table": "account", "mode": "delete", "records": [{"id": row}]}, schema) == []
    refused = validate({"table": "account", "mode": "delete", "records": [{"id": row, "fields": {}}]}, schema)
    assert refused != []
    assert validate({"table": "account", "mode": "update", "records": [{"id": row}]}, schema) != []
