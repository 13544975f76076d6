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

# ---------------------------------------------------------------------------------------------------------------------
# Lexer

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_GUID_RE = re.compile(_GUID + r"(?![\w.-])")
_DATETIME_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}(?::\d{2}(?:\.\d{1,12})?)?)(Z|z|[+-]\d{2}:\d{2})?(?![\w.:-])"
)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\w.:-])")
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?([mMlLdDfF])?(?![\w.])")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ALIAS_RE = re.compile(r"@[A-Za-z_][A-Za-z0-9_]*")
_SIMPLE_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PUNCT = {"(": "LPAREN", ")": "RPAREN", ",": "COMMA", "/": "SLASH", ":": "COLON", "=": "EQUALS"}

_COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
_ARITHMETIC = ("add", "sub", "mul", "div", "mod")
_OP_KIND = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual", "lt": "LessThan"}
_OP_KIND["le"] = "LessThanOrEqual"
_STRING_FUNCTIONS = {"contains": 2, "startswith": 2, "endswith": 2, "tolower": 1, "toupper": 1}


@dataclass(frozen=True)
class _Token:
    kind: str  # IDENT, STRING, LITERAL, ALIAS, ARRAY, LPAREN, RPAREN, COMMA, SLASH, COLON, EQUALS, END
    text: str
    pos: int
    value: object = None


def _syntax(text: str, pos: int) -> ODataSyntaxError:
    return ODataSyntaxError(f"Syntax error at position {pos} in '{text}'.", pos)


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read an OData single-quoted string starting at ``start`` (the quote); return (value, end offset)."""
    out: list[str] = []
    i = start + 1
    while True:
        j = text.find("'", i)
        if j < 0:
            raise ODataSyntaxError(f"There is an unterminated literal at position {len(text)} in '{text}'.", len(text))
        out.append(text[i:j])
        if j + 1 < len(text) and text[j + 1] == "'":
            out.append("'")
            i = j + 2
            continue
        return "".join(out), j + 1


def _read_json_array(text: str, start: int) -> tuple[tuple[Literal, ...], int]:
    """Read a JSON array as ODataLib's JSON reader does (double- or single-quoted strings, numbers, literals)."""
    items: list[Literal] = []
    i = start + 1
    n = len(text)

    def skip_ws(k: int) -> int:
        while k < n and text[k] in " \t\r\n":
            k += 1
        return k

    comma_msg = (
        "Invalid JSON. A comma character ',' was expected in scope 'Array'. Every two elements in an array and "
        "properties of an object must be separated by commas."
    )
    i = skip_ws(i)
    if i < n and text[i] == "]":
        return (), i + 1
    while True:
        i = skip_ws(i)
        if i >= n:
            raise ODataSyntaxError("Invalid JSON. Unexpected end of input was found in JSON content.", i)
        ch = text[i]
        if ch in "\"'":
            buf: list[str] = []
            k = i + 1
            while True:
                if k >= n:
                    raise ODataSyntaxError(
                        "Invalid JSON. Unexpected end of input reached while processing a JSON string value.", k
                    )
                c = text[k]
                if c == ch:
                    break
                if c == "\\" and k + 1 < n:
                    esc = text[k + 1]
                    if esc == "u" and k + 5 < n + 0:
                        buf.append(chr(int(text[k + 2 : k + 6], 16)))
                        k += 6
                        continue
                    buf.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}.get(esc, esc))
                    k += 2
                    continue
                buf.append(c)
                k += 1
            items.append(Literal("".join(buf), "Edm.String"))
            i = k + 1
        else:
            m = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null").match(text, i)
            if not m:
                raise ODataSyntaxError(
                    f"Invalid JSON. Unexpected token '{text[i]}' was found in JSON content at position {i}.", i
                )
            items.append(_number_or_keyword(m.group(0)))
            i = m.end()
        i = skip_ws(i)
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] == "]":
            return tuple(items), i + 1
        raise ODataSyntaxError(comma_msg, i)


def _number_or_keyword(word: str) -> Literal:
    if word == "true":
        return Literal(True, "Edm.Boolean")
    if word == "false":
        return Literal(False, "Edm.Boolean")
    if word == "null":
        return Literal(None, "null")
    return _number(word)


def _number(word: str) -> Literal:
    suffix = word[-1] if word[-1] in "mMlLdDfF" else ""
    body = word[:-1] if suffix else word
    if suffix in ("d", "D", "f", "F") or ("e" in body.lower()):
        return Literal(float(body), "Edm.Double" if suffix not in ("f", "F") else "Edm.Single")
    if suffix in ("m", "M") or "." in body:
        return Literal(Decimal(body), "Edm.Decimal")
    value = int(body)
    if suffix in ("l", "L") or not -(2**31) <= value < 2**31:
        return Literal(value, "Edm.Int64")
    return Literal(value, "Edm.Int32")


def _datetime_literal(date_part: str, time_part: str, offset: str | None) -> Literal:
    if "." in time_part:
        head, frac = time_part.split(".")
        time_part = f"{head}.{(frac + '000000')[:6]}"
    if offset in (None, "Z", "z"):
        offset = "+00:00"  # a missing offset is read as UTC (guess: ODataLib would refuse it)
    return Literal(dt.datetime.fromisoformat(f"{date_part}T{time_part}{offset}"), "Edm.DateTimeOffset")


def _tokenize(text: str, *, allow_arrays: bool = False) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if ch in _PUNCT:
            tokens.append(_Token(_PUNCT[ch], ch, i))
            i += 1
            continue
        if ch == "'":
            value, end = _read_quoted(text, i)
            tokens.append(_Token("STRING", text[i:end], i, Literal(value, "Edm.String")))
            i = end
            continue
        if ch == "[" and allow_arrays:
            values, end = _read_json_array(text, i)
            tokens.append(_Token("ARRAY", text[i:end], i, values))
            i = end
            continue
        if ch == "@":
            m = _ALIAS_RE.match(text, i)
            if not m:
                raise ODataSyntaxError(f"Syntax error: character '@' is not valid at position {i} in '{text}'.", i)
            tokens.append(_Token("ALIAS", m.group(0), i))
            i = m.end()
            continue
        m = _GUID_RE.match(text, i)
        if m:
            tokens.append(_Token("LITERAL", m.group(0), i, Literal(uuid.UUID(m.group(0)), "Edm.Guid")))
            i = m.end()
            continue
        m = _DATETIME_RE.match(text, i)
        if m:
            try:
                lit = _datetime_literal(m.group(1), m.group(2), m.group(3))
            except ValueError:
                raise ODataSyntaxError(
                    f"Unrecognized 'Edm.DateTimeOffset' literal '{m.group(0)}' at '{i}' in '{text}'.", i
                ) from None
            tokens.append(_Token("LITERAL", m.group(0), i, lit))
            i = m.end()
            continue
        m = _DATE_RE.match(text, i)
        if m:
            try:
                date_lit = Literal(dt.date.fromisoformat(m.group(0)), "Edm.Date")
            except ValueError:
                raise ODataSyntaxError(
                    f"Unrecognized 'Edm.Date' literal '{m.group(0)}' at '{i}' in '{text}'.", i
                ) from None
            tokens.append(_Token("LITERAL", m.group(0), i, date_lit))
            i = m.end()
            continue
        m = _NUMBER_RE.match(text, i)
        if m:
            tokens.append(_Token("LITERAL", m.group(0), i, _number(m.group(0))))
            i = m.end()
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            word = m.group(0)
            end = m.end()
            if end < n and text[end] == "'":  # typed literal: Namespace.EnumType'Member'
                value, end2 = _read_quoted(text, end)
                if "." not in word:
                    raise ODataSyntaxError(f"Unrecognized '{word}' literal '{text[i:end2]}' at '{i}' in '{text}'.", i)
                tokens.append(_Token("LITERAL", text[i:end2], i, Literal(value, word)))
                i = end2
                continue
            if word in ("true", "false", "null"):
                tokens.append(_Token("LITERAL", word, i, _number_or_keyword(word)))
            else:
                tokens.append(_Token("IDENT", word, i))
            i = end
            continue
        raise ODataSyntaxError(f"Syntax error: character '{ch}' is not valid at position {i} in '{text}'.", i)
    tokens.append(_Token("END", "", n))
    return tokens


# ---------------------------------------------------------------------------------------------------------------------
# Parser


_BOOLEAN_NODES = (Compare, Logical, Not, Call, DataverseFunction, Lambda)


def _edm_of(node: Expr) -> str | None:
    """Best-effort static type of a node (None when it depends on metadata)."""
    if isinstance(node, Literal):
        return None if node.edm_type == "null" else node.edm_type
    if isinstance(node, Call):
        return "Edm.String" if node.name in ("tolower", "toupper") else "Edm.Boolean"
    if isinstance(node, _BOOLEAN_NODES):
        return "Edm.Boolean"
    return None


class _Parser:
    def __init__(self, text: str, aliases: Mapping[str, str] | None, *, in_alias: bool = False) -> None:
        self.text = text
        self.aliases = aliases or {}
        self.in_alias = in_alias
        self.tokens = _tokenize(text, allow_arrays=True)
        self.i = 0
        self.lambda_vars: list[str] = []

    # token helpers
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def peek(self, k: int = 1) -> _Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        t = self.tokens[self.i]
        if t.kind != "END":
            self.i += 1
        return t

    def error(self, tok: _Token | None = None) -> ODataSyntaxError:
        t = tok or self.tok
        if t.kind == "END":
            return ODataSyntaxError(f"Expression expected at position {t.pos} in '{self.text}'.", t.pos)
        return _syntax(self.text, t.pos)

    def expect(self, kind: str, what: str) -> _Token:
        if self.tok.kind != kind:
            raise ODataSyntaxError(f"{what} expected at position {self.tok.pos} in '{self.text}'.", self.tok.pos)
        return self.advance()

    def is_word(self, word: str) -> bool:
        return self.tok.kind == "IDENT" and self.tok.text == word

    def finish(self) -> None:
        if self.tok.kind != "END":
            raise _syntax(self.text, self.tok.pos)

    # grammar
    def parse_expr(self) -> Expr:
        return self.parse_logical("or")

    def parse_logical(self, op: str) -> Expr:
        first = self.parse_logical("and") if op == "or" else self.parse_comparison()
        operands = [first]
        while self.is_word(op):
            tok = self.advance()
            operand = self.parse_logical("and") if op == "or" else self.parse_comparison()
            for side in (operands[-1], operand):
                kind = _edm_of(side)
                if kind not in (None, "Edm.Boolean"):
                    raise ODataSyntaxError(
                        f"A binary operator with incompatible types was detected. Found operand types '{kind}' and "
                        f"'Edm.Boolean' for operator kind '{op.capitalize()}'.",
                        tok.pos,
                    )
            operands.append(operand)
        if len(operands) == 1:
            return first
        return Logical(op, tuple(operands))

    def parse_comparison(self) -> Expr:
        left = self.parse_unary()
        while self.tok.kind == "IDENT" and self.tok.text in _COMPARISONS + _ARITHMETIC:
            tok = self.advance()
            if tok.text in _ARITHMETIC:
                raise ODataSyntaxError(f"The '{tok.text}' arithmetic operator is not supported.", tok.pos)
            right = self.parse_unary()
            lt, rt = _edm_of(left), _edm_of(right)
            if lt and rt and lt != rt and "Edm.Boolean" in (lt, rt):
                raise ODataSyntaxError(
                    f"A binary operator with incompatible types was detected. Found operand types '{lt}' and "
                    f"'{rt}' for operator kind '{_OP_KIND[tok.text]}'.",
                    tok.pos,
                )
            left = Compare(tok.text, left, right)
        return left

    def parse_unary(self) -> Expr:
        if self.is_word("not"):
            tok = self.advance()
            operand = self.parse_unary()
            kind = _edm_of(operand)
            if kind not in (None, "Edm.Boolean"):
                raise ODataSyntaxError(
                    "A unary operator with an incompatible type was detected. Found operand type "
                    f"'{kind}' for operator kind 'Not'.",
                    tok.pos,
                )
            return Not(operand)
        return self.parse_primary()

    def parse_primary(self) -> Expr:
        tok = self.tok
        if tok.kind == "LPAREN":
            self.advance()
            inner = self.parse_expr()
            self.expect("RPAREN", "')' or operator")
            return inner
        if tok.kind in ("STRING", "LITERAL"):
            self.advance()
            assert isinstance(tok.value, Literal)
            return tok.value
        if tok.kind == "ALIAS":
            self.advance()
            return self.resolve_alias(tok)
        if tok.kind == "IDENT":
            if "." in tok.text:
                return self.parse_qualified()
            if self.peek().kind == "LPAREN":
                return self.parse_call()
            return self.parse_path()
        raise self.error()

    def resolve_alias(self, tok: _Token) -> Expr:
        if self.in_alias:
            raise _syntax(self.text, tok.pos)
        raw = self.aliases.get(tok.text)
        if raw is None:
            return Literal(None, "null")  # an unassigned alias is null (documented)
        sub = _Parser(raw, self.aliases, in_alias=True)
        sub.lambda_vars = self.lambda_vars
        node = sub.parse_expr()
        sub.finish()
        return node

    def parse_call(self) -> Expr:
        name_tok = self.advance()
        name = name_tok.text
        if name not in _STRING_FUNCTIONS:
            raise ODataSyntaxError(
                f"An unknown function with name '{name}' was found. This may also be a function import or a key "
                "lookup on a navigation property, which is not allowed.",
                name_tok.pos,
            )
        self.expect("LPAREN", "'('")
        args: list[Expr] = []
        if self.tok.kind != "RPAREN":
            args.append(self.parse_expr())
            while self.tok.kind == "COMMA":
                self.advance()
                args.append(self.parse_expr())
        self.expect("RPAREN", "')' or ','")
        if len(args) != _STRING_FUNCTIONS[name]:
            raise ODataSyntaxError(
                f"No function signature for the function with name '{name}' matches the specified arguments. "
                "The function signatures considered are: "
                + (
                    f"{name}(Edm.String Nullable=true, Edm.String Nullable=true)."
                    if _STRING_FUNCTIONS[name] == 2
                    else f"{name}(Edm.String Nullable=true)."
                ),
                name_tok.pos,
            )
        for arg in args:
            kind = _edm_of(arg)
            if kind not in (None, "Edm.String"):
                raise ODataSyntaxError(
                    f"No function signature for the function with name '{name}' matches the specified arguments.",
                    name_tok.pos,
                )
        return Call(name, tuple(args))

    def parse_path(self) -> Expr:
        start = self.tok
        segments: list[str] = [self.advance().text]
        var: str | None = None
        if segments[0] in self.lambda_vars:
            var = segments.pop()
        elif segments[0].startswith("$"):
            raise _syntax(self.text, start.pos)
        while self.tok.kind == "SLASH":
            self.advance()
            seg = self.tok
            if seg.kind != "IDENT" or "." in seg.text:
                raise _syntax(self.text, seg.pos)
            self.advance()
            if seg.text in ("any", "all") and self.tok.kind == "LPAREN":
                if not segments:
                    raise _syntax(self.text, seg.pos)
                return self.parse_lambda(seg, Property(tuple(segments), var))
            segments.append(seg.text)
        return Property(tuple(segments), var)

    def parse_lambda(self, kind_tok: _Token, nav: Property) -> Expr:
        self.expect("LPAREN", "'('")
        if self.tok.kind == "RPAREN":
            self.advance()
            if kind_tok.text == "all":
                raise _syntax(self.text, self.tok.pos)
            return Lambda("any", nav, None, None)
        var_tok = self.tok
        if var_tok.kind != "IDENT" or not _SIMPLE_IDENT_RE.fullmatch(var_tok.text):
            raise _syntax(self.text, var_tok.pos)
        self.advance()
        self.expect("COLON", "':'")
        self.lambda_vars.append(var_tok.text)
        try:
            body = self.parse_expr()
        finally:
            self.lambda_vars.pop()
        self.expect("RPAREN", "')' or operator")
        return Lambda(kind_tok.text, nav, var_tok.text, body)

    def parse_qualified(self) -> Expr:
        tok = self.advance()
        namespace, _, name = tok.text.rpartition(".")
        if namespace != DATAVERSE_NAMESPACE or self.tok.kind != "LPAREN":
            if self.tok.kind == "LPAREN":
                raise ODataSyntaxError(
                    f"An unknown function with name '{tok.text}' was found. This may also be a function import or a "
                    "key lookup on a navigation property, which is not allowed.",
                    tok.pos,
                )
            raise _syntax(self.text, tok.pos)
        spec = DATAVERSE_FUNCTIONS.get(name)
        if spec is None:
            raise ODataSyntaxError(
                f"An unknown function with name '{tok.text}' was found. This may also be a function import or a "
                "key lookup on a navigation property, which is not allowed.",
                tok.pos,
            )
        self.advance()
        params: dict[str, str | Literal | tuple[Literal, ...]] = {}
        if self.tok.kind != "RPAREN":
            while True:
                pname = self.expect("IDENT", "Parameter name")
                self.expect("EQUALS", "'='")
                if pname.text in params:
                    raise ODataSyntaxError(f"Duplicate parameter '{pname.text}' in function '{tok.text}'.", pname.pos)
                params[pname.text] = self.parse_param_value()
                if self.tok.kind == "COMMA":
                    self.advance()
                    continue
                break
        self.expect("RPAREN", "')' or ','")
        return _build_function(name, spec, params, tok.pos)

    def parse_param_value(self) -> Literal | tuple[Literal, ...]:
        tok = self.advance()
        if tok.kind == "ARRAY":
            assert isinstance(tok.value, tuple)
            return tok.value
        if tok.kind in ("STRING", "LITERAL"):
            assert isinstance(tok.value, Literal)
            return tok.value
        if tok.kind == "ALIAS" and not self.in_alias:
            raw = self.aliases.get(tok.text)
            if raw is None:
                return Literal(None, "null")
            sub = _Parser(raw, self.aliases, in_alias=True)
            value = sub.parse_param_value()
            sub.finish()
            return value
        raise self.error(tok)


def _build_function(
    name: str, spec: FunctionSpec, params: dict[str, str | Literal | tuple[Literal, ...]], pos: int
) -> DataverseFunction:
    qualified = f"{DATAVERSE_NAMESPACE}.{name}"
    expected = {"PropertyName"} | {
        ParamShape.NONE: set(),
        ParamShape.ONE: {"PropertyValue"},
        ParamShape.TWO: {"PropertyValues"},
        ParamShape.LIST: {"PropertyValues"},
        ParamShape.PAIR: {"PropertyValue1", "PropertyValue2"},
    }[spec.shape]
    given = set(params)
    if given != expected:
        signature = ",".join(sorted(expected, key=lambda p: (p != "PropertyName", p)))
        raise ODataSyntaxError(
            f"The function '{qualified}' takes the parameters ({signature}); got ({','.join(params)}).", pos
        )
    prop = params["PropertyName"]
    if not isinstance(prop, Literal) or not isinstance(prop.value, str):
        raise ODataSyntaxError(f"The parameter 'PropertyName' of function '{qualified}' must be a string.", pos)
    values: tuple[Literal, ...] = ()
    if spec.shape is ParamShape.ONE:
        one = params["PropertyValue"]
        if not isinstance(one, Literal):
            raise ODataSyntaxError(f"The parameter 'PropertyValue' of function '{qualified}' must be a value.", pos)
        values = (one,)
    elif spec.shape is ParamShape.PAIR:
        pair = (params["PropertyValue1"], params["PropertyValue2"])
        if any(isinstance(p, tuple) for p in pair):
            raise ODataSyntaxError(f"The parameters of function '{qualified}' must be values.", pos)
        values = tuple(p for p in pair if isinstance(p, Literal))
    elif spec.shape in (ParamShape.TWO, ParamShape.LIST):
        many = params["PropertyValues"]
        if not isinstance(many, tuple):
            raise ODataSyntaxError(f"The parameter 'PropertyValues' of function '{qualified}' must be a list.", pos)
        if spec.shape is ParamShape.TWO and len(many) != 2:
            raise ODataSyntaxError(f"The function '{qualified}' requires exactly two values in PropertyValues.", pos)
        if not many:
            raise ODataSyntaxError(f"The function '{qualified}' requires at least one value in PropertyValues.", pos)
        values = many
    if spec.value_kind == "int":
        for v in values:
            if isinstance(v.value, bool) or not isinstance(v.value, int | str):
                raise ODataSyntaxError(f"The function '{qualified}' expects an integer value.", pos)
            try:
                int(str(v.value))
            except ValueError:
                raise ODataSyntaxError(f"The function '{qualified}' expects an integer value.", pos) from None
    params["PropertyName"] = prop.value
    return DataverseFunction(name, params, prop.value, values)


# ---------------------------------------------------------------------------------------------------------------------
# Public functions


def parse_filter(text: str, aliases: Mapping[str, str] | None = None) -> Expr:
    """Parse a ``$filter`` expression; ``aliases`` maps ``@p1`` (with the ``@``) to its raw query-string value.

    An alias that is used but not given is ``null`` (documented). Aliases may stand for literals, property paths
    (``$filter=@p1 ne @p3&@p1=revenue``) and Dataverse function parameters including JSON arrays.
    """
    if not text.strip():
        raise ODataSyntaxError(f"Expression expected at position 0 in '{text}'.", 0)
    parser = _Parser(text, aliases)
    node = parser.parse_expr()
    parser.finish()
    return node


def parse_orderby(text: str, aliases: Mapping[str, str] | None = None) -> tuple[OrderItem, ...]:
    """Parse ``$orderby`` (``revenue asc,name desc``); items are property paths, optionally through an alias."""
    parser = _Parser(text, aliases)
    items: list[OrderItem] = []
    while True:
        tok = parser.tok
        if tok.kind == "ALIAS":
            parser.advance()
            node = parser.resolve_alias(tok)
        elif tok.kind == "IDENT" and "." not in tok.text and parser.peek().kind != "LPAREN":
            node = parser.parse_path()
        else:
            raise parser.error()
        if not isinstance(node, Property):
            raise ODataSyntaxError(f"The $orderby expression must be a property path at position {tok.pos}.", tok.pos)
        descending = False
        if parser.is_word("asc") or parser.is_word("desc"):
            descending = parser.advance().text == "desc"
        items.append(OrderItem(node, descending))
        if parser.tok.kind == "COMMA":
            parser.advance()
            continue
        parser.finish()
        return tuple(items)


def _split_top(text: str, sep: str) -> list[tuple[str, int]]:
    """Split on ``sep`` outside parentheses, brackets and quoted strings; keep each part's offset."""
    parts: list[tuple[str, int]] = []
    depth = 0
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            _, i = _read_quoted(text, i)
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise _syntax(text, i)
        elif ch == sep and depth == 0:
            parts.append((text[start:i], start))
            start = i + 1
        i += 1
    if depth != 0:
        raise ODataSyntaxError(f"')' or ',' expected at position {len(text)} in '{text}'.", len(text))
    parts.append((text[start:], start))
    return parts


def parse_select(text: str) -> tuple[str, ...]:
    """Parse ``$select`` into validated identifiers (``*`` is allowed and kept as is)."""
    names: list[str] = []
    for part, offset in _split_top(text, ","):
        name = part.strip()
        if name != "*" and not _SIMPLE_IDENT_RE.fullmatch(name):
            if not name:
                raise _syntax(text, offset)
            raise ODataSyntaxError(f"Term '{name}' is not valid in a $select or $expand expression.", offset)
        names.append(name)
    return tuple(names)


_EXPAND_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$expand")


def parse_expand(text: str) -> tuple[ExpandItem, ...]:
    """Parse ``$expand`` with nested ``$select``, ``$filter``, ``$orderby``, ``$top``, ``$expand`` options separated by
    ``;``. Parameter aliases are not available inside ``$expand`` (documented)."""
    items: list[ExpandItem] = []
    for part, offset in _split_top(text, ","):
        raw = part.strip()
        paren = raw.find("(")
        head, options = (raw, "") if paren < 0 else (raw[:paren].strip(), raw[paren:])
        if options and not options.endswith(")"):
            raise _syntax(text, offset + len(part))
        ref = head.endswith("/$ref")
        nav = head[: -len("/$ref")] if ref else head
        if not _SIMPLE_IDENT_RE.fullmatch(nav):
            raise ODataSyntaxError(f"Term '{raw}' is not valid in a $select or $expand expression.", offset)
        kwargs: dict[str, object] = {}
        if options:
            inner = options[1:-1]
            for opt, opt_offset in _split_top(inner, ";"):
                name, eq, value = opt.strip().partition("=")
                name = name.strip()
                if not eq or not name:
                    raise _syntax(text, offset + paren + 1 + opt_offset)
                if name not in _EXPAND_OPTIONS:
                    raise ODataSyntaxError(f"The query option '{name}' is not supported inside $expand.", offset)
                key = name[1:]
                if key in kwargs:
                    raise ODataSyntaxError(f"Query option '{name}' was specified more than once.", offset)
                if name == "$select":
                    kwargs[key] = parse_select(value)
                elif name == "$filter":
                    kwargs[key] = parse_filter(value, {})
                elif name == "$orderby":
                    kwargs[key] = parse_orderby(value, {})
                elif name == "$top":
                    kwargs[key] = _parse_top(value)
                else:
                    kwargs[key] = parse_expand(value)
        items.append(ExpandItem(nav, ref=ref, **kwargs))  # type: ignore[arg-type]
    return tuple(items)


def _parse_top(value: str) -> int:
    value = value.strip()
    if not re.fullmatch(r"\d+", value):
        raise ODataSyntaxError(
            f"Invalid value '{value}' for $top query option found. The $top query option requires "
            "a non-negative integer value.",
            0,
        )
    return int(value)


def parse_key_predicate(text: str) -> uuid.UUID | dict[str, Literal]:
    """Parse the inside of ``entityset(...)``: a bare GUID, or ``col=value`` pairs (strings quoted with doubling,
    integers, decimals, GUIDs, booleans, dates). Parameter aliases are refused (documented)."""
    bad = ODataSyntaxError("Bad Request - Error in query syntax.", 0)
    try:
        tokens = _tokenize(text)
    except ODataSyntaxError:
        raise bad from None
    if len(tokens) == 2 and tokens[0].kind == "LITERAL" and isinstance(tokens[0].value, Literal):
        if tokens[0].value.edm_type == "Edm.Guid":
            assert isinstance(tokens[0].value.value, uuid.UUID)
            return tokens[0].value.value
        raise bad
    out: dict[str, Literal] = {}
    i = 0
    while True:
        name, eq, value = tokens[i : i + 3] if i + 3 <= len(tokens) else (tokens[-1],) * 3
        if name.kind != "IDENT" or "." in name.text or eq.kind != "EQUALS" or value.kind not in ("STRING", "LITERAL"):
            raise bad
        assert isinstance(value.value, Literal)
        if name.text in out or value.value.edm_type == "null" or "." in value.value.edm_type[4:]:
            raise bad
        out[name.text] = value.value
        i += 3
        if tokens[i].kind == "COMMA":
            i += 1
            continue
        if tokens[i].kind == "END":
            return out
        raise bad


def wildcard_to_regex(value: str, mode: TypingLiteral["contains", "startswith", "endswith"]) -> re.Pattern[str]:
    """Translate a Dataverse ``contains``/``startswith``/``endswith`` argument into a case-insensitive pattern to be
    used with ``fullmatch``, following T-SQL LIKE: ``%`` any run, ``_`` one character, ``[abc]`` / ``[a-f]`` a class,
    ``[^abc]`` a negated class, and a wildcard written in brackets is literal (``[%]``, ``[_]``, ``[[]``).

    Guesses: an unclosed ``[`` is taken literally; ``[]`` (nothing inside) is taken literally as ``[]``.
    """
    if mode not in ("contains", "startswith", "endswith"):
        raise ValueError(f"unknown mode {mode!r}")
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        elif ch == "[":
            close = value.find("]", i + 2)
            if i + 1 >= n or value[i + 1] == "]" or close < 0:
                out.append(re.escape(ch))
            else:
                out.append(_bracket_class(value[i + 1 : close]))
                i = close
        else:
            out.append(re.escape(ch))
        i += 1
    body = "".join(out)
    if mode in ("contains", "endswith"):
        body = ".*" + body
    if mode in ("contains", "startswith"):
        body = body + ".*"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def _bracket_class(content: str) -> str:
    negate = content.startswith("^") and len(content) > 1
    if negate:
        content = content[1:]
    parts: list[str] = []
    i = 0
    while i < len(content):
        if i + 2 < len(content) and content[i + 1] == "-":
            lo, hi = content[i], content[i + 2]
            if lo <= hi:
                parts.append(f"{re.escape(lo)}-{re.escape(hi)}")
            i += 3
            continue
        parts.append(re.escape(content[i]))
        i += 1
    if not parts:  # an empty or inverted range matches nothing (T-SQL), a negated one anything
        return "." if negate else "(?!)"
    return "[" + ("^" if negate else "") + "".join(parts) + "]"
