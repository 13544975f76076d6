"""FetchXML over the Web API: ``GET {set}?fetchXml=<url-encoded fetch>`` compiled to SQLite.

Why a compiler of its own rather than a translation to OData: FetchXML has semantics OData lacks (outer and
semi joins with their own filters, ``alias.attr`` columns, page/count/paging-cookie paging, aggregates with date
grouping and the 50,000-row aggregate limit), and Microsoft's SDK pages it by the ``fetchxmlpagingcookie`` /
``morerecords`` annotations, which must be encoded exactly as Dataverse does (reference section 5).
The XML is parsed with ``defusedxml`` (no entity expansion; a DOCTYPE is refused like any invalid fetch).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote
from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from starlette.responses import Response

from . import errors
from .model import Attribute, Table
from .query import Compiler, fmt_dt
from .records import ASSOC_NAV, FORMATTED, LOOKUP_NAME, etag, formatted, json_value, lookup_nav, money_text
from .storage import q, type_col

if TYPE_CHECKING:
    from .context import Ctx
    from .record_writes import RecordApi

MAX_PAGE = 5000
SIMPLE_PAGING_LIMIT = 50000
AGGREGATE_LIMIT = 50000
PAGING_COOKIE = "Microsoft.Dynamics.CRM.fetchxmlpagingcookie"
MORE_RECORDS = "Microsoft.Dynamics.CRM.morerecords"
TOTAL = "Microsoft.Dynamics.CRM.totalrecordcount"
TOTAL_EXCEEDED = "Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"

# FetchXML date operators -> the query-function names Compiler.date_range understands
DATE_OPS = {
    "on": "On",
    "on-or-after": "OnOrAfter",
    "on-or-before": "OnOrBefore",
    "today": "Today",
    "yesterday": "Yesterday",
    "tomorrow": "Tomorrow",
    "last-seven-days": "Last7Days",
    "next-seven-days": "Next7Days",
    "last-x-hours": "LastXHours",
    "next-x-hours": "NextXHours",
    "last-x-days": "LastXDays",
    "next-x-days": "NextXDays",
    "last-x-weeks": "LastXWeeks",
    "next-x-weeks": "NextXWeeks",
    "olderthan-x-minutes": "OlderThanXMinutes",
    "olderthan-x-hours": "OlderThanXHours",
    "olderthan-x-days": "OlderThanXDays",
    "olderthan-x-weeks": "OlderThanXWeeks",
    "this-month": "ThisMonth",
    "this-year": "ThisYear",
}
COMPARE = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<=", "neq": "<>"}
LIKE_OPS = {
    "like": ("{}", False),
    "not-like": ("{}", True),
    "begins-with": ("{}%", False),
    "not-begin-with": ("{}%", True),
    "ends-with": ("%{}", False),
    "not-end-with": ("%{}", True),
}
DATE_GROUPING = {
    "year": "CAST(strftime('%Y', {c}) AS INTEGER)",
    "quarter": "((CAST(strftime('%m', {c}) AS INTEGER) + 2) / 3)",
    "month": "CAST(strftime('%m', {c}) AS INTEGER)",
    "week": "(CAST(strftime('%W', {c}) AS INTEGER) + 1)",
    "day": "CAST(strftime('%d', {c}) AS INTEGER)",
    "fiscal-period": "((CAST(strftime('%m', {c}) AS INTEGER) + 2) / 3)",
    "fiscal-year": "CAST(strftime('%Y', {c}) AS INTEGER)",
}


def invalid(message: str) -> errors.DataverseError:
    """Malformed or unsupported FetchXML (code 0x80040203 InvalidArgument; the exact code is a GUESS)."""
    return errors.DataverseError(400, "0x80040203", message)


def no_attribute(table: Table, name: str) -> errors.DataverseError:
    """Dataverse's QueryBuilderNoAttribute wording for an unknown column in a fetch."""
    return errors.DataverseError(
        400,
        "0x80041103",
        f"'{table.schema_name}' entity doesn't contain attribute with Name = '{name}' and NameMapping = 'Logical'.",
    )


@dataclass
class Node:
    """One ``<entity>`` or ``<link-entity>``: its table, SQL alias, user-facing alias and children."""

    table: Table
    sql_alias: str
    alias: str | None
    element: Element
    link_type: str = "inner"
    frm: str = ""
    to: str = ""
    parent: Node | None = None
    links: list[Node] = field(default_factory=list)


@dataclass
class Column:
    """A selected column: SQL expression, output name, attribute (for formatting) and owning node."""

    sql: str
    out: str
    attr: Attribute | None
    node: Node
    agg: str | None = None
    group: bool = False


class FetchQuery:
    """A parsed fetch compiled against the emulator's tables."""

    def __init__(self, api: RecordApi, ctx: Ctx, table: Table, xml: str) -> None:
        self.api = api
        self.ctx = ctx
        try:
            root = SafeET.fromstring(xml, forbid_dtd=True)
        except (SafeET.ParseError, DefusedXmlException, ValueError) as e:
            raise invalid(f"Invalid XML. {type(e).__name__}") from None
        if root.tag != "fetch":
            raise invalid("The root element of a FetchXML query must be 'fetch'.")
        if len(root.findall(".//link-entity")) > errors.MAX_LINK_ENTITIES:  # at any depth, filters' ones included
            raise errors.too_many_link_entities()
        ents = root.findall("entity")
        if len(ents) != 1:
            raise invalid("A fetch must contain exactly one entity element.")
        name = ents[0].get("name", "")
        if name != table.logical_name:
            raise invalid(
                f"The entity name '{name}' in the FetchXML does not match the entity set '{table.entity_set}'."
            )
        self.fetch = root
        self.aggregate = root.get("aggregate", "false").lower() == "true"
        self.distinct = root.get("distinct", "false").lower() == "true"
        self.top = _int_attr(root, "top")
        self.count = _int_attr(root, "count")
        self.page = _int_attr(root, "page") or 1
        self.cookie = root.get("paging-cookie")
        self.total = root.get("returntotalrecordcount", "false").lower() == "true"
        self.aggregate_limit = _int_attr(root, "aggregatelimit") or AGGREGATE_LIMIT
        if self.top is not None and (self.count is not None or root.get("page") is not None):
            raise invalid("The top attribute can't be specified with paging attribute page or count.")
        if self.top is not None and self.top > MAX_PAGE:
            raise invalid(f"The top attribute value {self.top} exceeds the maximum of {MAX_PAGE}.")
        if self.aggregate_limit > AGGREGATE_LIMIT:
            raise invalid(f"The aggregatelimit value can't exceed {AGGREGATE_LIMIT}.")
        self.comp = Compiler(api.tables, api.rels, api.emu.clock, ctx.user["systemuserid"], ctx.user["businessunitid"])
        self.params: list[Any] = []
        self.n = 0
        self.root = Node(table, "t0", None, ents[0])
        self.by_alias: dict[str, Node] = {}
        self.joins: list[str] = []
        self.join_params: list[Any] = []
        self.where: list[str] = []
        self.where_params: list[Any] = []
        self.columns: list[Column] = []
        self.orders: list[tuple[str, bool]] = []  # (sql, descending)
        self.order_attrs: list[tuple[Attribute, bool]] = []  # root order columns, for the paging cookie
        self.order_on_link = False
        self._build(self.root)

    # -- compile ----------------------------------------------------------------------------------------------------

    def _attr(self, node: Node, name: str) -> Attribute:
        a = node.table.attributes.get(name)
        if a is None:
            raise no_attribute(node.table, name)
        return a

    def _build(self, node: Node) -> None:
        el = node.element
        t = node.table
        all_attrs = el.find("all-attributes") is not None
        if all_attrs and not self.aggregate:
            for a in t.attributes.values():
                if a.valid_for_read:
                    self._select(node, a, None, el)
        for ael in el.findall("attribute"):
            a = self._attr(node, ael.get("name", ""))
            self._select(node, a, ael.get("alias"), ael)
        if node is self.root and not self.aggregate and not self.distinct:
            pk = t.attributes[t.primary_id]
            if not any(c.attr is pk and c.node is node for c in self.columns):
                self._select(node, pk, None, el)
        for oel in el.findall("order"):
            desc = oel.get("descending", "false").lower() == "true"
            if oel.get("alias"):
                self.orders.append((q(oel.get("alias", "")), desc))
                continue
            a = self._attr(node, oel.get("attribute", ""))
            self.orders.append((f"{node.sql_alias}.{q(a.name)}", desc))
            if node is self.root:
                self.order_attrs.append((a, desc))
            else:
                self.order_on_link = True
        for lel in el.findall("link-entity"):
            self._link(node, lel)
        if node is self.root or node.link_type == "inner":
            for fel in el.findall("filter"):
                sql = self._filter(fel, node)
                if sql:
                    self.where.append(sql)
                    self.where_params.extend(self._take())

    def _take(self) -> list[Any]:
        out, self.params = self.params, []
        return out

    def _select(self, node: Node, a: Attribute, alias: str | None, el: Element) -> None:
        col = f"{node.sql_alias}.{q(a.name)}"
        if node is self.root:
            out = alias or a.name
        else:
            out = alias if alias and self.aggregate else f"{node.alias}.{alias or a.name}"
        if self.aggregate:
            agg = el.get("aggregate")
            group = el.get("groupby", "false").lower() == "true"
            if not alias:
                raise invalid("An attribute in an aggregate query must have an alias.")
            if agg is None and not group:
                raise invalid("An attribute in an aggregate query must have an aggregate or groupby='true'.")
            if group:
                dg = el.get("dategrouping")
                if dg is not None:
                    if dg not in DATE_GROUPING:
                        raise invalid(f"Invalid dategrouping value '{dg}'.")
                    col = DATE_GROUPING[dg].format(c=col)
                self.columns.append(Column(col, alias, None if dg else a, node, group=True))
                return
            distinct = el.get("distinct", "false").lower() == "true"
            fn = {
                "count": "COUNT(*)",
                "countcolumn": f"COUNT({'DISTINCT ' if distinct else ''}{col})",
                "sum": f"SUM({col})",
                "avg": f"AVG({col})",
                "min": f"MIN({col})",
                "max": f"MAX({col})",
            }.get(agg or "")
            if fn is None:
                raise invalid(f"Invalid aggregate value '{agg}'.")
            self.columns.append(Column(fn, alias, a, node, agg=agg))
            return
        if any(c.out == out for c in self.columns):
            return
        self.columns.append(Column(col, out, a, node))

    def _link(self, parent: Node, el: Element) -> None:
        name = el.get("name", "")
        t = self.api.tables.get(name)
        if t is None:
            raise invalid(f"The entity with a name = '{name}' was not found in the MetadataCache.")
        self.n += 1
        alias = el.get("alias") or f"{name}{self.n}"
        node = Node(t, f"l{self.n}", alias, el, el.get("link-type", "inner"), el.get("from", ""), el.get("to", ""))
        node.parent = parent
        parent.links.append(node)
        self.by_alias[alias] = node
        frm = self._attr(node, node.frm or t.primary_id)
        to = self._attr(parent, node.to or parent.table.primary_id)
        on = f"{node.sql_alias}.{q(frm.name)} = {parent.sql_alias}.{q(to.name)}"
        lt = node.link_type
        if lt in ("inner", "outer"):
            conds = [on]
            params: list[Any] = []
            if lt == "outer":
                for fel in el.findall("filter"):
                    sql = self._filter(fel, node)
                    if sql:
                        conds.append(sql)
                        params.extend(self._take())
            join = "JOIN" if lt == "inner" else "LEFT JOIN"
            self.joins.append(f" {join} {q(t.logical_name)} {node.sql_alias} ON {' AND '.join(conds)}")
            self.join_params.extend(params)
            self._build(node)
            return
        if lt in ("any", "not any", "exists", "in"):
            conds = [on]
            for fel in el.findall("filter"):
                sql = self._filter(fel, node)
                if sql:
                    conds.append(sql)
            neg = "NOT " if lt == "not any" else ""
            self.where.append(
                f"{neg}EXISTS (SELECT 1 FROM {q(t.logical_name)} {node.sql_alias} WHERE {' AND '.join(conds)})"
            )
            self.where_params.extend(self._take())
            return
        raise invalid(f"The link-type '{lt}' is not supported.")

    def _filter(self, el: Element, node: Node) -> str:
        kind = el.get("type", "and").lower()
        if kind not in ("and", "or"):
            raise invalid(f"Invalid filter type '{kind}'.")
        parts: list[str] = []
        for child in el:
            if child.tag == "condition":
                parts.append(self._condition(child, node))
            elif child.tag == "filter":
                sub = self._filter(child, node)
                if sub:
                    parts.append(sub)
        if not parts:
            return ""
        return "(" + f" {kind.upper()} ".join(parts) + ")"

    def _value(self, a: Attribute, raw: str) -> Any:
        t = a.type
        try:
            if t in ("Integer", "BigInt", "Picklist", "State", "Status"):
                return int(raw)
            if t in ("Money", "Decimal", "Double"):
                return float(raw)
            if t == "Boolean":
                return 1 if raw.strip().lower() in ("1", "true") else 0
            if t == "DateTime":
                if a.date_only:
                    return dt.date.fromisoformat(raw.strip()[:10]).isoformat()
                d = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
                return fmt_dt(d)
            if t in ("Uniqueidentifier", "Lookup", "Customer", "Owner"):
                return str(uuid.UUID(raw.strip().strip("{}"))).lower()
        except ValueError:
            raise invalid(f"The value '{raw}' is not valid for attribute '{a.name}' of type {t}.") from None
        return raw

    def _condition(self, el: Element, node: Node) -> str:
        target = node
        ename = el.get("entityname")
        if ename:
            found = self.by_alias.get(ename)
            if found is None:
                raise invalid(f"The entityname '{ename}' does not match any link-entity alias.")
            target = found
        a = self._attr(target, el.get("attribute", ""))
        col = f"{target.sql_alias}.{q(a.name)}"
        op = el.get("operator", "").lower()
        raw = el.get("value")
        values = [v.text or "" for v in el.findall("value")]
        if raw is not None and not values:
            values = [raw]
        if op in COMPARE:
            if not values:
                raise invalid(f"The condition operator '{op}' requires a value.")
            self.params.append(self._value(a, values[0]))
            return f"({col} {COMPARE[op]} ?)"
        if op == "null":
            return f"({col} IS NULL)"
        if op == "not-null":
            return f"({col} IS NOT NULL)"
        if op in ("in", "not-in"):
            if not values:
                raise invalid(f"The condition operator '{op}' requires at least one value.")
            self.params.extend(self._value(a, v) for v in values)
            return f"({col} {'NOT ' if op == 'not-in' else ''}IN ({', '.join('?' * len(values))}))"
        if op in ("between", "not-between"):
            if len(values) != 2:
                raise invalid(f"The condition operator '{op}' requires two values.")
            self.params.extend(self._value(a, v) for v in values)
            return f"({col} {'NOT ' if op == 'not-between' else ''}BETWEEN ? AND ?)"
        if op in LIKE_OPS:
            pattern, neg = LIKE_OPS[op]
            self.params.append(pattern.format(values[0] if values else ""))
            return f"({col} {'NOT ' if neg else ''}LIKE ?)"
        if op in ("eq-userid", "ne-userid"):
            self.params.append(self.ctx.user["systemuserid"])
            return f"({col} {'=' if op == 'eq-userid' else '<>'} ?)"
        if op in ("eq-businessid", "ne-businessid"):
            self.params.append(self.ctx.user["businessunitid"])
            return f"({col} {'=' if op == 'eq-businessid' else '<>'} ?)"
        if op in DATE_OPS or op == "not-on":
            fn = DATE_OPS.get(op, "On")
            rng = self.comp.date_range(fn, values)
            assert rng is not None
            lo, hi = rng

            def fmt(d: dt.datetime) -> str:
                return d.date().isoformat() if a.date_only else fmt_dt(d)

            conds = []
            if lo is not None:
                conds.append(f"{col} >= ?")
                self.params.append(fmt(lo))
            if hi is not None:
                # a range ending "now" includes rows written this second (storage keeps whole seconds)
                now = dt.datetime.fromtimestamp(self.api.emu.clock(), dt.UTC)
                conds.append(f"{col} {'<=' if hi >= now.replace(microsecond=0) else '<'} ?")
                self.params.append(fmt(hi))
            body = " AND ".join(conds)
            return f"(NOT ({body}))" if op == "not-on" else f"({body})"
        raise invalid(f"The condition operator '{op}' is not supported.")

    # -- run --------------------------------------------------------------------------------------------------------

    def from_sql(self) -> tuple[str, list[Any]]:
        """FROM ... JOIN ... WHERE ... with its parameters."""
        sql = f" FROM {q(self.root.table.logical_name)} t0" + "".join(self.joins)
        if self.where:
            sql += " WHERE " + " AND ".join(self.where)
        return sql, self.join_params + self.where_params

    def response(self) -> Response:
        """Run the fetch and answer as Dataverse does (rows without nulls, paging annotations when asked)."""
        if self.aggregate:
            return self._aggregate()
        t = self.root.table
        pk = t.attributes[t.primary_id]
        size = min(self.count or MAX_PAGE, MAX_PAGE)
        frm, params = self.from_sql()
        cookie_last = self._cookie_pk()
        use_keyset = cookie_last is not None and not self.orders and not self.distinct
        if self.cookie is None and self.top is None and self.page * size > SIMPLE_PAGING_LIMIT:
            raise errors.DataverseError(
                400, "0x8004430A", "A paging cookie is required when retrieving a high page number."
            )
        select_cols = [f"{c.sql} AS {q('c' + str(i))}" for i, c in enumerate(self.columns)]
        extra = []
        for i, c in enumerate(self.columns):
            if c.attr is not None and c.attr.is_lookup:
                extra.append(f"{c.node.sql_alias}.{q(type_col(c.attr.name))} AS {q('ty' + str(i))}")
        if not self.distinct:
            extra.append(f"t0.{q('versionnumber')} AS {q('__version')}")
            extra.append(f"t0.{q(t.primary_id)} AS {q('__pk')}")
        order = [f"{s} {'DESC' if d else 'ASC'}" for s, d in self.orders]
        if not self.distinct:
            order.append(f"t0.{q(t.primary_id)} ASC")
        where_extra = ""
        extra_params: list[Any] = []
        if use_keyset:
            where_extra = (" AND " if self.where else " WHERE ") + f"t0.{q(t.primary_id)} > ?"
            extra_params.append(cookie_last)
        offset = 0 if use_keyset or self.top is not None else (self.page - 1) * size
        limit = self.top if self.top is not None else size + 1
        sql = (
            f"SELECT {'DISTINCT ' if self.distinct else ''}{', '.join(select_cols + extra)}{frm}{where_extra}"
            + (f" ORDER BY {', '.join(order)}" if order else "")
            + f" LIMIT {int(limit)} OFFSET {int(offset)}"
        )
        rows = self.api.store.query(sql, params + extra_params)
        more = self.top is None and len(rows) > size
        rows = rows[:size]
        ctx = self.ctx
        ann = ctx.annotations
        body: dict[str, Any] = {
            "@odata.context": f"{ctx.api}/$metadata#{t.entity_set}({','.join(self._context_names())})"
        }
        if self.total:
            total = self.api.store.scalar(f"SELECT COUNT(*) FROM (SELECT 1{frm} LIMIT {MAX_PAGE + 1})", params)
            if ann.wants(TOTAL):
                body[f"@{TOTAL}"] = min(int(total), MAX_PAGE)
            if ann.wants(TOTAL_EXCEEDED):
                body[f"@{TOTAL_EXCEEDED}"] = int(total) > MAX_PAGE
        if more and not self.order_on_link and not self.distinct and ann.wants(PAGING_COOKIE):
            body[f"@{PAGING_COOKIE}"] = self._cookie(rows, pk)
        if more and ann.wants(MORE_RECORDS):
            body[f"@{MORE_RECORDS}"] = True
        body["value"] = [self._row(r) for r in rows]
        self.api.apply_annotation_pref(ctx)
        return self.api.json(body)

    def _context_names(self) -> list[str]:
        out = []
        for c in self.columns:
            if c.node is self.root and c.attr is not None and c.attr.is_lookup and not c.agg and not c.group:
                out.append(f"_{c.attr.name}_value")
            else:
                out.append(c.out)
        return out

    def _cookie_pk(self) -> str | None:
        """The primary key ``last`` value of a paging cookie sent back by the client (None when absent)."""
        if not self.cookie:
            return None
        try:
            el = SafeET.fromstring(self.cookie, forbid_dtd=True)
        except (SafeET.ParseError, DefusedXmlException, ValueError):
            raise invalid("The paging cookie is not valid.") from None
        pk_el = el.find(self.root.table.primary_id)
        if pk_el is None or not pk_el.get("last"):
            return None
        try:
            return str(uuid.UUID(pk_el.get("last", "").strip("{}"))).lower()
        except ValueError:
            raise invalid("The paging cookie is not valid.") from None

    def _cookie(self, rows: list[dict[str, Any]], pk: Attribute) -> str:
        """``<cookie pagenumber=... pagingcookie=<double URL-encoded inner cookie> istracking="False" />``."""
        parts = [f'<cookie page="{self.page}">']
        cols = [(a, i) for a, _ in self.order_attrs for i, c in enumerate(self.columns) if c.attr is a]
        for a, _ in self.order_attrs:
            idx = next((i for b, i in cols if b is a), None)
            last = _cookie_value(a, rows[-1].get(f"c{idx}") if idx is not None else None)
            first = _cookie_value(a, rows[0].get(f"c{idx}") if idx is not None else None)
            parts.append(f"<{a.name} last={quoteattr(last)} first={quoteattr(first)} />")
        parts.append(
            f'<{pk.name} last="{{{str(rows[-1]["__pk"]).upper()}}}" first="{{{str(rows[0]["__pk"]).upper()}}}" />'
        )
        parts.append("</cookie>")
        inner = "".join(parts)
        once = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(inner, safe=""))
        twice = quote(once, safe="")
        return f'<cookie pagenumber="{self.page + 1}" pagingcookie="{twice}" istracking="False" />'

    def _row(self, r: dict[str, Any]) -> dict[str, Any]:
        ann = self.ctx.annotations
        out: dict[str, Any] = {}
        if "__version" in r:
            out["@odata.etag"] = etag(r["__version"])
        for i, c in enumerate(self.columns):
            v = r.get(f"c{i}")
            if v is None:
                continue
            a = c.attr
            if a is None:
                out[c.out] = v
                continue
            if a.is_lookup:
                target = r.get(f"ty{i}")
                name = f"_{a.name}_value" if c.node is self.root and c.out == a.name else c.out
                if ann:
                    if ann.wants(FORMATTED):
                        pn = self.api.primary_name_of(target, v)
                        if pn is not None:
                            out[f"{name}@{FORMATTED}"] = pn
                    if ann.wants(ASSOC_NAV) and c.node is self.root:
                        out[f"{name}@{ASSOC_NAV}"] = lookup_nav(a, target)
                    if ann.wants(LOOKUP_NAME):
                        out[f"{name}@{LOOKUP_NAME}"] = target
                out[name] = v
                continue
            if ann and ann.wants(FORMATTED):
                f = formatted(a, v)
                if f is not None:
                    out[f"{c.out}@{FORMATTED}"] = f
            out[c.out] = json_value(a, v)
        return out

    def _aggregate(self) -> Response:
        frm, params = self.from_sql()
        n = self.api.store.scalar(f"SELECT COUNT(*) FROM (SELECT 1{frm} LIMIT {self.aggregate_limit + 1})", params)
        if int(n) > self.aggregate_limit:
            raise errors.DataverseError(
                400, "0x8004E023", "The maximum record limit is exceeded. Reduce the number of records."
            )
        if not self.columns:
            raise invalid("An aggregate query must contain at least one attribute.")
        cols = [f"{c.sql} AS {q(c.out)}" for c in self.columns]
        groups = [c.sql for c in self.columns if c.group]
        sql = f"SELECT {', '.join(cols)}{frm}"
        if groups:
            sql += f" GROUP BY {', '.join(groups)}"
        if self.orders:
            sql += " ORDER BY " + ", ".join(f"{s} {'DESC' if d else 'ASC'}" for s, d in self.orders)
        size = self.top if self.top is not None else min(self.count or MAX_PAGE, MAX_PAGE)
        offset = 0 if self.top is not None else (self.page - 1) * size
        sql += f" LIMIT {int(size) + 1} OFFSET {int(offset)}"
        rows = self.api.store.query(sql, params)
        more = self.top is None and len(rows) > size
        rows = rows[:size]
        ann = self.ctx.annotations
        value = []
        for r in rows:
            out: dict[str, Any] = {}
            for c in self.columns:
                v = r.get(c.out)
                if v is None:
                    continue
                a = c.attr
                if c.agg in ("count", "countcolumn"):
                    text: str | None = f"{int(v):,}"
                elif a is not None and a.type == "Money" and c.agg:
                    text = money_text(float(v))
                elif a is not None and c.agg in ("avg", "sum") and a.type in ("Integer", "BigInt"):
                    text = f"{float(v):,.2f}" if c.agg == "avg" else f"{int(v):,}"
                elif a is not None:
                    text = formatted(a, v)
                else:
                    text = str(v)
                if ann and ann.wants(FORMATTED) and text is not None:
                    out[f"{c.out}@{FORMATTED}"] = text
                out[c.out] = json_value(a, v) if a is not None and c.group else v
            value.append(out)
        body: dict[str, Any] = {
            "@odata.context": f"{self.ctx.api}/$metadata#{self.root.table.entity_set}",
        }
        if more and ann.wants(MORE_RECORDS):
            body[f"@{MORE_RECORDS}"] = True
        body["value"] = value
        self.api.apply_annotation_pref(self.ctx)
        return self.api.json(body)


def _int_attr(el: Element, name: str) -> int | None:
    raw = el.get(name)
    if raw is None:
        return None
    try:
        v = int(raw)
    except ValueError:
        raise invalid(f"The '{name}' attribute value '{raw}' is not a valid integer.") from None
    if v < (0 if name == "top" else 1):
        raise invalid(f"The '{name}' attribute value '{raw}' is out of range.")
    return v


def _cookie_value(a: Attribute, v: Any) -> str:
    if v is None:
        return ""
    if a.is_lookup or a.type == "Uniqueidentifier":
        return "{" + str(v).upper() + "}"
    if a.type == "Boolean":
        return "1" if v else "0"
    return str(v)


def run(api: RecordApi, ctx: Ctx, table: Table, fetch_xml: str) -> Response:
    """Entry point from the collection handler: ``fetchXml`` arrives URL-decoded once by the query parser."""
    return FetchQuery(api, ctx, table, fetch_xml).response()


def decode_cookie(annotation: str) -> str:
    """The inner cookie a client puts in ``paging-cookie`` (the annotation's ``pagingcookie`` decoded twice)."""
    el = SafeET.fromstring(annotation, forbid_dtd=True)
    return unquote(unquote(el.get("pagingcookie", "")))
