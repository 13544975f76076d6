"""OData ``$apply`` (reference section 4.6): ``filter(...)``, ``groupby((...))`` and ``aggregate(...)`` as SQL.

Why only this subset: it is what the Dataverse docs show and support (``sum``, ``average``, ``min``, ``max``,
``countdistinct``, ``$count``, grouping by columns and by a lookup's related column); aggregates run over at most
50,000 rows (``0x8004E023``) and ``groupby`` on a datetime is refused, as documented.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from . import errors
from .odata import Property, parse_filter
from .query import Scope
from .records import FORMATTED, formatted, json_value
from .storage import q

if TYPE_CHECKING:
    from .context import Ctx
    from .model import Table
    from .record_writes import RecordApi

AGGREGATE_LIMIT = 50000
METHODS = {"sum": "SUM({})", "average": "AVG({})", "min": "MIN({})", "max": "MAX({})", "countdistinct": None}
ITEM_RE = re.compile(r"^\s*([\w/]+)\s+with\s+(\w+)\s+as\s+(\w+)\s*$")
COUNT_RE = re.compile(r"^\s*\$count\s+as\s+(\w+)\s*$")


def split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside parentheses and single-quoted strings."""
    parts, depth, quoted, cur = [], 0, False, []
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (x.strip() for x in parts) if p]


def _call(text: str, name: str) -> str | None:
    """The argument text of ``name(...)`` when ``text`` is exactly that call."""
    if text.startswith(name + "(") and text.endswith(")"):
        return text[len(name) + 1 : -1]
    return None


def run(api: RecordApi, ctx: Ctx, table: Table, opts: dict[str, str]) -> Response:
    """Answer ``GET {set}?$apply=...`` with plain rows in ``value``."""
    comp = api_compiler(api, ctx)
    scope = Scope(table, "t0")
    where: list[str] = []
    if "$filter" in opts:
        where.append(comp.expr(parse_filter(opts["$filter"]), scope))
    groups: list[tuple[str, str, Any]] = []  # (sql, output name, attribute)
    aggs: list[tuple[str, str, Any]] = []
    for step in split_top(opts["$apply"], "/"):
        flt = _call(step, "filter")
        if flt is not None:
            where.append(comp.expr(parse_filter(flt), scope))
            continue
        grp = _call(step, "groupby")
        if grp is not None:
            args = split_top(grp, ",")
            if not args or not (args[0].startswith("(") and args[0].endswith(")")):
                raise errors.bad_request("Invalid groupby: the grouping properties must be in parentheses.", "0x0")
            for name in split_top(args[0][1:-1], ","):
                sql, attr = comp.path_sql(Property(tuple(name.split("/"))), scope)
                if attr.type == "DateTime":
                    raise errors.bad_request("The groupby on a datetime attribute is not supported.", "0x0")
                out = name if "/" not in name else f"{attr.entity}_{name.split('/')[-1]}"
                groups.append((sql, out, attr))
            for extra in args[1:]:
                inner = _call(extra, "aggregate")
                if inner is None:
                    raise errors.bad_request(f"Unsupported groupby argument '{extra}'.", "0x0")
                aggs += _aggregates(comp, scope, inner)
            continue
        agg = _call(step, "aggregate")
        if agg is not None:
            aggs += _aggregates(comp, scope, agg)
            continue
        raise errors.bad_request(f"The $apply transformation '{step}' is not supported.", "0x0")
    frm = f" FROM {q(table.logical_name)} t0" + (f" WHERE {' AND '.join(where)}" if where else "")
    params = list(comp.params)
    n = api.store.scalar(f"SELECT COUNT(*) FROM (SELECT 1{frm} LIMIT {AGGREGATE_LIMIT + 1})", params)
    if int(n) > AGGREGATE_LIMIT:
        raise errors.DataverseError(
            400, "0x8004E023", "The maximum record limit is exceeded. Reduce the number of records."
        )
    cols = [f"{s} AS {q(o)}" for s, o, _ in groups + aggs]
    sql = f"SELECT {', '.join(cols)}{frm}"
    if groups:
        sql += " GROUP BY " + ", ".join(s for s, _, _ in groups) + " ORDER BY " + ", ".join(s for s, _, _ in groups)
    rows = api.store.query(sql, params)
    ann = ctx.annotations
    value = []
    for r in rows:
        out: dict[str, Any] = {}
        for _, name, attr in groups:
            v = r[name]
            if v is not None and ann and ann.wants(FORMATTED):
                f = formatted(attr, v)
                if f is not None:
                    out[f"{name}@{FORMATTED}"] = f
            out[name] = json_value(attr, v)
        for _, name, _ in aggs:
            out[name] = r[name]
        value.append(out)
    names = ",".join(o for _, o, _ in groups + aggs)
    api.apply_annotation_pref(ctx)
    return api.json({"@odata.context": f"{ctx.api}/$metadata#{table.entity_set}({names})", "value": value})


def api_compiler(api: RecordApi, ctx: Ctx) -> Any:
    """A filter compiler bound to the caller (for ``eq-userid`` style functions)."""
    from .query import Compiler

    return Compiler(api.tables, api.rels, api.emu.clock, ctx.user["systemuserid"], ctx.user["businessunitid"])


def _aggregates(comp: Any, scope: Scope, text: str) -> list[tuple[str, str, Any]]:
    out = []
    for item in split_top(text, ","):
        m = COUNT_RE.match(item)
        if m:
            out.append(("COUNT(*)", m.group(1), None))
            continue
        m = ITEM_RE.match(item)
        if not m:
            raise errors.bad_request(f"Invalid aggregate expression '{item}'.", "0x0")
        prop, method, alias = m.groups()
        if method not in METHODS:
            raise errors.bad_request(f"The aggregation method '{method}' is not supported.", "0x0")
        sql, attr = comp.path_sql(Property(tuple(prop.split("/"))), scope)
        tpl = METHODS[method]
        out.append((f"COUNT(DISTINCT {sql})" if tpl is None else tpl.format(sql), alias, attr))
    return out
