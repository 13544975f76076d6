"""``invoke_action`` and ``invoke_function``: any Dataverse message by name, typed by ``$metadata``.

Why typed from CSDL rather than passed through: a builder renders a form only for what it knows, and a wrong
parameter sent raw fails late with Microsoft.OData's wording; the message's parameter types
(:meth:`connector.metadata.MetadataCache.operations`) let every value be checked, and converted, before the request:
entity references by id or alternate key become ``@odata.type`` plus the primary key
(``webapi/use-web-api-actions.md``), entity values get their ``fields`` checked as a create would, choice labels
become values, and a function's parameters travel as parameter aliases (``webapi/use-web-api-functions.md``).
The same code runs in phase two (collecting problems, resolving nothing) and when sending.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from connector.addressing import address, find_by_key, not_found
from connector.body import build_body
from connector.csdl import Catalog, Operation, Parameter, element_type, is_collection
from connector.errors import InputError, InputProblem
from connector.inputs import InvokeAction, InvokeFunction
from connector.odata import build_query_string
from connector.problems import Problems, check_guid, check_key, check_sendable

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata

__all__ = [
    "decode",
    "find_operation",
    "invoke",
    "invoke_action_problems",
    "invoke_function_problems",
    "invoke_problems",
    "run",
]

NS = "Microsoft.Dynamics.CRM."
_INTS = {"Edm.Byte": (0, 255), "Edm.SByte": (-128, 127), "Edm.Int16": (-(2**15), 2**15 - 1)}
_INTS |= {"Edm.Int32": (-(2**31), 2**31 - 1), "Edm.Int64": (-(2**63), 2**63 - 1)}
_NUMBERS = ("Edm.Decimal", "Edm.Double", "Edm.Single")
#: Entity types any table's rows may fill (the base types): the value must then name its table.
_BASE_TYPES = ("crmbaseentity", "activitypointer", "principal")
#: Integer parameters whose values are a column's choices: labels accepted (message, parameter) -> (table, column).
#: A ``Status`` parameter of a message bound to a row is the bound table's ``statuscode`` (QualifyLead's).
CHOICE_PARAMETERS = {
    ("WinOpportunity", "Status"): ("opportunity", "statuscode"),
    ("LoseOpportunity", "Status"): ("opportunity", "statuscode"),
}


# -- finding the message --------------------------------------------------------------------------------------------


def _describe(op: Operation) -> str:
    if op.binding is None:
        return "unbound (no table)"
    what = "the collection of" if op.collection_bound else "a row of"
    return f"bound to {what} {op.bound_table!r}"


def find_operation(p: Problems, inputs: InvokeAction, kind: str) -> Operation | None:
    """The operation named and addressed as the inputs say; a problem naming the fix otherwise. An unknown name
    re-reads ``$metadata`` once (a custom API may have just been registered)."""
    catalog = p.connection.metadata.operations()
    ops = catalog.operations.get(inputs.name)
    if ops is None:
        catalog = p.connection.metadata.operations(refresh=True)
        ops = catalog.operations.get(inputs.name)
    if ops is None:
        close = difflib.get_close_matches(inputs.name, list(catalog.operations), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        p.add("$.name", f"$metadata lists no action or function named {inputs.name!r}{hint}")
        return None
    other = "invoke_function" if kind == "action" else "invoke_action"
    if all(op.kind != kind for op in ops):
        p.add("$.name", f"{inputs.name!r} is a {ops[0].kind}, not an {kind}: run it with {other}")
        return None
    ops = tuple(op for op in ops if op.kind == kind)
    wanted = "unbound" if inputs.table is None else ("row" if inputs.id or inputs.key else "collection")
    table = None
    if inputs.table is not None:
        table = p.table(inputs.table, "$.table")
        if table is None:
            return None
    for op in ops:
        if op.binding_kind == wanted and (table is None or op.bound_table in (table.logical_name, *_BASE_TYPES)):
            return op
    ways = "; ".join(_describe(op) for op in ops)
    fix = "leave out table, id and key" if ops[0].binding is None else "give table (and id or key for a row)"
    p.add("$.table" if inputs.table else "$.name", f"{inputs.name!r} is {ways}: {fix}")
    return None


# -- parameters -----------------------------------------------------------------------------------------------------


class _Encoder:
    """Checks (and, when ``resolve``, converts) parameter values against their CSDL types."""

    def __init__(self, p: Problems, catalog: Catalog, op: Operation, bound: str | None, resolve: bool) -> None:
        self.p, self.catalog, self.op, self.bound, self.resolve = p, catalog, op, bound, resolve
        self.impersonate: str | None = None
        #: logical name -> entity set of every table a parameter names (a function URL refers to rows by set)
        self.entity_sets: dict[str, str] = {}

    def parameters(self, given: Mapping[str, Any]) -> dict[str, Any]:
        known = {param.name: param for param in self.op.params}
        out: dict[str, Any] = {}
        for name, value in given.items():
            here = f"$.parameters.{name}"
            param = known.get(name)
            if param is None:
                names = ", ".join(known) or "none"
                self.p.add(here, f"{self.op.name!r} has no parameter {name!r}; its parameters: {names}")
                continue
            if value is None:
                if not param.nullable:
                    self.p.add(here, f"{name!r} is required by {self.op.name!r}: give {_type_words(param.type)}")
                out[name] = None
                continue
            if check_sendable(self.p, value, here):
                out[name] = self.value(param, value, here)
        for param in self.op.params:
            if not param.nullable and param.name not in given:
                self.p.add(
                    f"$.parameters.{param.name}",
                    f"{param.name!r} is required by {self.op.name!r}: give {_type_words(param.type)}",
                )
        return out

    def value(self, param: Parameter, value: Any, path: str) -> Any:
        typ = param.type
        if is_collection(typ):
            if not isinstance(value, list):
                self.p.add(path, f"{param.name!r} is a collection: give a list of {_type_words(typ)}")
                return None
            item = Parameter(param.name, typ[len("Collection(") : -1])
            return [self.value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        if typ.startswith("Edm."):
            return self.primitive(param, value, path)
        name = element_type(typ)
        if name in self.catalog.complex_types:
            return self.complex(name, value, path)
        if name in self.catalog.enum_types:
            members = self.catalog.enum_types[name]
            if not isinstance(value, str) or any(v.strip() not in members for v in value.split(",")):
                self.p.add(path, f"{param.name!r} takes one of {', '.join(members)}")
            return value
        return self.entity(name, value, path)

    def primitive(self, param: Parameter, value: Any, path: str) -> Any:
        typ, name = param.type, param.name
        if typ in _INTS:
            if isinstance(value, str) and self.choice(name) is not None:
                table, column = self.choice(name)  # type: ignore[misc]
                try:
                    return self.p.connection.metadata.choice_value(table, column, value)
                except ValueError as exc:
                    self.p.add(path, str(exc))
                    return None
            low, high = _INTS[typ]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                labels = " or its label" if self.choice(name) else ""
                self.p.add(path, f"{name!r} is a whole number from {low} to {high} ({typ}): give one{labels}")
            return value
        ok = {
            "Edm.String": isinstance(value, str),
            "Edm.Boolean": isinstance(value, bool),
            "Edm.Binary": isinstance(value, str),
        }.get(typ)
        if typ in _NUMBERS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif typ == "Edm.Guid":
            return value if check_guid(self.p, value, path) else None
        elif typ in ("Edm.DateTimeOffset", "Edm.Date"):
            ok = _is_date(value, typ)
        if ok is False:
            self.p.add(path, f"{name!r} is {_type_words(typ)} ({typ})")
        return value

    def choice(self, name: str) -> tuple[str, str] | None:
        found = CHOICE_PARAMETERS.get((self.op.name, name))
        if found is None and name == "Status" and self.bound and self.op.binding_kind == "row":
            return self.bound, "statuscode"
        return found

    def complex(self, name: str, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            self.p.add(path, f"give an object with the properties of {name}")
            return None
        props = {prop.name: prop for prop in self.catalog.complex_types[name]}
        out: dict[str, Any] = {}
        for key, v in value.items():
            if key not in props:
                self.p.add(f"{path}.{key}", f"{name} has no property {key!r}; its properties: {', '.join(props)}")
            elif v is not None:
                out[key] = self.value(props[key], v, f"{path}.{key}")
        return out

    def entity(self, typ: str, value: Any, path: str) -> Any:
        """A row of table ``typ`` (any table for a base type): a reference (``table`` with ``id`` or ``key``) or a
        row's values (``table`` optional, ``fields``)."""
        shape = '{"table": ..., "id": GUID}, {"table": ..., "key": {...}} or {"table": ..., "fields": {...}}'
        if not isinstance(value, Mapping) or not ({"id", "key", "fields"} & set(value)):
            self.p.add(path, f"an entity parameter ({typ}): give {shape}")
            return None
        name = value.get("table") or (None if typ in _BASE_TYPES else typ)
        if not isinstance(name, str):
            self.p.add(f"{path}.table", f"{typ} is any table's row: name its table")
            return None
        meta = self.p.table(name, f"{path}.table")
        if meta is None:
            return None
        if typ not in _BASE_TYPES and meta.logical_name != typ:
            self.p.add(f"{path}.table", f"this parameter takes a {typ} row, not {meta.logical_name!r}")
            return None
        self.entity_sets[meta.logical_name] = meta.entity_set
        head = {"@odata.type": f"{NS}{meta.logical_name}"}
        if "fields" in value:
            fields = value["fields"] if isinstance(value["fields"], Mapping) else {}
            body = build_body(
                self.p.connection,
                meta,
                fields,
                f"{path}.fields",
                for_create=True,
                problems=self.p,
                resolve=self.resolve,
                impersonate=self.impersonate,
            )
            return {**head, **body}
        return {**head, meta.primary_id: self.row_id(meta, value, path)}

    def row_id(self, meta: TableMetadata, value: Mapping[str, Any], path: str) -> str | None:
        if value.get("id") is not None:
            return str(value["id"]) if check_guid(self.p, value["id"], f"{path}.id") else None
        key = value.get("key")
        if not isinstance(key, Mapping):
            self.p.add(f"{path}.key", "give the alternate key as an object of column to value")
            return None
        meta, literals = check_key(self.p, meta, key, f"{path}.key")
        if literals is None or not self.resolve:
            return None
        found = find_by_key(self.p.connection, meta, key, self.impersonate, literals)
        if found is None:
            raise not_found(meta, key=key, what=f"the row {path} names")
        return found


def _is_date(value: Any, typ: str) -> bool:
    if not isinstance(value, str):
        return False
    try:
        if typ == "Edm.Date":
            date.fromisoformat(value)
        else:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _type_words(typ: str) -> str:
    inner = element_type(typ)
    words = {
        "Edm.String": "a string",
        "Edm.Boolean": "true or false",
        "Edm.Guid": "a GUID",
        "Edm.DateTimeOffset": "an ISO 8601 date and time",
        "Edm.Date": "an ISO 8601 date",
        "Edm.Binary": "base64 text",
    }
    if inner in _INTS:
        return "a whole number"
    if inner in _NUMBERS:
        return "a number"
    return words.get(inner, f"a {inner} value")


# -- phase two and sending ------------------------------------------------------------------------------------------


def _prepare(
    connection: Connection, inputs: InvokeAction, kind: str, p: Problems, *, resolve: bool
) -> tuple[Operation, dict[str, Any], TableMetadata | None, dict[str, str]] | None:
    op = find_operation(p, inputs, kind)
    if op is None:
        return None
    meta = connection.metadata.table(inputs.table) if inputs.table else None
    if meta is not None and inputs.id is not None:
        check_guid(p, inputs.id, "$.id")
    if meta is not None and inputs.key is not None:
        meta, _literals = check_key(p, meta, inputs.key, "$.key")
    encoder = _Encoder(p, connection.metadata.operations(), op, meta.logical_name if meta else None, resolve)
    encoder.impersonate = inputs.impersonate
    params = encoder.parameters(inputs.parameters)
    return op, params, meta, encoder.entity_sets


def invoke_problems(inputs: InvokeAction, connection: Connection, kind: str) -> list[InputProblem]:
    """Phase two: the message exists as addressed, every parameter is known, typed right and present if required."""
    p = Problems(connection)
    _prepare(connection, inputs, kind, p, resolve=False)
    return p.items


def invoke_action_problems(inputs: InvokeAction, connection: Connection) -> list[InputProblem]:
    return invoke_problems(inputs, connection, "action")


def invoke_function_problems(inputs: InvokeFunction, connection: Connection) -> list[InputProblem]:
    return invoke_problems(inputs, connection, "function")


def invoke(connection: Connection, inputs: InvokeAction, kind: str) -> dict[str, Any]:
    """Send the action (POST, parameters as the body) or the function (GET, parameters as aliases); the answer is
    decoded by the return type: ``{"name", "return_type", "result"}``."""
    p = Problems(connection)
    prepared = _prepare(connection, inputs, kind, p, resolve=True)
    if prepared is None or p.items:
        raise InputError(p.items)
    op, params, meta, sets = prepared
    path = op.name if meta is None else _bound_path(connection, op, meta, inputs)
    client = connection.client
    if kind == "action":
        response = client.request("POST", path, json=params, impersonate=inputs.impersonate)
    else:
        response = client.request(
            "GET", _function_url(path, params, sets), impersonate=inputs.impersonate, idempotent=True
        )
    body = response.json() if response.status_code != 204 and response.content else None
    if op.returns is not None and isinstance(body, dict) and not _returns_object(connection, op.returns):
        body = body.get("value")
    return {"name": op.name, "return_type": op.returns, "result": decode(connection, op.returns, body)}


def _bound_path(connection: Connection, op: Operation, meta: TableMetadata, inputs: InvokeAction) -> str:
    if op.collection_bound:
        return f"{meta.entity_set}/{NS}{op.name}"
    return f"{address(connection, meta, inputs.id, inputs.key, inputs.impersonate)}/{NS}{op.name}"


def _function_url(path: str, params: Mapping[str, Any], sets: Mapping[str, str]) -> str:
    """``F(A=@p1,B=@p2)?@p1=…``: every parameter as an alias, so no value needs escaping inside the path."""
    names = [name for name, value in params.items() if value is not None]
    if not names:
        return f"{path}()"
    aliases = {f"@p{i}": _literal(params[name], sets) for i, name in enumerate(names, 1)}
    inner = ",".join(f"{name}=@p{i}" for i, name in enumerate(names, 1))
    return f"{path}({inner})?{build_query_string(aliases)}"


def _literal(value: Any, sets: Mapping[str, str]) -> str:
    """A parameter alias value: strings quoted (``''`` for a quote), an entity reference as the docs write it
    (``{'@odata.id':'accounts(…)'}``), everything else JSON."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, Mapping) and "@odata.type" in value and len(value) == 2:
        table = str(value["@odata.type"]).removeprefix(NS)
        rid = next(v for k, v in value.items() if k != "@odata.type")
        return "{'@odata.id':'" + sets[table] + f"({rid})'}}"
    return json.dumps(value, separators=(",", ":"))


def _returns_object(connection: Connection, typ: str) -> bool:
    """True when the answer's body is the value itself (an entity or a complex type), not ``{"value": …}``."""
    if is_collection(typ) or typ.startswith("Edm."):
        return False
    return element_type(typ) not in connection.metadata.operations().enum_types


def decode(connection: Connection, typ: str | None, value: Any) -> Any:
    """A returned value by its CSDL type: annotations dropped, entities as ``{"table", "id", "fields"}``."""
    if typ is None or value is None:
        return None
    if is_collection(typ):
        inner = typ[len("Collection(") : -1]
        return [decode(connection, inner, v) for v in value] if isinstance(value, list) else value
    if typ.startswith("Edm.") or not isinstance(value, dict):
        return value.lower() if typ == "Edm.Guid" and isinstance(value, str) else value
    name = element_type(typ)
    catalog = connection.metadata.operations()
    if name in catalog.complex_types:
        props = {prop.name: prop.type for prop in catalog.complex_types[name]}
        return {k: decode(connection, props.get(k, "Edm.Untyped"), v) for k, v in value.items() if "@" not in k}
    table = _table_of(value, name)
    fields = {k: v for k, v in value.items() if "@" not in k}
    try:
        meta = connection.metadata.table(table)
    except InputError:
        return {"table": table, "id": None, "fields": fields}
    return {"table": meta.logical_name, "id": fields.pop(meta.primary_id, None), "fields": fields}


def _table_of(value: Mapping[str, Any], typ: str) -> str:
    """The row's table: its ``@odata.type``, else the entity set its ``@odata.context`` names
    (``$metadata#accounts/$entity``), else the declared type."""
    if value.get("@odata.type"):
        return str(value["@odata.type"]).lstrip("#").removeprefix(NS)
    context = str(value.get("@odata.context") or "")
    if typ in _BASE_TYPES and context.endswith("/$entity") and "#" in context:
        return context.rsplit("#", 1)[1].removesuffix("/$entity")
    return typ


def run(connection: Connection, inputs: InvokeAction) -> dict[str, Any]:
    """The entry the hooks call: the kind comes from the inputs' model."""
    return invoke(connection, inputs, "function" if isinstance(inputs, InvokeFunction) else "action")
