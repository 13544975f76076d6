"""The typed action inputs equal their JSON Schemas: same properties, required set, defaults and JSON types.

The schemas are the source of truth (builders render them); the models are how the library reads validated inputs.
If a property is added to a schema and not to its model (or the other way round, or a default differs), a valid
input would be refused or silently read with another default: this test names the action and the property instead.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from connector.errors import ContractError
from connector.inputs import INPUT_MODELS, GetEntity, QueryEntities
from connector.runtime import Runtime

_NO_DEFAULT = object()
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False, check=False)


def _resolve(runtime: Runtime, schema_id: str, node: Mapping[str, Any]) -> Mapping[str, Any]:
    """A property with its ``$ref`` chain merged in (the outer title/description/default win, as in the runtime)."""
    merged = dict(node)
    resolver = runtime.store.resolver(schema_id)
    while isinstance(merged.get("$ref"), str):
        ref = merged.pop("$ref")
        resolved = resolver.lookup(ref)
        resolver = resolved.resolver
        merged = {**resolved.contents, **merged}
    return merged


def _schema_types(prop: Mapping[str, Any]) -> set[str]:
    """The JSON types a property admits (``enum`` or titled ``const`` values typed by their Python type); empty: any."""
    if "enum" in prop:
        return {_JSON_TYPES[type(v)] for v in prop["enum"]}
    branches = prop.get("oneOf", [])
    if branches and all("const" in b for b in branches):
        return {_JSON_TYPES[type(b["const"])] for b in branches}
    declared = prop.get("type")
    if declared is None:
        return set()
    return {declared} if isinstance(declared, str) else set(declared)


def _model_types(annotation: Any) -> set[str]:
    """The JSON types a model field admits, ``None`` left out (an absent property, not a JSON null)."""
    if annotation is Any:
        return set()
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_model_types(a) for a in typing.get_args(annotation) if a is not type(None)))
    if origin is typing.Literal:
        return {_JSON_TYPES[type(v)] for v in typing.get_args(annotation)}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"object"}
    found = _JSON_TYPES.get(origin or annotation)
    assert found is not None, f"no JSON type for {annotation!r}"
    return {found}


def _default(field: Any) -> Any:
    return _NO_DEFAULT if field.is_required() else field.get_default(call_default_factory=True)


@pytest.mark.parametrize("action_id", sorted(INPUT_MODELS))
def test_input_model_equals_its_schema(runtime: Runtime, action_id: str) -> None:
    info = runtime.manifest.action(action_id)
    assert info is not None, f"{action_id} has a model but no manifest entry"
    schema = runtime.store.get(info.input_schema)
    model = INPUT_MODELS[action_id]
    properties = schema.get("properties", {})
    assert set(model.model_fields) == set(properties), action_id
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert required == set(schema.get("required", [])), action_id
    for name, field in model.model_fields.items():
        prop = _resolve(runtime, info.input_schema, properties[name])
        expected_default = _NO_DEFAULT if name in required else prop.get("default")
        assert _default(field) == expected_default, f"{action_id}.{name} default"
        json_types = _schema_types(prop)
        if json_types:
            assert _model_types(field.annotation) == json_types, f"{action_id}.{name} type"
        else:
            assert field.annotation is Any, f"{action_id}.{name} admits any JSON value in its schema"


def test_every_action_with_inputs_the_library_reads_has_a_model(runtime: Runtime) -> None:
    assert set(runtime.manifest.actions) == set(INPUT_MODELS)


def test_models_never_coerce_and_refuse_unknown_properties() -> None:
    """Built after the schema check: a model refusing a value means model and schema disagree, a contract bug."""
    with pytest.raises(ContractError, match="page_size"):
        QueryEntities.of({"table": "account", "page_size": "100"})
    with pytest.raises(ContractError, match="colour"):
        GetEntity.of({"table": "account", "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b", "colour": "red"})
    typed = GetEntity.of({"table": "account", "key": {"accountnumber": "A-1"}, "expand": [{"navigation": "x"}]})
    assert typed.key == {"accountnumber": "A-1"} and typed.expand is not None and typed.expand[0].navigation == "x"


def test_every_validated_action_has_one_check_of_its_typed_inputs(runtime: Runtime) -> None:
    """Phase two has one shape: ``<module>.<action>_problems(inputs: <its model>, connection)``, found by name."""
    from connector import (
        associations,
        batch,
        bulk,
        fetchxml,
        files,
        messages,
        metadata_checks,
        paging,
        raw,
        record_ops,
        records,
    )
    from connector.sync import runner

    modules = (
        associations,
        batch,
        bulk,
        fetchxml,
        files,
        messages,
        metadata_checks,
        paging,
        raw,
        record_ops,
        records,
        runner,
    )
    validated = [a for a in runtime.manifest.actions if getattr(runtime.pm.hook, f"validate_{a}").get_hookimpls()]
    assert len(validated) > 20
    for action_id in validated:
        [check] = [getattr(m, f"{action_id}_problems") for m in modules if hasattr(m, f"{action_id}_problems")]
        params = inspect.signature(check).parameters
        assert list(params) == ["inputs", "connection"], action_id
        # annotations stay strings (postponed evaluation): compare by the model's name
        assert params["inputs"].annotation == INPUT_MODELS[action_id].__name__, action_id


def test_whole_number_floats_pass_as_json_schema_integers_do() -> None:
    """``5.0`` is an integer to JSON Schema, which runs first: the model takes it as 5, as ``int()`` used to."""
    typed = QueryEntities.of({"table": "account", "top": 5.0, "page_size": 50.0})
    assert (typed.top, typed.page_size) == (5, 50) and isinstance(typed.top, int)
    with pytest.raises(ContractError, match="top"):
        QueryEntities.of({"table": "account", "top": 5.5})


def test_models_built_in_code_refuse_both_or_neither_of_id_and_key_as_input_errors() -> None:
    from connector.errors import InputError
    from connector.inputs import AssociateEntities, UpsertEntity

    with pytest.raises(InputError, match=r"\$\.id: give id or key"):
        UpsertEntity(table="account", fields={"name": "x"})
    with pytest.raises(InputError, match=r"\$\.id: give either id or key, not both"):
        UpsertEntity(table="account", id="5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b", key={"a": 1}, fields={})
    with pytest.raises(InputError, match=r"\$\.related\.id"):
        AssociateEntities.of(
            {
                "table": "account",
                "id": "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b",
                "navigation": "n",
                "related": {"table": "contact"},
            }
        )


def test_a_refused_value_is_not_echoed() -> None:
    from pydantic import ValidationError

    from connector.inputs import RawRequest

    with pytest.raises(ValidationError) as err:
        RawRequest(path="x", headers={"X-Api-Key": 12345})  # type: ignore[dict-item]
    assert "12345" not in str(err.value)
