"""Source values made into what a Dataverse column takes, checked against its metadata; never a silent change.

Warehouse values arrive as text (every CSV cell), as Arrow types (``Decimal``, ``date``, ``datetime``) or as JSON.
Each column type accepts exactly this, and anything else is a row problem naming the column and the fix:

==================  ==================================================================================================
Text, Memo          text as is; a number becomes its digits, a date its ISO form. Longer than ``MaxLength``: refused,
                    never cut.
Whole number        an integer, an integral ``1.0``/``Decimal``, or text of digits (``"042"`` is 42); within
                    ``MinValue``/``MaxValue`` (Integer -2^31..2^31-1, BigInt -2^63..2^63-1 where metadata is silent).
Decimal, Money,     a number or numeric text; more decimal places than the column's ``Precision`` is refused (round it
Double              in the source query), never rounded here; within ``MinValue``/``MaxValue``.
Yes/No              true/false, 1/0, or the texts true/false, yes/no, 1/0 (any case, trimmed); anything else refused.
Date only           (``Format`` or ``DateTimeBehavior`` DateOnly) a date, a datetime at midnight, or ``YYYY-MM-DD``;
                    sent as ``YYYY-MM-DD``, no time zone shift.
Date and time       a datetime or ISO 8601 text, sent in UTC (``...Z``); a value without an offset is taken as UTC,
                    a bare date as midnight UTC.
Choice              an option's value, or its label: matched case-insensitively and exactly (trimmed); a label that
                    names two options (labels differing only by case) is refused: give the value. Unknown labels and
                    values are refused with the valid labels.
Multi-select        a list, or text separated by ``,`` or ``;``, of labels or values (the choice rule for each); sent
                    as Dataverse's comma-separated values.
Unique identifier   a GUID.
==================  ==================================================================================================
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from connector.errors import preview
from connector.inputs import GUID
from connector.metadata import TableMetadata
from connector.odata import CHOICE_TYPES, NUMERIC_TYPES, STRING_TYPES
from connector.problems import Problems, check_limits

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["FALSE_TEXTS", "TRUE_TEXTS", "CoercionError", "Column", "coerce"]

TRUE_TEXTS = frozenset({"true", "yes", "1"})
FALSE_TEXTS = frozenset({"false", "no", "0"})
_WHOLE = re.compile(r"[+-]?\d+")


class CoercionError(ValueError):
    """A value this column cannot take; the message says what it takes."""


class Column:
    """What coercion needs of one target column: its type and, read once by the mapper, its date and option facts."""

    def __init__(
        self,
        meta: TableMetadata,
        name: str,
        *,
        date_only: bool = False,
        options: Sequence[tuple[str, int]] = (),
        multi: bool = False,
    ) -> None:
        self.meta = meta
        self.name = name
        self.type = meta.attributes[name].type
        self.date_only = date_only
        self.multi = multi
        self.options = tuple(options)  # (label as Dataverse shows it, value)
        self.by_text: dict[str, list[int]] = {}  # lower-case label -> values (more than one: an ambiguous label)
        for label, value in self.options:
            self.by_text.setdefault(label.strip().lower(), []).append(value)

    def option(self, given: Any) -> int:
        """An option's value from its label (case-insensitive, exact, trimmed) or from the value itself."""
        labels = [label for label, _ in self.options]
        shown = (", ".join(labels[:20]) + (f" (and {len(labels) - 20} more)" if len(labels) > 20 else "")) or "none"
        if isinstance(given, str):
            found = self.by_text.get(given.strip().lower())
            if found is not None and len(found) > 1:
                raise CoercionError(
                    f"the label {preview(given)} of {self.name!r} names options {found}: give the value"
                )
            if found is not None:
                return found[0]
            if not _WHOLE.fullmatch(given.strip()):
                raise CoercionError(f"unknown label {preview(given)} for {self.name!r}; valid labels: {shown}")
            given = int(given.strip())
        if isinstance(given, float) and given.is_integer():
            given = int(given)
        if isinstance(given, int | Decimal) and not isinstance(given, bool) and given in {v for _, v in self.options}:
            return int(given)
        raise CoercionError(f"{preview(given)} is not an option of {self.name!r}; valid labels: {shown}")


def coerce(connection: Connection, column: Column, value: Any, path: str) -> Any:
    """The value to send for ``column``; raises :class:`CoercionError` (the row fails, the run goes on)."""
    typ = column.type
    if column.multi:
        return _multi(column, value)
    if typ in STRING_TYPES:
        sent: Any = _text(column, value)
    elif typ in ("Integer", "BigInt"):
        sent = _whole(column, value)
    elif typ in NUMERIC_TYPES:
        sent = _fraction(connection, column, value)
    elif typ == "Boolean":
        return _boolean(column, value)
    elif typ == "DateTime":
        return _date(column, value) if column.date_only else _datetime(column, value)
    elif typ in CHOICE_TYPES:
        return column.option(value)
    elif typ == "Uniqueidentifier":
        if isinstance(value, str) and GUID.fullmatch(value.strip()):
            return value.strip().lower()
        raise CoercionError(f"{column.name!r} takes a GUID; {_show(value)} is not one")
    else:
        raise CoercionError(f"{column.name!r} is a {typ} column, which a sync does not write")
    problems = Problems(connection)
    if not check_limits(problems, column.meta, column.name, sent, path):
        raise CoercionError(problems.items[0].message)
    return sent


def _show(value: Any) -> str:
    return preview(value) if isinstance(value, str) else f"{preview(value)} ({type(value).__name__})"


def _text(column: Column, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise CoercionError(f"{column.name!r} is a text column; write the text for {value} in the source query")
    if isinstance(value, int | Decimal) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    raise CoercionError(f"{column.name!r} is a text column; {_show(value)} is not text")


def _number(column: Column, value: Any) -> Decimal:
    """Any numeric source value as an exact ``Decimal`` (text trimmed); booleans and non-finite values refused."""
    if isinstance(value, bool):
        raise CoercionError(f"{column.name!r} is a number column; {value} is a yes/no value")
    try:
        if isinstance(value, str):
            number = Decimal(value.strip())
        elif isinstance(value, int | Decimal):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))  # the shortest text of the float: 0.1 is 0.1, not its binary expansion
        else:
            raise CoercionError(f"{column.name!r} is a number column; {_show(value)} is not a number")
    except InvalidOperation:
        raise CoercionError(f"{column.name!r} is a number column; {_show(value)} is not a number") from None
    if not number.is_finite():
        raise CoercionError(f"{column.name!r} is a number column; {_show(value)} is not a finite number")
    return number


def _whole(column: Column, value: Any) -> int:
    if isinstance(value, str) and not _WHOLE.fullmatch(value.strip()):
        raise CoercionError(f"{column.name!r} is a whole-number column; {_show(value)} is not a whole number")
    number = _number(column, value)
    if number != number.to_integral_value():
        raise CoercionError(f"{column.name!r} is a whole-number column; {_show(value)} has a fraction")
    return int(number)


def _fraction(connection: Connection, column: Column, value: Any) -> int | float:
    """An exact check of the decimal places against ``Precision`` (no binary noise), then a JSON number."""
    number = _number(column, value)
    places = connection.metadata.limits(column.meta.logical_name, column.name).precision
    exponent = number.normalize().as_tuple().exponent
    written = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if places is not None and written > places:
        raise CoercionError(
            f"{column.name!r} keeps {places} decimal places; {_show(value)} has {written}: round it in the source query"
        )
    return int(number) if number == number.to_integral_value() else float(number)


def _boolean(column: Column, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in TRUE_TEXTS | FALSE_TEXTS:
        return value.strip().lower() in TRUE_TEXTS
    raise CoercionError(f"{column.name!r} is a yes/no column: give true/false, yes/no or 1/0, not {_show(value)}")


def _date(column: Column, value: Any) -> str:
    if isinstance(value, dt.datetime):
        if value.time() != dt.time(0) or value.utcoffset():
            raise CoercionError(f"{column.name!r} is a date-only column; {_show(str(value))} has a time of day")
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise CoercionError(f"{column.name!r} is a date-only column: give YYYY-MM-DD, not {_show(value)}")


def _datetime(column: Column, value: Any) -> str:
    moment: dt.datetime | None = None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
    if moment is None:
        raise CoercionError(
            f"{column.name!r} is a date-time column: give ISO 8601 (2026-01-31T09:30:00Z), not {_show(value)}"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _multi(column: Column, value: Any) -> str:
    items = value if isinstance(value, list) else re.split(r"[,;]", value) if isinstance(value, str) else None
    if items is None:
        raise CoercionError(f"{column.name!r} is a multi-select column: give a list or labels separated by commas")
    chosen: list[int] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        found = column.option(item)
        if found not in chosen:
            chosen.append(found)
    return ",".join(str(v) for v in chosen)
