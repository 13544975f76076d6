"""``SchemaStore.bundled``: every ``$ref`` inlined, the same verdicts as the registry, cycles refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from connector.errors import ContractError
from connector.schemas import SchemaStore, builtin_store, load_json

STORE = builtin_store()
ACTIONS = load_json("manifest.json")["actions"]


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from keys(item)


def verdict(validator: Draft202012Validator, instance: Any) -> list[tuple[str, str]]:
    return sorted((e.json_path, str(e.validator)) for e in validator.iter_errors(instance))


@pytest.mark.parametrize("schema_id", STORE.ids(), ids=lambda s: s.rsplit("/schemas/", 1)[1])
def test_every_schema_bundles_without_references(schema_id: str) -> None:
    bundle = STORE.bundled(schema_id)
    assert {"$ref", "$defs"}.isdisjoint(keys(bundle))
    assert bundle["$id"] == schema_id and bundle["title"] == STORE.get(schema_id)["title"]
    Draft202012Validator.check_schema(bundle)


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a["id"])
def test_a_bundled_input_schema_judges_as_the_registry_does(action: dict[str, Any]) -> None:
    ref = action["input_schema"]
    registry = STORE.validator(ref)
    alone = Draft202012Validator(STORE.bundled(ref), format_checker=Draft202012Validator.FORMAT_CHECKER)
    instances: list[Any] = [{}, [], {"no_such_input": 1}]
    for example in action["examples"]:
        instances.append(example["input"])
        instances += [{**example["input"], name: [[]]} for name in example["input"]]
        instances += [{**example["input"], name: "%"} for name in example["input"]]
    for instance in instances:
        assert verdict(alone, instance) == verdict(registry, instance), instance
    assert all(verdict(alone, e["input"]) == [] for e in action["examples"])


def store_of(*schemas: dict[str, Any]) -> SchemaStore:
    store = SchemaStore()
    for schema in schemas:
        store.add(schema["$id"], {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema})
    return store


DEFS = {
    "$id": "urn:test:defs",
    "$defs": {"word": {"title": "Word", "type": "string", "maxLength": 5}, "also": {"$ref": "#/$defs/word"}},
}


def test_annotations_beside_a_reference_override_and_other_keywords_keep_their_meaning() -> None:
    schema = {
        "$id": "urn:test:main",
        "type": "object",
        "properties": {
            "a": {"$ref": "urn:test:defs#/$defs/also", "title": "A word"},
            "b": {"$ref": "urn:test:defs#/$defs/word", "minLength": 2, "allOf": [{"pattern": "^x"}]},
            "c": {"type": "string", "examples": [{"$ref": "not a reference"}], "default": {"$ref": "data"}},
        },
    }
    bundle = store_of(DEFS, schema).bundled("urn:test:main")
    assert bundle["properties"]["a"] == {"title": "A word", "type": "string", "maxLength": 5}
    assert bundle["properties"]["b"] == {
        "minLength": 2,
        "allOf": [{"title": "Word", "type": "string", "maxLength": 5}, {"pattern": "^x"}],
    }
    assert bundle["properties"]["c"] == schema["properties"]["c"]


def test_a_cycle_or_an_unresolvable_reference_is_a_contract_error() -> None:
    tree = {
        "$id": "urn:test:tree",
        "$ref": "#/$defs/node",
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}},
    }
    with pytest.raises(ContractError, match="refers back to itself"):
        store_of(tree).bundled("urn:test:tree")
    with pytest.raises(ContractError, match="does not resolve"):
        store_of({"$id": "urn:test:lost", "items": {"$ref": "urn:test:nowhere"}}).bundled("urn:test:lost")


def test_the_same_target_twice_side_by_side_is_not_a_cycle() -> None:
    pair = {"$id": "urn:test:pair", "prefixItems": [{"$ref": "urn:test:defs#/$defs/word"}] * 2}
    bundle = store_of(DEFS, pair).bundled("urn:test:pair")
    assert bundle["prefixItems"] == [{"title": "Word", "type": "string", "maxLength": 5}] * 2
