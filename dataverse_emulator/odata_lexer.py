"""Tokenizer for OData query options: literals (GUIDs, dates, numbers, quoted strings, JSON arrays), names, aliases."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal

from .odata_ast import Literal, ODataSyntaxError

# ---------------------------------------------------------------------------------------------------------------------
# Lexer

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
GUID_RE = re.compile(_GUID + r"(?![\w.-])")
_DATETIME_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}(?::\d{2}(?:\.\d{1,12})?)?)(Z|z|[+-]\d{2}:\d{2})?(?![\w.:-])"
)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\w.:-])")
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?([mMlLdDfF])?(?![\w.])")
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
ALIAS_RE = re.compile(r"@[A-Za-z_][A-Za-z0-9_]*")
SIMPLE_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PUNCT = {"(": "LPAREN", ")": "RPAREN", ",": "COMMA", "/": "SLASH", ":": "COLON", "=": "EQUALS"}

COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
ARITHMETIC = ("add", "sub", "mul", "div", "mod")
OP_KIND = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual", "lt": "LessThan"}
OP_KIND["le"] = "LessThanOrEqual"
STRING_FUNCTIONS = {"contains": 2, "startswith": 2, "endswith": 2, "tolower": 1, "toupper": 1}


@dataclass(frozen=True)
class Token:
    kind: str  # IDENT, STRING, LITERAL, ALIAS, ARRAY, LPAREN, RPAREN, COMMA, SLASH, COLON, EQUALS, END
    text: str
    pos: int
    value: object = None


def syntax_error(text: str, pos: int) -> ODataSyntaxError:
    return ODataSyntaxError(f"Syntax error at position {pos} in '{text}'.", pos)


def read_quoted(text: str, start: int) -> tuple[str, int]:
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


def read_json_array(text: str, start: int) -> tuple[tuple[Literal, ...], int]:
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
            items.append(number_or_keyword(m.group(0)))
            i = m.end()
        i = skip_ws(i)
        if i < n and text[i] == ",":
            i += 1
            continue
        if i < n and text[i] == "]":
            return tuple(items), i + 1
        raise ODataSyntaxError(comma_msg, i)


def number_or_keyword(word: str) -> Literal:
    if word == "true":
        return Literal(True, "Edm.Boolean")
    if word == "false":
        return Literal(False, "Edm.Boolean")
    if word == "null":
        return Literal(None, "null")
    return number_literal(word)


def number_literal(word: str) -> Literal:
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


def datetime_literal(date_part: str, time_part: str, offset: str | None) -> Literal:
    if "." in time_part:
        head, frac = time_part.split(".")
        time_part = f"{head}.{(frac + '000000')[:6]}"
    if offset in (None, "Z", "z"):
        offset = "+00:00"  # a missing offset is read as UTC (guess: ODataLib would refuse it)
    return Literal(dt.datetime.fromisoformat(f"{date_part}T{time_part}{offset}"), "Edm.DateTimeOffset")


def tokenize(text: str, *, allow_arrays: bool = False) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if ch in _PUNCT:
            tokens.append(Token(_PUNCT[ch], ch, i))
            i += 1
            continue
        if ch == "'":
            value, end = read_quoted(text, i)
            tokens.append(Token("STRING", text[i:end], i, Literal(value, "Edm.String")))
            i = end
            continue
        if ch == "[" and allow_arrays:
            values, end = read_json_array(text, i)
            tokens.append(Token("ARRAY", text[i:end], i, values))
            i = end
            continue
        if ch == "@":
            m = ALIAS_RE.match(text, i)
            if not m:
                raise ODataSyntaxError(f"Syntax error: character '@' is not valid at position {i} in '{text}'.", i)
            tokens.append(Token("ALIAS", m.group(0), i))
            i = m.end()
            continue
        m = GUID_RE.match(text, i)
        if m:
            tokens.append(Token("LITERAL", m.group(0), i, Literal(uuid.UUID(m.group(0)), "Edm.Guid")))
            i = m.end()
            continue
        m = _DATETIME_RE.match(text, i)
        if m:
            try:
                lit = datetime_literal(m.group(1), m.group(2), m.group(3))
            except ValueError:
                raise ODataSyntaxError(
                    f"Unrecognized 'Edm.DateTimeOffset' literal '{m.group(0)}' at '{i}' in '{text}'.", i
                ) from None
            tokens.append(Token("LITERAL", m.group(0), i, lit))
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
            tokens.append(Token("LITERAL", m.group(0), i, date_lit))
            i = m.end()
            continue
        m = _NUMBER_RE.match(text, i)
        if m:
            tokens.append(Token("LITERAL", m.group(0), i, number_literal(m.group(0))))
            i = m.end()
            continue
        m = IDENT_RE.match(text, i)
        if m:
            word = m.group(0)
            end = m.end()
            if end < n and text[end] == "'":  # typed literal: Namespace.EnumType'Member'
                value, end2 = read_quoted(text, end)
                if "." not in word:
                    raise ODataSyntaxError(f"Unrecognized '{word}' literal '{text[i:end2]}' at '{i}' in '{text}'.", i)
                tokens.append(Token("LITERAL", text[i:end2], i, Literal(value, word)))
                i = end2
                continue
            if word in ("true", "false", "null"):
                tokens.append(Token("LITERAL", word, i, number_or_keyword(word)))
            else:
                tokens.append(Token("IDENT", word, i))
            i = end
            continue
        raise ODataSyntaxError(f"Syntax error: character '{ch}' is not valid at position {i} in '{text}'.", i)
    tokens.append(Token("END", "", n))
    return tokens
