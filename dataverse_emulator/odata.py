"""OData 4.0 query-option parser for the Dataverse emulator: ``$filter``, ``$orderby``, ``$select``, ``$expand`` and key
predicates, as Dataverse accepts them. Pure: it builds an AST and never touches SQL or the connector.

Why hand-written rather than ``odata-query`` (the library the design rule would prefer): odata-query 0.10 cannot
tokenise the exact form Microsoft's SDK emits (``Microsoft.Dynamics.CRM.In(PropertyName='x',PropertyValues=["0","1"])``
fails at ``[``), rejects parameter aliases, has no ``$expand``/``$select``/key-predicate parser, reports no positions
in Dataverse's wording, and pins ``python-dateutil<3`` which conflicts with the project lock (4.0.0).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Literal as TypingLiteral

from .odata_ast import (
    DATAVERSE_FUNCTIONS,
    Call,
    Compare,
    DataverseFunction,
    ExpandItem,
    Expr,
    FunctionSpec,
    Lambda,
    Literal,
    Logical,
    Not,
    ODataSyntaxError,
    OrderItem,
    ParamShape,
    Property,
)
from .odata_lexer import SIMPLE_IDENT_RE, read_quoted, syntax_error, tokenize
from .odata_parser import Parser

__all__ = [
    "DATAVERSE_FUNCTIONS",
    "EXPAND_LIMIT_MESSAGE",
    "MAX_EXPAND",
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
    "expand_count",
    "parse_expand",
    "parse_filter",
    "parse_key_predicate",
    "parse_orderby",
    "parse_select",
    "wildcard_to_regex",
]


# ---------------------------------------------------------------------------------------------------------------------
# Public functions


def parse_filter(text: str, aliases: Mapping[str, str] | None = None) -> Expr:
    """Parse a ``$filter`` expression; ``aliases`` maps ``@p1`` (with the ``@``) to its raw query-string value.

    An alias that is used but not given is ``null`` (documented). Aliases may stand for literals, property paths
    (``$filter=@p1 ne @p3&@p1=revenue``) and Dataverse function parameters including JSON arrays.
    """
    if not text.strip():
        raise ODataSyntaxError(f"Expression expected at position 0 in '{text}'.", 0)
    parser = Parser(text, aliases)
    node = parser.parse_expr()
    parser.finish()
    return node


def parse_orderby(text: str, aliases: Mapping[str, str] | None = None) -> tuple[OrderItem, ...]:
    """Parse ``$orderby`` (``revenue asc,name desc``); items are property paths, optionally through an alias."""
    parser = Parser(text, aliases)
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
            _, i = read_quoted(text, i)
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise syntax_error(text, i)
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
        if name != "*" and not SIMPLE_IDENT_RE.fullmatch(name):
            if not name:
                raise syntax_error(text, offset)
            raise ODataSyntaxError(f"Term '{name}' is not valid in a $select or $expand expression.", offset)
        names.append(name)
    return tuple(names)


_EXPAND_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$expand")


#: "A query can include up to 15 $expand options" (webapi/query/join-tables.md); nested ones count (GUESS).
MAX_EXPAND = 15
EXPAND_LIMIT_MESSAGE = f"The number of $expand options exceeds the limit of {MAX_EXPAND}."


def expand_count(items: tuple[ExpandItem, ...]) -> int:
    """Every ``$expand`` option in ``items``, nested ones included: each is a join on the service."""
    return sum(1 + expand_count(it.expand) for it in items)


def parse_expand(text: str, depth: int = 0) -> tuple[ExpandItem, ...]:
    """Parse ``$expand`` with nested ``$select``, ``$filter``, ``$orderby``, ``$top``, ``$expand`` options separated by
    ``;``. Parameter aliases are not available inside ``$expand`` (documented). A chain nested deeper than the
    option limit is refused while parsing, so a 3,000-level chain is a 400 and never exhausts the stack."""
    if depth >= MAX_EXPAND:
        raise ODataSyntaxError(EXPAND_LIMIT_MESSAGE, code="0x80060888")
    items: list[ExpandItem] = []
    for part, offset in _split_top(text, ","):
        raw = part.strip()
        paren = raw.find("(")
        head, options = (raw, "") if paren < 0 else (raw[:paren].strip(), raw[paren:])
        if options and not options.endswith(")"):
            raise syntax_error(text, offset + len(part))
        ref = head.endswith("/$ref")
        nav = head[: -len("/$ref")] if ref else head
        if not SIMPLE_IDENT_RE.fullmatch(nav):
            raise ODataSyntaxError(f"Term '{raw}' is not valid in a $select or $expand expression.", offset)
        kwargs: dict[str, object] = {}
        if options:
            inner = options[1:-1]
            for opt, opt_offset in _split_top(inner, ";"):
                name, eq, value = opt.strip().partition("=")
                name = name.strip()
                if not eq or not name:
                    raise syntax_error(text, offset + paren + 1 + opt_offset)
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
                    kwargs[key] = parse_expand(value, depth + 1)
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


_SIMPLE_KEY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)='([^']*)'")


def parse_key_predicate(text: str) -> uuid.UUID | dict[str, Literal]:
    """Parse the inside of ``entityset(...)``: a bare GUID, or ``col=value`` pairs (strings quoted with doubling,
    integers, decimals, GUIDs, booleans, dates). Parameter aliases are refused (documented)."""
    simple = _SIMPLE_KEY_RE.fullmatch(text)
    if simple is not None and simple.group(1) not in ("true", "false", "null"):
        # what the tokens below give for one name and a quoted string without quotes inside, without the lexer: a
        # bulk message keyed by one alternate-key column parses one such predicate per target
        return {simple.group(1): Literal(simple.group(2), "Edm.String")}
    bad = ODataSyntaxError("Bad Request - Error in query syntax.", 0)
    try:
        tokens = tokenize(text)
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
