"""The destination filter: which existing rows a sync may update or remove.

Why: a table is often shared (accounts that sales owns, accounts this warehouse feeds); a sync that may only touch
"its" rows says so with a filter on the destination, as the data-sync tool's destination filters do. The filter is
the structured ``where`` of ``query_entities`` (compiled by the same :func:`connector.odata.where_problems_and_filter`)
or OData ``$filter`` text. An existing row outside it is neither updated nor removed: its source row is ledgered
``skipped_by_filter``. Creates are allowed by default in upsert and mirror modes (a new row is not "existing");
``allow_creates: false`` skips them the same way. The filter is checked once, by a one-row read, before anything is
written, so a wrong column or bad text stops the run there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.errors import DataverseApiError, InputError, InputProblem, LiteralError
from connector.odata import build_query_string, format_literal, where_problems_and_filter

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import TableMetadata
    from connector.sync.definition import SyncDefinition
    from connector.sync.planner import Decision

__all__ = ["DestinationFilter", "compile_filter", "destination_of", "gate", "inside"]

_READ_IDS = 40  # ids per read: 40 ``or`` terms keep the URL short, as the planner's existence reads


@dataclass(frozen=True)
class DestinationFilter:
    """``where`` (structured conditions, all joined with ``and``) or ``text`` (OData), and whether creates pass."""

    where: tuple[Mapping[str, Any], ...] = ()
    text: str | None = None
    allow_creates: bool = True


def destination_of(definition: SyncDefinition) -> DestinationFilter | None:
    spec = definition.destination_filter
    if spec is None:
        return None
    return DestinationFilter(tuple(spec.where or ()), spec.filter, spec.allow_creates)


def compile_filter(connection: Connection, meta: TableMetadata, spec: DestinationFilter) -> str:
    """The filter as ``$filter`` text, checked by a one-row read; :class:`InputError` naming the field otherwise."""
    if spec.text is not None:
        text, path = spec.text, "$.destination_filter.filter"
    else:

        def choice(column: str, label: str) -> int:
            try:
                return connection.metadata.choice_value(meta.logical_name, column, label)
            except ValueError as exc:
                raise LiteralError(str(exc)) from None

        path = "$.destination_filter.where"
        compiled, problems = where_problems_and_filter(
            spec.where, meta.types, choice, table=meta.logical_name, path=path
        )
        if problems or compiled is None:
            raise InputError(problems or [InputProblem(path, "give at least one condition")])
        text = compiled
    query = build_query_string({"$select": meta.primary_id, "$filter": text, "$top": "1"})
    try:
        connection.client.get_json(f"{meta.entity_set}?{query}")
    except DataverseApiError as exc:
        if exc.status_code is not None and 400 <= exc.status_code < 500:
            raise InputError([InputProblem(path, f"Dataverse refused the filter {text!r}: {exc}")]) from None
        raise
    return text


def inside(connection: Connection, meta: TableMetadata, filter_text: str, ids: Sequence[str]) -> set[str]:
    """The ids (lower case) among ``ids`` whose rows the filter keeps: one read per few dozen ids."""
    out: set[str] = set()
    pid = meta.primary_id
    for start in range(0, len(ids), _READ_IDS):
        part = ids[start : start + _READ_IDS]
        terms = " or ".join(f"{pid} eq {format_literal(i, 'Uniqueidentifier')}" for i in part)
        query = build_query_string({"$select": pid, "$filter": f"({filter_text}) and ({terms})"})
        url: str | None = f"{meta.entity_set}?{query}"
        while url:
            body = connection.client.get_json(url, prefer=["odata.maxpagesize=5000"])
            rows = body.get("value", []) if isinstance(body, dict) else []
            out |= {str(r.get(pid)).lower() for r in rows if isinstance(r, dict)}
            url = body.get("@odata.nextLink") if isinstance(body, dict) else None
    return out


def gate(
    connection: Connection, meta: TableMetadata, spec: DestinationFilter, filter_text: str, decisions: list[Decision]
) -> int:
    """Updates of rows outside the filter (and creates, unless allowed) become ``skipped_by_filter``; returns reads."""
    updates = [d for d in decisions if d.action == "update" and d.id]
    kept = inside(connection, meta, filter_text, [str(d.id) for d in updates]) if updates else set()
    for d in decisions:
        if d.action == "update" and str(d.id).lower() not in kept:
            d.action, d.message = "skipped_by_filter", "the row is outside the destination filter: not updated"
        elif d.action == "create" and not spec.allow_creates:
            d.action, d.id = "skipped_by_filter", None
            d.message = "no row matches, and destination_filter.allow_creates is false: not created"
    return -(-len(updates) // _READ_IDS)
