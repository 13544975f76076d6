"""Schema changes behind the metadata writes: tables, columns and relationships added to the model and to SQLite.

Why apart from the HTTP handlers: the same operations serve the Web API, the admin bulk preload and the replay of a
``--db`` file. Each write changes the model *and* the SQLite schema in the same transaction (a new column is an
``ALTER TABLE ... ADD COLUMN`` usable at once by records and queries), and is appended to ``_emulator_schema`` so an
emulator started with ``--db`` replays its custom tables and columns (reference section 9).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from . import errors
from .bulk import ensure_message_rows
from .cascade import read_configuration
from .model import STATUS_STATE, Attribute, Relationship, Table, _system_columns, meta_id
from .storage import SQL_TYPES, q, type_col

if TYPE_CHECKING:
    from .emulator import Emulator


ODATA_TYPES = {
    "StringAttributeMetadata": "String",
    "MemoAttributeMetadata": "Memo",
    "IntegerAttributeMetadata": "Integer",
    "BigIntAttributeMetadata": "BigInt",
    "DecimalAttributeMetadata": "Decimal",
    "DoubleAttributeMetadata": "Double",
    "MoneyAttributeMetadata": "Money",
    "BooleanAttributeMetadata": "Boolean",
    "DateTimeAttributeMetadata": "DateTime",
    "PicklistAttributeMetadata": "Picklist",
    "FileAttributeMetadata": "File",
    "ImageAttributeMetadata": "Image",
}
# the admin preload and the SDK's lower-case names
SHORT_TYPES = {
    "string": "String",
    "text": "String",
    "memo": "Memo",
    "multiline": "Memo",
    "int": "Integer",
    "integer": "Integer",
    "bigint": "BigInt",
    "decimal": "Decimal",
    "money": "Money",
    "float": "Double",
    "double": "Double",
    "bool": "Boolean",
    "boolean": "Boolean",
    "datetime": "DateTime",
    "date": "DateTime",
    "picklist": "Picklist",
    "file": "File",
    "image": "Image",
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "String": {"MaxLength": 100, "FormatName": {"Value": "Text"}},
    "Memo": {"MaxLength": 2000, "Format": "TextArea"},
    "Integer": {"MinValue": -2147483648, "MaxValue": 2147483647, "Format": "None"},
    "BigInt": {"MinValue": -9223372036854775808, "MaxValue": 9223372036854775807},
    "Decimal": {"MinValue": -100000000000.0, "MaxValue": 100000000000.0, "Precision": 2},
    "Double": {"MinValue": -100000000000.0, "MaxValue": 100000000000.0, "Precision": 2},
    "Money": {"MinValue": -922337203685477.0, "MaxValue": 922337203685477.0, "Precision": 2, "PrecisionSource": 2},
    "DateTime": {"Format": "DateAndTime", "DateTimeBehavior": {"Value": "UserLocal"}},
    "File": {"MaxSizeInKB": 32768, "AttributeType": "Virtual"},
    "Image": {"MaxSizeInKB": 10240, "CanStoreFullImage": False, "IsPrimaryImage": False, "AttributeType": "Virtual"},
}
COPIED = (
    "MaxLength",
    "FormatName",
    "Format",
    "MinValue",
    "MaxValue",
    "Precision",
    "PrecisionSource",
    "MaxSizeInKB",
    "DateTimeBehavior",
    "CanStoreFullImage",
    "IsPrimaryImage",
    "DefaultValue",
    "ImeMode",
)
NO_CONTENT = {"OData-Version": "4.0"}


def _guid(emu: Emulator) -> str:
    return str(uuid.UUID(int=emu.rng.getrandbits(128), version=4))


def plural(logical: str) -> str:
    """EntitySetName for a new table: English plural of the logical name (GUESS for irregular names)."""
    if logical.endswith(("s", "x", "z", "ch", "sh")):
        return logical + "es"
    if logical.endswith("y") and len(logical) > 1 and logical[-2] not in "aeiou":
        return logical[:-1] + "ies"
    return logical + "s"


# -- labels ----------------------------------------------------------------------------------------------------------


def read_label(sent: Any, owner: str, existing: dict[str, Any] | None = None, merge: bool = False) -> dict[str, Any]:
    """A read-shaped Label from a create/update body. With ``merge`` labels of other languages are kept (MergeLabels:
    true); without it only the sent ones survive, as Dataverse does when the header is absent."""
    by_lang: dict[int, dict[str, Any]] = {}
    if merge and existing:
        for loc in existing.get("LocalizedLabels", []):
            by_lang[int(loc["LanguageCode"])] = dict(loc)
    if isinstance(sent, dict):
        for loc in sent.get("LocalizedLabels") or []:
            if not isinstance(loc, dict) or not isinstance(loc.get("Label"), str):
                continue
            lang = int(loc.get("LanguageCode", 1033))
            by_lang[lang] = {
                "Label": loc["Label"],
                "LanguageCode": lang,
                "IsManaged": False,
                "MetadataId": meta_id("label", owner, str(lang)),
                "HasChanged": None,
            }
    locs = list(by_lang.values())
    user = by_lang.get(1033) or (locs[0] if locs else None)
    return {"LocalizedLabels": locs, "UserLocalizedLabel": user}


def label_text(sent: Any) -> str:
    """The first label text of a sent Label (used for the Python-side display name)."""
    if isinstance(sent, dict):
        for loc in sent.get("LocalizedLabels") or []:
            if isinstance(loc, dict) and isinstance(loc.get("Label"), str):
                return str(loc["Label"])
    return ""


# -- columns ---------------------------------------------------------------------------------------------------------


def attribute_type(body: dict[str, Any]) -> str:
    """The AttributeTypeCode name for a body's ``@odata.type`` (``Complex*`` from CreateEntities included)."""
    odt = str(body.get("@odata.type", "")).lstrip("#").removeprefix("Microsoft.Dynamics.CRM.").removeprefix("Complex")
    if odt in ("LookupAttributeMetadata", "CustomerAttributeMetadata"):
        raise errors.bad_request(
            "Lookup attributes are created with their relationship (POST RelationshipDefinitions).", "0x80044331"
        )
    t = ODATA_TYPES.get(odt)
    if t is None:
        raise errors.payload_error(
            "EntityDefinitions", f"Microsoft.OData.ODataException: The attribute type '{odt or '(none)'}' is not valid."
        )
    return t


def build_attributes(table: str, body: dict[str, Any], typ: str | None = None) -> list[Attribute]:
    """The column described by an AttributeMetadata body, followed by the companion columns Dataverse adds."""
    t = typ or attribute_type(body)
    schema = body.get("SchemaName")
    if not isinstance(schema, str) or not schema:
        raise errors.bad_request("The SchemaName of the attribute is required.", "0x80044331")
    name = schema.lower()
    extra: dict[str, Any] = dict(DEFAULTS.get(t, {}))
    for k in COPIED:
        if k in body:
            extra[k] = body[k]
    req = body.get("RequiredLevel") if isinstance(body.get("RequiredLevel"), dict) else {}
    required = str((req or {}).get("Value", "None"))
    extra["SchemaName"] = schema
    extra["RequiredLevel"] = {
        "Value": required,
        "CanBeChanged": True,
        "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
    }
    extra["DisplayName"] = read_label(body.get("DisplayName"), f"{table}/{name}/display")
    extra["Description"] = read_label(body.get("Description"), f"{table}/{name}/description")
    if t in ("File", "Image"):
        extra["AttributeTypeName"] = {"Value": f"{t}Type"}
    options = None
    if t == "Picklist":
        os_ = body.get("OptionSet") if isinstance(body.get("OptionSet"), dict) else {}
        options = {}
        for i, opt in enumerate((os_ or {}).get("Options") or []):
            value = opt.get("Value")
            options[int(value) if value is not None else 100000000 + i] = label_text(opt.get("Label"))
    date_only = t == "DateTime" and (
        extra.get("Format") == "DateOnly" or (extra.get("DateTimeBehavior") or {}).get("Value") == "DateOnly"
    )
    max_length = int(extra["MaxLength"]) if t in ("String", "Memo") else None
    attr = Attribute(
        name,
        t,
        max_length=max_length,
        options=options,
        required=required,
        date_only=date_only,
        entity=table,
        custom=True,
        extra=extra,
        is_primary_name=bool(body.get("IsPrimaryName")),
        # file and image data are written through their own endpoints, never by create or update
        valid_for_create=t not in ("File", "Image"),
        valid_for_update=t not in ("File", "Image"),
    )
    out = [attr]

    def companion(suffix: str, ctype: str, **kw: Any) -> None:
        out.append(
            Attribute(
                name + suffix,
                ctype,
                entity=table,
                custom=True,
                valid_for_create=False,
                valid_for_update=False,
                extra={"AttributeOf": name, "SchemaName": schema + suffix},
                **kw,
            )
        )

    if t == "Money":
        companion("_base", "Money")
    elif t == "File":
        companion("_name", "String", max_length=260)
    elif t == "Image":
        companion("_url", "String", max_length=500)
        companion("_timestamp", "BigInt")
    return out


def add_sql_column(api_or_emu: Any, table: Table, a: Attribute) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for a new attribute (and its ``__type`` column for lookups)."""
    conn = api_or_emu.store.conn
    existing = {r[1] for r in conn.execute(f"PRAGMA table_info({q(table.logical_name)})")}
    cols = [(a.name, "TEXT COLLATE NOCASE" if a.is_lookup else SQL_TYPES[a.type])]
    if a.is_lookup:
        cols.append((type_col(a.name), "TEXT"))
    for col, sql_type in cols:
        if col not in existing:
            conn.execute(f"ALTER TABLE {q(table.logical_name)} ADD COLUMN {q(col)} {sql_type}")
    if a.is_lookup:
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {q('ix_' + table.logical_name + '_' + a.name)} "
            f"ON {q(table.logical_name)} ({q(a.name)})"
        )


def create_sql_table(emu: Emulator, t: Table) -> None:
    """``CREATE TABLE`` with one real column per attribute, as ``Store`` does for the preloaded tables."""
    cols = []
    for a in t.attributes.values():
        if a.is_primary_id:
            cols.append(f"{q(a.name)} TEXT COLLATE NOCASE PRIMARY KEY")
        elif a.is_lookup:
            cols.append(f"{q(a.name)} TEXT COLLATE NOCASE")
            cols.append(f"{q(type_col(a.name))} TEXT")
        else:
            cols.append(f"{q(a.name)} {SQL_TYPES[a.type]}")
    emu.store.conn.execute(f"CREATE TABLE IF NOT EXISTS {q(t.logical_name)} ({', '.join(cols)})")


def persist(emu: Emulator, kind: str, payload: dict[str, Any]) -> None:
    """Remember a schema write so ``--db`` restarts replay it (in the write's transaction)."""
    conn = emu.store.conn
    conn.execute("CREATE TABLE IF NOT EXISTS _emulator_schema (n INTEGER PRIMARY KEY, kind TEXT, body TEXT)")
    conn.execute("INSERT INTO _emulator_schema (kind, body) VALUES (?, ?)", (kind, json.dumps(payload)))


def do_create_column(emu: Emulator, table: Table, body: dict[str, Any], save: bool = True) -> Attribute:
    """Add a column (and companions) to a table: metadata, SQLite column, persistence."""
    attrs = build_attributes(table.logical_name, body)
    for a in attrs:
        if a.name in table.attributes:
            raise errors.DataverseError(
                400,
                "0x80047013",
                f"An attribute with the name {a.name} already exists on the entity {table.logical_name}.",
            )
    for a in attrs:
        table.attributes[a.name] = a
        add_sql_column(emu, table, a)
    if save:
        persist(emu, "column", {"table": table.logical_name, "body": body})
    return attrs[0]


def do_update_column(
    emu: Emulator, table: Table, name: str, body: dict[str, Any], merge: bool, save: bool = True
) -> Attribute:
    """PUT of a full AttributeMetadata: omitted properties revert to defaults, labels follow MergeLabels."""
    a = table.attributes.get(name)
    if a is None:
        raise errors.DataverseError(404, "0x80040217", f"Could not find attribute {name} in {table.logical_name}.")
    if "@odata.type" in body and attribute_type(body) != a.type:
        raise errors.bad_request("The attribute type of an existing attribute can't be changed.", "0x80044331")
    if str(body.get("SchemaName", a.extra.get("SchemaName", a.name))).lower() != a.name:
        raise errors.bad_request("The SchemaName of an existing attribute can't be changed.", "0x80044331")
    fresh = build_attributes(table.logical_name, {**body, "SchemaName": a.extra.get("SchemaName", a.name)}, a.type)[0]
    for prop in ("DisplayName", "Description"):
        fresh.extra[prop] = read_label(body.get(prop), f"{table.logical_name}/{name}/{prop}", a.extra.get(prop), merge)
    if not a.custom:
        fresh.extra = {k: v for k, v in fresh.extra.items() if k in ("DisplayName", "Description", "RequiredLevel")}
        fresh.extra["SchemaName"] = a.extra.get("SchemaName") or name[:1].upper() + name[1:]
    a.extra = fresh.extra
    a.required = fresh.required
    if a.type in ("String", "Memo") and a.custom:
        a.max_length = fresh.max_length
    if save:
        persist(emu, "column_update", {"table": table.logical_name, "name": name, "body": body, "merge": merge})
    return a


def register_table(emu: Emulator, t: Table) -> None:
    """Make a new table visible everywhere: metadata maps, SQLite, and the system lookups' relationships."""
    emu.tables[t.logical_name] = t
    emu.by_set[t.entity_set] = t
    create_sql_table(emu, t)
    ensure_message_rows(emu.store, {t.logical_name: t})  # its sdkmessagefilter rows, so steps can be registered
    for a in t.attributes.values():
        if not a.is_lookup:
            continue
        target = a.targets[0]
        if a.type == "Owner":
            rel = Relationship(f"owner_{t.logical_name}", "owner", "ownerid", t.logical_name, a.name, a.name, "")
            rel.referenced_nav = rel.schema_name
        elif a.name in ("owninguser", "owningteam", "owningbusinessunit"):
            prefix = {"owninguser": "user", "owningteam": "team", "owningbusinessunit": "business_unit"}[a.name]
            name = f"{prefix}_{t.logical_name}"
            rel = Relationship(name, target, f"{target}id", t.logical_name, a.name, a.name, name)
        else:
            name = f"lk_{t.logical_name}_{a.name}"
            rel = Relationship(name, target, f"{target}id", t.logical_name, a.name, a.name, name)
        emu.rels.append(rel)
        emu.store.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {q('ix_' + t.logical_name + '_' + a.name)} "
            f"ON {q(t.logical_name)} ({q(a.name)})"
        )


def new_table(emu: Emulator, schema: str, ownership: str, extra: dict[str, Any], entity_set: str | None) -> Table:
    """A Table with Dataverse's system columns for a custom table (audit, owner, state and status)."""
    logical = schema.lower()
    otc = 10000 + sum(1 for t in emu.tables.values() if t.custom)
    t = Table(
        logical_name=logical,
        schema_name=schema,
        entity_set=entity_set or plural(logical),
        primary_id=f"{logical}id",
        primary_name=None,
        object_type_code=otc,
        ownership=ownership,
        custom=True,
    )
    t.extra = {
        "IsManaged": False,
        "CollectionSchemaName": schema + "s",
        "IsCustomizable": {"Value": True, "CanBeChanged": True, "ManagedPropertyLogicalName": "iscustomizable"},
        **extra,
    }
    pk = Attribute(t.primary_id, "Uniqueidentifier", is_primary_id=True, valid_for_update=False, entity=logical)
    pk.extra = {"SchemaName": schema + "Id"}
    t.attributes[pk.name] = pk
    STATUS_STATE.setdefault(logical, {1: 0, 2: 1})
    state = ({0: "Active", 1: "Inactive"}, {1: "Active", 2: "Inactive"})
    for name, typ, kw in _system_columns(logical, ownership, state):
        t.attributes[name] = Attribute(name, typ, entity=logical, **kw)  # type: ignore[arg-type]
    return t


def do_create_table(emu: Emulator, body: dict[str, Any], save: bool = True) -> Table:
    """POST EntityDefinitions / CreateEntities: the table, its primary name column and any other columns."""
    schema = body.get("SchemaName")
    if not isinstance(schema, str) or not schema:
        raise errors.bad_request("The SchemaName of the entity is required.", "0x80044331")
    if schema.lower() in emu.tables:
        raise errors.DataverseError(
            400, "0x80047013", f"An entity with the specified name already exists. Name: {schema.lower()}"
        )
    attrs = body.get("Attributes") or []
    primary = [a for a in attrs if isinstance(a, dict) and a.get("IsPrimaryName")]
    if len(primary) != 1 or attribute_type(primary[0]) != "String":
        raise errors.bad_request(
            "The entity must have exactly one primary name attribute of type String.", "0x80044331"
        )
    logical = schema.lower()
    ownership = str(body.get("OwnershipType") or "UserOwned")
    if ownership not in ("UserOwned", "OrganizationOwned"):
        raise errors.bad_request(f"The OwnershipType '{ownership}' is not supported.", "0x80044331")
    extra: dict[str, Any] = {
        "DisplayName": read_label(body.get("DisplayName"), f"{logical}/display"),
        "DisplayCollectionName": read_label(body.get("DisplayCollectionName"), f"{logical}/collection"),
        "Description": read_label(body.get("Description"), f"{logical}/description"),
        "HasActivities": bool(body.get("HasActivities", False)),
        "HasNotes": bool(body.get("HasNotes", False)),
        "ChangeTrackingEnabled": bool(body.get("ChangeTrackingEnabled", False)),
        "IsActivity": bool(body.get("IsActivity", False)),
    }
    t = new_table(emu, schema, ownership, extra, body.get("EntitySetName"))
    t.display_name = label_text(body.get("DisplayName")) or schema
    t.display_collection_name = label_text(body.get("DisplayCollectionName")) or t.display_name
    for ab in attrs:
        for a in build_attributes(logical, ab):
            t.attributes[a.name] = a
            if a.is_primary_name:
                t.primary_name = a.name
    register_table(emu, t)
    if save:
        persist(emu, "table", body)
    return t


def do_seed(emu: Emulator, spec: dict[str, Any], save: bool = True) -> list[str]:
    """Admin bulk preload: many tables and columns in one call, without one request (or one PRAGMA) per column."""
    created = []
    for ts in spec.get("tables") or []:
        schema = str(ts["schema_name"])
        if schema.lower() in emu.tables:
            raise errors.bad_request(f"table {schema.lower()} already exists", "0x80047013")
        t = new_table(emu, schema, str(ts.get("ownership", "UserOwned")), {}, ts.get("entity_set"))
        t.display_name = t.display_collection_name = str(ts.get("display_name") or schema)
        primary = str(ts.get("primary_name") or f"{schema.split('_', 1)[0]}_Name")
        cols = [{"schema_name": primary, "type": "String", "max_length": 100, "primary": True}]
        cols += list(ts.get("columns") or [])
        for cs in cols:
            typ = SHORT_TYPES.get(str(cs.get("type", "string")).lower())
            if typ is None:
                raise errors.bad_request(f"unknown column type {cs.get('type')!r}", "0x0")
            cschema = str(cs["schema_name"])
            a = Attribute(
                cschema.lower(),
                typ,
                max_length=int(cs.get("max_length", 100)) if typ in ("String", "Memo") else None,
                options={int(k): str(v) for k, v in (cs.get("options") or {}).items()} or None,
                entity=t.logical_name,
                custom=True,
                is_primary_name=bool(cs.get("primary")),
                valid_for_create=typ not in ("File", "Image"),
                valid_for_update=typ not in ("File", "Image"),
                extra={**DEFAULTS.get(typ, {}), "SchemaName": cschema},
            )
            if typ in ("File", "Image"):
                a.extra["AttributeTypeName"] = {"Value": f"{typ}Type"}
            if a.max_length is not None:
                a.extra["MaxLength"] = a.max_length
            t.attributes[a.name] = a
            if a.is_primary_name:
                t.primary_name = a.name
        register_table(emu, t)
        created.append(t.logical_name)
    if save:
        persist(emu, "seed", spec)
    return created


# -- relationships ---------------------------------------------------------------------------------------------------


def do_create_relationship(emu: Emulator, body: dict[str, Any], save: bool = True) -> str:
    """1:N (with its lookup column) or N:N (with its intersect table); returns the relationship MetadataId."""
    odt = str(body.get("@odata.type", "")).lstrip("#").removeprefix("Microsoft.Dynamics.CRM.")
    schema = body.get("SchemaName")
    if not isinstance(schema, str) or not schema:
        raise errors.bad_request("The SchemaName of the relationship is required.", "0x80044331")
    taken = {r.schema_name.lower() for r in emu.rels} | {
        m["SchemaName"].lower() for m in getattr(emu, "many_to_many", [])
    }
    if schema.lower() in taken:
        raise errors.DataverseError(
            400, "0x80047013", f"A relationship with the specified name already exists. Name: {schema}"
        )
    if odt == "OneToManyRelationshipMetadata":
        referenced = emu.tables.get(str(body.get("ReferencedEntity", "")))
        referencing = emu.tables.get(str(body.get("ReferencingEntity", "")))
        if referenced is None or referencing is None:
            raise errors.DataverseError(404, "0x80040217", "The referenced or referencing entity does not exist.")
        lookup = body.get("Lookup") if isinstance(body.get("Lookup"), dict) else None
        if lookup is None or not isinstance(lookup.get("SchemaName"), str):
            raise errors.bad_request("A Lookup attribute is required to create a 1:N relationship.", "0x80044331")
        name = lookup["SchemaName"].lower()
        if name in referencing.attributes:
            raise errors.DataverseError(
                400, "0x80047013", f"An attribute with the name {name} already exists on {referencing.logical_name}."
            )
        a = Attribute(
            name,
            "Lookup",
            targets=(referenced.logical_name,),
            entity=referencing.logical_name,
            custom=True,
            required=str((lookup.get("RequiredLevel") or {}).get("Value", "None")),
            extra={
                "SchemaName": lookup["SchemaName"],
                "DisplayName": read_label(lookup.get("DisplayName"), f"{referencing.logical_name}/{name}/display"),
                "Description": read_label(lookup.get("Description"), f"{referencing.logical_name}/{name}/desc"),
            },
        )
        referencing.attributes[name] = a
        add_sql_column(emu, referencing, a)
        rel = Relationship(
            schema,
            referenced.logical_name,
            str(body.get("ReferencedAttribute") or referenced.primary_id),
            referencing.logical_name,
            name,
            str(body.get("ReferencingEntityNavigationPropertyName") or lookup["SchemaName"]),
            str(body.get("ReferencedEntityNavigationPropertyName") or schema),
            cascade=read_configuration(body.get("CascadeConfiguration")),
        )
        emu.rels.append(rel)
        mid = rel.metadata_id
    elif odt == "ManyToManyRelationshipMetadata":
        e1 = emu.tables.get(str(body.get("Entity1LogicalName", "")))
        e2 = emu.tables.get(str(body.get("Entity2LogicalName", "")))
        if e1 is None or e2 is None:
            raise errors.DataverseError(404, "0x80040217", "Entity1LogicalName or Entity2LogicalName does not exist.")
        intersect = str(body.get("IntersectEntityName") or schema).lower()
        a1, a2 = e1.primary_id, e2.primary_id if e2 is not e1 else e2.primary_id + "two"
        emu.store.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q(intersect)} ({q(intersect + 'id')} TEXT COLLATE NOCASE PRIMARY KEY, "
            f"{q(a1)} TEXT COLLATE NOCASE, {q(a2)} TEXT COLLATE NOCASE)"
        )
        mid = meta_id("rel", schema)
        m = {
            "MetadataId": mid,
            "SchemaName": schema,
            "Entity1LogicalName": e1.logical_name,
            "Entity2LogicalName": e2.logical_name,
            "IntersectEntityName": intersect,
            "Entity1IntersectAttribute": a1,
            "Entity2IntersectAttribute": a2,
            "Entity1NavigationPropertyName": str(body.get("Entity1NavigationPropertyName") or schema),
            "Entity2NavigationPropertyName": str(body.get("Entity2NavigationPropertyName") or schema),
        }
        if not hasattr(emu, "many_to_many"):
            emu.many_to_many = []  # type: ignore[attr-defined]
        emu.many_to_many.append(m)  # type: ignore[attr-defined]
    else:
        raise errors.payload_error(
            "RelationshipDefinitions", f"Microsoft.OData.ODataException: The relationship type '{odt}' is not valid."
        )
    if not hasattr(emu, "custom_relationships"):
        emu.custom_relationships = set()  # type: ignore[attr-defined]
    emu.custom_relationships.add(schema)  # type: ignore[attr-defined]
    if save:
        persist(emu, "relationship", body)
    return mid


def many_to_many_json(m: dict[str, Any]) -> dict[str, Any]:
    """ManyToManyRelationshipMetadata as read."""
    return {
        "@odata.type": "#Microsoft.Dynamics.CRM.ManyToManyRelationshipMetadata",
        **m,
        "RelationshipType": "ManyToManyRelationship",
        "IsCustomRelationship": True,
        "IsManaged": False,
        "IsValidForAdvancedFind": True,
    }


# -- HTTP handlers ---------------------------------------------------------------------------------------------------


def record_solution(emu: Emulator, solution: str | None, kind: str, mid: str) -> None:
    if solution:
        if not hasattr(emu, "solution_components"):
            emu.solution_components = {}  # type: ignore[attr-defined]
        emu.solution_components.setdefault(solution, []).append((kind, mid))  # type: ignore[attr-defined]
