"""Metadata writes: tables, columns, relationships, ``RetrieveMetadataChanges``, publish, and the admin bulk preload.

The HTTP side: request bodies read and answered as Dataverse does (PUT-only updates and ``MSCRM.MergeLabels``
defaulting to false, reference 9.7); the model and SQLite changes themselves are ``schema.py``'s.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from . import changetracking, errors, schema_deletes
from .odata import parse_filter, parse_select

if TYPE_CHECKING:
    from .context import Ctx
    from .record_writes import RecordApi
from .metadata import (
    attribute_json,
    entity_json,
    evaluate,
    find_table,
    match_key,
    project,
    relationship_json,
    split_key,
)
from .schema import (
    NO_CONTENT,
    do_create_column,
    do_create_relationship,
    do_create_table,
    do_update_column,
    many_to_many_json,
    record_solution,
)


def _solution(request: Request) -> str | None:
    """The solution a write is recorded in (``MSCRM.SolutionUniqueName`` header or ``SolutionUniqueName`` parameter)."""
    params = dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1")))
    return request.headers.get("mscrm.solutionuniquename") or params.get("SolutionUniqueName")


async def entity_definitions_write(
    api: RecordApi, request: Request, ctx: Ctx, key: str | None, rest: list[str]
) -> Response:
    """Writes under ``EntityDefinitions``: create or delete a table, create, PUT or delete a column (PATCH is
    refused)."""

    emu = api.emu
    method = request.method
    if method == "PATCH":
        raise errors.DataverseError(
            405, "0x80060888", "The requested resource does not support http method 'PATCH'. Use PUT for metadata."
        )
    if key is None and not rest and method == "POST":
        body = await api.body_json(request, "EntityDefinitions")
        t = do_create_table(emu, body)
        record_solution(emu, _solution(request), "Entity", t.metadata_id)
        return Response(
            status_code=204, headers={**NO_CONTENT, "OData-EntityId": f"{ctx.api}/EntityDefinitions({t.metadata_id})"}
        )
    if key is None:
        raise errors.no_resource(str(request.url))
    table = find_table(api, key)
    if not rest and method == "DELETE":
        schema_deletes.delete_table(emu, table)
        return Response(status_code=204, headers=NO_CONTENT)
    if not rest and method == "PUT":  # a table definition update; only ChangeTrackingEnabled is applied here
        body = await api.body_json(request, "EntityDefinitions")
        if "ChangeTrackingEnabled" in body:
            changetracking.set_enabled(table, body["ChangeTrackingEnabled"])
        return Response(status_code=204, headers=NO_CONTENT)
    if rest and split_key(rest[0])[0] == "Attributes" and len(rest) == 1:
        sub = split_key(rest[0])[1]
        if sub is None and method == "POST":
            body = await api.body_json(request, "EntityDefinitions")
            a = do_create_column(emu, table, body)
            record_solution(emu, _solution(request), "Attribute", a.metadata_id)
            return Response(
                status_code=204,
                headers={
                    **NO_CONTENT,
                    "OData-EntityId": f"{ctx.api}/EntityDefinitions({key})/Attributes({a.metadata_id})",
                },
            )
        if sub is not None and method in ("PUT", "DELETE"):
            match = [a for a in table.attributes.values() if match_key(sub, attribute_json(a, table))]
            if not match:
                raise errors.DataverseError(
                    404, "0x80040217", f"Could not find attribute {sub} in {table.logical_name}."
                )
            if method == "DELETE":
                schema_deletes.delete_column(emu, table, match[0].name)
                return Response(status_code=204, headers=NO_CONTENT)
            body = await api.body_json(request, "EntityDefinitions")
            merge = request.headers.get("mscrm.mergelabels", "false").strip().lower() == "true"
            a = do_update_column(emu, table, match[0].name, body, merge)
            return Response(
                status_code=204,
                headers={
                    **NO_CONTENT,
                    "OData-EntityId": f"{ctx.api}/EntityDefinitions({key})/Attributes({a.metadata_id})",
                },
            )
    raise errors.DataverseError(405, "0x80060888", f"The requested resource does not support http method '{method}'.")


ROUTES = ("CreateEntities", "RetrieveMetadataChanges", "RelationshipDefinitions", "PublishXml", "PublishAllXml")


async def dispatch(api: RecordApi, request: Request, ctx: Ctx, head: str, key: str | None, segs: list[str]) -> Response:
    """Unbound metadata actions and functions, and ``RelationshipDefinitions``."""
    emu = api.emu
    method = request.method
    if head in ("PublishXml", "PublishAllXml") and len(segs) == 1:
        if method != "POST":
            raise errors.DataverseError(404, "", f"Function '{head}' can only be invoked with POST.")
        await request.body()
        return Response(status_code=204, headers=NO_CONTENT)
    if head == "CreateEntities" and len(segs) == 1:
        if method != "POST":
            raise errors.DataverseError(404, "", "Action 'CreateEntities' can only be invoked with POST.")
        body = await api.body_json(request, "CreateEntities")
        entities = body.get("Entities")
        if not isinstance(entities, list) or not entities:
            raise errors.bad_request("Entities is required.", "0x80044331")
        for ent in entities:
            t = do_create_table(emu, ent)
            record_solution(emu, _solution(request), "Entity", t.metadata_id)
        return Response(status_code=204, headers=NO_CONTENT)
    if head == "RetrieveMetadataChanges" and len(segs) == 1:
        return retrieve_metadata_changes(api, request, ctx, key)
    if head == "RelationshipDefinitions":
        return await relationship_definitions(api, request, ctx, key, segs[1:])
    raise errors.segment_not_found(head)


def retrieve_metadata_changes(api: RecordApi, request: Request, ctx: Ctx, key: str | None) -> Response:
    """``GET RetrieveMetadataChanges(Query=@p1)``: entities by LogicalName criteria, projected as asked."""

    if request.method != "GET":
        raise errors.DataverseError(404, "", "Function 'RetrieveMetadataChanges' can only be invoked with GET.")
    params = dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
    raw = _function_parameter(params, key, "Query")
    try:
        query = json.loads(raw or "{}")
    except ValueError:
        raise errors.bad_request("The Query parameter is not a valid EntityQueryExpression.", "0x0") from None

    def matches(obj: dict[str, Any], criteria: Any) -> bool:
        conds = (criteria or {}).get("Conditions") or []
        results = []
        for c in conds:
            v = obj.get(c.get("PropertyName"))
            want = (c.get("Value") or {}).get("Value") if isinstance(c.get("Value"), dict) else c.get("Value")
            op = c.get("ConditionOperator", "Equals")
            if op == "Equals":
                results.append(str(v).lower() == str(want).lower())
            elif op == "NotEquals":
                results.append(str(v).lower() != str(want).lower())
            elif op == "In":
                results.append(str(v).lower() in {str(x).lower() for x in (want or [])})
            else:
                raise errors.bad_request(f"The ConditionOperator '{op}' is not supported.", "0x0")
        if not results:
            return True
        return any(results) if (criteria or {}).get("FilterOperator") == "Or" else all(results)

    def props(obj: dict[str, Any], spec: Any) -> dict[str, Any]:
        names = ((spec or {}).get("PropertyNames")) if isinstance(spec, dict) else None
        if (spec or {}).get("AllProperties") or not names:
            return dict(obj)
        out = {k: obj[k] for k in names if k in obj}
        for k in ("@odata.type", "MetadataId"):
            if k in obj:
                out[k] = obj[k]
        return out

    ents = []
    aq = query.get("AttributeQuery") or {}
    for t in api.tables.values():
        e = entity_json(t)
        if not matches(e, query.get("Criteria")):
            continue
        out = props(e, query.get("Properties"))
        out.pop("Attributes", None)
        wanted = ((query.get("Properties") or {}).get("PropertyNames")) or []
        if "Attributes" in wanted or (query.get("Properties") or {}).get("AllProperties"):
            out["Attributes"] = [
                props(aj, aq.get("Properties"))
                for aj in (attribute_json(a, t) for a in t.attributes.values())
                if matches(aj, aq.get("Criteria"))
            ]
        out["HasChanged"] = None
        ents.append(out)
    deleted = _deleted_metadata(api, params, key)
    return api.json(
        {
            "@odata.context": f"{ctx.api}/$metadata#Microsoft.Dynamics.CRM.RetrieveMetadataChangesResponse",
            "EntityMetadata": ents,
            "ServerVersionStamp": f"{1000 + schema_deletes.schema_sequence(api.emu)}!{int(api.emu.clock() * 1000)}",
            "DeletedMetadata": {
                "Count": len(deleted),
                "IsReadOnly": False,
                "Keys": list(deleted),
                "Values": list(deleted.values()),
            },
        }
    )


def _function_parameter(params: dict[str, str], key: str | None, name: str) -> str | None:
    """A function parameter given inline (``Name=value``) or through an alias (``Name=@p2`` and ``@p2=value``)."""
    for part in re.split(r",(?=\s*\w+\s*=)", key or ""):
        pname, _, value = part.partition("=")
        if pname.strip() == name:
            value = value.strip()
            return params.get(value) if value.startswith("@") else value
    return None


def _deleted_metadata(api: RecordApi, params: dict[str, str], key: str | None) -> dict[str, list[str]]:
    """``DeletedMetadata`` since a ``ClientVersionStamp``; documented to need ``DeletedMetadataFilters`` too."""
    stamp = _function_parameter(params, key, "ClientVersionStamp")
    raw_filters = _function_parameter(params, key, "DeletedMetadataFilters")
    if not stamp or not raw_filters:
        return {}
    try:
        after = int(stamp.strip("'").split("!", 1)[0]) - 1000
    except ValueError:
        raise errors.bad_request("The ClientVersionStamp is not valid.", "0x0") from None
    names = raw_filters.split("'")[1] if "'" in raw_filters else raw_filters
    filters = 0
    for name in names.split(","):
        name = name.strip()
        filters |= int(name) if name.isdigit() else 31 if name == "All" else schema_deletes.DELETED_FILTERS.get(name, 0)
    return schema_deletes.deleted_since(api.emu, after, filters)


async def relationship_definitions(
    api: RecordApi, request: Request, ctx: Ctx, key: str | None, rest: list[str]
) -> Response:
    """``RelationshipDefinitions``: create (POST), list with ``$select``/``$filter``, by SchemaName or MetadataId."""

    emu = api.emu
    method = request.method
    if method == "POST" and key is None and not rest:
        body = await api.body_json(request, "RelationshipDefinitions")
        mid = do_create_relationship(emu, body)
        record_solution(emu, _solution(request), "Relationship", mid)
        return Response(
            status_code=204, headers={**NO_CONTENT, "OData-EntityId": f"{ctx.api}/RelationshipDefinitions({mid})"}
        )
    if method == "DELETE" and key is not None and not rest:
        schema_deletes.delete_relationship(emu, key)
        return Response(status_code=204, headers=NO_CONTENT)
    if method != "GET" or rest:
        raise errors.DataverseError(
            405, "0x80060888", f"The requested resource does not support http method '{method}'."
        )
    custom = getattr(emu, "custom_relationships", set())
    items = []
    for r in emu.rels:
        j = relationship_json(r)
        j["IsCustomRelationship"] = r.schema_name in custom
        j["IsManaged"] = r.schema_name not in custom
        items.append({"@odata.type": "#Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata", **j})
    items += [many_to_many_json(m) for m in getattr(emu, "many_to_many", [])]
    params = dict(parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
    select = parse_select(params["$select"]) if "$select" in params else None
    if key is not None:
        k = key.strip()
        if k.lower().startswith("schemaname="):
            want = k.split("=", 1)[1].strip("'").lower()
            match = [i for i in items if i["SchemaName"].lower() == want]
        else:
            match = [i for i in items if i["MetadataId"].lower() == k.lower()]
        if not match:
            raise errors.DataverseError(404, "0x80040217", f"Could not find relationship {k}.")
        body = project(match[0], select, "RelationshipMetadataBase", ("MetadataId",))
        return api.json({"@odata.context": f"{ctx.api}/$metadata#RelationshipDefinitions/$entity", **body})
    if "$filter" in params:
        flt = parse_filter(params["$filter"])
        items = [i for i in items if evaluate(flt, i)]
    return api.json(
        {
            "@odata.context": f"{ctx.api}/$metadata#RelationshipDefinitions",
            "value": [project(i, select, "RelationshipMetadataBase", ("MetadataId",)) for i in items],
        }
    )
