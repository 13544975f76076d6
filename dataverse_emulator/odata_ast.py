"""The OData query AST, its syntax error and the Dataverse query-function catalogue (shared by lexer, parser and
the SQL compiler)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeAlias

# ---------------------------------------------------------------------------------------------------------------------
# Errors


class ODataSyntaxError(ValueError):
    """A query option Dataverse would refuse with HTTP 400.

    ``message`` is the text for the Dataverse error body, ``position`` the 0-based offset in the option text where the
    problem was found (``None`` when not positional), ``code`` the Dataverse error code: ``0x0``, which Dataverse
    returns for errors raised by its OData URI parser (observed with "Could not find a property named ...").

    Wordings. Documented or observed on Dataverse: "There is an unterminated literal at position N in '...'." (doc
    filter-rows.md), "Invalid JSON. A comma character ',' was expected in scope 'Array'. ..." (doc filter-rows.md).
    Taken from Microsoft.OData.Core (the library behind Dataverse's Web API) but not observed on Dataverse itself:
    "Syntax error at position N in '...'.", "Syntax error: character 'c' is not valid at position N in '...'.",
    "Expression expected at position N in '...'.", "')' or ',' expected ...", "An unknown function with name '...'
    was found. ...", "A binary operator with incompatible types was detected. ...", "Term '...' is not valid in a
    $select or $expand expression.", "Bad Request - Error in query syntax." (key predicates). Guesses: the messages
    for wrong Dataverse function parameters, arithmetic operators, and options that are not allowed inside $expand.
    """

    def __init__(self, message: str, position: int | None = None, code: str = "0x0") -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.code = code


# ---------------------------------------------------------------------------------------------------------------------
# AST

EdmType: TypeAlias = str
"""``Edm.String``, ``Edm.Int32``, ``Edm.Int64``, ``Edm.Decimal``, ``Edm.Double``, ``Edm.Boolean``, ``Edm.Guid``,
``Edm.Date``, ``Edm.DateTimeOffset``, ``null``, or an enum type name (``Microsoft.Dynamics.CRM.OwnershipTypes``)."""

LiteralValue: TypeAlias = str | int | Decimal | float | bool | uuid.UUID | dt.date | dt.datetime | None


@dataclass(frozen=True)
class Literal:
    """A typed constant: ``'x'`` (str), ``42`` (int), ``1.5`` (Decimal), ``true``, ``null`` (None, edm_type ``null``),
    a bare GUID (uuid.UUID), ``2024-01-02`` (date), ``2024-01-02T03:04:05Z`` (aware datetime), or an enum member
    ``Ns.Type'Member'`` (str value, edm_type the enum type name)."""

    value: LiteralValue
    edm_type: EdmType


@dataclass(frozen=True)
class Property:
    """A property path such as ``name``, ``_parentcustomerid_value`` or ``primarycontactid/fullname`` (one segment per
    tuple item). ``var`` is the lambda variable the path starts from (``c`` in ``c/firstname``), else ``None``."""

    path: tuple[str, ...]
    var: str | None = None


@dataclass(frozen=True)
class Compare:
    """A comparison: ``op`` is one of ``eq ne gt ge lt le``."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Logical:
    """``and`` / ``or`` over two or more operands (chains of the same operator are flattened)."""

    op: str
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    """Logical negation."""

    operand: Expr


@dataclass(frozen=True)
class Call:
    """A canonical OData function call: ``contains``, ``startswith``, ``endswith`` (2 args), ``tolower``, ``toupper``
    (1 arg). ``name`` is lower case."""

    name: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class DataverseFunction:
    """A ``Microsoft.Dynamics.CRM.<name>(...)`` query function, validated against ``DATAVERSE_FUNCTIONS``.

    ``name`` is the canonical catalogue spelling (e.g. ``In``); ``params`` holds the named parameters as written
    (``PropertyName`` -> str, ``PropertyValue`` -> Literal, ``PropertyValues`` -> tuple of Literal; JSON array
    items keep their JSON type, so ``["0","1"]`` gives string literals); ``property`` and ``values`` are the normalised
    view: the column name and the values (empty for no-value functions)."""

    name: str
    params: Mapping[str, str | Literal | tuple[Literal, ...]]
    property: str
    values: tuple[Literal, ...] = ()


@dataclass(frozen=True)
class Lambda:
    """``nav/any(v: body)``, ``nav/all(v: body)``, or ``nav/any()`` (``var`` and ``body`` None): ``kind`` is ``any``
    or ``all``; ``nav`` the collection-valued navigation property path."""

    kind: str
    nav: Property
    var: str | None
    body: Expr | None


Expr: TypeAlias = Compare | Logical | Not | Literal | Property | Call | DataverseFunction | Lambda


@dataclass(frozen=True)
class OrderItem:
    """One ``$orderby`` item: a property path and its direction."""

    property: Property
    descending: bool = False


@dataclass(frozen=True)
class ExpandItem:
    """One ``$expand`` item: navigation property name and its nested options (``None`` when not given); ``ref`` is
    True for ``nav/$ref``."""

    nav: str
    select: tuple[str, ...] | None = None
    filter: Expr | None = None
    orderby: tuple[OrderItem, ...] | None = None
    top: int | None = None
    expand: tuple[ExpandItem, ...] = field(default_factory=tuple)
    ref: bool = False


# ---------------------------------------------------------------------------------------------------------------------
# Dataverse query function catalogue


class ParamShape(enum.Enum):
    """What a Dataverse query function takes besides ``PropertyName``."""

    NONE = "none"  # PropertyName only, e.g. Today
    ONE = "one"  # PropertyValue, e.g. LastXDays
    TWO = "two"  # PropertyValues with exactly two items, e.g. Between
    LIST = "list"  # PropertyValues with one or more items, e.g. In
    PAIR = "pair"  # PropertyValue1 and PropertyValue2, e.g. InFiscalPeriodAndYear


@dataclass(frozen=True)
class FunctionSpec:
    """Catalogue entry: parameter shape and the kind of value expected (``int``, ``datetime``, ``guid``, ``any``)."""

    shape: ParamShape
    value_kind: str = "any"


def _catalogue() -> dict[str, FunctionSpec]:
    none = FunctionSpec(ParamShape.NONE)
    out: dict[str, FunctionSpec] = {}
    for name in [
        "Today",
        "Tomorrow",
        "Yesterday",
        "Last7Days",
        "Next7Days",
        "LastWeek",
        "ThisWeek",
        "NextWeek",
        "LastMonth",
        "ThisMonth",
        "NextMonth",
        "LastYear",
        "ThisYear",
        "NextYear",
        "LastFiscalYear",
        "ThisFiscalYear",
        "NextFiscalYear",
        "LastFiscalPeriod",
        "ThisFiscalPeriod",
        "NextFiscalPeriod",
        "EqualUserId",
        "NotEqualUserId",
        "EqualBusinessId",
        "NotEqualBusinessId",
        "EqualUserLanguage",
        "EqualUserOrUserHierarchy",
        "EqualUserOrUserHierarchyAndTeams",
        "EqualUserOrUserTeams",
        "EqualUserTeams",
    ]:
        out[name] = none
    for name in [
        "LastXHours",
        "NextXHours",
        "LastXDays",
        "NextXDays",
        "LastXWeeks",
        "NextXWeeks",
        "LastXMonths",
        "NextXMonths",
        "LastXYears",
        "NextXYears",
        "OlderThanXMinutes",
        "OlderThanXHours",
        "OlderThanXDays",
        "OlderThanXWeeks",
        "OlderThanXMonths",
        "OlderThanXYears",
        "LastXFiscalYears",
        "NextXFiscalYears",
        "LastXFiscalPeriods",
        "NextXFiscalPeriods",
        "InFiscalYear",
        "InFiscalPeriod",
    ]:
        out[name] = FunctionSpec(ParamShape.ONE, "int")
    for name in ("On", "NotOn", "OnOrAfter", "OnOrBefore"):
        out[name] = FunctionSpec(ParamShape.ONE, "datetime")
    for name in ("Above", "AboveOrEqual", "Under", "UnderOrEqual", "NotUnder"):
        out[name] = FunctionSpec(ParamShape.ONE, "guid")
    for name in ("Between", "NotBetween"):
        out[name] = FunctionSpec(ParamShape.TWO)
    for name in ("In", "NotIn", "ContainValues", "DoesNotContainValues"):
        out[name] = FunctionSpec(ParamShape.LIST)
    for name in ("InFiscalPeriodAndYear", "InOrAfterFiscalPeriodAndYear", "InOrBeforeFiscalPeriodAndYear"):
        out[name] = FunctionSpec(ParamShape.PAIR, "int")
    return out


DATAVERSE_FUNCTIONS: Mapping[str, FunctionSpec] = _catalogue()
"""The ``Microsoft.Dynamics.CRM.*`` query functions usable in ``$filter`` (names are case-sensitive)."""

DATAVERSE_NAMESPACE = "Microsoft.Dynamics.CRM"
