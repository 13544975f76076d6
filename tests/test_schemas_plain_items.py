"""The fast check of ``write_entities`` records (:func:`connector.schemas.plain_record`) against jsonschema itself:
it may accept only what the schema accepts, it must accept the everyday record shapes (else it saves nothing), and a
refusal's messages and paths are jsonschema's whether or not other records took the fast path."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from connector.schemas import PLAIN_ITEMS, SCHEMA_BASE, builtin_store, plain_record

WRITE = "actions/write_entities.input.json"
GUID = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
LOOKUPS: list[Any] = [
    {"table": "account", "id": GUID},
    {"table": "account", "key": {"accountnumber": "A-1"}},
    {"table": "account"},
    {"table": "account", "id": GUID, "key": {"a": 1}},
    {"table": "1account", "id": GUID},
    {"table": "account", "id": GUID.upper()},
    {"table": "account", "id": "{" + GUID + "}"},
    {"table": "account", "id": None},
    {"table": "account", "key": {}},
    {"table": "account", "id": GUID, "other": 1},
    {"id": GUID, "key": {"a": 1}},
]
VALUES: list[Any] = ["text", "", 0, -1.5, 10**30, True, False, None, float("nan"), [], {}, ("t",), *LOOKUPS]
KEYS: list[Any] = [
    {"accountnumber": "A-1"},
    {"a": 1, "b": True, "c": 2.5},
    {f"k{i}": i for i in range(16)},
    {f"k{i}": i for i in range(17)},
    {},
    {"a": None},
    {"a": [1]},
    {"1a": "x"},
    {"a\n": "x"},
    {"a" * 128: "x"},
    {"a" * 129: "x"},
    "A-1",
]
IDS: list[Any] = [GUID, GUID.upper(), GUID[:-1], GUID + "0", "{" + GUID + "}", GUID.replace("-", ""), None, 5]
FIELD_NAMES = ["name", "_x", "new_balance", "1name", "na-me", "", "n" * 128, "n" * 129, "name\n"]


def samples() -> list[Any]:
    out: list[Any] = [None, [], "record", {}, {"fields": None}, {"fields": []}, {"fields": {}, "extra": 1}]
    out += [{"fields": {name: "x"}} for name in FIELD_NAMES]
    out += [{"fields": {"name": value}} for value in VALUES]
    out += [{"fields": {"name": "x"}, "key": key} for key in KEYS]
    out += [{"fields": {"name": "x"}, "id": row} for row in IDS]
    out += [{"id": GUID, "key": {"a": 1}, "fields": {"name": "x"}}, {"id": GUID}, {"key": {"a": 1}}]
    out += [{"fields": dict(itertools.islice(((f"c{i}", v) for i, v in enumerate(VALUES)), n))} for n in (3, 9)]
    return out


def valid(record: Any) -> bool:
    return not builtin_store().validate({"table": "account", "mode": "upsert", "records": [record]}, WRITE)


def slow_valid(record: Any) -> bool:
    """jsonschema alone, the fast path switched off."""
    validator = builtin_store().validator(WRITE)
    return validator.is_valid({"table": "account", "mode": "upsert", "records": [record]})


@pytest.mark.parametrize("record", samples(), ids=repr)
def test_the_fast_check_accepts_only_what_jsonschema_accepts(record: Any) -> None:
    if plain_record(record):
        assert slow_valid(record)
    assert valid(record) == slow_valid(record)


def test_everyday_records_take_the_fast_path() -> None:
    everyday = [
        {"fields": {"name": "Contoso", "revenue": 10.5, "numberofemployees": 3, "donotemail": True, "fax": None}},
        {"key": {"accountnumber": "A-1"}, "fields": {"name": "x", "primarycontactid": LOOKUPS[1]}},
        {"id": GUID, "fields": {"parentaccountid": LOOKUPS[0], "name": "y"}},
    ]
    assert all(plain_record(r) for r in everyday)
    assert PLAIN_ITEMS[SCHEMA_BASE + WRITE][1] is plain_record


def test_a_refusal_reads_the_same_among_fast_records() -> None:
    """One bad record among 50 plain ones: jsonschema judges the whole input, the problem names its index."""
    good = [{"fields": {"name": f"n{i}"}} for i in range(50)]
    bad = {"fields": {"name": "x"}, "id": "not-a-guid"}
    inputs = {"table": "account", "mode": "upsert", "records": [*good[:7], bad, *good[7:]], "chunk_size": 0}
    problems = builtin_store().validate(inputs, WRITE)
    alone = builtin_store().validate({**inputs, "records": [*([{"fields": {}}] * 7), bad]}, WRITE)
    assert [p.path for p in problems] == ["$.chunk_size", "$.records[7].id"]
    assert [(p.path, p.message) for p in problems] == [(p.path, p.message) for p in alone]


def test_top_level_problems_are_still_found_when_every_record_is_plain() -> None:
    inputs = {"table": "bad table", "mode": "upsert", "records": [{"fields": {"name": "x"}}], "extra": 1}
    assert [p.path for p in builtin_store().validate(inputs, WRITE)] == ["$", "$.table"]


@pytest.mark.parametrize("mode", ["create", "update", "upsert", "delete", "deactivate"])
@pytest.mark.parametrize(
    "record", [{"id": GUID, "fields": {"name": "x"}}, {"id": GUID}, {"key": {"accountnumber": "A-1"}}], ids=repr
)
def test_the_fast_path_agrees_with_jsonschema_in_every_mode(mode: str, record: dict[str, Any]) -> None:
    """A removal's records carry no fields: the fast check speaks only for the modes that write fields."""
    inputs = {"table": "account", "mode": mode, "records": [record]}
    slow = builtin_store().validator(WRITE).is_valid(inputs)
    assert (builtin_store().validate(inputs, WRITE) == []) == slow
