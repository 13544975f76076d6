"""Whether a row holds the values a write sent: the read that turns a lost answer into an outcome that can be proved.

Why: a write whose last answer was lost (a dropped connection, a 5xx after the request left, retries spent) may or may
not have been applied, and reporting it ``failed`` is a lie when it was (at 60% faults, 800 upserts were). A row
write is atomic, so reading the row back decides it: every written column holds the sent value -> applied; a column
compared exactly holds another value, or the row is missing -> not applied; otherwise (a rounded number, a date in
another spelling, a lookup bound by key) the read proves nothing and the outcome stays unknown.

Bodies are the ones :func:`connector.body.build_body` makes (lookups as ``<navigation>@odata.bind``), so the read
selects ``_<lookup>_value`` for them. A value equal to what the row held before the write also reads as "applied":
the row holds the written values either way, which is what the outcome promises.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from connector.metadata import TableMetadata
from connector.odata import CHOICE_TYPES, GUID_TYPES, STRING_TYPES, filter_column

__all__ = ["Verdict", "compare_written", "conflicting_columns", "read_columns"]

_BIND = "@odata.bind"
_BOUND_ID = re.compile(r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)$")
_EXACT_TYPES = STRING_TYPES | CHOICE_TYPES | GUID_TYPES | {"Integer", "BigInt", "Boolean"}


class Verdict(enum.Enum):
    """What a read says about a write: applied, not applied, or nothing provable."""

    APPLIED = "applied"
    NOT_APPLIED = "not_applied"
    UNPROVABLE = "unprovable"


def _column_of(meta: TableMetadata, name: str) -> str | None:
    """The lookup column a ``<navigation>@odata.bind`` body name sets, or the plain column itself."""
    if not name.endswith(_BIND):
        return name if name in meta.attributes else None
    navigation = name[: -len(_BIND)]
    for column, relationships in meta.lookups.items():
        if any(r.navigation == navigation for r in relationships):
            return column
    return None


def read_columns(meta: TableMetadata, body: Mapping[str, Any]) -> list[str]:
    """The ``$select`` names that read back the columns of ``body`` (lookups as ``_<column>_value``)."""
    out = [meta.primary_id]
    for name in body:
        column = _column_of(meta, name)
        if column is not None:
            out.append(filter_column(column, meta.attributes[column].type))
    return list(dict.fromkeys(out))


def _same(typ: str, sent: Any, stored: Any) -> bool | None:
    """True when equal, False when provably different, None when a difference may be the server's spelling."""
    if sent is None or stored is None:
        return sent is stored
    if typ in GUID_TYPES:
        return str(sent).lower() == str(stored).lower()
    if typ in _EXACT_TYPES:
        return bool(sent == stored) and isinstance(sent, bool) == isinstance(stored, bool)
    if isinstance(sent, (int, float)) and isinstance(stored, (int, float)):
        return True if math.isclose(sent, stored, rel_tol=1e-9, abs_tol=1e-9) else None  # precision rounds
    if typ == "DateTime" and isinstance(sent, str) and isinstance(stored, str):
        try:
            a = datetime.fromisoformat(sent.replace("Z", "+00:00"))
            b = datetime.fromisoformat(stored.replace("Z", "+00:00"))
        except ValueError:
            return None
        return True if a == b or a.replace(tzinfo=None) == b.replace(tzinfo=None) else None
    return True if sent == stored else None


def _pairs(meta: TableMetadata, body: Mapping[str, Any], row: Mapping[str, Any]) -> list[tuple[str, bool | None]]:
    """Each written column with whether the row holds its value (see :func:`_same`)."""
    out: list[tuple[str, bool | None]] = []
    for name, sent in body.items():
        column = _column_of(meta, name)
        if column is None:
            out.append((name, None))
            continue
        typ = meta.attributes[column].type
        stored = row.get(filter_column(column, typ))
        if name.endswith(_BIND):
            match = _BOUND_ID.search(str(sent)) if sent is not None else None
            if sent is not None and match is None:  # bound by key: the GUID it names is not known here
                out.append((column, None))
                continue
            sent = match.group(1) if match else None
        out.append((column, _same(typ, sent, stored)))
    return out


def compare_written(meta: TableMetadata, body: Mapping[str, Any], row: Mapping[str, Any] | None) -> Verdict:
    """Whether ``row`` (read back; None: not found) holds what ``body`` wrote."""
    if row is None:
        return Verdict.NOT_APPLIED
    same = [s for _, s in _pairs(meta, body, row)]
    if any(s is False for s in same):
        return Verdict.NOT_APPLIED
    return Verdict.APPLIED if all(s is True for s in same) else Verdict.UNPROVABLE


def conflicting_columns(meta: TableMetadata, body: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    """The written columns whose stored value is not the one sent (or cannot be shown to be)."""
    return [column for column, s in _pairs(meta, body, row) if s is not True]
