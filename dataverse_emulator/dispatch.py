"""The Web API dispatcher: one catch-all route under ``/api/data/v9.x/``, authenticated, split and routed here.

Why one catch-all route: OData resource paths (``accounts(accountnumber='A/1')``,
``EntityDefinitions(LogicalName='x')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata``) do not fit
Starlette's path converters, so the path is split by a small OData-aware splitter and dispatched here."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from . import (
    aggregate,
    changetracking,
    errors,
    fetchxml,
    files,
    marketing,
    merge,  # noqa: F401  (registers Merge)
    message_handlers,  # noqa: F401  (registers the system messages)
    messages,
    metadata,
    metadata_writes,
)
from .batch import handle as run_batch
from .bulk import NS as BULK_NS
from .bulk import bound_action, bulk_delete
from .context import API_RE, MAX_PAGE, Ctx, parse_prefer, seg_key, split_path
from .errors import DataverseError, error_response
from .identity import org_of
from .model import Relationship, Table
from .odata import (
    ODataSyntaxError,
)
from .record_writes import RecordApi
from .records import (
    AnnotationFilter,
)
from .storage import q

log = logging.getLogger("dataverse_emulator")


#: SQLite's refusals of a statement too complex to run: Dataverse refuses such queries for their joins (GUESS).
TOO_COMPLEX = ("too many FROM clause terms", "parser stack overflow", "Expression tree is too large", "at most 64")


def as_refusal(e: Exception) -> DataverseError | None:
    """The Dataverse error a failure answers with; None for an emulator bug."""
    if isinstance(e, DataverseError):
        return e
    if isinstance(e, ODataSyntaxError):
        return DataverseError(400, e.code, e.message)
    if isinstance(e, RecursionError):  # Microsoft.OData's wording for a too deeply nested query option (GUESS)
        return DataverseError(400, "0x0", "The recursion limit has been exceeded.")
    if isinstance(e, sqlite3.OperationalError) and any(m in str(e) for m in TOO_COMPLEX):
        return errors.too_many_link_entities()
    return None


class WebApi(RecordApi):
    """Handlers for everything under ``/api/data/v9.x/``: authentication, then routing to records or a handler."""

    # -- entry ------------------------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Entry point for every Web API request: auth, dispatch, and Dataverse-shaped errors for any refusal."""
        m = API_RE.match(request.url.path)
        org = org_of(request)
        if not m:
            return error_response(errors.no_resource(str(request.url)))
        api = f"{org}/api/data/{m.group(1)}"
        try:
            raw_path = request.scope.get("raw_path", b"").decode("latin-1")
            sub = raw_path.split("/api/data/", 1)[1].split("/", 1)
            rest = unquote(sub[1]) if len(sub) > 1 else ""
            if request.method != "GET":
                await request.body()  # read before taking the store: a slow sender holds up nobody
            async with self.emu.store_turn():  # no other request runs inside this one's transaction (Emulator.db_lock)
                ctx = self.authenticate(request, api, org)
                if request.method == "GET":
                    resp = await self.dispatch(request, ctx, split_path(rest))
                else:
                    # any refusal rolls every write back, and asynchronous webhook steps start after the commit
                    with self.emu.webhooks.deferred(), self.store.transaction():
                        resp = await self.dispatch(request, ctx, split_path(rest))
            if ctx.applied and "preference-applied" not in resp.headers:
                resp.headers["Preference-Applied"] = ",".join(ctx.applied)
            resp.headers["OData-Version"] = "4.0"
            req_id = str(uuid.uuid4())
            resp.headers["REQ_ID"] = req_id
            resp.headers["x-ms-service-request-id"] = req_id
            return resp
        except ClientDisconnect:
            raise  # nobody to answer: the request log middleware records it
        except Exception as e:  # every failure answers in Dataverse's shape
            refusal = as_refusal(e)
            entry = request.scope.get("state", {}).get("log_entry")
            if refusal is None:  # an emulator bug must still answer like Dataverse (500 UnExpected), and be visible
                log.exception("unhandled error for %s %s", request.method, request.url.path)
                if entry is not None:
                    entry["error_code"] = "0x80040216"
                return error_response(DataverseError(500, "0x80040216", "An unexpected error occurred."))
            if entry is not None:
                entry["error_code"] = refusal.code
            return error_response(
                refusal, AnnotationFilter(parse_prefer(request).get("odata.include-annotations")).wants
            )

    def authenticate(self, request: Request, api: str, org: str) -> Ctx:
        """Check the bearer token (signature, expiry, audience) and resolve caller and impersonated user."""
        idp = self.emu.identity
        www = f"Bearer authorization_uri={org}/{idp.tenant_id}/oauth2/authorize, resource_id={org}/"
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise errors.unauthenticated(www)
        claims = idp.verify(auth[7:].strip(), org)
        if claims is None:
            raise errors.unauthenticated(www)
        user = self.emu.user_for_claims(claims)
        if user is None:
            raise DataverseError(403, "0x80072560", "The user is not a member of the organization.")
        entry = request.scope.get("state", {}).get("log_entry")
        caller = None
        oid = request.headers.get("callerobjectid")
        cid = request.headers.get("mscrmcallerid")
        if oid or cid:
            if oid:
                rows = self.store.query("SELECT * FROM systemuser WHERE azureactivedirectoryobjectid = ?", [oid])
            else:
                rows = self.store.query("SELECT * FROM systemuser WHERE systemuserid = ?", [cid])
            if not rows:
                raise errors.not_found("systemuser", str(oid or cid))
            caller, user = user, rows[0]
        if entry is not None:
            entry["user"] = user["systemuserid"]
            entry["application_id"] = claims.get("appid")
            entry["caller"] = caller["systemuserid"] if caller else None
        return Ctx(request, api, user, caller)

    async def dispatch(self, request: Request, ctx: Ctx, segs: list[str]) -> Response:
        """Route an OData resource path (already split into segments) to its handler."""
        method = request.method
        if not segs:
            if method != "GET":
                raise errors.no_resource(str(request.url))
            return self.service_document(ctx)
        head, key = seg_key(segs[0])
        if head == "$batch" and len(segs) == 1:
            return await run_batch(self, request, ctx)
        if head == "BulkDelete" and len(segs) == 1 and method == "POST":
            return await bulk_delete(self, request, ctx)
        if head == "$metadata":
            csdl = metadata.csdl(
                self.tables, self.rels, getattr(self.emu, "many_to_many", []), messages.csdl_parts(self)
            )
            return Response(csdl, media_type="application/xml")
        if head in ("WhoAmI", "RetrieveVersion") and method != "GET":
            raise errors.no_resource(f"{ctx.api}/{segs[0]}")
        if head in marketing.UNBOUND and len(segs) == 1:
            return await marketing.UNBOUND[head](self, request, ctx)
        if head in metadata_writes.ROUTES:
            return await metadata_writes.dispatch(self, request, ctx, head, key, segs)
        if head == "EntityDefinitions":
            rest = segs[1:]
            if method != "GET" and not (rest and rest[0].startswith("Keys")):  # table, column and label writes
                return await metadata_writes.entity_definitions_write(self, request, ctx, key, rest)
            return await metadata.entity_definitions(self, request, ctx, key, rest)
        table = self.emu.by_set.get(head)
        if table is None:  # an unbound action or function (looked up only here: custom APIs are rows)
            unbound = messages.find(self, head, None, False) if len(segs) == 1 else None
            if unbound is None:
                raise errors.segment_not_found(head)
            return await messages.invoke(self, request, ctx, unbound, key, None)
        op = seg_key(segs[1][len(BULK_NS) :]) if len(segs) == 2 and segs[1].startswith(BULK_NS) else None
        msg = messages.find(self, op[0], table, key is None) if op else None
        if msg is not None and op is not None:
            rid, row = self.load(table, key) if key is not None else (None, None)
            return await messages.invoke(self, request, ctx, msg, op[1], messages.Bound(table, rid, row))
        if key is None and len(segs) == 2 and segs[1].startswith(BULK_NS):
            return await bound_action(self, request, ctx, table, segs[1][len(BULK_NS) :])
        if key is None:
            if len(segs) == 1:
                if method == "GET":
                    return self.list_records(request, ctx, table)
                if method == "POST":
                    return await self.create(request, ctx, table)
                raise errors.DataverseError(
                    405, "0x80060888", f"The requested resource does not support http method '{method}'."
                )
            if len(segs) == 2 and segs[1] == "$count" and method == "GET":
                n = min(self.store.scalar(f"SELECT COUNT(*) FROM {q(table.logical_name)}", []), MAX_PAGE)
                return Response(str(n), media_type="text/plain", headers={"OData-Version": "4.0"})
            raise errors.segment_not_found(segs[1])
        if len(segs) == 1:
            if method == "GET":
                return self.retrieve(request, ctx, table, key)
            if method == "PATCH":
                return await self.patch(request, ctx, table, key)
            if method == "DELETE":
                return await self.delete(request, ctx, table, key)
            raise errors.DataverseError(
                405, "0x80060888", f"The requested resource does not support http method '{method}'."
            )
        action = marketing.BOUND.get(segs[1][len(BULK_NS) :]) if segs[1].startswith(BULK_NS) else None
        if action is not None and table.logical_name == "list" and len(segs) == 2 and method == "POST":
            return await action(self, request, ctx, table, key)
        return await self.sub_resource(request, ctx, table, key, segs[1:])

    def service_document(self, ctx: Ctx) -> Response:
        """``GET {api}/``: the entity sets, as the service document lists them."""
        value = [{"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set} for t in self.tables.values()]
        value.append({"name": "EntityDefinitions", "kind": "EntitySet", "url": "EntityDefinitions"})
        return self.json({"@odata.context": f"{ctx.api}/$metadata", "value": value})

    def list_records(
        self,
        request: Request,
        ctx: Ctx,
        table: Table,
        parent: tuple[Relationship, Table, str] | None = None,
        base_path: str | None = None,
    ) -> Response:
        """A collection read: FetchXML and ``$apply`` go to their own handlers, everything else is a list."""
        opts = self.query_options(request)
        if "fetchXml" in opts and parent is None:
            return fetchxml.run(self, ctx, table, opts["fetchXml"])
        if "$apply" in opts and parent is None:
            return aggregate.run(self, ctx, table, opts)
        if parent is None and changetracking.wanted(ctx, opts):
            return changetracking.respond(self, request, ctx, table, opts)
        return super().list_records(request, ctx, table, parent, base_path)

    async def sub_resource(self, request: Request, ctx: Ctx, table: Table, key: str, segs: list[str]) -> Response:
        """File and image columns have their own handler; every other property or navigation is a record's."""
        attr = table.attributes.get(seg_key(segs[0])[0])
        if attr is not None and attr.type in ("File", "Image"):
            rid, row = self.load(table, key)
            return await files.handle(self, request, ctx, table, rid, row, attr, segs[1:])
        return await super().sub_resource(request, ctx, table, key, segs)
