"""Addressing rows: alternate-key values and predicates, ``$filter`` lookups for keys a URL cannot carry, row paths,
``$select``/``$expand`` parameters, and the not-found error that names the row the way the user did.

Key values are typed from the column types (choice labels mapped through the option set) before they are written as
literals; values Dataverse refuses inside a key predicate go through :func:`find_by_key` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from connector.errors import NotFoundError
from connector.inputs import Expand
from connector.metadata import TableMetadata
from connector.odata import (
    CHOICE_TYPES,
    build_query_string,
    filter_column,
    format_literal,
    key_is_url_safe,
    literal_key_predicate,
)

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "address",
    "describe_key",
    "expand_param",
    "find_by_key",
    "key_literal",
    "key_value",
    "not_found",
    "predicate",
    "select_params",
    "with_query",
]


def key_value(connection: Connection, meta: TableMetadata, column: str, value: Any) -> Any:
    if meta.attributes[column].type in CHOICE_TYPES and isinstance(value, str):
        return connection.metadata.choice_value(meta.logical_name, column, value)
    return value


def key_literal(connection: Connection, meta: TableMetadata, column: str, value: Any) -> str:
    """The one place a key value becomes an OData literal: typed from its column, a choice label mapped to its value.

    Raises ``LiteralError``/``ValueError`` with the fix; :func:`connector.problems.check_key` turns that into a
    problem and hands the literals on, so a checked key is never formatted again on its way to the request.
    """
    return format_literal(key_value(connection, meta, column, value), meta.attributes[column].type)


def predicate(
    connection: Connection, meta: TableMetadata, key: Mapping[str, Any], literals: Mapping[str, str] | None = None
) -> str:
    """``col='v',col2=2`` for a key URL, from the literals a check already made when given."""
    if literals is None:
        literals = {column: key_literal(connection, meta, column, value) for column, value in key.items()}
    return literal_key_predicate(literals, meta.types)


def describe_key(key: Mapping[str, Any]) -> str:
    return ", ".join(f"{c}={v!r}" for c, v in key.items())


def not_found(
    meta: TableMetadata,
    *,
    id: str | None = None,
    key: Mapping[str, Any] | None = None,
    cause: NotFoundError | None = None,
    what: str = "the row",
) -> NotFoundError:
    named = f"id {id}" if id else f"key {describe_key(key or {})}"
    extra: dict[str, Any] = {}
    if cause is not None:
        extra = {"status_code": cause.status_code, "code": cause.code, "request_id": cause.request_id}
    else:
        extra = {"status_code": 404}
    return NotFoundError(f"{what} of table {meta.logical_name!r} with {named} does not exist", **extra)


def find_by_key(
    connection: Connection,
    meta: TableMetadata,
    key: Mapping[str, Any],
    impersonate: str | None,
    literals: Mapping[str, str] | None = None,
) -> str | None:
    """The GUID of the row with these key values, found through ``$filter`` (for values a key URL cannot carry)."""
    if literals is None:
        literals = {column: key_literal(connection, meta, column, value) for column, value in key.items()}
    clauses = [f"{filter_column(column, meta.attributes[column].type)} eq {lit}" for column, lit in literals.items()]
    query = build_query_string({"$select": meta.primary_id, "$filter": " and ".join(clauses), "$top": "1"})
    body = connection.client.get_json(f"{meta.entity_set}?{query}", impersonate=impersonate)
    rows = body.get("value", []) if isinstance(body, dict) else []
    return str(rows[0][meta.primary_id]) if rows else None


def address(
    connection: Connection,
    meta: TableMetadata,
    id: str | None,
    key: Mapping[str, Any] | None,
    impersonate: str | None,
) -> str:
    """``set(guid)`` or ``set(k='v')``; a key a URL cannot carry is first resolved to its GUID through $filter."""
    if id is not None:
        return f"{meta.entity_set}({id})"
    assert key
    if key_is_url_safe(key):
        return f"{meta.entity_set}({predicate(connection, meta, key)})"
    found = find_by_key(connection, meta, key, impersonate)
    if found is None:
        raise not_found(meta, key=key)
    return f"{meta.entity_set}({found})"


def with_query(path: str, params: Mapping[str, str]) -> str:
    query = build_query_string({k: v for k, v in params.items() if v})
    return f"{path}?{query}" if query else path


def select_params(
    connection: Connection, meta: TableMetadata, select: Sequence[str] | None, expand: Sequence[Expand] | None = None
) -> dict[str, str]:
    """``$select`` with lookup columns written as ``_x_value``, and ``$expand`` with each related table's columns."""
    params: dict[str, str] = {}
    if select:
        params["$select"] = ",".join(filter_column(c, meta.attributes[c].type) for c in select)
    if expand:
        params["$expand"] = expand_param(meta, expand, connection)
    return params


def expand_param(meta: TableMetadata, expand: Sequence[Expand], connection: Connection) -> str:
    parts = []
    for item in expand:
        nav, select = item.navigation, item.select
        if select:
            target_name = meta.navigation_target(nav)
            columns = list(select)
            if target_name is not None and target_name[0] != "owner":
                target = connection.metadata.table(target_name[0])
                columns = [filter_column(c, target.attributes[c].type) if c in target.attributes else c for c in select]
            parts.append(f"{nav}($select={','.join(columns)})")
        else:
            parts.append(nav)
    return ",".join(parts)
