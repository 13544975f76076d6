"""The per-connection metadata cache: entity sets, primary ids, columns, keys, navigation properties, option sets.

Every record action needs metadata before it writes (to validate columns, type key values, name ``@odata.bind``
properties and map choice labels), and metadata changes rarely, so one cache per :class:`Connection` is shared by all
actions and threads. Entries expire after ``ttl_s``. A metadata write (by the metadata actions, or by whoever calls
:meth:`MetadataCache.invalidate`) drops the table's entry, and the next read of that table sends
``Consistency: Strong`` so Dataverse answers from the primary rather than from its own metadata cache.

A table is read with one request (its columns, keys and relationships expanded); option sets are read only when a
choice label has to be mapped. A miss (a column or key the cache does not know) triggers one fresh read, because a
user may have just created that key or column outside this connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector import csdl
from connector.clock import Clock, SystemClock
from connector.errors import FatalApiError, InputError, InputProblem, NotFoundError
from connector.odata import quote_string

if TYPE_CHECKING:
    from connector.client import DataverseClient

__all__ = ["AlternateKey", "ColumnLimits", "MetadataCache", "Relationship", "TableMetadata"]

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 3600.0

_TABLE_SELECT = "LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute"
_TABLE_EXPAND = ",".join(
    [
        "Attributes($select=LogicalName,AttributeType,IsValidForCreate,IsValidForUpdate)",
        "Keys($select=SchemaName,KeyAttributes,EntityKeyIndexStatus)",
        "ManyToOneRelationships($select=SchemaName,ReferencingAttribute,ReferencedEntity,"
        "ReferencingEntityNavigationPropertyName)",
        "OneToManyRelationships($select=SchemaName,ReferencingEntity,ReferencedEntityNavigationPropertyName)",
        "ManyToManyRelationships($select=SchemaName,Entity1LogicalName,Entity2LogicalName,"
        "Entity1NavigationPropertyName,Entity2NavigationPropertyName)",
    ]
)
_CHOICE_CASTS = ("PicklistAttributeMetadata", "StateAttributeMetadata", "StatusAttributeMetadata")


@dataclass(frozen=True)
class Attribute:
    """One column: its AttributeTypeCode name and whether it may be written on create and on update."""

    name: str
    type: str
    valid_for_create: bool = True
    valid_for_update: bool = True


@dataclass(frozen=True)
class AlternateKey:
    """An alternate key; usable in a URL only once its index is ``Active``."""

    schema_name: str
    columns: frozenset[str]
    status: str = "Active"

    @property
    def active(self) -> bool:
        return self.status == "Active"


@dataclass(frozen=True)
class Relationship:
    """A many-to-one relationship seen from the referencing table: the lookup column, its target, its nav name."""

    attribute: str
    target: str
    navigation: str


@dataclass(frozen=True)
class TableMetadata:
    """What the record actions need to know about one table."""

    logical_name: str
    entity_set: str
    primary_id: str
    primary_name: str | None
    attributes: Mapping[str, Attribute]
    keys: tuple[AlternateKey, ...]
    lookups: Mapping[str, tuple[Relationship, ...]]
    single_navigations: Mapping[str, str]
    collection_navigations: Mapping[str, str]
    fetched_at: float = 0.0

    @property
    def types(self) -> dict[str, str]:
        return {name: a.type for name, a in self.attributes.items()}

    def key_for(self, columns: frozenset[str]) -> AlternateKey | None:
        """The alternate key made of exactly these columns (order does not matter), if one is defined."""
        for key in self.keys:
            if key.columns == columns:
                return key
        return None

    def key_columns(self) -> frozenset[str]:
        return frozenset().union(*(k.columns for k in self.keys)) if self.keys else frozenset()

    def navigation_target(self, navigation: str) -> tuple[str, bool] | None:
        """``(related table, is_collection)`` for a navigation property of this table, or None."""
        if navigation in self.single_navigations:
            return self.single_navigations[navigation], False
        if navigation in self.collection_navigations:
            return self.collection_navigations[navigation], True
        return None

    def describe_keys(self) -> str:
        if not self.keys:
            return f"table {self.logical_name!r} has no alternate key"
        shown = "; ".join("(" + ", ".join(sorted(k.columns)) + ")" for k in self.keys)
        return f"its alternate keys are: {shown}"


@dataclass(frozen=True)
class ColumnLimits:
    """What a column accepts beyond its type: ``MaxLength`` of text, ``MinValue``/``MaxValue``/``Precision`` of
    numbers (None where the metadata does not say)."""

    max_length: int | None = None
    min_value: float | None = None
    max_value: float | None = None
    precision: int | None = None


#: The AttributeMetadata subtype that carries each type's limits. The limits are read per type, only when a value of
#: that type is written: the table read cannot select them (they are not properties of the base AttributeMetadata),
#: and an unselected read of every column is megabytes. Text columns select ``MaxLength``; number columns are read
#: unselected (a few columns each), since a ``$select`` of ``MinValue`` is refused by a server whose columns of that
#: type all lack it (the emulator's built-in columns).
_LIMIT_CASTS: dict[str, tuple[str, str | None]] = {
    "String": ("StringAttributeMetadata", "LogicalName,MaxLength"),
    "Memo": ("MemoAttributeMetadata", "LogicalName,MaxLength"),
    "Integer": ("IntegerAttributeMetadata", None),
    "BigInt": ("BigIntAttributeMetadata", None),
    "Decimal": ("DecimalAttributeMetadata", None),
    "Double": ("DoubleAttributeMetadata", None),
    "Money": ("MoneyAttributeMetadata", None),
}


@dataclass
class _Entry:
    table: TableMetadata
    options: dict[str, dict[str, int]] | None = None
    labels: dict[str, list[str]] = field(default_factory=dict)
    limits: dict[str, dict[str, ColumnLimits]] = field(default_factory=dict)


class MetadataCache:
    """Table metadata for one connection, read on demand, kept ``ttl_s`` seconds, thread-safe."""

    def __init__(
        self, client: Callable[[], DataverseClient], *, clock: Clock | None = None, ttl_s: float = DEFAULT_TTL_S
    ) -> None:
        self._client = client
        self._clock: Clock = clock or SystemClock()
        self._ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}
        self._strong: set[str] = set()
        self._catalog: tuple[float, csdl.Catalog] | None = None
        self._lock = threading.RLock()

    # -- invalidation ---------------------------------------------------------------------------------------------
    def invalidate(self, table: str | None = None) -> None:
        """Forget one table (or all); the next read of it sends ``Consistency: Strong``.

        Call it after any metadata write (a new column, key or relationship): Dataverse's own metadata cache may
        otherwise answer with the old definition for a while.
        """
        with self._lock:
            if table:
                names = {self._aliases.get(table.lower(), table.lower())}
            else:
                names = set(self._entries) | set(self._aliases.values())
            for name in names:
                self._entries.pop(name, None)
                self._strong.add(name)
            if not table:  # a new custom API or table changes $metadata too
                self._catalog = None

    # -- reads ----------------------------------------------------------------------------------------------------
    def table(self, name: str, *, refresh: bool = False, path: str = "$.table") -> TableMetadata:
        """The table named by logical name or entity set name; an unknown name is an :class:`InputError` at ``path``.

        ``refresh`` re-reads it (with ``Consistency: Strong``) even when cached: used once on a miss.
        """
        lowered = name.lower()
        with self._lock:
            logical = self._aliases.get(lowered, lowered)
            entry = self._entries.get(logical)
            if entry is not None and not refresh and self._clock.monotonic() - entry.table.fetched_at < self._ttl_s:
                return entry.table
        fetched = self._fetch(name, strong=refresh)
        with self._lock:
            self._entries[fetched.logical_name] = _Entry(fetched)
            self._aliases[fetched.entity_set.lower()] = fetched.logical_name
            self._aliases[lowered] = fetched.logical_name
            self._strong.discard(fetched.logical_name)
        return fetched

    def operations(self, *, refresh: bool = False) -> csdl.Catalog:
        """The actions, functions and complex types of ``$metadata``, read once per ``ttl_s`` (the document is large:
        megabytes on a real organization) or again when ``refresh`` (a message the catalogue does not know yet)."""
        with self._lock:
            known = self._catalog
            if known is not None and not refresh and self._clock.monotonic() - known[0] < self._ttl_s:
                return known[1]
        response = self._client().request("GET", "$metadata", headers={"Accept": "application/xml"})
        try:
            catalog = csdl.parse(response.content)
        except ValueError as exc:
            raise FatalApiError(
                f"Dataverse answered GET $metadata with {exc}", status_code=response.status_code
            ) from None
        with self._lock:
            self._catalog = (self._clock.monotonic(), catalog)
        return catalog

    def choice_value(self, table: str, column: str, label: str) -> int:
        """The integer value of a choice label (case-insensitive); ``ValueError`` lists the valid labels."""
        options = self._options(table)
        values = options.get(column)
        if values is None:
            raise ValueError(f"{column!r} is not a choice column")
        found = values.get(label.strip().lower())
        if found is None:
            labels = self._entries[self.table(table).logical_name].labels.get(column, [])
            raise ValueError(f"unknown label {label!r} for {column!r}; valid labels: {', '.join(labels)}")
        return found

    def _options(self, table: str) -> dict[str, dict[str, int]]:
        meta = self.table(table)
        with self._lock:
            entry = self._entries.get(meta.logical_name)
            if entry is not None and entry.options is not None:
                return entry.options
        options: dict[str, dict[str, int]] = {}
        labels: dict[str, list[str]] = {}
        base = f"EntityDefinitions(LogicalName={quote_string(meta.logical_name)})/Attributes"
        for cast in _CHOICE_CASTS:
            body = self._get(
                f"{base}/Microsoft.Dynamics.CRM.{cast}",
                {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
                strong=False,
            )
            for attr in body.get("value", []):
                column = str(attr.get("LogicalName"))
                for option in (attr.get("OptionSet") or {}).get("Options", []):
                    value = option.get("Value")
                    if not isinstance(value, int):
                        continue
                    for text in _label_texts(option.get("Label")):
                        options.setdefault(column, {}).setdefault(text.lower(), value)
                        if text not in labels.setdefault(column, []):
                            labels[column].append(text)
        with self._lock:
            entry = self._entries.setdefault(meta.logical_name, _Entry(meta))
            entry.options = options
            entry.labels = labels
        return options

    def limits(self, table: str, column: str) -> ColumnLimits:
        """The limits of one column, read with the other columns of its type on first use (cached with the table)."""
        meta = self.table(table)
        typ = meta.attributes[column].type if column in meta.attributes else ""
        if typ not in _LIMIT_CASTS:
            return ColumnLimits()
        with self._lock:
            entry = self._entries.get(meta.logical_name)
            known = entry.limits.get(typ) if entry is not None else None
        if known is None:
            cast, select = _LIMIT_CASTS[typ]
            base = f"EntityDefinitions(LogicalName={quote_string(meta.logical_name)})/Attributes"
            try:
                body = self._get(
                    f"{base}/Microsoft.Dynamics.CRM.{cast}", {"$select": select} if select else {}, strong=False
                )
            except FatalApiError as exc:  # limits are a check on top of the types: none known is not a failure
                log.warning("the %s limits of %r could not be read: %s", typ, meta.logical_name, exc.message)
                body = {}
            known = {str(a.get("LogicalName")): _parse_limits(a) for a in body.get("value", []) if isinstance(a, dict)}
            with self._lock:
                self._entries.setdefault(meta.logical_name, _Entry(meta)).limits[typ] = known
        return known.get(column, ColumnLimits())

    # -- fetching -------------------------------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, str], *, strong: bool) -> dict[str, Any]:
        headers = {"Consistency": "Strong"} if strong else None
        body = self._client().get_json(path, params=params, headers=headers)
        return body if isinstance(body, dict) else {}

    def _fetch(self, name: str, *, strong: bool) -> TableMetadata:
        lowered = name.lower()
        with self._lock:
            strong = strong or self._aliases.get(lowered, lowered) in self._strong
        params = {"$select": _TABLE_SELECT, "$expand": _TABLE_EXPAND}
        try:
            body = self._get(f"EntityDefinitions(LogicalName={quote_string(lowered)})", params, strong=strong)
        except NotFoundError:
            found = self._get(
                "EntityDefinitions",
                {"$select": "LogicalName", "$filter": f"EntitySetName eq {quote_string(name)}"},
                strong=strong,
            ).get("value", [])
            if len(found) != 1:
                raise InputError(
                    [InputProblem("$.table", f"no table has the logical name or entity set name {name!r}")]
                ) from None
            logical = str(found[0]["LogicalName"])
            body = self._get(f"EntityDefinitions(LogicalName={quote_string(logical)})", params, strong=strong)
        return _parse_table(body, self._clock.monotonic())


def _parse_limits(attr: Mapping[str, Any]) -> ColumnLimits:
    def number(name: str) -> float | None:
        value = attr.get(name)  # an int stays an int: a BigInt bound is not exact as a float
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    length, precision = attr.get("MaxLength"), attr.get("Precision")
    return ColumnLimits(
        max_length=length if isinstance(length, int) and not isinstance(length, bool) else None,
        min_value=number("MinValue"),
        max_value=number("MaxValue"),
        precision=precision if isinstance(precision, int) and not isinstance(precision, bool) else None,
    )


def _label_texts(label: Any) -> list[str]:
    if not isinstance(label, Mapping):
        return []
    texts = []
    user = label.get("UserLocalizedLabel")
    if isinstance(user, Mapping) and isinstance(user.get("Label"), str):
        texts.append(user["Label"])
    for loc in label.get("LocalizedLabels") or []:
        if isinstance(loc, Mapping) and isinstance(loc.get("Label"), str) and loc["Label"] not in texts:
            texts.append(loc["Label"])
    return [t for t in texts if t]


def _parse_table(body: Mapping[str, Any], now: float) -> TableMetadata:
    logical = str(body["LogicalName"])
    attributes = {
        str(a["LogicalName"]): Attribute(
            str(a["LogicalName"]),
            str(a.get("AttributeType") or "String"),
            bool(a.get("IsValidForCreate", True)),
            bool(a.get("IsValidForUpdate", True)),
        )
        for a in body.get("Attributes") or []
    }
    keys = tuple(
        AlternateKey(
            str(k.get("SchemaName")),
            frozenset(k.get("KeyAttributes") or ()),
            str(k.get("EntityKeyIndexStatus") or "Active"),
        )
        for k in body.get("Keys") or []
    )
    lookups: dict[str, list[Relationship]] = {}
    single: dict[str, str] = {}
    for rel in body.get("ManyToOneRelationships") or []:
        column, target = str(rel.get("ReferencingAttribute")), str(rel.get("ReferencedEntity"))
        nav = str(rel.get("ReferencingEntityNavigationPropertyName"))
        lookups.setdefault(column, []).append(Relationship(column, target, nav))
        single[nav] = target
    collection: dict[str, str] = {}
    for rel in body.get("OneToManyRelationships") or []:
        collection[str(rel.get("ReferencedEntityNavigationPropertyName"))] = str(rel.get("ReferencingEntity"))
    for rel in body.get("ManyToManyRelationships") or []:
        if rel.get("Entity1LogicalName") == logical:
            collection[str(rel.get("Entity1NavigationPropertyName"))] = str(rel.get("Entity2LogicalName"))
        if rel.get("Entity2LogicalName") == logical:
            collection[str(rel.get("Entity2NavigationPropertyName"))] = str(rel.get("Entity1LogicalName"))
    return TableMetadata(
        logical_name=logical,
        entity_set=str(body["EntitySetName"]),
        primary_id=str(body["PrimaryIdAttribute"]),
        primary_name=body.get("PrimaryNameAttribute"),
        attributes=attributes,
        keys=keys,
        lookups={k: tuple(v) for k, v in lookups.items()},
        single_navigations=single,
        collection_navigations=collection,
        fetched_at=now,
    )
