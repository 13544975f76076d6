"""N:N associate and disassociate through ``$ref`` on a many-to-many relationship's collection-valued navigation
properties (webapi/associate-disassociate-entities-using-web-api.md):

- ``POST {set}({id})/{nav}/$ref`` with ``{"@odata.id": ".../{other set}({id})"}`` adds a row to the intersect table;
- ``DELETE {set}({id})/{nav}({other id})/$ref`` and ``DELETE {set}({id})/{nav}/$ref?$id=...`` remove it;
- ``GET {set}({id})/{nav}/$ref`` lists the references and ``GET {set}({id})/{nav}`` the related rows.

Associating a pair twice is refused with 0x80040237 "Cannot insert duplicate key." (COMMUNITY: clients of real
organizations treat that code as "already associated"; status 412 as for a duplicate record is a GUESS); removing an
association that does not exist answers 204 (GUESS: nothing to undo).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .storage import q

if TYPE_CHECKING:
    from .context import Ctx
    from .model import Table
    from .record_writes import RecordApi


@dataclass(frozen=True)
class Side:
    """One N:N relationship seen from a table: the intersect table, this side's column, the other table and column."""

    schema_name: str
    intersect: str
    own_column: str
    other_table: str
    other_column: str


def find(emu: Any, table: Table, nav: str) -> Side | None:
    """The N:N relationship whose navigation property on ``table`` is ``nav`` (Entity1's name on Entity1's side)."""
    for m in getattr(emu, "many_to_many", []):
        a1, a2 = m["Entity1IntersectAttribute"], m["Entity2IntersectAttribute"]
        if m["Entity1LogicalName"] == table.logical_name and m["Entity1NavigationPropertyName"] == nav:
            return Side(m["SchemaName"], m["IntersectEntityName"], a1, m["Entity2LogicalName"], a2)
        if m["Entity2LogicalName"] == table.logical_name and m["Entity2NavigationPropertyName"] == nav:
            return Side(m["SchemaName"], m["IntersectEntityName"], a2, m["Entity1LogicalName"], a1)
    return None


def duplicate_association() -> errors.DataverseError:
    return errors.DataverseError(412, "0x80040237", "Cannot insert duplicate key.")


def related_ids(api: RecordApi, side: Side, rid: str) -> list[str]:
    rows = api.store.conn.execute(
        f"SELECT {q(side.other_column)} FROM {q(side.intersect)} WHERE {q(side.own_column)} = ? "
        f"ORDER BY {q(side.other_column)}",
        (rid,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _other_id(api: RecordApi, table: Table, side: Side, ref: Any) -> str:
    """The related row an ``@odata.id`` names; it must exist and be of the relationship's other table."""
    other, oid = api.bind_target(ref, table.logical_name, table.entity_set)
    if other.logical_name != side.other_table:
        raise errors.payload_error(
            table.entity_set,
            f"Microsoft.OData.ODataException: A resource of type 'Microsoft.Dynamics.CRM.{other.logical_name}' was "
            f"found but a resource of type 'Microsoft.Dynamics.CRM.{side.other_table}' is expected.",
        )
    return oid


def associate(api: RecordApi, side: Side, rid: str, oid: str) -> None:
    if oid in related_ids(api, side, rid):
        raise duplicate_association()
    row_id = str(uuid.UUID(int=api.emu.rng.getrandbits(128), version=4))
    api.store.conn.execute(
        f"INSERT INTO {q(side.intersect)} ({q(side.intersect + 'id')}, {q(side.own_column)}, "
        f"{q(side.other_column)}) VALUES (?, ?, ?)",
        (row_id, rid, oid),
    )


def disassociate(api: RecordApi, side: Side, rid: str, oid: str) -> None:
    api.store.conn.execute(
        f"DELETE FROM {q(side.intersect)} WHERE {q(side.own_column)} = ? AND {q(side.other_column)} = ?",
        (rid, oid),
    )


async def handle(
    api: RecordApi, request: Request, ctx: Ctx, table: Table, rid: str, side: Side, segs: list[str], sub_key: str | None
) -> Response:
    """Route a request under an N:N navigation property (``segs`` starts with the navigation segment)."""
    method = request.method
    is_ref = segs[-1] == "$ref" and len(segs) == 2
    no_content = Response(status_code=204, headers={"OData-Version": "4.0"})
    other = api.tables[side.other_table]
    if is_ref and method == "POST" and sub_key is None:
        data = await api.body_json(request, table.entity_set)
        associate(api, side, rid, _other_id(api, table, side, data.get("@odata.id")))
        return no_content
    if is_ref and method == "DELETE":
        if sub_key is not None:
            oid, _ = api.load(other, sub_key)
        else:
            ref = dict(parse_qsl(request.scope.get("query_string", b"").decode())).get("$id")
            if not ref:
                raise errors.bad_request("The $id query option is required to remove a reference.", "0x0")
            oid = _other_id(api, table, side, ref)
        disassociate(api, side, rid, oid)
        return no_content
    if method == "GET" and sub_key is None and (is_ref or len(segs) == 1):
        ids = related_ids(api, side, rid)
        if is_ref:
            value: list[dict[str, Any]] = [{"@odata.id": f"{ctx.api}/{other.entity_set}({i})"} for i in ids]
            return api.json({"@odata.context": f"{ctx.api}/$metadata#Collection($ref)", "value": value})
        rows = [r for r in (api.store.get(other.logical_name, i) for i in ids) if r is not None]
        return api.json(
            {
                "@odata.context": f"{ctx.api}/$metadata#{other.entity_set}",
                "value": [api.entity(ctx, other, r, None) for r in rows],
            }
        )
    raise errors.no_resource(str(request.url))
