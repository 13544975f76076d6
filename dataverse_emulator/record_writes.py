"""Record writes of the Web API: payload checks, create/update/upsert/delete, properties, navigation and ``$ref``."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from . import associations, cascade, currency, errors
from .context import Ctx, fmt_dt_now, seg_key
from .model import Relationship, Table
from .odata import (
    parse_expand,
    parse_select,
)
from .query import Compiler
from .record_reads import RecordReads
from .records import (
    computed,
    convert,
    etag,
    json_value,
)
from .storage import q, type_col
from .webhooks import notify


class RecordApi(RecordReads):
    """Record writes (create, update, upsert, delete, properties, navigation, ``$ref``) on top of the reads: the
    interface every handler module (``$batch``, bulk, FetchXML, metadata, files) is given."""

    async def handle(self, request: Request) -> Response:
        """Answer a whole Web API request; ``dispatch.WebApi`` implements it, ``$batch`` parts re-enter through it."""
        raise NotImplementedError

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
        if "merged" in table.attributes:
            row["merged"] = False  # the entity references' DefaultValue; only Merge sets it true
        currency.apply(self.store, table, row)
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
        memo = self._owner_units
        if memo is not None and (kind, owner) in memo:
            bu = memo[(kind, owner)]
        else:
            bu = self.store.scalar(
                f"SELECT businessunitid FROM {q(kind or 'systemuser')} WHERE {q((kind or 'systemuser') + 'id')} = ?",
                [owner],
            )
            if memo is not None:
                memo[(kind, owner)] = bu
        row["owningbusinessunit"], row["owningbusinessunit__type"] = bu, "businessunit"

    @contextlib.contextmanager
    def owner_units_read_once(self, table: Table) -> Iterator[None]:
        """Within the block, each owner's business unit is read once. A bulk message's target loop asks for it only
        when it does not yield to another request (no webhook step to await) and writes no user, team or business unit
        (its targets' table is none of them; deep inserts create rows, they never move an existing owner)."""
        if table.logical_name in ("systemuser", "team", "businessunit") or self._owner_units is not None:
            yield
            return
        self._owner_units = {}
        try:
            yield
        finally:
            self._owner_units = None

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
        currency.apply(self.store, table, changes, row)
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
        """``DELETE {set}({key})`` with optional If-Match; rows that point at it follow each relationship's cascade
        configuration (Cascade, RemoveLink, Restrict)."""
        rid, row = self.load(table, key)
        if_match = request.headers.get("if-match")
        if if_match is not None and if_match != "*" and if_match != etag(row.get("versionnumber")):
            raise errors.version_mismatch()
        for child, child_id, child_row in cascade.delete_row(self, table, rid):  # a cascaded delete is a Delete too
            await notify(self, ctx, "Delete", child, child_id, {}, child_row)
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
        side = associations.find(self.emu, table, name)
        if side is not None:
            return await associations.handle(self, request, ctx, table, rid, side, segs, sub_key)
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
