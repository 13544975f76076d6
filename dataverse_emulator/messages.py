"""The message registry: the actions and functions the emulator answers, listed in ``$metadata`` and routed here.

Why one table: the CSDL a client reads and the routes the dispatcher follows must agree, so both come from
:data:`MESSAGES` (the system messages, each registered by the module that implements it) plus the custom APIs
registered as rows of the ``customapi`` tables (``webapi/use-web-api-actions.md``, ``webapi/use-web-api-functions.md``,
``custom-api.md``). A module adds a message with :func:`register`; its handler receives the parsed parameters.

Parameter passing (``webapi/use-web-api-functions.md``): an action's parameters are the JSON body; a function's are
in the URL, literally (``RetrieveVersion()``) or as parameter aliases (``F(Target=@t)?@t={'@odata.id':'accounts(…)'}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import quoteattr

from . import errors
from .context import Ctx, seg_key
from .errors import DataverseError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .model import Table
    from .record_writes import RecordApi

NS = "Microsoft.Dynamics.CRM."
ACTION, FUNCTION = "Action", "Function"


@dataclass(frozen=True)
class Param:
    """One ``<Parameter>``: name, CSDL type (``Edm.Int32``, ``mscrm.lead``, ``Collection(Edm.String)``)."""

    name: str
    type: str
    nullable: bool = True


@dataclass(frozen=True)
class Bound:
    """What a bound message was invoked on: a table, and the row's id when bound to a row."""

    table: Table
    rid: str | None
    row: dict[str, Any] | None


Handler = Callable[["RecordApi", Ctx, Bound | None, dict[str, Any], "Message"], Awaitable["Response"]]


@dataclass(frozen=True)
class Message:
    """An action or function as ``$metadata`` lists it. ``binding`` is the binding parameter's type
    (``mscrm.lead``, ``Collection(mscrm.account)``) or None for an unbound message (an ActionImport or
    FunctionImport). ``handler`` None: a custom API without a plug-in (its response properties come back null)."""

    name: str
    kind: str
    params: tuple[Param, ...] = ()
    returns: str | None = None
    binding: str | None = None
    handler: Handler | None = None
    #: complex types this message introduces (``RetrieveVersionResponse``): name -> properties
    complex_types: dict[str, tuple[Param, ...]] = field(default_factory=dict)

    @property
    def bound_table(self) -> str | None:
        """The logical name of the table the message is bound to (row or collection), or None."""
        if self.binding is None:
            return None
        inner = self.binding.removeprefix("Collection(").removesuffix(")")
        return inner.removeprefix("mscrm.")

    @property
    def collection_bound(self) -> bool:
        return bool(self.binding and self.binding.startswith("Collection("))


#: The system messages (name -> message); modules add theirs with :func:`register`.
MESSAGES: dict[str, Message] = {}


def register(message: Message) -> Message:
    MESSAGES[message.name] = message
    return message


# -- custom APIs (rows of the customapi tables) ------------------------------------------------------------------------

#: customapirequestparameter / customapiresponseproperty ``type`` -> CSDL type (custom-api-tables.md, "Type").
CUSTOM_TYPES = {
    0: "Edm.Boolean",
    1: "Edm.DateTimeOffset",
    2: "Edm.Decimal",
    3: "mscrm.crmbaseentity",
    4: "Collection(mscrm.crmbaseentity)",
    5: "mscrm.crmbaseentity",
    6: "Edm.Double",
    7: "Edm.Int32",
    8: "Edm.Decimal",
    9: "Edm.Int32",
    10: "Edm.String",
    11: "Collection(Edm.String)",
    12: "Edm.Guid",
}
#: Custom API implementations the emulator ships (its "plug-ins"), by unique name.
CUSTOM_HANDLERS: dict[str, Handler] = {}


def _custom_type(row: dict[str, Any]) -> str:
    typ = CUSTOM_TYPES.get(int(row.get("type") or 0), "Edm.String")
    entity = row.get("logicalentityname")
    if entity and "crmbaseentity" in typ:
        typ = typ.replace("crmbaseentity", str(entity))
    return typ


def custom_messages(api: RecordApi) -> dict[str, Message]:
    """The custom APIs registered in the ``customapi`` table, as messages (request parameters and, for a response,
    a complex type ``<uniquename>Response``: ``custom-api.md``, "Custom API data")."""
    out: dict[str, Message] = {}
    store = api.store
    for row in store.query("SELECT * FROM customapi WHERE statecode = 0", []):
        name = str(row["uniquename"])
        cid = row["customapiid"]
        params = tuple(
            Param(str(p["uniquename"]), _custom_type(p), bool(p.get("isoptional")))
            for p in store.query("SELECT * FROM customapirequestparameter WHERE customapiid = ? ORDER BY name", [cid])
        )
        props = tuple(
            Param(str(p["uniquename"]), _custom_type(p))
            for p in store.query("SELECT * FROM customapiresponseproperty WHERE customapiid = ? ORDER BY name", [cid])
        )
        binding_type = int(row.get("bindingtype") or 0)
        entity = row.get("boundentitylogicalname")
        binding = None
        if binding_type == 1 and entity:
            binding = f"mscrm.{entity}"
        elif binding_type == 2 and entity:
            binding = f"Collection(mscrm.{entity})"
        kind = FUNCTION if row.get("isfunction") else ACTION
        out[name] = Message(
            name,
            kind,
            params,
            f"mscrm.{name}Response" if props else None,
            binding,
            CUSTOM_HANDLERS.get(name, _no_plugin),
            {f"{name}Response": props} if props else {},
        )
    return out


async def _no_plugin(api: RecordApi, ctx: Ctx, bound: Bound | None, params: dict[str, Any], msg: Message) -> Response:
    """A custom API without a plug-in type answers its response properties unset (custom-api.md: "a Custom API
    without a plug-in ... returns default values"; values null here, GUESS)."""
    return respond(api, ctx, msg, {p.name: None for props in msg.complex_types.values() for p in props})


def all_messages(api: RecordApi) -> dict[str, Message]:
    return {**MESSAGES, **custom_messages(api)}


def respond(api: RecordApi, ctx: Ctx, msg: Message, values: dict[str, Any] | None) -> Response:
    """A message's answer: 204 without a return type, else the response complex type with its context."""
    from starlette.responses import Response

    if msg.returns is None or values is None:
        return Response(status_code=204, headers={"OData-Version": "4.0"})
    return api.json({"@odata.context": f"{ctx.api}/$metadata#{NS}{msg.name}Response", **values})


# -- CSDL ----------------------------------------------------------------------------------------------------------


def csdl_parts(api: RecordApi) -> tuple[list[str], list[str]]:
    """The schema elements (complex types, actions, functions) and the container's imports for every message."""
    schema: list[str] = ['<EntityType Name="crmbaseentity" Abstract="true" />']
    imports: list[str] = []
    for m in all_messages(api).values():
        for ct, props in m.complex_types.items():
            schema.append(f"<ComplexType Name={quoteattr(ct)}>")
            schema += [f"<Property Name={quoteattr(p.name)} Type={quoteattr(p.type)} />" for p in props]
            schema.append("</ComplexType>")
        bound = "true" if m.binding else "false"
        schema.append(f"<{m.kind} Name={quoteattr(m.name)} IsBound={quoteattr(bound)}>")
        if m.binding:
            schema.append(f'<Parameter Name="entity" Type={quoteattr(m.binding)} Nullable="false" />')
        for p in m.params:
            nullable = "" if p.nullable else ' Nullable="false"'
            schema.append(f"<Parameter Name={quoteattr(p.name)} Type={quoteattr(p.type)}{nullable} />")
        if m.returns:
            schema.append(f'<ReturnType Type={quoteattr(m.returns)} Nullable="false" />')
        schema.append(f"</{m.kind}>")
        if not m.binding:
            attr = "Action" if m.kind == ACTION else "Function"
            imports.append(f"<{attr}Import Name={quoteattr(m.name)} {attr}={quoteattr(NS + m.name)} />")
    return schema, imports


# -- parameters ------------------------------------------------------------------------------------------------------

_SINGLE_ODATA_ID = re.compile(r"^\{\s*'@odata\.id'\s*:\s*'((?:[^']|'')*)'\s*\}$")


def alias_value(text: str) -> Any:
    """A function parameter literal: JSON, or the docs' single-quoted forms (``'text'``, ``{'@odata.id':'x(1)'}``)."""
    text = text.strip()
    m = _SINGLE_ODATA_ID.match(text)
    if m:
        return {"@odata.id": m.group(1).replace("''", "'")}
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    try:
        return json.loads(text)
    except ValueError:
        raise errors.bad_request(f"The parameter value '{text}' is not a valid literal.", "0x0") from None


def function_params(request: Request, key: str | None) -> dict[str, Any]:
    """``F(A=1,B=@b)?@b=...``: each parameter literal or alias resolved from the query string."""
    out: dict[str, Any] = {}
    if not key:
        return out
    for part in _split_top(key):
        name, eq, value = part.partition("=")
        if not eq:
            raise errors.bad_request(f"The function parameter '{part}' has no value.", "0x0")
        value = value.strip()
        if value.startswith("@"):
            raw = request.query_params.get(value)
            if raw is None:
                raise errors.bad_request(f"The parameter alias '{value}' has no value in the query string.", "0x0")
            value = raw
        out[name.strip()] = alias_value(value)
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas outside quotes and braces."""
    parts, depth, quote, cur = [], 0, False, ""
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch in "{[(":
            depth += 1
        elif not quote and ch in "}])":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def check_params(msg: Message, params: dict[str, Any]) -> None:
    """Unknown and missing parameters, with the wording of Microsoft.OData's refusal (missing: GUESS)."""
    known = {p.name for p in msg.params}
    for name in params:
        if name not in known and "@" not in name:
            raise errors.bad_request(
                f"The parameter '{name}' in the request payload is not a valid parameter for the operation "
                f"'{msg.name}'.",
                "0x0",
            )
    for p in msg.params:
        if not p.nullable and params.get(p.name) is None:
            raise DataverseError(400, "0x80040203", f"Required field '{p.name}' is missing.")


def entity_ref(api: RecordApi, value: Any, name: str, table: str | None = None) -> tuple[Table, str]:
    """An entity-typed parameter naming a row: ``{"@odata.type": "Microsoft.Dynamics.CRM.account", "accountid":
    id}`` or ``{"@odata.id": "accounts(id)"}`` (``webapi/use-web-api-actions.md``, entity parameters)."""
    if not isinstance(value, dict):
        raise errors.bad_request(f"The parameter '{name}' must be an entity object.", "0x0")
    if "@odata.id" in value:
        path = unquote(urlsplit(str(value["@odata.id"])).path) if "://" in str(value["@odata.id"]) else ""
        path = path.split("/api/data/", 1)[1].split("/", 1)[1] if "/api/data/" in path else str(value["@odata.id"])
        set_name, key = seg_key(path.lstrip("/"))
        t = api.emu.by_set.get(set_name)
        if t is None or not key:
            raise errors.bad_request(f"The parameter '{name}' names no row: {value['@odata.id']}.", "0x0")
    else:
        t = api.tables.get(str(value.get("@odata.type", "")).lstrip("#").removeprefix(NS))
        if t is None or not value.get(t.primary_id):
            raise errors.bad_request(
                f"The parameter '{name}' needs '@odata.type' and the table's primary key (or '@odata.id').", "0x0"
            )
        key = str(value[t.primary_id])
    if table is not None and t.logical_name != table:
        raise errors.bad_request(f"The parameter '{name}' must be a {table}, not a {t.logical_name}.", "0x0")
    rid, _row = api.load(t, key)
    return t, rid


# -- routing ---------------------------------------------------------------------------------------------------------


def find(api: RecordApi, name: str, table: Table | None, collection: bool) -> Message | None:
    """The message ``name`` as invoked: unbound (no table), bound to a row, or bound to a collection of ``table``."""
    m = all_messages(api).get(name)
    if m is None:
        return None
    if table is None:
        return m if m.binding is None else None
    if m.bound_table not in (table.logical_name, "crmbaseentity") or m.collection_bound != collection:
        return None
    return m


async def invoke(
    api: RecordApi, request: Request, ctx: Ctx, msg: Message, key: str | None, bound: Bound | None
) -> Response:
    """Check the HTTP method, read the parameters (body or URL), check them, run the handler."""
    if msg.kind == ACTION:
        if request.method != "POST":
            raise DataverseError(
                405, "0x80060888", f"The requested resource does not support http method '{request.method}'."
            )
        if key:
            raise errors.segment_not_found(f"{msg.name}({key})")
        params = await api.body_json(request, msg.name)
    else:
        if request.method != "GET":
            raise DataverseError(
                405, "0x80060888", f"The requested resource does not support http method '{request.method}'."
            )
        params = function_params(request, key)  # ``WhoAmI`` and ``WhoAmI()`` both answer (reference section 10)
    check_params(msg, params)
    handler = msg.handler or _no_plugin
    return await handler(api, ctx, bound, params, msg)
