"""Phase-two validation of the metadata actions: what the JSON Schema cannot see, found with metadata reads only.

Unknown tables and columns, full bodies Dataverse would refuse, key columns of a type a key cannot use, a column or key
that already exists, a page token from another organization: all are reported (with their JSON paths) before any
write, so an admin's workflow never leaves half a change behind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from connector.errors import InputError, InputProblem
from connector.metadata_reads import CRM, GUID, TableRef, label_text, resolve_table, table_rows
from connector.metadata_writes import is_short_form
from connector.odata import PageToken

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["METADATA_ACTIONS", "SCHEMA_NAME", "input_problems"]

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
        rows = table_rows(connection, ("LogicalName", "EntitySetName"), None)
        known = {str(r.get("LogicalName")).lower() for r in rows} | {str(r.get("EntitySetName")).lower() for r in rows}
        for n, name in enumerate(inputs["default_selected"]):
            if str(name).lower() not in known:
                problems.append(InputProblem(f"$.default_selected[{n}]", f"no table is named {name!r}"))
    if table is None:
        return problems
    if action_id in ("get_attribute", "update_attribute"):
        problems += _column_problems(connection, table, str(inputs["attribute"]))
    if action_id == "create_attribute":
        problems += _new_column_problems(connection, table, inputs["attribute"])
    if action_id == "create_alternate_key":
        problems += _new_key_problems(table, inputs["columns"], str(inputs["schema_name"]))
    return problems


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
    if len(meta.keys) >= 10:
        problems.append(InputProblem("$.table", f"table {table.logical_name!r} already has 10 keys, the maximum"))
    if any(k.schema_name.lower() == schema_name.lower() for k in meta.keys):
        problems.append(InputProblem("$.schema_name", f"a key named {schema_name!r} already exists"))
    return problems
