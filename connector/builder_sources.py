"""The builder data sources that depend on one table: ``fields_schema`` and ``key_schema`` (JSON Schemas a builder
swaps in for ``fields`` and ``key`` once a table is picked) and ``records`` (rows by primary name, for lookup pickers).

Why generated from the same :class:`~connector.metadata.TableMetadata` that :mod:`connector.body` checks ``fields``
against: a record the schema accepts must be one ``create_entity`` accepts, so the writability per mode and the
lookup targets come from there; the definitions read here only add what a form shows (labels, lengths, ranges,
required levels, option labels).

A schema source answers a one-element list (the schema), declared ``"returns": "schema"`` in the manifest, so that
every data source keeps one answer shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from connector.metadata import TableMetadata
from connector.metadata_reads import CRM, get_definition, label_text, resolve_table
from connector.odata import CHOICE_TYPES, LOOKUP_TYPES

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["SOURCES", "data_source", "fields_schema", "key_schema", "records"]

SOURCES = frozenset({"fields_schema", "key_schema", "records"})
_SELECT = "LogicalName,AttributeType,DisplayName,RequiredLevel,AttributeOf"
_RANGE_CASTS = tuple(f"{t}AttributeMetadata" for t in ("Integer", "BigInt", "Decimal", "Double", "Money"))
_OPTION_CASTS = ("PicklistAttributeMetadata", "StateAttributeMetadata", "StatusAttributeMetadata")
_PLAIN: dict[str, dict[str, Any]] = {
    "String": {"type": "string"},
    "Memo": {"type": "string"},
    "EntityName": {"type": "string"},
    "Integer": {"type": "integer"},
    "BigInt": {"type": "integer"},
    "Decimal": {"type": "number"},
    "Double": {"type": "number"},
    "Money": {"type": "number"},
    "Boolean": {"type": "boolean"},
    "DateTime": {"type": "string", "description": "ISO 8601 date or date and time."},
    "Uniqueidentifier": {"type": "string", "format": "uuid"},
}
#: The links of a lookup's id and key (``schemas/common/defs.json`` lookup): the picked table's rows and keys.
_PICK_ROW = {"source": "records", "params": {"table": "1/table"}}
_PICK_KEY = {"source": "key_schema", "params": {"table": "1/table"}}
_GUID = {"type": "string", "format": "uuid", "examples": ["5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"]}


def _facets(connection: Connection, path: str) -> dict[str, dict[str, Any]]:
    """Per column: label, required level, max length, range and option titles (what each cast read carries)."""
    out: dict[str, dict[str, Any]] = {}
    for row in get_definition(connection, f"{path}/Attributes", {"$select": _SELECT}).get("value", []):
        required = row.get("RequiredLevel")
        out[str(row.get("LogicalName"))] = {
            "title": label_text(row.get("DisplayName")),
            "required": required.get("Value") if isinstance(required, Mapping) else None,
            "companion": bool(row.get("AttributeOf")),
        }
    # Ranges are read without $select: a number column may come without MinValue/MaxValue, and naming a property
    # the definition lacks fails the whole read. Number columns are few, so their full definitions are cheap.
    text = [(c, {"$select": "LogicalName,MaxLength"}) for c in ("StringAttributeMetadata", "MemoAttributeMetadata")]
    for cast, params in text + [(c, {}) for c in _RANGE_CASTS]:
        for row in get_definition(connection, f"{path}/Attributes/{CRM}{cast}", params).get("value", []):
            facet = out.setdefault(str(row.get("LogicalName")), {})
            for prop, word in (("MaxLength", "maxLength"), ("MinValue", "minimum"), ("MaxValue", "maximum")):
                if isinstance(row.get(prop), (int, float)) and not isinstance(row.get(prop), bool):
                    facet[word] = row[prop]
    for cast in _OPTION_CASTS:
        expand = {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}
        for row in get_definition(connection, f"{path}/Attributes/{CRM}{cast}", expand).get("value", []):
            options = (row.get("OptionSet") or {}).get("Options") or []
            out.setdefault(str(row.get("LogicalName")), {})["options"] = [
                {"const": o.get("Value"), "title": label_text(o.get("Label")) or str(o.get("Value"))} for o in options
            ]
    return out


def _lookup_schema(meta: TableMetadata, column: str) -> dict[str, Any]:
    """``{table, id | key}`` with the tables :func:`connector.body.bind_lookup` accepts for this column."""
    relationships = meta.lookups.get(column, ())
    targets = [r.target for r in relationships]
    if len(relationships) == 1 and relationships[0].target == "owner":
        targets = ["systemuser", "team"]
    return {
        "type": "object",
        "required": ["table"],
        "properties": {
            "table": {
                "title": "Table",
                "description": "The table of the row referred to.",
                "type": "string",
                "oneOf": [{"const": t, "title": t} for t in targets],
                "x-d365-options": {"none": "the tables this lookup can refer to, listed here"},
            },
            "id": {"title": "Row id", "description": "The row's primary key.", **_GUID, "x-d365-options": _PICK_ROW},
            "key": {
                "title": "Alternate key",
                "description": "The row's alternate key values.",
                "type": "object",
                "x-d365-options": _PICK_KEY,
            },
        },
        "oneOf": [{"title": "by id", "required": ["id"]}, {"title": "by alternate key", "required": ["key"]}],
        "additionalProperties": False,
    }


def _column_schema(meta: TableMetadata, column: str, facet: Mapping[str, Any]) -> dict[str, Any]:
    typ = meta.attributes[column].type
    if typ in LOOKUP_TYPES:
        schema = _lookup_schema(meta, column)
    elif typ in CHOICE_TYPES:
        schema = {"type": "integer", "oneOf": list(facet.get("options") or [])} if facet.get("options") else {}
        schema.setdefault("type", "integer")
    else:
        schema = dict(_PLAIN.get(typ, {}))
        for word in ("maxLength", "minimum", "maximum"):
            if word in facet and (word == "maxLength") == (schema.get("type") == "string"):
                schema[word] = facet[word]
    title = facet.get("title") or column
    return {"title": f"{title} ({column})", "description": schema.pop("description", f"{typ} column."), **schema}


def fields_schema(connection: Connection, table: str, mode: str = "create") -> dict[str, Any]:
    """A JSON Schema for ``fields`` of this table: only the columns writable in ``mode``; on create, the
    ApplicationRequired columns are required (what a form asks for). SystemRequired ones are not: Dataverse fills
    them when left out (``ownerid`` with the caller, ``statecode`` with its default)."""
    ref = resolve_table(connection, table)
    meta = ref.metadata
    facets = _facets(connection, ref.path)
    properties: dict[str, Any] = {}
    required = []
    for column, attr in sorted(meta.attributes.items()):
        facet = facets.get(column, {})
        writable = attr.valid_for_create if mode == "create" else attr.valid_for_update
        if not writable or facet.get("companion"):
            continue
        properties[column] = _column_schema(meta, column, facet)
        if mode == "create" and facet.get("required") == "ApplicationRequired":
            required.append(column)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Fields of {meta.logical_name} ({mode})",
        "description": f"Columns of {meta.logical_name!r} that can be set on {mode}, by logical name.",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def key_schema(connection: Connection, table: str) -> dict[str, Any]:
    """A JSON Schema for ``key``: one titled branch per active alternate key (only those can address a row)."""
    ref = resolve_table(connection, table)
    meta = ref.metadata
    facets = _facets(connection, ref.path)
    branches = []
    for key in sorted((k for k in meta.keys if k.active), key=lambda k: k.schema_name):
        columns = sorted(key.columns)
        properties = {
            c: _GUID | {"title": c} if meta.attributes[c].type in LOOKUP_TYPES else _column_schema(meta, c, facets[c])
            for c in columns
        }
        branches.append(
            {
                "title": f"{key.schema_name} ({', '.join(columns)})",
                "type": "object",
                "properties": properties,
                "required": columns,
                "additionalProperties": False,
            }
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Alternate key of {meta.logical_name}",
        "description": f"The values of one of the active alternate keys of {meta.logical_name!r}.",
        # JSON Schema wants a non-empty oneOf; a table without an active key accepts no key at all.
        **({"oneOf": branches} if branches else {"not": {}}),
    }


def records(connection: Connection, table: str, search: str | None, page: int, page_size: int) -> list[dict[str, Any]]:
    """Rows as ``{value: id, label: primary name}`` by primary name, paged by FetchXML ``page``/``count``: a picker
    shows names and stores ids."""
    meta = resolve_table(connection, table).metadata
    name = meta.primary_name or meta.primary_id
    condition = ""
    if search:
        like = "%" + search.replace("[", "[[]").replace("%", "[%]").replace("_", "[_]") + "%"
        condition = f"<filter><condition attribute={quoteattr(name)} operator='like' value={quoteattr(like)}/></filter>"
    fetch = (
        f"<fetch page='{page}' count='{page_size}'><entity name={quoteattr(meta.logical_name)}>"
        f"<attribute name={quoteattr(meta.primary_id)}/><attribute name={quoteattr(name)}/>"
        f"<order attribute={quoteattr(name)}/><order attribute={quoteattr(meta.primary_id)}/>{condition}"
        "</entity></fetch>"
    )
    rows = connection.client.get_json(meta.entity_set, params={"fetchXml": fetch}).get("value", [])
    return [{"value": r.get(meta.primary_id), "label": r.get(name) or r.get(meta.primary_id)} for r in rows]


def data_source(name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]] | None:
    """``fields_schema`` and ``key_schema`` (a one-element list: the schema) and ``records``; None for others."""
    if name == "fields_schema":
        return [fields_schema(connection, str(params["table"]), str(params.get("mode", "create")))]
    if name == "key_schema":
        return [key_schema(connection, str(params["table"]))]
    if name == "records":
        search = params.get("search")
        page, size = int(params.get("page", 1)), int(params.get("page_size", 50))
        return records(connection, str(params["table"]), str(search) if search else None, page, size)
    return None
