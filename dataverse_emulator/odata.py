"""OData 4.0 query-option parser for the Dataverse emulator: ``$filter``, ``$orderby``, ``$select``, ``$expand`` and key
predicates, as Dataverse accepts them. Pure: it builds an AST and never touches SQL or the connector.

Why hand-written rather than ``odata-query`` (the library the design rule would prefer): odata-query 0.10 cannot
tokenise the exact form Microsoft's SDK emits (``Microsoft.Dynamics.CRM.In(PropertyName='x',PropertyValues=["0","1"])``
fails at ``[``), rejects parameter aliases, has no ``$expand``/``$select``/key-predicate parser, reports no positions
in Dataverse's wording, and pins ``python-dateutil<3`` which conflicts with the project lock (4.0.0).
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal as TypingLiteral
from typing import TypeAlias

__all__ = [
    "DATAVERSE_FUNCTIONS",
    "Call",
    "Compare",
    "DataverseFunction",
    "ExpandItem",
    "Expr",
    "FunctionSpec",
    "Lambda",
    "Literal",
    "Logical",
    "Not",
    "ODataSyntaxError",
    "OrderItem",
    "ParamShape",
    "Property",
    "parse_expand",
    "parse_filter",
    "parse_key_predicate",
    "parse_orderby",
    "parse_select",
    "wildcard_to_regex",
]

# ---------------------------------------------------------------------------------------------------------------------
# Errors


class ODataSyntaxError(ValueError):
    """A query option Dataverse would refuse with HTTP 400.

    ``message`` is the text for the Dataverse error body, ``position`` the 0-based offset in the option text where the
    problem was found (``None`` when not positional), ``code`` the Dataverse error code (``0x80060888``, the code
    Dataverse uses for OData URI parse errors).
    """

    def __init__(self, message: str, position: int | None = None, code: str = "0x80060888") -> None:
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


@dataclass(frozen=True)
class FunctionSpec:
    """Catalogue entry: parameter shape and the kind of value expected (``int``, ``datetime``, ``guid``, ``any``)."""

    shape: ParamShape
    value_kind: str = "any"


DATAVERSE_FUNCTIONS: Mapping[str, FunctionSpec] = {}


# ---------------------------------------------------------------------------------------------------------------------
# Public functions


def parse_filter(text: str, aliases: Mapping[str, str] | None = None) -> Expr:
    """Parse a ``$filter`` expression; ``aliases`` maps ``@p1`` (with the ``@``) to its raw query-string value."""
    raise NotImplementedError


def parse_orderby(text: str, aliases: Mapping[str, str] | None = None) -> tuple[OrderItem, ...]:
    """Parse ``$orderby`` (``revenue asc,name desc``)."""
    raise NotImplementedError


def parse_select(text: str) -> tuple[str, ...]:
    """Parse ``$select`` into validated identifiers."""
    raise NotImplementedError


def parse_expand(text: str) -> tuple[ExpandItem, ...]:
    """Parse ``$expand`` with nested ``$select``, ``$filter``, ``$orderby``, ``$top``, ``$expand`` options."""
    raise NotImplementedError


def parse_key_predicate(text: str) -> uuid.UUID | dict[str, Literal]:
    """Parse the inside of ``entityset(...)``: a bare GUID, or ``col=value`` pairs (strings quoted with doubling)."""
    raise NotImplementedError


def wildcard_to_regex(value: str, mode: TypingLiteral["contains", "startswith", "endswith"]) -> re.Pattern[str]:
    """Translate a Dataverse ``contains``/``startswith``/``endswith`` argument with T-SQL LIKE wildcards into a
    case-insensitive regular expression to be used with ``fullmatch``."""
    raise NotImplementedError
