"""Record reads of the Web API: key predicates, serialisation, ``$expand``, retrieve and list (paging cookies)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .context import GUID_RE, KEY_RESERVED, MAX_PAGE, Ctx, expand_context
from .emulator import Emulator
from .errors import JSON_CT, DataverseError
from .model import Relationship, Table
from .odata import (
    EXPAND_LIMIT_MESSAGE,
    MAX_EXPAND,
    ExpandItem,
    expand_count,
    parse_expand,
    parse_filter,
    parse_key_predicate,
    parse_orderby,
    parse_select,
)
from .query import Compiler
from .query import Scope as QScope
from .records import (
    ASSOC_NAV,
    FORMATTED,
    LOOKUP_NAME,
    etag,
    formatted,
    json_value,
    lookup_nav,
)
from .storage import q, type_col


class RecordReads:
    """Reading and serialising rows: key resolution, ``$select``/``$expand``, retrieve and list with paging."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.store = emu.store
        self.tables = emu.tables
        self.rels = emu.rels
        self._deep_children: list[tuple[Relationship, list[dict[str, Any]]]] = []
        #: (owner type, owner id) -> business unit while a bulk message runs (``owner_units_read_once``), else None
        self._owner_units: dict[tuple[Any, Any], Any] | None = None

    # -- helpers ----------------------------------------------------------------------------------------------------

    def json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON response with Dataverse's content type (compact separators, as the service sends)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        return Response(
            data, status_code=status, media_type=JSON_CT, headers={"OData-Version": "4.0", **(headers or {})}
        )

    def resolve_key(self, table: Table, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """(id, alternate-key values) for a key predicate; id is None when an alternate key matches no row."""
        rid, values = self.parse_key(table, key)
        if values is None:
            return rid, None
        ids = self.store.find_ids(table.logical_name, values)
        return (ids[0] if ids else None), values

    def parse_key(self, table: Table, key: str) -> tuple[str | None, dict[str, Any] | None]:
        """(id, None) for a key predicate naming the id, (None, column values) for an Active alternate key (not yet
        looked up: a bulk message looks all of its targets up at once), or the error ``resolve_key`` gives."""
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
            if isinstance(lit.value, str) and not KEY_RESERVED.isdisjoint(lit.value):
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
        return None, values

    def load(self, table: Table, key: str) -> tuple[str, dict[str, Any]]:
        """Row for a key predicate, or the documented 404 (0x80040217 by id, 0x80060891 by alternate key)."""
        rid, alt = self.resolve_key(table, key)
        row = self.store.get(table.logical_name, rid) if rid else None
        if row is None:
            if alt is not None:
                raise errors.key_not_found(table.logical_name)
            raise errors.not_found(table.logical_name, str(rid))
        return str(rid), row

    def check_expand(self, expand: tuple[ExpandItem, ...]) -> None:
        """At most 15 ``$expand`` options, nested ones counted (each becomes a join)."""
        if expand_count(expand) > MAX_EXPAND:
            raise errors.bad_request(EXPAND_LIMIT_MESSAGE)

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
                "$deltatoken",
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
        self.check_expand(expand)
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
        if "fetchXml" in opts or "$apply" in opts:
            raise errors.bad_request("fetchXml and $apply are not supported on a navigation collection.")
        aliases = {k: v for k, v in opts.items() if k.startswith("@")}
        select = self.check_select(table, parse_select(opts["$select"]) if "$select" in opts else None)
        expand = parse_expand(opts["$expand"]) if "$expand" in opts else ()
        self.check_expand(expand)
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
