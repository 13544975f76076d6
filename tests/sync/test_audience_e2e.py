"""Audiences against the emulator: a segment kept in step with a marketing list and with a boolean membership column,
in modes add, remove, mirror (with the cap) and upsert; members added by hand are never removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.bulk import write_entities
from connector.connection import Connection
from connector.errors import InputError
from connector.policy import OperatorPolicy
from connector.sync.audience import AudienceSpec, audience_of, run_audience
from connector.sync.definition import load_definition
from connector.sync.engine import SyncJob, SyncResult
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from tests.sync.conftest import AccountMapper
from tests.sync.test_engine_e2e import people, source

JOB = SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=2, parallelism=2)


def new_list(conn: Connection) -> str:
    response = conn.client.request(
        "POST", "lists", json={"listname": "Newsletter", "createdfromcode": 1, "type": False}
    )
    return str(response.headers["OData-EntityId"]).rsplit("(", 1)[1].rstrip(")")


def spec(target: str, mode: str, fraction: float = 0.5) -> AudienceSpec:
    if target == "list":
        return AudienceSpec(mode, list="Newsletter", max_delete_fraction=fraction)  # type: ignore[arg-type]
    return AudienceSpec(mode, column="creditonhold", max_delete_fraction=fraction)  # type: ignore[arg-type]


def audience(
    conn: Connection, store: StateStore, rows: list[dict[str, Any]], target: str, mode: str, **kw: Any
) -> SyncResult:
    fraction = kw.pop("fraction", 0.5)
    return run_audience(conn, JOB, AccountMapper(), source(rows), store, spec(target, mode, fraction), **kw)


def ids(conn: Connection) -> dict[str, str]:
    rows = conn.client.get_json("accounts?$select=accountid,accountnumber")["value"]
    return {r["accountnumber"]: r["accountid"] for r in rows}


def members(conn: Connection, target: str, list_id: str) -> set[str]:
    numbers = {v: k for k, v in ids(conn).items()}
    if target == "list":
        rows = conn.client.get_json(f"listmembers?$filter=_listid_value eq {list_id}&$select=_entityid_value")["value"]
        return {numbers[r["_entityid_value"]] for r in rows}
    rows = conn.client.get_json("accounts?$select=accountnumber,creditonhold")["value"]
    return {r["accountnumber"] for r in rows if r["creditonhold"]}


def add_by_hand(conn: Connection, target: str, list_id: str, account: str) -> None:
    if target == "list":
        conn.client.request(
            "POST", f"lists({list_id})/Microsoft.Dynamics.CRM.AddMemberList", json={"EntityId": account}
        )
    else:
        conn.client.request("PATCH", f"accounts({account})", json={"creditonhold": True})


@pytest.fixture
def list_id(connection: Connection) -> str:
    return new_list(connection)


def seed(conn: Connection, n: int) -> None:
    rows = [{"fields": {"name": f"Company {i}", "accountnumber": f"A-{i:03}"}} for i in range(n)]
    write_entities(conn, "account", "create", rows)


@pytest.mark.parametrize("target", ["list", "column"])
def test_add_joins_matched_rows_and_never_creates(
    connection: Connection, store: StateStore, list_id: str, target: str
) -> None:
    seed(connection, 4)
    rows = [*people(3), {"num": "X-1", "name": "nobody"}]
    first = audience(connection, store, rows, target, "add")
    assert first.counts == {"added": 3, "skipped": 1} and first.exit_code == 0
    assert members(connection, target, list_id) == {"A-000", "A-001", "A-002"}
    assert len(ids(connection)) == 4  # add never creates
    again = audience(connection, store, rows, target, "add")
    assert again.counts == {"unchanged": 3, "skipped": 1}


@pytest.mark.parametrize("target", ["list", "column"])
def test_remove_makes_the_source_rows_leave(
    connection: Connection, store: StateStore, list_id: str, target: str
) -> None:
    seed(connection, 4)
    for account in ids(connection).values():
        add_by_hand(connection, target, list_id, account)
    result = audience(connection, store, people(2), target, "remove")
    assert result.counts == {"removed": 2}
    assert members(connection, target, list_id) == {"A-002", "A-003"}


@pytest.mark.parametrize("target", ["list", "column"])
def test_mirror_adds_the_new_removes_the_departed_within_the_cap(
    connection: Connection, store: StateStore, list_id: str, target: str
) -> None:
    seed(connection, 6)
    add_by_hand(connection, target, list_id, ids(connection)["A-005"])  # a member this sync did not add
    assert audience(connection, store, people(4), target, "mirror").counts == {"added": 4}
    rows = [r for r in people(5) if r["num"] != "A-003"]
    result = audience(connection, store, rows, target, "mirror")
    assert result.counts == {"unchanged": 3, "added": 1, "removed": 1}
    assert members(connection, target, list_id) == {"A-000", "A-001", "A-002", "A-004", "A-005"}
    with pytest.raises(InputError) as info:
        audience(connection, store, [], target, "mirror")  # all 4 followed members would leave: over 0.5
    assert info.value.problems[0].path == "$.max_delete_fraction"
    assert members(connection, target, list_id) == {"A-000", "A-001", "A-002", "A-004", "A-005"}
    forced = audience(connection, store, [], target, "mirror", force=True)
    assert forced.counts == {"removed": 4}
    assert members(connection, target, list_id) == {"A-005"}  # added by hand: never removed


@pytest.mark.parametrize("target", ["list", "column"])
def test_upsert_writes_the_rows_then_adds_them(
    connection: Connection, store: StateStore, list_id: str, target: str
) -> None:
    result = audience(connection, store, people(3), target, "upsert")
    assert result.counts == {"created": 3, "added": 3} and result.exit_code == 0
    assert members(connection, target, list_id) == {"A-000", "A-001", "A-002"}
    renamed = audience(connection, store, people(3, " v2"), target, "upsert")
    assert renamed.counts == {"updated": 3, "unchanged": 3}


def test_a_list_of_another_member_type_is_refused_before_anything_is_written(
    connection: Connection, store: StateStore
) -> None:
    connection.client.request("POST", "lists", json={"listname": "Newsletter", "createdfromcode": 2, "type": False})
    seed(connection, 1)
    with pytest.raises(InputError) as info:
        audience(connection, store, people(1), "list", "add")
    assert info.value.problems[0].path == "$.audience.list" and "contact members" in info.value.problems[0].message
    assert StateStore("", "accounts#audience", engine=store.engine).runs() == []


def test_the_definition_takes_a_list_or_a_column(tmp_path: Path) -> None:
    base = {
        "name": "a",
        "source": {"path": "x.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "n", "target": "accountnumber"}],
    }
    local = OperatorPolicy(preset="local")
    for given, path in [
        ({"mode": "add", "list": "L", "column": "creditonhold"}, "$.audience"),
        ({"mode": "add", "list": "L", "value": True}, "$.audience.value"),
    ]:
        with pytest.raises(InputError) as info:
            load_definition({**base, "audience": given}, policy=local, base_dir=tmp_path)
        assert info.value.problems[0].path == path
    mirrored = {**base, "audience": {"mode": "mirror", "list": "L"}, "max_delete_fraction": 0.5}
    assert audience_of(load_definition(mirrored, policy=local, base_dir=tmp_path)) == AudienceSpec(
        "mirror", list="L", max_delete_fraction=0.5
    )


def test_a_choice_column_audience_takes_labels_and_mirrors(connection: Connection, store: StateStore) -> None:
    """A choice membership column: members get ``value``, departed members ``out_value``, both given as labels."""
    seed(connection, 4)
    preferred = connection.metadata.choice_value("account", "accountcategorycode", "Preferred Customer")
    standard = connection.metadata.choice_value("account", "accountcategorycode", "Standard")
    choice = AudienceSpec(
        "mirror",
        column="accountcategorycode",
        value="Preferred Customer",
        out_value="Standard",
        max_delete_fraction=0.5,
    )

    def codes() -> dict[str, Any]:
        rows = connection.client.get_json("accounts?$select=accountnumber,accountcategorycode")["value"]
        return {r["accountnumber"]: r["accountcategorycode"] for r in rows}

    first = run_audience(connection, JOB, AccountMapper(), source(people(3)), store, choice)
    assert first.counts == {"added": 3}
    assert codes() == {"A-000": preferred, "A-001": preferred, "A-002": preferred, "A-003": None}
    second = run_audience(connection, JOB, AccountMapper(), source(people(2)), store, choice)
    assert second.counts == {"unchanged": 2, "removed": 1}
    assert codes() == {"A-000": preferred, "A-001": preferred, "A-002": standard, "A-003": None}
