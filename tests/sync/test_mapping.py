"""The mapper against the emulator's metadata: mapping-level problems, every coercion rule and its refusal, lookups,
option labels, null handling, create-only columns, match keys, and hashes that change only with what is sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.policy import OperatorPolicy
from connector.runtime import Runtime
from connector.sync.definition import SyncDefinition, load_definition
from connector.sync.mapping import MappedRow, Mapper, row_hash
from dataverse_emulator.testing import EmulatorHandle, running_emulator

GUID = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
TYPED = "new_typed"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    """One emulator for the module: account with an Active key on accountnumber, and a table of every column type."""
    with running_emulator() as handle:
        runtime = Runtime(load_entrypoints=False)
        conn = Connection.from_config(handle.connection_config())
        key = {"table": "account", "schema_name": "new_accountnumber_key", "columns": ["accountnumber"]}
        runtime.run_action("create_alternate_key", key, conn)
        handle.admin.seed_metadata([{"schema_name": "new_Typed", "display_name": "Typed", "columns": []}])
        for attribute in (
            {"type": "string", "schema_name": "new_Code", "max_length": 10},
            {"type": "integer", "schema_name": "new_Count", "min_value": 0, "max_value": 100},
            {"type": "decimal", "schema_name": "new_Rate", "precision": 2},
            {"type": "money", "schema_name": "new_Price", "precision": 2},
            {"type": "boolean", "schema_name": "new_Flag"},
            {"type": "datetime", "schema_name": "new_When"},
            {"type": "datetime", "schema_name": "new_Day", "date_only": True},
        ):
            attribute = {"label": attribute["schema_name"], "required": "none", **attribute}
            runtime.run_action("create_attribute", {"table": TYPED, "attribute": attribute}, conn)
        handle.admin.advance_clock(3600)  # the key's index is built: Active
        conn.close()
        yield handle


@pytest.fixture
def conn(emulator: EmulatorHandle) -> Iterator[Connection]:
    connection = Connection.from_config(emulator.connection_config())
    try:
        yield connection
    finally:
        connection.close()


def definition(mapping: list[dict[str, Any]], **changes: Any) -> SyncDefinition:
    data = {"name": "t", "source": {"stdin": True}, "target": "account", "match": {"key": "accountnumber"}}
    data |= {"mapping": mapping, **changes}
    return load_definition(data, policy=OperatorPolicy(preset="local"), base_dir=Path("/tmp"))


ACCOUNT = [{"source": "number", "target": "accountnumber"}, {"source": "company", "target": "name"}]


def one(conn: Connection, mapping: list[dict[str, Any]], row: dict[str, Any], **changes: Any) -> MappedRow:
    mapper = Mapper(definition(mapping, **changes), conn)
    assert mapper.problems() == []
    [mapped] = mapper.map_rows([row], 0)
    return mapped


def typed(conn: Connection, column: str, value: Any) -> MappedRow:
    """One value mapped into a column of the typed table (matched by id, updated only: no required columns)."""
    mapping = [{"source": "v", "target": column}]
    return one(conn, mapping, {"id": GUID, "v": value}, target=TYPED, match={"id": "id"}, mode="update")


# -- mapping-level problems -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"target": "nosuch"}, "$.target", "no table"),
        ({"mapping": [*ACCOUNT, {"source": "x", "target": "nmae"}]}, "$.mapping[2].target", "did you mean name"),
        ({"mapping": [*ACCOUNT, {"source": "x", "target": "createdon"}]}, "$.mapping[2].target", "set by Dataverse"),
        ({"match": {"key": "name"}}, "$.match.key", "not an alternate key"),
        ({"match": {"key": "accountnumber"}, "mapping": ACCOUNT[1:]}, "$.match.key", "not a mapping target"),
        ({"mapping": ACCOUNT[:1]}, "$.mapping", "'name' is required on 'account' and not mapped"),
        (
            {"mapping": [*ACCOUNT, {"target": "parentaccountid", "lookup": {"table": "contact", "id": "p"}}]},
            "$.mapping[2].lookup.table",
            "refers to account",
        ),
        (
            {
                "mapping": [
                    *ACCOUNT,
                    {"target": "parentaccountid", "lookup": {"table": "account", "key": {"name": "p"}}},
                ]
            },
            "$.mapping[2].lookup.key",
            "no alternate key of 'account' is made of name",
        ),
        ({"mapping": [*ACCOUNT, {"target": "parentaccountid", "source": "p"}]}, "$.mapping[2].lookup", "is a lookup"),
        (
            {"mapping": [*ACCOUNT, {"target": "name2", "lookup": {"table": "account", "id": "p"}}]},
            "$.mapping[2].target",
            "unknown column",
        ),
        ({"mapping": [*ACCOUNT, {"target": "revenue", "constant": "lots"}]}, "$.mapping[2].constant", "not a number"),
        ({"match": {"column": "emailaddress1"}}, "$.match.source", "give source"),
        ({"match": {"column": "emailaddress1", "source": "e", "stamp": "name"}}, "$.match.stamp", "alternate key"),
    ],
)
def test_mapping_problems_are_found_before_any_row(
    conn: Connection, changes: dict[str, Any], path: str, words: str
) -> None:
    mapper = Mapper(definition(changes.pop("mapping", ACCOUNT), **changes), conn)
    assert any(p.path == path and words in p.message for p in mapper.problems()), mapper.problems()
    with pytest.raises(Exception, match="invalid input"):
        mapper.map_rows([{"number": "A-1", "company": "x"}], 0)


def test_update_mode_needs_no_required_columns_and_refuses_create_only(conn: Connection) -> None:
    assert Mapper(definition(ACCOUNT[:1], mode="update"), conn).problems() == []
    mapper = Mapper(
        definition([*ACCOUNT, {"source": "o", "target": "description", "create_only": True}], mode="update"), conn
    )
    assert [p.path for p in mapper.problems()] == ["$.mapping[2].create_only"]


# -- rows: coercion per column type -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value", "sent"),
    [
        ("new_code", "  padded ", "  padded "),
        ("new_code", 42, "42"),
        ("new_code", Decimal("1.50"), "1.50"),
        ("new_code", dt.date(2026, 1, 31), "2026-01-31"),
        ("new_count", "042", 42),
        ("new_count", 7.0, 7),
        ("new_count", Decimal("100"), 100),
        ("new_rate", "1.25", 1.25),
        ("new_rate", Decimal("3.10"), 3.1),
        ("new_rate", 5, 5),
        ("new_price", 0.1, 0.1),
        ("new_flag", "Yes", True),
        ("new_flag", " false ", False),
        ("new_flag", 1, True),
        ("new_flag", "0", False),
        ("new_day", "2026-02-28", "2026-02-28"),
        ("new_day", dt.date(2026, 2, 28), "2026-02-28"),
        ("new_day", dt.datetime(2026, 2, 28), "2026-02-28"),
        ("new_when", "2026-02-28T10:30:00+02:00", "2026-02-28T08:30:00Z"),
        ("new_when", "2026-02-28 10:30", "2026-02-28T10:30:00Z"),
        (
            "new_when",
            dt.datetime(2026, 2, 28, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            "2026-03-01T04:00:00Z",
        ),
        ("new_when", dt.date(2026, 2, 28), "2026-02-28T00:00:00Z"),
    ],
)
def test_values_are_coerced_by_column_type(conn: Connection, column: str, value: Any, sent: Any) -> None:
    mapped = typed(conn, column, value)
    assert mapped.problems == []
    assert mapped.fields == {column: sent} and type(mapped.fields[column]) is type(sent)


@pytest.mark.parametrize(
    ("column", "value", "words"),
    [
        ("new_code", "eleven char", "at most 10 characters"),
        ("new_code", True, "text column"),
        ("new_count", "4.5", "not a whole number"),
        ("new_count", 4.5, "has a fraction"),
        ("new_count", "101", "accepts 0 to 100"),
        ("new_count", -1, "accepts 0 to 100"),
        ("new_count", True, "yes/no value"),
        ("new_rate", "1.255", "keeps 2 decimal places"),
        ("new_rate", "NaN", "not a finite number"),
        ("new_rate", "1,5", "not a number"),
        ("new_price", Decimal("0.001"), "keeps 2 decimal places"),
        ("new_flag", "maybe", "true/false, yes/no or 1/0"),
        ("new_flag", 2, "true/false, yes/no or 1/0"),
        ("new_day", "2026-02-30", "date-only column"),
        ("new_day", dt.datetime(2026, 2, 28, 10, 0), "has a time of day"),
        ("new_when", "yesterday", "date-time column"),
    ],
)
def test_a_value_that_cannot_be_sent_is_a_problem_of_its_row(
    conn: Connection, column: str, value: Any, words: str
) -> None:
    mapped = typed(conn, column, value)
    assert [p.path for p in mapped.problems] == [f"$[0].{column}"]
    assert words in mapped.problems[0].message and column not in mapped.fields


def test_option_labels_match_case_insensitively_and_values_pass(conn: Connection) -> None:
    mapping = [*ACCOUNT, {"source": "industry", "target": "industrycode"}]
    row = {"number": "A-1", "company": "C"}
    assert one(conn, mapping, {**row, "industry": " accounting "}).fields["industrycode"] == 1
    assert one(conn, mapping, {**row, "industry": "3"}).fields["industrycode"] == 3
    assert one(conn, mapping, {**row, "industry": 2}).fields["industrycode"] == 2
    assert "999 is not an option" in one(conn, mapping, {**row, "industry": 999}).problems[0].message
    bad = one(conn, mapping, {**row, "industry": "Bakery"})
    assert "unknown label 'Bakery'" in bad.problems[0].message and "Accounting" in bad.problems[0].message


def test_lookups_by_key_and_by_id_in_the_form_write_entities_takes(conn: Connection) -> None:
    mapping = [
        *ACCOUNT,
        {"target": "parentaccountid", "lookup": {"table": "account", "key": {"accountnumber": "parent"}}},
        {"target": "primarycontactid", "lookup": {"table": "contact", "id": "contact"}, "null": "clear"},
    ]
    mapped = one(conn, mapping, {"number": "A-2", "company": "C", "parent": 17, "contact": GUID.upper()})
    assert mapped.fields["parentaccountid"] == {"table": "account", "key": {"accountnumber": "17"}}
    assert mapped.fields["primarycontactid"] == {"table": "contact", "id": GUID}
    cleared = one(conn, mapping, {"number": "A-2", "company": "C", "parent": None, "contact": None})
    assert "parentaccountid" not in cleared.fields and cleared.fields["primarycontactid"] is None
    bad = one(conn, mapping, {"number": "A-2", "company": "C", "parent": "P", "contact": "not-a-guid"})
    assert [p.path for p in bad.problems] == ["$[0].primarycontactid"]


def test_null_keep_omits_clear_sends_null_constants_and_create_only(conn: Connection) -> None:
    mapping = [
        *ACCOUNT,
        {"source": "phone", "target": "telephone1"},
        {"source": "fax", "target": "fax", "null": "clear"},
        {"target": "description", "constant": "synced"},
        {"target": "websiteurl", "constant": None},
        {"source": "origin", "target": "address1_city", "create_only": True},
    ]
    mapped = one(conn, mapping, {"number": "A-1", "company": "C", "phone": None, "fax": None, "origin": "Oslo"})
    assert mapped.fields == {
        "accountnumber": "A-1",
        "name": "C",
        "fax": None,
        "description": "synced",
        "websiteurl": None,
    }
    assert mapped.create_only == {"address1_city": "Oslo"} and mapped.problems == []


def test_a_missing_source_column_names_the_columns_the_source_has(conn: Connection) -> None:
    mapped = one(conn, ACCOUNT, {"number": "A-1", "compny": "C"})
    assert (
        mapped.problems[0].path == "$[0].name"
        and "no column 'company'; its columns: compny, number" in mapped.problems[0].message
    )


# -- matching ---------------------------------------------------------------------------------------------------------
def test_match_by_key_builds_the_key_from_the_mapped_columns(conn: Connection) -> None:
    mapper = Mapper(definition(ACCOUNT), conn)
    rows = mapper.map_rows([{"number": 1001, "company": "C"}, {"number": None, "company": "D"}], start_index=40)
    assert (rows[0].source_index, rows[0].key, rows[0].row_id) == (40, {"accountnumber": "1001"}, None)
    assert rows[0].match_key == '{"accountnumber":"1001"}'
    assert [p.path for p in rows[1].problems] == ["$[41].accountnumber"] and "cannot be matched" in rows[1].problems[
        0
    ].message
    by_name = Mapper(definition(ACCOUNT, match={"key": "new_AccountNumber_Key"}), conn)
    assert by_name.problems() == [] and by_name.key_columns == ("accountnumber",)


def test_match_by_id_and_by_column(conn: Connection) -> None:
    mapper = Mapper(definition(ACCOUNT, match={"id": "crm_id", "id_insert": True}), conn)
    [ok, bad] = mapper.map_rows(
        [{"crm_id": GUID.upper(), **{"number": "A", "company": "C"}}, {"crm_id": "x", "number": "B", "company": "D"}], 0
    )
    assert (ok.row_id, ok.match_key, ok.key) == (GUID, GUID, None)
    assert bad.problems[0].path == "$[1].crm_id"
    by_email = [*ACCOUNT, {"source": "email", "target": "emailaddress1"}]
    mapped = one(
        conn,
        by_email,
        {"number": "A", "company": "C", "email": "a@example.com"},
        match={"column": "emailaddress1", "stamp": "accountnumber"},
    )
    assert mapped.key == {"emailaddress1": "a@example.com"} and mapped.fields["accountnumber"] == "A"
    sourced = one(
        conn,
        ACCOUNT,
        {"number": "A", "company": "C", "mail": "b@example.com"},
        match={"column": "emailaddress1", "source": "mail"},
    )
    assert sourced.key == {"emailaddress1": "b@example.com"}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"match": {"id": "crm_id", "id_insert": True}},
        {"match": {"column": "emailaddress1", "stamp": "accountnumber"}},
        {"match": {"column": "emailaddress1", "source": "mail"}},
    ],
    ids=["key", "id", "column", "column-source"],
)
def test_match_keys_alone_equal_the_mapped_rows_match_keys(conn: Connection, changes: dict[str, Any]) -> None:
    """What a partition worker computes for every source row, without mapping the other columns."""
    mapping = [
        *ACCOUNT,
        {"source": "email", "target": "emailaddress1"},
        {"source": "size", "target": "numberofemployees"},
    ]
    rows = [
        {"number": 7, "company": "C", "email": "a@example.com", "mail": "m@example.com", "crm_id": GUID, "size": 5},
        {"number": None, "company": "D", "email": None, "mail": None, "crm_id": "x", "size": "many"},
        {"number": "B-2", "company": "E", "email": "b@example.com", "mail": "n@example.com", "crm_id": GUID.upper(),
         "size": None},
    ]  # fmt: skip
    mapper = Mapper(definition(mapping, **changes), conn)
    assert mapper.problems() == []
    assert mapper.match_keys(rows, 10) == [m.match_key for m in mapper.map_rows(rows, 10)]
    assert len(set(mapper.match_keys(rows, 0))) >= 2


# -- identity ---------------------------------------------------------------------------------------------------------
def test_fingerprint_and_row_hash_change_only_with_what_is_sent(conn: Connection) -> None:
    base = Mapper(definition(ACCOUNT), conn)
    same = Mapper(definition(ACCOUNT), conn)
    changed = Mapper(definition([*ACCOUNT, {"target": "description", "constant": "x"}]), conn)
    assert base.fingerprint() == same.fingerprint() != changed.fingerprint()
    row = {"number": "A-1", "company": "C"}
    first, again = base.map_rows([row], 0)[0], same.map_rows([dict(reversed(list(row.items())))], 5)[0]
    assert row_hash(first, base.fingerprint()) == row_hash(again, same.fingerprint())
    renamed = base.map_rows([{**row, "company": "D"}], 0)[0]
    assert row_hash(renamed, base.fingerprint()) != row_hash(first, base.fingerprint())
    assert row_hash(first, changed.fingerprint()) != row_hash(first, base.fingerprint())


def test_metadata_is_read_once_per_mapper(conn: Connection, emulator: EmulatorHandle) -> None:
    mapper = Mapper(definition([*ACCOUNT, {"source": "n", "target": "numberofemployees"}]), conn)
    emulator.admin.clear_requests()
    mapper.map_rows([{"number": str(i), "company": "C", "n": i} for i in range(50)], 0)
    assert [r for r in emulator.admin.requests() if "/api/data/" in r.get("path", "")] == []


def _choice_column(typ: str) -> Any:
    from connector.metadata import Attribute, TableMetadata
    from connector.sync.coerce import Column

    meta = TableMetadata("t", "ts", "tid", None, {"new_c": Attribute("new_c", typ)}, (), {}, {}, {})
    options = [("Red", 1), ("Green", 2), ("Blue", 3), ("Teal", 4), ("TEAL", 5)]
    return Column(meta, "new_c", options=options, multi=typ == "Virtual")


def test_multi_select_takes_lists_or_separated_labels_and_sends_comma_separated_values() -> None:
    """The emulator has no multi-select column: the column's facts are given as the mapper reads them."""
    from connector.sync.coerce import CoercionError, coerce

    column, unused = _choice_column("Virtual"), None  # choice coercion reads no metadata of its own
    assert coerce(unused, column, "red; green,,RED", "$") == "1,2"  # type: ignore[arg-type]
    assert coerce(unused, column, ["3", "Blue", 1], "$") == "3,1"  # type: ignore[arg-type]
    assert coerce(unused, column, "", "$") == ""  # type: ignore[arg-type]
    with pytest.raises(CoercionError, match="unknown label 'mauve' for 'new_c'; valid labels: Red, Green, Blue"):
        coerce(unused, column, "red,mauve", "$")  # type: ignore[arg-type]
    with pytest.raises(CoercionError, match="give a list"):
        coerce(unused, column, 7, "$")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("teal", "names options [4, 5]: give the value"),
        ("9", "9 is not an option"),
        (2.5, "not an option"),
        (True, "not an option"),
    ],
)
def test_a_choice_refuses_ambiguous_labels_and_values_that_are_not_options(value: Any, words: str) -> None:
    from connector.sync.coerce import CoercionError

    column = _choice_column("Picklist")
    assert (column.option(" GREEN "), column.option(5), column.option("4"), column.option(3.0)) == (2, 5, 4, 3)
    with pytest.raises(CoercionError, match=__import__("re").escape(words)):
        column.option(value)


def test_mapped_records_are_what_write_entities_takes(conn: Connection, emulator: EmulatorHandle) -> None:
    """The mapper's output goes to write_entities unchanged: upsert by key, a lookup by alternate key, a choice label,
    money, a whole number and a yes/no, then read back as the source said."""
    mapping = [
        *ACCOUNT,
        {
            "source": "parent",
            "target": "parentaccountid",
            "lookup": {"table": "account", "key": {"accountnumber": "parent"}},
        },
        {"source": "industry", "target": "industrycode"},
        {"source": "revenue", "target": "revenue"},
        {"source": "staff", "target": "numberofemployees"},
        {"source": "hold", "target": "creditonhold"},
    ]
    mapping[2].pop("source")
    mapper = Mapper(definition(mapping), conn)
    assert mapper.problems() == []
    rows = [
        {
            "number": "P-1",
            "company": "Parent",
            "parent": None,
            "industry": "accounting",
            "revenue": "10.50",
            "staff": "7",
            "hold": "no",
        },
        {"number": "C-1", "company": "Child", "parent": "P-1", "industry": 3, "revenue": 2, "staff": 1, "hold": "YES"},
    ]
    runtime = Runtime(load_entrypoints=False)
    for mapped in mapper.map_rows(rows, 0):
        assert mapped.problems == []
        record = {"key": mapped.key, "fields": {**mapped.fields, **mapped.create_only}}
        out = runtime.run_action("write_entities", {"table": "account", "mode": "upsert", "records": [record]}, conn)
        assert out["results"][0]["status"] == "created", out
    found = runtime.run_action(
        "query_entities",
        {
            "table": "account",
            "select": [
                "accountnumber",
                "industrycode",
                "revenue",
                "numberofemployees",
                "creditonhold",
                "parentaccountid",
            ],
            "filter": "accountnumber eq 'C-1'",
        },
        conn,
    )
    [child] = found["records"]
    assert (child["industrycode"], child["revenue"], child["numberofemployees"], child["creditonhold"]) == (
        3,
        2,
        1,
        True,
    )
    assert child["_parentaccountid_value"], child
