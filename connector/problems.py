"""Phase-two input checks shared by every operation: the problem collector and the column and key checks.

Checks read metadata only (never data, never a write), and a miss triggers one fresh read of the table before it is
reported, because a column or a key may have been created a moment ago by another action of the same run.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from connector.addressing import key_literal
from connector.errors import InputError, InputProblem, LiteralError, preview
from connector.inputs import GUID, Expand
from connector.metadata import AlternateKey, ColumnLimits, TableMetadata
from connector.odata import NUMERIC_TYPES, STRING_TYPES
from connector.strict_json import StrictJsonError
from connector.strict_json import check_value as check_json

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = [
    "MAX_URL",
    "Problems",
    "check_expand",
    "check_guid",
    "check_key",
    "check_key_url",
    "check_limits",
    "check_navigation",
    "check_returned",
    "check_select",
    "check_sendable",
    "check_table",
    "check_url",
    "columns_known",
    "unknown_column",
]


class Problems:
    """Collects problems; metadata misses trigger one fresh read of the table (a key may have just been created).

    ``values`` collects, apart, the problems of a value that cannot be sent (:meth:`refuse`) when ``defer_values`` is
    set: ``write_entities`` fails such a record by itself and still writes the others, where a wrong column or type
    (:meth:`add`) refuses the whole run.
    """

    def __init__(self, connection: Connection, *, defer_values: bool = False) -> None:
        self.connection = connection
        self.items: list[InputProblem] = []
        self.values: list[InputProblem] = []
        self.defer_values = defer_values
        self._refreshed: dict[str, TableMetadata] = {}
        self._limits: dict[tuple[str, str], ColumnLimits] = {}
        #: (table, key columns) -> (the metadata asked with, the metadata the key was found in): keys that passed
        #: :func:`check_key`'s structural checks in this validation, so a bulk write judges each column set once.
        self.keys: dict[tuple[str, tuple[str, ...]], tuple[TableMetadata, TableMetadata]] = {}

    @cached_property
    def api_url_length(self) -> int:
        """The Web API root's length, which every URL check adds (the root is built anew on each ask)."""
        return len(self.connection.api_url)

    def add(self, path: str, message: str) -> None:
        self.items.append(InputProblem(path, message))

    def refuse(self, path: str, message: str) -> None:
        """A value Dataverse would refuse or the request could not carry: too long, out of range, not finite."""
        (self.values if self.defer_values else self.items).append(InputProblem(path, message))

    def table(self, name: str, path: str) -> TableMetadata | None:
        try:
            return self.connection.metadata.table(name, path=path)
        except InputError as exc:
            self.items += [InputProblem(path, p.message) for p in exc.problems]
            return None

    def limits(self, meta: TableMetadata, column: str) -> ColumnLimits:
        """A column's limits, asked of the metadata cache once per validation (a bulk write checks every record)."""
        known = self._limits.get((meta.logical_name, column))
        if known is None:
            known = self._limits[meta.logical_name, column] = self.connection.metadata.limits(meta.logical_name, column)
        return known

    def fresh(self, meta: TableMetadata) -> TableMetadata:
        """Re-read a table once per validation, after a miss, before reporting the miss; a later miss of the same
        validation is judged against that fresh read."""
        known = self._refreshed.get(meta.logical_name)
        if known is None:
            known = self._refreshed[meta.logical_name] = self.connection.metadata.table(meta.logical_name, refresh=True)
        return known


#: Dataverse refuses a request URL longer than 32,768 characters (64 KB only for a GET inside ``$batch``).
MAX_URL = 32768

#: The documented ranges of whole-number columns, for metadata that does not state its own MinValue/MaxValue.
_WHOLE_RANGES = {"Integer": (-(2**31), 2**31 - 1), "BigInt": (-(2**63), 2**63 - 1)}


_ALWAYS_SENDABLE = frozenset({int, bool, type(None)})


def check_sendable(p: Problems, value: Any, path: str) -> bool:
    """False (and a refusal) for what no JSON body carries: ``NaN``/``Infinity``, lone surrogates, extreme depth.

    The typed inputs refuse these already; rows handed to the library (``write_entities`` records) reach here. The
    common scalars are judged here without the walk (a bulk write checks every value of every record): ASCII text
    holds no surrogate, and whole numbers, yes/no and null are always sendable.
    """
    kind = type(value)
    if (kind is str and value.isascii()) or kind in _ALWAYS_SENDABLE or (kind is float and math.isfinite(value)):
        return True
    try:
        check_json(value, path=path)
    except StrictJsonError as exc:
        p.refuse(exc.path, exc.reason)
        return False
    return True


def check_guid(p: Problems, value: Any, path: str) -> bool:
    """A row id is a GUID: anything else would become a path in the URL (``/contacts(../../x)``)."""
    if isinstance(value, str) and GUID.fullmatch(value):
        return True
    shown = preview(value) if isinstance(value, str) else f"a {type(value).__name__}"
    p.refuse(path, f"{shown} is not a row id: give a GUID such as 5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b")
    return False


def check_limits(p: Problems, meta: TableMetadata, column: str, value: Any, path: str) -> bool:
    """Text within the column's MaxLength, numbers within its MinValue/MaxValue and Precision (from metadata)."""
    typ = meta.attributes[column].type if column in meta.attributes else ""
    if typ in STRING_TYPES and isinstance(value, str):
        limits = p.limits(meta, column)
        if limits.max_length is not None and len(value) > limits.max_length:
            p.refuse(
                path,
                f"{column!r} holds at most {limits.max_length:,} characters; {preview(value)} has {len(value):,}: "
                "shorten it",
            )
            return False
    if typ in NUMERIC_TYPES and isinstance(value, int | float) and not isinstance(value, bool):
        return _check_number(p, meta, column, typ, value, path)
    return True


def _check_number(p: Problems, meta: TableMetadata, column: str, typ: str, value: float, path: str) -> bool:
    limits = p.limits(meta, column)
    whole: tuple[float | None, float | None] = _WHOLE_RANGES.get(typ, (None, None))
    low = limits.min_value if limits.min_value is not None else whole[0]
    high = limits.max_value if limits.max_value is not None else whole[1]
    if (low is not None and value < low) or (high is not None and value > high):
        p.refuse(path, f"{column!r} accepts {_number(low)} to {_number(high)}; {_number(value)} is outside: change it")
        return False
    places = limits.precision
    # A tolerance, so binary noise (0.1 + 0.2) is not mistaken for a third decimal place.
    noisy = places is not None and isinstance(value, float) and math.isfinite(value)
    if noisy and abs(value - round(value, places)) > 1e-9 * max(1.0, abs(value)):
        p.refuse(path, f"{column!r} keeps {places} decimal places; round {_number(value)} to {places}")
        return False
    return True


def _number(value: float | None) -> str:
    if value is None:
        return "any"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:24]}… ({len(text):,} digits)"


def check_key_url(p: Problems, meta: TableMetadata, literals: Mapping[str, str], path: str) -> bool:
    """A key is sent in a URL (``set(k='v')``, or ``$filter`` for values a key predicate cannot carry): one too long
    for Dataverse's URL limit is refused here with the reason, not as an httpx error in the middle of a run."""
    # a character percent-encodes to at most 12 (4 UTF-8 bytes): most keys are judged without encoding them
    written = 0
    for column, literal in literals.items():  # a loop, not sum(): this runs for every record of a bulk write
        written += len(column) + 12 * len(literal) + 12
    if p.api_url_length + len(meta.entity_set) + written + len(meta.primary_id) + 64 <= MAX_URL:
        return True  # what check_url would answer for this bound
    written = sum(len(column) + len(quote(literal, safe="")) + 12 for column, literal in literals.items())
    return check_url(
        p,
        meta,
        written + len(meta.primary_id),
        path,
        "the key makes a URL",
        "no other route carries a key this long: address the row by id, or by an alternate key of shorter values",
    )


def check_url(p: Problems, meta: TableMetadata, written: int, path: str, what: str, fix: str) -> bool:
    """Refuse (with the reason and ``fix``) a request whose URL, ``written`` characters after the table's entity set
    (percent-encoded), would pass Dataverse's limit: httpx would otherwise fail it with "URL too long" mid-run."""
    length = p.api_url_length + len(meta.entity_set) + written + 64  # 64: separators and $select/$top
    if length <= MAX_URL:
        return True
    p.refuse(path, f"{what} of about {length:,} characters and Dataverse accepts {MAX_URL:,}; {fix}")
    return False


def unknown_column(meta: TableMetadata, column: str) -> str:
    close = difflib.get_close_matches(column, list(meta.attributes), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown column {column!r} of table {meta.logical_name!r}{hint}"


def columns_known(p: Problems, meta: TableMetadata, columns: Sequence[str]) -> TableMetadata:
    if any(c not in meta.attributes for c in columns):
        meta = p.fresh(meta)
    return meta


def check_key(
    p: Problems, meta: TableMetadata, key: Mapping[str, Any], path: str
) -> tuple[TableMetadata, dict[str, str] | None]:
    """Problems of an alternate key (unknown columns, columns outside every key, no key of exactly these columns,
    an index not yet active, values of the wrong type); the key's OData literals when it has none, else None.

    Which key the columns form, and whether it is active, depends on the columns alone: a bulk write asks it once per
    column set (a key that passed is remembered by ``p``; one that failed is judged again, so each record's problems
    name that record), and only the values are checked record by record.
    """
    columns = tuple(key)
    known = p.keys.get((meta.logical_name, columns))
    if known is not None and known[0] is meta:
        meta = known[1]
    else:
        given = meta
        meta, found = _key_structure(p, meta, key, path)
        if found is None:
            return meta, None
        p.keys[meta.logical_name, columns] = (given, meta)
    ok = True
    literals: dict[str, str] = {}
    for column, value in key.items():
        here = f"{path}.{column}"
        if not (check_sendable(p, value, here) and check_limits(p, meta, column, value, here)):
            ok = False
            continue
        try:
            literals[column] = key_literal(p.connection, meta, column, value)
        except (LiteralError, ValueError) as exc:
            p.add(here, str(exc))
            ok = False
    ok = ok and check_key_url(p, meta, literals, path)
    return meta, literals if ok else None


def _key_structure(
    p: Problems, meta: TableMetadata, key: Mapping[str, Any], path: str
) -> tuple[TableMetadata, AlternateKey | None]:
    """The active alternate key made of exactly ``key``'s columns, or None with the problems added to ``p``."""
    columns = frozenset(key)
    if meta.key_for(columns) is None or any(c not in meta.attributes for c in columns):
        meta = p.fresh(meta)
    ok = True
    in_keys = meta.key_columns()
    for column in key:
        if column not in meta.attributes:
            p.add(f"{path}.{column}", unknown_column(meta, column))
            ok = False
        elif column not in in_keys:
            p.add(
                f"{path}.{column}",
                f"column {column!r} is not part of any alternate key of {meta.logical_name!r}; "
                f"{meta.describe_keys()}. Use id, or create an alternate key with this column",
            )
            ok = False
    if not ok:
        return meta, None
    found = meta.key_for(columns)
    if found is None:
        p.add(
            path, f"no alternate key of {meta.logical_name!r} is made of exactly these columns; {meta.describe_keys()}"
        )
        return meta, None
    if not found.active:
        p.add(
            path,
            f"the alternate key {found.schema_name!r} is {found.status}: its index is not ready; try again when "
            "EntityKeyIndexStatus is Active",
        )
        return meta, None
    return meta, found


def check_select(p: Problems, meta: TableMetadata, select: Sequence[str], path: str) -> TableMetadata:
    meta = columns_known(p, meta, select)
    for i, column in enumerate(select):
        if column not in meta.attributes:
            p.add(f"{path}[{i}]", unknown_column(meta, column))
    return meta


def check_navigation(
    p: Problems, meta: TableMetadata, nav: str, path: str
) -> tuple[TableMetadata, tuple[str, bool] | None]:
    """The table a navigation property leads to and whether it is a collection; a miss is reported with the
    closest names, after one fresh read of the table (the relationship may have just been created)."""
    found = meta.navigation_target(nav)
    if found is None:
        meta = p.fresh(meta)
        found = meta.navigation_target(nav)
    if found is None:
        navs = sorted([*meta.single_navigations, *meta.collection_navigations])
        close = difflib.get_close_matches(nav, navs, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        p.add(path, f"{meta.logical_name!r} has no navigation property {nav!r}{hint}")
    return meta, found


def check_expand(p: Problems, meta: TableMetadata, expand: Sequence[Expand], path: str) -> None:
    for i, item in enumerate(expand):
        meta, found = check_navigation(p, meta, item.navigation, f"{path}[{i}].navigation")
        if found is None:
            continue
        target_name, _ = found
        if target_name == "owner" or not item.select:
            continue
        target = p.table(target_name, f"{path}[{i}].navigation")
        if target is not None:
            check_select(p, target, item.select, f"{path}[{i}].select")


def check_table(p: Problems, table: str, key: Mapping[str, Any] | None = None) -> TableMetadata | None:
    """The first checks of every row action: the table exists and, when the row is named by key, the key is one of its
    alternate keys with values of the right types. None when the table is unknown (nothing else can be checked)."""
    meta = p.table(table, "$.table")
    if meta is not None and key:
        meta, _ = check_key(p, meta, key, "$.key")
    return meta


def check_returned(
    p: Problems, meta: TableMetadata, select: Sequence[str] | None, expand: Sequence[Expand] | None = None
) -> TableMetadata:
    """The columns to return and the related rows to expand exist."""
    if select:
        meta = check_select(p, meta, select, "$.select")
    if expand:
        check_expand(p, meta, expand, "$.expand")
    return meta
