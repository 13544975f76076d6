"""What the bulk messages' shortcuts must not change (dataverse_emulator/bulk.py, storage.py): UpsertMultiple's
alternate keys looked up in one statement, owners' business units read once per request, row versions counted in
memory inside a transaction, key predicates of one quoted string parsed without the lexer, and the second's text kept.
Each test pins an answer the one-target-at-a-time path gave: rows and system columns, versions, errors and their
order."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataverse_emulator import odata
from dataverse_emulator.context import fmt_dt_now
from dataverse_emulator.model import build_tables
from dataverse_emulator.odata_ast import ODataSyntaxError
from dataverse_emulator.query import fmt_dt
from dataverse_emulator.storage import Store

from .conftest import FakeClock, created_id, error_of
from .test_batch import batch_body, op, send
from .test_bulk import active_key, names, targets

UPSERT = "accounts/Microsoft.Dynamics.CRM.UpsertMultiple"
CREATE = "accounts/Microsoft.Dynamics.CRM.CreateMultiple"
SYSTEM = (
    "createdon",
    "modifiedon",
    "_createdby_value",
    "_modifiedby_value",
    "_ownerid_value",
    "_owninguser_value",
    "_owningteam_value",
    "_owningbusinessunit_value",
    "statecode",
    "statuscode",
)


def by_number(api: httpx.Client, prefix: str) -> dict[str, dict[str, Any]]:
    r = api.get("accounts", params={"$filter": f"startswith(accountnumber,'{prefix}')"})
    assert r.status_code == 200, r.text
    return {row["accountnumber"]: row for row in r.json()["value"]}


def by_name(api: httpx.Client, prefix: str) -> dict[str, dict[str, Any]]:
    r = api.get("accounts", params={"$filter": f"startswith(name,'{prefix}')"})
    assert r.status_code == 200, r.text
    return {row["name"]: row for row in r.json()["value"]}


def test_upsert_multiple_mixing_new_and_existing_keys_writes_what_single_upserts_write(
    api: httpx.Client, clock: FakeClock
) -> None:
    active_key(api, clock)
    m1 = created_id(api.post("accounts", json={"name": "mx-1", "accountnumber": "MX1"}))
    m2 = created_id(api.post("accounts", json={"name": "mx-2", "accountnumber": "MX2"}))
    before = by_number(api, "MX")
    clock.advance(61)
    r = api.post(
        UPSERT,
        json=targets(
            {"@odata.id": "accounts(accountnumber='mx1')", "name": "mx-1b"},  # keys compare case-insensitively
            {"@odata.id": "accounts(accountnumber='MX3')", "name": "mx-3"},
            {"accountid": m2, "name": "mx-2b"},
            {"@odata.id": "accounts(accountnumber='MX4')", "name": "mx-4"},
        ),
    )
    assert r.status_code == 204, r.text
    reference = api.patch("accounts(accountnumber='MX5')", json={"name": "mx-5"})  # one single upsert that creates
    assert reference.status_code == 204, reference.text
    after = by_number(api, "MX")
    assert sorted(after) == ["MX1", "MX2", "MX3", "MX4", "MX5"]
    assert (after["MX1"]["accountid"], after["MX2"]["accountid"]) == (m1, m2)
    assert [after[k]["name"] for k in sorted(after)] == ["mx-1b", "mx-2b", "mx-3", "mx-4", "mx-5"]
    for k in ("MX1", "MX2"):  # updated: created as before, modified now
        assert after[k]["createdon"] == before[k]["createdon"]
        assert after[k]["modifiedon"] == after["MX5"]["modifiedon"] != before[k]["modifiedon"]
    for k in ("MX3", "MX4"):  # created: the system columns the single upsert wrote
        assert {c: after[k][c] for c in SYSTEM} == {c: after["MX5"][c] for c in SYSTEM}
        assert after[k]["_owningbusinessunit_value"] is not None
    # one row version per written row, in target order, right after the last one taken
    versions = [int(after[k]["versionnumber"]) for k in ("MX1", "MX3", "MX2", "MX4", "MX5")]
    first = max(int(row["versionnumber"]) for row in before.values()) + 1
    assert versions == list(range(first, first + 5))
    assert [after[k]["@odata.etag"] for k in ("MX1", "MX5")] == [f'W/"{first}"', f'W/"{first + 4}"']


def test_create_multiple_owned_by_a_team_and_a_user_derives_the_owner_columns_as_single_creates_do(
    api: httpx.Client,
) -> None:
    root = api.get("businessunits", params={"$select": "businessunitid"}).json()["value"][0]["businessunitid"]
    parent = {"parentbusinessunitid@odata.bind": f"/businessunits({root})"}
    unit = created_id(api.post("businessunits", json={"name": "ow-unit", **parent}))
    in_unit = {"businessunitid@odata.bind": f"/businessunits({unit})"}
    team = created_id(api.post("teams", json={"name": "ow-team", **in_unit}))
    owned = {"ownerid@odata.bind": f"/teams({team})"}
    r = api.post(CREATE, json=targets({"name": "ow-team", **owned}, {"name": "ow-user"}, {"name": "ow-team2", **owned}))
    assert r.status_code == 200, r.text
    for body in ({"name": "ow-single-team", **owned}, {"name": "ow-single-user"}):
        created_id(api.post("accounts", json=body))
    rows = by_name(api, "ow-")
    owner = ("_ownerid_value", "_owninguser_value", "_owningteam_value", "_owningbusinessunit_value")
    for bulk_name, single_name in (("ow-team", "ow-single-team"), ("ow-team2", "ow-single-team")):
        assert {c: rows[bulk_name][c] for c in owner} == {c: rows[single_name][c] for c in owner}
    assert {c: rows["ow-user"][c] for c in owner} == {c: rows["ow-single-user"][c] for c in owner}
    assert rows["ow-team"]["_owningteam_value"] == team
    assert rows["ow-team"]["_owningbusinessunit_value"] == unit  # the team's unit, not the caller's
    assert rows["ow-user"]["_owningbusinessunit_value"] == root


def test_a_refused_request_and_a_rolled_back_batch_operation_take_no_row_version(
    api: httpx.Client, clock: FakeClock
) -> None:
    active_key(api, clock)
    created_id(api.post("accounts", json={"name": "rv-a", "accountnumber": "RV1"}))
    # the second target fails on the key's uniqueness, after it has taken a version: the request rolls back whole
    refused = api.post(CREATE, json=targets({"name": "rv-x"}, {"name": "rv-y", "accountnumber": "RV1"}))
    assert error_of(refused)[:2] == (412, "0x80060892")
    created_id(api.post("accounts", json={"name": "rv-b"}))
    parts = [
        op("POST", "/api/data/v9.2/accounts", {"name": "rv-c"}),
        op("POST", "/api/data/v9.2/accounts", {"name": "rv-d", "accountnumber": "RV1"}),  # fails the same way
        op("POST", "/api/data/v9.2/accounts", {"name": "rv-e"}),
    ]
    assert send(api, batch_body(*parts), Prefer="odata.continue-on-error").status_code == 200
    rows = by_name(api, "rv-")
    assert sorted(rows) == ["rv-a", "rv-b", "rv-c", "rv-e"]
    first = int(rows["rv-a"]["versionnumber"])
    assert [int(rows[n]["versionnumber"]) for n in ("rv-b", "rv-c", "rv-e")] == [first + 1, first + 2, first + 3]


def test_upsert_multiple_reports_the_first_problem_in_target_order(api: httpx.Client, clock: FakeClock) -> None:
    active_key(api, clock)
    existing = created_id(api.post("accounts", json={"name": "dp-1", "accountnumber": "DP1"}))
    duplicate = (400, "0x80040203", "Duplicate key values were found in the Targets of UpsertMultiple.")
    # the same row by its key and by its id: a duplicate only once the key is looked up
    by_key_and_id = api.post(
        UPSERT,
        json=targets({"@odata.id": "accounts(accountnumber='DP1')", "name": "dp-x"}, {"accountid": existing}),
    )
    assert error_of(by_key_and_id) == duplicate
    bad_key = "accounts(name='dp')"
    dup_first = api.post(
        UPSERT,
        json=targets(
            {"@odata.id": "accounts(accountnumber='DP2')"},
            {"@odata.id": "accounts(accountnumber='dp2')"},
            {"@odata.id": bad_key},
        ),
    )
    assert error_of(dup_first) == duplicate
    bad_first = api.post(
        UPSERT,
        json=targets(
            {"@odata.id": "accounts(accountnumber='DP3')"},
            {"@odata.id": bad_key},
            {"@odata.id": "accounts(accountnumber='DP3')"},
        ),
    )
    assert error_of(bad_first) == error_of(api.patch(bad_key, json={"name": "dp-single"}))
    assert error_of(bad_first)[1] == "0x80060888"
    no_id_first = api.post(
        UPSERT,
        json=targets({"@odata.id": "accounts(accountnumber='DP4')"}, {"name": "dp-4"}, {"accountid": existing}),
    )
    assert error_of(no_id_first) == (400, "0x80040203", "Entity Id must be specified for Upsert")
    assert names(api, "dp-") == ["dp-1"]
    assert sorted(by_number(api, "DP")) == ["DP1"]


# -- the pieces, without a server ---------------------------------------------------------------------------------

KEY_TEXT = st.text(alphabet="ab_1'=,.() -%", max_size=14)


@settings(max_examples=300, deadline=None)
@given(st.one_of(KEY_TEXT, st.builds(lambda n, v: f"{n}='{v}'", st.sampled_from(["a", "true", "_x1"]), KEY_TEXT)))
def test_a_key_predicate_parses_the_same_with_and_without_the_lexer(text: str) -> None:
    def parsed() -> object:
        try:
            return odata.parse_key_predicate(text)
        except ODataSyntaxError as e:
            return ("error", e.message, e.position)

    fast = parsed()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(odata, "_SIMPLE_KEY_RE", re.compile(r"(?!)"))  # never matches: every text goes to the lexer
        assert parsed() == fast


def test_a_key_predicate_of_one_string_is_that_string() -> None:
    # a trailing space sends the text to the lexer, which skips it
    assert odata.parse_key_predicate("accountnumber='A-1 %'") == odata.parse_key_predicate("accountnumber='A-1 %' ")
    assert odata.parse_key_predicate("accountnumber=''")["accountnumber"].value == ""
    with pytest.raises(ODataSyntaxError):
        odata.parse_key_predicate("null='x'")


@pytest.mark.parametrize("fraction", [0.0, 0.0005, 0.001, 0.25, 0.998, 0.999, 0.9995, 0.9999996])
def test_now_is_formatted_as_the_instant_it_is(fraction: float) -> None:
    for second in (1_700_000_000, 1_700_000_001, -5):
        now = second + fraction
        assert fmt_dt_now(lambda now=now: now) == fmt_dt(dt.datetime.fromtimestamp(now, dt.UTC))
    assert fmt_dt_now(lambda: 1_700_000_000.5) == "2023-11-14T22:13:20Z"


def store() -> Store:
    tables, rels = build_tables()
    return Store(tables, rels, None, lambda: 0.0, 0)


def test_row_versions_counted_in_a_transaction_are_kept_by_its_commit_only() -> None:
    s = store()
    first = s.next_version()
    with s.transaction():
        inside = [s.next_version() for _ in range(3)]
        assert s.meta_get("version") == str(first + 3)  # a read sees the counter as it is
        assert s.next_version() == first + 4
    assert inside == [first + 1, first + 2, first + 3]
    assert s.meta_get("version") == str(first + 4)
    with pytest.raises(RuntimeError), s.transaction():
        s.next_version()
        raise RuntimeError("refused")
    assert s.next_version() == first + 5  # the rolled-back one was given again
    with s.transaction():
        s.next_version()
        s.savepoint("sp1")
        s.next_version()
        s.savepoint("sp2")
        s.next_version()
        s.release("sp2", rollback=True)
        assert s.next_version() == first + 8
        s.release("sp1", rollback=False)
        s.savepoint("sp3")
        s.next_version()
        s.release("sp3", rollback=True)
    assert s.meta_get("version") == str(first + 8)
    assert s.next_version() == first + 9


def test_insert_many_keeps_the_versions_its_rows_took() -> None:
    s = store()
    first = s.next_version()

    def rows() -> Any:
        for i in range(3):
            yield {"accountid": f"00000000-0000-0000-0000-00000000000{i}", "versionnumber": s.next_version()}

    assert s.insert_many("account", rows()) == 3
    assert s.next_version() == first + 4
