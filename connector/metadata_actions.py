"""Table, column and alternate-key metadata: reads for builders and reverse-ETL, writes for admins' workflows.

Why a module of its own rather than more of :mod:`connector.metadata`: that cache holds the little the record actions
need, kept for an hour; these functions read and write whole definitions on demand and never keep them. They share one
rule with it: every metadata write here calls :meth:`MetadataCache.invalidate` for the tables it touched, so the next
record action reads the new definition with ``Consistency: Strong`` instead of failing on a column it cannot see.

Large organisations have thousands of tables, and a discovery that asks for ``EntityDefinitions?$expand=Attributes``
holds every column of every table in one response (peers run out of memory there). So list reads ``$select`` a few
properties only, and :func:`iter_entities_metadata` reads one table's columns at a time.

Columns may be given as a full AttributeMetadata body (as Microsoft documents it) or in a short typed form that
:func:`expand_attribute` turns into that body; a lookup becomes a one-to-many relationship, because Dataverse creates
lookup columns only through ``RelationshipDefinitions``. Every input problem found here is reported before any write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.errors import FatalApiError, InputError, InputProblem, KeyActivationError, NotFoundError
from connector.odata import PageToken, build_query_string, entity_id, quote_string

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata

__all__ = [
    "ATTRIBUTE_TYPES",
    "METADATA_ACTIONS",
    "TableRef",
    "create_alternate_key",
    "create_attribute",
    "data_source",
    "expand_attribute",
    "get_attribute",
    "get_entities_metadata",
    "get_entity_metadata",
    "input_problems",
    "iter_entities_metadata",
    "list_alternate_keys",
    "list_attributes",
    "list_entities",
    "list_entity_types",
    "query_attributes",
    "resolve_table",
    "update_attribute",
    "wait_until_active",
]

METADATA_ACTIONS = frozenset(
    {
        "list_entities",
        "list_entity_types",
        "get_entity_metadata",
        "get_entities_metadata",
        "create_attribute",
        "get_attribute",
        "update_attribute",
        "list_attributes",
        "query_attributes",
        "create_alternate_key",
        "list_alternate_keys",
    }
)

CRM = "Microsoft.Dynamics.CRM."
LANGUAGE = 1033
#: A schema name carries its publisher's customization prefix (``new_``, ``contoso_``): Dataverse refuses others.
SCHEMA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,7}_[A-Za-z0-9_]+$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: Short type -> (``@odata.type`` without namespace, AttributeType, AttributeTypeName).
ATTRIBUTE_TYPES: dict[str, tuple[str, str, str]] = {
    "string": ("StringAttributeMetadata", "String", "StringType"),
    "memo": ("MemoAttributeMetadata", "Memo", "MemoType"),
    "integer": ("IntegerAttributeMetadata", "Integer", "IntegerType"),
    "decimal": ("DecimalAttributeMetadata", "Decimal", "DecimalType"),
    "money": ("MoneyAttributeMetadata", "Money", "MoneyType"),
    "boolean": ("BooleanAttributeMetadata", "Boolean", "BooleanType"),
    "datetime": ("DateTimeAttributeMetadata", "DateTime", "DateTimeType"),
    "picklist": ("PicklistAttributeMetadata", "Picklist", "PicklistType"),
    "lookup": ("LookupAttributeMetadata", "Lookup", "LookupType"),
}
#: Full bodies may use any type Dataverse creates through ``Attributes`` (lookups go through relationships).
_FULL_BODY_TYPES = {
    "StringAttributeMetadata",
    "MemoAttributeMetadata",
    "IntegerAttributeMetadata",
    "BigIntAttributeMetadata",
    "DecimalAttributeMetadata",
    "DoubleAttributeMetadata",
    "MoneyAttributeMetadata",
    "BooleanAttributeMetadata",
    "DateTimeAttributeMetadata",
    "PicklistAttributeMetadata",
    "MultiSelectPicklistAttributeMetadata",
    "FileAttributeMetadata",
    "ImageAttributeMetadata",
}
_REQUIRED = {"none": "None", "recommended": "Recommended", "required": "ApplicationRequired"}
#: Column types a key may use (reference section 3.3).
_KEY_TYPES = {"Decimal", "Integer", "String", "DateTime", "Lookup", "Customer", "Owner", "Picklist"}
_KEY_STATUSES = ("Pending", "InProgress", "Active", "Failed")

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
_CASCADE = {
    "Assign": "NoCascade",
    "Delete": "RemoveLink",
    "Merge": "NoCascade",
    "Reparent": "NoCascade",
    "Share": "NoCascade",
    "Unshare": "NoCascade",
}


# -- small helpers ---------------------------------------------------------------------------------------------------
def label(text: str, language: int = LANGUAGE) -> dict[str, Any]:
    """A Label as Dataverse wants it on create and update (``UserLocalizedLabel`` is read-only)."""
    return {
        "@odata.type": CRM + "Label",
        "LocalizedLabels": [{"@odata.type": CRM + "LocalizedLabel", "Label": text, "LanguageCode": language}],
    }


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


def _client(connection: Connection) -> Any:
    return connection.client


def _get(connection: Connection, path: str, params: Mapping[str, str] | None = None, strong: bool = False) -> Any:
    headers = {"Consistency": "Strong"} if strong else None
    body = _client(connection).get_json(path, params=params, headers=headers)
    return body if isinstance(body, dict) else {}


def _solution_headers(inputs: Mapping[str, Any]) -> dict[str, str]:
    solution = inputs.get("solution")
    return {"MSCRM.SolutionUniqueName": str(solution)} if solution else {}


def _strip(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A definition without its ``@odata.context`` and instance annotations, for outputs and for PUT bodies."""
    return {k: v for k, v in obj.items() if k == "@odata.type" or "@" not in k}


def _column_ref(attribute: str) -> str:
    return attribute if _GUID.match(attribute) else f"LogicalName={quote_string(attribute.lower())}"


# -- tables ----------------------------------------------------------------------------------------------------------
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
    if _GUID.match(ref):
        try:
            name = str(_get(connection, f"EntityDefinitions({ref.lower()})", {"$select": "LogicalName"})["LogicalName"])
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


def _table_rows(connection: Connection, select: Sequence[str], flt: str | None) -> list[dict[str, Any]]:
    params = {"$select": ",".join(select)}
    if flt:
        params["$filter"] = flt
    rows = [r for r in _get(connection, "EntityDefinitions", params).get("value", []) if isinstance(r, dict)]
    return sorted(rows, key=lambda r: str(r.get("LogicalName")))


def list_entities(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Every table in one lean read (``$select`` of a handful of properties), sorted by logical name."""
    details = bool(inputs.get("include_details", False))
    select = _TABLE_LIST_SELECT + (_TABLE_DETAIL_SELECT if details else ())
    flt = _table_filter(bool(inputs.get("include_custom", True)), bool(inputs.get("top_level_only", False)))
    tables = [_table_summary(r, details) for r in _table_rows(connection, select, flt)]
    return {"tables": tables, "count": len(tables)}


def list_entity_types(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Entity types cut into pages on our side: metadata queries have no server paging, so each call makes one lean
    read and returns the slice a page token points at (the token carries the query and the offset, bound to the host).
    """
    size = int(inputs.get("page_size") or 5000)
    query = f"EntityDefinitions?{build_query_string({'$select': _TYPE_SELECT})}"
    token = inputs.get("page_token")
    offset = 0
    if token:
        decoded = PageToken.decode(str(token), host=connection.host)
        offset = decoded.offset
        size = decoded.page_size or size
        query = decoded.path
    rows = sorted(
        (r for r in _get(connection, query).get("value", []) if isinstance(r, dict)),
        key=lambda r: str(r.get("LogicalName")),
    )
    end = len(rows) if inputs.get("fetch_all") else offset + size
    chunk = rows[offset:end]
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


def get_entity_metadata(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """One table's definition, by logical name, entity set name (``by``) or MetadataId, with chosen expansions."""
    ref = str(inputs["table"])
    if inputs.get("by") == "entity_set_name" and not _GUID.match(ref):
        found = _get(
            connection,
            "EntityDefinitions",
            {"$select": "LogicalName", "$filter": f"EntitySetName eq {quote_string(ref)}"},
        ).get("value", [])
        if len(found) != 1:
            raise InputError([InputProblem("$.table", f"no table has the entity set name {ref!r}")])
        ref = str(found[0]["LogicalName"])
    table = resolve_table(connection, ref)
    params: dict[str, str] = {}
    if inputs.get("select"):
        params["$select"] = ",".join(inputs["select"])
    navs: list[str] = []
    for item in inputs.get("expand") or ():
        nav = _EXPANDS[str(item)]
        navs += [nav] if isinstance(nav, str) else list(nav)
    if navs:
        params["$expand"] = ",".join(navs)
    body = _get(connection, table.path, params)
    return {"table": table.logical_name, "definition": _strip(body)}


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


def _chosen_tables(connection: Connection, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tables :func:`iter_entities_metadata` reads: named ones, plus every custom one, narrowed by the filter."""
    select = ("LogicalName", "SchemaName", "EntitySetName", "DisplayName", "IsCustomEntity", "PrimaryIdAttribute")
    flt = _table_filter(True, bool(inputs.get("top_level_only", False)))
    rows = _table_rows(connection, (*select, "PrimaryNameAttribute"), flt)
    wanted = [str(n).lower() for n in inputs.get("default_selected") or ()]
    by_name = {str(r.get("LogicalName")).lower(): r for r in rows}
    by_set = {str(r.get("EntitySetName")).lower(): r for r in rows}
    chosen: dict[str, dict[str, Any]] = {}
    for name in wanted:
        row = by_name.get(name) or by_set.get(name)
        if row is not None:
            chosen[str(row["LogicalName"])] = row
    if inputs.get("include_all_custom", True):
        for row in rows:
            if row.get("IsCustomEntity"):
                chosen.setdefault(str(row["LogicalName"]), row)
    needle = str(inputs.get("filter") or "").strip().lower()
    if needle:
        chosen = {
            name: row
            for name, row in chosen.items()
            if needle in name.lower() or needle in (label_text(row.get("DisplayName")) or "").lower()
        }
    return sorted(chosen.values(), key=lambda r: str(r.get("LogicalName")))


def iter_entities_metadata(connection: Connection, inputs: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Tables with their columns, one table's columns read (and held) at a time: memory stays flat however many.

    One lean read lists the tables; then each chosen table costs one ``Attributes?$select=...`` read.
    """
    for row in _chosen_tables(connection, inputs):
        logical = str(row["LogicalName"])
        attrs = _get(
            connection,
            f"EntityDefinitions(LogicalName={quote_string(logical)})/Attributes",
            {"$select": _ATTRIBUTE_SELECT},
        ).get("value", [])
        yield {
            "logical_name": logical,
            "schema_name": row.get("SchemaName"),
            "entity_set_name": row.get("EntitySetName"),
            "display_name": label_text(row.get("DisplayName")),
            "is_custom": bool(row.get("IsCustomEntity")),
            "primary_id_attribute": row.get("PrimaryIdAttribute"),
            "primary_name_attribute": row.get("PrimaryNameAttribute"),
            "attributes": sorted(
                (_attribute_summary(a) for a in attrs if isinstance(a, Mapping)), key=lambda a: str(a["logical_name"])
            ),
        }


def get_entities_metadata(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The action's answer: :func:`iter_entities_metadata` collected (a platform output is one JSON document)."""
    tables = list(iter_entities_metadata(connection, inputs))
    return {"tables": tables, "count": len(tables)}


# -- columns ---------------------------------------------------------------------------------------------------------
def _options(spec: Sequence[Any]) -> list[dict[str, Any]]:
    """Picklist options from strings (values numbered from 100,000,000, the default publisher's range) or objects."""
    out = []
    for n, item in enumerate(spec):
        if isinstance(item, Mapping):
            value = item.get("value", 100_000_000 + n)
            text = str(item["label"])
        else:
            value, text = 100_000_000 + n, str(item)
        out.append({"Value": int(value), "Label": label(text)})
    return out


def expand_attribute(
    short: Mapping[str, Any], *, referencing: str | None = None, target_id: str | None = None
) -> dict[str, Any]:
    """The full AttributeMetadata body for a short typed form (a OneToManyRelationshipMetadata body for a lookup).

    ``referencing`` (the table getting the column) and ``target_id`` (the target's primary id column) are needed for a
    lookup only.
    """
    kind = str(short["type"])
    odata_type, type_code, type_name = ATTRIBUTE_TYPES[kind]
    schema = str(short["schema_name"])
    language = int(short.get("language_code", LANGUAGE))
    body: dict[str, Any] = {
        "@odata.type": CRM + odata_type,
        "AttributeType": type_code,
        "AttributeTypeName": {"Value": type_name},
        "SchemaName": schema,
        "RequiredLevel": {
            "Value": _REQUIRED[str(short.get("required", "none"))],
            "CanBeChanged": True,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "DisplayName": label(str(short["label"]), language),
    }
    if short.get("description"):
        body["Description"] = label(str(short["description"]), language)
    if kind == "string":
        body["MaxLength"] = int(short.get("max_length", 100))
        body["FormatName"] = {"Value": str(short.get("format", "Text"))}
    elif kind == "memo":
        body["MaxLength"] = int(short.get("max_length", 2000))
        body["Format"] = "TextArea"
    elif kind == "integer":
        body["MinValue"] = int(short.get("min_value", -2_147_483_648))
        body["MaxValue"] = int(short.get("max_value", 2_147_483_647))
        body["Format"] = "None"
    elif kind in ("decimal", "money"):
        limit = 100_000_000_000 if kind == "decimal" else 922_337_203_685_477
        body["MinValue"] = short.get("min_value", -limit)
        body["MaxValue"] = short.get("max_value", limit)
        if kind == "money" and "precision" not in short:
            body["PrecisionSource"] = 2  # the transaction currency's precision, as in Microsoft's new_Balance example
        else:
            body["Precision"] = int(short.get("precision", 2))
            if kind == "money":
                body["PrecisionSource"] = 0  # use Precision itself
    elif kind == "boolean":
        body["DefaultValue"] = bool(short.get("default", False))
        body["OptionSet"] = {
            "@odata.type": CRM + "BooleanOptionSetMetadata",
            "OptionSetType": "Boolean",
            "TrueOption": {"Value": 1, "Label": label(str(short.get("true_label", "Yes")), language)},
            "FalseOption": {"Value": 0, "Label": label(str(short.get("false_label", "No")), language)},
        }
    elif kind == "datetime":
        date_only = bool(short.get("date_only", False))
        body["Format"] = "DateOnly" if date_only else "DateAndTime"
        body["DateTimeBehavior"] = {"Value": str(short.get("behavior", "DateOnly" if date_only else "UserLocal"))}
    elif kind == "picklist":
        body["OptionSet"] = {
            "@odata.type": CRM + "OptionSetMetadata",
            "IsGlobal": False,
            "OptionSetType": "Picklist",
            "Options": _options(short.get("options") or ()),
        }
    elif kind == "lookup":
        target = str(short["target"]).lower()
        prefix = schema.split("_", 1)[0]
        rel = short.get("relationship_schema_name") or f"{prefix}_{target}_{referencing}_{schema.lower()}"
        return {
            "@odata.type": CRM + "OneToManyRelationshipMetadata",
            "SchemaName": str(rel),
            "ReferencedEntity": target,
            "ReferencedAttribute": target_id,
            "ReferencingEntity": referencing,
            "CascadeConfiguration": dict(_CASCADE),
            "Lookup": body,
        }
    return body


def _body_problems(body: Mapping[str, Any], path: str) -> list[InputProblem]:
    """What Dataverse would refuse in a full body, found before sending it."""
    problems = []
    odata_type = str(body.get("@odata.type", "")).lstrip("#").removeprefix(CRM)
    if odata_type == "LookupAttributeMetadata":
        problems.append(
            InputProblem(
                f"{path}.@odata.type",
                "lookup columns are created with their relationship: use the short form "
                '{"type": "lookup", "target": "<table>", ...}',
            )
        )
    elif odata_type not in _FULL_BODY_TYPES:
        known = ", ".join(sorted(_FULL_BODY_TYPES))
        problems.append(
            InputProblem(f"{path}.@odata.type", f"unknown attribute type {odata_type!r}; use one of {known}")
        )
    schema = body.get("SchemaName")
    if not isinstance(schema, str) or not SCHEMA_NAME.match(schema):
        problems.append(
            InputProblem(
                f"{path}.SchemaName",
                f"{schema!r} needs your publisher's prefix, such as new_Balance (prefix_Name, letters, digits, _)",
            )
        )
    if label_text(body.get("DisplayName")) is None:
        problems.append(
            InputProblem(
                f"{path}.DisplayName",
                'a DisplayName label is required: {"LocalizedLabels": [{"Label": ..., "LanguageCode": 1033}]}',
            )
        )
    return problems


def _is_short(attribute: Mapping[str, Any]) -> bool:
    return "type" in attribute and "@odata.type" not in attribute


def create_attribute(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """POST the column (or, for a lookup, its relationship) and forget the tables it changes in the cache."""
    table = resolve_table(connection, str(inputs["table"]))
    spec: Mapping[str, Any] = inputs["attribute"]
    headers = _solution_headers(inputs)
    client = _client(connection)
    touched = [table.logical_name]
    relationship = None
    try:
        if _is_short(spec) and spec["type"] == "lookup":
            target = resolve_table(connection, str(spec["target"]), "$.attribute.target")
            body = expand_attribute(
                {**spec, "target": target.logical_name},
                referencing=table.logical_name,
                target_id=target.metadata.primary_id,
            )
            touched.append(target.logical_name)
            response = client.request("POST", "RelationshipDefinitions", json=body, headers=headers)
            relationship = {"schema_name": body["SchemaName"], "metadata_id": entity_id(response)}
            schema = str(body["Lookup"]["SchemaName"])
            # the answer names the relationship; the new column's own id takes one strong read
            column = _get(
                connection,
                f"{table.path}/Attributes({_column_ref(schema)})",
                {"$select": "LogicalName"},
                strong=True,
            )
            attribute_id = column.get("MetadataId")
        else:
            body = expand_attribute(spec) if _is_short(spec) else dict(spec)
            response = client.request("POST", f"{table.path}/Attributes", json=body, headers=headers)
            schema = str(body["SchemaName"])
            attribute_id = entity_id(response)
    finally:
        # even a failed write may have half-applied on the server; the cache must not keep answering the old shape
        for name in touched:
            connection.metadata.invalidate(name)
    out: dict[str, Any] = {
        "table": table.logical_name,
        "logical_name": schema.lower(),
        "schema_name": schema,
        "metadata_id": attribute_id,
    }
    if relationship is not None:
        out["relationship"] = relationship
    return out


def _options_of(connection: Connection, table: TableRef, column: str, cast: str) -> list[dict[str, Any]]:
    """A choice column's options: a cast read filtered to the column (single-column casts cannot ``$expand``)."""
    body = _get(
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


def get_attribute(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """One column's definition (every property of its type), with its options when it is a choice."""
    table = resolve_table(connection, str(inputs["table"]))
    params = {"$select": ",".join(inputs["select"])} if inputs.get("select") else None
    body = _get(connection, f"{table.path}/Attributes({_column_ref(str(inputs['attribute']))})", params)
    out: dict[str, Any] = {"table": table.logical_name, "attribute": _strip(body)}
    odata_type = str(body.get("@odata.type", "")).lstrip("#").removeprefix(CRM)
    if odata_type in _OPTION_CASTS and body.get("LogicalName"):
        out["options"] = _options_of(connection, table, str(body["LogicalName"]), odata_type)
    return out


def _merge_label(current: Any, text: str, language: int) -> dict[str, Any]:
    """The current label with one language's text replaced (or added); other languages are kept as they are."""
    kept = [
        {"@odata.type": CRM + "LocalizedLabel", "Label": item.get("Label"), "LanguageCode": item.get("LanguageCode")}
        for item in ((current or {}).get("LocalizedLabels") or [])
        if isinstance(item, Mapping) and item.get("LanguageCode") != language
    ]
    kept.append({"@odata.type": CRM + "LocalizedLabel", "Label": text, "LanguageCode": language})
    return {"@odata.type": CRM + "Label", "LocalizedLabels": kept}


def _clean_label(value: Any) -> Any:
    """A read label made writable: ``UserLocalizedLabel`` and per-label metadata dropped."""
    if not isinstance(value, Mapping) or "LocalizedLabels" not in value:
        return value
    return {
        "@odata.type": CRM + "Label",
        "LocalizedLabels": [
            {"@odata.type": CRM + "LocalizedLabel", "Label": i.get("Label"), "LanguageCode": i.get("LanguageCode")}
            for i in value.get("LocalizedLabels") or []
            if isinstance(i, Mapping)
        ],
    }


def update_attribute(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Read the current definition, merge the changes, PUT it whole (metadata has no PATCH), publish if labels moved.

    ``MSCRM.MergeLabels: true`` is sent unless ``merge_labels`` is false: without it Dataverse drops every language
    not in the body.
    """
    table = resolve_table(connection, str(inputs["table"]))
    column_path = f"{table.path}/Attributes({_column_ref(str(inputs['attribute']))})"
    current = _strip(_get(connection, column_path, strong=True))
    language = int(inputs.get("language_code", LANGUAGE))
    body: dict[str, Any] = {k: v for k, v in current.items() if k not in ("MetadataId",)}
    for name in ("DisplayName", "Description"):
        if name in body:
            body[name] = _clean_label(body[name])
    body["@odata.type"] = str(current.get("@odata.type", "")).lstrip("#")
    changed_labels = False
    for key, prop in (("label", "DisplayName"), ("description", "Description")):
        if key in inputs:
            old = label_text(current.get(prop), language)
            body[prop] = _merge_label(current.get(prop), str(inputs[key]), language)
            changed_labels = changed_labels or old != inputs[key]
    if "required" in inputs:
        body["RequiredLevel"] = {**(current.get("RequiredLevel") or {}), "Value": _REQUIRED[str(inputs["required"])]}
    if "max_length" in inputs:
        body["MaxLength"] = int(inputs["max_length"])
    for key, value in (inputs.get("changes") or {}).items():
        if key in ("DisplayName", "Description") and value != current.get(key):
            changed_labels = True
        body[key] = value
    headers = _solution_headers(inputs)
    headers["MSCRM.MergeLabels"] = "true" if inputs.get("merge_labels", True) else "false"
    try:
        _client(connection).request("PUT", column_path, json=body, headers=headers)
    finally:
        connection.metadata.invalidate(table.logical_name)
    published = False
    if changed_labels and inputs.get("publish", True):
        xml = f"<importexportxml><entities><entity>{table.logical_name}</entity></entities></importexportxml>"
        _client(connection).request("POST", "PublishXml", json={"ParameterXml": xml})
        published = True
    return {
        "table": table.logical_name,
        "logical_name": current.get("LogicalName"),
        "metadata_id": current.get("MetadataId"),
        "labels_changed": changed_labels,
        "published": published,
    }


def _type_filter(types: Sequence[str]) -> str:
    return " or ".join(f"AttributeType eq {CRM}AttributeTypeCode'{t}'" for t in types)


def list_attributes(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A table's columns with a lean ``$select``, optionally only some types or only custom ones."""
    table = resolve_table(connection, str(inputs["table"]))
    params = {"$select": ",".join(inputs["select"]) if inputs.get("select") else _ATTRIBUTE_SELECT}
    parts = []
    if inputs.get("types"):
        parts.append(f"({_type_filter(inputs['types'])})")
    if inputs.get("custom_only"):
        parts.append("IsCustomAttribute eq true")
    if parts:
        params["$filter"] = " and ".join(parts)
    rows = _get(connection, f"{table.path}/Attributes", params).get("value", [])
    attributes = [_strip(r) for r in rows] if inputs.get("select") else [_attribute_summary(r) for r in rows]
    attributes.sort(key=lambda a: str(a.get("logical_name") or a.get("LogicalName")))
    return {"table": table.logical_name, "attributes": attributes, "count": len(attributes)}


def query_attributes(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A raw metadata query over a table's columns: ``$select``, ``$filter``, ``$expand`` and a type cast as given."""
    table = resolve_table(connection, str(inputs["table"]))
    path = f"{table.path}/Attributes"
    if inputs.get("cast"):
        path += f"/{CRM}{inputs['cast']}"
    params: dict[str, str] = {}
    if inputs.get("select"):
        params["$select"] = ",".join(inputs["select"])
    if inputs.get("filter"):
        params["$filter"] = str(inputs["filter"])
    if inputs.get("expand"):
        params["$expand"] = str(inputs["expand"])
    rows = [_strip(r) for r in _get(connection, path, params).get("value", [])]
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


def list_alternate_keys(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A table's alternate keys with their index status (only ``Active`` keys can address rows)."""
    table = resolve_table(connection, str(inputs["table"]))
    rows = _get(connection, f"{table.path}/Keys", {"$select": _KEY_SELECT}).get("value", [])
    keys = sorted((_key_summary(r) for r in rows), key=lambda k: str(k["schema_name"]))
    return {"table": table.logical_name, "keys": keys, "count": len(keys)}


def wait_until_active(
    connection: Connection, table: TableRef, key_id: str, *, timeout_s: float, poll_s: float
) -> tuple[dict[str, Any], bool]:
    """Poll a key until its index is ``Active`` (or ``Failed``) on the connection's clock; ``(key, timed_out)``.

    The clock is the connection's, so tests inject one and never sleep; each poll asks with ``Consistency: Strong``
    because the status is what changed.
    """
    clock = connection.clock
    deadline = clock.monotonic() + timeout_s
    while True:
        row = _key_summary(_get(connection, f"{table.path}/Keys({key_id})", {"$select": _KEY_SELECT}, strong=True))
        if row["status"] == "Failed":
            connection.metadata.invalidate(table.logical_name)
            raise KeyActivationError(
                f"the index of alternate key {row['schema_name']!r} on {table.logical_name!r} failed: its columns "
                f"({', '.join(row['columns'])}) hold duplicate values; remove the duplicates, then run the "
                "ReactivateEntityKey action (or delete and re-create the key)"
            )
        if row["status"] == "Active":
            connection.metadata.invalidate(table.logical_name)  # the cache may still hold the key as Pending
            return row, False
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            return row, True
        clock.sleep(min(poll_s, remaining))


def create_alternate_key(connection: Connection, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """POST the key definition; with ``wait_until_active``, poll its index status until Active or the timeout."""
    table = resolve_table(connection, str(inputs["table"]))
    schema = str(inputs["schema_name"])
    body = {
        "@odata.type": CRM + "EntityKeyMetadata",
        "SchemaName": schema,
        "DisplayName": label(str(inputs.get("label") or schema)),
        "KeyAttributes": [str(c).lower() for c in inputs["columns"]],
    }
    try:
        response = _client(connection).request(
            "POST", f"{table.path}/Keys", json=body, headers=_solution_headers(inputs)
        )
    finally:
        connection.metadata.invalidate(table.logical_name)
    key_id = entity_id(response)
    if key_id is None:
        listed = list_alternate_keys(connection, {"table": table.logical_name})["keys"]
        key_id = next((k["metadata_id"] for k in listed if str(k["schema_name"]).lower() == schema.lower()), None)
    if key_id is None:
        raise FatalApiError(f"Dataverse accepted key {schema!r} but does not list it on {table.logical_name!r}")
    if inputs.get("wait_until_active"):
        key, timed_out = wait_until_active(
            connection,
            table,
            str(key_id),
            timeout_s=float(inputs.get("timeout_s", 300)),
            poll_s=float(inputs.get("poll_interval_s", 5)),
        )
    else:
        key = _key_summary(_get(connection, f"{table.path}/Keys({key_id})", {"$select": _KEY_SELECT}, strong=True))
        timed_out = False
    return {"table": table.logical_name, "key": key, "active": key["status"] == "Active", "timed_out": timed_out}


# -- phase-two validation --------------------------------------------------------------------------------------------
def input_problems(action_id: str, inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Problems the schema cannot see, found with metadata reads only: unknown tables and columns, bad full bodies,
    key columns of a type a key cannot use, a column that already exists, a page token from elsewhere."""
    if action_id not in METADATA_ACTIONS:
        return []
    problems: list[InputProblem] = []
    table: TableRef | None = None
    if "table" in inputs and not (action_id == "get_entity_metadata" and inputs.get("by") == "entity_set_name"):
        try:
            table = resolve_table(connection, str(inputs["table"]))
        except InputError as exc:
            return list(exc.problems)
    if action_id == "list_entity_types" and inputs.get("page_token"):
        try:
            PageToken.decode(str(inputs["page_token"]), host=connection.host)
        except InputError as exc:
            problems += exc.problems
    if action_id == "get_entities_metadata" and inputs.get("default_selected"):
        rows = _table_rows(connection, ("LogicalName", "EntitySetName"), None)
        known = {str(r.get("LogicalName")).lower() for r in rows} | {str(r.get("EntitySetName")).lower() for r in rows}
        for n, name in enumerate(inputs["default_selected"]):
            if str(name).lower() not in known:
                problems.append(InputProblem(f"$.default_selected[{n}]", f"no table is named {name!r}"))
    if table is None:
        return problems
    meta = table.metadata
    if action_id in ("get_attribute", "update_attribute"):
        column = str(inputs["attribute"])
        if not _GUID.match(column) and column.lower() not in meta.attributes:
            meta = connection.metadata.table(table.logical_name, refresh=True)
            if column.lower() not in meta.attributes:
                problems.append(
                    InputProblem(
                        "$.attribute",
                        f"table {table.logical_name!r} has no column {column!r}; list_attributes shows its columns",
                    )
                )
    if action_id == "create_attribute":
        spec = inputs["attribute"]
        if not _is_short(spec):
            problems += _body_problems(spec, "$.attribute")
        elif spec["type"] == "string" and int(spec.get("max_length", 100)) > 4000:
            problems.append(
                InputProblem("$.attribute.max_length", "a string column holds at most 4,000 characters; use memo")
            )
        elif spec["type"] == "lookup":
            try:
                resolve_table(connection, str(spec["target"]), "$.attribute.target")
            except InputError as exc:
                problems += exc.problems
        schema = spec.get("schema_name") if _is_short(spec) else spec.get("SchemaName")
        if isinstance(schema, str) and schema.lower() in meta.attributes:
            problems.append(
                InputProblem("$.attribute", f"table {table.logical_name!r} already has a column {schema.lower()!r}")
            )
    if action_id == "create_alternate_key":
        for n, column in enumerate(inputs["columns"]):
            attribute = meta.attributes.get(str(column).lower())
            if attribute is None:
                problems.append(
                    InputProblem(f"$.columns[{n}]", f"table {table.logical_name!r} has no column {column!r}")
                )
            elif attribute.type not in _KEY_TYPES:
                problems.append(
                    InputProblem(
                        f"$.columns[{n}]",
                        f"{column!r} is a {attribute.type} column; key columns must be Decimal, Integer, String, "
                        "DateTime, Lookup or Picklist",
                    )
                )
        if len(meta.keys) >= 10:
            problems.append(InputProblem("$.table", f"table {table.logical_name!r} already has 10 keys, the maximum"))
        if any(k.schema_name.lower() == str(inputs["schema_name"]).lower() for k in meta.keys):
            problems.append(InputProblem("$.schema_name", f"a key named {inputs['schema_name']!r} already exists"))
    return problems


# -- builder data sources --------------------------------------------------------------------------------------------
def _column_options(connection: Connection, table: TableRef, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = _get(connection, f"{table.path}/Attributes", {"$select": _ATTRIBUTE_SELECT}).get("value", [])
    lengths: dict[str, Any] = {}
    for cast in _TEXT_CASTS:
        for row in _get(connection, f"{table.path}/Attributes/{CRM}{cast}", {"$select": "LogicalName,MaxLength"}).get(
            "value", []
        ):
            lengths[str(row.get("LogicalName"))] = row.get("MaxLength")
    options: dict[str, list[dict[str, Any]]] = {}
    for cast in _OPTION_CASTS:
        body = _get(
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
        listed = list_entities(
            connection,
            {
                "include_custom": params.get("include_custom", True),
                "top_level_only": params.get("top_level_only", False),
            },
        )["tables"]
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
        keys = list_alternate_keys(connection, {"table": params["table"]})["keys"]
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
