"""``--sample-data``: a small organization in use, deterministic under ``--seed``, holding what the README's examples
take for granted, loaded again by the admin reset and only once into a ``--db`` file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataverse_emulator.app import create_app
from dataverse_emulator.testing import EmulatorHandle, running_emulator

TABLES = ("account", "contact", "lead", "opportunity", "task", "phonecall", "email", "activityparty", "listmember")


def _dump(seed: int | None, db_path: str | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every sample row of the main tables, field for field (creation order aside)."""
    emu = create_app(seed=seed, sample_data=True, db_path=db_path).state.emulator
    out = {}
    for t in TABLES:
        pk = emu.tables[t].primary_id
        out[t] = [tuple(r) for r in emu.store.conn.execute(f"SELECT * FROM {t} ORDER BY {pk}").fetchall()]
    return out


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    a, b, c = _dump(11), _dump(11), _dump(12)
    assert a == b
    assert a["account"] != c["account"] and a["task"] != c["task"]
    assert len(a["account"]) == 200 and len(a["contact"]) == 300 and len(a["task"]) == 150


def test_db_file_is_loaded_once(tmp_path: Path) -> None:
    db = str(tmp_path / "org.db")
    first = _dump(5, db)
    again = _dump(5, db)  # the restart replays the schema and finds the rows: nothing doubles
    assert first == again


@pytest.fixture(scope="module")
def sample() -> Iterator[EmulatorHandle]:
    with running_emulator(seed=3, sample_data=True) as handle:
        yield handle


@pytest.fixture
def api(sample: EmulatorHandle) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sample.token()}", "Accept": "application/json"}
    with httpx.Client(base_url=sample.api_url + "/", headers=headers, timeout=30) as client:
        yield client


def test_what_the_readme_examples_take_for_granted(api: httpx.Client) -> None:
    keys = {
        (k["EntityLogicalName"], tuple(k["KeyAttributes"]), k["EntityKeyIndexStatus"])
        for table in ("account", "contact")
        for k in api.get(f"EntityDefinitions(LogicalName='{table}')/Keys").json()["value"]
    }
    assert keys == {
        ("account", ("accountnumber",), "Active"),
        ("account", ("name", "address1_postalcode"), "Active"),
        ("contact", ("emailaddress1",), "Active"),
    }
    assert api.get("accounts(accountnumber='A-1001')?$select=name").json()["name"] == "Contoso Ltd"
    assert api.get("accounts(accountnumber='A-1002')?$select=name").json()["name"] == "Fabrikam Inc"
    ada = api.get("contacts(emailaddress1='ada@example.com')?$select=fullname").json()
    assert ada["fullname"] == "Ada Lovelace"
    bank = api.get("EntityDefinitions(LogicalName='new_bankaccount')/Attributes?$select=LogicalName").json()["value"]
    assert {"new_name", "new_code", "new_region"} <= {a["LogicalName"] for a in bank}
    codes = api.get("new_bankaccounts?$select=new_code,new_region").json()["value"]
    assert len({(c["new_code"], c["new_region"]) for c in codes}) == len(codes) == 20  # a key on them can activate
    contract = api.get("EntityDefinitions(LogicalName='account')/Attributes(LogicalName='new_contract')").json()
    assert contract["@odata.type"] == "#Microsoft.Dynamics.CRM.FileAttributeMetadata"


def test_the_organization_is_connected(api: httpx.Client) -> None:
    lst = api.get("lists?$select=listname,membercount,createdfromcode").json()["value"]
    assert [(x["listname"], x["membercount"], x["createdfromcode"]) for x in lst] == [("Newsletter subscribers", 60, 2)]
    contacts = api.get("contacts?$filter=_parentcustomerid_value ne null&$count=true&$top=1").json()
    assert contacts["@odata.count"] == 299  # everyone but Ada works for an account
    tasks = api.get("tasks?$filter=_regardingobjectid_value ne null&$count=true&$top=1").json()
    assert tasks["@odata.count"] == 150
    acc = api.get("accounts?$select=name&$expand=Account_Tasks($select=subject)&$top=50").json()["value"]
    assert any(a["Account_Tasks"] for a in acc)
    opp = api.get("opportunities?$select=name,estimatedvalue,estimatedvalue_base&$top=1").json()["value"][0]
    assert opp["estimatedvalue_base"] == opp["estimatedvalue"]  # base currency: rate 1
    eur = api.get("transactioncurrencies?$filter=isocurrencycode eq 'EUR'").json()["value"][0]["transactioncurrencyid"]
    flt = f"_transactioncurrencyid_value eq {eur}"
    in_euros = api.get(f"accounts?$filter={flt}&$select=revenue,revenue_base,exchangerate").json()["value"]
    assert len(in_euros) == 20
    assert all(r["exchangerate"] == 0.92 and abs(r["revenue_base"] - r["revenue"] / 0.92) < 0.01 for r in in_euros)
    emails = api.get("emails?$expand=email_activity_parties($select=participationtypemask)&$top=100").json()["value"]
    masks = {p["participationtypemask"] for e in emails for p in e["email_activity_parties"]}
    assert masks == {1, 2}


def test_admin_reset_loads_the_sample_organization_again(sample: EmulatorHandle, api: httpx.Client) -> None:
    assert (
        api.delete(f"accounts({api.get('accounts(accountnumber=%27A-1002%27)').json()['accountid']})").status_code
        == 204
    )
    assert api.get("accounts(accountnumber='A-1002')").status_code == 404
    sample.admin.reset()
    assert api.get("accounts(accountnumber='A-1002')?$select=name").json()["name"] == "Fabrikam Inc"
    assert api.get("accounts/$count").text == "200"
