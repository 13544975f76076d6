"""The Starlette application: routing of Web API paths, auth checks, records, queries, metadata and admin.

Why one catch-all route under ``/api/data/v9.x/``: OData resource paths (``accounts(accountnumber='A/1')``,
``EntityDefinitions(LogicalName='x')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata``) do not fit
Starlette's path converters, so the path is split by a small OData-aware splitter and dispatched here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import aggregate, errors, fetchxml, files, marketing, metadata, metadata_writes, sampledata
from .batch import handle as run_batch
from .bulk import NS as BULK_NS
from .bulk import bound_action, bulk_delete, ensure_message_rows
from .errors import JSON_CT, DataverseError, error_response
from .faults import EmulatorApp, FaultMiddleware, FaultPlan
from .identity import App, Identity, IdentityEndpoints, org_of
from .model import Relationship, Table, build_tables
from .odata import (
    ExpandItem,
    ODataSyntaxError,
    parse_expand,
    parse_filter,
    parse_key_predicate,
    parse_orderby,
    parse_select,
)
from .query import Compiler, fmt_dt
from .query import Scope as QScope
from .records import (
    ASSOC_NAV,
    FORMATTED,
    LOOKUP_NAME,
    AnnotationFilter,
    computed,
    convert,
    etag,
    formatted,
    json_value,
    lookup_nav,
)
from .storage import Store, q, type_col
from .throttle import Clock, Throttle, ThrottleMiddleware, limits_for
from .webhooks import Webhooks, notify

log = logging.getLogger("dataverse_emulator")

MAX_URL = 32768
KEY_RESERVED = set("/<>*%&:\\?+")
MAX_PAGE = 5000
API_RE = re.compile(r"^/api/data/(v9\.[012])(/.*)?$")
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
VERSION = "9.2.25093.00155"


def split_path(path: str) -> list[str]:
    """Split an OData resource path on ``/`` outside quotes and parentheses."""
    out: list[str] = []
    cur: list[str] = []
    depth, quoted = 0, False
    for ch in path:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "/" and depth == 0 and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [s for s in out if s != ""]


def seg_key(seg: str) -> tuple[str, str | None]:
    """``accounts(…)`` -> (``accounts``, ``…``); ``accounts`` -> (``accounts``, None)."""
    i = seg.find("(")
    if i > 0 and seg.endswith(")"):
        return seg[:i], seg[i + 1 : -1]
    return seg, None


def expand_context(items: tuple[ExpandItem, ...]) -> str | None:
    """The ``$expand`` part of ``@odata.context``: ``primarycontactid(fullname)``, nested expands inside."""
    if not items:
        return None
    parts = []
    for it in items:
        inner = [*(it.select or ())]
        nested = expand_context(it.expand)
        if nested:
            inner.append(nested)
        parts.append(f"{it.nav}({','.join(inner)})")
    return ",".join(parts)


def parse_prefer(request: Request) -> dict[str, str]:
    """All ``Prefer`` values, from repeated headers or comma lists (quoted commas respected)."""
    out: dict[str, str] = {}
    for raw in request.headers.getlist("prefer"):
        for part in re.findall(r'(?:[^,"]|"[^"]*")+', raw):
            name, _, value = part.strip().partition("=")
            out[name.strip().lower()] = value.strip()
    return out


class Ctx:
    """Per-request state: API root, caller, effective user, Prefer values."""

    def __init__(self, request: Request, api: str, user: dict[str, Any], caller: dict[str, Any] | None) -> None:
        self.request = request
        self.api = api
        self.user = user  # effective user (impersonated if any)
        self.caller = caller  # real caller when impersonating
        self.prefer = parse_prefer(request)
        self.annotations = AnnotationFilter(self.prefer.get("odata.include-annotations"))
        self.applied: list[str] = []


class Emulator:
    """All state behind one app: metadata, storage, identity and the request log."""

    sample_data: bool = False  # --sample-data: the admin reset loads the sample organization again
    sample_seed: int | None = None

    def __init__(
        self,
        *,
        seed: int | None,
        db_path: str | None,
        key_activation_s: float,
        latency_ms: int,
        token_lifetime_s: int,
        admin: bool,
        clock: Callable[[], float] | None,
    ) -> None:
        self.clock = Clock(clock or time.time)  # advanced by POST /_emulator/clock
        self.latency_ms = latency_ms
        self.admin = admin
        self.tables, self.rels = build_tables()
        self.by_set: dict[str, Table] = {t.entity_set: t for t in self.tables.values()}
        self.store = Store(self.tables, self.rels, db_path, self.clock, key_activation_s)
        metadata_writes.load_persisted(self)  # custom tables and columns of a --db file
        stable = random.Random(seed if seed is not None else 365)
        # a different stream from `stable`, so generated record ids never repeat the fixed principal ids
        self.rng = random.Random(f"records-{seed}") if seed is not None else random.Random()
        self.identity = Identity(
            tenant_id=str(uuid.UUID(int=stable.getrandbits(128), version=4)),
            clock=self.clock,
            token_lifetime_s=token_lifetime_s,
            rng=self.rng,
            seeded=seed is not None,
        )
        self.organization_id = str(uuid.UUID(int=stable.getrandbits(128), version=4))
        self.webhooks = Webhooks(self)
        self._setup_principals(stable)
        self.log: deque[dict[str, Any]] = deque(maxlen=100000)
        self.in_flight = 0
        self.user_cache: dict[str, dict[str, Any]] = {}

    # -- principals -------------------------------------------------------------------------------------------------

    def _setup_principals(self, stable: random.Random) -> None:
        from .tls import client_certificate

        def g() -> str:
            return str(uuid.UUID(int=stable.getrandbits(128), version=4))

        idp = self.identity
        self.root_bu = g()
        self.system_user = g()
        apps = {
            "client_credentials": App(g(), g(), "client_credentials", secret=idp.secret()),
            "certificate": App(g(), g(), "certificate"),
            "authorization_code": App(g(), g(), "authorization_code", public=True),
            "managed_identity": App(g(), g(), "managed_identity"),
        }
        idp.user_oid = g()
        idp.identity_header = idp.secret()
        cert_pem, key_pem, der = client_certificate("d365-emulator-client")
        apps["certificate"].cert_public_pem = cert_pem
        import base64
        import hashlib

        apps["certificate"].cert_thumbprint_x5t = (
            base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")
        )
        idp.cert_pem, idp.key_pem = cert_pem, key_pem
        for a in apps.values():
            idp.apps[a.client_id] = a
        self.apps_by_kind = apps
        self._ensure_bootstrap_rows()

    def _ensure_bootstrap_rows(self) -> None:
        """Root business unit, SYSTEM user, the application users and the interactive test user."""
        s = self.store
        self.webhooks.ensure_rows()
        ensure_message_rows(s, self.tables)
        now = fmt_dt_now(self.clock)
        if not s.exists("businessunit", self.root_bu):
            v = s.next_version()
            s.insert(
                "businessunit",
                {
                    "businessunitid": self.root_bu,
                    "name": "emulator",
                    "createdon": now,
                    "modifiedon": now,
                    "versionnumber": v,
                },
            )
        users: list[tuple[str, str, str | None, str | None]] = [(self.system_user, "SYSTEM", None, None)]
        users += [(a.object_id, f"# {kind} app", a.client_id, a.object_id) for kind, a in self.apps_by_kind.items()]
        users.append((self.identity.user_oid, "Emulator Test User", None, self.identity.user_oid))
        for uid, name, appid, oid in users:
            if not s.exists("systemuser", uid):
                s.insert(
                    "systemuser",
                    {
                        "systemuserid": uid,
                        "fullname": name,
                        "lastname": name,
                        "applicationid": appid,
                        "azureactivedirectoryobjectid": oid,
                        "accessmode": 4 if appid else 0,
                        "isdisabled": 0,
                        "businessunitid": self.root_bu,
                        "businessunitid__type": "businessunit",
                        "createdon": now,
                        "modifiedon": now,
                        "versionnumber": s.next_version(),
                    },
                )

    def ensure_user(self, app: App | None, oid: str) -> None:
        """Called by the token endpoint; every app and the test user already have systemuser rows."""

    def user_for_claims(self, claims: dict[str, Any]) -> dict[str, Any] | None:
        """The systemuser behind a token: application users by appid, people by Entra object id (cached)."""
        key = f"{claims.get('appid')}|{claims.get('oid')}|{claims.get('idtyp')}"
        u = self.user_cache.get(key)
        if u is not None:
            return u
        if claims.get("idtyp") == "app":
            rows = self.store.query("SELECT * FROM systemuser WHERE applicationid = ?", [claims.get("appid")])
        else:
            rows = self.store.query(
                "SELECT * FROM systemuser WHERE azureactivedirectoryobjectid = ?", [claims.get("oid")]
            )
        if not rows:
            return None
        self.user_cache[key] = rows[0]
        return rows[0]

    # -- connection configs -----------------------------------------------------------------------------------------

    def connection_config(
        self, org: str, kind: str = "client_credentials", ca_file: str | None = None, files_dir: str | None = None
    ) -> dict[str, Any]:
        """A connection file body (see README): the shape ``--connection-out`` writes."""
        tenant = self.identity.tenant_id
        app = self.apps_by_kind[kind]
        cfg: dict[str, Any] = {"kind": kind, "organization_url": org, "tenant_id": tenant}
        if kind != "managed_identity":
            cfg["token_url"] = f"{org}/{tenant}/oauth2/v2.0/token"
        cfg["client_id"] = app.client_id
        if kind == "client_credentials":
            cfg["client_secret"] = app.secret
        elif kind == "certificate":
            import tempfile
            from pathlib import Path

            d = Path(files_dir or tempfile.mkdtemp(prefix="d365-emulator-"))
            d.mkdir(parents=True, exist_ok=True)
            cert_path, key_path = d / "client-cert.pem", d / "client-key.pem"
            cert_path.write_bytes(self.identity.cert_pem)
            key_path.write_bytes(self.identity.key_pem)
            key_path.chmod(0o600)
            cfg["certificate_file"] = str(cert_path)
            cfg["private_key_file"] = str(key_path)
        elif kind == "authorization_code":
            cfg["authorize_url"] = f"{org}/{tenant}/oauth2/v2.0/authorize"
            cfg["redirect_port"] = 0
            cfg["scopes"] = [f"{org}/user_impersonation", "offline_access"]
        elif kind == "managed_identity":
            cfg["identity_endpoint"] = f"{org}/metadata/identity/oauth2/token"
            cfg["identity_style"] = "imds"
            cfg["identity_header"] = self.identity.identity_header
        if ca_file:
            cfg["ca_file"] = ca_file
        if org.startswith("http://"):
            cfg["allow_insecure_loopback"] = True
        return cfg


def fmt_dt_now(clock: Callable[[], float]) -> str:
    """Now on the injected clock, in the canonical storage form."""
    import datetime as dt

    return fmt_dt(dt.datetime.fromtimestamp(clock(), dt.UTC))


# =====================================================================================================================
# Middleware: request log, latency, URL length


class Observe:
    """Pure ASGI middleware: request log with in-flight counts, injected latency, the 32 KB URL limit."""

    def __init__(self, app: ASGIApp, emu: Emulator) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        emu = self.emu
        raw_path = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string", b"")
        url_len = len(raw_path) + (len(qs) + 1 if qs else 0)
        path = scope["path"]
        is_admin = path.startswith("/_emulator/")
        entry: dict[str, Any] = {}
        if not is_admin:
            emu.in_flight += 1
            headers = {}
            for k, v in scope["headers"]:
                name = k.decode("latin-1").lower()
                headers[name] = "<redacted>" if name in ("authorization", "x-identity-header") else v.decode("latin-1")
            entry = {
                "method": scope["method"],
                "path": path,
                "query": qs.decode("latin-1"),
                "headers": headers,
                "start": emu.clock(),
                "wall_start": time.time(),
                "in_flight_at_start": emu.in_flight,
                "status": None,
                "error_code": None,
                "retry_after": None,
                "user": None,
            }
            scope.setdefault("state", {})["log_entry"] = entry

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start" and entry:
                entry["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k.lower() == b"retry-after":
                        entry["retry_after"] = v.decode()
            await send(message)

        try:
            if emu.latency_ms and not is_admin and not path.startswith("/api/data"):  # Web API: ThrottleMiddleware
                await asyncio.sleep(emu.latency_ms / 1000)
            if url_len > MAX_URL and not is_admin:
                resp = JSONResponse(
                    {
                        "error": {
                            "code": "",
                            "message": "The length of the URL for this request exceeds the configured "
                            "maxUrlLength value.",
                        }
                    },
                    status_code=414,
                )
                await resp(scope, receive, send_wrapper)
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            if entry:
                emu.in_flight -= 1
                entry["end"] = emu.clock()
                entry["wall_end"] = time.time()
                entry["in_flight_at_end"] = emu.in_flight
                emu.log.append(entry)


# =====================================================================================================================
# Web API


class WebApi:
    """Handlers for everything under ``/api/data/v9.x/``."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.store = emu.store
        self.tables = emu.tables
        self.rels = emu.rels
        self._deep_children: list[tuple[Relationship, list[dict[str, Any]]]] = []

    # -- entry ------------------------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Entry point for every Web API request: auth, dispatch, and Dataverse-shaped errors for any refusal."""
        m = API_RE.match(request.url.path)
        org = org_of(request)
        if not m:
            return error_response(errors.no_resource(str(request.url)))
        api = f"{org}/api/data/{m.group(1)}"
        try:
            ctx = self.authenticate(request, api, org)
            raw_path = request.scope.get("raw_path", b"").decode("latin-1")
            sub = raw_path.split("/api/data/", 1)[1].split("/", 1)
            rest = unquote(sub[1]) if len(sub) > 1 else ""
            if request.method == "GET":
                resp = await self.dispatch(request, ctx, split_path(rest))
            else:
                # read the body first: once cached, dispatch has no suspension point, so no other request can run
                # inside this transaction on the shared connection; any refusal rolls every write back
                await request.body()
                with self.store.transaction():
                    resp = await self.dispatch(request, ctx, split_path(rest))
            if ctx.applied and "preference-applied" not in resp.headers:
                resp.headers["Preference-Applied"] = ",".join(ctx.applied)
            resp.headers["OData-Version"] = "4.0"
            req_id = str(uuid.uuid4())
            resp.headers["REQ_ID"] = req_id
            resp.headers["x-ms-service-request-id"] = req_id
            return resp
        except DataverseError as e:
            entry = request.scope.get("state", {}).get("log_entry")
            if entry is not None:
                entry["error_code"] = e.code
            return error_response(e, AnnotationFilter(parse_prefer(request).get("odata.include-annotations")).wants)
        except ODataSyntaxError as e:
            entry = request.scope.get("state", {}).get("log_entry")
            if entry is not None:
                entry["error_code"] = e.code
            return error_response(
                DataverseError(400, e.code, e.message),
                AnnotationFilter(parse_prefer(request).get("odata.include-annotations")).wants,
            )
        except Exception:  # an emulator bug must still answer like Dataverse (500 UnExpected), and be visible
            log.exception("unhandled error for %s %s", request.method, request.url.path)
            entry = request.scope.get("state", {}).get("log_entry")
            if entry is not None:
                entry["error_code"] = "0x80040216"
            return error_response(DataverseError(500, "0x80040216", "An unexpected error occurred."))

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
            return Response(metadata.csdl(self.tables, self.rels), media_type="application/xml")
        if head in ("WhoAmI", "RetrieveVersion") and len(segs) == 1 and (key is None or key == ""):
            if method != "GET":
                raise errors.no_resource(f"{ctx.api}/{segs[0]}")
            if head == "WhoAmI":
                return self.json(
                    {
                        "@odata.context": f"{ctx.api}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                        "BusinessUnitId": ctx.user["businessunitid"],
                        "UserId": ctx.user["systemuserid"],
                        "OrganizationId": self.emu.organization_id,
                    },
                    headers={"x-ms-dop-hint": "4"},
                )
            return self.json(
                {
                    "@odata.context": f"{ctx.api}/$metadata#Microsoft.Dynamics.CRM.RetrieveVersionResponse",
                    "Version": VERSION,
                }
            )
        if head in marketing.UNBOUND and len(segs) == 1:
            return await marketing.UNBOUND[head](self, request, ctx)
        if head in metadata_writes.ROUTES:
            return await metadata_writes.dispatch(self, request, ctx, head, key, segs)
        if head == "EntityDefinitions":
            return await metadata.entity_definitions(self, request, ctx, key, segs[1:])
        table = self.emu.by_set.get(head)
        if table is None:
            raise errors.segment_not_found(head)
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

    # -- helpers ----------------------------------------------------------------------------------------------------

    def json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON response with Dataverse's content type (compact separators, as the service sends)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        return Response(
            data, status_code=status, media_type=JSON_CT, headers={"OData-Version": "4.0", **(headers or {})}
        )

    def service_document(self, ctx: Ctx) -> Response:
        """``GET {api}/``: the entity sets, as the service document lists them."""
        value = [{"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set} for t in self.tables.values()]
        value.append({"name": "EntityDefinitions", "kind": "EntitySet", "url": "EntityDefinitions"})
        return self.json({"@odata.context": f"{ctx.api}/$metadata", "value": value})

    def resolve_key(self, table: Table, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """(id, alternate-key values) for a key predicate; id is None when an alternate key matches no row."""
        if GUID_RE.match(key):
            return key.lower(), None
        parsed = parse_key_predicate(key)
        if not isinstance(parsed, dict):
            return str(parsed).lower(), None
        if set(parsed) == {table.primary_id} and table.logical_name not in ("systemuser", "team"):
            v = parsed[table.primary_id].value
            return str(v).lower(), None
        comp = Compiler(self.tables, self.rels, self.emu.clock)
        values: dict[str, Any] = {}
        for lit in parsed.values():
            if isinstance(lit.value, str) and KEY_RESERVED & set(lit.value):
                # documented as unsupported in key predicates; the exact failure is not documented (GUESS)
                raise errors.bad_request("Bad Request - Error in query syntax.")
        for name, lit in parsed.items():
            try:
                col, attr = comp.column(table, name)
            except DataverseError:
                raise errors.bad_key(table.logical_name) from None
            values[col] = comp.value(lit, attr)
        match = [k for k in self.store.active_keys(table.logical_name) if set(k.attributes) == set(values)]
        if not match:
            raise errors.bad_key(table.logical_name)
        ids = self.store.find_ids(table.logical_name, values)
        return (ids[0] if ids else None), values

    def load(self, table: Table, key: str) -> tuple[str, dict[str, Any]]:
        """Row for a key predicate, or the documented 404 (0x80040217 by id, 0x80060891 by alternate key)."""
        rid, alt = self.resolve_key(table, key)
        row = self.store.get(table.logical_name, rid) if rid else None
        if row is None:
            if alt is not None:
                raise errors.key_not_found(table.logical_name)
            raise errors.not_found(table.logical_name, str(rid))
        return str(rid), row

    def check_select(self, table: Table, select: tuple[str, ...] | None) -> list[str] | None:
        """Validate ``$select`` names (0x0 for unknown ones); None means all columns."""
        if select is None:
            return None
        comp = Compiler(self.tables, self.rels, self.emu.clock)
        for s in select:
            if s == "*":
                return None
            comp.column(table, s)
        return list(select)

    # -- serialisation ----------------------------------------------------------------------------------------------

    def entity(self, ctx: Ctx, table: Table, row: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
        """Serialise a row as Dataverse does: etag first, lookups as ``_x_value``, annotations when asked."""
        out: dict[str, Any] = {"@odata.etag": etag(row.get("versionnumber"))}
        ann = ctx.annotations
        names = select if select is not None else None
        attrs = table.attributes
        if names is None:
            todo = [a for a in attrs.values() if a.valid_for_read]
        else:
            todo = []
            for n in names:
                a = attrs.get(n[1:-6]) if n.startswith("_") and n.endswith("_value") else attrs.get(n)
                if a is not None:
                    todo.append(a)
            if table.primary_id not in names:
                todo.append(attrs[table.primary_id])
        for a in todo:
            v = row.get(a.name)
            if a.is_lookup:
                prop = f"_{a.name}_value"
                if v is not None and ann:
                    target = row.get(type_col(a.name))
                    if ann.wants(FORMATTED):
                        name = self.primary_name_of(target, v)
                        if name is not None:
                            out[f"{prop}@{FORMATTED}"] = name
                    if ann.wants(ASSOC_NAV):
                        out[f"{prop}@{ASSOC_NAV}"] = lookup_nav(a, target)
                    if ann.wants(LOOKUP_NAME):
                        out[f"{prop}@{LOOKUP_NAME}"] = target
                out[prop] = v
            else:
                if v is not None and ann and ann.wants(FORMATTED):
                    f = formatted(a, v)
                    if f is not None:
                        out[f"{a.name}@{FORMATTED}"] = f
                out[a.name] = json_value(a, v)
        if table.logical_name in ("systemuser", "team") and (names is None or "ownerid" in (names or [])):
            out["ownerid"] = row[table.primary_id]
        return out

    def primary_name_of(self, table_name: str | None, rid: str) -> str | None:
        """Primary name of a referenced row (the lookup's FormattedValue)."""
        t = self.tables.get(table_name or "")
        if t is None or not t.primary_name:
            return None
        name = self.store.scalar(
            f"SELECT {q(t.primary_name)} FROM {q(t.logical_name)} WHERE {q(t.primary_id)} = ?", [rid]
        )
        return None if name is None else str(name)

    def expand(
        self, ctx: Ctx, table: Table, ent: dict[str, Any], row: dict[str, Any], items: tuple[ExpandItem, ...]
    ) -> None:
        """Fill ``$expand`` items into ``ent``: single-valued as an object (or null), collections as arrays."""
        comp = Compiler(self.tables, self.rels, self.emu.clock)
        for it in items:
            single = comp.single_nav(table, it.nav)
            if single is not None:
                target_name = row.get(type_col(single.referencing_attribute))
                fk = row.get(single.referencing_attribute)
                expected = single.referenced_entity
                if fk is None or (expected != "owner" and target_name != expected):
                    ent[it.nav] = None
                    continue
                tt = self.tables[target_name or expected]
                child = self.store.get(tt.logical_name, fk)
                if child is None:
                    ent[it.nav] = None
                    continue
                if it.ref:
                    ent[it.nav] = {"@odata.id": f"{ctx.api}/{tt.entity_set}({fk})"}
                    continue
                sub = self.entity(ctx, tt, child, self.check_select(tt, it.select))
                if it.expand:
                    self.expand(ctx, tt, sub, child, it.expand)
                ent[it.nav] = sub
                continue
            coll = comp.collection_nav(table, it.nav)
            if coll is None:
                raise errors.unknown_property(it.nav, table.logical_name)
            if it.ref:
                raise errors.bad_request("Expand with $ref is only supported on lookup type navigation property.")
            child_t = self.tables[coll.referencing_entity]
            rows = self.child_rows(child_t, coll, table, row[table.primary_id], it)
            vals = []
            for r in rows:
                e = self.entity(ctx, child_t, r, self.check_select(child_t, it.select))
                if it.expand:
                    self.expand(ctx, child_t, e, r, it.expand)
                vals.append(e)
            ent[it.nav] = vals

    def child_rows(
        self, child_t: Table, rel: Relationship, parent: Table, pid: str, it: ExpandItem | None
    ) -> list[dict[str, Any]]:
        """Rows on the many side of ``rel`` pointing at ``pid`` (polymorphic lookups also match the type)."""
        comp = Compiler(self.tables, self.rels, self.emu.clock)
        scope = QScope(child_t, "t0")
        where = [f"t0.{q(rel.referencing_attribute)} = ?"]
        comp.params.append(pid)
        if len(child_t.attributes[rel.referencing_attribute].targets) > 1 and rel.referenced_entity != "owner":
            where.append(f"t0.{q(type_col(rel.referencing_attribute))} = ?")
            comp.params.append(parent.logical_name)
        order = [f"t0.{q(child_t.primary_id)}"]
        limit = MAX_PAGE
        if it is not None:
            if it.filter is not None:
                where.append(comp.expr(it.filter, scope))
            if it.orderby:
                order = comp.orderby(it.orderby, scope) + order
            if it.top is not None:
                limit = it.top
        sql = (
            f"SELECT t0.* FROM {q(child_t.logical_name)} t0 WHERE {' AND '.join(where)} "
            f"ORDER BY {', '.join(order)} LIMIT {int(limit)}"
        )
        return self.store.query(sql, comp.params)

    def context_url(
        self, ctx: Ctx, table: Table, select: list[str] | None, entity: bool, expand: str | None = None
    ) -> str:
        """The ``@odata.context`` URL for a table, its ``$select`` and ``$expand``."""
        sel = ",".join(select) if select else ""
        if expand:
            sel = ",".join(x for x in (sel, expand) if x)
        base = f"{ctx.api}/$metadata#{table.entity_set}" + (f"({sel})" if sel else "")
        return base + ("/$entity" if entity else "")

    # -- retrieve ---------------------------------------------------------------------------------------------------

    def query_options(self, request: Request) -> dict[str, str]:
        """Query options of the request; ``$skip``/``$search``/``$format`` and unknown ``$`` options are refused."""
        opts: dict[str, str] = {}
        raw = request.scope.get("query_string", b"").decode("latin-1")
        for k, v in parse_qsl(raw, keep_blank_values=True):
            opts[k] = v
        for k in opts:
            if k.startswith("$") and k not in (
                "$select",
                "$expand",
                "$filter",
                "$orderby",
                "$top",
                "$count",
                "$skiptoken",
                "$apply",
                "$id",
            ):
                if k in ("$skip", "$search", "$format"):
                    raise errors.bad_request(f"The query parameter {k} is not supported.", "0x80060888")
                raise errors.bad_request(f"The query parameter '{k}' is not supported.", "0x0")
        return opts

    def retrieve(self, request: Request, ctx: Ctx, table: Table, key: str) -> Response:
        """``GET {set}({key})`` with ``$select``/``$expand`` and conditional GET (never 304 with expand/annotations)."""
        opts = self.query_options(request)
        _, row = self.load(table, key)
        select = self.check_select(table, parse_select(opts["$select"]) if "$select" in opts else None)
        expand = parse_expand(opts["$expand"]) if "$expand" in opts else ()
        tag = etag(row.get("versionnumber"))
        inm = request.headers.get("if-none-match")
        if inm and inm != "null" and inm == tag and not expand and not ctx.annotations:
            return Response(status_code=304, headers={"ETag": tag, "OData-Version": "4.0"})
        ent = self.entity(ctx, table, row, select)
        if expand:
            self.expand(ctx, table, ent, row, expand)
        self.apply_annotation_pref(ctx)
        body = {
            "@odata.context": self.context_url(ctx, table, select, True, expand_context(expand)),
            **ent,
        }
        return self.json(body, headers={"ETag": tag})

    def apply_annotation_pref(self, ctx: Ctx) -> None:
        """Echo an honoured ``odata.include-annotations`` in ``Preference-Applied``."""
        v = ctx.prefer.get("odata.include-annotations")
        if v is not None:
            ctx.applied.append(f"odata.include-annotations={v}")

    # -- list -------------------------------------------------------------------------------------------------------

    def list_records(
        self,
        request: Request,
        ctx: Ctx,
        table: Table,
        parent: tuple[Relationship, Table, str] | None = None,
        base_path: str | None = None,
    ) -> Response:
        """``GET {set}`` (or a collection navigation): filter, order, count, expand and page with a skiptoken."""
        opts = self.query_options(request)
        if "fetchXml" in opts and parent is None:
            return fetchxml.run(self, ctx, table, opts["fetchXml"])
        if "$apply" in opts and parent is None:
            return aggregate.run(self, ctx, table, opts)
        if "fetchXml" in opts or "$apply" in opts:
            raise errors.bad_request("fetchXml and $apply are not supported on a navigation collection.")
        aliases = {k: v for k, v in opts.items() if k.startswith("@")}
        select = self.check_select(table, parse_select(opts["$select"]) if "$select" in opts else None)
        expand = parse_expand(opts["$expand"]) if "$expand" in opts else ()
        if len(expand) > 15:
            raise errors.bad_request("The number of $expand options exceeds the limit of 15.")
        comp = Compiler(self.tables, self.rels, self.emu.clock, ctx.user["systemuserid"], ctx.user["businessunitid"])
        scope = QScope(table, "t0")
        where: list[str] = []
        if parent is not None:
            rel, ptable, pid = parent
            where.append(f"t0.{q(rel.referencing_attribute)} = ?")
            comp.params.append(pid)
            if len(table.attributes[rel.referencing_attribute].targets) > 1 and rel.referenced_entity != "owner":
                where.append(f"t0.{q(type_col(rel.referencing_attribute))} = ?")
                comp.params.append(ptable.logical_name)
        if "$filter" in opts:
            where.append(comp.expr(parse_filter(opts["$filter"], aliases), scope))
        order_items = parse_orderby(opts["$orderby"], aliases) if "$orderby" in opts else ()
        order = comp.orderby(order_items, scope)
        pk = f"t0.{q(table.primary_id)}"
        where_params = list(comp.params)
        # paging
        page_pref = ctx.prefer.get("odata.maxpagesize")
        page_size = MAX_PAGE
        top: int | None = None
        if page_pref is not None:
            try:
                page_size = max(1, min(int(page_pref.strip('"')), MAX_PAGE))
            except ValueError:
                raise errors.bad_request(f"Invalid odata.maxpagesize value '{page_pref}'.") from None
            ctx.applied.append(f"odata.maxpagesize={page_size}")
        elif "$top" in opts:
            try:
                top = int(opts["$top"])
            except ValueError:
                raise errors.bad_request(
                    f"Invalid value '{opts['$top']}' for $top query option found.", "0x0"
                ) from None
            if top < 0:
                raise errors.bad_request(f"Invalid value '{opts['$top']}' for $top query option found.", "0x0")
        page_no, last = self.read_skiptoken(opts.get("$skiptoken"))
        extra_where: list[str] = []
        extra_params: list[Any] = []
        offset = 0
        if order_items:
            offset = (page_no - 1) * page_size
        elif last is not None:
            extra_where.append(f"{pk} > ?")
            extra_params.append(last)
        order_sql = ", ".join([*order, f"{pk} ASC"])
        conds = where + extra_where
        where_sql = f" WHERE {' AND '.join(conds)}" if conds else ""
        limit = page_size + 1
        if top is not None:
            limit = min(limit, top)
        sql = (
            f"SELECT t0.* FROM {q(table.logical_name)} t0{where_sql} ORDER BY {order_sql} "
            f"LIMIT {int(limit)} OFFSET {int(offset)}"
        )
        rows = self.store.query(sql, where_params + extra_params)
        more = top is None and len(rows) > page_size
        rows = rows[:page_size]
        body: dict[str, Any] = {"@odata.context": self.context_url(ctx, table, select, False, expand_context(expand))}
        count_requested = opts.get("$count", "").lower() == "true"
        total = None
        if count_requested:
            base_where = f" WHERE {' AND '.join(where)}" if where else ""
            total = self.store.scalar(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {q(table.logical_name)} t0{base_where} LIMIT {MAX_PAGE + 1})",
                where_params,
            )
        ann = ctx.annotations
        if ann.wants("Microsoft.Dynamics.CRM.totalrecordcount"):
            body["@Microsoft.Dynamics.CRM.totalrecordcount"] = min(total, MAX_PAGE) if total is not None else -1
        if ann.wants("Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"):
            body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = bool(total is not None and total > MAX_PAGE)
        if total is not None:
            body["@odata.count"] = min(total, MAX_PAGE)
        values = []
        for r in rows:
            e = self.entity(ctx, table, r, select)
            if expand:
                self.expand(ctx, table, e, r, expand)
            values.append(e)
        body["value"] = values
        if more:
            body["@odata.nextLink"] = self.next_link(
                request, ctx, page_no + 1, rows[-1][table.primary_id], rows[0][table.primary_id], table
            )
        self.apply_annotation_pref(ctx)
        return self.json(body)

    def read_skiptoken(self, token: str | None) -> tuple[int, str | None]:
        """Page number and last primary key from a Dataverse-shaped ``$skiptoken`` cookie."""
        if not token:
            return 1, None
        m = re.search(r'pagenumber="(\d+)"', token)
        if not m:
            raise errors.bad_request("The $skiptoken value is not valid.")
        inner = unquote(unquote(token))
        last = re.search(r'last="\{?([0-9a-fA-F-]{36})\}?"', inner)
        return int(m.group(1)), (last.group(1).lower() if last else None)

    def next_link(self, request: Request, ctx: Ctx, page: int, last: str, first: str, table: Table) -> str:
        """Absolute ``@odata.nextLink`` carrying a Dataverse-shaped ``$skiptoken`` paging cookie."""
        cookie = (
            f'<cookie page="{page - 1}"><{table.primary_id} last="{{{last.upper()}}}" '
            f'first="{{{first.upper()}}}" /></cookie>'
        )
        token = (
            f'<cookie pagenumber="{page}" pagingcookie="{quote(quote(cookie, safe=""), safe="")}" istracking="False" />'
        )
        raw = request.scope.get("query_string", b"").decode("latin-1")
        keep = [(k, v) for k, v in parse_qsl(raw, keep_blank_values=True) if k != "$skiptoken"]
        parts = [f"{quote(k, safe='$@')}={quote(v, safe=',()=/:@$')}" for k, v in keep]
        parts.append("$skiptoken=" + quote(token, safe=""))
        path = request.scope.get("raw_path", b"").decode("latin-1")
        org = ctx.api.split("/api/data/")[0]
        return f"{org}{path}?{'&'.join(parts)}"

    # -- writes -----------------------------------------------------------------------------------------------------

    async def body_json(self, request: Request, entity_set: str) -> dict[str, Any]:
        """The JSON object body, or Dataverse's payload error (0x80048d19)."""
        raw = await request.body()
        try:
            data = json.loads(raw or b"{}")
        except ValueError as e:
            raise errors.payload_error(entity_set, f"Microsoft.OData.ODataException: Invalid JSON. {e}") from None
        if not isinstance(data, dict):
            raise errors.payload_error(entity_set, "Microsoft.OData.ODataException: An entity was expected.")
        return data

    def bind_target(self, value: Any, table_name: str, entity_set: str) -> tuple[Table, str]:
        """Resolve an ``@odata.bind`` / ``@odata.id`` URL (relative, with or without ``/``, or absolute)."""
        if not isinstance(value, str):
            raise errors.payload_error(
                entity_set, "Microsoft.OData.ODataException: The value of an odata.bind annotation must be a string."
            )
        path = urlsplit(value).path if "://" in value else value
        path = unquote(path)
        if "/api/data/" in path:
            path = path.split("/api/data/", 1)[1].split("/", 1)[1]
        path = path.lstrip("/")
        name, key = seg_key(path)
        t = self.emu.by_set.get(name)
        if t is None or key is None:
            raise errors.payload_error(
                entity_set, f"Microsoft.OData.ODataException: The URI '{value}' is not valid for an entity reference."
            )
        rid, _ = self.load(t, key)
        return t, rid

    def apply_payload(
        self, ctx: Ctx, table: Table, data: dict[str, Any], row: dict[str, Any], creating: bool
    ) -> list[tuple[Relationship, list[str]]]:
        """Validate a create/update body into ``row`` (SQL columns); return collection binds to apply after."""
        entity_set = table.entity_set
        comp = Compiler(self.tables, self.rels, self.emu.clock)
        deferred: list[tuple[Relationship, list[str]]] = []
        binds: dict[str, Any] = {}
        deep: dict[str, Any] = {}
        for k, v in data.items():
            if "@" in k:
                prop, _, ann = k.partition("@")
                if ann == "odata.bind" and prop:
                    binds[prop] = v
                continue
            a = table.attributes.get(k)
            if isinstance(v, dict | list) and (comp.single_nav(table, k) or comp.collection_nav(table, k)):
                if not creating:
                    raise errors.payload_error(
                        entity_set, "Microsoft.OData.ODataException: Deep update is not supported."
                    )
                deep[k] = v
                continue
            if a is None:
                raise errors.invalid_payload_property(k, table.logical_name)
            if a.is_lookup:
                if v is not None:
                    raise errors.invalid_payload_property(k, table.logical_name)
                row[a.name] = None
                row[type_col(a.name)] = None
                continue
            if creating and not a.valid_for_create and not a.is_primary_id:
                continue
            if not creating and not a.valid_for_update:
                continue
            row[a.name] = convert(table, a, v, entity_set)
        for nav, v in binds.items():
            rel = comp.single_nav(table, nav)
            if rel is not None:
                attr = table.attributes[rel.referencing_attribute]
                if v is None:
                    row[attr.name] = None
                    row[type_col(attr.name)] = None
                    continue
                t, rid = self.bind_target(v, table.logical_name, entity_set)
                allowed = attr.targets if attr.type == "Owner" else (rel.referenced_entity,)
                if t.logical_name not in allowed:
                    raise errors.payload_error(
                        entity_set,
                        f"Microsoft.OData.ODataException: A resource of type 'Microsoft.Dynamics.CRM.{t.logical_name}' "
                        f"was found but a resource of type 'Microsoft.Dynamics.CRM.{rel.referenced_entity}' "
                        "is expected.",
                    )
                row[attr.name] = rid
                row[type_col(attr.name)] = t.logical_name
                continue
            crel = comp.collection_nav(table, nav)
            if crel is not None and isinstance(v, list):
                ids = []
                for item in v:
                    t, rid = self.bind_target(item, table.logical_name, entity_set)
                    if t.logical_name != crel.referencing_entity:
                        raise errors.payload_error(
                            entity_set,
                            "Microsoft.OData.ODataException: Unexpected resource type in a collection binding.",
                        )
                    ids.append(rid)
                deferred.append((crel, ids))
                continue
            raise errors.undeclared_bind(nav, entity_set)
        for nav, v in deep.items():
            # deep insert: related rows are created in the same transaction as the parent
            single = comp.single_nav(table, nav)
            if single is not None and isinstance(v, dict) and single.referenced_entity != "owner":
                target = self.tables[single.referenced_entity]
                child_id, _ = self.do_create(ctx, target, v)
                row[single.referencing_attribute] = child_id
                row[type_col(single.referencing_attribute)] = target.logical_name
                continue
            coll = comp.collection_nav(table, nav)
            if coll is not None and isinstance(v, list) and all(isinstance(x, dict) for x in v):
                self._deep_children.append((coll, v))
                continue
            raise errors.payload_error(entity_set, f"Microsoft.OData.ODataException: Invalid value for '{nav}'.")
        computed(table, row)
        return deferred

    def check_alt_keys(self, table: Table, row: dict[str, Any], rid: str) -> None:
        """Enforce uniqueness of Active alternate keys (0x80060892 when another row has the values)."""
        for key in self.store.active_keys(table.logical_name):
            values = {a: row.get(a) for a in key.attributes}
            if any(v is None for v in values.values()):
                continue
            if self.store.find_ids(table.logical_name, values, exclude=rid):
                shown = ",".join(str(v) for v in values.values())
                raise errors.DataverseError(
                    412,
                    "0x80060892",
                    f"A record that has the attribute values {shown} already exists. The entity key {key.schema_name} "
                    "requires that this set of attributes contains unique values. Select unique values and try again.",
                )

    def do_create(
        self,
        ctx: Ctx,
        table: Table,
        data: dict[str, Any],
        rid: str | None = None,
        key_values: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Create one row (with system columns, owner, state) and its deep-inserted or bound related rows."""
        row: dict[str, Any] = {}
        if key_values:
            row.update(key_values)
        outer_children = self._deep_children
        self._deep_children = []
        deferred = self.apply_payload(ctx, table, data, row, creating=True)
        children, self._deep_children = self._deep_children, outer_children
        if rid is None:
            rid = row.get(table.primary_id) or str(uuid.UUID(int=self.emu.rng.getrandbits(128), version=4))
        rid = str(rid).lower()
        row[table.primary_id] = rid
        if self.store.exists(table.logical_name, rid):
            raise errors.duplicate_record()
        now = fmt_dt_now(self.emu.clock)
        user = ctx.user["systemuserid"]
        row.update(
            createdon=row.get("overriddencreatedon") or now, modifiedon=now, versionnumber=self.store.next_version()
        )
        for col in ("createdby", "modifiedby"):
            row[col], row[type_col(col)] = user, "systemuser"
        if ctx.caller is not None:
            for col in ("createdonbehalfby", "modifiedonbehalfby"):
                row[col], row[type_col(col)] = ctx.caller["systemuserid"], "systemuser"
        if "ownerid" in table.attributes:
            if row.get("ownerid") is None:
                row["ownerid"], row["ownerid__type"] = user, "systemuser"
            self.owner_columns(row)
        if "statecode" in table.attributes:
            if row.get("statecode") is None:
                row["statecode"] = 0
            self.fix_status(table, row, row)
        self.check_alt_keys(table, row, rid)
        self.store.insert(table.logical_name, row)
        self.apply_deferred(deferred, rid, table)
        for rel, items in children:
            child_t = self.tables[rel.referencing_entity]
            fk = rel.referencing_attribute
            for item in items:
                self.do_create(ctx, child_t, item, key_values={fk: rid, type_col(fk): table.logical_name})
        return rid, row

    def fix_status(self, table: Table, current: dict[str, Any], changes: dict[str, Any]) -> None:
        """Keep statuscode consistent with statecode: a state change without a status takes the state's default
        status (the first listed); a status that belongs to another state is refused."""
        states = table.attributes["statuscode"].status_states or {}
        state = changes.get("statecode", current.get("statecode"))
        status = changes.get("statuscode")
        if status is None and ("statecode" in changes or current.get("statuscode") is None):
            changes["statuscode"] = next((s for s, st in states.items() if st == state), None)
        elif status is not None and states.get(int(status)) != state:
            raise errors.DataverseError(
                400,
                "0x80040203",
                f"{status} is not a valid status code for state code {table.schema_name}State.{state} on "
                f"{table.logical_name}.",
            )

    def owner_columns(self, row: dict[str, Any]) -> None:
        """Derive owninguser/owningteam/owningbusinessunit from ownerid, as Dataverse does."""
        owner, kind = row.get("ownerid"), row.get("ownerid__type")
        row["owninguser"], row["owninguser__type"] = (owner, "systemuser") if kind == "systemuser" else (None, None)
        row["owningteam"], row["owningteam__type"] = (owner, "team") if kind == "team" else (None, None)
        bu = self.store.scalar(
            f"SELECT businessunitid FROM {q(kind or 'systemuser')} WHERE {q((kind or 'systemuser') + 'id')} = ?",
            [owner],
        )
        row["owningbusinessunit"], row["owningbusinessunit__type"] = bu, "businessunit"

    def apply_deferred(self, deferred: list[tuple[Relationship, list[str]]], rid: str, table: Table) -> None:
        """Apply collection-valued binds once the parent row exists."""
        for rel, ids in deferred:
            for cid in ids:
                self.store.update(
                    rel.referencing_entity,
                    cid,
                    {rel.referencing_attribute: rid, type_col(rel.referencing_attribute): table.logical_name},
                )

    def do_update(
        self,
        ctx: Ctx,
        table: Table,
        rid: str,
        row: dict[str, Any],
        data: dict[str, Any],
        strip: list[str] | None = None,
    ) -> dict[str, Any]:
        """Update one row: validated changes, audit columns, a new row version, key uniqueness."""
        changes: dict[str, Any] = {}
        data = {k: v for k, v in data.items() if not strip or k not in strip}
        deferred = self.apply_payload(ctx, table, data, changes, creating=False)
        changes.pop(table.primary_id, None)
        if "fullname" in changes or "firstname" in changes or "lastname" in changes:
            merged = {"firstname": row.get("firstname"), "lastname": row.get("lastname")}
            merged.update({k: v for k, v in changes.items() if k in ("firstname", "lastname")})
            computed(table, merged)
            if "fullname" in merged:
                changes["fullname"] = merged["fullname"]
        if "ownerid" in changes:
            self.owner_columns(changes)
        if "statecode" in table.attributes and ("statecode" in changes or "statuscode" in changes):
            self.fix_status(table, row, changes)
        changes["modifiedon"] = fmt_dt_now(self.emu.clock)
        changes["modifiedby"], changes["modifiedby__type"] = ctx.user["systemuserid"], "systemuser"
        if ctx.caller is not None:
            changes["modifiedonbehalfby"], changes["modifiedonbehalfby__type"] = (
                ctx.caller["systemuserid"],
                "systemuser",
            )
        changes["versionnumber"] = self.store.next_version()
        merged_row = {**row, **changes}
        self.check_alt_keys(table, merged_row, rid)
        self.store.update(table.logical_name, rid, changes)
        self.apply_deferred(deferred, rid, table)
        return merged_row

    async def create(self, request: Request, ctx: Ctx, table: Table) -> Response:
        """``POST {set}``: 204 with OData-EntityId, or 201 with the record for return=representation."""
        opts = self.query_options(request)
        data = await self.body_json(request, table.entity_set)
        rid, _ = self.do_create(ctx, table, data)
        await notify(self, ctx, "Create", table, rid, data, None)
        return self.write_response(request, ctx, table, rid, opts, 201, f"{ctx.api}/{table.entity_set}({rid})")

    def write_response(
        self, request: Request, ctx: Ctx, table: Table, rid: str, opts: dict[str, str], status: int, entity_id: str
    ) -> Response:
        """The answer to a create/update/upsert: 204 + OData-EntityId, or the record with representation."""
        if ctx.prefer.get("return") == "representation":
            row = self.store.get(table.logical_name, rid) or {}
            select = self.check_select(table, parse_select(opts["$select"]) if "$select" in opts else None)
            ent = self.entity(ctx, table, row, select)
            if "$expand" in opts and status == 201 and request.method == "POST":
                self.expand(ctx, table, ent, row, parse_expand(opts["$expand"]))
            ctx.applied.append("return=representation")
            self.apply_annotation_pref(ctx)
            body = {"@odata.context": self.context_url(ctx, table, select, True), **ent}
            return self.json(body, status=status, headers={"ETag": etag(row.get("versionnumber"))})
        return Response(status_code=204, headers={"OData-EntityId": entity_id, "OData-Version": "4.0"})

    async def patch(self, request: Request, ctx: Ctx, table: Table, key: str) -> Response:
        """``PATCH {set}({key})``: update, or upsert when no If-Match is sent (If-None-Match: * forbids update)."""
        opts = self.query_options(request)
        data = await self.body_json(request, table.entity_set)
        rid, alt = self.resolve_key(table, key)
        row = self.store.get(table.logical_name, rid) if rid else None
        if_match = request.headers.get("if-match")
        if_none = request.headers.get("if-none-match")
        entity_id = f"{ctx.api}/{table.entity_set}({key if alt is not None else rid})"
        if row is None:
            if if_match is not None:
                if alt is not None:
                    raise errors.key_not_found(table.logical_name)
                raise errors.not_found(table.logical_name, str(rid))
            new_id, _ = self.do_create(ctx, table, data, rid=rid if alt is None else None, key_values=alt)
            await notify(self, ctx, "Create", table, new_id, data, None)
            if alt is None:
                entity_id = f"{ctx.api}/{table.entity_set}({new_id})"
            return self.write_response(request, ctx, table, new_id, opts, 201, entity_id)
        if if_none == "*":
            raise errors.duplicate_record()
        if if_match is not None and if_match != "*" and if_match != etag(row.get("versionnumber")):
            raise errors.version_mismatch()
        self.do_update(ctx, table, str(rid), row, data, strip=list(alt) if alt else None)
        await notify(self, ctx, "Update", table, str(rid), data, row)
        return self.write_response(request, ctx, table, str(rid), opts, 200, entity_id)

    async def delete(self, request: Request, ctx: Ctx, table: Table, key: str) -> Response:
        """``DELETE {set}({key})`` with optional If-Match; child lookups are cleared (RemoveLink)."""
        rid, row = self.load(table, key)
        if_match = request.headers.get("if-match")
        if if_match is not None and if_match != "*" and if_match != etag(row.get("versionnumber")):
            raise errors.version_mismatch()
        self.store.delete(table.logical_name, rid)
        # 1:N children keep a dangling reference in Dataverse only with RemoveLink; clear them (RemoveLink behaviour)
        for rel in self.rels:
            if rel.referenced_entity in (table.logical_name, "owner") and rel.referencing_entity in self.tables:
                self.store.conn.execute(
                    f"UPDATE {q(rel.referencing_entity)} SET {q(rel.referencing_attribute)} = NULL, "
                    f"{q(type_col(rel.referencing_attribute))} = NULL WHERE {q(rel.referencing_attribute)} = ? AND "
                    f"{q(type_col(rel.referencing_attribute))} = ?",
                    (rid, table.logical_name),
                )
        await notify(self, ctx, "Delete", table, rid, {}, row)
        return Response(status_code=204, headers={"OData-Version": "4.0"})

    # -- properties, navigation, $ref -------------------------------------------------------------------------------

    async def sub_resource(self, request: Request, ctx: Ctx, table: Table, key: str, segs: list[str]) -> Response:
        """Single properties, navigation properties and ``$ref`` (associate/disassociate) under a record."""
        method = request.method
        name, sub_key = seg_key(segs[0])
        comp = Compiler(self.tables, self.rels, self.emu.clock)
        rid, row = self.load(table, key)
        attr = table.attributes.get(name)
        if attr is not None and attr.type in ("File", "Image"):
            return await files.handle(self, request, ctx, table, rid, row, attr, segs[1:])
        if attr is None and name.startswith("_") and name.endswith("_value"):
            a2 = table.attributes.get(name[1:-6])
            attr = a2 if a2 is not None and a2.is_lookup else None
        if attr is not None and len(segs) == 1 and not (attr.is_lookup and name == attr.name):
            col = attr.name
            if method == "GET":
                v = row.get(col)
                if v is None:
                    return Response(status_code=204, headers={"OData-Version": "4.0"})
                return self.json(
                    {
                        "@odata.context": f"{ctx.api}/$metadata#{table.entity_set}({rid})/{name}",
                        "value": json_value(attr, v),
                    }
                )
            if method in ("PUT", "DELETE"):
                if attr.is_lookup:
                    raise errors.bad_request("Use the navigation property with /$ref to change a lookup.", "0x0")
                if method == "PUT":
                    data = await self.body_json(request, table.entity_set)
                    if "value" not in data:
                        raise errors.payload_error(
                            table.entity_set, "Microsoft.OData.ODataException: A 'value' property was expected."
                        )
                    payload = {name: data["value"]}
                else:
                    payload = {name: None}
                self.do_update(ctx, table, rid, row, payload)
                return Response(status_code=204, headers={"OData-Version": "4.0"})
            raise errors.no_resource(str(request.url))
        single = comp.single_nav(table, name)
        coll = comp.collection_nav(table, name) if single is None else None
        if single is None and coll is None:
            raise errors.segment_not_found(name)
        is_ref = len(segs) >= 2 and segs[-1] == "$ref"
        if single is not None:
            fk_col = single.referencing_attribute
            if is_ref and method == "PUT":
                data = await self.body_json(request, table.entity_set)
                self.do_update(ctx, table, rid, row, {f"{name}@odata.bind": data.get("@odata.id")})
                return Response(status_code=204, headers={"OData-Version": "4.0"})
            if is_ref and method == "DELETE":
                self.do_update(ctx, table, rid, row, {f"{name}@odata.bind": None})
                return Response(status_code=204, headers={"OData-Version": "4.0"})
            if method == "GET" and len(segs) == 1:
                target = row.get(type_col(fk_col))
                fk = row.get(fk_col)
                if fk is None or (single.referenced_entity != "owner" and target != single.referenced_entity):
                    return Response(status_code=204, headers={"OData-Version": "4.0"})
                tt = self.tables[str(target)]
                child = self.store.get(tt.logical_name, fk)
                if child is None:
                    return Response(status_code=204, headers={"OData-Version": "4.0"})
                opts = self.query_options(request)
                select = self.check_select(tt, parse_select(opts["$select"]) if "$select" in opts else None)
                body = {
                    "@odata.context": self.context_url(ctx, tt, select, True),
                    **self.entity(ctx, tt, child, select),
                }
                return self.json(body)
            raise errors.no_resource(str(request.url))
        assert coll is not None
        child_t = self.tables[coll.referencing_entity]
        fk_col = coll.referencing_attribute
        if is_ref:
            if method == "POST":
                data = await self.body_json(request, table.entity_set)
                t, cid = self.bind_target(data.get("@odata.id"), table.logical_name, table.entity_set)
                if t.logical_name != child_t.logical_name:
                    raise errors.payload_error(table.entity_set, "Microsoft.OData.ODataException: Unexpected type.")
                crow = self.store.get(t.logical_name, cid) or {}
                self.do_update(
                    ctx, t, cid, crow, {f"{self.nav_for(coll, table)}@odata.bind": f"/{table.entity_set}({rid})"}
                )
                return Response(status_code=204, headers={"OData-Version": "4.0"})
            if method == "DELETE":
                target_id = sub_key
                if target_id is None:
                    ref = dict(parse_qsl(request.scope.get("query_string", b"").decode())).get("$id")
                    if not ref:
                        raise errors.bad_request("The $id query option is required to remove a reference.", "0x0")
                    _, target_id = self.bind_target(ref, table.logical_name, table.entity_set)
                t_id, crow = self.load(child_t, target_id)
                if crow.get(fk_col) == rid:
                    self.do_update(ctx, child_t, t_id, crow, {f"{self.nav_for(coll, table)}@odata.bind": None})
                return Response(status_code=204, headers={"OData-Version": "4.0"})
            if method == "GET":
                rows = self.child_rows(child_t, coll, table, rid, None)
                return self.json(
                    {
                        "@odata.context": f"{ctx.api}/$metadata#Collection($ref)",
                        "value": [
                            {"@odata.id": f"{ctx.api}/{child_t.entity_set}({r[child_t.primary_id]})"} for r in rows
                        ],
                    }
                )
        if method == "GET" and len(segs) == 2 and segs[1] == "$count":
            n = len(self.child_rows(child_t, coll, table, rid, None))
            return Response("\ufeff" + str(n), media_type="text/plain", headers={"OData-Version": "4.0"})
        if method == "GET" and len(segs) == 1:
            return self.list_records(request, ctx, child_t, parent=(coll, table, rid))
        raise errors.no_resource(str(request.url))

    def nav_for(self, rel: Relationship, parent: Table) -> str:
        """The single-valued navigation name on the child side of ``rel``."""
        return rel.referencing_nav


# =====================================================================================================================
# Admin surface


class Admin:
    """Test-only endpoints under ``/_emulator/``; never used by real clients."""

    def __init__(self, emu: Emulator, api: WebApi) -> None:
        self.emu = emu
        self.api = api

    async def seed(self, request: Request) -> Response:
        """``{"table": "account", "rows": [{...}, ...]}``: bulk insert in one transaction, ids generated if absent."""
        body = await request.json()
        name = body.get("table", "")
        table = self.emu.tables.get(name) or self.emu.by_set.get(name)
        if table is None:
            return JSONResponse({"error": f"unknown table {name!r}"}, 400)
        now = fmt_dt_now(self.emu.clock)
        rows = []
        ids = []
        for r in body.get("rows", []):
            row: dict[str, Any] = {}
            for k, v in r.items():
                a = table.attributes.get(k)
                if a is None:
                    return JSONResponse({"error": f"unknown column {k!r}"}, 400)
                if a.is_lookup:
                    if isinstance(v, dict):
                        row[k], row[type_col(k)] = str(v["id"]).lower(), v["table"]
                    else:
                        row[k], row[type_col(k)] = (str(v).lower() if v else None), (a.targets[0] if v else None)
                elif a.is_primary_id:
                    row[k] = str(v).lower()
                else:
                    try:
                        row[k] = convert(table, a, v, table.entity_set)
                    except DataverseError as e:
                        return JSONResponse({"error": f"{k}: {e.message}"}, 400)
            computed(table, row)
            row.setdefault(table.primary_id, str(uuid.UUID(int=self.emu.rng.getrandbits(128), version=4)))
            row.setdefault("createdon", now)
            row.setdefault("modifiedon", now)
            row["versionnumber"] = self.emu.store.next_version()
            if "ownerid" in table.attributes and row.get("ownerid") is None:
                row["ownerid"], row["ownerid__type"] = self.emu.system_user, "systemuser"
                row["owninguser"], row["owninguser__type"] = self.emu.system_user, "systemuser"
            if "statecode" in table.attributes:
                row.setdefault("statecode", 0)
                if row.get("statuscode") is None:
                    self.api.fix_status(table, row, row)
            rows.append(row)
            ids.append(row[table.primary_id])
        try:
            n = self.emu.store.insert_many(table.logical_name, rows)
        except Exception as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"inserted": n, "ids": ids})

    async def seed_metadata(self, request: Request) -> Response:
        """``POST /_emulator/metadata/seed {"tables": [...]}``: bulk preload of table and column definitions."""
        body = await request.json()
        try:
            with self.emu.store.transaction():
                created = metadata_writes.do_seed(self.emu, body)
        except DataverseError as e:
            return JSONResponse({"error": e.message}, 400)
        return JSONResponse({"tables": created})

    async def requests(self, request: Request) -> Response:
        """``GET /_emulator/requests``: the request log and the current in-flight count."""
        return JSONResponse({"requests": list(self.emu.log), "in_flight": self.emu.in_flight})

    async def reset(self, request: Request) -> Response:
        """``POST /_emulator/reset``: drop all rows, keys, the log and the throttle windows; principals recreated."""
        self.emu.store.reset()
        self.emu.log.clear()
        self.emu.throttle.reset()
        self.emu.user_cache.clear()
        self.emu._ensure_bootstrap_rows()
        if self.emu.sample_data:
            sampledata.load(self.emu, self.emu.sample_seed)
        return JSONResponse({"reset": True})

    async def clock(self, request: Request) -> Response:
        """``POST /_emulator/clock {\"advance_s\": N}`` moves emulated time on (windows, Retry-After, key
        activation, token expiry) so tests of waits never sleep; ``GET`` reads it."""
        clock = self.emu.clock
        if request.method == "POST":
            body = await request.json()
            try:
                clock.advance(float(body.get("advance_s", 0)))
            except (TypeError, ValueError) as e:
                return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"now": clock(), "offset_s": clock.offset})

    async def clear_log(self, request: Request) -> Response:
        """``DELETE /_emulator/requests``: empty the request log only."""
        self.emu.log.clear()
        return JSONResponse({"cleared": True})


# =====================================================================================================================


def create_app(
    *,
    seed: int | None = None,
    db_path: str | None = None,
    key_activation_s: float = 2.0,
    latency_ms: int = 0,
    token_lifetime_s: int = 3600,
    admin: bool = False,
    clock: Callable[[], float] | None = None,
    throttle: str = "off",
    window_s: float | None = None,
    max_requests: int | None = None,
    max_exec_s: float | None = None,
    max_concurrency: int | None = None,
    dop_hint: int = 4,
    time_scale: float = 1.0,
    fault_rate: float = 0.0,
    sample_data: bool = False,
) -> Starlette:
    """Build the emulator app. The organization URL is whatever scheme and Host the client used."""
    emu = Emulator(
        seed=seed,
        db_path=db_path,
        key_activation_s=key_activation_s / time_scale,
        latency_ms=latency_ms,
        token_lifetime_s=token_lifetime_s,
        admin=admin,
        clock=clock,
    )
    if sample_data:
        emu.sample_data, emu.sample_seed = True, seed
        sampledata.load(emu, seed)
    api = WebApi(emu)
    idp = IdentityEndpoints(emu.identity, emu.ensure_user)
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    routes = [
        Route("/api/data/{path:path}", api.handle, methods=methods),
        Route("/api/data", api.handle, methods=methods),
        Route("/{tenant}/oauth2/v2.0/token", idp.token, methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/authorize", idp.authorize, methods=["GET"]),
        Route("/metadata/identity/oauth2/token", idp.imds, methods=["GET"]),
        Route("/msi/token", idp.app_service, methods=["GET"]),
    ]
    if admin:
        adm = Admin(emu, api)
        routes += [
            Route("/_emulator/seed", adm.seed, methods=["POST"]),
            Route("/_emulator/requests", adm.requests, methods=["GET"]),
            Route("/_emulator/requests", adm.clear_log, methods=["DELETE"]),
            Route("/_emulator/reset", adm.reset, methods=["POST"]),
            Route("/_emulator/metadata/seed", adm.seed_metadata, methods=["POST"]),
            Route("/_emulator/clock", adm.clock, methods=["GET", "POST"]),
        ]
        routes += emu.webhooks.admin_routes()
    app = EmulatorApp(routes=routes)
    app.state.emulator = emu
    emu.throttle = Throttle(
        throttle,
        limits_for(throttle, window_s, max_requests, max_exec_s, max_concurrency),
        emu.clock,
        time_scale,
        dop_hint,
    )
    app.add_middleware(ThrottleMiddleware, throttle=emu.throttle, latency_s=latency_ms / 1000)
    if fault_rate:
        app.add_middleware(FaultMiddleware, plan=FaultPlan(fault_rate, seed), time_scale=time_scale)
    app.add_middleware(Observe, emu=emu)
    return app
