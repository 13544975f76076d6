"""The unbound ``Merge`` action: a duplicate (the subordinate) merged into the row that stays (the target).

Documented (webapi/merge-entity-using-web-api.md, use-web-api-actions.md): ``POST {api}/Merge`` with ``Target``,
``Subordinate`` (both typed with ``@odata.type``), optional ``UpdateContent`` and ``PerformParentingChecks``; only
account, contact, lead and incident can be merged; "Merging will move any data from the Subordinate record to the
Target and then deactivate the Subordinate record"; ``UpdateContent`` is not used for incident; the answer is
``204 No Content``. Registered in the message registry (:mod:`.messages`), so ``$metadata`` lists it as documented
and the registry checks its parameters. Which child rows move follows each relationship's
``CascadeConfiguration.Merge`` (Cascade moves them, NoCascade leaves them; the cascade configuration reference).
The subordinate's inactive state and status, the parenting check's refusal and every error code and wording here
are GUESSES where noted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from . import cascade, errors
from .messages import ACTION, Bound, Message, Param, register
from .storage import q, type_col
from .webhooks import notify

if TYPE_CHECKING:
    from .context import Ctx
    from .model import Table
    from .record_writes import RecordApi

MERGEABLE = ("account", "contact", "lead", "incident")
_CRM = "Microsoft.Dynamics.CRM."
#: The subordinate's state and status after a merge (GUESS except incident, whose "Merged" reason is state Cancelled).
INACTIVE = {"account": (1, 2), "contact": (1, 2), "lead": (2, 7), "incident": (2, 2000)}
#: Each row's parent column, compared by PerformParentingChecks (GUESS: which column counts as the parent).
PARENT = {
    "account": "parentaccountid",
    "contact": "parentcustomerid",
    "lead": "parentaccountid",
    "incident": "customerid",
}


def _typed_row(api: RecordApi, value: Any, name: str) -> tuple[Table, str, dict[str, Any]]:
    """The table and row a typed entity parameter names; an untyped one is refused as the docs warn."""
    if not isinstance(value, dict):
        raise errors.bad_request(f"The parameter '{name}' must be an entity object.", "0x80040203")
    odata_type = str(value.get("@odata.type", "")).lstrip("#")
    if not odata_type.startswith(_CRM):
        raise errors.bad_request("EdmEntityObject passed should have the key property value set.", "0x80040203")
    table = api.tables.get(odata_type[len(_CRM) :])
    if table is None:
        raise errors.bad_request(f"The entity type '{odata_type}' is not valid.", "0x80040203")
    if table.logical_name not in MERGEABLE:
        raise errors.bad_request(f"Merge is not supported for entity {table.logical_name}.", "0x80040203")  # GUESS
    rid = value.get(table.primary_id)
    if not isinstance(rid, str):
        raise errors.bad_request("EdmEntityObject passed should have the key property value set.", "0x80040203")
    row = api.store.get(table.logical_name, rid)
    if row is None:
        raise errors.not_found(table.logical_name, rid)
    return table, rid, row


async def merge(api: RecordApi, ctx: Ctx, bound: Bound | None, body: dict[str, Any], msg: Message) -> Response:
    """``POST Merge``: update the target, move the subordinate's children, deactivate the subordinate."""
    table, target_id, target = _typed_row(api, body.get("Target"), "Target")
    sub_table, sub_id, sub = _typed_row(api, body.get("Subordinate"), "Subordinate")
    if sub_table is not table:
        raise errors.bad_request("The Target and the Subordinate must be of the same entity type.", "0x80040203")
    if sub_id == target_id:
        raise errors.bad_request("The Target and the Subordinate are the same record.", "0x80040203")  # GUESS
    if not isinstance(body.get("PerformParentingChecks"), bool):
        raise errors.bad_request("The parameter 'PerformParentingChecks' must be true or false.", "0x80040203")
    parent = PARENT[table.logical_name]
    if body["PerformParentingChecks"] and parent in table.attributes and target.get(parent) != sub.get(parent):
        raise errors.bad_request("The parent of the two records is different.", "0x8004020b")  # GUESS
    update = body.get("UpdateContent")
    if isinstance(update, dict) and table.logical_name != "incident":
        content = {k: v for k, v in update.items() if k != "@odata.type" and k != table.primary_id}
        if content:
            api.do_update(ctx, table, target_id, target, content)
            await notify(api, ctx, "Update", table, target_id, content, target)
    _move_children(api, table, sub_id, target_id)
    state, status = INACTIVE[table.logical_name]
    fresh = api.store.get(table.logical_name, sub_id) or sub
    api.do_update(ctx, table, sub_id, fresh, {"statecode": state, "statuscode": status})
    # Read-only to callers (the entity references), so written by the platform itself rather than as an update.
    system: dict[str, Any] = {}
    if "merged" in table.attributes:
        system["merged"] = True
    if "masterid" in table.attributes:
        system["masterid"], system[type_col("masterid")] = target_id, table.logical_name
    if system:
        api.store.update(table.logical_name, sub_id, system)
    return Response(status_code=204, headers={"OData-Version": "4.0"})


def _move_children(api: RecordApi, table: Table, sub_id: str, target_id: str) -> None:
    """Re-point the subordinate's children at the target where the relationship's Merge cascade says Cascade."""
    for rel in api.rels:
        if rel.referenced_entity != table.logical_name or rel.referencing_entity not in api.tables:
            continue
        if cascade.configuration(rel).get("Merge") != "Cascade" or rel.referencing_attribute == "masterid":
            continue
        col = rel.referencing_attribute
        api.store.conn.execute(
            f"UPDATE {q(rel.referencing_entity)} SET {q(col)} = ? WHERE {q(col)} = ? AND {q(type_col(col))} = ?",
            (target_id, sub_id, table.logical_name),
        )


#: As ``$metadata`` lists it (use-web-api-actions.md, "Unbound actions").
register(
    Message(
        "Merge",
        ACTION,
        (
            Param("Target", "mscrm.crmbaseentity", nullable=False),
            Param("Subordinate", "mscrm.crmbaseentity", nullable=False),
            Param("UpdateContent", "mscrm.crmbaseentity"),
            Param("PerformParentingChecks", "Edm.Boolean", nullable=False),
        ),
        handler=merge,
    )
)
