"""The builder data sources of ``invoke_action`` / ``invoke_function``: ``messages`` (the actions and functions
``$metadata`` lists, custom APIs included) and ``message_schema`` (a JSON Schema for one message's parameters).

Why generated from the same catalogue :mod:`connector.messages` checks inputs against: a form a builder renders from
this schema must produce parameters the action accepts, so the shapes here (entity references by id or key, entity
values by ``fields``, collections as lists, choice labels) are the ones the encoder takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from connector.csdl import Catalog, Operation, Parameter, element_type, is_collection
from connector.errors import InputError, InputProblem
from connector.messages import CHOICE_PARAMETERS

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["SOURCES", "data_source", "list_messages", "message_schema"]

SOURCES = frozenset({"messages", "message_schema"})
_BASE_TYPES = ("crmbaseentity", "activitypointer", "principal")
_GUID = {"type": "string", "format": "uuid", "examples": ["5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"]}
_PRIMITIVES: dict[str, dict[str, Any]] = {
    "Edm.String": {"type": "string"},
    "Edm.Boolean": {"type": "boolean"},
    "Edm.Int16": {"type": "integer", "minimum": -(2**15), "maximum": 2**15 - 1},
    "Edm.Int32": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    "Edm.Int64": {"type": "integer"},
    "Edm.Byte": {"type": "integer", "minimum": 0, "maximum": 255},
    "Edm.Decimal": {"type": "number"},
    "Edm.Double": {"type": "number"},
    "Edm.Single": {"type": "number"},
    "Edm.Guid": _GUID,
    "Edm.DateTimeOffset": {"type": "string", "format": "date-time"},
    "Edm.Date": {"type": "string", "format": "date"},
    "Edm.Binary": {"type": "string", "contentEncoding": "base64"},
}


def _matches(op: Operation, kind: str, table: str | None) -> bool:
    if kind != "any" and op.kind != kind:
        return False
    if table is None:
        return op.binding is None
    return op.bound_table in (table, *_BASE_TYPES)


def _option(op: Operation) -> dict[str, Any]:
    where = {"unbound": "unbound", "row": f"bound to a {op.bound_table} row"}.get(
        op.binding_kind, f"bound to the {op.bound_table} collection"
    )
    return {
        "value": op.name,
        "label": f"{op.name} ({op.kind}, {where})",
        "kind": op.kind,
        "binding": op.binding_kind,
        "bound_table": op.bound_table,
        "parameters": [{"name": p.name, "type": p.type, "required": not p.nullable} for p in op.params],
        "returns": op.returns,
    }


def list_messages(connection: Connection, kind: str, table: str | None, search: str | None) -> list[dict[str, Any]]:
    """The messages addressed as given (unbound when no table), sorted by name."""
    logical = connection.metadata.table(table).logical_name if table else None
    catalog = connection.metadata.operations()
    out = [
        _option(op)
        for name in sorted(catalog.operations, key=str.lower)
        for op in catalog.operations[name]
        if _matches(op, kind, logical) and (not search or search.lower() in name.lower())
    ]
    return out


def message_schema(connection: Connection, name: str, kind: str, table: str | None) -> dict[str, Any]:
    """A JSON Schema (2020-12) for the ``parameters`` of one message: a titled property per parameter, required
    ones listed, entity parameters as the reference-or-fields object the encoder takes."""
    logical = connection.metadata.table(table).logical_name if table else None
    catalog = connection.metadata.operations()
    ops = [op for op in catalog.operations.get(name, ()) if _matches(op, kind, logical)]
    if not ops:
        where = f"bound to {logical!r}" if logical else "unbound"
        raise InputError([InputProblem("$.name", f"$metadata lists no {kind} {name!r} {where}")])
    op = ops[0]
    props = {p.name: _param_schema(catalog, op, p, logical) for p in op.params}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{op.name}: parameters",
        "description": f"The parameters of the {op.kind} {op.name}, from $metadata.",
        "type": "object",
        "properties": props,
        "required": [p.name for p in op.params if not p.nullable],
        "additionalProperties": False,
    }


def _param_schema(catalog: Catalog, op: Operation, p: Parameter, bound: str | None) -> dict[str, Any]:
    schema = _type_schema(catalog, p.type, 0)
    choice = CHOICE_PARAMETERS.get((op.name, p.name)) or (
        (bound, "statuscode") if p.name == "Status" and bound and op.binding_kind == "row" else None
    )
    if choice is not None:
        schema = {"oneOf": [schema, {"type": "string", "title": f"A {choice[1]} label of {choice[0]}"}]}
    required = "required" if not p.nullable else "optional"
    schema = {"title": p.name, "description": f"{p.type} ({required}).", **schema}
    if not p.nullable and "type" in schema and schema["type"] != "object":
        schema.setdefault("examples", [_example(schema["type"])])
    return schema


def _example(typ: str) -> Any:
    return {"string": "text", "boolean": True, "integer": 1, "number": 1.5, "array": []}.get(typ)


def _type_schema(catalog: Catalog, typ: str, depth: int) -> dict[str, Any]:
    if is_collection(typ):
        return {"type": "array", "items": _type_schema(catalog, typ[len("Collection(") : -1], depth)}
    if typ in _PRIMITIVES:
        return dict(_PRIMITIVES[typ])
    name = element_type(typ)
    if name in catalog.enum_types:
        return {"type": "string", "oneOf": [{"const": m, "title": m} for m in catalog.enum_types[name]]}
    if name in catalog.complex_types and depth < 3:
        props = {
            p.name: {"title": p.name, **_type_schema(catalog, p.type, depth + 1)} for p in catalog.complex_types[name]
        }
        return {"type": "object", "properties": props, "additionalProperties": False}
    if typ.startswith("Edm."):
        return {}
    return _entity_schema(name)


def _entity_schema(table: str) -> dict[str, Any]:
    """A row of ``table`` (any table for a base type) by reference, or a row's values for the message to use."""
    any_table = table in _BASE_TYPES
    table_schema: dict[str, Any] = {
        "title": "Table",
        "description": "The row's table." if any_table else f"Always {table}.",
        "type": "string",
        "x-d365-options": {"source": "tables"},
    }
    if not any_table:
        table_schema["const"] = table
        table_schema["x-d365-options"] = {"none": f"this parameter takes a {table} row only"}
    return {
        "type": "object",
        "properties": {
            "table": table_schema,
            "id": {"title": "Row id", **_GUID, "x-d365-options": {"source": "records", "params": {"table": "1/table"}}},
            "key": {
                "title": "Alternate key",
                "type": "object",
                "x-d365-options": {"source": "key_schema", "params": {"table": "1/table"}},
            },
            "fields": {
                "title": "Values",
                "type": "object",
                "x-d365-options": {"source": "fields_schema", "params": {"table": "1/table"}},
            },
        },
        "required": ["table"] if any_table else [],
        "oneOf": [
            {"title": "by id", "required": ["id"]},
            {"title": "by alternate key", "required": ["key"]},
            {"title": "values", "required": ["fields"]},
        ],
        "additionalProperties": False,
    }


def data_source(name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]] | None:
    """``messages`` (options) and ``message_schema`` (a one-element list: the schema); None for other names."""
    kind = str(params.get("kind", "any"))
    table = str(params["table"]) if params.get("table") else None
    if name == "messages":
        search = params.get("search")
        return list_messages(connection, kind, table, str(search) if search else None)
    if name == "message_schema":
        return [message_schema(connection, str(params["name"]), kind, table)]
    return None
