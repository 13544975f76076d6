"""Bulk messages: ``CreateMultiple``, ``UpdateMultiple``, ``UpsertMultiple`` (bound to an entity set), ``BulkDelete``
jobs, and the ``sdkmessage``/``sdkmessagefilter`` rows clients probe before using them.

Why every target goes through the same ``do_create``/``do_update`` as a single request: the failing record must answer
with exactly the code and message a single create or update would give (reference 15.3: standard tables roll the
whole request back and the error does not say which record failed). The Web API handler already runs each write
request in one transaction, so raising on the first bad target rolls every earlier target back.

Availability (reference 7.2 and 15.3): the docs say "many common standard tables, but not all", so one table,
``listmember``, has no CreateMultiple/UpdateMultiple filter rows and refuses the messages; clients that probe
``sdkmessagefilters`` take their fallback path there. UpsertMultiple has no filter rows of its own (documented) and is
available where both other messages are.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .asyncjobs import BULK_DELETE_OPERATION, COMPLETED, SUCCEEDED
from .errors import DataverseError
from .model import Table, meta_id
from .throttle import count_records
from .webhooks import notify

if TYPE_CHECKING:
    from .context import Ctx
    from .record_writes import RecordApi
    from .storage import Store

#: records a bulk message writes between two turns of the event loop (about 8 ms of work)
LOOP_SLICE = 100

#: Messages every table gets filter rows for (Create ... SetState), and the two bulk messages.
PER_TABLE_MESSAGES = ("Create", "Update", "Delete", "Assign", "SetState")
MULTIPLE_MESSAGES = ("CreateMultiple", "UpdateMultiple")
#: The one table without CreateMultiple/UpdateMultiple (a documented "not all tables" case; GUESS which one).
MULTIPLE_UNSUPPORTED = frozenset({"listmember"})
ACTIONS = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
NS = "Microsoft.Dynamics.CRM."


def ensure_message_rows(store: Store, tables: dict[str, Table]) -> None:
    """Preload sdkmessage and sdkmessagefilter rows (stable ids, the same scheme the webhook rows use)."""
    for message in (*PER_TABLE_MESSAGES, *MULTIPLE_MESSAGES):
        mid = meta_id("sdkmessage", message)
        if not store.exists("sdkmessage", mid):
            store.insert("sdkmessage", {"sdkmessageid": mid, "name": message, "versionnumber": store.next_version()})
        for table in tables:
            if message in MULTIPLE_MESSAGES and table in MULTIPLE_UNSUPPORTED:
                continue
            fid = meta_id("sdkmessagefilter", message, table)
            if not store.exists("sdkmessagefilter", fid):
                store.insert(
                    "sdkmessagefilter",
                    {
                        "sdkmessagefilterid": fid,
                        "name": f"{message} {table}",
                        "primaryobjecttypecode": table,
                        "secondaryobjecttypecode": "none",
                        "sdkmessageid": mid,
                        "sdkmessageid__type": "sdkmessage",
                        "versionnumber": store.next_version(),
                    },
                )


def drop_message_rows(store: Store, table: str) -> None:
    """A deleted table's sdkmessagefilter rows go with it (those a processing step still names stay, GUESS: the
    platform keeps a registered step's filter)."""
    store.conn.execute(
        "DELETE FROM sdkmessagefilter WHERE primaryobjecttypecode = ? AND sdkmessagefilterid NOT IN "
        "(SELECT sdkmessagefilterid FROM sdkmessageprocessingstep WHERE sdkmessagefilterid IS NOT NULL)",
        (table,),
    )


def _invalid_argument(message: str) -> DataverseError:
    return DataverseError(400, "0x80040203", message)


def _targets(data: dict[str, Any], table: Table) -> list[dict[str, Any]]:
    """The ``Targets`` list; every item must be an object typed as this table (reference 7.1)."""
    targets = data.get("Targets")
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise errors.payload_error(
            table.entity_set,
            "Microsoft.OData.ODataException: The parameter 'Targets' in the request payload is not "
            "a valid parameter for the operation.",
        )
    expected = f"{NS}{table.logical_name}"
    for t in targets:
        typ = t.get("@odata.type")
        if typ is None:
            raise errors.payload_error(
                table.entity_set,
                "Microsoft.OData.ODataException: A type name was not provided for an instance of the abstract type "
                "'Microsoft.Dynamics.CRM.crmbaseentity'.",
            )
        if str(typ).lstrip("#") != expected:
            raise _invalid_argument(
                f"This entity collection contains an entity of type '{str(typ).lstrip('#').removeprefix(NS)}' "
                f"that does not match the collection type '{table.logical_name}'."
            )
    return targets


def _body(t: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in t.items() if k not in ("@odata.type", "@odata.id")}


def _key_of_odata_id(api: RecordApi, table: Table, value: Any) -> str:
    """The key predicate inside an ``@odata.id`` such as ``accounts(accountnumber='A1')`` (relative or absolute)."""
    from .context import seg_key

    if not isinstance(value, str):
        raise errors.payload_error(table.entity_set, "Microsoft.OData.ODataException: '@odata.id' must be a string.")
    path = unquote(urlsplit(value).path if "://" in value else value)
    if "/api/data/" in path:
        path = path.split("/api/data/", 1)[1].split("/", 1)[-1]
    name, key = seg_key(path.lstrip("/"))
    if name != table.entity_set or not key:
        raise errors.payload_error(
            table.entity_set, f"Microsoft.OData.ODataException: The URI '{value}' is not valid for an entity reference."
        )
    return key


async def bound_action(api: RecordApi, request: Request, ctx: Ctx, table: Table, action: str) -> Response:
    """``POST {set}/Microsoft.Dynamics.CRM.{CreateMultiple|UpdateMultiple|UpsertMultiple}``."""
    if action not in ACTIONS:
        raise errors.segment_not_found(f"{NS}{action}")
    if request.method != "POST":
        raise errors.no_resource(str(request.url))
    if table.logical_name in MULTIPLE_UNSUPPORTED:
        raise _invalid_argument(
            f"The '{action}' method does not support entities of type '{table.logical_name}'. "
            "MessageProcessorCache returned MessageProcessor.Empty."
        )
    targets = _targets(await api.body_json(request, table.entity_set), table)
    count_records(request, len(targets))  # the execution-time model; a request too long fails before writing
    # asked once: with no step on the table, notify would find none for any target, and no other Web API request can
    # register one (or move an owner to another business unit) meanwhile: this one holds the store (store_turn)
    steps = api.emu.webhooks.registered(table.logical_name)
    write = {"CreateMultiple": _create_multiple, "UpdateMultiple": _update_multiple}.get(action, _upsert_multiple)
    with contextlib.nullcontext() if steps else api.owner_units_read_once(table):
        return await write(api, ctx, table, targets, steps)


async def _let_loop_run(i: int) -> None:
    """Every :data:`LOOP_SLICE` records, let the event loop run: this request keeps the store (``store_turn``), while
    requests arriving meanwhile are admitted, start their clock and have held answers leave on time. A bulk message of
    1,000 rows used to keep the loop for its whole write, so a request sent meanwhile started late."""
    if i % LOOP_SLICE == LOOP_SLICE - 1:
        await asyncio.sleep(0)


async def _create_multiple(
    api: RecordApi, ctx: Ctx, table: Table, targets: list[dict[str, Any]], steps: bool
) -> Response:
    ids = []
    for i, t in enumerate(targets):
        await _let_loop_run(i)
        body = _body(t)
        rid, _ = api.do_create(ctx, table, body)
        if steps:
            await notify(api, ctx, "Create", table, rid, body, None)
        ids.append(rid)
    return api.json({"@odata.context": f"{ctx.api}/$metadata#{NS}CreateMultipleResponse", "Ids": ids})


async def _update_multiple(
    api: RecordApi, ctx: Ctx, table: Table, targets: list[dict[str, Any]], steps: bool
) -> Response:
    seen: set[str] = set()
    for i, t in enumerate(targets):
        await _let_loop_run(i)
        if "@odata.id" in t:
            # "Using alternate keys with Web API and UpdateMultiple is not supported" (bulk-operations.md)
            raise _invalid_argument("UpdateMultiple does not support alternate keys over the Web API.")
        rid = t.get(table.primary_id)
        if not rid:
            raise _invalid_argument("Entity Id must be specified for Update")
        rid = str(rid).lower()
        if rid in seen:  # duplicates: the first is applied, the rest ignored (documented)
            continue
        seen.add(rid)
        row = api.store.get(table.logical_name, rid)
        if row is None:
            raise errors.not_found(table.logical_name, rid)
        body = _body(t)
        api.do_update(ctx, table, rid, row, body)
        if steps:
            await notify(api, ctx, "Update", table, rid, body, row)
    return Response(status_code=204, headers={"OData-Version": "4.0"})


async def _upsert_multiple(
    api: RecordApi, ctx: Ctx, table: Table, targets: list[dict[str, Any]], steps: bool
) -> Response:
    for i, (t, rid, alt) in enumerate(_upsert_targets(api, table, targets)):
        await _let_loop_run(i)
        body = _body(t)
        row = api.store.get(table.logical_name, rid) if rid else None
        if row is None:
            new_id, _ = api.do_create(ctx, table, body, rid=rid if alt is None else None, key_values=alt)
            if steps:
                await notify(api, ctx, "Create", table, new_id, body, None)
        else:
            api.do_update(ctx, table, str(rid), row, body, strip=list(alt) if alt else None)
            if steps:
                await notify(api, ctx, "Update", table, str(rid), body, row)
    return Response(status_code=204, headers={"OData-Version": "4.0"})


def _upsert_targets(
    api: RecordApi, table: Table, targets: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], str | None, dict[str, Any] | None]]:
    """UpsertMultiple's targets as (target, id or None, alternate-key values or None), keyed by ``@odata.id``
    (alternate key or id) or by the primary key column; duplicates are refused before anything is written
    (documented: an error, unlike UpdateMultiple).

    The alternate keys are looked up in one statement, not one per target. The answer stays the one a target-by-target
    loop gives: parsing stops at the first bad target, and its error is raised only when no earlier target is a
    duplicate (a duplicate's identity needs the looked-up id)."""
    parsed: list[tuple[dict[str, Any], str | None, dict[str, Any] | None]] = []
    failure: Exception | None = None
    for t in targets:
        try:
            if "@odata.id" in t:
                rid, alt = api.parse_key(table, _key_of_odata_id(api, table, t["@odata.id"]))
            elif t.get(table.primary_id):
                rid, alt = str(t[table.primary_id]).lower(), None
            else:
                raise _invalid_argument("Entity Id must be specified for Upsert")
        except Exception as e:  # re-raised below, after the duplicate check of the targets before it
            failure = e
            break
        parsed.append((t, rid, alt))
    found = iter(api.store.find_first_ids(table.logical_name, [alt for _, _, alt in parsed if alt is not None]))
    resolved: list[tuple[dict[str, Any], str | None, dict[str, Any] | None]] = []
    keys: set[Any] = set()
    for t, rid, alt in parsed:
        if alt is not None:
            rid = next(found)
        values = tuple(sorted((k, str(v).lower() if isinstance(v, str) else v) for k, v in (alt or {}).items()))
        ident = ("id", rid) if rid else ("key", values)
        if ident in keys:
            raise _invalid_argument("Duplicate key values were found in the Targets of UpsertMultiple.")
        keys.add(ident)
        resolved.append((t, rid, alt))
    if failure is not None:
        raise failure
    return resolved


def _condition_values(cond: dict[str, Any]) -> list[Any]:
    values = cond.get("Values") or []
    return [v.get("Value") if isinstance(v, dict) else v for v in values]


async def bulk_delete(api: RecordApi, request: Request, ctx: Ctx) -> Response:
    """``POST BulkDelete``: a QueryExpression per QuerySet item (conditions Equal/In, ANDed), run as a job at once.

    Microsoft's SDK sends one QueryExpression with an ``In`` condition on the primary key; the job's deletes go
    through the single-delete path (child lookups cleared, webhooks fired) inside this request's transaction; the
    job's ``asyncoperation`` row is readable at once."""
    from .context import fmt_dt_now

    data = await api.body_json(request, "BulkDelete")
    query_set = data.get("QuerySet")
    if not isinstance(query_set, list) or not query_set:
        raise _invalid_argument("The QuerySet parameter must contain at least one QueryExpression.")
    deleted = 0
    for qe in query_set:
        if not isinstance(qe, dict):
            raise _invalid_argument("QuerySet items must be QueryExpression objects.")
        table = api.tables.get(str(qe.get("EntityName", "")).lower())
        if table is None:
            raise DataverseError(
                400,
                "0x80040217",
                f"The entity with a name = '{qe.get('EntityName')}' was not found in the MetadataCache.",
            )
        criteria = qe.get("Criteria") or {}
        if str(criteria.get("FilterOperator", "And")).lower() != "and":
            raise _invalid_argument("BulkDelete in the emulator supports And filters only.")
        where, params = [], []
        from .storage import q

        for cond in criteria.get("Conditions") or []:
            attr = str(cond.get("AttributeName", "")).lower()
            if attr not in table.attributes:
                raise errors.unknown_property(attr, table.logical_name)
            op = str(cond.get("Operator", "")).lower()
            values = _condition_values(cond)
            if op == "in" and values:
                where.append(f"{q(attr)} IN ({', '.join('?' * len(values))})")
                params += values
            elif op == "equal" and len(values) == 1:
                where.append(f"{q(attr)} = ?")
                params += values
            else:
                raise _invalid_argument(f"BulkDelete in the emulator supports Equal and In conditions, not {op!r}.")
        sql = f"SELECT {q(table.primary_id)} FROM {q(table.logical_name)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        for (rid,) in api.store.conn.execute(sql, params).fetchall():
            await api.delete(request, ctx, table, str(rid))
            deleted += 1
    request.state.dv_records = deleted
    job = str(uuid.UUID(int=api.emu.rng.getrandbits(128), version=4))
    # the job ran inside this request: its System Job row is already Completed / Succeeded (GUESS: real jobs queue)
    now = fmt_dt_now(api.emu.clock)
    api.store.insert(
        "asyncoperation",
        {
            "asyncoperationid": job,
            "name": str(data.get("JobName") or "Bulk Delete"),
            "operationtype": BULK_DELETE_OPERATION,
            "statecode": COMPLETED,
            "statuscode": SUCCEEDED,
            "message": f"{deleted} records deleted.",
            "createdon": now,
            "modifiedon": now,
            "completedon": now,
            "createdby": ctx.user["systemuserid"],
            "createdby__type": "systemuser",
            "versionnumber": api.store.next_version(),
        },
    )
    return api.json({"@odata.context": f"{ctx.api}/$metadata#{NS}BulkDeleteResponse", "JobId": job})
