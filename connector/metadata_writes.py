"""Column and alternate-key writes for admins' workflows: create and update a column, create a key and wait for it.

Every write here calls :meth:`MetadataCache.invalidate` for the tables it touched (even when the write failed, since it
may have half-applied), so the next record action reads the new definition with ``Consistency: Strong`` instead of
failing on a column it cannot see.

Columns may be given as a full AttributeMetadata body (as Microsoft documents it) or in a short typed form that
:func:`expand_attribute` turns into that body; a lookup becomes a one-to-many relationship, because Dataverse creates
lookup columns only through ``RelationshipDefinitions``. The inputs reach these functions checked
(:mod:`connector.metadata_checks`), so every input problem is reported before any write.

A create whose answer is an error or was lost is checked by reading (:func:`_post_or_confirm`): the definition exists
as asked -> success, ``outcome`` ``created`` with ``confirmed_by_read`` after a lost answer, ``already_present`` after
Dataverse's "already exists" (a rerun); it exists otherwise -> the conflict is named; it does not -> the error stands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from connector.errors import DataverseApiError, FatalApiError, KeyActivationError, NotFoundError
from connector.inputs import CreateAlternateKey, CreateAttribute, ListAlternateKeys, UpdateAttribute
from connector.metadata_reads import (
    CRM,
    TableRef,
    column_ref,
    get_definition,
    label_text,
    list_alternate_keys,
    read_key,
    resolve_table,
    strip_annotations,
)
from connector.odata import entity_id

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "ATTRIBUTE_TYPES",
    "LANGUAGE",
    "create_alternate_key",
    "create_attribute",
    "expand_attribute",
    "is_short_form",
    "label",
    "update_attribute",
    "wait_until_active",
]

#: The language of labels the user gives without one (English, the base language of most organisations).
LANGUAGE = 1033
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
    "file": ("FileAttributeMetadata", "Virtual", "FileType"),
    "image": ("ImageAttributeMetadata", "Virtual", "ImageType"),
}
_REQUIRED = {"none": "None", "recommended": "Recommended", "required": "ApplicationRequired"}
#: A new lookup's relationship: deleting the target row clears the lookup; nothing else cascades.
_CASCADE = {
    "Assign": "NoCascade",
    "Delete": "RemoveLink",
    "Merge": "NoCascade",
    "Reparent": "NoCascade",
    "Share": "NoCascade",
    "Unshare": "NoCascade",
}


def label(text: str, language: int = LANGUAGE) -> dict[str, Any]:
    """A Label as Dataverse wants it on create and update (``UserLocalizedLabel`` is read-only)."""
    return {
        "@odata.type": CRM + "Label",
        "LocalizedLabels": [{"@odata.type": CRM + "LocalizedLabel", "Label": text, "LanguageCode": language}],
    }


def _solution_headers(solution: str | None) -> dict[str, str]:
    """Names the unmanaged solution a new component joins; without it, it lands in the default solution."""
    return {"MSCRM.SolutionUniqueName": solution} if solution else {}


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
    body.update(_type_properties(kind, short, language))
    if kind == "lookup":
        return _relationship(short, body, referencing=referencing, target_id=target_id)
    return body


def _type_properties(kind: str, short: Mapping[str, Any], language: int) -> dict[str, Any]:
    """The properties only a column of this short type has, with Dataverse's defaults where the user gave none."""
    body: dict[str, Any] = {}
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
    elif kind in ("file", "image"):
        # Dataverse's defaults: 32 MB for files, 10 MB for images (file-column-data.md, image-column-data.md)
        body["MaxSizeInKB"] = int(short.get("max_size_kb", 32768 if kind == "file" else 10240))
        if kind == "image":
            body["CanStoreFullImage"] = bool(short.get("store_full_image", False))
            body["IsPrimaryImage"] = False
    return body


def _relationship(
    short: Mapping[str, Any], lookup: dict[str, Any], *, referencing: str | None, target_id: str | None
) -> dict[str, Any]:
    """The OneToManyRelationshipMetadata that creates a lookup column: Dataverse makes lookups no other way."""
    schema = str(short["schema_name"])
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
        "Lookup": lookup,
    }


def _post_or_confirm(
    connection: Connection,
    path: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    find: Callable[[], Mapping[str, Any]],
    conflict: Callable[[Mapping[str, Any]], str | None],
) -> tuple[httpx.Response | None, Mapping[str, Any] | None, dict[str, Any]]:
    """POST a definition; on an error or a lost answer, ``find()`` reads it back (404: absent) and ``conflict(found)``
    says how it differs from what was asked (None: it matches). Returns the answer or the definition found, and the
    outcome fields of the output. A rerun of a create is then a success, not "already exists" with exit 2."""
    try:
        return connection.client.request("POST", path, json=body, headers=headers), None, _outcome("created", False)
    except DataverseApiError as exc:
        try:
            found = find()
        except DataverseApiError:  # not there (404), or the read failed too: the POST's own error stands
            raise exc from None
        differs = conflict(found)
        if differs is not None:
            raise FatalApiError(f"{exc} ({differs})", status_code=exc.status_code, code=exc.code) from exc
        refused = isinstance(exc, FatalApiError)  # "already exists": an earlier run created it
        return None, found, _outcome("already_present" if refused else "created", True)


def _outcome(outcome: str, confirmed_by_read: bool) -> dict[str, Any]:
    return {"outcome": outcome, "confirmed_by_read": confirmed_by_read}


def _attribute_type(body: Mapping[str, Any]) -> str | None:
    """The AttributeType a column body asks for (a full body may give only its ``@odata.type``)."""
    if body.get("AttributeType"):
        return str(body["AttributeType"])
    cast = str(body.get("@odata.type", "")).removeprefix(CRM)
    return next((t for c, t, _ in ATTRIBUTE_TYPES.values() if c == cast), None)


def _column_conflict(wanted: str | None) -> Callable[[Mapping[str, Any]], str | None]:
    def conflict(found: Mapping[str, Any]) -> str | None:
        have = found.get("AttributeType")
        if wanted is None or have == wanted:
            return None
        return f"the column exists as {have}, not {wanted}"

    return conflict


def is_short_form(attribute: Mapping[str, Any]) -> bool:
    """Whether a column is given in the short typed form (``type``) rather than as a full body (``@odata.type``)."""
    return "type" in attribute and "@odata.type" not in attribute


def create_attribute(connection: Connection, inputs: CreateAttribute) -> dict[str, Any]:
    """POST the column (or, for a lookup, its relationship) and forget the tables it changes in the cache."""
    table = resolve_table(connection, inputs.table)
    spec = inputs.attribute
    headers = _solution_headers(inputs.solution)
    touched = [table.logical_name]
    relationship = None

    def column(schema: str) -> Callable[[], Mapping[str, Any]]:
        path = f"{table.path}/Attributes({column_ref(schema)})"
        return lambda: get_definition(connection, path, {"$select": "LogicalName,AttributeType"}, strong=True)

    try:
        if is_short_form(spec) and spec["type"] == "lookup":
            target = resolve_table(connection, str(spec["target"]), "$.attribute.target")
            body = expand_attribute(
                {**spec, "target": target.logical_name},
                referencing=table.logical_name,
                target_id=target.metadata.primary_id,
            )
            touched.append(target.logical_name)
            schema = str(body["Lookup"]["SchemaName"])
            response, _, outcome = _post_or_confirm(
                connection, "RelationshipDefinitions", body, headers, column(schema), _column_conflict("Lookup")
            )
            relationship = {"schema_name": body["SchemaName"], "metadata_id": entity_id(response) if response else None}
            # the answer names the relationship; the new column's own id takes one strong read
            attribute_id = column(schema)().get("MetadataId")
        else:
            body = expand_attribute(spec) if is_short_form(spec) else dict(spec)
            schema = str(body["SchemaName"])
            response, found, outcome = _post_or_confirm(
                connection,
                f"{table.path}/Attributes",
                body,
                headers,
                column(schema),
                _column_conflict(_attribute_type(body)),
            )
            attribute_id = entity_id(response) if response is not None else (found or {}).get("MetadataId")
    finally:
        # even a failed write may have half-applied on the server; the cache must not keep answering the old shape
        for name in touched:
            connection.metadata.invalidate(name)
    out: dict[str, Any] = {
        "table": table.logical_name,
        "logical_name": schema.lower(),
        "schema_name": schema,
        "metadata_id": attribute_id,
        **outcome,
    }
    if relationship is not None:
        out["relationship"] = relationship
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


def update_attribute(connection: Connection, inputs: UpdateAttribute) -> dict[str, Any]:
    """Read the current definition, merge the changes, PUT it whole (metadata has no PATCH), publish if labels moved.

    ``MSCRM.MergeLabels: true`` is sent unless ``merge_labels`` is false: without it Dataverse drops every language
    not in the body.
    """
    table = resolve_table(connection, inputs.table)
    column_path = f"{table.path}/Attributes({column_ref(inputs.attribute)})"
    current = strip_annotations(get_definition(connection, column_path, strong=True))
    language = inputs.language_code
    body: dict[str, Any] = {k: v for k, v in current.items() if k not in ("MetadataId",)}
    for name in ("DisplayName", "Description"):
        if name in body:
            body[name] = _clean_label(body[name])
    body["@odata.type"] = str(current.get("@odata.type", "")).lstrip("#")
    changed_labels = False
    for text, prop in ((inputs.label, "DisplayName"), (inputs.description, "Description")):
        if text is not None:
            old = label_text(current.get(prop), language)
            body[prop] = _merge_label(current.get(prop), text, language)
            changed_labels = changed_labels or old != text
    if inputs.required is not None:
        body["RequiredLevel"] = {**(current.get("RequiredLevel") or {}), "Value": _REQUIRED[inputs.required]}
    if inputs.max_length is not None:
        body["MaxLength"] = inputs.max_length
    for key, value in (inputs.changes or {}).items():
        if key in ("DisplayName", "Description") and value != current.get(key):
            changed_labels = True
        body[key] = value
    headers = _solution_headers(inputs.solution)
    headers["MSCRM.MergeLabels"] = "true" if inputs.merge_labels else "false"
    try:
        connection.client.request("PUT", column_path, json=body, headers=headers)
    finally:
        connection.metadata.invalidate(table.logical_name)
    published = False
    if changed_labels and inputs.publish:
        xml = f"<importexportxml><entities><entity>{table.logical_name}</entity></entities></importexportxml>"
        connection.client.request("POST", "PublishXml", json={"ParameterXml": xml})
        published = True
    return {
        "table": table.logical_name,
        "logical_name": current.get("LogicalName"),
        "metadata_id": current.get("MetadataId"),
        "labels_changed": changed_labels,
        "published": published,
    }


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
        row = read_key(connection, table, key_id)
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


def create_alternate_key(connection: Connection, inputs: CreateAlternateKey) -> dict[str, Any]:
    """POST the key definition; with ``wait_until_active``, poll its index status until Active or the timeout."""
    table = resolve_table(connection, inputs.table)
    schema = inputs.schema_name
    body = {
        "@odata.type": CRM + "EntityKeyMetadata",
        "SchemaName": schema,
        "DisplayName": label(inputs.label or schema),
        "KeyAttributes": [c.lower() for c in inputs.columns],
    }
    headers = _solution_headers(inputs.solution)

    def find() -> Mapping[str, Any]:
        listed = list_alternate_keys(connection, ListAlternateKeys(table=table.logical_name))["keys"]
        found = next((k for k in listed if str(k["schema_name"]).lower() == schema.lower()), None)
        if found is None:
            raise NotFoundError(f"no key {schema!r} on {table.logical_name!r}")
        return dict(found)

    def conflict(found: Mapping[str, Any]) -> str | None:
        have, wanted = sorted(found["columns"]), sorted(body["KeyAttributes"])
        return None if have == wanted else f"key {schema!r} exists with columns {have}, not {wanted}"

    try:
        response, found, outcome = _post_or_confirm(connection, f"{table.path}/Keys", body, headers, find, conflict)
    finally:
        connection.metadata.invalidate(table.logical_name)
    key_id = entity_id(response) if response is not None else (found or {}).get("metadata_id")
    if key_id is None:
        listed = list_alternate_keys(connection, ListAlternateKeys(table=table.logical_name))["keys"]
        key_id = next((k["metadata_id"] for k in listed if str(k["schema_name"]).lower() == schema.lower()), None)
    if key_id is None:
        raise FatalApiError(f"Dataverse accepted key {schema!r} but does not list it on {table.logical_name!r}")
    if inputs.wait_until_active:
        key, timed_out = wait_until_active(
            connection, table, str(key_id), timeout_s=inputs.timeout_s, poll_s=inputs.poll_interval_s
        )
    else:
        key = read_key(connection, table, str(key_id))
        timed_out = False
    active = key["status"] == "Active"
    return {"table": table.logical_name, "key": key, "active": active, "timed_out": timed_out, **outcome}
