"""Request bodies from ``fields``: lookups bound as ``<navigation>@odata.bind``, choice labels mapped to integers,
values checked against their column types.

The navigation name comes from the relationship's ``ReferencingEntityNavigationPropertyName``: per target table for
polymorphic columns (``customerid_account``), the one name for a column with a single relationship (``ownerid`` for a
user or a team). The same builder runs in phase two (collecting problems, resolving nothing) and when sending.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from connector.addressing import find_by_key, key_value, not_found, predicate
from connector.errors import InputError, LiteralError
from connector.metadata import TableMetadata
from connector.odata import (
    CHOICE_TYPES,
    LOOKUP_TYPES,
    NUMERIC_TYPES,
    STRING_TYPES,
    format_literal,
    key_is_url_safe,
)
from connector.problems import (
    Problems,
    check_guid,
    check_key,
    check_limits,
    check_sendable,
    columns_known,
    unknown_column,
)

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["bind_lookup", "build_body", "check_fields", "key_body", "plain_value"]


def check_fields(
    p: Problems,
    meta: TableMetadata,
    fields: Mapping[str, Any],
    path: str,
    *,
    for_create: bool,
) -> TableMetadata:
    meta = columns_known(p, meta, list(fields))
    build_body(p.connection, meta, fields, path, for_create=for_create, problems=p, resolve=False)
    return meta


def build_body(
    connection: Connection,
    meta: TableMetadata,
    fields: Mapping[str, Any],
    path: str,
    *,
    for_create: bool,
    problems: Problems | None = None,
    resolve: bool = True,
    impersonate: str | None = None,
) -> dict[str, Any]:
    """The JSON body for ``fields``: lookups as ``@odata.bind``, labels as integers, values checked against types."""
    p = problems or Problems(connection)
    body: dict[str, Any] = {}
    for column, value in fields.items():
        here = f"{path}.{column}"
        attr = meta.attributes.get(column)
        if attr is None:
            p.add(here, unknown_column(meta, column))
            continue
        if for_create and not attr.valid_for_create:
            p.add(here, f"{column!r} cannot be set when a row is created (Dataverse sets it)")
            continue
        if not for_create and not attr.valid_for_update:
            p.add(here, f"{column!r} cannot be changed on update")
            continue
        if not check_sendable(p, value, here):
            continue
        typ = attr.type
        if typ in LOOKUP_TYPES:
            bound = bind_lookup(p, meta, column, value, here, resolve=resolve, impersonate=impersonate)
            if bound is not None:
                body[bound[0]] = bound[1]
            continue
        if value is None:
            body[column] = None
            continue
        try:
            body[column] = plain_value(connection, meta, column, typ, value)
        except (LiteralError, ValueError) as exc:
            p.add(here, str(exc))
            continue
        check_limits(p, meta, column, value, here)
    if problems is None and p.items:
        raise InputError(p.items)
    return body


def plain_value(connection: Connection, meta: TableMetadata, column: str, typ: str, value: Any) -> Any:
    if typ in STRING_TYPES:  # first: most columns a bulk write sets are text
        if not isinstance(value, str):
            raise LiteralError(f"{column!r} is a text column: give a string")
        return value
    if typ in CHOICE_TYPES:
        if isinstance(value, str):
            return connection.metadata.choice_value(meta.logical_name, column, value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise LiteralError(f"{column!r} is a choice column: give its integer value or its label")
        return value
    if typ in NUMERIC_TYPES and (isinstance(value, bool) or not isinstance(value, (int, float))):
        kind = {"Integer": "whole-number", "BigInt": "whole-number", "Money": "currency"}.get(typ, typ.lower())
        raise LiteralError(f"{column!r} is a {kind} column: give a number, not text")
    if typ in ("Integer", "BigInt") and isinstance(value, float) and not value.is_integer():
        raise LiteralError(f"{column!r} is a whole-number column")
    if typ == "Boolean" and not isinstance(value, bool):
        raise LiteralError(f"{column!r} is a yes/no column: give true or false")
    if typ in ("DateTime", "Uniqueidentifier"):
        format_literal(value, typ)
    return value


def bind_lookup(
    p: Problems,
    meta: TableMetadata,
    column: str,
    value: Any,
    path: str,
    *,
    resolve: bool,
    impersonate: str | None,
) -> tuple[str, Any] | None:
    """``(nav@odata.bind, "/set(id)")`` for a lookup value, with the navigation name from the relationship."""
    relationships = meta.lookups.get(column, ())
    if not relationships:
        p.add(path, f"{column!r} has no relationship in the metadata of {meta.logical_name!r}; it cannot be set")
        return None
    if value is None:
        return f"{relationships[0].navigation}@odata.bind", None
    if not isinstance(value, Mapping) or "table" not in value:
        p.add(path, f'{column!r} is a lookup: give {{"table": ..., "id": GUID}} or {{"table": ..., "key": {{...}}}}')
        return None
    target = p.table(str(value["table"]), f"{path}.table")
    if target is None:
        return None
    allowed: tuple[str, ...]
    if len(relationships) == 1:
        rel = relationships[0]
        allowed = ("systemuser", "team") if rel.target == "owner" else (rel.target,)
    else:
        matching = [r for r in relationships if r.target == target.logical_name]
        allowed = tuple(r.target for r in relationships)
        rel = matching[0] if matching else relationships[0]
    if target.logical_name not in allowed:
        p.add(f"{path}.table", f"{column!r} refers to {' or '.join(allowed)}, not {target.logical_name!r}")
        return None
    nav = f"{rel.navigation}@odata.bind"
    if value.get("id") is not None:
        if not check_guid(p, value["id"], f"{path}.id"):
            return None
        return nav, f"/{target.entity_set}({value['id']})"
    key = value.get("key") or {}
    target, literals = check_key(p, target, key, f"{path}.key")
    if literals is None:
        return None
    if key_is_url_safe(key):
        return nav, f"/{target.entity_set}({predicate(p.connection, target, key, literals)})"
    if not resolve:
        return nav, None
    found = find_by_key(p.connection, target, key, impersonate, literals)
    if found is None:
        raise not_found(target, key=key, what=f"the row {column!r} refers to")
    return nav, f"/{target.entity_set}({found})"


def key_body(connection: Connection, meta: TableMetadata, key: Mapping[str, Any]) -> dict[str, Any]:
    """Key values as body columns for a POST (a lookup key column is bound through its one relationship)."""
    out: dict[str, Any] = {}
    for column, value in key.items():
        typ = meta.attributes[column].type
        if typ in LOOKUP_TYPES:
            rel = meta.lookups[column][0]
            target = connection.metadata.table(rel.target)
            out[f"{rel.navigation}@odata.bind"] = f"/{target.entity_set}({value})"
        else:
            out[column] = key_value(connection, meta, column, value)
    return out
