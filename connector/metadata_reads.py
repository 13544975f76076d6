"""Table, column and alternate-key definitions read on demand: the metadata actions' reads and the builders' dropdowns.

Why a module of its own rather than more of :mod:`connector.metadata`: that cache holds the little the record actions
need, kept for an hour; these functions read whole definitions on demand and never keep them. The writes
(:mod:`connector.metadata_writes`) and the phase-two checks (:mod:`connector.metadata_checks`) build on the helpers
here: naming a table (:func:`resolve_table`), addressing a column (:func:`column_ref`), one lean read
(:func:`get_definition`).

Large organisations have thousands of tables, and a discovery that asks for ``EntityDefinitions?$expand=Attributes``
holds every column of every table in one response (peers run out of memory there). So list reads ``$select`` a few
properties only, and :func:`iter_entities_metadata` reads one table's columns at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.errors import InputError, InputProblem, NotFoundError
from connector.inputs import (
    GetAttribute,
    GetEntitiesMetadata,
    GetEntityMetadata,
    ListAlternateKeys,
    ListAttributes,
    ListEntities,
    ListEntityTypes,
    QueryAttributes,
)
from connector.odata import PageToken, build_query_string, quote_string
from connector.progress import CancellationToken, Reporter, Tracker

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata

__all__ = [
    "CRM",
    "GUID",
    "TableRef",
    "column_ref",
    "data_source",
    "get_attribute",
    "get_definition",
    "get_entities_metadata",
    "get_entity_metadata",
    "iter_entities_metadata",
    "label_text",
    "list_alternate_keys",
    "list_attributes",
    "list_entities",
    "list_entity_types",
    "query_attributes",
    "read_key",
    "resolve_table",
    "strip_annotations",
    "table_rows",
]

CRM = "Microsoft.Dynamics.CRM."
#: A MetadataId: tables and columns may be named by it instead of by their logical name.
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

_TABLE_LIST_SELECT = ("LogicalName", "SchemaName", "EntitySetName", "DisplayName", "IsCustomEntity")
_TABLE_DETAIL_SELECT = ("Description", "OwnershipType", "IsActivity", "IsIntersect", "IsValidForAdvancedFind")
_TYPE_SELECT = "LogicalName,EntitySetName,ObjectTypeCode,DisplayName"
_ATTRIBUTE_SELECT = (
    "LogicalName,SchemaName,AttributeType,DisplayName,RequiredLevel,IsCustomAttribute,IsPrimaryId,IsPrimaryName,"
    "IsValidForCreate,IsValidForUpdate,AttributeOf"
)
_KEY_SELECT = "SchemaName,LogicalName,KeyAttributes,EntityKeyIndexStatus,DisplayName"
_TEXT_CASTS = ("StringAttributeMetadata", "MemoAttributeMetadata")
_OPTION_CASTS = (
    "PicklistAttributeMetadata",
    "MultiSelectPicklistAttributeMetadata",
    "StateAttributeMetadata",
    "StatusAttributeMetadata",
)


# -- small helpers -----------------------------------------------------------------------------------------------------
def label_text(value: Any, language: int | None = None) -> str | None:
    """The user's label (or the one in ``language``), else the first localized one; None when there is none."""
    if not isinstance(value, Mapping):
        return None
    localized = [x for x in value.get("LocalizedLabels") or [] if isinstance(x, Mapping)]
    if language is not None:
        for item in localized:
            if item.get("LanguageCode") == language and isinstance(item.get("Label"), str):
                return str(item["Label"])
    user = value.get("UserLocalizedLabel")
    if isinstance(user, Mapping) and isinstance(user.get("Label"), str) and user["Label"]:
        return str(user["Label"])
    for item in localized:
        if isinstance(item.get("Label"), str) and item["Label"]:
            return str(item["Label"])
    return None


def get_definition(
    connection: Connection, path: str, params: Mapping[str, str] | None = None, strong: bool = False
) -> dict[str, Any]:
    """One metadata GET as a dict (empty for a body that is not an object); ``strong`` right after a write, whose
    definition the service may not serve yet from its cache."""
    headers = {"Consistency": "Strong"} if strong else None
    body = connection.client.get_json(path, params=params, headers=headers)
    return body if isinstance(body, dict) else {}


def strip_annotations(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A definition without its ``@odata.context`` and instance annotations, for outputs and for PUT bodies."""
    return {k: v for k, v in obj.items() if k == "@odata.type" or "@" not in k}


def column_ref(attribute: str) -> str:
    """The key segment of a column's definition: users name a column by logical name or by MetadataId."""
    return attribute if GUID.match(attribute) else f"LogicalName={quote_string(attribute.lower())}"


# -- tables ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableRef:
    """A table named by the user, resolved: its logical name and the path segment that addresses its definition."""

    logical_name: str
    metadata: TableMetadata

    @property
    def path(self) -> str:
        return f"EntityDefinitions(LogicalName={quote_string(self.logical_name)})"


def resolve_table(connection: Connection, ref: str, path: str = "$.table") -> TableRef:
    """A table by logical name, entity set name or MetadataId; unknown is an :class:`InputError` at ``path``.

    The cache answers names (one read per table per hour); a MetadataId costs one lean read to learn the name.
    """
    name = ref
    if GUID.match(ref):
        try:
            name = str(
                get_definition(connection, f"EntityDefinitions({ref.lower()})", {"$select": "LogicalName"})[
                    "LogicalName"
                ]
            )
        except (NotFoundError, KeyError):
            raise InputError([InputProblem(path, f"no table has the MetadataId {ref}")]) from None
    try:
        meta = connection.metadata.table(name, path=path)
    except (NotFoundError, InputError):
        raise InputError([InputProblem(path, f"no table has the logical name or entity set name {ref!r}")]) from None
    return TableRef(meta.logical_name, meta)


def _table_summary(row: Mapping[str, Any], details: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "logical_name": row.get("LogicalName"),
        "schema_name": row.get("SchemaName"),
        "entity_set_name": row.get("EntitySetName"),
        "display_name": label_text(row.get("DisplayName")),
        "is_custom": bool(row.get("IsCustomEntity")),
        "metadata_id": row.get("MetadataId"),
    }
    if details:
        out.update(
            {
                "description": label_text(row.get("Description")),
                "ownership_type": row.get("OwnershipType"),
                "is_activity": bool(row.get("IsActivity")),
                "is_intersect": bool(row.get("IsIntersect")),
                "is_valid_for_advanced_find": bool(row.get("IsValidForAdvancedFind")),
            }
        )
    return out


def _table_filter(include_custom: bool, top_level_only: bool) -> str | None:
    """Top-level tables are those users open on their own: not intersect tables, shown in Advanced Find."""
    parts = []
    if not include_custom:
        parts.append("IsCustomEntity eq false")
    if top_level_only:
        parts.append("IsIntersect eq false and IsValidForAdvancedFind eq true")
    return " and ".join(parts) or None


def table_rows(connection: Connection, select: Sequence[str], flt: str | None) -> list[dict[str, Any]]:
    """Every table's ``select`` properties in one lean read, sorted by logical name."""
    params = {"$select": ",".join(select)}
    if flt:
        params["$filter"] = flt
    rows = [r for r in get_definition(connection, "EntityDefinitions", params).get("value", []) if isinstance(r, dict)]
    return sorted(rows, key=lambda r: str(r.get("LogicalName")))


def list_entities(connection: Connection, inputs: ListEntities) -> dict[str, Any]:
    """Every table in one lean read (``$select`` of a handful of properties), sorted by logical name."""
    details = inputs.include_details
    select = _TABLE_LIST_SELECT + (_TABLE_DETAIL_SELECT if details else ())
    flt = _table_filter(inputs.include_custom, inputs.top_level_only)
    tables = [_table_summary(r, details) for r in table_rows(connection, select, flt)]
    return {"tables": tables, "count": len(tables)}


def list_entity_types(
    connection: Connection, inputs: ListEntityTypes, *, progress: Reporter | None = None
) -> dict[str, Any]:
    """Entity types cut into pages on our side: metadata queries have no server paging, so each call makes one lean
    read and returns the slice a page token points at (the token carries the query and the offset, bound to the host).

    ``progress`` hears that one read as one page (a fetch-all on a large organization waits for it); there is nothing
    between pages to cancel, so no token is taken.
    """
    size = inputs.page_size
    query = f"EntityDefinitions?{build_query_string({'$select': _TYPE_SELECT})}"
    token = inputs.page_token
    offset = 0
    if token:
        decoded = PageToken.decode(token, host=connection.host)
        offset = decoded.offset
        size = decoded.page_size or size
        query = decoded.path
    governor = connection.governor
    with Tracker("list_entity_types", progress, total=None, clock=governor.clock, throttle=governor) as tracker:
        rows = sorted(
            (r for r in get_definition(connection, query).get("value", []) if isinstance(r, dict)),
            key=lambda r: str(r.get("LogicalName")),
        )
        end = len(rows) if inputs.fetch_all else offset + size
        chunk = rows[offset:end]
        tracker.total = len(chunk)
        tracker.advance({"pages": 1}, done=len(chunk))
    types = [
        {
            "logical_name": r.get("LogicalName"),
            "entity_set_name": r.get("EntitySetName"),
            "object_type_code": r.get("ObjectTypeCode"),
            "display_name": label_text(r.get("DisplayName")),
        }
        for r in chunk
    ]
    more = end < len(rows)
    next_token = PageToken(connection.host, query, size, end).encode() if more else None
    return {"entity_types": types, "returned": len(types), "more_records": more, "next_page_token": next_token}


_EXPANDS = {
    "attributes": "Attributes",
    "keys": "Keys",
    "relationships": ("ManyToOneRelationships", "OneToManyRelationships", "ManyToManyRelationships"),
}


def get_entity_metadata(connection: Connection, inputs: GetEntityMetadata) -> dict[str, Any]:
    """One table's definition, by logical name, entity set name (``by``) or MetadataId, with chosen expansions."""
    ref = inputs.table
    if inputs.by == "entity_set_name" and not GUID.match(ref):
        found = get_definition(
            connection,
            "EntityDefinitions",
            {"$select": "LogicalName", "$filter": f"EntitySetName eq {quote_string(ref)}"},
        ).get("value", [])
        if len(found) != 1:
            raise InputError([InputProblem("$.table", f"no table has the entity set name {ref!r}")])
        ref = str(found[0]["LogicalName"])
    table = resolve_table(connection, ref)
    params: dict[str, str] = {}
    if inputs.select:
        params["$select"] = ",".join(inputs.select)
    navs: list[str] = []
    for item in inputs.expand or ():
        nav = _EXPANDS[item]
        navs += [nav] if isinstance(nav, str) else list(nav)
    if navs:
        params["$expand"] = ",".join(navs)
    body = get_definition(connection, table.path, params)
    return {"table": table.logical_name, "definition": strip_annotations(body)}


def _attribute_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    required = row.get("RequiredLevel")
    return {
        "logical_name": row.get("LogicalName"),
        "schema_name": row.get("SchemaName"),
        "type": row.get("AttributeType"),
        "display_name": label_text(row.get("DisplayName")),
        "required_level": required.get("Value") if isinstance(required, Mapping) else None,
        "is_custom": bool(row.get("IsCustomAttribute")),
        "is_primary_id": bool(row.get("IsPrimaryId")),
        "is_primary_name": bool(row.get("IsPrimaryName")),
        "is_valid_for_create": bool(row.get("IsValidForCreate")),
        "is_valid_for_update": bool(row.get("IsValidForUpdate")),
        "metadata_id": row.get("MetadataId"),
    }


def _chosen_tables(connection: Connection, inputs: GetEntitiesMetadata) -> list[dict[str, Any]]:
    """The tables :func:`iter_entities_metadata` reads: named ones, plus every custom one, narrowed by the filter."""
    select = ("LogicalName", "SchemaName", "EntitySetName", "DisplayName", "IsCustomEntity", "PrimaryIdAttribute")
    flt = _table_filter(True, inputs.top_level_only)
    rows = table_rows(connection, (*select, "PrimaryNameAttribute"), flt)
    wanted = [n.lower() for n in inputs.default_selected or ()]
    by_name = {str(r.get("LogicalName")).lower(): r for r in rows}
    by_set = {str(r.get("EntitySetName")).lower(): r for r in rows}
    chosen: dict[str, dict[str, Any]] = {}
    for name in wanted:
        row = by_name.get(name) or by_set.get(name)
        if row is not None:
            chosen[str(row["LogicalName"])] = row
    if inputs.include_all_custom:
        for row in rows:
            if row.get("IsCustomEntity"):
                chosen.setdefault(str(row["LogicalName"]), row)
    needle = (inputs.filter or "").strip().lower()
    if needle:
        chosen = {
            name: row
            for name, row in chosen.items()
            if needle in name.lower() or needle in (label_text(row.get("DisplayName")) or "").lower()
        }
    return sorted(chosen.values(), key=lambda r: str(r.get("LogicalName")))


def iter_entities_metadata(
    connection: Connection,
    inputs: GetEntitiesMetadata,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> Iterator[dict[str, Any]]:
    """Tables with their columns, one table's columns read (and held) at a time: memory stays flat however many.

    One lean read lists the tables; then each chosen table costs one ``Attributes?$select=...`` read. ``progress``
    hears each table read (of the tables chosen); once ``cancel`` is cancelled no further table is read, and once it
    is aborted a read cut short by :class:`KeyboardInterrupt` (the CLI's second Ctrl-C) ends the tables too.
    """
    yield from _read_tables(connection, _chosen_tables(connection, inputs), progress, cancel)


def _read_tables(
    connection: Connection,
    chosen: Sequence[Mapping[str, Any]],
    progress: Reporter | None,
    cancel: CancellationToken | None,
) -> Iterator[dict[str, Any]]:
    governor = connection.governor
    tracker = Tracker(
        "get_entities_metadata", progress, total=len(chosen), clock=governor.clock, throttle=governor, cancel=cancel
    )
    with tracker:
        for row in chosen:
            if cancel is not None and cancel.cancelled:
                return
            logical = str(row["LogicalName"])
            try:
                attrs = get_definition(
                    connection,
                    f"EntityDefinitions(LogicalName={quote_string(logical)})/Attributes",
                    {"$select": _ATTRIBUTE_SELECT},
                ).get("value", [])
            except KeyboardInterrupt:  # a second Ctrl-C mid-request: keep the tables read, as a fetch-all keeps rows
                if cancel is None or not cancel.aborted:
                    raise
                return
            yield {
                "logical_name": logical,
                "schema_name": row.get("SchemaName"),
                "entity_set_name": row.get("EntitySetName"),
                "display_name": label_text(row.get("DisplayName")),
                "is_custom": bool(row.get("IsCustomEntity")),
                "primary_id_attribute": row.get("PrimaryIdAttribute"),
                "primary_name_attribute": row.get("PrimaryNameAttribute"),
                "attributes": sorted(
                    (_attribute_summary(a) for a in attrs if isinstance(a, Mapping)),
                    key=lambda a: str(a["logical_name"]),
                ),
            }
            tracker.advance({"tables": 1})


def get_entities_metadata(
    connection: Connection,
    inputs: GetEntitiesMetadata,
    *,
    progress: Reporter | None = None,
    cancel: CancellationToken | None = None,
) -> dict[str, Any]:
    """The action's answer: :func:`iter_entities_metadata` collected (a platform output is one JSON document).

    A cancelled run returns the tables read so far and says how many chosen tables it did not read (``not_read``):
    on a large organization the tables already read cost minutes, and a caller may keep them."""
    chosen = _chosen_tables(connection, inputs)
    tables = list(_read_tables(connection, chosen, progress, cancel))
    out: dict[str, Any] = {"tables": tables, "count": len(tables)}
    if len(tables) < len(chosen):
        out["not_read"] = len(chosen) - len(tables)
    return out


# -- columns -----------------------------------------------------------------------------------------------------------
def _options_of(connection: Connection, table: TableRef, column: str, cast: str) -> list[dict[str, Any]]:
    """A choice column's options: a cast read filtered to the column (single-column casts cannot ``$expand``)."""
    body = get_definition(
        connection,
        f"{table.path}/Attributes/{CRM}{cast}",
        {
            "$select": "LogicalName",
            "$filter": f"LogicalName eq {quote_string(column)}",
            "$expand": "OptionSet($select=Options)",
        },
    )
    out = []
    for attr in body.get("value", []):
        for option in ((attr.get("OptionSet") or {}).get("Options")) or []:
            out.append({"value": option.get("Value"), "label": label_text(option.get("Label"))})
    return out


def get_attribute(connection: Connection, inputs: GetAttribute) -> dict[str, Any]:
    """One column's definition (every property of its type), with its options when it is a choice."""
    table = resolve_table(connection, inputs.table)
    params = {"$select": ",".join(inputs.select)} if inputs.select else None
    body = get_definition(connection, f"{table.path}/Attributes({column_ref(inputs.attribute)})", params)
    out: dict[str, Any] = {"table": table.logical_name, "attribute": strip_annotations(body)}
    odata_type = str(body.get("@odata.type", "")).lstrip("#").removeprefix(CRM)
    if odata_type in _OPTION_CASTS and body.get("LogicalName"):
        out["options"] = _options_of(connection, table, str(body["LogicalName"]), odata_type)
    return out


def _type_filter(types: Sequence[str]) -> str:
    return " or ".join(f"AttributeType eq {CRM}AttributeTypeCode'{t}'" for t in types)


def list_attributes(connection: Connection, inputs: ListAttributes) -> dict[str, Any]:
    """A table's columns with a lean ``$select``, optionally only some types or only custom ones."""
    table = resolve_table(connection, inputs.table)
    params = {"$select": ",".join(inputs.select) if inputs.select else _ATTRIBUTE_SELECT}
    parts = []
    if inputs.types:
        parts.append(f"({_type_filter(inputs.types)})")
    if inputs.custom_only:
        parts.append("IsCustomAttribute eq true")
    if parts:
        params["$filter"] = " and ".join(parts)
    rows = get_definition(connection, f"{table.path}/Attributes", params).get("value", [])
    attributes = [strip_annotations(r) for r in rows] if inputs.select else [_attribute_summary(r) for r in rows]
    attributes.sort(key=lambda a: str(a.get("logical_name") or a.get("LogicalName")))
    return {"table": table.logical_name, "attributes": attributes, "count": len(attributes)}


def query_attributes(connection: Connection, inputs: QueryAttributes) -> dict[str, Any]:
    """A raw metadata query over a table's columns: ``$select``, ``$filter``, ``$expand`` and a type cast as given."""
    table = resolve_table(connection, inputs.table)
    path = f"{table.path}/Attributes"
    if inputs.cast:
        path += f"/{CRM}{inputs.cast}"
    params: dict[str, str] = {}
    if inputs.select:
        params["$select"] = ",".join(inputs.select)
    if inputs.filter:
        params["$filter"] = inputs.filter
    if inputs.expand:
        params["$expand"] = inputs.expand
    rows = [strip_annotations(r) for r in get_definition(connection, path, params).get("value", [])]
    return {"table": table.logical_name, "attributes": rows, "count": len(rows)}


# -- alternate keys --------------------------------------------------------------------------------------------------
def _key_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "schema_name": row.get("SchemaName"),
        "logical_name": row.get("LogicalName"),
        "columns": list(row.get("KeyAttributes") or []),
        "status": row.get("EntityKeyIndexStatus"),
        "display_name": label_text(row.get("DisplayName")),
        "metadata_id": row.get("MetadataId"),
    }


def list_alternate_keys(connection: Connection, inputs: ListAlternateKeys) -> dict[str, Any]:
    """A table's alternate keys with their index status (only ``Active`` keys can address rows)."""
    table = resolve_table(connection, inputs.table)
    rows = get_definition(connection, f"{table.path}/Keys", {"$select": _KEY_SELECT}).get("value", [])
    keys = sorted((_key_summary(r) for r in rows), key=lambda k: str(k["schema_name"]))
    return {"table": table.logical_name, "keys": keys, "count": len(keys)}


def read_key(connection: Connection, table: TableRef, key_id: str) -> dict[str, Any]:
    """One key's summary, read with ``Consistency: Strong``: its index status is what changes after a create."""
    return _key_summary(
        get_definition(connection, f"{table.path}/Keys({key_id})", {"$select": _KEY_SELECT}, strong=True)
    )


# -- builder data sources ----------------------------------------------------------------------------------------------
def _column_options(connection: Connection, table: TableRef, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = get_definition(connection, f"{table.path}/Attributes", {"$select": _ATTRIBUTE_SELECT}).get("value", [])
    lengths: dict[str, Any] = {}
    for cast in _TEXT_CASTS:
        for row in get_definition(
            connection, f"{table.path}/Attributes/{CRM}{cast}", {"$select": "LogicalName,MaxLength"}
        ).get("value", []):
            lengths[str(row.get("LogicalName"))] = row.get("MaxLength")
    options: dict[str, list[dict[str, Any]]] = {}
    for cast in _OPTION_CASTS:
        body = get_definition(
            connection,
            f"{table.path}/Attributes/{CRM}{cast}",
            {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
        )
        for row in body.get("value", []):
            options[str(row.get("LogicalName"))] = [
                {"value": o.get("Value"), "label": label_text(o.get("Label"))}
                for o in ((row.get("OptionSet") or {}).get("Options") or [])
            ]
    wanted = {str(t) for t in params.get("types") or ()}
    out = []
    for row in rows:
        if row.get("AttributeOf") or (wanted and row.get("AttributeType") not in wanted):
            continue  # companion columns (money _base, lookup names) are not something a builder maps
        if params.get("writable_only") and not (row.get("IsValidForCreate") or row.get("IsValidForUpdate")):
            continue
        name = str(row.get("LogicalName"))
        shown = label_text(row.get("DisplayName")) or name
        required = row.get("RequiredLevel")
        item: dict[str, Any] = {
            "value": name,
            "label": f"{shown} ({name})",
            "display_name": shown,
            "type": row.get("AttributeType"),
            "required_level": required.get("Value") if isinstance(required, Mapping) else None,
        }
        if name in lengths:
            item["max_length"] = lengths[name]
        if name in options:
            item["options"] = options[name]
        out.append(item)
    return sorted(out, key=lambda i: str(i["value"]))


def data_source(name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]] | None:
    """Options for builder dropdowns: ``tables``, ``columns`` of a table, ``alternate_keys`` of a table."""
    if name == "tables":
        shown = ListEntities(
            include_custom=bool(params.get("include_custom", True)),
            top_level_only=bool(params.get("top_level_only", False)),
        )
        listed = list_entities(connection, shown)["tables"]
        return [
            {
                "value": t["logical_name"],
                "label": f"{t['display_name'] or t['logical_name']} ({t['logical_name']})",
                "display_name": t["display_name"] or t["logical_name"],
                "entity_set_name": t["entity_set_name"],
                "is_custom": t["is_custom"],
            }
            for t in listed
        ]
    if name == "columns":
        return _column_options(connection, resolve_table(connection, str(params["table"])), params)
    if name == "alternate_keys":
        keys = list_alternate_keys(connection, ListAlternateKeys(table=str(params["table"])))["keys"]
        return [
            {
                "value": k["schema_name"],
                "label": f"{k['display_name'] or k['schema_name']} ({', '.join(k['columns'])})",
                "columns": k["columns"],
                "status": k["status"],
            }
            for k in keys
        ]
    return None
