"""Phase-two input checks shared by every operation: the problem collector and the column and key checks.

Checks read metadata only (never data, never a write), and a miss triggers one fresh read of the table before it is
reported, because a column or a key may have been created a moment ago by another action of the same run.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from connector.addressing import key_literal
from connector.errors import InputError, InputProblem, LiteralError
from connector.inputs import Expand
from connector.metadata import TableMetadata

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "Problems",
    "check_expand",
    "check_key",
    "check_navigation",
    "check_returned",
    "check_select",
    "check_table",
    "columns_known",
    "unknown_column",
]


class Problems:
    """Collects problems; metadata misses trigger one fresh read of the table (a key may have just been created)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.items: list[InputProblem] = []
        self._refreshed: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.items.append(InputProblem(path, message))

    def table(self, name: str, path: str) -> TableMetadata | None:
        try:
            return self.connection.metadata.table(name, path=path)
        except InputError as exc:
            self.items += [InputProblem(path, p.message) for p in exc.problems]
            return None

    def fresh(self, meta: TableMetadata) -> TableMetadata:
        """Re-read a table once per validation, after a miss, before reporting the miss."""
        if meta.logical_name in self._refreshed:
            return meta
        self._refreshed.add(meta.logical_name)
        return self.connection.metadata.table(meta.logical_name, refresh=True)


def unknown_column(meta: TableMetadata, column: str) -> str:
    close = difflib.get_close_matches(column, list(meta.attributes), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown column {column!r} of table {meta.logical_name!r}{hint}"


def columns_known(p: Problems, meta: TableMetadata, columns: Sequence[str]) -> TableMetadata:
    if any(c not in meta.attributes for c in columns):
        meta = p.fresh(meta)
    return meta


def check_key(
    p: Problems, meta: TableMetadata, key: Mapping[str, Any], path: str
) -> tuple[TableMetadata, dict[str, str] | None]:
    """Problems of an alternate key (unknown columns, columns outside every key, no key of exactly these columns,
    an index not yet active, values of the wrong type); the key's OData literals when it has none, else None."""
    columns = frozenset(key)
    if meta.key_for(columns) is None or any(c not in meta.attributes for c in columns):
        meta = p.fresh(meta)
    ok = True
    in_keys = meta.key_columns()
    for column in key:
        if column not in meta.attributes:
            p.add(f"{path}.{column}", unknown_column(meta, column))
            ok = False
        elif column not in in_keys:
            p.add(
                f"{path}.{column}",
                f"column {column!r} is not part of any alternate key of {meta.logical_name!r}; "
                f"{meta.describe_keys()}. Use id, or create an alternate key with this column",
            )
            ok = False
    if not ok:
        return meta, None
    found = meta.key_for(columns)
    if found is None:
        p.add(
            path, f"no alternate key of {meta.logical_name!r} is made of exactly these columns; {meta.describe_keys()}"
        )
        return meta, None
    if not found.active:
        p.add(
            path,
            f"the alternate key {found.schema_name!r} is {found.status}: its index is not ready; try again when "
            "EntityKeyIndexStatus is Active",
        )
        return meta, None
    literals: dict[str, str] = {}
    for column, value in key.items():
        try:
            literals[column] = key_literal(p.connection, meta, column, value)
        except (LiteralError, ValueError) as exc:
            p.add(f"{path}.{column}", str(exc))
            ok = False
    return meta, literals if ok else None


def check_select(p: Problems, meta: TableMetadata, select: Sequence[str], path: str) -> TableMetadata:
    meta = columns_known(p, meta, select)
    for i, column in enumerate(select):
        if column not in meta.attributes:
            p.add(f"{path}[{i}]", unknown_column(meta, column))
    return meta


def check_navigation(
    p: Problems, meta: TableMetadata, nav: str, path: str
) -> tuple[TableMetadata, tuple[str, bool] | None]:
    """The table a navigation property leads to and whether it is a collection; a miss is reported with the
    closest names, after one fresh read of the table (the relationship may have just been created)."""
    found = meta.navigation_target(nav)
    if found is None:
        meta = p.fresh(meta)
        found = meta.navigation_target(nav)
    if found is None:
        navs = sorted([*meta.single_navigations, *meta.collection_navigations])
        close = difflib.get_close_matches(nav, navs, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        p.add(path, f"{meta.logical_name!r} has no navigation property {nav!r}{hint}")
    return meta, found


def check_expand(p: Problems, meta: TableMetadata, expand: Sequence[Expand], path: str) -> None:
    for i, item in enumerate(expand):
        meta, found = check_navigation(p, meta, item.navigation, f"{path}[{i}].navigation")
        if found is None:
            continue
        target_name, _ = found
        if target_name == "owner" or not item.select:
            continue
        target = p.table(target_name, f"{path}[{i}].navigation")
        if target is not None:
            check_select(p, target, item.select, f"{path}[{i}].select")


def check_table(p: Problems, table: str, key: Mapping[str, Any] | None = None) -> TableMetadata | None:
    """The first checks of every row action: the table exists and, when the row is named by key, the key is one of its
    alternate keys with values of the right types. None when the table is unknown (nothing else can be checked)."""
    meta = p.table(table, "$.table")
    if meta is not None and key:
        meta, _ = check_key(p, meta, key, "$.key")
    return meta


def check_returned(
    p: Problems, meta: TableMetadata, select: Sequence[str] | None, expand: Sequence[Expand] | None = None
) -> TableMetadata:
    """The columns to return and the related rows to expand exist."""
    if select:
        meta = check_select(p, meta, select, "$.select")
    if expand:
        check_expand(p, meta, expand, "$.expand")
    return meta
