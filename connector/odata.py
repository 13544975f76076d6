"""OData text the connector writes: literals typed from metadata, key predicates, ``where`` filters, page tokens.

Every value a user gives reaches a URL only through this module, so the quoting rules live in one place:

* string literals are single-quoted with inner quotes doubled (``'O''Brien'``), then percent-encoded for the URL;
* numbers, booleans, GUIDs and dates are written unquoted, as Dataverse expects for their column type;
* in ``contains``/``startswith``/``endswith`` Dataverse honours the SQL wildcards ``%``, ``_`` and ``[``, so a user's
  value is escaped (``[%]``, ``[_]``, ``[[]``) to match itself and nothing else;
* key values containing characters Dataverse refuses inside a key predicate (``/ < > * % & : \\ ? +``, even when
  percent-encoded) are detected here so the caller can take the ``$filter`` route instead.

Page tokens are opaque to users but not to us: base64url JSON holding the organization host, the path and query
relative to the API root, the page size and an offset into that page. A token naming another host, or whose path is
an absolute URL, is refused, so a forged token can never make the connection send its bearer token elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from connector.errors import InputError, InputProblem, LiteralError

__all__ = [
    "ALL_ANNOTATIONS",
    "LOOKUP_TYPES",
    "NUMERIC_TYPES",
    "STRING_TYPES",
    "PageToken",
    "build_query_string",
    "entity_id",
    "escape_like",
    "filter_column",
    "format_literal",
    "key_is_url_safe",
    "key_predicate",
    "literal_key_predicate",
    "quote_string",
]

#: The ``Prefer`` value asking for every annotation (formatted values, lookup names); one spelling for every module.
ALL_ANNOTATIONS = 'odata.include-annotations="*"'
#: Characters Dataverse cannot take inside a key predicate, even percent-encoded (use a $filter lookup instead).
URL_UNSAFE_KEY_CHARS = frozenset("/<>*%&:\\?+")
STRING_TYPES = frozenset({"String", "Memo", "EntityName"})
NUMERIC_TYPES = frozenset({"Integer", "BigInt", "Decimal", "Double", "Money"})
CHOICE_TYPES = frozenset({"Picklist", "State", "Status"})
LOOKUP_TYPES = frozenset({"Lookup", "Customer", "Owner"})
GUID_TYPES = frozenset({"Uniqueidentifier"}) | LOOKUP_TYPES
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,7})?)?(Z|[+-]\d{2}:\d{2})?)?$")
# Characters kept as they are when a literal or a query value is percent-encoded: OData syntax Dataverse expects to
# read unencoded. Everything else (space, &, +, #, %, /, ?, non-ASCII) is encoded.
_QUERY_SAFE = "$,()'=@*:;!-._~"


_ENTITY_ID = re.compile(r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)\s*$")


def entity_id(source: Any) -> str | None:
    """The GUID ending an ``OData-EntityId`` header, a row URL or a path (``.../accounts(<guid>)``), lower-cased.

    ``source`` is the address itself or an answer carrying the header (anything with ``headers``, such as an
    ``httpx.Response`` or a ``$batch`` part), so every module reads a created row's id the same way; ``None`` when the
    address ends in an alternate key or there is none.
    """
    if source is None:
        return None
    if not isinstance(source, str):
        headers = source.headers
        source = headers.get("OData-EntityId") if hasattr(headers, "get") else None
        if not source:
            return None
    match = _ENTITY_ID.search(urlsplit(source).path if "://" in source else source)
    return match.group(1).lower() if match else None


def quote_string(value: str) -> str:
    """``'value'`` with inner single quotes doubled (OData URL conventions)."""
    return "'" + value.replace("'", "''") + "'"


def escape_like(value: str) -> str:
    """Escape the SQL wildcards Dataverse honours in contains/startswith/endswith, so the value matches only itself.

    ``[`` first, or the brackets added for ``%`` and ``_`` would be escaped again.
    """
    return value.replace("[", "[[]").replace("%", "[%]").replace("_", "[_]")


def format_literal(value: Any, attribute_type: str) -> str:
    """The OData literal of ``value`` for a column of ``attribute_type`` (an AttributeTypeCode name).

    Strings are quoted only for string columns; a number given for a string column is quoted too (Dataverse would
    otherwise compare types and fail). Choice columns take integers (labels are mapped before this point).
    """
    if value is None:
        return "null"
    if attribute_type in STRING_TYPES:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise LiteralError(f"expected text for a {attribute_type} column")
        return quote_string(str(value))
    if attribute_type in GUID_TYPES:
        if not isinstance(value, str):
            raise LiteralError("expected a GUID")
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise LiteralError(f"{value!r} is not a GUID") from None
    if attribute_type == "Boolean":
        if not isinstance(value, bool):
            raise LiteralError("expected true or false")
        return "true" if value else "false"
    if attribute_type in NUMERIC_TYPES or attribute_type in CHOICE_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LiteralError(f"expected a number for a {attribute_type} column")
        if attribute_type in ("Integer", "BigInt") or attribute_type in CHOICE_TYPES:
            if isinstance(value, float) and not value.is_integer():
                raise LiteralError(f"expected a whole number for a {attribute_type} column")
            return str(int(value))
        if isinstance(value, float) and not math.isfinite(value):
            raise LiteralError("expected a finite number")
        return repr(value) if isinstance(value, float) else str(value)
    if attribute_type == "DateTime":
        if not isinstance(value, str) or not _DATE.match(value):
            raise LiteralError("expected an ISO 8601 date or date-time such as 2026-01-31 or 2026-01-31T08:00:00Z")
        return value
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def key_is_url_safe(key: Mapping[str, Any]) -> bool:
    """False when a string key value holds a character Dataverse refuses in a key predicate."""
    return not any(isinstance(v, str) and URL_UNSAFE_KEY_CHARS.intersection(v) for v in key.values())


def filter_column(column: str, attribute_type: str) -> str:
    """The property name to use in $filter/$orderby/$select: lookups are read as ``_column_value``."""
    return f"_{column}_value" if attribute_type in LOOKUP_TYPES else column


def key_predicate(key: Mapping[str, Any], types: Mapping[str, str]) -> str:
    """``col1='a',col2=2`` for a key URL, typed from metadata and percent-encoded (quotes doubled first).

    A lookup column in a key is addressed as ``_column_value``, as Dataverse's documentation shows.
    """
    return literal_key_predicate({column: format_literal(value, types[column]) for column, value in key.items()}, types)


def literal_key_predicate(literals: Mapping[str, str], types: Mapping[str, str]) -> str:
    """:func:`key_predicate` of values already written as literals (by whoever checked them), percent-encoded."""
    return ",".join(
        f"{filter_column(c, types[c])}={quote(literal, safe=_QUERY_SAFE)}" for c, literal in literals.items()
    )


def build_query_string(params: Mapping[str, str]) -> str:
    """``$select=a,b&$filter=...`` percent-encoded once, so it can be stored in a page token and sent verbatim."""
    return "&".join(f"{name}={quote(value, safe=_QUERY_SAFE)}" for name, value in params.items())


@dataclass(frozen=True)
class PageToken:
    """Where a page starts: the URL (relative to the API root) that returns it, and how many of its rows to skip.

    The offset lets a run that stopped at ``max_records`` in the middle of a page resume exactly there, since a
    Dataverse page cannot be re-cut with another page size (the same ``odata.maxpagesize`` must be sent again).
    """

    host: str
    path: str
    page_size: int | None
    offset: int = 0
    annotations: str | None = None

    def encode(self) -> str:
        data: dict[str, Any] = {"h": self.host, "p": self.path}
        if self.page_size is not None:
            data["s"] = self.page_size
        if self.offset:
            data["o"] = self.offset
        if self.annotations:
            data["a"] = self.annotations
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, *, host: str, path: str = "$.page_token") -> PageToken:
        """Read a token and check it belongs to this organization; anything else is an input error naming ``path``."""

        def refuse(why: str) -> InputError:
            return InputError([InputProblem(path, why)])

        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            data = json.loads(raw)
        except (ValueError, binascii.Error):
            raise refuse("not a page token this connector issued; pass next_page_token unchanged") from None
        if not isinstance(data, dict) or not isinstance(data.get("h"), str) or not isinstance(data.get("p"), str):
            raise refuse("not a page token this connector issued; pass next_page_token unchanged")
        if data["h"].lower() != host.lower():
            raise refuse(
                f"this token was issued for another environment ({data['h']}), not {host}; start the query again "
                "without page_token"
            )
        rel = data["p"]
        parts = urlsplit(rel)
        if parts.scheme or parts.netloc or rel.startswith(("/", "\\")) or "://" in rel or ".." in parts.path:
            raise refuse("the token points outside this environment's Web API; it was not issued by this connector")
        size = data.get("s")
        offset = data.get("o", 0)
        annotations = data.get("a")
        if (size is not None and not isinstance(size, int)) or not isinstance(offset, int) or offset < 0:
            raise refuse("the token is damaged; pass next_page_token unchanged")
        if annotations is not None and not isinstance(annotations, str):
            raise refuse("the token is damaged; pass next_page_token unchanged")
        return cls(data["h"], rel, size, offset, annotations)

    @property
    def entity_set(self) -> str:
        """The collection the token reads (the first path segment)."""
        return urlsplit(self.path).path.split("/", 1)[0].split("(", 1)[0]


def where_problems_and_filter(
    where: Sequence[Mapping[str, Any]],
    types: Mapping[str, str],
    map_choice: Any,
    *,
    table: str,
    path: str = "$.where",
) -> tuple[str | None, list[InputProblem]]:
    """Turn structured conditions into one ``$filter`` (all conditions joined with ``and``), or the problems.

    ``types`` maps the table's columns to their AttributeTypeCode; ``map_choice(column, label)`` returns the integer
    of a choice label or raises ``LiteralError``.
    """
    problems: list[InputProblem] = []
    clauses: list[str] = []
    for i, cond in enumerate(where):
        here = f"{path}[{i}]"
        column = str(cond.get("column"))
        op = str(cond.get("operator"))
        if column not in types:
            problems.append(InputProblem(f"{here}.column", f"unknown column {column!r} of table {table!r}"))
            continue
        typ = types[column]
        name = filter_column(column, typ)
        value = cond.get("value")
        try:
            if op in ("null", "not_null"):
                clauses.append(f"{name} {'eq' if op == 'null' else 'ne'} null")
                continue
            if "value" not in cond:
                raise LiteralError(f"operator {op!r} needs a value")
            if op in ("contains", "startswith", "endswith"):
                if typ not in STRING_TYPES:
                    raise LiteralError(f"{op} works on text columns; {column!r} is {typ}")
                if not isinstance(value, str) or not value:
                    raise LiteralError(f"{op} needs non-empty text")
                clauses.append(f"{op}({name},{quote_string(escape_like(value))})")
                continue
            if op in ("in", "not_in"):
                if not isinstance(value, list) or not value:
                    raise LiteralError(f"{op} needs a non-empty list of values")
                literals = [format_literal(_choice(map_choice, column, typ, v), typ) for v in value]
                joiner, cmp = (" or ", "eq") if op == "in" else (" and ", "ne")
                clauses.append("(" + joiner.join(f"{name} {cmp} {lit}" for lit in literals) + ")")
                continue
            clauses.append(f"{name} {op} {format_literal(_choice(map_choice, column, typ, value), typ)}")
        except LiteralError as exc:
            problems.append(InputProblem(f"{here}.value", str(exc)))
    if problems or not clauses:
        return None, problems
    return " and ".join(clauses), problems


def _choice(map_choice: Any, column: str, typ: str, value: Any) -> Any:
    if typ in CHOICE_TYPES and isinstance(value, str):
        return map_choice(column, value)
    return value
