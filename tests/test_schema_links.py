"""``x-d365-options`` links: the built-in ones resolve, and each way a link can break is reported by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.contract import contract_problems
from connector.runtime import Runtime
from connector.schema_links import link_problems, links
from connector.schemas import SchemaStore, data_root
from tests.framework.packs import action_entry, io_schemas, make_pack

SOURCES = {
    "tables": "data_sources/tables.params.json",
    "columns": "data_sources/columns.params.json",
    "fields_schema": "data_sources/fields_schema.params.json",
}
IMPL = """
@hookimpl
def one(inputs, connection):
    return {"echo": inputs["word"]}
"""


def problems_of(link: dict[str, Any], *, nested: bool = False) -> list[str]:
    """The problems of one link placed on ``column``, a sibling of ``table`` (or, nested, on ``rows[].column``)."""
    store = SchemaStore()
    store.add_folder(data_root() / "schemas")
    table = {"type": "string", "x-d365-options": {"source": "tables"}}
    sibling = {"table": table, "column": {"type": "string", "x-d365-options": link}}
    properties: dict[str, Any] = {"table": table}
    if nested:
        properties["rows"] = {"type": "array", "items": {"type": "object", "properties": {"column": sibling["column"]}}}
    else:
        properties.update(sibling)
    sid = "https://d365-connector.dev/schemas/test/linked.json"
    store.add(sid, {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": sid, "properties": properties})
    return link_problems(store, sid, SOURCES)


def test_every_builtin_link_resolves_and_the_linked_inputs_are_linked() -> None:
    runtime = Runtime(load_entrypoints=False)
    assert contract_problems(runtime) == {}
    linked = {
        (info.id, path): link.get("source")
        for info in runtime.manifest.actions.values()
        for path, link, _ in links(runtime.store.bundled(info.input_schema))
    }
    assert linked[("create_entity", "$.fields")] == "fields_schema"
    assert linked[("write_entities", "$.records[].key")] == "key_schema"
    assert linked[("query_entities", "$.where[].column")] == "columns"
    assert linked[("associate_entities", "$.related.id")] == "records"
    assert {source for (action, path), source in linked.items() if path == "$.table"} == {"tables"}
    assert linked[("get_entity", "$.expand[].select")] is None  # {"none": why}: the navigation's table is not an input


def test_a_good_link_has_no_problem_and_pointers_climb_from_the_instance() -> None:
    assert problems_of({"source": "columns", "params": {"table": "1/table"}}) == []
    assert problems_of({"source": "columns", "params": {"table": "3/table"}}, nested=True) == []
    assert problems_of({"source": "fields_schema", "params": {"table": "1/table"}, "fixed": {"mode": "update"}}) == []


@pytest.mark.parametrize(
    ("link", "nested", "expected"),
    [
        ({"source": "nope"}, False, "names data source 'nope', which the manifest lacks"),
        ({"source": "columns"}, False, "does not give parameter 'table' of 'columns'"),
        ({"source": "tables", "fixed": {"colour": 1}}, False, "gives 'colour', which 'tables' does not take"),
        ({"source": "columns", "params": {"table": "1/tabel"}}, False, "names 'tabel', which the schema does not"),
        ({"source": "columns", "params": {"table": "2/table"}}, False, "climbs 2 levels, above the input"),
        ({"source": "columns", "params": {"table": "1/table"}}, True, "names 'table', which the schema does not"),
        ({"source": "columns", "params": {"table": "table"}}, False, "is not a link"),
        (
            {"source": "fields_schema", "params": {"table": "1/table"}, "fixed": {"mode": "upsert"}},
            False,
            "fixes 'mode' to 'upsert', which 'fields_schema' refuses",
        ),
    ],
)
def test_a_broken_link_is_reported_with_its_input(link: dict[str, Any], nested: bool, expected: str) -> None:
    found = problems_of(link, nested=nested)
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith("$.rows[].column: x-d365-options" if nested else "$.column: x-d365-options")


def test_an_input_that_names_a_table_or_columns_must_be_linked_or_say_why_not() -> None:
    assert problems_of({"none": "free text"}) == []
    assert problems_of({"none": "free text", "params": {"table": "1/table"}})[0].startswith(
        "$.column: x-d365-options is not a link"
    )
    unlinked_table = {"type": "object", "properties": {"rows": {"type": "array", "items": {"properties": {}}}}}
    unlinked_table["properties"]["rows"]["items"]["properties"]["select"] = {"type": "array"}
    store = SchemaStore()
    store.add_folder(data_root() / "schemas")
    sid = "https://d365-connector.dev/schemas/test/unlinked.json"
    store.add(sid, {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": sid, **unlinked_table})
    assert link_problems(store, sid, SOURCES) == [
        "$.rows[].select: no x-d365-options (link it to a data source, or say why not with none)"
    ]


def test_a_pack_with_a_broken_link_is_at_fault(tmp_path: Path) -> None:
    schemas = io_schemas("p", "one")
    schemas["actions/one.input.json"]["properties"]["word"]["x-d365-options"] = {"source": "colums"}
    pack = make_pack(
        tmp_path,
        name="p",
        code=IMPL,
        spec_ids=("one",),
        fragment={"pack": "p", "actions": [action_entry("one")]},
        schemas=schemas,
    )
    runtime = Runtime(load_entrypoints=False, extra_packs=[pack], check=False)
    found = contract_problems(runtime)
    problem = "action 'one' input $.word: x-d365-options names data source 'colums', which the manifest lacks"
    assert found == {"p": [problem]}
