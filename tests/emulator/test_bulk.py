"""CreateMultiple / UpdateMultiple / UpsertMultiple, BulkDelete and the sdkmessagefilter probe (reference 7, 15.3)."""

from __future__ import annotations

from typing import Any

import httpx

from dataverse_emulator.testing import EmulatorHandle

from .conftest import FakeClock, error_of

T = "Microsoft.Dynamics.CRM.account"


def targets(*rows: dict[str, Any]) -> dict[str, Any]:
    return {"Targets": [{"@odata.type": T, **r} for r in rows]}


def names(api: httpx.Client, prefix: str) -> list[str]:
    r = api.get("accounts", params={"$select": "name", "$filter": f"startswith(name,'{prefix}')", "$orderby": "name"})
    return [row["name"] for row in r.json()["value"]]


def active_key(api: httpx.Client, clock: FakeClock) -> None:
    key = {"SchemaName": "bulk_accountnumber", "KeyAttributes": ["accountnumber"]}
    assert api.post("EntityDefinitions(LogicalName='account')/Keys", json=key).status_code in (200, 201, 204)
    clock.advance(5)


def test_create_multiple_returns_ids_in_order(api: httpx.Client) -> None:
    r = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets({"name": "cm-1"}, {"name": "cm-2"}))
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"@odata.context", "Ids"}
    assert body["@odata.context"].endswith("/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse")
    got = [api.get(f"accounts({i})?$select=name").json()["name"] for i in body["Ids"]]
    assert got == ["cm-1", "cm-2"]


def test_create_multiple_is_all_or_nothing_with_the_failing_records_error(api: httpx.Client) -> None:
    single = api.post("accounts", json={"name": "x" * 161})
    r = api.post(
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json=targets({"name": "aon-1"}, {"name": "x" * 161}, {"name": "aon-3"}),
    )
    assert error_of(r) == error_of(single)  # same code and message as the single create, no index
    assert names(api, "aon-") == []


def test_targets_must_be_typed_as_the_table(api: httpx.Client) -> None:
    untyped = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [{"name": "u"}]})
    assert error_of(untyped)[:2] == (400, "0x80048d19")
    other = api.post(
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "lastname": "c"}]},
    )
    assert error_of(other)[:2] == (400, "0x80040203")


def test_update_multiple_first_duplicate_wins_and_refuses_alternate_keys(api: httpx.Client) -> None:
    ids = api.post(
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets({"name": "um-a"}, {"name": "um-b"})
    ).json()["Ids"]
    r = api.post(
        "accounts/Microsoft.Dynamics.CRM.UpdateMultiple",
        json=targets(
            {"accountid": ids[0], "name": "um-a2"},
            {"accountid": ids[1], "name": "um-b2"},
            {"accountid": ids[0], "name": "um-ignored"},
        ),
    )
    assert r.status_code == 204 and r.content == b""
    assert names(api, "um-") == ["um-a2", "um-b2"]
    by_key = api.post(
        "accounts/Microsoft.Dynamics.CRM.UpdateMultiple",
        json=targets({"@odata.id": "accounts(accountnumber='K1')", "name": "k"}),
    )
    assert error_of(by_key)[:2] == (400, "0x80040203")
    missing = api.post(
        "accounts/Microsoft.Dynamics.CRM.UpdateMultiple",
        json=targets(
            {"accountid": ids[0], "name": "um-rolled-back"}, {"accountid": "0" * 8 + "-0000-0000-0000-" + "0" * 12}
        ),
    )
    assert error_of(missing)[:2] == (404, "0x80040217")
    assert names(api, "um-") == ["um-a2", "um-b2"]


def test_upsert_multiple_by_alternate_key_creates_then_updates(api: httpx.Client, clock: FakeClock) -> None:
    active_key(api, clock)
    first = api.post(
        "accounts/Microsoft.Dynamics.CRM.UpsertMultiple",
        json=targets(
            {"@odata.id": "accounts(accountnumber='U1')", "name": "up-1"},
            {"@odata.id": "accounts(accountnumber='U2')", "name": "up-2"},
        ),
    )
    assert first.status_code == 204 and first.content == b""
    before = api.get("accounts", params={"$filter": "startswith(name,'up-')", "$select": "accountnumber"}).json()
    second = api.post(
        "accounts/Microsoft.Dynamics.CRM.UpsertMultiple",
        json=targets({"@odata.id": "accounts(accountnumber='U1')", "name": "up-1b"}),
    )
    assert second.status_code == 204
    assert names(api, "up-") == ["up-1b", "up-2"]
    after = api.get("accounts", params={"$filter": "startswith(name,'up-')", "$select": "accountnumber"}).json()
    assert sorted(r["accountid"] for r in after["value"]) == sorted(r["accountid"] for r in before["value"])
    dup = api.post(
        "accounts/Microsoft.Dynamics.CRM.UpsertMultiple",
        json=targets(
            {"@odata.id": "accounts(accountnumber='U3')", "name": "up-3"},
            {"@odata.id": "accounts(accountnumber='u3')", "name": "up-3 again"},
        ),
    )
    assert error_of(dup)[:2] == (400, "0x80040203")
    assert names(api, "up-3") == []


def test_listmember_has_no_bulk_messages(api: httpx.Client) -> None:
    def probe(table: str, message: str) -> int:
        r = api.get(
            "sdkmessagefilters",
            params={
                "$select": "sdkmessagefilterid",
                "$filter": f"primaryobjecttypecode eq '{table}' and sdkmessageid/name eq '{message}'",
            },
        )
        assert r.status_code == 200
        return len(r.json()["value"])

    assert [probe("account", m) for m in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")] == [1, 1, 0]
    assert [probe("listmember", m) for m in ("Create", "Update", "CreateMultiple", "UpdateMultiple")] == [1, 1, 0, 0]
    assert probe("team", "SetState") == 1 and probe("lead", "Assign") == 1
    r = api.post(
        "listmembers/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.listmember"}]},
    )
    assert error_of(r)[:2] == (400, "0x80040203")


def test_bulk_delete_job_deletes_the_listed_rows(api: httpx.Client, emulator: EmulatorHandle) -> None:
    ids = api.post(
        "accounts/Microsoft.Dynamics.CRM.CreateMultiple",
        json=targets({"name": "bd-1"}, {"name": "bd-2"}, {"name": "bd-3"}),
    ).json()["Ids"]
    body = {
        "JobName": "Bulk delete account records",
        "SendEmailNotification": False,
        "ToRecipients": [],
        "CCRecipients": [],
        "RecurrencePattern": "",
        "StartDateTime": "2026-01-01T00:00:00Z",
        "QuerySet": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.QueryExpression",
                "EntityName": "account",
                "ColumnSet": {"@odata.type": "Microsoft.Dynamics.CRM.ColumnSet", "AllColumns": False, "Columns": []},
                "Criteria": {
                    "@odata.type": "Microsoft.Dynamics.CRM.FilterExpression",
                    "FilterOperator": "And",
                    "Conditions": [
                        {
                            "@odata.type": "Microsoft.Dynamics.CRM.ConditionExpression",
                            "AttributeName": "accountid",
                            "Operator": "In",
                            "Values": [{"Value": i, "Type": "System.Guid"} for i in ids[:2]],
                        }
                    ],
                },
            }
        ],
    }
    r = api.post("BulkDelete", json=body)
    assert r.status_code == 200
    assert set(r.json()) == {"@odata.context", "JobId"}
    assert names(api, "bd-") == ["bd-3"]
    job = api.get(f"asyncoperations({r.json()['JobId']})?$select=name,operationtype,statecode,statuscode").json()
    assert (job["name"], job["operationtype"], job["statecode"], job["statuscode"]) == (
        "Bulk delete account records",
        13,
        3,
        30,
    )
