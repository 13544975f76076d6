"""Schema quality rules builders rely on: titles and descriptions everywhere, constrained URL values, secrets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from connector.schemas import builtin_store, load_json

STORE = builtin_store()
SCHEMA_IDS = [sid for sid in STORE.ids() if not sid.endswith("manifest.schema.json")]


def properties(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            if isinstance(prop, dict):
                yield f"{path}.{name}", prop
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, child in value.items():
                    yield from properties(child, f"{path}.{name}")
            elif isinstance(value, (dict, list)) and key not in ("examples", "default", "enum", "const"):
                yield from properties(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from properties(item, f"{path}[{i}]")


@pytest.mark.parametrize("schema_id", SCHEMA_IDS, ids=lambda s: s.rsplit("/schemas/", 1)[1])
def test_every_property_has_a_title_and_description(schema_id: str) -> None:
    schema = STORE.get(schema_id)
    assert schema.get("title") and schema.get("description"), f"{schema_id} needs a title and a description"
    missing = []
    for path, prop in properties(schema):
        target = prop
        if "$ref" in prop and not ("title" in prop and "description" in prop):
            target = STORE.resolver(schema_id).lookup(prop["$ref"]).contents
        if not (target.get("title") and target.get("description")):
            missing.append(path)
    assert missing == [], f"properties without a title and a description in {schema_id}: {missing}"


def test_secrets_are_write_only() -> None:
    secret = load_json("schemas/common/defs.json")["$defs"]["secret"]
    assert secret["writeOnly"] is True
    conn = STORE.get("connections/client_credentials.json")
    assert conn["properties"]["client_secret"]["$ref"].endswith("#/$defs/secret")


@pytest.mark.parametrize("name", ["table", "guid", "identifier", "page_token"])
def test_values_that_reach_urls_are_constrained(name: str) -> None:
    problems = STORE.validate("accounts(x)/../$batch", f"common/defs.json#/$defs/{name}")
    assert problems, f"{name} must refuse a value that would change the URL"


@pytest.mark.parametrize("value", ["account", "new_Balance", "contacts"])
def test_table_accepts_logical_and_entity_set_names(value: str) -> None:
    assert STORE.validate(value, "common/defs.json#/$defs/table") == []


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [("uri", "https://contoso.crm.dynamics.com", "not a uri"), ("date-time", "2026-01-02T03:04:05Z", "yesterday")],
)
def test_formats_are_really_checked(fmt: str, good: str, bad: str) -> None:
    from connector.schemas import SchemaStore

    store = SchemaStore()
    store.add(
        "https://tests.invalid/f.json", {"$schema": "https://json-schema.org/draft/2020-12/schema", "format": fmt}
    )
    assert store.validate(good, "https://tests.invalid/f.json") == []
    assert [p.message for p in store.validate(bad, "https://tests.invalid/f.json")] == [f'"{bad}" is not a valid {fmt}']


def test_pattern_message_reads_as_one_sentence() -> None:
    [problem] = STORE.validate("nope", "common/defs.json#/$defs/guid")
    assert (
        problem.message == '"nope" is not valid here: expected a Dataverse row id: 32 hexadecimal digits in the '
        "8-4-4-4-12 form, without braces."
    )


GUID = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize(
    "action", ["get_entity", "delete_entity", "update_entity", "upsert_entity", "associate_entities"]
)
def test_id_or_key_is_an_exclusive_choice_named_on_the_input_to_fix(action: str) -> None:
    """Renderers support titled ``oneOf`` branches, not ``dependentSchemas``; the message still names the input."""
    schema = STORE.get(f"actions/{action}.input.json")
    assert "dependentSchemas" not in schema and "dependentRequired" not in schema
    assert [b["title"] for b in schema["oneOf"]] == ["By id", "By alternate key"]
    ref = f"actions/{action}.input.json"
    both = [(p.path, p.message) for p in STORE.validate({"id": GUID, "key": {"a": 1}}, ref) if "id" in p.message]
    assert both == [("$.id", "give either id or key, not both")]
    neither = [(p.path, p.message) for p in STORE.validate({}, ref) if "id" in p.message]
    assert neither == [("$.id", "give id or key")]


def test_a_lookup_names_its_own_id_or_key() -> None:
    ref = "common/defs.json#/$defs/lookup"
    assert [(p.path, p.message) for p in STORE.validate({"table": "contact"}, ref)] == [("$.id", "give id or key")]
    both = STORE.validate({"table": "contact", "id": GUID, "key": {"a": 1}}, ref)
    assert [(p.path, p.message) for p in both] == [("$.id", "give either id or key, not both")]


@pytest.mark.parametrize("action", ["query_entities", "run_fetch_xml_query"])
def test_fetch_all_needs_max_records_without_dependent_required(action: str) -> None:
    schema = STORE.get(f"actions/{action}.input.json")
    assert schema["then"] == {"required": ["max_records"]}
    problems = STORE.validate({"fetch_all": True}, f"actions/{action}.input.json")
    assert "required property 'max_records' is missing: 'fetch_all' needs it" in [p.message for p in problems]


def test_update_attribute_branches_are_titled_and_the_refusal_names_the_inputs() -> None:
    schema = STORE.get("actions/update_attribute.input.json")
    assert all(branch.get("title") for branch in schema["anyOf"])
    problems = STORE.validate({"table": "account", "attribute": "name"}, "actions/update_attribute.input.json")
    assert [(p.path, p.message) for p in problems] == [
        ("$", "give at least one of label, description, required, max_length, changes")
    ]


@pytest.mark.parametrize("value", ["Con", 5, 2.5, True, None, ["A-1", 2, None]])
def test_where_value_takes_scalars_or_a_list_of_them(value: Any) -> None:
    where = {"table": "account", "where": [{"column": "name", "operator": "eq", "value": value}]}
    assert STORE.validate(where, "actions/query_entities.input.json") == []


def test_where_value_refusals_name_the_types_and_the_value_at_fault() -> None:
    ref = "actions/query_entities.input.json"
    [problem] = STORE.validate({"table": "a", "where": [{"column": "n", "operator": "eq", "value": {"a": 1}}]}, ref)
    assert (problem.path, problem.message) == (
        "$.where[0].value",
        "expected text, number, yes or no, no value (null) or list of values (in, not_in), got object (Value)",
    )
    [problem] = STORE.validate({"table": "a", "where": [{"column": "n", "operator": "in", "value": [[1]]}]}, ref)
    assert problem.path == "$.where[0].value[0]" and problem.message.endswith("got array (List value)")


def test_a_titled_enum_refusal_lists_the_allowed_values() -> None:
    [problem] = STORE.validate({"table": "account", "by": "x"}, "actions/get_entity_metadata.input.json")
    assert (problem.path, problem.message) == (
        "$.by",
        '"x" is not allowed; expected one of "logical_name", "entity_set_name"',
    )
