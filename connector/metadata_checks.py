"""Phase-two validation of the metadata actions: what the JSON Schema cannot see, found with metadata reads only.

Unknown tables and columns, full bodies Dataverse would refuse, key columns of a type a key cannot use, a column or key
that already exists, a page token from another organization: all are reported (with their JSON paths) before any
write, so an admin's workflow never leaves half a change behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from connector.errors import InputError, InputProblem
from connector.inputs import (
    CreateAlternateKey,
    CreateAttribute,
    GetAttribute,
    GetEntitiesMetadata,
    GetEntityMetadata,
    ListAlternateKeys,
    ListAttributes,
    ListEntityTypes,
    QueryAttributes,
    UpdateAttribute,
)
from connector.metadata_reads import CRM, GUID, TableRef, label_text, resolve_table, table_rows
from connector.metadata_writes import is_short_form
from connector.odata import PageToken

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "SCHEMA_NAME",
    "create_alternate_key_problems",
    "create_attribute_problems",
    "get_attribute_problems",
    "get_entities_metadata_problems",
    "get_entity_metadata_problems",
    "list_alternate_keys_problems",
    "list_attributes_problems",
    "list_entity_types_problems",
    "query_attributes_problems",
    "update_attribute_problems",
]

#: A schema name carries its publisher's customization prefix (``new_``, ``contoso_``): Dataverse refuses others.
SCHEMA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,7}_[A-Za-z0-9_]+$")
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
#: Column types a key may use (reference section 3.3).
_KEY_TYPES = {"Decimal", "Integer", "String", "DateTime", "Lookup", "Customer", "Owner", "Picklist"}


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


def list_entity_types_problems(inputs: ListEntityTypes, connection: Connection) -> list[InputProblem]:
    """A page token from another organization (or a broken one) is refused before the read."""
    if not inputs.page_token:
        return []
    try:
        PageToken.decode(inputs.page_token, host=connection.host)
    except InputError as exc:
        return list(exc.problems)
    return []


def get_entity_metadata_problems(inputs: GetEntityMetadata, connection: Connection) -> list[InputProblem]:
    """An unknown table; an entity set name is looked up by the read itself, which the cache cannot answer."""
    if inputs.by == "entity_set_name":
        return []
    return _table_problems(connection, inputs.table)


def get_entities_metadata_problems(inputs: GetEntitiesMetadata, connection: Connection) -> list[InputProblem]:
    """A chosen table that no logical name or entity set name matches."""
    if not inputs.default_selected:
        return []
    rows = table_rows(connection, ("LogicalName", "EntitySetName"), None)
    known = {str(r.get("LogicalName")).lower() for r in rows} | {str(r.get("EntitySetName")).lower() for r in rows}
    return [
        InputProblem(f"$.default_selected[{n}]", f"no table is named {name!r}")
        for n, name in enumerate(inputs.default_selected)
        if name.lower() not in known
    ]


def create_attribute_problems(inputs: CreateAttribute, connection: Connection) -> list[InputProblem]:
    """An unknown table, or a column Dataverse would refuse or already has."""
    return _table_problems(connection, inputs.table, lambda t: _new_column_problems(connection, t, inputs.attribute))


def get_attribute_problems(inputs: GetAttribute, connection: Connection) -> list[InputProblem]:
    """An unknown table or column."""
    return _table_problems(connection, inputs.table, lambda t: _column_problems(connection, t, inputs.attribute))


def update_attribute_problems(inputs: UpdateAttribute, connection: Connection) -> list[InputProblem]:
    """An unknown table or column, found before the read-merge-PUT."""
    return _table_problems(connection, inputs.table, lambda t: _column_problems(connection, t, inputs.attribute))


def list_attributes_problems(inputs: ListAttributes, connection: Connection) -> list[InputProblem]:
    """An unknown table."""
    return _table_problems(connection, inputs.table)


def query_attributes_problems(inputs: QueryAttributes, connection: Connection) -> list[InputProblem]:
    """An unknown table."""
    return _table_problems(connection, inputs.table)


def create_alternate_key_problems(inputs: CreateAlternateKey, connection: Connection) -> list[InputProblem]:
    """An unknown table, key columns missing or of a type a key cannot use, a table at its limit, a taken name."""
    return _table_problems(connection, inputs.table, lambda t: _new_key_problems(t, inputs.columns, inputs.schema_name))


def list_alternate_keys_problems(inputs: ListAlternateKeys, connection: Connection) -> list[InputProblem]:
    """An unknown table."""
    return _table_problems(connection, inputs.table)


def _table_problems(
    connection: Connection, ref: str, more: Callable[[TableRef], list[InputProblem]] | None = None
) -> list[InputProblem]:
    """An unknown table alone (nothing else can be checked without it), else what ``more`` finds in the known one."""
    try:
        table = resolve_table(connection, ref)
    except InputError as exc:
        return list(exc.problems)
    return more(table) if more is not None else []


def _column_problems(connection: Connection, table: TableRef, column: str) -> list[InputProblem]:
    """A column named by logical name must exist; the cache is refreshed once first, since it may predate the column."""
    if GUID.match(column) or column.lower() in table.metadata.attributes:
        return []
    if column.lower() in connection.metadata.table(table.logical_name, refresh=True).attributes:
        return []
    return [
        InputProblem(
            "$.attribute", f"table {table.logical_name!r} has no column {column!r}; list_attributes shows its columns"
        )
    ]


def _new_column_problems(connection: Connection, table: TableRef, spec: Mapping[str, Any]) -> list[InputProblem]:
    """A full body Dataverse would refuse, a string too long, a lookup to an unknown table, a column already there."""
    problems: list[InputProblem] = []
    if not is_short_form(spec):
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
    schema = spec.get("schema_name") if is_short_form(spec) else spec.get("SchemaName")
    if isinstance(schema, str) and schema.lower() in table.metadata.attributes:
        problems.append(
            InputProblem("$.attribute", f"table {table.logical_name!r} already has a column {schema.lower()!r}")
        )
    return problems


def _new_key_problems(table: TableRef, columns: Sequence[Any], schema_name: str) -> list[InputProblem]:
    """Key columns that are missing or of a type a key cannot use, a table at the limit of 10 keys, a taken name."""
    problems: list[InputProblem] = []
    meta = table.metadata
    for n, column in enumerate(columns):
        attribute = meta.attributes.get(str(column).lower())
        if attribute is None:
            problems.append(InputProblem(f"$.columns[{n}]", f"table {table.logical_name!r} has no column {column!r}"))
        elif attribute.type not in _KEY_TYPES:
            problems.append(
                InputProblem(
                    f"$.columns[{n}]",
                    f"{column!r} is a {attribute.type} column; key columns must be Decimal, Integer, String, "
                    "DateTime, Lookup or Picklist",
                )
            )
    if len(meta.keys) >= 10 and not any(k.schema_name.lower() == schema_name.lower() for k in meta.keys):
        problems.append(InputProblem("$.table", f"table {table.logical_name!r} already has 10 keys, the maximum"))
    same = next((k for k in meta.keys if k.schema_name.lower() == schema_name.lower()), None)
    wanted = {str(c).lower() for c in columns}
    if same is not None and set(same.columns) != wanted:  # the same key again is a rerun: reported already_present
        problems.append(
            InputProblem(
                "$.schema_name",
                f"a key named {schema_name!r} already exists with columns {sorted(same.columns)}, not {sorted(wanted)}",
            )
        )
    return problems
