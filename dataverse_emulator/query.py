"""Compile the OData AST from ``odata.py`` into SQLite SQL over the emulator's storage.

Why SQL rather than filtering rows in Python: large seeded tables must page quickly, and SQLite's NOCASE collation
already gives Dataverse's case-insensitive string comparison. Wildcards (``contains``/``startswith``/``endswith``)
go through a registered ``dv_match`` function fed by ``odata.wildcard_to_regex`` because SQLite's LIKE has no
``[...]`` classes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import errors
from .model import Attribute, Relationship, Table
from .odata import (
    Call,
    Compare,
    DataverseFunction,
    Expr,
    Lambda,
    Literal,
    Logical,
    Not,
    OrderItem,
    Property,
    wildcard_to_regex,
)
from .storage import q, type_col

OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def fmt_dt(value: dt.datetime) -> str:
    """Canonical storage form of a datetime: UTC, second precision, ``Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Scope:
    """Where property paths resolve: the table and SQL alias, plus lambda variables in scope."""

    table: Table
    alias: str
    vars: dict[str, tuple[Table, str]] = field(default_factory=dict)


class Compiler:
    """Turns filter/orderby ASTs into SQL fragments with positional parameters."""

    def __init__(
        self,
        tables: dict[str, Table],
        relationships: list[Relationship],
        clock: Callable[[], float],
        user_id: str | None = None,
        business_unit_id: str | None = None,
    ) -> None:
        self.tables = tables
        self.rels = relationships
        self.clock = clock
        self.user_id = user_id
        self.business_unit_id = business_unit_id
        self.params: list[Any] = []
        self._n = 0

    def alias(self) -> str:
        """A fresh SQL table alias for subqueries."""
        self._n += 1
        return f"t{self._n}"

    # -- navigation -------------------------------------------------------------------------------------------------

    def single_nav(self, table: Table, nav: str) -> Relationship | None:
        """The relationship behind a single-valued navigation property of ``table``."""
        for r in self.rels:
            if r.referencing_entity == table.logical_name and r.referencing_nav == nav:
                return r
        return None

    def collection_nav(self, table: Table, nav: str) -> Relationship | None:
        """The relationship behind a collection-valued navigation property of ``table``."""
        for r in self.rels:
            if r.referenced_nav == nav and (
                r.referenced_entity == table.logical_name
                or (r.referenced_entity == "owner" and table.logical_name in ("systemuser", "team"))
            ):
                return r
        return None

    def column(self, table: Table, name: str) -> tuple[str, Attribute]:
        """SQL column name and attribute for a property name (``_x_value`` maps to the lookup column)."""
        if name.startswith("_") and name.endswith("_value"):
            a = table.attributes.get(name[1:-6])
            if a is not None and a.is_lookup:
                return a.name, a
        else:
            a = table.attributes.get(name)
            if a is not None and not a.is_lookup:
                return a.name, a
        raise errors.unknown_property(name, table.logical_name)

    def path_sql(self, prop: Property, scope: Scope) -> tuple[str, Attribute]:
        """SQL for a property path (lookup paths become correlated subqueries)."""
        table, alias = scope.table, scope.alias
        if prop.var is not None:
            if prop.var not in scope.vars:
                raise errors.bad_request(f"Could not find a property named '{prop.var}'.", "0x0")
            table, alias = scope.vars[prop.var]
        if len(prop.path) - 1 + len(scope.vars) > errors.MAX_LINK_ENTITIES:
            raise errors.too_many_link_entities()
        return self._path(list(prop.path), table, alias)

    def _path(self, path: list[str], table: Table, alias: str) -> tuple[str, Attribute]:
        if len(path) == 1:
            col, attr = self.column(table, path[0])
            return f"{alias}.{q(col)}", attr
        rel = self.single_nav(table, path[0])
        if rel is None:
            raise errors.unknown_property(path[0], table.logical_name)
        target = self.tables["systemuser" if rel.referenced_entity == "owner" else rel.referenced_entity]
        a2 = self.alias()
        inner, attr = self._path(path[1:], target, a2)
        cond = f"{a2}.{q(target.primary_id)} = {alias}.{q(rel.referencing_attribute)}"
        return f"(SELECT {inner} FROM {q(target.logical_name)} {a2} WHERE {cond})", attr

    # -- values -----------------------------------------------------------------------------------------------------

    def value(self, lit: Literal, attr: Attribute | None) -> Any:
        """A literal converted to the stored form of the column it is compared with."""
        v = lit.value
        if v is None:
            return None
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, uuid.UUID):
            return str(v)
        if isinstance(v, dt.datetime):
            return fmt_dt(v)
        if isinstance(v, dt.date):
            return v.isoformat()
        if isinstance(v, Decimal):
            return float(v)
        if attr is not None and isinstance(v, str):
            if attr.type in ("Integer", "BigInt", "Picklist", "State", "Status"):
                try:
                    return int(v)
                except ValueError:
                    raise errors.bad_request(f"Invalid value '{v}' for property '{attr.name}'.", "0x80040203") from None
            if attr.type in ("Money", "Decimal", "Double"):
                return float(v)
            if attr.type == "Boolean":
                return 1 if v.lower() in ("true", "1") else 0
            if attr.is_lookup or attr.type == "Uniqueidentifier":
                return v.lower()
        return v

    def operand(self, e: Expr, scope: Scope, other: Attribute | None) -> tuple[str, Attribute | None]:
        """SQL for one side of a comparison."""
        if isinstance(e, Property):
            return self.path_sql(e, scope)
        if isinstance(e, Literal):
            self.params.append(self.value(e, other))
            return "?", None
        if isinstance(e, Call) and e.name in ("tolower", "toupper"):
            inner, attr = self.operand(e.args[0], scope, other)
            return f"{'lower' if e.name == 'tolower' else 'upper'}({inner})", attr
        return self.expr(e, scope), None

    # -- expressions ------------------------------------------------------------------------------------------------

    def expr(self, e: Expr, scope: Scope) -> str:
        """SQL for a boolean expression."""
        if isinstance(e, Logical):
            return self._balanced([self.expr(x, scope) for x in e.operands], f" {e.op.upper()} ")
        if isinstance(e, Not):
            return f"(NOT {self.expr(e.operand, scope)})"
        if isinstance(e, Compare):
            return self.compare(e, scope)
        if isinstance(e, Call):
            return self.call(e, scope)
        if isinstance(e, DataverseFunction):
            return self.function(e, scope)
        if isinstance(e, Lambda):
            return self.lambda_(e, scope)
        if isinstance(e, Property):
            sql, _ = self.path_sql(e, scope)
            return f"({sql} = 1)"
        if isinstance(e, Literal):
            return "1" if e.value else "0"
        raise errors.bad_request("The query is not supported.")

    def _balanced(self, parts: list[str], op: str) -> str:
        """Join as a balanced tree: SQLite caps expression depth at 1000, and 32 KB URLs hold long ``or`` chains."""
        if len(parts) <= 8:
            return "(" + op.join(parts) + ")"
        mid = len(parts) // 2
        return "(" + self._balanced(parts[:mid], op) + op + self._balanced(parts[mid:], op) + ")"

    def compare(self, e: Compare, scope: Scope) -> str:
        """SQL for a comparison; ``eq null``/``ne null`` become IS [NOT] NULL."""
        left_attr = self.path_sql(e.left, scope)[1] if isinstance(e.left, Property) else None
        right_attr = self.path_sql(e.right, scope)[1] if isinstance(e.right, Property) else None
        # compile left then right so params stay in order
        if isinstance(e.right, Literal) and e.right.value is None and e.op in ("eq", "ne"):
            left, _ = self.operand(e.left, scope, None)
            return f"({left} IS {'NOT ' if e.op == 'ne' else ''}NULL)"
        if isinstance(e.left, Literal) and e.left.value is None and e.op in ("eq", "ne"):
            right, _ = self.operand(e.right, scope, None)
            return f"({right} IS {'NOT ' if e.op == 'ne' else ''}NULL)"
        left, _ = self.operand(e.left, scope, right_attr)
        right, _ = self.operand(e.right, scope, left_attr)
        return f"({left} {OPS[e.op]} {right})"

    def call(self, e: Call, scope: Scope) -> str:
        """SQL for contains/startswith/endswith through the Dataverse wildcard matcher."""
        if e.name in ("contains", "startswith", "endswith"):
            target, pattern = e.args
            col, _ = self.operand(target, scope, None)
            if not isinstance(pattern, Literal) or not isinstance(pattern.value, str):
                raise errors.bad_request(f"The '{e.name}' function requires a string literal.", "0x0")
            self.params.append(wildcard_to_regex(pattern.value, e.name).pattern)
            return f"(dv_match(?, {col}) = 1)"
        raise errors.bad_request(f"An unknown function with name '{e.name}' was found.", "0x0")

    def function(self, f: DataverseFunction, scope: Scope) -> str:
        """SQL for a ``Microsoft.Dynamics.CRM.*`` query function."""
        col, attr = self.path_sql(Property((f.property,)), scope)
        vals = [self.value(v, attr) for v in f.values]
        name = f.name
        if name in ("In", "NotIn"):
            self.params.extend(vals)
            return f"({col} {'NOT ' if name == 'NotIn' else ''}IN ({', '.join('?' * len(vals))}))"
        if name in ("Between", "NotBetween"):
            self.params.extend(vals[:2])
            return f"({col} {'NOT ' if name == 'NotBetween' else ''}BETWEEN ? AND ?)"
        if name in ("EqualUserId", "NotEqualUserId"):
            self.params.append(self.user_id)
            return f"({col} {'=' if name == 'EqualUserId' else '<>'} ?)"
        if name in ("EqualBusinessId", "NotEqualBusinessId"):
            self.params.append(self.business_unit_id)
            return f"({col} {'=' if name == 'EqualBusinessId' else '<>'} ?)"
        rng = self.date_range(name, vals)
        if rng is None:
            raise errors.bad_request(
                f"The query function Microsoft.Dynamics.CRM.{name} is not supported by the emulator."
            )
        lo, hi = rng
        conds = []
        if lo is not None:
            conds.append(f"{col} >= ?")
            self.params.append(fmt_dt(lo))
        if hi is not None:
            conds.append(f"{col} < ?")
            self.params.append(fmt_dt(hi))
        return "(" + " AND ".join(conds) + ")"

    def date_range(self, name: str, vals: list[Any]) -> tuple[dt.datetime | None, dt.datetime | None] | None:
        """UTC [lo, hi) for the date query functions (the emulator's users live in UTC)."""
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        day = dt.timedelta(days=1)
        n = int(vals[0]) if vals and str(vals[0]).lstrip("-").isdigit() else 0

        def on(v: Any) -> dt.datetime:
            d = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
            d = d if d.tzinfo else d.replace(tzinfo=dt.UTC)
            return d.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)

        month0 = today.replace(day=1)
        next_month = (month0 + dt.timedelta(days=32)).replace(day=1)
        table: dict[str, Callable[[], tuple[dt.datetime | None, dt.datetime | None]]] = {
            "Today": lambda: (today, today + day),
            "Yesterday": lambda: (today - day, today),
            "Tomorrow": lambda: (today + day, today + 2 * day),
            "Last7Days": lambda: (now - 7 * day, now),
            "Next7Days": lambda: (now, now + 7 * day),
            "LastXHours": lambda: (now - dt.timedelta(hours=n), now),
            "NextXHours": lambda: (now, now + dt.timedelta(hours=n)),
            "LastXDays": lambda: (today - n * day, now),
            "NextXDays": lambda: (now, today + (n + 1) * day),
            "LastXWeeks": lambda: (today - 7 * n * day, now),
            "NextXWeeks": lambda: (now, today + (7 * n + 1) * day),
            "OlderThanXMinutes": lambda: (None, now - dt.timedelta(minutes=n)),
            "OlderThanXHours": lambda: (None, now - dt.timedelta(hours=n)),
            "OlderThanXDays": lambda: (None, today - n * day),
            "OlderThanXWeeks": lambda: (None, today - 7 * n * day),
            "ThisMonth": lambda: (month0, next_month),
            "ThisYear": lambda: (today.replace(month=1, day=1), today.replace(year=today.year + 1, month=1, day=1)),
            "On": lambda: (on(vals[0]), on(vals[0]) + day),
            "NotOn": lambda: (None, None),
            "OnOrAfter": lambda: (on(vals[0]), None),
            "OnOrBefore": lambda: (None, on(vals[0]) + day),
        }
        fn = table.get(name)
        if fn is None or name == "NotOn":
            return None
        return fn()

    def lambda_(self, e: Lambda, scope: Scope) -> str:
        """SQL for ``any``/``all`` over a collection navigation property (EXISTS / NOT EXISTS)."""
        rel = self.collection_nav(scope.table, e.nav.path[-1]) if len(e.nav.path) == 1 else None
        if rel is None:
            raise errors.unknown_property(".".join(e.nav.path), scope.table.logical_name)
        if len(scope.vars) >= errors.MAX_LINK_ENTITIES:
            raise errors.too_many_link_entities()
        child = self.tables[rel.referencing_entity]
        a = self.alias()
        cond = f"{a}.{q(rel.referencing_attribute)} = {scope.alias}.{q(scope.table.primary_id)}"
        if len(child.attributes[rel.referencing_attribute].targets) > 1:
            cond += f" AND {a}.{q(type_col(rel.referencing_attribute))} = '{scope.table.logical_name}'"
        if e.body is None:
            return f"EXISTS (SELECT 1 FROM {q(child.logical_name)} {a} WHERE {cond})"
        inner = Scope(scope.table, scope.alias, {**scope.vars, str(e.var): (child, a)})
        body = self.expr(e.body, inner)
        if e.kind == "any":
            return f"EXISTS (SELECT 1 FROM {q(child.logical_name)} {a} WHERE {cond} AND {body})"
        return f"NOT EXISTS (SELECT 1 FROM {q(child.logical_name)} {a} WHERE {cond} AND NOT {body})"

    def orderby(self, items: tuple[OrderItem, ...], scope: Scope) -> list[str]:
        """ORDER BY terms for ``$orderby``."""
        out = []
        for it in items:
            sql, _ = self.path_sql(it.property, scope)
            out.append(f"{sql} {'DESC' if it.descending else 'ASC'}")
        return out
