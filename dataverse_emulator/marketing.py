"""Marketing-list messages: ``AddMemberList`` and ``RemoveMemberList`` (bound to a ``list``) and the unbound
``AddListMembersList``.

Why messages and not plain ``listmember`` writes: a list holds one kind of member (its ``createdfromcode``: account,
contact or lead), adding a member twice keeps one ``listmember`` row, and the list's ``membercount`` follows its
members; clients (and the SDK's ``AddMemberListRequest``) rely on the messages for that. Sources: the Web API action
reference (AddMemberList: bound to ``list``, ``EntityId``, returns ``AddMemberListResponse.Id``; AddListMembersList:
unbound, ``List`` and ``Members``, no return value) and ``AddListMembersListRequest`` ("the members that are added
to the list must be of the same type"). Error codes for a mismatched or dynamic list are GUESSES (BEHAVIOURS.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .errors import DataverseError
from .model import Table

if TYPE_CHECKING:
    from .context import Ctx
    from .record_writes import RecordApi

NS = "Microsoft.Dynamics.CRM."
#: list.createdfromcode -> the member table
MEMBER_TABLE = {1: "account", 2: "contact", 4: "lead"}


def _invalid_argument(message: str) -> DataverseError:
    return DataverseError(400, "0x80040203", message)


def _guid(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) != 36:
        raise errors.bad_request(f"Invalid value for parameter '{name}': a GUID is expected.")
    return value.lower()


def _member_table(list_row: dict[str, Any]) -> str:
    if list_row.get("type"):  # dynamic lists take their members from their query
        raise _invalid_argument("Members can't be added to or removed from a dynamic marketing list.")
    table = MEMBER_TABLE.get(list_row.get("createdfromcode") or 0)
    if table is None:
        raise _invalid_argument("The marketing list has no valid member type (createdfromcode).")
    return table


def _existing_member(api: RecordApi, list_id: str, entity_id: str) -> str | None:
    rows = api.store.query(
        "SELECT listmemberid FROM listmember WHERE listid = ? AND entityid = ?", [list_id, entity_id]
    )
    return str(rows[0]["listmemberid"]) if rows else None


def _add(api: RecordApi, ctx: Ctx, list_id: str, table: str, entity_id: str) -> str:
    """One member (kept once: adding an existing member returns its row)."""
    if not api.store.exists(table, entity_id):
        raise errors.not_found(table, entity_id)
    existing = _existing_member(api, list_id, entity_id)
    if existing is not None:
        return existing
    rid, _ = api.do_create(
        ctx,
        api.tables["listmember"],
        {},
        key_values={
            "listid": list_id,
            "listid__type": "list",
            "entityid": entity_id,
            "entityid__type": table,
            "entitytype": table,
        },
    )
    return rid


def _recount(api: RecordApi, ctx: Ctx, list_t: Table, list_row: dict[str, Any]) -> None:
    lid = list_row["listid"]
    n = api.store.scalar("SELECT COUNT(*) FROM listmember WHERE listid = ?", [lid])
    api.do_update(ctx, list_t, lid, list_row, {"membercount": int(n)})


async def _params(api: RecordApi, request: Request, action: str) -> dict[str, Any]:
    return await api.body_json(request, action)


async def add_member_list(api: RecordApi, request: Request, ctx: Ctx, list_t: Table, key: str) -> Response:
    """``POST lists(id)/Microsoft.Dynamics.CRM.AddMemberList`` with ``EntityId``: the member's ``listmember`` id."""
    rid, row = api.load(list_t, key)
    body = await _params(api, request, "AddMemberList")
    entity_id = _guid(body.get("EntityId"), "EntityId")
    member_id = _add(api, ctx, rid, _member_table(row), entity_id)
    _recount(api, ctx, list_t, row)
    return api.json({"@odata.context": f"{ctx.api}/$metadata#{NS}AddMemberListResponse", "Id": member_id})


async def remove_member_list(api: RecordApi, request: Request, ctx: Ctx, list_t: Table, key: str) -> Response:
    """``POST lists(id)/Microsoft.Dynamics.CRM.RemoveMemberList`` with ``EntityId``; removing a non-member is a
    no-op (GUESS)."""
    rid, row = api.load(list_t, key)
    body = await _params(api, request, "RemoveMemberList")
    entity_id = _guid(body.get("EntityId"), "EntityId")
    _member_table(row)
    existing = _existing_member(api, rid, entity_id)
    if existing is not None:
        api.store.delete("listmember", existing)
        _recount(api, ctx, list_t, row)
    return Response(status_code=204, headers={"OData-Version": "4.0"})


def _typed_id(item: Any, what: str) -> tuple[str, str]:
    """(logical name, id) of an entity-typed parameter: ``{"@odata.type": "Microsoft.Dynamics.CRM.contact",
    "contactid": "..."}``."""
    if not isinstance(item, dict):
        raise errors.bad_request(f"Invalid value for parameter '{what}': an entity is expected.")
    odata_type = str(item.get("@odata.type", "")).lstrip("#")
    if not odata_type.startswith(NS):
        raise errors.bad_request(f"Invalid value for parameter '{what}': '@odata.type' is required.")
    logical = odata_type[len(NS) :]
    rid = item.get(f"{logical}id")
    return logical, _guid(rid, f"{what}.{logical}id")


async def add_list_members_list(api: RecordApi, request: Request, ctx: Ctx) -> Response:
    """``POST AddListMembersList`` with ``List`` and ``Members``: every member must be of the list's member type;
    members already on the list are skipped."""
    if request.method != "POST":
        raise errors.no_resource(str(request.url))
    body = await _params(api, request, "AddListMembersList")
    list_type, list_id = _typed_id(body.get("List"), "List")
    if list_type != "list":
        raise _invalid_argument(f"The 'List' parameter must be a list, not a {list_type}.")
    list_t = api.tables["list"]
    rid, row = api.load(list_t, list_id)
    members = body.get("Members")
    if not isinstance(members, list) or not members:
        raise _invalid_argument("The 'Members' parameter must contain at least one member.")
    table = _member_table(row)
    typed = [_typed_id(m, "Members") for m in members]
    for logical, _ in typed:
        if logical != table:
            raise _invalid_argument(
                f"The members of this marketing list must be of type {table}; a {logical} was given."
            )
    for _, member_id in typed:
        _add(api, ctx, rid, table, member_id)
    _recount(api, ctx, list_t, row)
    return Response(status_code=204, headers={"OData-Version": "4.0"})


#: bound actions on a ``list`` row, by name
BOUND = {"AddMemberList": add_member_list, "RemoveMemberList": remove_member_list}
#: unbound actions, by name
UNBOUND = {"AddListMembersList": add_list_members_list}
