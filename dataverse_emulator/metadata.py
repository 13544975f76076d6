"""``EntityDefinitions`` reads, alternate-key definitions and a minimal ``$metadata`` CSDL.

Why: real clients read metadata before any data call (Microsoft's SDK resolves the entity set and the picklist
attributes before every write), and the alternate-key lifecycle (Pending -> Active / Failed) is observed here.
Metadata ``$filter`` is evaluated in Python over the metadata dictionaries (no paging, all matches at once).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import quoteattr

from starlette.requests import Request
from starlette.responses import Response

from . import cascade, changetracking, errors
from .model import Attribute, Key, Relationship, Table
from .odata import (
    Call,
    Compare,
    ExpandItem,
    Expr,
    Literal,
    Logical,
    Not,
    Property,
    parse_expand,
    parse_filter,
    parse_select,
)
from .schema import many_to_many_json
from .table_flags import flags

if TYPE_CHECKING:
    from .context import Ctx
    from .record_writes import RecordApi

KEY_TYPES = {"String", "Integer", "Decimal", "DateTime", "Lookup", "Customer", "Owner", "Picklist", "BigInt"}
TYPE_NAMES = {
    "String": "StringType",
    "Memo": "MemoType",
    "Integer": "IntegerType",
    "BigInt": "BigIntType",
    "Picklist": "PicklistType",
    "State": "StateType",
    "Status": "StatusType",
    "Boolean": "BooleanType",
    "Money": "MoneyType",
    "Decimal": "DecimalType",
    "Double": "DoubleType",
    "DateTime": "DateTimeType",
    "Uniqueidentifier": "UniqueidentifierType",
    "Lookup": "LookupType",
    "Customer": "CustomerType",
    "Owner": "OwnerType",
    "EntityName": "EntityNameType",
    "File": "FileType",
    "Image": "ImageType",
}


def label(text: str, mid: str) -> dict[str, Any]:
    """A read-shaped Label (LocalizedLabels and UserLocalizedLabel, en-US)."""
    loc = {"Label": text, "LanguageCode": 1033, "IsManaged": True, "MetadataId": mid, "HasChanged": None}
    return {"LocalizedLabels": [loc], "UserLocalizedLabel": loc}


def managed(value: bool, name: str) -> dict[str, Any]:
    """A BooleanManagedProperty value."""
    return {"Value": value, "CanBeChanged": False, "ManagedPropertyLogicalName": name}


def schema_name(name: str) -> str:
    """A SchemaName for a system column (first letter upper-cased; a guess for most columns)."""
    return name[:1].upper() + name[1:]


def entity_json(t: Table) -> dict[str, Any]:
    """EntityMetadata for a table."""
    mid = t.metadata_id
    return (
        {
            "MetadataId": mid,
            "LogicalName": t.logical_name,
            "SchemaName": t.schema_name,
            "EntitySetName": t.entity_set,
            "LogicalCollectionName": t.entity_set,
            "CollectionSchemaName": t.schema_name + "s",
            "PrimaryIdAttribute": t.primary_id,
            "PrimaryNameAttribute": t.primary_name,
            "PrimaryImageAttribute": None,
            "ObjectTypeCode": t.object_type_code,
            "OwnershipType": t.ownership if t.ownership != "None" else "None",
            "IsCustomEntity": t.custom,
            "IsPrivate": False,
            "IsManaged": True,
            "IsOptimisticConcurrencyEnabled": True,
            "ChangeTrackingEnabled": changetracking.enabled(t),
            "DisplayName": label(t.display_name, mid),
            "DisplayCollectionName": label(t.display_collection_name, mid),
            "Description": label("", mid),
            "IsAuditEnabled": managed(False, "canmodifyauditsettings"),
        }
        | flags(t)
        | t.extra
    )


def attribute_json(a: Attribute, t: Table) -> dict[str, Any]:
    """AttributeMetadata for a column, typed with ``@odata.type``."""
    mid = a.metadata_id
    out: dict[str, Any] = {
        "@odata.type": "#" + a.odata_type,
        "MetadataId": mid,
        "LogicalName": a.name,
        "SchemaName": schema_name(a.name),
        "EntityLogicalName": t.logical_name,
        "AttributeType": a.type,
        "AttributeTypeName": {"Value": TYPE_NAMES.get(a.type, a.type + "Type")},
        "AttributeOf": None,
        "IsPrimaryId": a.is_primary_id,
        "IsPrimaryName": a.is_primary_name,
        "IsCustomAttribute": a.custom,
        "IsValidForCreate": a.valid_for_create,
        "IsValidForUpdate": a.valid_for_update,
        "IsValidForRead": True,
        "IsLogical": False,
        "RequiredLevel": {
            "Value": a.required,
            "CanBeChanged": a.required != "SystemRequired",
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "DisplayName": label(a.display or schema_name(a.name), mid),
        "Description": label("", mid),
    }
    if a.type in ("String", "Memo"):
        out["MaxLength"] = a.max_length
        out["Format"] = "Text" if a.type == "String" else "TextArea"
    if a.is_lookup:
        out["Targets"] = list(a.targets)
    if a.type == "DateTime":
        out["Format"] = "DateOnly" if a.date_only else "DateAndTime"
        out["DateTimeBehavior"] = {"Value": "DateOnly" if a.date_only else "UserLocal"}
    if a.type == "Money":
        out["Precision"] = 2
        out["PrecisionSource"] = 2
    return out | a.extra


def option_set_json(a: Attribute) -> dict[str, Any]:
    """OptionSetMetadata for a choice, state or status column."""
    return {
        "MetadataId": a.metadata_id,
        "Name": f"{a.entity}_{a.name}",
        "IsGlobal": False,
        "OptionSetType": a.type,
        "Options": [
            {"Value": v, "Label": label(text, a.metadata_id), "Description": label("", a.metadata_id)}
            | ({"State": a.status_states[v]} if a.status_states else {})
            for v, text in (a.options or {}).items()
        ],
    }


def relationship_json(r: Relationship) -> dict[str, Any]:
    """OneToManyRelationshipMetadata (also used for the ManyToOne view)."""
    return {
        "MetadataId": r.metadata_id,
        "SchemaName": r.schema_name,
        "RelationshipType": "OneToManyRelationship",
        "ReferencedEntity": r.referenced_entity,
        "ReferencedAttribute": r.referenced_attribute,
        "ReferencingEntity": r.referencing_entity,
        "ReferencingAttribute": r.referencing_attribute,
        "ReferencedEntityNavigationPropertyName": r.referenced_nav,
        "ReferencingEntityNavigationPropertyName": r.referencing_nav,
        "IsCustomRelationship": False,
        "IsManaged": True,
        "IsValidForAdvancedFind": True,
        "CascadeConfiguration": cascade.configuration(r),
    }


def key_json(k: Key, status: str) -> dict[str, Any]:
    """EntityKeyMetadata with the current index status."""
    return {
        "MetadataId": k.metadata_id,
        "SchemaName": k.schema_name,
        "LogicalName": k.schema_name.lower(),
        "EntityLogicalName": k.entity,
        "KeyAttributes": list(k.attributes),
        "DisplayName": label(k.display_name or k.schema_name, k.metadata_id),
        "IsManaged": False,
        "IsCustomizable": managed(True, "iscustomizable"),
        "EntityKeyIndexStatus": status,
        "IsSecondaryKey": False,
        "IsExportKey": False,
    }


# -- metadata $filter (Python evaluation) --------------------------------------------------------------------------


def _get(obj: dict[str, Any], prop: Property) -> Any:
    v: Any = obj
    for p in prop.path:
        if not isinstance(v, dict):
            return None
        v = v.get(p)
    return v


def _val(e: Expr, obj: dict[str, Any]) -> Any:
    if isinstance(e, Property):
        return _get(obj, e)
    if isinstance(e, Literal):
        v = e.value
        if isinstance(v, uuid.UUID):
            return str(v)
        return v
    return evaluate(e, obj)


def _norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def evaluate(e: Expr, obj: dict[str, Any]) -> Any:
    """Evaluate a metadata ``$filter`` over a metadata dict (string comparison ignores case)."""
    if isinstance(e, Logical):
        res = [bool(evaluate(x, obj)) for x in e.operands]
        return all(res) if e.op == "and" else any(res)
    if isinstance(e, Not):
        return not evaluate(e.operand, obj)
    if isinstance(e, Compare):
        a, b = _norm(_val(e.left, obj)), _norm(_val(e.right, obj))
        if e.op == "eq":
            return a == b
        if e.op == "ne":
            return a != b
        if a is None or b is None:
            return False
        try:
            return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[e.op]
        except TypeError:
            return False
    if isinstance(e, Call) and e.name in ("contains", "startswith", "endswith"):
        a, b = _norm(_val(e.args[0], obj)), _norm(_val(e.args[1], obj))
        if not isinstance(a, str) or not isinstance(b, str):
            return False
        return {"contains": b in a, "startswith": a.startswith(b), "endswith": a.endswith(b)}[e.name]
    raise errors.bad_request("The metadata query is not supported.", "0x0")


def project(
    obj: dict[str, Any], select: tuple[str, ...] | None, type_name: str, always: tuple[str, ...]
) -> dict[str, Any]:
    """Apply ``$select`` to a metadata dict; unknown names get Dataverse's 0x0 error."""
    if select is None:
        return dict(obj)
    out: dict[str, Any] = {}
    if "@odata.type" in obj:
        out["@odata.type"] = obj["@odata.type"]
    for s in select:
        if s not in obj:
            raise errors.DataverseError(
                400, "0x0", f"Could not find a property named '{s}' on type 'Microsoft.Dynamics.CRM.{type_name}'."
            )
        out[s] = obj[s]
    for k in always:
        out[k] = obj[k]
    return out


def apply_options(
    items: list[dict[str, Any]],
    item: ExpandItem | None,
    select: tuple[str, ...] | None,
    flt: Expr | None,
    type_name: str,
) -> list[dict[str, Any]]:
    """``$filter`` then ``$select`` (from an ``$expand`` item when given)."""
    if item is not None:
        select, flt = item.select, item.filter
    if flt is not None:
        items = [x for x in items if evaluate(flt, x)]
    return [project(x, select, type_name, ("MetadataId",)) for x in items]


# -- handler ---------------------------------------------------------------------------------------------------------


async def entity_definitions(api: RecordApi, request: Request, ctx: Ctx, key: str | None, rest: list[str]) -> Response:
    """Handler for ``EntityDefinitions`` and its Attributes, Keys and relationship collections."""
    emu = api.emu
    raw = request.scope.get("query_string", b"").decode("latin-1")
    opts = dict(parse_qsl(raw, keep_blank_values=True))
    select = parse_select(opts["$select"]) if "$select" in opts else None
    flt = parse_filter(opts["$filter"]) if "$filter" in opts else None
    expand = parse_expand(opts["$expand"]) if "$expand" in opts else ()
    method = request.method
    if key is None:
        if rest or method != "GET":
            raise errors.no_resource(str(request.url))
        ents = [
            e for e in (_full_entity(api, t, expand) for t in emu.tables.values()) if flt is None or evaluate(flt, e)
        ]
        value = [project(e, select, "EntityMetadata", ("MetadataId",)) | _expanded(e, expand) for e in ents]
        ctx_sel = ",".join(select) if select else ""
        return api.json(
            {
                "@odata.context": f"{ctx.api}/$metadata#EntityDefinitions" + (f"({ctx_sel})" if ctx_sel else ""),
                "value": value,
            }
        )
    table = find_table(api, key)
    if not rest:
        if method != "GET":
            raise errors.DataverseError(405, "0x80060888", "Metadata updates are not supported by the emulator yet.")
        e = _full_entity(api, table, expand)
        body = project(e, select, "EntityMetadata", ("MetadataId",)) | _expanded(e, expand)
        return api.json({"@odata.context": f"{ctx.api}/$metadata#EntityDefinitions/$entity", **body})
    nav, sub_key = split_key(rest[0])
    if nav == "Attributes":
        attrs = [attribute_json(a, table) for a in table.attributes.values()]
        cast = rest[1] if len(rest) > 1 else None
        type_name = "AttributeMetadata"
        if cast:
            type_name = cast.rsplit(".", 1)[-1]
            if not cast.startswith("Microsoft.Dynamics.CRM.") or type_name == "EnumAttributeMetadata":
                raise errors.segment_not_found(cast)
            attrs = [a for a in attrs if a["@odata.type"] == "#" + cast]
        suffix = f"/{cast}" if cast else ""
        if sub_key is not None:
            # One column, optionally cast (``Attributes(LogicalName='x')/<cast>``,
            # with ``$expand=OptionSet``); a column of another type does not match the cast.
            match = [a for a in attrs if match_key(sub_key, a)]
            if not match:
                raise errors.DataverseError(
                    404, "0x80040217", f"Could not find attribute {sub_key} in {table.logical_name}."
                )
            body = _attribute_row(match[0], table, select, expand, type_name)
            return api.json(
                {
                    "@odata.context": f"{ctx.api}/$metadata#EntityDefinitions('{table.metadata_id}')/"
                    f"Attributes{suffix}/$entity",
                    **body,
                }
            )
        out = [_attribute_row(a, table, select, expand, type_name) for a in attrs if flt is None or evaluate(flt, a)]
        return api.json(
            {
                "@odata.context": f"{ctx.api}/$metadata#EntityDefinitions('{table.metadata_id}')/Attributes{suffix}",
                "value": out,
            }
        )
    if nav in ("ManyToOneRelationships", "OneToManyRelationships", "ManyToManyRelationships"):
        rels = _relationships(api, table, nav)
        return api.json(
            {
                "@odata.context": f"{ctx.api}/$metadata#EntityDefinitions('{table.metadata_id}')/{nav}",
                "value": apply_options(rels, None, select, flt, "RelationshipMetadataBase"),
            }
        )
    if nav == "Keys":
        return await _keys(api, request, ctx, table, sub_key, select, flt)
    raise errors.segment_not_found(nav)


def _attribute_row(a: dict[str, Any], table: Any, select: Any, expand: Any, type_name: str) -> dict[str, Any]:
    """One attribute projected by ``$select``, with ``OptionSet`` / ``GlobalOptionSet`` expanded when asked."""
    row = project(a, select, type_name, ("MetadataId",))
    for it in expand:
        attr = table.attributes[a["LogicalName"]]
        if it.nav in ("OptionSet", "GlobalOptionSet"):
            if it.nav == "GlobalOptionSet" or attr.options is None:
                row[it.nav] = None
            else:
                row[it.nav] = project(option_set_json(attr), it.select, "OptionSetMetadata", ("MetadataId",))
        else:
            raise errors.unknown_property(it.nav, type_name)
    return row


def split_key(seg: str) -> tuple[str, str | None]:
    i = seg.find("(")
    if i > 0 and seg.endswith(")"):
        return seg[:i], seg[i + 1 : -1]
    return seg, None


def match_key(key: str, obj: dict[str, Any]) -> bool:
    k = key.strip()
    if k.lower().startswith("logicalname="):
        return str(obj.get("LogicalName", "")).lower() == k.split("=", 1)[1].strip("'").lower()
    return str(obj.get("MetadataId", "")).lower() == k.lower()


def find_table(api: RecordApi, key: str) -> Table:
    for t in api.emu.tables.values():
        if match_key(key, {"LogicalName": t.logical_name, "MetadataId": t.metadata_id}):
            return t
    if key.lower().startswith("logicalname="):
        name = key.split("=", 1)[1].strip("'")
        raise errors.DataverseError(404, "0x80040217", f"Could not find entity with name '{name}'.")
    raise errors.DataverseError(404, "0x80040217", f"Could not find entity with MetadataId '{key}'.")


def _relationships(api: RecordApi, table: Table, nav: str) -> list[dict[str, Any]]:
    if nav == "ManyToOneRelationships":
        return [relationship_json(r) for r in api.rels if r.referencing_entity == table.logical_name]
    if nav == "OneToManyRelationships":
        return [
            relationship_json(r)
            for r in api.rels
            if r.referenced_entity == table.logical_name
            or (r.referenced_entity == "owner" and table.logical_name in ("systemuser", "team"))
        ]
    return [
        many_to_many_json(m)
        for m in getattr(api.emu, "many_to_many", [])
        if table.logical_name in (m["Entity1LogicalName"], m["Entity2LogicalName"])
    ]


def _full_entity(api: RecordApi, t: Table, expand: tuple[ExpandItem, ...]) -> dict[str, Any]:
    e = entity_json(t)
    for it in expand:
        if it.nav == "Attributes":
            e["Attributes"] = apply_options(
                [attribute_json(a, t) for a in t.attributes.values()], it, None, None, "AttributeMetadata"
            )
        elif it.nav == "Keys":
            store = api.store
            e["Keys"] = apply_options(
                [key_json(k, store.key_status(k)) for k in store.keys.get(t.logical_name, [])],
                it,
                None,
                None,
                "EntityKeyMetadata",
            )
        elif it.nav in ("ManyToOneRelationships", "OneToManyRelationships", "ManyToManyRelationships"):
            e[it.nav] = apply_options(_relationships(api, t, it.nav), it, None, None, "RelationshipMetadataBase")
        else:
            raise errors.unknown_property(it.nav, "EntityMetadata")
    return e


def _expanded(e: dict[str, Any], expand: tuple[ExpandItem, ...]) -> dict[str, Any]:
    return {it.nav: e[it.nav] for it in expand}


async def _keys(
    api: RecordApi,
    request: Request,
    ctx: Ctx,
    table: Table,
    sub_key: str | None,
    select: tuple[str, ...] | None,
    flt: Expr | None,
) -> Response:
    store = api.store
    keys = store.keys.get(table.logical_name, [])
    method = request.method
    if sub_key is not None:
        match = [
            k for k in keys if match_key(sub_key, {"LogicalName": k.schema_name.lower(), "MetadataId": k.metadata_id})
        ]
        if not match:
            raise errors.DataverseError(404, "0x80040217", f"Could not find key {sub_key} on {table.logical_name}.")
        if method == "DELETE":
            store.remove_key(match[0])
            return Response(status_code=204, headers={"OData-Version": "4.0"})
        body = project(key_json(match[0], store.key_status(match[0])), select, "EntityKeyMetadata", ("MetadataId",))
        return api.json(
            {"@odata.context": f"{ctx.api}/$metadata#EntityDefinitions('{table.metadata_id}')/Keys/$entity", **body}
        )
    if method == "GET":
        items = [key_json(k, store.key_status(k)) for k in keys]
        return api.json(
            {
                "@odata.context": f"{ctx.api}/$metadata#EntityDefinitions('{table.metadata_id}')/Keys",
                "value": apply_options(items, None, select, flt, "EntityKeyMetadata"),
            }
        )
    if method != "POST":
        raise errors.no_resource(str(request.url))
    data = await api.body_json(request, "EntityDefinitions")
    schema = data.get("SchemaName")
    attrs = data.get("KeyAttributes")
    if not isinstance(schema, str) or not schema or not isinstance(attrs, list) or not attrs:
        raise errors.bad_request("SchemaName and KeyAttributes are required to create an entity key.", "0x80044331")
    if any(k.schema_name.lower() == schema.lower() for k in keys):
        raise errors.DataverseError(400, "0x80047013", f"An entity key with the name {schema} already exists.")
    if len(keys) >= 10:
        raise errors.DataverseError(
            400, "0x80060887", "The maximum number of keys (10) for an entity has been reached."
        )
    if len(attrs) > 16:
        raise errors.DataverseError(400, "0x80060886", "A key cannot contain more than 16 attributes.")
    for a in attrs:
        attr = table.attributes.get(str(a))
        if attr is None:
            raise errors.DataverseError(
                400, "0x80040217", f"Could not find attribute {a} in entity {table.logical_name}."
            )
        if attr.type not in KEY_TYPES or attr.is_primary_id:
            raise errors.DataverseError(
                400, "0x80060885", f"Attribute {a} of type {attr.type} cannot be part of an entity key."
            )
    label_text = None
    dn = data.get("DisplayName")
    if isinstance(dn, dict) and dn.get("LocalizedLabels"):
        label_text = dn["LocalizedLabels"][0].get("Label")
    key = Key(
        schema,
        table.logical_name,
        [str(a) for a in attrs],
        api.emu.clock(),
        str(uuid.UUID(int=api.emu.rng.getrandbits(128), version=4)),
        display_name=label_text,
    )
    key.failed = store.has_duplicates(table.logical_name, key.attributes)
    store.add_key(key)
    return Response(
        status_code=204,
        headers={
            "OData-Version": "4.0",
            "OData-EntityId": (
                f"{ctx.api}/EntityDefinitions(LogicalName='{table.logical_name}')/Keys({key.metadata_id})"
            ),
        },
    )


def csdl(
    tables: dict[str, Table],
    rels: list[Relationship],
    many_to_many: list[dict[str, Any]] | None = None,
    operations: tuple[list[str], list[str]] = ([], []),
) -> str:
    """A minimal CSDL: entity types with keys, properties and navigation properties (N:N ones included, a
    collection on each side), the ``operations`` (actions, functions, their complex types; their imports go in the
    container), plus the container."""
    edm = {
        "String": "Edm.String",
        "Memo": "Edm.String",
        "EntityName": "Edm.String",
        "Integer": "Edm.Int32",
        "BigInt": "Edm.Int64",
        "Picklist": "Edm.Int32",
        "State": "Edm.Int32",
        "Status": "Edm.Int32",
        "Boolean": "Edm.Boolean",
        "Money": "Edm.Decimal",
        "Decimal": "Edm.Decimal",
        "Double": "Edm.Double",
        "DateTime": "Edm.DateTimeOffset",
        "Uniqueidentifier": "Edm.Guid",
    }
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"><edmx:DataServices>',
        '<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" xmlns="http://docs.oasis-open.org/odata/ns/edm">',
    ]
    for t in tables.values():
        parts.append(
            f"<EntityType Name={quoteattr(t.logical_name)}><Key><PropertyRef Name={quoteattr(t.primary_id)} /></Key>"
        )
        for a in t.attributes.values():
            if a.is_lookup:
                parts.append(f'<Property Name={quoteattr("_" + a.name + "_value")} Type="Edm.Guid" />')
            else:
                parts.append(f"<Property Name={quoteattr(a.name)} Type={quoteattr(edm.get(a.type, 'Edm.String'))} />")
        for r in rels:
            if r.referencing_entity == t.logical_name:
                target = "principal" if r.referenced_entity == "owner" else r.referenced_entity
                parts.append(
                    f"<NavigationProperty Name={quoteattr(r.referencing_nav)} "
                    f'Type="mscrm.{target}" Partner={quoteattr(r.referenced_nav)} />'
                )
            if r.referenced_entity == t.logical_name:
                parts.append(
                    f"<NavigationProperty Name={quoteattr(r.referenced_nav)} "
                    f'Type="Collection(mscrm.{r.referencing_entity})" Partner={quoteattr(r.referencing_nav)} />'
                )
        parts += many_to_many_navs(t, many_to_many or [])
        parts.append("</EntityType>")
    parts += operations[0]
    parts.append('<EntityContainer Name="System">')
    for t in tables.values():
        parts.append(
            f'<EntitySet Name={quoteattr(t.entity_set)} EntityType="Microsoft.Dynamics.CRM.{t.logical_name}" />'
        )
    parts += operations[1]
    parts.append("</EntityContainer></Schema></edmx:DataServices></edmx:Edmx>")
    return "".join(parts)


def many_to_many_navs(t: Table, many_to_many: list[dict[str, Any]]) -> list[str]:
    """The collection-valued navigation properties an N:N relationship gives ``t`` (one per side it is on)."""
    out = []
    for m in many_to_many:
        for own, other in (("1", "2"), ("2", "1")):
            if m[f"Entity{own}LogicalName"] == t.logical_name:
                nav, partner = m[f"Entity{own}NavigationPropertyName"], m[f"Entity{other}NavigationPropertyName"]
                out.append(
                    f"<NavigationProperty Name={quoteattr(nav)} "
                    f'Type="Collection(mscrm.{m[f"Entity{other}LogicalName"]})" Partner={quoteattr(partner)} />'
                )
    return out
