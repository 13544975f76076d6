"""Webhook registrations and deliveries: ``serviceendpoints``, ``sdkmessageprocessingsteps`` and their images.

Why the emulator delivers for real: the connector's trigger is judged by what Dataverse sends, so after a create,
update or delete that a registered step matches, this module POSTs a RemoteExecutionContext the way
``use-webhooks.md`` (MicrosoftDocs/powerapps-docs) describes it: WCF DataContract JSON (key/value arrays, ``__type``
on typed values, ``\\/Date(ms)\\/`` dates, every ``/`` escaped), the ``x-ms-dynamics-*`` headers, the registered
authentication (WebhookKey as ``?code=``, HttpHeader and HttpQueryString from the ``<settings>`` document), and above
256 KB the body without ``ParentContext``, ``InputParameters`` and the images, with ``x-ms-dynamics-msg-size-exceeded``.

Asynchronous steps are delivered after the change in background tasks, with one more attempt on 502/503/504; they
are queued only once the write's transaction commits (``deferred``): a refused request, a rolled-back ``$batch``
operation or change set, or a bulk message that fails on a later target raises none. Synchronous steps are
delivered before the triggering request is answered, and a non-2xx reply undoes the change and fails that request.
``POST /_emulator/webhooks/drain`` answers once every background delivery has finished (and lists every delivery
made), so tests wait on it instead of sleeping.

This module never imports the connector: a misunderstanding of the protocol must not hide in shared code.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpcore
from defusedxml import ElementTree
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import DataverseError
from .model import meta_id

if TYPE_CHECKING:
    from .model import Table

CONTRACTS = "http://schemas.microsoft.com/xrm/2011/Contracts"
SIZE_LIMIT = 256 * 1024
RETRY_STATUSES = (502, 503, 504)
TIMEOUT_S = 60.0
#: Messages the emulator raises, with the tables they apply to (the sdkmessagefilter rows it preloads).
MESSAGES = ("Create", "Update", "Delete", "Assign", "SetState")
FILTER_TABLES = ("account", "contact", "lead", "opportunity", "incident")
_PLATFORM_COLUMNS = ("modifiedon", "modifiedby", "modifiedonbehalfby", "versionnumber")
_STATE_COLUMNS = ("statecode", "statuscode")
#: The tables ``steps_for`` reads: a write to one of them may change which steps match.
_REGISTRATION_TABLES = frozenset({"sdkmessageprocessingstep", "sdkmessagefilter", "sdkmessage", "serviceendpoint"})

Delivery = tuple[str, dict[str, str], bytes]
#: Asynchronous deliveries waiting for the current write to commit (None outside a write).
_PENDING: contextvars.ContextVar[list[tuple[dict[str, Any], Delivery]] | None] = contextvars.ContextVar(
    "dv_webhooks_pending", default=None
)


def _ms_date(text: str | None) -> str | None:
    if not text:
        return None
    if len(text) == 10:
        text += "T00:00:00Z"
    instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    return f"/Date({int(instant.timestamp() * 1000)})/"


def _reference(table: str | None, rid: str, name: str | None = None) -> dict[str, Any]:
    return {
        "__type": f"EntityReference:{CONTRACTS}",
        "Id": rid,
        "KeyAttributes": [],
        "LogicalName": table,
        "Name": name,
        "RowVersion": None,
    }


class Webhooks:
    """Registration lookups, context building and delivery for one emulator."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.tasks: set[asyncio.Task[None]] = set()
        self.deliveries: list[dict[str, Any]] = []

    # -- preloaded rows -------------------------------------------------------------------------------------------

    def ensure_rows(self) -> None:
        """The sdkmessage and sdkmessagefilter rows a registration looks up (stable ids); forget past deliveries."""
        store = self.emu.store
        self.deliveries.clear()
        for message in MESSAGES:
            mid = meta_id("sdkmessage", message)
            if not store.exists("sdkmessage", mid):
                store.insert(
                    "sdkmessage", {"sdkmessageid": mid, "name": message, "versionnumber": store.next_version()}
                )
            for table in FILTER_TABLES:
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

    # -- matching -------------------------------------------------------------------------------------------------

    def steps_for(self, message: str, table: str) -> list[dict[str, Any]]:
        return list(
            self.emu.store.query(
                "SELECT s.*, e.url AS endpoint_url, e.authtype AS endpoint_authtype, e.authvalue AS endpoint_authvalue "
                "FROM sdkmessageprocessingstep s "
                "JOIN sdkmessage m ON m.sdkmessageid = s.sdkmessageid "
                "JOIN sdkmessagefilter f ON f.sdkmessagefilterid = s.sdkmessagefilterid "
                "JOIN serviceendpoint e ON e.serviceendpointid = s.eventhandler "
                "WHERE m.name = ? AND f.primaryobjecttypecode = ? AND e.contract = 8 "
                "ORDER BY s.rank, s.sdkmessageprocessingstepid",
                [message, table],
            )
        )

    def registered(self, table: str) -> bool:
        """Whether any webhook step is registered on ``table`` (any message): a bulk message asks once per request
        and skips the per-record ``notify`` when none is, since ``steps_for`` would find nothing for any of them."""
        if table in _REGISTRATION_TABLES:
            return True  # writing a registration can register a step that matches the rest of the request
        return (
            self.emu.store.scalar(
                "SELECT 1 FROM sdkmessageprocessingstep s "
                "JOIN sdkmessagefilter f ON f.sdkmessagefilterid = s.sdkmessagefilterid "
                "WHERE f.primaryobjecttypecode = ? LIMIT 1",
                [table],
            )
            is not None
        )

    # -- entry point called by the Web API after a write -------------------------------------------------------------

    async def after_change(
        self,
        ctx: Any,
        message: str,
        table: Table,
        rid: str,
        sent: list[str],
        pre: dict[str, Any] | None,
        post: dict[str, Any] | None,
    ) -> None:
        """Deliver to every matching step; raise (after undoing the change) when a synchronous step refuses it."""
        steps = self.steps_for(message, table.logical_name)
        if not steps:
            return
        correlation = str(uuid.uuid4())
        for step in steps:
            filtering = [c.strip() for c in (step.get("filteringattributes") or "").split(",") if c.strip()]
            if message == "Update" and filtering and not set(filtering) & set(sent):
                continue
            delivery = self.build(ctx, step, message, table, rid, sent, pre, post, correlation)
            if step.get("mode") == 0:
                record = await self.deliver(step, delivery)
                if not record["ok"]:
                    self.undo(table, rid, pre, post)
                    raise DataverseError(
                        400,
                        "0x80040265",
                        f"The synchronous webhook step {step['name']!r} failed: the endpoint answered "
                        f"{record['status'] or record['error']}. The operation was rolled back.",
                    )
            else:
                pending = _PENDING.get()
                if pending is None:
                    self._start(step, delivery)
                else:
                    pending.append((step, delivery))

    # -- asynchronous steps wait for the commit ---------------------------------------------------------------------

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold asynchronous deliveries until the block ends without an error: the outermost block (one write
        request) starts them, a nested one (a ``$batch`` operation) hands them on, and an error drops the block's own
        (asynchronous steps run later as System Jobs queued by the operation, event-framework.md; that a rolled-back
        operation queues none is inferred from the job being part of its transaction: GUESS)."""
        pending = _PENDING.get()
        if pending is not None:
            mark = len(pending)
            try:
                yield
            except BaseException:
                del pending[mark:]
                raise
            return
        pending = []
        token = _PENDING.set(pending)
        try:
            yield
        finally:
            _PENDING.reset(token)
        for step, delivery in pending:
            self._start(step, delivery)

    @staticmethod
    def mark() -> int:
        """Where a ``$batch`` savepoint starts in the pending deliveries (0 outside a write)."""
        pending = _PENDING.get()
        return len(pending) if pending is not None else 0

    @staticmethod
    def discard_since(mark: int) -> None:
        """A ``$batch`` savepoint rolled back: its asynchronous deliveries are never sent."""
        pending = _PENDING.get()
        if pending is not None:
            del pending[mark:]

    def _start(self, step: dict[str, Any], delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._background(step, delivery))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _background(self, step: dict[str, Any], delivery: tuple[str, dict[str, str], bytes]) -> None:
        await asyncio.sleep(0)  # after the triggering request's handler has returned its answer
        await self.deliver(step, delivery)

    def undo(self, table: Table, rid: str, pre: dict[str, Any] | None, post: dict[str, Any] | None) -> None:
        """Roll a failed synchronous operation back: remove the created row, restore the updated or deleted one."""
        store = self.emu.store
        if pre is None:
            store.delete(table.logical_name, rid)
        elif post is None:
            store.insert(table.logical_name, pre)
        else:
            store.update(table.logical_name, rid, {k: v for k, v in pre.items() if k != table.primary_id})

    # -- the RemoteExecutionContext -----------------------------------------------------------------------------------

    def wcf(self, table: Table, row: dict[str, Any], columns: list[str] | None) -> list[dict[str, Any]]:
        """Row values as WCF key/value attributes: EntityReference, OptionSetValue, Money, ``/Date(ms)/``."""
        out = []
        for name, attr in table.attributes.items():
            if columns is not None and name not in columns:
                continue
            if name not in row:
                continue
            v = row.get(name)
            if v is None:
                value: Any = None
            elif attr.is_lookup:
                target = row.get(f"{name}__type") or (attr.targets[0] if attr.targets else None)
                value = _reference(target, str(v))
            elif attr.type in ("Picklist", "State", "Status"):
                value = {"__type": f"OptionSetValue:{CONTRACTS}", "Value": int(v)}
            elif attr.type == "Money":
                value = {"__type": f"Money:{CONTRACTS}", "Value": float(v)}
            elif attr.type == "DateTime":
                value = _ms_date(str(v))
            elif attr.type == "Boolean":
                value = bool(v)
            else:
                value = v
            out.append({"key": name, "value": value})
        return out

    def entity(self, table: Table, rid: str, row: dict[str, Any], columns: list[str] | None) -> dict[str, Any]:
        return {
            "__type": f"Entity:{CONTRACTS}",
            "Attributes": self.wcf(table, row, columns),
            "EntityState": None,
            "FormattedValues": [],
            "Id": rid,
            "KeyAttributes": [],
            "LogicalName": table.logical_name,
            "RelatedEntities": [],
            "RowVersion": None,
        }

    def build(
        self,
        ctx: Any,
        step: dict[str, Any],
        message: str,
        table: Table,
        rid: str,
        sent: list[str],
        pre: dict[str, Any] | None,
        post: dict[str, Any] | None,
        correlation: str,
    ) -> tuple[str, dict[str, str], bytes]:
        emu = self.emu
        stage = int(step.get("stage") or 40)
        mode = int(step.get("mode") or 0)
        user = ctx.user["systemuserid"]
        initiating = (ctx.caller or ctx.user)["systemuserid"]
        now_ms = int(emu.clock() * 1000)
        if message in ("Delete", "Assign", "SetState"):
            target: dict[str, Any] = _reference(table.logical_name, rid)
        else:
            columns = [table.primary_id, *sent]
            if message == "Update":  # the post-operation Target also carries what the platform set (doc example)
                columns += [c for c in (*_PLATFORM_COLUMNS, "fullname") if c != "versionnumber"]
            target = self.entity(table, rid, post or {}, None if message == "Create" else columns)
        inputs = special_inputs(message, target, post or {}) or [{"key": "Target", "value": target}]
        outputs = [{"key": "id", "value": rid}] if message == "Create" else []
        pre_images, post_images = [], []
        for image in self.emu.store.query(
            "SELECT * FROM sdkmessageprocessingstepimage WHERE sdkmessageprocessingstepid = ? ORDER BY name",
            [step["sdkmessageprocessingstepid"]],
        ):
            cols = [c.strip() for c in (image.get("attributes") or "").split(",") if c.strip()] or None
            kind = int(image.get("imagetype") or 0)
            alias = image.get("entityalias") or image.get("name")
            if kind in (0, 2) and pre is not None and message != "Create":
                pre_images.append({"key": alias, "value": self.entity(table, rid, pre, cols)})
            if kind in (1, 2) and post is not None and message != "Delete" and stage == 40:
                post_images.append({"key": alias, "value": self.entity(table, rid, post, cols)})
        if mode == 1 and stage == 40 and post is not None and message != "Delete":
            primary = [c for c in (table.primary_name, table.primary_id) if c]
            post_images.append({"key": "AsynchronousStepPrimaryName", "value": self.entity(table, rid, post, primary)})
        for image in (*pre_images, *post_images):
            image["value"].pop("__type", None)  # images in the documented example carry no __type
        org_host = urlsplit(str(ctx.request.base_url)).hostname or "localhost"
        common = {
            "BusinessUnitId": ctx.user.get("businessunitid"),
            "CorrelationId": correlation,
            "Depth": 1,
            "InitiatingUserId": initiating,
            "IsExecutingOffline": False,
            "IsInTransaction": mode == 0,
            "IsOfflinePlayback": False,
            "IsolationMode": 1,
            "MessageName": message,
            "Mode": mode,
            "OperationCreatedOn": f"/Date({now_ms})/",
            "OperationId": str(uuid.uuid4()),
            "OrganizationId": emu.organization_id,
            # the unique name is the first label of the host (contoso.crm.dynamics.com); an IP has none
            "OrganizationName": "emulator" if org_host.replace(".", "").isdigit() else org_host.split(".")[0],
            "OutputParameters": outputs,
            "OwningExtension": {
                "Id": step["sdkmessageprocessingstepid"],
                "KeyAttributes": [],
                "LogicalName": "sdkmessageprocessingstep",
                "Name": step.get("name"),
                "RowVersion": None,
            },
            "PrimaryEntityId": rid,
            "PrimaryEntityName": table.logical_name,
            "RequestId": None,
            "SecondaryEntityName": "none",
            "SharedVariables": [],
            "UserId": user,
        }
        parent_inputs = inputs
        if message in ("Create", "Update"):
            parent_target = self.entity(table, rid, post or {}, [table.primary_id, *sent])
            parent_inputs = [{"key": "Target", "value": parent_target}]
        parent = {
            **common,
            "InputParameters": parent_inputs,
            "ParentContext": None,
            "PostEntityImages": [],
            "PreEntityImages": [],
            "Stage": 30,
        }
        context = {
            **common,
            "InputParameters": inputs,
            "ParentContext": parent,
            "PostEntityImages": post_images,
            "PreEntityImages": pre_images,
            "Stage": stage,
        }
        headers = {
            "content-type": "application/json",  # unverified: the docs only say "POST requests with JSON payload"
            "x-ms-dynamics-organization": org_host,
            "x-ms-dynamics-entity-name": table.logical_name,
            "x-ms-dynamics-request-name": message,
            "x-ms-correlation-request-id": correlation,
        }
        body = self.encode(context)
        if len(body) > SIZE_LIMIT:
            for dropped in ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages"):
                context.pop(dropped, None)
            headers["x-ms-dynamics-msg-size-exceeded"] = "true"
            body = self.encode(context)
        url = self.authenticate(step, headers)
        return url, headers, body

    @staticmethod
    def encode(context: dict[str, Any]) -> bytes:
        """DataContractJsonSerializer escapes every ``/`` (``\\/Date(...)\\/``, ``http:\\/\\/schemas...``)."""
        return json.dumps(context, separators=(",", ":")).replace("/", "\\/").encode()

    @staticmethod
    def authenticate(step: dict[str, Any], headers: dict[str, str]) -> str:
        """The URL to post to, with the registered secret added where its authentication type puts it."""
        url = str(step["endpoint_url"])
        kind, value = step.get("endpoint_authtype"), step.get("endpoint_authvalue") or ""
        params: list[tuple[str, str]] = []
        if kind == 4:
            params.append(("code", value))
        elif kind in (5, 6) and value:
            for setting in ElementTree.fromstring(value).iter("setting"):
                pair = (setting.get("name") or "", setting.get("value") or "")
                if kind == 5:
                    headers[pair[0]] = pair[1]
                else:
                    params.append(pair)
        if params:
            parts = urlsplit(url)
            query = "&".join(p for p in (parts.query, urlencode(params)) if p)
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
        return url

    async def deliver(self, step: dict[str, Any], delivery: tuple[str, dict[str, str], bytes]) -> dict[str, Any]:
        """POST once, and once more on 502/503/504 (use-webhooks.md); record the outcome (URL without its query)."""
        url, headers, body = delivery
        record: dict[str, Any] = {
            "step_id": step["sdkmessageprocessingstepid"],
            "mode": "synchronous" if step.get("mode") == 0 else "asynchronous",
            "message": headers["x-ms-dynamics-request-name"],
            "table": headers["x-ms-dynamics-entity-name"],
            "url": urlunsplit(urlsplit(url)._replace(query="")),
            "size_exceeded": "x-ms-dynamics-msg-size-exceeded" in headers,
            "bytes": len(body),
            "attempts": 0,
            "status": None,
            "error": None,
            "ok": False,
        }
        # httpcore rather than httpx: httpx logs every request URL, and this one carries the webhook key
        timeouts = {"connect": TIMEOUT_S, "read": TIMEOUT_S, "write": TIMEOUT_S, "pool": TIMEOUT_S}
        async with httpcore.AsyncConnectionPool() as pool:
            for _ in range(2):
                record["attempts"] += 1
                try:
                    response = await pool.request(
                        "POST", url, headers=list(headers.items()), content=body, extensions={"timeout": timeouts}
                    )
                except (httpcore.NetworkError, httpcore.TimeoutException, httpcore.ProtocolError) as exc:
                    record["status"], record["error"] = None, type(exc).__name__
                    break
                record["status"] = response.status
                if response.status not in RETRY_STATUSES:
                    break
        record["ok"] = record["status"] is not None and 200 <= record["status"] < 300
        self.deliveries.append(record)
        return record

    # -- admin surface ----------------------------------------------------------------------------------------------

    async def drain(self, request: Request) -> Response:
        """Answer once no background delivery is left (new ones started meanwhile included)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        return JSONResponse({"drained": True, "deliveries": self.deliveries})

    def admin_routes(self) -> list[Route]:
        return [Route("/_emulator/webhooks/drain", self.drain, methods=["POST"])]


def special_inputs(message: str, target: dict[str, Any], post: dict[str, Any]) -> list[dict[str, Any]]:
    """The InputParameters of the legacy messages an update raises: AssignRequest (Target, Assignee) and
    SetStateRequest (EntityMoniker, State, Status), as the SDK names them; empty for every other message."""
    if message == "Assign":
        assignee = _reference(post.get("ownerid__type") or "systemuser", str(post.get("ownerid")))
        return [{"key": "Target", "value": target}, {"key": "Assignee", "value": assignee}]
    if message == "SetState":
        return [
            {"key": "EntityMoniker", "value": target},
            {"key": "State", "value": {"__type": f"OptionSetValue:{CONTRACTS}", "Value": post.get("statecode")}},
            {"key": "Status", "value": {"__type": f"OptionSetValue:{CONTRACTS}", "Value": post.get("statuscode")}},
        ]
    return []


def update_events(sent: list[str]) -> list[tuple[str, list[str]]]:
    """The messages one update raises, each with the columns it carries.

    special-update-operation-behavior.md: an update of state/status columns with other columns runs the Update
    steps once for the other columns and then once for the state/status ones, and workflows on Assign and
    "Change Status" keep being triggered by updates of the owner and state columns. That the SetState and Assign
    webhook steps are raised the same way, after the Update ones, is a GUESS (the page speaks of workflows)."""
    state = [c for c in sent if c in _STATE_COLUMNS]
    other = [c for c in sent if c not in _STATE_COLUMNS]
    events = [("Update", other)] if other or not state else []
    if state:
        events += [("Update", state), ("SetState", state)]
    if "ownerid" in sent:
        events.append(("Assign", ["ownerid"]))
    return events


def sent_columns(table: Table, data: dict[str, Any]) -> list[str]:
    """The columns a request body names (``@odata.bind`` keys mapped to their lookup column)."""
    sent = []
    for key in data:
        name = key.split("@", 1)[0]
        if name in table.attributes:
            sent.append(name)
        else:  # a navigation property: polymorphic ones are <column>_<table>
            sent += [a for a in table.attributes if name == a or name.startswith(a + "_")][:1]
    return sent


async def notify(
    api: Any,
    ctx: Any,
    message: str,
    table: Table,
    rid: str,
    data: dict[str, Any],
    pre: dict[str, Any] | None,
) -> None:
    """Hook-in for every write path (single, ``$batch``, bulk) after a create, update or delete: the columns the
    request sent, the row after; an update fans out into the messages ``update_events`` names."""
    post = None if message == "Delete" else api.store.get(table.logical_name, rid)
    sent = sent_columns(table, data)
    events = update_events(sent) if message == "Update" else [(message, sent)]
    for name, columns in events:
        await api.emu.webhooks.after_change(ctx, name, table, rid, columns, pre, post)
