"""Source rows into ``write_entities`` records, checked against the target table's metadata before anything is sent.

The :class:`Mapper` reads the table's metadata once (columns, keys, lookups, required levels, date formats,
multi-select options), reports what is wrong with the mapping itself (:meth:`Mapper.problems`: an unknown column, a
key that is not one, a lookup to the wrong table, a required column left unmapped) and then maps rows: each value is
coerced to its column (connector.sync.coerce documents the rules) and a value that cannot be sent is a problem of
that row only, named by source row and column, so one bad row never stops the others.

A row's match value is canonical text (``match_key``) so the state store can recognise the row in the next run, and
:func:`row_hash` covers what would be sent plus the mapping's :meth:`~Mapper.fingerprint`: a changed mapping changes
every hash it touches, and only those rows are sent again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from connector.errors import InputError, InputProblem, preview
from connector.inputs import GUID
from connector.metadata import AlternateKey, TableMetadata
from connector.metadata_reads import label_text
from connector.odata import LOOKUP_TYPES, quote_string
from connector.problems import unknown_column
from connector.sync.coerce import CoercionError, Column, coerce
from connector.sync.definition import MappingEntry, SyncDefinition

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["MappedRow", "Mapper", "row_hash"]

#: Levels at which a created row needs the column. ``SystemRequired`` columns are left out: Dataverse fills them
#: (owner, state, currency) or refuses the create itself.
_REQUIRED = "ApplicationRequired"


@dataclass(frozen=True)
class MappedRow:
    """One source row, mapped: how it is matched, what is sent, and why it cannot be (``problems``)."""

    source_index: int
    match_key: str
    key: dict[str, Any] | None
    row_id: str | None
    fields: dict[str, Any]
    create_only: dict[str, Any] = field(default_factory=dict)
    problems: list[InputProblem] = field(default_factory=list)


def row_hash(row: MappedRow, fingerprint: str) -> str:
    """What the state store compares between runs: the fields, create-only fields, match values and the mapping."""
    payload = {"f": row.fields, "c": row.create_only, "k": row.key, "id": row.row_id, "m": fingerprint}
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass
class _Facts:
    """Metadata a sync needs beyond :class:`TableMetadata`, read once: required columns, date-only columns and the
    options of choice and multi-select columns (label -> value)."""

    required: set[str] = field(default_factory=set)
    date_only: set[str] = field(default_factory=set)
    options: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


#: The metadata cast whose ``OptionSet`` holds a column type's options (a multi-select column's type is Virtual).
_OPTION_CASTS = {
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
    "Virtual": "MultiSelectPicklistAttributeMetadata",
}


def _attributes(connection: Connection, meta: TableMetadata, cast: str, params: Mapping[str, str]) -> list[Any]:
    base = f"EntityDefinitions(LogicalName={quote_string(meta.logical_name)})/Attributes"
    body = connection.client.get_json(f"{base}{cast}", params=params)
    found = body.get("value", []) if isinstance(body, dict) else []
    return [a for a in found if isinstance(a, dict)]


def _read_facts(connection: Connection, meta: TableMetadata, columns: set[str]) -> _Facts:
    """One request for required levels, and one per date or option type the mapping writes."""
    facts = _Facts()
    for attr in _attributes(connection, meta, "", {"$select": "LogicalName,RequiredLevel"}):
        if (attr.get("RequiredLevel") or {}).get("Value") == _REQUIRED:
            facts.required.add(str(attr.get("LogicalName")))
    types = {meta.attributes[c].type for c in columns if c in meta.attributes}
    if "DateTime" in types:
        cast = "/Microsoft.Dynamics.CRM.DateTimeAttributeMetadata"
        for attr in _attributes(connection, meta, cast, {"$select": "LogicalName,Format,DateTimeBehavior"}):
            if attr.get("Format") == "DateOnly" or (attr.get("DateTimeBehavior") or {}).get("Value") == "DateOnly":
                facts.date_only.add(str(attr.get("LogicalName")))
    params = {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"}
    for typ in sorted(types & set(_OPTION_CASTS)):
        for attr in _attributes(connection, meta, f"/Microsoft.Dynamics.CRM.{_OPTION_CASTS[typ]}", params):
            options = (attr.get("OptionSet") or {}).get("Options") or []
            pairs = [(label_text(o.get("Label")) or "", o.get("Value")) for o in options]
            facts.options[str(attr.get("LogicalName"))] = [(k, v) for k, v in pairs if k and isinstance(v, int)]
    return facts


class Mapper:
    """Maps source rows to records for one definition; metadata is read once, in the constructor."""

    def __init__(self, definition: SyncDefinition, connection: Connection) -> None:
        self.definition = definition
        self.connection = connection
        self._problems: list[InputProblem] = []
        self._columns: dict[str, Column] = {}
        self._lookups: dict[str, TableMetadata] = {}
        self._constants: dict[str, Any] = {}
        self.key_columns: tuple[str, ...] = ()
        try:
            self.meta: TableMetadata | None = connection.metadata.table(definition.target, path="$.target")
        except InputError as exc:
            self.meta = None
            self._problems += [InputProblem("$.target", p.message) for p in exc.problems]
            return
        targets = {e.target for e in definition.mapping}
        self._facts = _read_facts(connection, self.meta, targets)
        for index, entry in enumerate(definition.mapping):
            self._check_entry(self.meta, index, entry)
        self._check_match(self.meta)
        self._check_required(self.meta, targets)

    # -- mapping-level checks ---------------------------------------------------------------------------------------
    def problems(self) -> list[InputProblem]:
        """What is wrong with the mapping itself; when not empty, no row can be sent."""
        return list(self._problems)

    def _add(self, path: str, message: str) -> None:
        self._problems.append(InputProblem(path, message))

    def _check_entry(self, meta: TableMetadata, index: int, entry: MappingEntry) -> None:
        path = f"$.mapping[{index}]"
        attr = meta.attributes.get(entry.target)
        if attr is None:
            self._add(f"{path}.target", unknown_column(meta, entry.target))
            return
        if not (attr.valid_for_create or attr.valid_for_update):
            self._add(f"{path}.target", f"{entry.target!r} is set by Dataverse and cannot be written")
            return
        if entry.create_only and not attr.valid_for_create:
            self._add(f"{path}.create_only", f"{entry.target!r} cannot be set when a row is created")
        if entry.create_only and self.definition.mode == "update":
            self._add(f"{path}.create_only", "mode update never creates rows: drop create_only or change the mode")
        if attr.type in LOOKUP_TYPES:
            self._check_lookup(meta, path, entry)
            return
        if entry.lookup is not None:
            self._add(f"{path}.lookup", f"{entry.target!r} is a {attr.type} column, not a lookup: use source")
            return
        self.connection.metadata.limits(meta.logical_name, entry.target)  # read now (cached), not in the first row
        self._columns[entry.target] = Column(
            meta,
            entry.target,
            date_only=entry.target in self._facts.date_only,
            options=self._facts.options.get(entry.target, ()),
            multi=attr.type == "Virtual",
        )
        if attr.type == "Virtual" and entry.target not in self._facts.options:
            self._add(f"{path}.target", f"{entry.target!r} is a file, image or computed column: a sync cannot write it")
        elif "constant" in entry.model_fields_set and entry.constant is not None:
            try:
                self._constants[entry.target] = coerce(
                    self.connection, self._columns[entry.target], entry.constant, path
                )
            except CoercionError as exc:
                self._add(f"{path}.constant", str(exc))

    def _check_lookup(self, meta: TableMetadata, path: str, entry: MappingEntry) -> None:
        if entry.lookup is None:
            if entry.source is not None or entry.constant is not None:
                self._add(
                    f"{path}.lookup", f"{entry.target!r} is a lookup: give lookup {{table, key}} or {{table, id}}"
                )
            return
        related = self._table(entry.lookup.table, f"{path}.lookup.table")
        if related is None:
            return
        targets = {r.target for r in meta.lookups.get(entry.target, ())}
        if targets and "owner" not in targets and related.logical_name not in targets:
            self._add(
                f"{path}.lookup.table",
                f"{entry.target!r} refers to {' or '.join(sorted(targets))}, not {related.logical_name!r}",
            )
            return
        if entry.lookup.key is not None:
            key = related.key_for(frozenset(entry.lookup.key))
            if key is None:
                self._add(
                    f"{path}.lookup.key",
                    f"no alternate key of {related.logical_name!r} is made of "
                    f"{', '.join(sorted(entry.lookup.key))}: {related.describe_keys()}",
                )
                return
            self._key_active(key, related, f"{path}.lookup.key")
            for column in entry.lookup.key:
                self.connection.metadata.limits(related.logical_name, column)
        self._lookups[entry.target] = related

    def _table(self, name: str, path: str) -> TableMetadata | None:
        try:
            return self.connection.metadata.table(name, path=path)
        except InputError as exc:
            self._problems += [InputProblem(path, p.message) for p in exc.problems]
            return None

    def _key_active(self, key: AlternateKey, meta: TableMetadata, path: str) -> bool:
        if key.active:
            return True
        self._add(
            path,
            f"the alternate key {key.schema_name!r} of {meta.logical_name!r} is {key.status}, not Active: "
            "wait until its index is built (list_alternate_keys shows it)",
        )
        return False

    def _check_match(self, meta: TableMetadata) -> None:
        match, targets = self.definition.match, {e.target for e in self.definition.mapping}
        if match.key is not None:
            key = _find_key(meta, match.key)
            if key is None:
                self._add(
                    "$.match.key",
                    f"{match.key!r} is not an alternate key of {meta.logical_name!r}: {meta.describe_keys()}",
                )
                return
            self._key_active(key, meta, "$.match.key")
            self.key_columns = tuple(sorted(key.columns))
            for column in self.key_columns:
                if column not in targets:
                    self._add("$.match.key", f"the key column {column!r} is not a mapping target: map a source to it")
        elif match.column is not None:
            if match.column not in meta.attributes:
                self._add("$.match.column", unknown_column(meta, match.column))
            elif match.source is None and match.column not in self._sources():
                self._add("$.match.source", f"no mapping entry reads a source into {match.column!r}: give source")
            elif match.column not in self._columns:
                self._columns[match.column] = Column(meta, match.column)
            if match.stamp is not None and (match.stamp not in targets or match.stamp not in meta.key_columns()):
                self._add(
                    "$.match.stamp",
                    f"{match.stamp!r} must be a mapped column of an alternate key of "
                    f"{meta.logical_name!r}: {meta.describe_keys()}",
                )

    def _sources(self) -> dict[str, str]:
        """Target column -> source column of the plain ``{source, target}`` entries."""
        return {e.target: e.source for e in self.definition.mapping if e.source is not None}

    def _check_required(self, meta: TableMetadata, targets: set[str]) -> None:
        definition = self.definition
        creates = definition.mode != "update" and (definition.match.id is None or definition.match.id_insert)
        if not creates:
            return
        for column in sorted(self._facts.required - targets - {meta.primary_id}):
            attr = meta.attributes.get(column)
            if attr is not None and attr.valid_for_create:
                self._add(
                    "$.mapping",
                    f"{column!r} is required on {meta.logical_name!r} and not mapped: rows would "
                    "be created without it; map a source or a constant to it",
                )

    # -- identity of the mapping ------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A hash of target, match and mapping: the same for the same definition, different when any of them change."""
        d = self.definition
        payload = {"target": d.target, "match": d.match.model_dump(), "mapping": [e.model_dump() for e in d.mapping]}
        return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:32]

    # -- rows -------------------------------------------------------------------------------------------------------
    def map_rows(self, rows: Sequence[Mapping[str, Any]], start_index: int) -> list[MappedRow]:
        """Each row mapped; ``source_index`` counts from ``start_index`` (the rows of earlier batches)."""
        if self.meta is None or self._problems:
            raise InputError(self.problems() or [InputProblem("$.target", "the target table is unknown")])
        return [self._map_row(row, start_index + offset) for offset, row in enumerate(rows)]

    def match_keys(self, rows: Sequence[Mapping[str, Any]], start_index: int) -> list[str]:
        """Each row's match key alone, equal to :meth:`map_rows`' ``match_key``: a partition worker reads every
        source row to keep a fraction, so it maps only the entries that feed the match, not every column."""
        if self.meta is None or self._problems:
            raise InputError(self.problems() or [InputProblem("$.target", "the target table is unknown")])
        match = self.definition.match
        wanted = set(self.key_columns) if match.column is None else {match.column}
        entries = [] if match.id is not None else [e for e in self.definition.mapping if e.target in wanted]
        keys = []
        for offset, row in enumerate(rows):
            index, problems = start_index + offset, list[InputProblem]()
            fields, create_only = self._fields(row, index, entries, problems)
            keys.append(self._match(row, fields, create_only, index, problems)[2])
        return keys

    def _map_row(self, row: Mapping[str, Any], index: int) -> MappedRow:
        problems: list[InputProblem] = []
        fields, create_only = self._fields(row, index, self.definition.mapping, problems)
        key, row_id, match_key = self._match(row, fields, create_only, index, problems)
        return MappedRow(index, match_key, key, row_id, fields, create_only, problems)

    def _fields(
        self, row: Mapping[str, Any], index: int, entries: Sequence[MappingEntry], problems: list[InputProblem]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The values of ``entries`` for one row: (fields, create-only fields); coercion problems appended."""
        fields: dict[str, Any] = {}
        create_only: dict[str, Any] = {}
        for entry in entries:
            where = f"$[{index}].{entry.target}"
            try:
                present, value = self._value(entry, row, where)
            except CoercionError as exc:
                problems.append(InputProblem(where, str(exc)))
                continue
            if present:
                (create_only if entry.create_only else fields)[entry.target] = value
        return fields, create_only

    def _value(self, entry: MappingEntry, row: Mapping[str, Any], where: str) -> tuple[bool, Any]:
        """``(present, value)``: a null source is left out (``keep``) or sent as null (``clear``)."""
        if entry.lookup is None and entry.source is None:
            return True, self._constants.get(entry.target)
        raw = [_source(row, column) for column in entry.source_columns]
        if any(v is None for v in raw):
            return entry.null == "clear", None
        if entry.lookup is None:
            return True, coerce(self.connection, self._columns[entry.target], raw[0], where)
        related = self._lookups[entry.target]
        if entry.lookup.id is not None:
            if not (isinstance(raw[0], str) and GUID.fullmatch(raw[0].strip())):
                raise CoercionError(
                    f"{entry.lookup.id!r} holds {preview(raw[0])}, not the GUID of a {related.logical_name}"
                )
            return True, {"table": related.logical_name, "id": raw[0].strip().lower()}
        key = {
            column: coerce(self.connection, Column(related, column), value, where)
            for column, value in zip(entry.lookup.key or {}, raw, strict=True)
        }
        return True, {"table": related.logical_name, "key": key}

    def _match(
        self,
        row: Mapping[str, Any],
        fields: Mapping[str, Any],
        create_only: Mapping[str, Any],
        index: int,
        problems: list[InputProblem],
    ) -> tuple[dict[str, Any] | None, str | None, str]:
        match = self.definition.match
        if match.id is not None:
            try:
                value = _source(row, match.id)
            except CoercionError as exc:
                problems.append(InputProblem(f"$[{index}].{match.id}", str(exc)))
                return None, None, ""
            if isinstance(value, str) and GUID.fullmatch(value.strip()):
                row_id = value.strip().lower()
                return None, row_id, row_id
            problems.append(
                InputProblem(
                    f"$[{index}].{match.id}",
                    f"the match column holds {preview(value)}, not a GUID: the row cannot be matched",
                )
            )
            return None, None, ""
        if match.column is not None:
            key = {match.column: self._match_value(row, match.column, match.source, fields, index, problems)}
        else:
            merged = {**create_only, **fields}
            key = {column: merged.get(column) for column in self.key_columns}
            for column in self.key_columns:
                if key[column] is None and not any(p.path == f"$[{index}].{column}" for p in problems):
                    problems.append(
                        InputProblem(f"$[{index}].{column}", "the match key column is empty: the row cannot be matched")
                    )
        return key, None, _canonical(key)

    def _match_value(
        self,
        row: Mapping[str, Any],
        column: str,
        source: str | None,
        fields: Mapping[str, Any],
        index: int,
        problems: list[InputProblem],
    ) -> Any:
        if source is None:
            value = fields.get(column)
        else:
            try:
                raw = _source(row, source)
                value = None if raw is None else coerce(self.connection, self._columns[column], raw, f"$[{index}]")
            except CoercionError as exc:
                problems.append(InputProblem(f"$[{index}].{source}", str(exc)))
                return None
        if value is None:
            problems.append(
                InputProblem(f"$[{index}].{column}", "the match column is empty: the row cannot be matched")
            )
        return value


def _source(row: Mapping[str, Any], column: str) -> Any:
    """A source value; a column the source does not have is a problem of the row (all rows, most likely)."""
    if column not in row:
        shown = ", ".join(sorted(map(str, row))[:20])
        raise CoercionError(f"the source has no column {column!r}; its columns: {shown}")
    return row[column]


def _find_key(meta: TableMetadata, given: str | list[str]) -> AlternateKey | None:
    """A key by its name (case-insensitive), by its one column's name, or by the list of its columns."""
    if isinstance(given, list):
        return meta.key_for(frozenset(given))
    for key in meta.keys:
        if key.schema_name.lower() == given.lower():
            return key
    return meta.key_for(frozenset({given}))
