"""The connection models against the connection schemas: builders render forms from the schemas, so they must agree.

Each kind's model must have the schema's properties, with the same JSON types, the same required set and the same
secret (``writeOnly``) flags; the models must stay strict on their own, even for a value the schema let through.
"""

from __future__ import annotations

from typing import Any

import pytest

from connector import connection_config, schemas
from connector.connection_config import KINDS, parse_config
from connector.errors import ConnectionConfigError
from tests.conftest import SENTINELS, assert_no_secrets

MANIFEST_KINDS = {entry["kind"]: entry["schema"] for entry in schemas.load_json("manifest.json")["connections"]}


def _resolved(node: dict[str, Any], ref: str) -> dict[str, Any]:
    """The property with its ``$ref`` (the shared secret definition) merged in, local keywords winning."""
    if "$ref" not in node:
        return node
    target = schemas.builtin_store().resolver(ref).lookup(node["$ref"]).contents
    return {**target, **{key: value for key, value in node.items() if key != "$ref"}}


def _json_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[type(value)]


def _types(node: dict[str, Any]) -> set[str]:
    """The JSON types a property accepts, read from ``type``, ``const``/``enum`` or its ``oneOf``/``anyOf`` branches."""
    if "type" in node:
        return {node["type"]} if isinstance(node["type"], str) else set(node["type"])
    if "const" in node:
        return {_json_type(node["const"])}
    if "enum" in node:
        return {_json_type(value) for value in node["enum"]}
    branches = node.get("oneOf") or node.get("anyOf") or []
    return set().union(*(_types(branch) for branch in branches))


def _write_only(node: dict[str, Any]) -> bool:
    return bool(node.get("writeOnly")) or any(_write_only(b) for b in node.get("anyOf", []) + node.get("oneOf", []))


def _summary_of_schema(ref: str) -> dict[str, Any]:
    schema = schemas.builtin_store().get(ref)
    properties = {name: _resolved(node, ref) for name, node in schema["properties"].items()}
    return {
        "required": set(schema["required"]),
        "types": {name: _types(node) for name, node in properties.items()},
        "secrets": {name for name, node in properties.items() if _write_only(node)},
        "values": _values(properties),
    }


def _summary_of_model(kind: str) -> dict[str, Any]:
    schema = KINDS[kind].model_json_schema()
    required = set(schema.get("required", []))
    properties = schema["properties"]
    # An optional model field takes None for "not given"; JSON has no null for it, the key is left out instead.
    types = {name: _types(node) - ({"null"} if name not in required else set()) for name, node in properties.items()}
    return {
        "required": required,
        "types": types,
        "secrets": {name for name, node in properties.items() if _write_only(node)},
        "values": _values(properties),
    }


def _values(properties: dict[str, Any]) -> dict[str, list[Any]]:
    """The allowed values of the enumerated properties (``kind``, ``identity_style``)."""
    return {
        name: [value for value in _enum_values(node) if value is not None]
        for name, node in properties.items()
        if _enumerated(node)
    }


def _enumerated(node: dict[str, Any]) -> bool:
    return "const" in node or "enum" in node or any(_enumerated(b) for b in node.get("anyOf", []))


def _enum_values(node: dict[str, Any]) -> list[Any]:
    if "const" in node or "enum" in node:
        return list(node.get("enum", [node.get("const")]))
    return [value for branch in node.get("anyOf", []) for value in _enum_values(branch)]


def test_connection_models_cover_every_kind_of_the_manifest() -> None:
    assert set(KINDS) == set(MANIFEST_KINDS)


@pytest.mark.parametrize("kind", sorted(MANIFEST_KINDS))
def test_connection_model_equals_its_schema(kind: str) -> None:
    expected = _summary_of_schema(MANIFEST_KINDS[kind])
    actual = _summary_of_model(kind)
    assert set(actual["types"]) == set(expected["types"]), "the model and the schema must have the same fields"
    for name, types in expected["types"].items():
        assert actual["types"][name] == types, f"{kind}.{name}: the model takes {actual['types'][name]}, not {types}"
    assert actual["required"] == expected["required"]
    assert actual["secrets"] == expected["secrets"] and expected["secrets"] <= set(connection_config.SECRET_FIELDS)
    assert actual["values"] == expected["values"]


def test_connection_models_are_strict_even_where_the_schema_lets_a_value_through(
    cloud: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A schema that checks nothing: the model alone must refuse "30", name the field, and never echo the secret.
    monkeypatch.setattr(connection_config.schemas, "validate", lambda instance, ref: [])
    with pytest.raises(ConnectionConfigError) as info:
        parse_config(cloud.config(timeout_s="30", client_secret=SENTINELS["client_secret"]))
    assert info.value.field == "timeout_s"
    assert "$.timeout_s" in info.value.message
    assert_no_secrets(info.value.message)


@pytest.mark.parametrize(("name", "value"), [("max_parallelism", 4.0), ("redirect_port", 8400.0)])
def test_connection_integral_number_is_an_integer_as_in_json_schema(cloud: Any, name: str, value: float) -> None:
    config = parse_config(cloud.config(kind="authorization_code", client_secret=None, **{name: value}))
    assert getattr(config, name) == int(value) and isinstance(getattr(config, name), int)
